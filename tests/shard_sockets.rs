//! The shard runtime over real sockets: handshake refusals, echo through a session, ping/pong,
//! fragmentation, every close code, the close handshake, keepalive, and graceful shutdown.
//!
//! The session used here echoes text (`"close"` makes it close with 4000), and `sub P` /
//! `unsub P` subscribe to `.`-separated pattern P with frames `P|<body>`: it stands in for a
//! dialect so that the transport and the fan-out can be tested on their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use horizon::binding::Separator;
use horizon::config::ServeConfig;
use horizon::fanout::Event;
use horizon::shard::{
    FrameEncoder, Gateway, HttpRefusal, Reply, Session, SessionFactory, Subscriptions,
};
use horizon::ws::handshake::Request;
use horizon::ws::CloseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

struct Echo;

/// Frames `label|body`: one encoding per binding per event.
struct Labelled(String);

impl FrameEncoder for Labelled {
    fn encode(&self, event: &Event) -> bytes::Bytes {
        let text = format!("{}|{}", self.0, String::from_utf8_lossy(&event.body));
        horizon::ws::frame::encode::text(text.as_bytes()).into()
    }
}

impl Session for Echo {
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        if let Some(pattern) = text.strip_prefix("sub ") {
            let encoder = std::rc::Rc::new(Labelled(pattern.to_string()));
            return match subscriptions.subscribe(Separator::Dot, pattern, pattern, encoder) {
                Ok(new) => Reply::Text(format!("subscribed:{new}:{}", subscriptions.count())),
                Err(e) => Reply::Text(format!("error:{e}")),
            };
        }
        if let Some(name) = text.strip_prefix("name ") {
            subscriptions.set_labels(Some(name.to_string()), Some(r#"{"k":"v"}"#.to_string()));
            return Reply::Text("named".into());
        }
        if let Some(pattern) = text.strip_prefix("unsub ") {
            let left = subscriptions.unsubscribe(Separator::Dot, pattern, pattern);
            return Reply::Text(format!("unsubscribed:{left}:{}", subscriptions.count()));
        }
        match text {
            "close" => Reply::Close(CloseCode(4000), "asked to".into()),
            _ => Reply::Text(format!("echo:{text}")),
        }
    }

    fn lag_notice(&self, skipped: u64) -> Option<String> {
        Some(format!("lagged:{skipped}"))
    }
}

struct EchoFactory;

impl SessionFactory for EchoFactory {
    fn open(&self, request: &Request, _peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        if request.path == "/refuse" {
            return Err(HttpRefusal {
                status: 401,
                content_type: "application/json",
                body: r#"{"error":"nope"}"#.into(),
            });
        }
        Ok(Box::new(Echo))
    }
}

fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Gateway {
    let mut config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        max_message_bytes: 1024,
        io_backend: io_backend(),
        drain_spread: Duration::ZERO,
        ..ServeConfig::default()
    };
    tweak(&mut config);
    Gateway::start(config, Arc::new(EchoFactory)).expect("gateway starts")
}

/// The backend the suite runs on: `HORIZON_IO_BACKEND` (`scripts/test.sh` runs it on both).
fn io_backend() -> horizon::shard::IoBackend {
    std::env::var("HORIZON_IO_BACKEND")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_default()
}

/// Two worker threads: the readers of a load test run beside the test's own publishing.
fn readers_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

const UPGRADE: &str =
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Sends `request` and returns everything the server answers until it closes or goes quiet.
async fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client that speaks raw frames, for the cases a well-behaved client library cannot produce.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_with(TcpStream::connect(addr).await.unwrap()).await
    }

    async fn connect_with(mut stream: TcpStream) -> Raw {
        stream.write_all(UPGRADE.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Raw { stream }
    }

    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            0..=125 => frame.push(mask_bit | payload.len() as u8),
            126..=0xFFFF => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&mask);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next server frame: (opcode, payload). Panics on timeout.
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await.unwrap();
            assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
            let len = match head[1] & 0x7F {
                126 => self.stream.read_u16().await.unwrap() as usize,
                127 => self.stream.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut payload = vec![0; len];
            self.stream.read_exact(&mut payload).await.unwrap();
            (head[0] & 0x0F, payload)
        })
        .await
        .expect("a frame within 5 s")
    }

    /// Expects a close frame with `code`, then the server closing the connection.
    async fn expect_close(&mut self, code: u16) -> String {
        let (opcode, payload) = self.recv().await;
        assert_eq!(
            opcode, 0x8,
            "expected a close frame, got opcode {opcode}: {payload:?}"
        );
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        let mut rest = Vec::new();
        let eof = tokio::time::timeout(Duration::from_secs(3), self.stream.read_to_end(&mut rest));
        assert!(
            eof.await.is_ok(),
            "the server closes the connection after its close frame"
        );
        String::from_utf8(payload[2..].to_vec()).unwrap()
    }
}

#[test]
fn handshake_refusals() {
    let gateway = start(|_| {});
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let post = UPGRADE.replace("GET", "POST");
        let answer = http_exchange(addr, post.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("method must be GET\n"), "{answer}");

        let no_key = UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        let answer = http_exchange(addr, no_key.as_bytes()).await;
        assert!(
            answer.contains("400") && answer.contains("Sec-WebSocket-Key"),
            "{answer}"
        );

        let old = UPGRADE.replace("Version: 13", "Version: 8");
        assert!(http_exchange(addr, old.as_bytes())
            .await
            .starts_with("HTTP/1.1 400"));

        // What a TLS client sends first: a fatal handshake_failure alert, which it reports as
        // such (an HTTP answer would read to it as a garbled record).
        let tls = http_exchange(addr, b"\x16\x03\x01 hello\r\n\r\n").await;
        assert_eq!(tls.as_bytes(), b"\x15\x03\x01\x00\x02\x02\x28", "{tls:?}");

        let garbage = http_exchange(addr, b"\x17\x03\x01 hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");

        let refused = UPGRADE.replace("GET /ws", "GET /refuse");
        let answer = http_exchange(addr, refused.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Content-Type: application/json"));
        assert!(answer.ends_with(r#"{"error":"nope"}"#));

        // The gateway is still serving.
        let mut client = Raw::connect(addr).await;
        client.send(true, 0x1, b"alive?", true).await;
        assert_eq!(client.recv().await, (0x1, b"echo:alive?".to_vec()));
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn a_client_that_never_finishes_its_upgrade_is_cut_at_the_handshake_deadline() {
    let gateway = start(|_| {});
    let addr = gateway.local_addr();
    runtime().block_on(async {
        // Half a request, then one more byte a second (never the blank line that ends it).
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&UPGRADE.as_bytes()[..40]).await.unwrap();
        let mut buf = [0u8; 64];
        let outcome = loop {
            if stream.write_all(b"X").await.is_err() {
                break 0;
            }
            match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                Ok(Ok(n)) => break n,
                Ok(Err(_)) => break 0,
                Err(_) if started.elapsed() > Duration::from_secs(20) => {
                    panic!("the dribbling client was never cut")
                }
                Err(_) => {}
            }
            // Not listed while it has not upgraded.
            assert!(gateway.sockets(Duration::from_secs(2)).0.is_empty());
        };
        assert_eq!(outcome, 0, "cut without an answer");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_secs(10) && after < Duration::from_secs(14),
            "cut after {after:?}: the deadline is 10 s from the accept (checked every second)"
        );
        // The gateway is still serving.
        let mut client = Raw::connect(addr).await;
        client.send(true, 0x1, b"alive?", true).await;
        assert_eq!(client.recv().await, (0x1, b"echo:alive?".to_vec()));
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn a_real_client_talks_through_a_session() {
    let gateway = start(|_| {});
    let url = format!("ws://{}/socket", gateway.local_addr());
    runtime().block_on(async {
        let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status(), 101);
        for i in 0..100 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert_eq!(reply, Message::text(format!("echo:m{i}")));
        }
        ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(b"hi".to_vec().into())
        );
        ws.send(Message::text("close")).await.unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4000);
                assert_eq!(frame.reason.as_str(), "asked to");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn fragmented_messages_are_reassembled() {
    let gateway = start(|_| {});
    runtime().block_on(async {
        let mut client = Raw::connect(gateway.local_addr()).await;
        client.send(false, 0x1, b"frag", true).await;
        client.send(true, 0x9, b"p", true).await; // a ping between fragments
        client.send(false, 0x0, b"men", true).await;
        client.send(true, 0x0, b"ted", true).await;
        assert_eq!(client.recv().await, (0xA, b"p".to_vec()));
        assert_eq!(client.recv().await, (0x1, b"echo:fragmented".to_vec()));
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn a_frame_dribbled_in_byte_by_byte_arrives_whole() {
    let gateway = start(|_| {});
    runtime().block_on(async {
        let mut c = Raw::connect(gateway.local_addr()).await;
        let mut frame = vec![0x81, 0x80 | 126, 0, 200, 9, 8, 7, 6];
        frame.extend(
            (0..200u32)
                .map(|i| b'a' + (i % 26) as u8)
                .enumerate()
                .map(|(i, b)| b ^ [9u8, 8, 7, 6][i % 4]),
        );
        for byte in &frame {
            c.stream.write_all(&[*byte]).await.unwrap();
            c.stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let (opcode, payload) = c.recv().await;
        assert_eq!(opcode, 0x1);
        let expected: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(&payload[5..], &expected[..]);
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn each_backend_runs_when_asked_and_auto_takes_io_uring_here() {
    use horizon::shard::{Driver, IoBackend};
    for (asked, runs) in [
        (IoBackend::Epoll, Driver::Epoll),
        (IoBackend::IoUring, Driver::IoUring),
        // Development and CI machines have io_uring (Linux 6.x, see docs/architecture.md).
        (IoBackend::Auto, Driver::IoUring),
    ] {
        let gateway = start(|c| c.io_backend = asked);
        assert_eq!(gateway.driver(), runs, "io_backend = {asked}");
        runtime().block_on(async {
            let mut client = Raw::connect(gateway.local_addr()).await;
            client.send(true, 0x1, b"hello", true).await;
            assert_eq!(client.recv().await, (0x1, b"echo:hello".to_vec()));
        });
        gateway.shutdown();
        gateway.join();
    }
}

#[test]
fn every_violation_closes_with_its_code() {
    let gateway = start(|_| {});
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let mut c = Raw::connect(addr).await;
        c.send(true, 0x1, b"plain", false).await;
        assert_eq!(c.expect_close(1002).await, "client frames must be masked");

        let mut c = Raw::connect(addr).await;
        c.send(true, 0x2, b"\x00\x01", true).await;
        assert_eq!(
            c.expect_close(1003).await,
            "binary messages are not accepted"
        );

        let mut c = Raw::connect(addr).await;
        c.send(true, 0x1, b"\xc3\x28", true).await;
        assert_eq!(
            c.expect_close(1007).await,
            "text message is not valid UTF-8"
        );

        let mut c = Raw::connect(addr).await;
        c.send(true, 0x1, &[b'a'; 1025], true).await;
        assert_eq!(c.expect_close(1009).await, "message too big");

        let mut c = Raw::connect(addr).await;
        c.send(true, 0x0, b"orphan", true).await;
        c.expect_close(1002).await;

        let mut c = Raw::connect(addr).await;
        c.send(true, 0x8, &1006u16.to_be_bytes(), true).await;
        assert_eq!(c.expect_close(1002).await, "invalid close code");

        // A message of exactly the limit is fine.
        let mut c = Raw::connect(addr).await;
        c.send(true, 0x1, &[b'a'; 1024], true).await;
        let (opcode, payload) = c.recv().await;
        assert_eq!((opcode, payload.len()), (0x1, 1024 + 5));
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn the_close_handshake_echoes_the_clients_code() {
    let gateway = start(|_| {});
    runtime().block_on(async {
        let mut c = Raw::connect(gateway.local_addr()).await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        c.send(true, 0x8, &payload, true).await;
        c.expect_close(1000).await;
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn silent_clients_are_pinged_then_closed() {
    let gateway = start(|c| {
        c.ping_interval = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(2);
    });
    runtime().block_on(async {
        let started = Instant::now();
        let mut c = Raw::connect(gateway.local_addr()).await;
        assert_eq!(c.recv().await.0, 0x9, "a ping after the interval");
        let reason = loop {
            let (opcode, payload) = c.recv().await;
            if opcode == 0x8 {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
                break String::from_utf8(payload[2..].to_vec()).unwrap();
            }
            assert_eq!(opcode, 0x9);
        };
        assert_eq!(reason, "idle timeout");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
            "{waited:?}"
        );

        // A client that answers (any frame counts) stays.
        let mut lively = Raw::connect(gateway.local_addr()).await;
        for _ in 0..3 {
            let (opcode, payload) = lively.recv().await;
            assert_eq!(opcode, 0x9);
            lively.send(true, 0xA, &payload, true).await;
        }
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn shutdown_says_going_away_and_cuts_the_silent_after_the_grace() {
    let gateway = start(|c| c.shutdown_grace = Duration::from_secs(2));
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let mut polite = Vec::new();
        for _ in 0..4 {
            polite.push(Raw::connect(addr).await);
        }
        let mut silent = Raw::connect(addr).await;
        let started = Instant::now();
        let joined = std::thread::spawn(move || {
            gateway.shutdown();
            gateway.join();
        });
        for c in &mut polite {
            let (opcode, payload) = c.recv().await;
            assert_eq!(opcode, 0x8);
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
            assert_eq!(&payload[2..], b"going away");
            c.send(true, 0x8, &1001u16.to_be_bytes(), true).await;
        }
        // The silent client gets the close frame too, never answers, and is cut at the deadline.
        let (opcode, _) = silent.recv().await;
        assert_eq!(opcode, 0x8);
        let mut rest = Vec::new();
        let cut =
            tokio::time::timeout(Duration::from_secs(5), silent.stream.read_to_end(&mut rest));
        assert!(cut.await.is_ok());
        while !joined.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900),
            "waited for the grace period: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "and not much longer: {took:?}"
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer accepting"
        );
    });
}

// --- fan-out -----------------------------------------------------------------------------------

fn event(key: &str, body: &str) -> Arc<Event> {
    Arc::new(Event::new(
        key.to_string(),
        Separator::Dot,
        bytes::Bytes::from(body.to_string()),
    ))
}

/// Publishes one event to every shard (the ring waits if a shard is busy).
async fn publish(publisher: &horizon::fanout::Publisher, key: &str, body: &str) {
    publisher.publish(event(key, body)).await.unwrap();
}

impl Raw {
    async fn text(&mut self, text: &str) -> String {
        self.send(true, 0x1, text.as_bytes(), true).await;
        let (opcode, payload) = self.recv().await;
        assert_eq!(opcode, 0x1);
        String::from_utf8(payload).unwrap()
    }

    async fn next_text(&mut self) -> String {
        let (opcode, payload) = self.recv().await;
        assert_eq!(opcode, 0x1, "{payload:?}");
        String::from_utf8(payload).unwrap()
    }

    /// True if no frame arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, self.stream.peek(&mut byte))
            .await
            .is_err()
    }
}

#[test]
fn events_reach_exactly_the_sockets_whose_bindings_match() {
    let mut gateway = start(|_| {});
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let mut a = Raw::connect(addr).await;
        let mut b = Raw::connect(addr).await;
        let mut c = Raw::connect(addr).await;
        assert_eq!(a.text("sub call.acct-a.*.*").await, "subscribed:true:1");
        assert_eq!(
            a.text("sub call.acct-a.*.*").await,
            "subscribed:false:1",
            "duplicate"
        );
        assert_eq!(b.text("sub call.acct-b.*.*").await, "subscribed:true:1");
        assert_eq!(
            c.text("sub call.*.CHANNEL_CREATE.*").await,
            "subscribed:true:1"
        );
        assert_eq!(c.text("sub call.acct-a.#").await, "subscribed:true:2");
        assert!(a.text("sub ").await.starts_with("error:binding is empty"));

        publish(&publisher, "call.acct-a.CHANNEL_CREATE.x", "1").await;
        publish(&publisher, "call.acct-b.CHANNEL_ANSWER.y", "2").await;
        publish(&publisher, "call.acct-c.CHANNEL_DESTROY.z", "3").await;

        assert_eq!(a.next_text().await, "call.acct-a.*.*|1");
        assert_eq!(b.next_text().await, "call.acct-b.*.*|2");
        // c matched event 1 through two bindings: once per binding, each labelled.
        let mut got = vec![c.next_text().await, c.next_text().await];
        got.sort();
        assert_eq!(got, vec!["call.*.CHANNEL_CREATE.*|1", "call.acct-a.#|1"]);
        for socket in [&mut a, &mut b, &mut c] {
            assert!(
                socket.quiet_for(Duration::from_millis(200)).await,
                "nothing else"
            );
        }

        assert_eq!(a.text("unsub call.acct-a.*.*").await, "unsubscribed:true:0");
        assert_eq!(
            a.text("unsub call.acct-a.*.*").await,
            "unsubscribed:false:0",
            "stray"
        );
        drop(c); // abrupt disconnect: its bindings go with it
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(&publisher, "call.acct-a.CHANNEL_CREATE.x", "4").await;
        publish(&publisher, "call.acct-b.CHANNEL_CREATE.x", "5").await;
        assert_eq!(b.next_text().await, "call.acct-b.*.*|5");
        assert!(
            a.quiet_for(Duration::from_millis(200)).await,
            "unsubscribed socket gets nothing"
        );
    });
    gateway.shutdown();
    gateway.join();
}

/// The sequence number of a `load.e` event frame (`load.#|<seq>:<body>`, as `Labelled` writes it
/// for the events these tests publish as `<seq>:<body>`).
fn load_seq(text: &str) -> usize {
    text["load.#|".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// One client stops reading while 100 others keep receiving every event, in order, on time;
/// returns (events the slow client got before its close or lag notice, what it got last).
/// Returns what the slow client got: events, events reported skipped, and how it ended.
fn slow_consumer(policy: &str) -> (usize, usize, String) {
    // More than the 4 MiB a loopback socket's send buffer can grow to, or the "slow" client is
    // merely buffered by the kernel and never falls behind.
    const EVENTS: usize = 600;
    let mut gateway = start(|c| {
        c.outbound_queue_bytes = 64 * 1024;
        c.slow_consumer = if policy == "close" {
            horizon::shard::SlowConsumerPolicy::Close
        } else {
            horizon::shard::SlowConsumerPolicy::Drop
        };
    });
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    let outcome = readers_runtime().block_on(async {
        let body = "x".repeat(10_000);
        // The slow client: a tiny receive buffer, and it does not read until the end.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut slow = Raw::connect_with(socket.connect(addr).await.unwrap()).await;
        assert_eq!(slow.text("sub load.#").await, "subscribed:true:1");

        let mut fast = Vec::new();
        for _ in 0..100 {
            let mut c = Raw::connect(addr).await;
            assert_eq!(c.text("sub load.#").await, "subscribed:true:1");
            fast.push(c);
        }
        let readers: Vec<_> = fast
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    for i in 0..EVENTS {
                        let text = c.next_text().await;
                        assert_eq!(load_seq(&text), i, "every event, in order");
                    }
                    c
                })
            })
            .collect();
        let started = Instant::now();
        // Paced: 2 events every 10 ms (200 events/s; 20,000 deliveries/s, 200 MB/s in all).
        for i in 0..EVENTS {
            publisher
                .publish(event("load.e", &format!("{i}:{body}")))
                .await
                .unwrap();
            if i % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for reader in readers {
            tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("the fast clients are not held up by the slow one")
                .unwrap();
        }
        let fast_done = started.elapsed();
        assert!(fast_done < Duration::from_secs(20), "{fast_done:?}");

        // Now the slow client reads what it was given: events in order, with a lag notice after
        // each run of skipped ones (there may be several), until every event is accounted for.
        let (mut received, mut skipped, mut previous) = (0, 0, None);
        let last = loop {
            if received + skipped >= EVENTS {
                break "accounted".to_string();
            }
            let Ok((opcode, payload)) =
                tokio::time::timeout(Duration::from_secs(5), slow.recv()).await
            else {
                break "quiet".to_string();
            };
            let text = String::from_utf8_lossy(&payload).into_owned();
            if let Some(event) = text.strip_prefix("load.#|") {
                let seq: usize = event.split(':').next().unwrap().parse().unwrap();
                assert!(
                    previous < Some(seq),
                    "events in order: {seq} after {previous:?}"
                );
                previous = Some(seq);
                received += 1;
            } else if let Some(n) = text.strip_prefix("lagged:") {
                skipped += n.parse::<usize>().unwrap();
            } else if opcode == 0x8 {
                break format!("close:{}", u16::from_be_bytes([payload[0], payload[1]]));
            } else {
                break text;
            }
        };
        (received, skipped, last)
    });
    gateway.shutdown();
    gateway.join();
    outcome
}

#[test]
fn a_slow_consumer_loses_events_alone_and_is_told_how_many() {
    let (received, skipped, last) = slow_consumer("drop");
    assert!(skipped > 0, "the slow client must have been dropped events");
    assert_eq!(
        (received + skipped, last.as_str()),
        (600, "accounted"),
        "every event either delivered or counted as skipped"
    );
}

#[test]
fn a_slow_consumer_is_closed_under_the_close_policy() {
    let (received, skipped, last) = slow_consumer("close");
    assert_eq!(last, "close:1008");
    assert_eq!(skipped, 0);
    assert!(received < 600);
}

#[test]
fn the_registry_and_counters_answer_by_message() {
    let mut gateway = start(|_| {});
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let mut clients = Vec::new();
        for i in 0..6 {
            let mut c = Raw::connect(addr).await;
            assert_eq!(
                c.text(&format!("sub feed.{i}.#")).await,
                "subscribed:true:1"
            );
            if i == 0 {
                assert_eq!(c.text("name console-1").await, "named");
                assert_eq!(c.text("sub feed.all").await, "subscribed:true:2");
            }
            clients.push(c);
        }
        let _ = http_exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await; // an invalid upgrade

        let (sockets, complete) = gateway.sockets(Duration::from_secs(2));
        assert!(complete, "both shards answered");
        assert_eq!(sockets.len(), 6);
        let named: Vec<_> = sockets.iter().filter(|s| s.name.is_some()).collect();
        assert_eq!(named.len(), 1);
        assert_eq!(named[0].name.as_deref(), Some("console-1"));
        assert_eq!(named[0].metadata.as_deref(), Some(r#"{"k":"v"}"#));
        let mut bindings: Vec<String> = named[0].bindings.iter().map(|(p, _)| p.clone()).collect();
        bindings.sort();
        assert_eq!(bindings, vec!["feed.0.#", "feed.all"]);
        let ids: std::collections::HashSet<u64> = sockets.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 6, "socket ids are unique across shards");
        assert!(sockets.iter().all(|s| s.peer.ip().is_loopback()));

        publish(&publisher, "feed.0.x", "a").await;
        publish(&publisher, "feed.1.x", "b").await;
        assert_eq!(clients[0].next_text().await, "feed.0.#|a");
        assert_eq!(clients[1].next_text().await, "feed.1.#|b");

        // A shard with no subscriber for an event still counts it, but on its own schedule: the
        // counters are eventually consistent, so wait until both shards have seen both events.
        let mut stats = Vec::new();
        for _ in 0..100 {
            let (answer, complete) = gateway.stats(Duration::from_secs(2));
            assert!(complete);
            stats = answer;
            if stats.iter().map(|s| s.events).sum::<u64>() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let total = |f: fn(&horizon::shard::ShardStats) -> u64| stats.iter().map(f).sum::<u64>();
        assert_eq!(stats.iter().map(|s| s.connections).sum::<usize>(), 6);
        assert_eq!(stats.iter().map(|s| s.bindings).sum::<usize>(), 7);
        assert_eq!(
            total(|s| s.events),
            4,
            "two events, each seen by both shards"
        );
        assert_eq!(total(|s| s.deliveries), 2);
        assert_eq!(total(|s| s.handshakes_invalid), 1);
        assert_eq!(total(|s| s.ring.pushed), 4);
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn a_closed_slow_consumer_that_never_reads_again_is_cut_after_the_idle_timeout() {
    let mut gateway = start(|c| {
        c.outbound_queue_bytes = 16 * 1024;
        c.slow_consumer = horizon::shard::SlowConsumerPolicy::Close;
        c.idle_timeout = Duration::from_secs(2);
    });
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut silent = Raw::connect_with(socket.connect(addr).await.unwrap()).await;
        assert_eq!(silent.text("sub flood.#").await, "subscribed:true:1");
        // Far more than the kernel buffers: the socket is closed as a slow consumer, and its close
        // frame can never be written because the client never reads again.
        let body = "x".repeat(10_000);
        for i in 0..800 {
            publisher.publish(event("flood.e", &body)).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let listed = |gateway: &Gateway| gateway.sockets(Duration::from_secs(2)).0.len();
        assert_eq!(
            listed(&gateway),
            1,
            "still there while within the idle timeout"
        );
        let deadline = Instant::now() + Duration::from_secs(6);
        while listed(&gateway) > 0 {
            assert!(
                Instant::now() < deadline,
                "the silent, closing socket was never cut"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (stats, _) = gateway.stats(Duration::from_secs(2));
        assert_eq!(stats.iter().map(|s| s.closed_slow).sum::<u64>(), 1);
        drop(silent);
    });
    gateway.shutdown();
    gateway.join();
}

/// Hundreds of sockets send at once, far more than the io_uring backend's provided buffers hold
/// (64 x 2 KiB per shard): receives run out of buffers (`ENOBUFS`) and are armed again, and every
/// message still arrives whole and in order, on both backends.
#[test]
fn a_burst_from_many_sockets_at_once_loses_and_reorders_nothing() {
    const SOCKETS: usize = 300;
    const MESSAGES: usize = 20;
    let gateway = start(|_| {});
    let addr = gateway.local_addr();
    runtime().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..SOCKETS {
            clients.push(Raw::connect(addr).await);
        }
        let go = std::sync::Arc::new(tokio::sync::Barrier::new(SOCKETS));
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(socket, mut client)| {
                let go = go.clone();
                tokio::spawn(async move {
                    let messages: Vec<String> = (0..MESSAGES)
                        .map(|n| format!("{socket}:{n}:{}", "x".repeat(990)))
                        .collect();
                    // All of a socket's frames in one write, every socket at the same moment.
                    let mut frames = Vec::new();
                    for message in &messages {
                        let mask = [9u8, 8, 7, 6];
                        frames.push(0x81);
                        frames.push(0x80 | 126);
                        frames.extend_from_slice(&(message.len() as u16).to_be_bytes());
                        frames.extend_from_slice(&mask);
                        frames.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                    }
                    go.wait().await;
                    client.stream.write_all(&frames).await.unwrap();
                    for message in &messages {
                        let (opcode, payload) = client.recv().await;
                        assert_eq!(opcode, 0x1);
                        assert_eq!(
                            payload,
                            format!("echo:{message}").into_bytes(),
                            "socket {socket}: a message lost, cut or out of order"
                        );
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("every socket got every echo");
        }
    });
    gateway.shutdown();
    gateway.join();
}

/// Threads of this process that are io_uring's kernel workers (`iou-wrk-*`): a send that blocks
/// in the kernel parks one of them per socket.
fn io_uring_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("iou-wrk"))
        .count()
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn three_hundred_readers_that_stop_reading_park_no_kernel_worker_and_hold_no_one_up() {
    // Before: io_uring's sockets were blocking, so a send to a full socket was poll-armed and,
    // after enough re-arms, handed to an `iou-wrk` thread that slept in the kernel holding a
    // stale frame list. Now every send is non-blocking and a full socket waits for POLLOUT.
    const STALLED: usize = 300;
    const EVENTS: usize = 300;
    let mut gateway = start(|c| {
        c.outbound_queue_bytes = 256 * 1024;
        c.slow_consumer = horizon::shard::SlowConsumerPolicy::Drop;
    });
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    readers_runtime().block_on(async {
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let mut c = Raw::connect_with(socket.connect(addr).await.unwrap()).await;
            assert_eq!(c.text("sub load.#").await, "subscribed:true:1");
            stalled.push(c);
        }
        let mut healthy = Raw::connect(addr).await;
        assert_eq!(healthy.text("sub load.#").await, "subscribed:true:1");
        let reader = tokio::spawn(async move {
            for i in 0..EVENTS {
                let text = tokio::time::timeout(Duration::from_secs(20), healthy.next_text())
                    .await
                    .expect("the healthy reader is not held up");
                assert_eq!(load_seq(&text), i, "every event, in order");
            }
        });
        let before = resident_bytes();
        let mut peak_workers = 0;
        let body = "x".repeat(20_000);
        // 300 x 20 KB to 301 sockets: 1.8 GB offered, all but 6 MB of it to readers that stopped.
        for i in 0..EVENTS {
            publisher
                .publish(event("load.e", &format!("{i}:{body}")))
                .await
                .unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                peak_workers = peak_workers.max(io_uring_workers());
            }
        }
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("the healthy reader got every event")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_workers = peak_workers.max(io_uring_workers());
        let grown = resident_bytes().saturating_sub(before);
        eprintln!(
            "driver {}: {peak_workers} iou-wrk threads at most; RSS grew {} KiB",
            gateway.driver(),
            grown / 1024
        );
        assert_eq!(peak_workers, 0, "no send ever waits in an io_uring worker");
        // Every stalled socket's queue holds at most its bound, of frames shared by all.
        assert!(grown < 96 << 20, "RSS grew {} KiB", grown / 1024);
        drop(stalled);
    });
    gateway.shutdown();
    gateway.join();
}

#[test]
fn a_reply_queued_by_a_socket_that_ends_never_reaches_the_next_socket_in_its_slot() {
    // On io_uring a socket is named by its registry slot in the ring's fixed-file table, and a
    // slot freed by a socket that ends is given to the next one accepted, in the same turn. A
    // reply the first socket had queued (not yet submitted) must not go out on the second: the
    // newcomer's first bytes are its own 101, never another client's frame. Turns are kept long
    // (a steady stream of events to 1,000 readers) so that a client's command, its end and a newcomer's accept land
    // in one batch of completions.
    const ROUNDS: usize = 50;
    let mut gateway = start(|c| {
        c.shards = 1;
        c.slow_consumer = horizon::shard::SlowConsumerPolicy::Drop;
    });
    let publisher = gateway.take_publisher().unwrap();
    let addr = gateway.local_addr();
    readers_runtime().block_on(async {
        let mut readers = Vec::new();
        for _ in 0..1000 {
            let mut c = Raw::connect(addr).await;
            assert_eq!(c.text("sub load.#").await, "subscribed:true:1");
            readers.push(tokio::spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                while matches!(c.stream.read(&mut sink).await, Ok(n) if n > 0) {}
            }));
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let body = "x".repeat(1_000);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..8 {
                        let _ = publisher.publish(event("load.e", &body)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        for round in 0..ROUNDS {
            let mut ending = Raw::connect(addr).await;
            ending
                .send(true, 0x1, format!("secret-{round}").as_bytes(), true)
                .await;
            ending.stream.shutdown().await.unwrap();
            // Connects right behind: its accept may share the batch that ends the other.
            let newcomer = Raw::connect_with(TcpStream::connect(addr).await.unwrap()).await;
            drop((ending, newcomer));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy.await.unwrap();
        for reader in &readers {
            reader.abort();
        }
    });
    gateway.shutdown();
    gateway.join();
}

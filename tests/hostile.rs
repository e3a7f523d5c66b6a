//! Horizon against hostile clients (issue #12): what one socket, one token or one broker user
//! can make a node do. Real sockets, a real broker, a real `horizon serve` where memory or
//! process death is what is measured. Each test reproduces an attack that worked before.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kazoo::{errors, parse, runtime, string_list, token, Client, Node, Tenants};
use common::{amqp_connect, http};
use simd_json::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Opens a TCP connection (from `source`, if given) with a small receive buffer, so that a
/// client that does not read makes the server's output back up quickly.
async fn tcp(addr: SocketAddr, source: Option<&str>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    if let Some(source) = source {
        socket
            .bind(format!("{source}:0").parse().unwrap())
            .expect("bind the source address");
    }
    socket.connect(addr).await.expect("connect")
}

/// Upgrades `stream` and reads the 101.
async fn upgrade(stream: &mut TcpStream) {
    stream.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Writes `data` repeatedly until `stop`, or until the server stops reading for `stall`
/// (a write that makes no progress for that long); returns bytes written.
async fn flood(stream: &mut TcpStream, data: &[u8], stop: Instant, stall: Duration) -> usize {
    let mut written = 0;
    while Instant::now() < stop {
        match tokio::time::timeout(stall, stream.write_all(data)).await {
            Ok(Ok(())) => written += data.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    written
}

/// The answer to one raw HTTP request (status line and all) until the server closes.
async fn raw_answer(addr: SocketAddr, source: Option<&str>, request: &[u8]) -> String {
    let mut stream = tcp(addr, source).await;
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A real `horizon serve`, for what only a process shows: its memory, its death.

struct Served {
    child: Child,
    ws: SocketAddr,
    api: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    let mut command = common::serve_command();
    command.args(args);
    let (child, log) = common::spawn_logged(command);
    let (mut ws, mut api) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ws.is_none() || api.is_none() {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("horizon serve starts within 20 s");
        match common::listening(&line) {
            Some(common::Listening::Ws(addr)) => ws = Some(addr),
            Some(common::Listening::Api(addr)) => api = Some(addr),
            None => {}
        }
    }
    Served {
        child,
        ws: ws.unwrap(),
        api: api.unwrap(),
        log,
    }
}

impl Served {
    /// Resident memory of the gateway process, in bytes.
    fn rss(&self) -> u64 {
        common::rss(self.child.id())
    }

    /// Log lines so far.
    fn lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

/// A metric's value from `/metrics` (the sum over its series matching `label`).
async fn metric(api: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, text) = http(api, "GET", "/metrics", &[], "").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_client_that_sends_but_never_reads_cannot_grow_the_gateways_memory() {
    // Before: every `invalid json` reply was queued without bound; one such client grew the
    // node by ~65 MB/s and the memory was never given back.
    let node = serve(&["--shards", "1", "--blocked-close-secs", "3"]);
    runtime().block_on(async {
        let mut stream = tcp(node.ws, None).await;
        upgrade(&mut stream).await;
        // Let the process settle after start-up before taking the baseline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = node.rss();
        let junk: Vec<u8> = (0..4096).flat_map(|_| frame(0x1, b"x")).collect();
        let stop = Instant::now() + Duration::from_secs(6);
        let mut peak = before;
        let mut written = 0;
        while Instant::now() < stop {
            written += flood(
                &mut stream,
                &junk,
                Instant::now() + Duration::from_millis(500),
                Duration::from_millis(500),
            )
            .await;
            peak = peak.max(node.rss());
        }
        let grown = peak.saturating_sub(before);
        eprintln!(
            "spammer wrote {} KiB of frames; gateway RSS {} KiB -> peak {} KiB (+{} KiB)",
            written / 1024,
            before / 1024,
            peak / 1024,
            grown / 1024
        );
        assert!(
            written > 100_000,
            "the spammer got its frames in ({written} bytes)"
        );
        assert!(
            grown < 12 * 1024 * 1024,
            "one client that never reads grew the gateway by {} KiB",
            grown / 1024
        );
        // Blocked past `blocked_close_secs`, the socket is closed (1008) and cut: reading now
        // reaches the end of the stream.
        let mut sink = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the blocked socket was closed");
        assert!(
            metric(node.api, "horizon_sockets_closed_blocked_total", "").await >= 1.0,
            "the close is counted"
        );
    });
}

#[test]
fn a_socket_that_broke_the_protocol_keeps_nothing_of_what_follows() {
    // Before: a bad frame stayed in the partial buffer and every later read was appended to it.
    let node = serve(&["--shards", "1"]);
    runtime().block_on(async {
        let mut stream = tcp(node.ws, None).await;
        upgrade(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = node.rss();
        // An unmasked frame header (a violation: 1002) claiming a long payload, then megabytes.
        let mut bad = vec![0x81u8, 126, 0xff, 0xff];
        bad.extend(std::iter::repeat_n(b'a', 1 << 16));
        stream.write_all(&bad).await.unwrap();
        let garbage = vec![b'g'; 1 << 16];
        let written = flood(
            &mut stream,
            &garbage,
            Instant::now() + Duration::from_secs(3),
            Duration::from_millis(500),
        )
        .await;
        let grown = node.rss().saturating_sub(before);
        eprintln!(
            "wrote {} KiB after the violation; RSS +{} KiB",
            written / 1024,
            grown / 1024
        );
        assert!(
            grown < 8 * 1024 * 1024,
            "garbage after a violation was kept: +{} KiB",
            grown / 1024
        );
    });
}

#[test]
fn a_signed_token_with_an_absurd_expiry_is_refused_and_the_node_lives_on() {
    // Before: `exp` above i64::MAX overflowed the clock on a shard thread; the shard died, its
    // ring filled, and ingest stopped for the whole node.
    let t = Tenants::new();
    let auth_file = common::temp_file("horizon-hostile", &t.auth_toml());
    let node = serve(&[
        "--shards",
        "1",
        "--auth-file",
        auth_file.to_str().unwrap(),
        "--jwt-hs256-secret",
        "s3cret",
    ]);
    runtime().block_on(async {
        let keys = horizon::auth::JwtKeys::new(Some(b"s3cret".to_vec()), None).unwrap();
        let claims = horizon::auth::TokenClaims {
            account_id: t.a.clone(),
            ..Default::default()
        };
        // Sign a normal token, then swap its payload for one with a huge `exp`, re-signed.
        let good = keys.sign_hs256(&claims).unwrap();
        let huge = resign(
            &good,
            &format!(r#"{{"account_id":"{}","exp":1e300}}"#, t.a),
            b"s3cret",
        );
        let mut client = Client::connect(node.ws).await;
        let reply = client
            .command("subscribe", Some(&huge), r#"{"binding":"call.*.*"}"#)
            .await;
        assert_eq!(errors(&reply), ["failed to authenticate token"], "{reply}");
        // The shard is alive: a new socket gets served.
        let mut other = Client::connect(node.ws).await;
        other
            .subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
    });
    let _ = std::fs::remove_file(auth_file);
}

/// `token` with its payload replaced by `payload`, signed HS256 with `secret`.
fn resign(token: &str, payload: &str, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::Mac as _;
    let header = token.split('.').next().unwrap();
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[test]
fn a_bad_auth_file_on_sighup_is_refused_and_the_node_lives_on() {
    // Before: a non-ASCII UTC offset was sliced at a byte offset inside a character: panic.
    let t = Tenants::new();
    let auth_file = common::temp_file("horizon-hostile", &t.auth_toml());
    let node = serve(&["--shards", "1", "--auth-file", auth_file.to_str().unwrap()]);
    let bad = format!(
        "{}\n[[tokens]]\ntoken = \"tok-odd\"\naccount_id = \"{}\"\nexpires_at = \"2030-01-01T00:00:00+1é:0\"\n",
        t.auth_toml(),
        t.a
    );
    std::fs::write(&auth_file, bad).unwrap();
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(node.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = false;
    while !refused && Instant::now() < deadline {
        refused = node
            .lines()
            .iter()
            .any(|l| l.contains("auth file not reloaded"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "the reload was refused with a message");
    runtime().block_on(async {
        let mut client = Client::connect(node.ws).await;
        client
            .subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
    });
    let _ = std::fs::remove_file(auth_file);
}

#[test]
fn configuration_that_would_overflow_a_clock_is_refused_at_start() {
    // Before: accepted, and the shutdown deadline overflowed (a panic) on the first SIGTERM.
    let mut child = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args(common::SERVE_EPHEMERAL)
        .args(["--shutdown-grace-secs", "18446744073709551615"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run horizon");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve started with a shutdown grace of 584 billion years");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("shutdown_grace_secs"), "{stderr}");
}

#[test]
fn no_development_token_is_minted_with_an_operators_secret() {
    // Before: with a configured secret and no auth file, `serve` signed a 24 h publish token
    // with the operator's own secret and printed it.
    let node = serve(&[
        "--shards",
        "1",
        "--jwt-hs256-secret",
        "the-operators-secret",
    ]);
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
    let mut lines = Vec::new();
    while let Ok(line) = node.log.recv_timeout(Duration::from_secs(10)) {
        let last = line.ends_with(" stopped");
        lines.push(line);
        if last {
            break;
        }
    }
    assert!(lines.iter().any(|l| l.ends_with(" stopped")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("development token")),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// An in-process node, for what the protocol shows.

#[test]
fn frames_after_a_close_reach_no_one() {
    // Before: while the close frame waited behind unread output, later frames were parsed and
    // acted on (here: an authentication and a subscription after the client's own close).
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        config.outbound_queue_bytes = 64 * 1024;
    });
    runtime().block_on(async {
        node.ready().await;
        let mut stream = tcp(node.addr(), None).await;
        upgrade(&mut stream).await;
        let junk: Vec<u8> = (0..4096).flat_map(|_| frame(0x1, b"x")).collect();
        flood(
            &mut stream,
            &junk,
            Instant::now() + Duration::from_secs(3),
            Duration::from_millis(300),
        )
        .await;
        let mut after = frame(0x8, &1000u16.to_be_bytes());
        let subscribe = format!(
            r#"{{"action":"subscribe","auth_token":"{}","data":{{"binding":"call.*.*"}}}}"#,
            token(&t.a)
        );
        after.extend(frame(0x1, subscribe.as_bytes()));
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&after)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let path = format!("/v2/accounts/{}/websockets", t.a);
        let (status, body) = http(
            node.api.local_addr(),
            "GET",
            &path,
            &[("X-Auth-Token", &token(&t.a))],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let listed = parse(&body);
        assert_eq!(listed.get_array("data").map(|a| a.len()), Some(0), "{body}");
    });
    node.stop();
}

#[test]
fn connection_limits_answer_429_per_address_and_503_per_node() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        config.max_connections = 3;
        config.max_connections_per_ip = 2;
    });
    runtime().block_on(async {
        node.ready().await;
        let addr = node.addr();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = tcp(addr, Some("127.0.0.1")).await;
            upgrade(&mut stream).await;
            held.push(stream);
        }
        let answer = raw_answer(addr, Some("127.0.0.1"), UPGRADE.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{answer}"
        );
        // Another address still gets in, up to the node's limit.
        let mut third = tcp(addr, Some("127.0.0.2")).await;
        upgrade(&mut third).await;
        let answer = raw_answer(addr, Some("127.0.0.3"), UPGRADE.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        // A connection that leaves gives its place back.
        drop(held.pop());
        let mut admitted = false;
        for _ in 0..50 {
            let mut stream = tcp(addr, Some("127.0.0.1")).await;
            stream.write_all(UPGRADE.as_bytes()).await.unwrap();
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1 101") {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(admitted, "the freed place is taken again");
        let api = node.api.local_addr();
        assert!(metric(api, "horizon_handshakes_refused_total", "per_ip_limit").await >= 1.0);
        assert!(metric(api, "horizon_handshakes_refused_total", "connection_limit").await >= 1.0);
    });
    node.stop();
}

#[test]
fn oversized_upgrade_headers_get_431() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n",
            "a".repeat(16 * 1024)
        );
        let answer = raw_answer(node.addr(), None, huge.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    });
    node.stop();
}

/// An auth file with publish tokens: `tok-pub-<a>` publishes for account a (and its
/// descendants), `tok-pubadmin` is a superduper admin that may publish.
fn publish_toml(t: &Tenants) -> String {
    format!(
        "{}\n[[tokens]]\ntoken = \"tok-pub-{a}\"\naccount_id = \"{a}\"\npublish = true\n\
         [[tokens]]\ntoken = \"tok-pubadmin-{a}\"\naccount_id = \"{a}\"\npublish = true\nsuperduper_admin = true\n",
        t.auth_toml(),
        a = t.a
    )
}

fn call_event(account: &str, call_id: &str) -> String {
    format!(
        r#"{{"exchange":"callevt","routing_key":"call.CHANNEL_CREATE.{call_id}","payload":{{"Event-Name":"CHANNEL_CREATE","Call-ID":"{call_id}","Custom-Channel-Vars":{{"Account-ID":"{account}"}}}}}}"#
    )
}

#[test]
fn a_publish_token_publishes_only_for_accounts_it_may_see_and_only_events() {
    // Before: any token with `publish` published onto any exchange for any account (HTTP 200).
    let t = Tenants::new();
    let node = Node::start(false, &publish_toml(&t), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let api = node.api.local_addr();
        let mut b = Client::connect(node.addr()).await;
        b.subscribe(Some(&token(&t.b)), r#"{"binding":"call.*.*"}"#).await;
        let publisher = format!("tok-pub-{}", t.a);
        let post = |body: String, tok: String| async move {
            http(api, "POST", "/v2/events", &[("X-Auth-Token", &tok)], &body).await
        };
        let (status, body) = post(call_event(&t.b, "into-b"), publisher.clone()).await;
        assert_eq!(status, 403, "a sibling's event: {body}");
        for exchange in ["horizon.control", "amq.topic", "bin-manager.other"] {
            let forged = format!(
                r#"{{"exchange":"{exchange}","routing_key":"x","payload":{{"type":"heartbeat","node":"evil"}}}}"#
            );
            let (status, body) = post(forged, publisher.clone()).await;
            assert_eq!(status, 403, "{exchange}: {body}");
            assert!(body.contains("not an event family"), "{body}");
        }
        let (status, body) = post(call_event(&t.a_child, "into-a-child"), publisher.clone()).await;
        assert_eq!(status, 200, "a descendant's event: {body}");
        let admin = format!("tok-pubadmin-{}", t.a);
        let (status, body) = post(call_event(&t.b, "from-admin"), admin).await;
        assert_eq!(status, 200, "a superduper admin publishes for anyone: {body}");
        // The refused event never arrived; the admin's did (the sentinel: order is kept).
        let frame = b.next_json(Duration::from_secs(5)).await.expect("the admin's event");
        assert_eq!(frame.get("data").and_then(|d| d.get_str("call_id")), Some("from-admin"), "{frame}");
    });
    node.stop();
}

#[test]
fn a_subscribe_that_fails_half_way_leaves_nothing_subscribed() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut a = Client::connect(node.addr()).await;
        let long = "x".repeat(300);
        let data =
            format!(r#"{{"bindings":["call.CHANNEL_CREATE.*","call.CHANNEL_ANSWER.{long}"]}}"#);
        let reply = a.command("subscribe", Some(&token(&t.a)), &data).await;
        assert_eq!(
            errors(&reply),
            ["no available subscriptions to requested binding"],
            "{reply}"
        );
        let reply = a.command("unsubscribe", None, "{}").await;
        assert_eq!(
            string_list(reply.get("data").and_then(|d| d.get("unsubscribed"))),
            Vec::<String>::new(),
            "{reply}"
        );
        assert_eq!(
            node.ingest
                .status()
                .bindings
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
    node.stop();
}

#[test]
fn a_voipbin_subscribe_that_fails_half_way_leaves_nothing_subscribed() {
    let t = Tenants::new();
    let customer = format!("cust-{}", horizon::ids::random_hex(4));
    let toml = format!(
        "{}\n[[tokens]]\ntoken = \"tok-vb-{c}\"\naccount_id = \"{c}\"\ncustomer_id = \"{c}\"\npermissions = [\"admin\"]\n",
        t.auth_toml(),
        c = customer
    );
    let node = Node::start(false, &toml, |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut client = Client::connect_path(node.addr(), &format!("/v1.0/ws?token=tok-vb-{customer}")).await;
        let long = "y".repeat(300);
        client
            .send_text(&format!(r#"{{"type":"subscribe","topics":["customer_id:{customer}:call","customer_id:{customer}:call:{long}"]}}"#))
            .await;
        let reply = client.next_json(Duration::from_secs(5)).await.expect("a reply");
        assert_eq!(reply.get_str("type"), Some("error"), "{reply}");
        client
            .send_text(&format!(r#"{{"type":"unsubscribe","topics":["customer_id:{customer}:call"]}}"#))
            .await;
        let reply = client.next_json(Duration::from_secs(5)).await.expect("a reply");
        assert_eq!(reply.get_str("type"), Some("unsubscribed"), "{reply}");
        assert_eq!(string_list(reply.get("topics")), Vec::<String>::new(), "nothing was subscribed: {reply}");
    });
    node.stop();
}

#[test]
fn listings_show_what_the_caller_may_see_and_follow_the_sockets_identity() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let api = node.api.local_addr();
        let list = |account: String| async move {
            let path = format!("/v2/accounts/{account}/websockets");
            let (status, body) =
                http(api, "GET", &path, &[("X-Auth-Token", &token(&account))], "").await;
            assert_eq!(status, 200, "{body}");
            parse(&body)
        };
        // The reseller's socket subscribes for a and for b.
        let mut r = Client::connect(node.addr()).await;
        r.subscribe(
            Some(&token(&t.reseller)),
            &format!(r#"{{"binding":"call.*.*","account_id":"{}"}}"#, t.a),
        )
        .await;
        r.subscribe(
            None,
            &format!(r#"{{"binding":"object.*.user","account_id":"{}"}}"#, t.b),
        )
        .await;
        let under_a = list(t.a.clone()).await;
        let sockets = under_a.get_array("data").expect("a list");
        assert_eq!(sockets.len(), 1, "{under_a}");
        let text = under_a.to_string();
        assert!(!text.contains(&t.b), "a's listing names b: {text}");
        assert!(
            sockets[0].get("accounts").is_none(),
            "no accounts field: {text}"
        );
        assert_eq!(
            string_list(sockets[0].get("bindings")),
            ["call.*.*"],
            "{text}"
        );
        // The socket logs in as b: a's subscription goes, and so does the listing under a.
        let reply = r
            .command(
                "unsubscribe",
                Some(&token(&t.b)),
                r#"{"binding":"nothing.at.all"}"#,
            )
            .await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        let under_a = list(t.a.clone()).await;
        assert_eq!(
            under_a.get_array("data").map(|a| a.len()),
            Some(0),
            "{under_a}"
        );
        let under_b = list(t.b.clone()).await;
        assert_eq!(
            under_b.get_array("data").map(|a| a.len()),
            Some(1),
            "{under_b}"
        );
    });
    node.stop();
}

#[test]
fn the_rest_api_cuts_slow_headers_and_caps_its_connections() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        config.api_header_timeout = Duration::from_secs(1);
        config.api_max_connections = 2;
    });
    runtime().block_on(async {
        let api = node.api.local_addr();
        // Two connections that never finish their headers hold both places...
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(api).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so a third is told the API is busy.
        let answer = raw_answer(api, None, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // The slow ones are cut at the header deadline, and their places come back.
        let started = Instant::now();
        for stream in &mut slow {
            let mut sink = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
            assert!(ended.is_ok(), "a slow-loris connection was cut");
        }
        assert!(started.elapsed() < Duration::from_secs(4));
        let (status, _) = http(api, "GET", "/healthz", &[], "").await;
        assert_eq!(status, 200);
    });
    node.stop();
}

#[test]
fn forged_control_messages_are_ignored() {
    // Before: any broker user could publish a heartbeat on `horizon.control` and every listing
    // then waited for, and reported missing, a node that does not exist.
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let connection = amqp_connect().await;
        let channel = connection.create_channel().await.unwrap();
        // The node declares it too, with the same flags: whoever is first creates it.
        channel
            .exchange_declare(
                "horizon.control".into(),
                lapin::ExchangeKind::Fanout,
                lapin::options::ExchangeDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        let api = node.api.local_addr();
        let path = format!("/v2/accounts/{}/websockets", t.a);
        // Wait until the node is in its cluster (its own listing is complete).
        let (status, body) = http(api, "GET", &path, &[("X-Auth-Token", &token(&t.a))], "").await;
        assert_eq!(status, 200, "{body}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        for forged in [
            format!(r#"{{"type":"heartbeat","node":"evil-{now}","ts":{now}}}"#),
            format!(
                r#"{}:{{"type":"heartbeat","node":"evil2-{now}","ts":{now}}}"#,
                "0".repeat(64)
            ),
        ] {
            common::kazoo::publish(&channel, "horizon.control", "", forged.as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, body) = http(api, "GET", &path, &[("X-Auth-Token", &token(&t.a))], "").await;
        assert_eq!(status, 200, "{body}");
        let value = parse(&body);
        assert!(
            value.get("partial").is_none(),
            "a forged node is waited for: {body}"
        );
        assert!(!body.contains("evil"), "{body}");
        let _ = connection.close(0, "done".into()).await;
    });
    node.stop();
}

/// Reads server frames (unmasked) from `stream` until `want` text frames have arrived or
/// `within` passes; returns how many did.
async fn count_text_frames(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    want: usize,
    within: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut texts = 0;
    while texts < want {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            if buf[0] & 0x0f == 0x1 {
                texts += 1;
            }
            buf.drain(..head + len);
        }
    }
    texts
}

#[test]
fn a_client_paused_for_not_reading_gets_every_reply_once_it_reads() {
    // The bound pauses reading, never drops a reply: once the client reads again, the input it
    // had sent is handled and every command is answered.
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        config.outbound_queue_bytes = 16 * 1024;
    });
    runtime().block_on(async {
        node.ready().await;
        let mut stream = tcp(node.addr(), None).await;
        upgrade(&mut stream).await;
        let (mut reader, mut writer) = stream.into_split();
        const FRAMES: usize = 20_000;
        let junk: Vec<u8> = (0..FRAMES).flat_map(|_| frame(0x1, b"x")).collect();
        let write = tokio::spawn(async move {
            writer
                .write_all(&junk)
                .await
                .expect("every frame is taken in the end");
            writer
        });
        // Long enough for the queue to reach its bound and reading to pause.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = count_text_frames(&mut reader, FRAMES, Duration::from_secs(30)).await;
        assert_eq!(got, FRAMES, "every command answered, none lost");
        let _writer = write.await.unwrap();
    });
    node.stop();
}

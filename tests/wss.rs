//! wss (issue #17): a real `horizon serve` with its TLS listener beside the plain one, real TLS
//! WebSocket clients (rustls, ALPN as browsers offer it), on both I/O backends. Certificates are
//! made by `openssl` for each test (a test CA, or an expired one), never checked in.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A `serve` with wss, in development mode (embedded bus, 2 shards).
struct Node {
    child: Child,
    ws: SocketAddr,
    wss: SocketAddr,
    api: SocketAddr,
    token: String,
    log: Receiver<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn start(backend: &str, cert: &Path, key: &Path) -> Node {
        let mut command = common::horizon_command();
        command
            .args(common::SERVE_EPHEMERAL)
            .args(["--shards", "2", "--io-backend", backend])
            .args(["--wss-listen", "127.0.0.1:0"])
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key);
        let (child, log) = common::spawn_logged(command);
        let (mut ws, mut wss, mut api, mut token) = (None, None, None, None);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ws.is_none() || wss.is_none() || api.is_none() || token.is_none() {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("serve did not start with wss: {seen:#?}"));
            match common::listening(&line) {
                Some(common::Listening::Ws(addr)) => ws = Some(addr),
                Some(common::Listening::Api(addr)) => api = Some(addr),
                None => {}
            }
            wss = wss.or(common::listening_wss(&line));
            token = token.or(common::dev_token(&line));
            seen.push(line);
        }
        Node {
            child,
            ws: ws.unwrap(),
            wss: wss.unwrap(),
            api: api.unwrap(),
            token: token.unwrap(),
            log,
        }
    }

    /// Waits for a log line containing `text`.
    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with `{text}`"));
            if line.contains(text) {
                return line;
            }
        }
    }

    async fn publish(&self, call_id: &str, padding: usize) {
        let body =
            json!({"exchange":"callevt","routing_key":format!("call.CHANNEL_CREATE.{call_id}"),
            "payload":{"Event-Name":"CHANNEL_CREATE","Call-ID":call_id,
                "Custom-Channel-Vars":{"Account-ID":"dev-account"},
                "Padding":"x".repeat(padding)}})
            .to_string();
        let (status, answer) = common::http(
            self.api,
            "POST",
            "/v2/events",
            &[("X-Auth-Token", &self.token)],
            &body,
        )
        .await;
        assert_eq!(status, 200, "publish: {answer}");
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = common::http(self.api, "GET", "/metrics", &[], "").await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (ca, cert, key, _) = common::certificates(dir, "DNS:localhost,IP:127.0.0.1", "server");
    (ca, cert, key)
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("horizon-{what}-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A client configuration trusting `ca`, offering ALPN as a browser does (`h2` first: the
/// server must pick `http/1.1`), with the given TLS versions.
fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    common::tls_client_config(ca, versions, &[b"h2", b"http/1.1"])
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, config).await
}

/// The TLS handshake, as a client of `localhost`, over `tcp`.
async fn tls_over(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(server, tcp)
        .await
}

/// A wss client on `path`, after checking what the handshake agreed.
async fn wss(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    version: rustls::ProtocolVersion,
) -> Wss {
    let tls = tls_connect(addr, config).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(session.protocol_version(), Some(version));
    let (ws, response) = tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws
}

type Item = tokio_tungstenite::tungstenite::Result<Message>;

async fn subscribe(
    ws: &mut (impl futures_util::Sink<Message> + futures_util::Stream<Item = Item> + Unpin),
    token: &str,
) {
    let subscribe = json!({"action":"subscribe","auth_token":token,"request_id":"r",
        "data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*"}});
    assert!(ws.send(Message::text(subscribe.to_string())).await.is_ok());
    let reply = next_text(ws).await;
    assert!(reply.contains("success"), "{reply}");
}

async fn next_text(ws: &mut (impl futures_util::Stream<Item = Item> + Unpin)) -> String {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a message");
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// On each backend: wss clients (TLS 1.3 and TLS 1.2) and a plain client subscribe at once and
/// each gets every event, small and large (a frame over several TLS records), the Kazoo dialect
/// and VoIPBin's path both upgrade over TLS.
#[test]
fn wss_clients_subscribe_and_receive_on_each_backend_beside_plain_ones() {
    let dir = temp_dir("wss");
    let (ca, cert, key) = certificates(&dir);
    for backend in ["epoll", "io_uring"] {
        let node = Node::start(backend, &cert, &key);
        runtime().block_on(async {
            let tls13 = client_config(&ca, &[&rustls::version::TLS13]);
            let tls12 = client_config(&ca, &[&rustls::version::TLS12]);
            let mut a = wss(
                node.wss,
                tls13.clone(),
                "/",
                rustls::ProtocolVersion::TLSv1_3,
            )
            .await;
            let mut b = wss(node.wss, tls12, "/", rustls::ProtocolVersion::TLSv1_2).await;
            let (mut plain, _) = tokio_tungstenite::connect_async(format!("ws://{}/", node.ws))
                .await
                .expect("plain upgrade");
            subscribe(&mut a, &node.token).await;
            subscribe(&mut b, &node.token).await;
            subscribe(&mut plain, &node.token).await;
            for (i, padding) in [0usize, 40_000, 10, 100_000].into_iter().enumerate() {
                let call_id = format!("{backend}-call-{i}");
                node.publish(&call_id, padding).await;
                for (name, text) in [
                    ("TLS 1.3", next_text(&mut a).await),
                    ("TLS 1.2", next_text(&mut b).await),
                    ("plain", next_text(&mut plain).await),
                ] {
                    assert!(
                        text.contains(&call_id) && text.len() > padding,
                        "{backend} {name}: event {i} ({} bytes)",
                        text.len()
                    );
                }
            }
            // Ping and pong through the record layer, then a clean close.
            a.send(Message::Ping(vec![7u8; 100].into())).await.unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), a.next())
                    .await
                    .expect("pong")
                {
                    Some(Ok(Message::Pong(payload))) => {
                        assert_eq!(&payload[..], &[7u8; 100][..]);
                        break;
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("{backend}: no pong: {other:?}"),
                }
            }
            a.close(None).await.unwrap();
            while let Some(Ok(_)) = a.next().await {}
            let path = format!("/v1.0/ws?token={}", node.token);
            let voipbin = wss(node.wss, tls13, &path, rustls::ProtocolVersion::TLSv1_3).await;
            drop(voipbin);
            assert_eq!(
                node.metric("horizon_handshakes_refused_total{reason=\"tls\"}")
                    .await,
                0.0,
                "{backend}"
            );
        });
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP swaps the certificate: a new connection sees the new one, a connection made with the
/// old one keeps receiving; a bad new pair is refused in the log and the current one stays.
#[test]
fn sighup_swaps_the_certificate_and_open_connections_stay() {
    let (old_dir, new_dir) = (temp_dir("wss-old"), temp_dir("wss-new"));
    let (old_ca, old_cert, old_key) = certificates(&old_dir);
    let (new_ca, new_cert, new_key) = certificates(&new_dir);
    // The files the node reads, swapped under it.
    let (cert, key) = (old_dir.join("live-cert.pem"), old_dir.join("live-key.pem"));
    std::fs::copy(&old_cert, &cert).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let node = Node::start("epoll", &cert, &key);
    runtime().block_on(async {
        let old = client_config(&old_ca, &[&rustls::version::TLS13]);
        let new = client_config(&new_ca, &[&rustls::version::TLS13]);
        let mut before = wss(node.wss, old.clone(), "/", rustls::ProtocolVersion::TLSv1_3).await;
        subscribe(&mut before, &node.token).await;
        assert!(
            tls_connect(node.wss, new.clone()).await.is_err(),
            "the new CA must not verify the certificate in force yet"
        );

        std::fs::copy(&new_cert, &cert).unwrap();
        std::fs::copy(&new_key, &key).unwrap();
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGHUP) };
        node.wait_for_log("wss certificate reloaded");
        let mut after = wss(node.wss, new.clone(), "/", rustls::ProtocolVersion::TLSv1_3).await;
        // A fresh client (one that resumes its earlier session is, rightly, not shown a
        // certificate at all).
        assert!(
            tls_connect(node.wss, client_config(&old_ca, &[&rustls::version::TLS13]))
                .await
                .is_err(),
            "a new connection must get the new certificate"
        );
        subscribe(&mut after, &node.token).await;
        node.publish("after-reload", 0).await;
        assert!(next_text(&mut before).await.contains("after-reload"));
        assert!(next_text(&mut after).await.contains("after-reload"));

        // A key that is not the certificate's: refused, the new certificate stays.
        std::fs::copy(&old_key, &key).unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGHUP) };
        let line = node.wait_for_log("wss certificate not reloaded");
        assert!(line.contains("does not match"), "{line}");
        std::fs::write(&cert, "not a certificate").unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(node.child.id() as i32, libc::SIGHUP) };
        let line = node.wait_for_log("wss certificate not reloaded");
        assert!(line.contains("tls_cert_file"), "{line}");
        let mut later = wss(node.wss, new, "/", rustls::ProtocolVersion::TLSv1_3).await;
        subscribe(&mut later, &node.token).await;
        node.publish("after-bad-reload", 0).await;
        for ws in [&mut before, &mut after, &mut later] {
            assert!(next_text(ws).await.contains("after-bad-reload"));
        }
    });
    let _ = std::fs::remove_dir_all(old_dir);
    let _ = std::fs::remove_dir_all(new_dir);
}

/// The wrong protocol on either port is refused at once and plainly: plain HTTP on the wss
/// port gets a `400` it can read, a TLS client on the plain port a fatal alert, a client that
/// offers only `h2` the `no_application_protocol` alert, a TLS 1.1 client an alert; a TLS client
/// that stalls in its handshake is cut at the handshake deadline. Each refusal is counted.
#[test]
fn the_wrong_protocol_on_either_port_is_refused_cleanly() {
    let dir = temp_dir("wss-wrong");
    let (ca, cert, key) = certificates(&dir);
    for backend in ["epoll", "io_uring"] {
        let node = Node::start(backend, &cert, &key);
        runtime().block_on(async {
            // A ClientHello's first bytes, then silence.
            let mut stalled = TcpStream::connect(node.wss).await.unwrap();
            stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
            let stalled_since = Instant::now();

            let mut plain = TcpStream::connect(node.wss).await.unwrap();
            plain
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(5), plain.read_to_string(&mut answer))
                .await
                .expect("answered and closed at once")
                .unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            assert!(answer.contains("wss://"), "{answer}");

            let started = Instant::now();
            let refused = tls_connect(node.ws, client_config(&ca, &[&rustls::version::TLS13]))
                .await
                .expect_err("the plain port speaks no TLS");
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(
                refused.to_string().contains("HandshakeFailure"),
                "{backend}: {refused}"
            );

            // A client that offers only HTTP/2: no protocol in common, refused in the handshake.
            let mut h2 = (*client_config(&ca, &[&rustls::version::TLS13])).clone();
            h2.alpn_protocols = vec![b"h2".to_vec()];
            let refused = tls_connect(node.wss, Arc::new(h2))
                .await
                .expect_err("no protocol in common");
            assert!(
                refused.to_string().contains("NoApplicationProtocol"),
                "{backend}: {refused}"
            );

            // TLS 1.1 (openssl's client, told to allow it): refused with an alert.
            let old = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &node.wss.to_string(), "-tls1_1"])
                .args(["-cipher", "DEFAULT@SECLEVEL=0"])
                .stdin(Stdio::null())
                .output()
                .expect("openssl runs");
            let said = String::from_utf8_lossy(&old.stdout).into_owned()
                + &String::from_utf8_lossy(&old.stderr);
            assert!(
                said.contains("alert") && said.contains("Cipher is (NONE)"),
                "{backend}: TLS 1.1 must be refused: {said}"
            );

            // A handshake record that holds no ClientHello: an alert, then the end.
            let mut garbage = TcpStream::connect(node.wss).await.unwrap();
            garbage
                .write_all(&[0x16, 0x03, 0x03, 0x00, 0x08, 0xff, 0, 0, 4, 1, 2, 3, 4])
                .await
                .unwrap();
            let mut alert = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut alert))
                .await
                .expect("answered and closed at once")
                .unwrap();
            assert_eq!(alert.first(), Some(&0x15), "{backend}: an alert record: {alert:?}");

            // A ClientHello announced as 61,440 bytes, sent in 16 KiB fragments: the socket may
            // hold 32 KiB of incomplete records, no more.
            let mut huge = TcpStream::connect(node.wss).await.unwrap();
            let mut first = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xf0, 0x00];
            first.resize(5 + 16 * 1024, 0);
            let mut fragment = vec![0x16, 0x03, 0x01, 0x40, 0x00];
            fragment.resize(5 + 16 * 1024, 0);
            let mut answer = Vec::new();
            let sent = async {
                huge.write_all(&first).await?;
                for _ in 0..3 {
                    huge.write_all(&fragment).await?;
                }
                std::io::Result::Ok(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), sent).await;
            // Closed at once (the reset of the unread rest may overtake anything sent before).
            let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut answer))
                .await
                .expect("refused at once");

            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut rest))
                .await
                .expect("the stalled handshake is cut")
                .ok();
            let waited = stalled_since.elapsed();
            assert!(
                waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
                "{backend}: cut after {waited:?}"
            );
            assert_eq!(
                node.metric("horizon_handshakes_refused_total{reason=\"tls\"}")
                    .await,
                6.0,
                "{backend}"
            );
            // And the node serves on.
            let mut ws = wss(
                node.wss,
                client_config(&ca, &[&rustls::version::TLS13]),
                "/",
                rustls::ProtocolVersion::TLSv1_3,
            )
            .await;
            subscribe(&mut ws, &node.token).await;
        });
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// What an operator gets wrong is refused at start, with the file named (exit 2): an expired
/// certificate, a key that is not the certificate's, a missing file, half a configuration.
#[test]
fn bad_certificates_are_refused_at_start_with_the_file_named() {
    let dir = temp_dir("wss-bad");
    let (_, cert, key) = certificates(&dir);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_, _, other_key) = certificates(&other);
    let (expired_cert, expired_key) = expired(&dir);
    let missing = dir.join("missing.pem");
    let cases: Vec<(Vec<std::ffi::OsString>, String)> = vec![
        (
            args(&expired_cert, &expired_key),
            format!(
                "tls_cert_file {}: the certificate expired on 2021-01-01",
                expired_cert.display()
            ),
        ),
        (
            args(&cert, &other_key),
            format!(
                "tls_key_file {}: the key does not match the certificate in {}",
                other_key.display(),
                cert.display()
            ),
        ),
        (
            args(&missing, &key),
            format!("tls_cert_file {}", missing.display()),
        ),
        (
            args(&cert, &missing),
            format!("tls_key_file {}", missing.display()),
        ),
        (
            args(&key, &key),
            format!("tls_cert_file {}: no PEM certificate", key.display()),
        ),
        (
            vec!["--wss-listen".into(), "127.0.0.1:0".into()],
            "wss_listen needs tls_cert_file and tls_key_file".into(),
        ),
    ];
    for (extra, expected) in cases {
        let output = common::horizon_command()
            .args(common::SERVE_EPHEMERAL)
            .args(&extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "{extra:?}: expected `{expected}` in {stderr}"
        );
        let check = common::horizon_command()
            .args(["check-config", "--offline"])
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(check.status.code(), Some(2), "check-config {extra:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn args(cert: &Path, key: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "--wss-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert-file".into(),
        cert.into(),
        "--tls-key-file".into(),
        key.into(),
    ]
}

/// A self-signed certificate valid only during 2020 (`openssl ca` sets the dates).
fn expired(dir: &Path) -> (PathBuf, PathBuf) {
    let dir = dir.join("expired");
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca=x\n[x]\ndatabase=index.txt\nnew_certs_dir=db\nserial=serial\n\
         default_md=sha256\npolicy=p\nunique_subject=no\n[p]\ncommonName=supplied\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "key.pem",
        "-in",
        "req.csr",
        "-out",
        "cert.pem",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20210101000000Z",
    ]);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A wss subscriber that stops reading costs the node no more than its queue's bound, never
/// slows the others, and, once it reads again, finds a stream that still decrypts: the events
/// skipped for it were never encrypted, so no record is missing from its sequence.
#[test]
fn a_wss_subscriber_that_stops_reading_loses_events_alone_and_its_stream_stays_whole() {
    let dir = temp_dir("wss-slow");
    let (ca, cert, key) = certificates(&dir);
    for backend in ["epoll", "io_uring"] {
        let node = Node::start(backend, &cert, &key);
        runtime().block_on(async {
            let config = client_config(&ca, &[&rustls::version::TLS13]);
            // A small receive buffer, so that what it does not read backs up into the node.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let tcp = socket.connect(node.wss).await.unwrap();
            let tls = tls_over(tcp, config.clone()).await.expect("TLS handshake");
            let (mut slow, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
                .await
                .expect("upgrade");
            let mut healthy = wss(node.wss, config, "/", rustls::ProtocolVersion::TLSv1_3).await;
            subscribe(&mut slow, &node.token).await;
            subscribe(&mut healthy, &node.token).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = common::rss(node.child.id());
            // 6 MB of events: six times the default queue bound of the slow socket, and more
            // than the kernel's buffers take.
            const BURST: usize = 300;
            let publish = async {
                for i in 0..BURST {
                    node.publish(&format!("{backend}-burst-{i}"), 20_000).await;
                }
            };
            // The healthy client reads as the events come.
            let read = async {
                for i in 0..BURST {
                    let text = next_text(&mut healthy).await;
                    assert!(
                        text.contains(&format!("{backend}-burst-{i}\"")),
                        "{backend}: event {i}"
                    );
                }
            };
            tokio::join!(publish, read);
            let grown = common::rss(node.child.id()).saturating_sub(before);
            assert!(
                grown < 16 << 20,
                "{backend}: a wss client that does not read grew the node by {} KiB",
                grown >> 10
            );
            // The slow client reads again: every record decrypts, the last event arrives.
            node.publish(&format!("{backend}-final"), 0).await;
            let mut seen = 0;
            loop {
                let text = next_text(&mut slow).await;
                seen += 1;
                if text.contains(&format!("{backend}-final")) {
                    break;
                }
            }
            eprintln!("{backend}: the slow client read {seen} messages");
            assert!(
                seen <= BURST,
                "{backend}: events were skipped for the slow client ({seen})"
            );
        });
    }
    let _ = std::fs::remove_dir_all(dir);
}

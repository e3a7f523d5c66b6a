//! The proxy snippets of docs/operations.md, run for real: `contrib/proxy/nginx.conf` and
//! `contrib/proxy/haproxy.cfg`, with only their addresses, ports and file paths swapped, in front
//! of a `horizon serve`. Through each, over TLS (a certificate made by `openssl` for the test):
//! a blackhole client subscribes and receives an event published through the proxied REST API,
//! VoIPBin's path upgrades, and the console loads. `scripts/test.sh` installs nginx and HAProxy
//! (apt, as root); without them this test fails and says so.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/usr/sbin/{name}"));
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs it (apt-get install nginx-light haproxy, as root)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `text` with each `(from, to)` swapped; every `from` must be there (the snippet is what the
/// documentation shows).
fn swap(text: &str, swaps: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in swaps {
        assert!(out.contains(from), "the snippet no longer has `{from}`");
        out = out.replace(from, to);
    }
    out
}

async fn wait_for_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the proxy never listened on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    common::tls_client_config(
        ca,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[b"http/1.1"],
    )
}

/// Through the proxy at `port`: subscribe, publish over REST, receive; VoIPBin's path; console.
async fn exercise(name: &str, port: u16, ca: &Path, token: &str) {
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca));
    let open = |path: String| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(server, tcp).await.expect("TLS handshake");
            tokio_tungstenite::client_async(format!("wss://localhost:{port}{path}"), tls).await
        }
    };

    let (mut ws, _) = open("/".into())
        .await
        .unwrap_or_else(|e| panic!("{name}: upgrade: {e}"));
    let call_id = format!("{name}-call-{}", horizon::ids::random_hex(4));
    let subscribe = json!({"action":"subscribe","auth_token":token,"request_id":"r",
        "data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*"}});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("success"), "{name}: {reply}");

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let body = json!({"exchange":"callevt","routing_key":format!("call.CHANNEL_CREATE.{call_id}"),
        "payload":{"Event-Name":"CHANNEL_CREATE","Call-ID":call_id,
            "Custom-Channel-Vars":{"Account-ID":"dev-account"}}});
    let answer = client
        .post(format!("{base}/v2/events"))
        .header("X-Auth-Token", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name}: publish: {e}"));
    assert!(
        answer.status().is_success(),
        "{name}: publish: {}",
        answer.status()
    );
    let event = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap_or_else(|_| panic!("{name}: no event through the proxy"))
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap();
    assert!(event.contains(&call_id), "{name}: {event}");

    let (voipbin, response) = open(format!("/v1.0/ws?token={token}"))
        .await
        .unwrap_or_else(|e| panic!("{name}: VoIPBin upgrade: {e}"));
    assert_eq!(response.status(), 101, "{name}");
    drop(voipbin);

    let console = client.get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(console.status(), 200, "{name}: console");
    assert!(console.text().await.unwrap().contains("Horizon"), "{name}");
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{name}: readyz");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_and_haproxy_configurations_carry_wss_and_the_api() {
    let (_node, ws, api, token) = common::start_dev_node();
    let dir = std::env::temp_dir().join(format!("horizon-proxies-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key, both) = common::certificates(&dir, "DNS:localhost,IP:127.0.0.1", "leaf");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/proxy");
    let text = |p: &Path| p.display().to_string();
    let addr = |a: SocketAddr| a.to_string();

    // nginx
    let port = free_port();
    let config = swap(
        &std::fs::read_to_string(root.join("nginx.conf")).unwrap(),
        &[
            ("127.0.0.1:5555", addr(ws)),
            ("127.0.0.1:8000", addr(api)),
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            ("/etc/horizon/tls/fullchain.pem", text(&cert)),
            ("/etc/horizon/tls/privkey.pem", text(&key)),
            ("/run/horizon-nginx.pid", text(&dir.join("nginx.pid"))),
            (
                "/var/log/nginx/horizon-error.log",
                text(&dir.join("nginx-error.log")),
            ),
        ],
    );
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let nginx = common::Killed(
        Command::new(binary("nginx"))
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nginx.out")).unwrap())
            .spawn()
            .expect("start nginx"),
    );
    wait_for_port(port, &dir.join("nginx.out")).await;
    exercise("nginx", port, &ca, &token).await;
    drop(nginx);

    // HAProxy
    let port = free_port();
    let config = swap(
        &std::fs::read_to_string(root.join("haproxy.cfg")).unwrap(),
        &[
            ("127.0.0.1:443", format!("127.0.0.1:{port}")),
            // HAProxy refuses to start when it cannot have 2 x maxconn descriptors; this
            // machine's limit is 20,000.
            ("maxconn 200000", "maxconn 5000".to_string()),
            ("/etc/horizon/tls/horizon.pem", text(&both)),
            ("127.0.0.1:5555", addr(ws)),
            ("check port 8000", format!("check port {}", api.port())),
            ("127.0.0.1:8000", addr(api)),
        ],
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    let haproxy = common::Killed(
        Command::new(binary("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.out")).unwrap())
            .spawn()
            .expect("start haproxy"),
    );
    wait_for_port(port, &dir.join("haproxy.out")).await;
    exercise("haproxy", port, &ca, &token).await;
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
}

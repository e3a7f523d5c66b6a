//! The proxy snippets of docs/operations.md, run for real: `contrib/proxy/nginx.conf` and
//! `contrib/proxy/haproxy.cfg`, with only their addresses, ports and file paths swapped, in front
//! of a `horizon serve` that trusts them (`trusted_proxies`). Clients connect to the proxy from
//! their own loopback addresses (127.0.0.2, 127.0.0.3, ...); through each proxy, over TLS:
//! the listing names each client's own address as `source`, `max_connections_per_ip` counts each
//! client (not the proxy), a blackhole client receives an event published through the proxied
//! REST API (whose access log names the client), VoIPBin's path upgrades, and the console loads.
//! Directly: a PROXY header from an untrusted address closes the connection (counted), a trusted
//! peer without a header is taken as direct, and the wss listener reads a header before TLS.
//! `scripts/test.sh` installs nginx (with its stream module) and HAProxy (apt, as root); without
//! them this test fails and says so.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

fn binary(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs it (apt-get install nginx-light \
         libnginx-mod-stream haproxy, as root)",
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
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the proxy never listened on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to 127.0.0.1:`port` from 127.0.0.`from`.
async fn connect_from(from: u8, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(loopback(from), 0)).unwrap();
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap_or_else(|e| panic!("connect from 127.0.0.{from} to {port}: {e}"))
}

struct World {
    node: common::DevNode,
    ca: PathBuf,
}

impl World {
    fn tls(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(common::tls_client_config(
            &self.ca,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            &[b"http/1.1"],
        ))
    }

    /// A wss upgrade of `path` on 127.0.0.1:`port` from 127.0.0.`from`, after `preface` bytes.
    async fn wss(
        &self,
        from: u8,
        port: u16,
        path: &str,
        preface: &[u8],
    ) -> Result<Wss, tokio_tungstenite::tungstenite::Error> {
        let mut tcp = connect_from(from, port).await;
        tcp.write_all(preface).await.unwrap();
        let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = self
            .tls()
            .connect(server, tcp)
            .await
            .expect("TLS handshake");
        tokio_tungstenite::client_async(format!("wss://localhost:{port}{path}"), tls)
            .await
            .map(|(ws, _)| ws)
    }

    /// A blackhole subscription for the development account on `ws`, named `name`.
    async fn subscribe(&self, ws: &mut Wss, name: &str) {
        let subscribe = json!({"action":"subscribe","auth_token":self.node.token,"request_id":"r",
            "data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*","name":name}});
        ws.send(Message::text(subscribe.to_string())).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(reply.contains("success"), "{name}: {reply}");
    }

    /// The `source` of each listed socket, by its name, once the listing has `count` of them.
    async fn sources(&self, count: usize) -> Vec<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, body) = common::http(
                self.node.api,
                "GET",
                "/v2/accounts/dev-account/websockets",
                &[("X-Auth-Token", &self.node.token)],
                "",
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let value: Value = serde_json::from_str(&body).unwrap();
            let mut listed: Vec<(String, String)> = value["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or_default().to_string(),
                        s["source"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            listed.sort();
            if listed.len() == count || Instant::now() > deadline {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_has(&self, needle: &str) -> bool {
        self.node
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    async fn refused_by_proxy_header(&self) -> u64 {
        let (_, body) = common::http(self.node.api, "GET", "/metrics", &[], "").await;
        body.lines()
            .find_map(|l| l.strip_prefix("horizon_handshakes_refused_total{reason=\"proxy\"} "))
            .and_then(|n| n.trim().parse().ok())
            .expect("the proxy refusals are counted")
    }
}

/// Through the proxy: WebSockets on `ws_port`, the REST API at `api_base`; clients on
/// 127.0.0.`first`, `first + 1` and `first + 2`.
async fn exercise(world: &World, name: &str, ws_port: u16, api_base: &str, first: u8) {
    let (one, two, three) = (first, first + 1, first + 2);
    let mut a = world.wss(one, ws_port, "/", b"").await.unwrap();
    world.subscribe(&mut a, &format!("{name}-a")).await;
    let mut b = world.wss(two, ws_port, "/", b"").await.unwrap();
    world.subscribe(&mut b, &format!("{name}-b")).await;
    let listed = world.sources(2).await;
    assert_eq!(
        listed,
        [
            (format!("{name}-a"), format!("127.0.0.{one}")),
            (format!("{name}-b"), format!("127.0.0.{two}")),
        ],
        "{name}: the listing names each client, not the proxy"
    );

    // max_connections_per_ip = 2, per client: a third socket from `one` is refused, a second
    // from `two` is not (all of them come from the proxy's one address).
    let a2 = world.wss(one, ws_port, "/", b"").await.unwrap();
    match world.wss(one, ws_port, "/", b"").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429, "{name}")
        }
        other => panic!(
            "{name}: a third socket from one client: {:?}",
            other.map(|_| ())
        ),
    }
    let b2 = world.wss(two, ws_port, "/", b"").await.unwrap();

    // The REST API through the proxy, from `one`: the event reaches the socket, and the access
    // log names the client.
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&world.ca).unwrap()).unwrap(),
        )
        .local_address(loopback(one))
        .build()
        .unwrap();
    let call_id = format!("{name}-call-{}", horizon::ids::random_hex(4));
    let body = json!({"exchange":"callevt","routing_key":format!("call.CHANNEL_CREATE.{call_id}"),
        "payload":{"Event-Name":"CHANNEL_CREATE","Call-ID":call_id,
            "Custom-Channel-Vars":{"Account-ID":"dev-account"}}});
    let answer = client
        .post(format!("{api_base}/v2/events"))
        .header("X-Auth-Token", &world.node.token)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name}: publish: {e}"));
    assert!(
        answer.status().is_success(),
        "{name}: publish: {}",
        answer.status()
    );
    let event = tokio::time::timeout(Duration::from_secs(10), a.next())
        .await
        .unwrap_or_else(|_| panic!("{name}: no event through the proxy"))
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap();
    assert!(event.contains(&call_id), "{name}: {event}");
    let line = format!("POST /v2/events 200 from 127.0.0.{one}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !world.log_has(&line) {
        assert!(
            Instant::now() < deadline,
            "{name}: no access log line `{line}`"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let voipbin = world
        .wss(
            three,
            ws_port,
            &format!("/v1.0/ws?token={}", world.node.token),
            b"",
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: VoIPBin upgrade: {e}"));
    drop(voipbin);
    let console = client
        .get(format!("{api_base}/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(console.status(), 200, "{name}: console");
    assert!(console.text().await.unwrap().contains("Horizon"), "{name}");
    let ready = client
        .get(format!("{api_base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{name}: readyz");
    for mut ws in [a, b, a2, b2] {
        let _ = ws.close(None).await;
    }
    assert!(
        world.sources(0).await.is_empty(),
        "{name}: every socket closed"
    );
}

/// A PROXY v2 header (TCP over IPv4) naming `client`.
fn proxy_v2(client: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(client), SocketAddr::V4(to)) = (client, to) else {
        unreachable!()
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&client.ip().octets());
    out.extend_from_slice(&to.ip().octets());
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&to.port().to_be_bytes());
    out
}

/// Directly, without a proxy in between.
async fn direct(world: &World) {
    let wss = world.node.wss.expect("the wss listener");
    // A trusted peer's header before TLS names the client.
    let header = proxy_v2("198.51.100.7:40000".parse().unwrap(), wss);
    let mut named = world.wss(1, wss.port(), "/", &header).await.unwrap();
    world.subscribe(&mut named, "named").await;
    // A trusted peer without a header is taken as direct.
    let mut plain = world.wss(1, wss.port(), "/", b"").await.unwrap();
    world.subscribe(&mut plain, "plain").await;
    assert_eq!(
        world.sources(2).await,
        [
            ("named".to_string(), "198.51.100.7".to_string()),
            ("plain".to_string(), "127.0.0.1".to_string()),
        ]
    );
    let _ = named.close(None).await;
    let _ = plain.close(None).await;

    // From an untrusted address, a header closes the connection at once, on every listener:
    // no answer, no upgrade.
    let before = world.refused_by_proxy_header().await;
    let v1 = b"PROXY TCP4 203.0.113.1 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
    let ports = [world.node.ws.port(), wss.port(), world.node.api.port()];
    for port in ports {
        for header in [
            v1.clone(),
            proxy_v2("203.0.113.1:1234".parse().unwrap(), wss),
        ] {
            let mut tcp = connect_from(9, port).await;
            tcp.write_all(&header).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("port {port}: the connection stays open"));
            assert!(
                read.is_err() || answer.is_empty(),
                "port {port}: answered {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let after = world.refused_by_proxy_header().await;
    assert_eq!(
        after - before,
        2 * ports.len() as u64,
        "each refusal is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_nginx_and_haproxy_are_seen_by_their_own_addresses() {
    let dir = std::env::temp_dir().join(format!("horizon-proxies-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let (node, (ca, cert, key, both)) = common::start_wss_dev_node(
        &dir,
        &[
            "--trusted-proxies".as_ref(),
            "127.0.0.1".as_ref(),
            "--max-connections-per-ip".as_ref(),
            "2".as_ref(),
            "--log-level".as_ref(),
            "info,horizon::api::access=debug".as_ref(),
        ],
    );
    let world = World { node, ca };
    let (ws, wss, api) = (world.node.ws, world.node.wss.unwrap(), world.node.api);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/proxy");
    let text = |p: &Path| p.display().to_string();
    let addr = |a: SocketAddr| a.to_string();

    direct(&world).await;

    // nginx: WebSockets passed through (TLS ends at Horizon) with a PROXY v1 header; the API
    // over the http module with X-Forwarded-For.
    let (ws_port, api_port) = (free_port(), free_port());
    let config = swap(
        &std::fs::read_to_string(root.join("nginx.conf")).unwrap(),
        &[
            ("127.0.0.1:5556", addr(wss)),
            ("127.0.0.1:8000", addr(api)),
            ("listen 443;", format!("listen 127.0.0.1:{ws_port};")),
            (
                "listen 8443 ssl;",
                format!("listen 127.0.0.1:{api_port} ssl;"),
            ),
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
        Command::new(binary("/usr/sbin/nginx"))
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
    binary("/usr/lib/nginx/modules/ngx_stream_module.so");
    wait_for_port(ws_port, &dir.join("nginx.out")).await;
    wait_for_port(api_port, &dir.join("nginx.out")).await;
    let base = format!("https://localhost:{api_port}");
    exercise(&world, "nginx", ws_port, &base, 2).await;
    drop(nginx);

    // HAProxy: TLS ends there; PROXY v2 to both the WebSocket and the REST listener.
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
        Command::new(binary("/usr/sbin/haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.out")).unwrap())
            .spawn()
            .expect("start haproxy"),
    );
    wait_for_port(port, &dir.join("haproxy.out")).await;
    exercise(
        &world,
        "haproxy",
        port,
        &format!("https://localhost:{port}"),
        5,
    )
    .await;
    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
}

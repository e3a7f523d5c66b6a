//! amqps (issue #17, the broker side): a `horizon serve` consumes through a TLS-terminating proxy
//! (HAProxy in TCP mode, certificates made by `openssl` for the test) in front of the local
//! RabbitMQ, and a client receives an event published to the broker. `check-config` shows what
//! an operator sees when the CA is wrong, the name does not match, or the broker wants a client
//! certificate; bad TLS files are refused at start with the file named.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kazoo::{declare_kazoo_exchanges, publish_call, token, Tenants};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The broker's `host:port` from the test URL.
fn broker_address() -> String {
    let url = common::amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("127.0.0.1:5672");
    if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:5672")
    }
}

/// `horizon check-config` with `args`: exit code and everything it said.
fn check_config(args: &[&str]) -> (Option<i32>, String) {
    let out = common::horizon_command()
        .arg("check-config")
        .args(args)
        .output()
        .expect("run horizon");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_consumes_from_an_amqps_broker_and_says_what_is_wrong_with_tls() {
    let dir = std::env::temp_dir().join(format!("horizon-amqps-{}", horizon::ids::random_hex(6)));
    let other = dir.join("other-ca");
    std::fs::create_dir_all(&other).unwrap();
    let (ca, _, _, server) = common::certificates(&dir, "DNS:localhost", "server");
    let (_, client_cert, client_key, _) = common::certificates(&dir, "DNS:horizon-node", "client");
    let (other_ca, _, _, _) = common::certificates(&other, "DNS:localhost", "server");

    // HAProxy terminates TLS in front of the broker: one port for any client, one that wants a
    // client certificate signed by the test CA.
    let (open_port, mutual_port) = (free_port(), free_port());
    let config = format!(
        "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
         frontend amqps\n    bind 127.0.0.1:{open_port} ssl crt {server}\n    default_backend broker\n\
         frontend amqps_mutual\n    bind 127.0.0.1:{mutual_port} ssl crt {server} ca-file {ca} verify required\n    default_backend broker\n\
         backend broker\n    server rabbit {broker}\n",
        server = path(&server),
        ca = path(&ca),
        broker = broker_address(),
    );
    std::fs::write(dir.join("haproxy.cfg"), config).unwrap();
    assert!(
        Path::new("/usr/sbin/haproxy").exists(),
        "haproxy is missing: scripts/test.sh installs it (apt-get install haproxy, as root)"
    );
    let _proxy = common::Killed(
        Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    wait_for_port(open_port).await;
    wait_for_port(mutual_port).await;
    let url = format!("amqps://guest:guest@localhost:{open_port}/%2f");
    let mutual = format!("amqps://guest:guest@localhost:{mutual_port}/%2f");

    // A node consumes through TLS; a client gets an event published to the broker.
    let tenants = Tenants::new();
    let auth = common::temp_file("amqps-auth", &tenants.auth_toml());
    let mut child = common::horizon_command()
        .args(common::SERVE_EPHEMERAL)
        .args(["--shards", "1", "--cluster-secret", "amqps-test"])
        .args(["--amqp-url", &url, "--amqp-tls-ca-file", path(&ca)])
        .args(["--auth-file", path(&auth)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run horizon");
    let _node = {
        use std::io::BufRead as _;
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut ws = None;
        let mut consuming = false;
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ws.is_none() || !consuming {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("the node did not consume over amqps: {log:?}"));
            if let Some(common::Listening::Ws(addr)) = common::listening(&line) {
                ws = Some(addr);
            }
            consuming |= line.contains("amqp: consuming from");
            log.push(line);
        }
        std::thread::spawn(move || for _ in rx {});
        (common::Killed(child), ws.unwrap())
    };
    let ws = _node.1;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/"))
        .await
        .unwrap();
    let subscribe = format!(
        r#"{{"action":"subscribe","auth_token":"{}","request_id":"r","data":{{"account_id":"{}","binding":"call.CHANNEL_CREATE.*"}}}}"#,
        token(&tenants.a),
        tenants.a
    );
    client.send(Message::text(subscribe)).await.unwrap();
    let reply = client.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("success"), "{reply}");
    let amqp = common::amqp_connect().await;
    let channel = amqp.create_channel().await.unwrap();
    declare_kazoo_exchanges(&channel).await;
    let call_id = format!("amqps-{}", horizon::ids::random_hex(4));
    publish_call(&channel, "CHANNEL_CREATE", &call_id, &tenants.a).await;
    let event = tokio::time::timeout(Duration::from_secs(10), client.next())
        .await
        .expect("an event over amqps")
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap();
    assert!(event.contains(&call_id), "{event}");

    // check-config: reachable with the right CA...
    let (code, out) = check_config(&["--amqp-url", &url, "--amqp-tls-ca-file", path(&ca)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("amqps: ok, CA file and public roots"), "{out}");
    // ...not with another CA, nor with a name the certificate does not carry.
    let (code, out) = check_config(&["--amqp-url", &url, "--amqp-tls-ca-file", path(&other_ca)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    let by_address = format!("amqps://guest:guest@127.0.0.1:{open_port}/%2f");
    let (code, out) = check_config(&["--amqp-url", &by_address, "--amqp-tls-ca-file", path(&ca)]);
    assert_eq!(code, Some(1), "the certificate names localhost only: {out}");
    // A broker that wants a client certificate.
    let (code, out) = check_config(&["--amqp-url", &mutual, "--amqp-tls-ca-file", path(&ca)]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = check_config(&[
        "--amqp-url",
        &mutual,
        "--amqp-tls-ca-file",
        path(&ca),
        "--amqp-tls-cert-file",
        path(&client_cert),
        "--amqp-tls-key-file",
        path(&client_key),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("client certificate"), "{out}");

    // Bad files are refused before anything starts, the key and the file named (exit 2).
    let missing = dir.join("missing.pem");
    let (code, out) = check_config(&["--amqp-url", &url, "--amqp-tls-ca-file", path(&missing)]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("amqp_tls_ca_file") && out.contains("missing.pem"),
        "{out}"
    );
    let (code, out) = check_config(&["--amqp-url", &url, "--amqp-tls-ca-file", path(&client_key)]);
    assert_eq!(code, Some(2));
    assert!(out.contains("no PEM certificate"), "{out}");
    let (code, out) = check_config(&[
        "--amqp-url",
        &mutual,
        "--amqp-tls-cert-file",
        path(&client_cert),
        "--amqp-tls-key-file",
        path(&client_cert),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("amqp_tls_key_file") && out.contains("not a PEM private key"),
        "{out}"
    );
    let (code, out) = check_config(&[
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--amqp-tls-ca-file",
        path(&ca),
    ]);
    assert_eq!(code, Some(2));
    assert!(out.contains("not amqps://"), "{out}");
    let status = common::horizon_command()
        .args([
            "serve",
            "--amqp-url",
            &url,
            "--amqp-tls-ca-file",
            path(&missing),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "serve refuses it too");
    let _ = std::fs::remove_dir_all(&dir);
}

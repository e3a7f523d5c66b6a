//! Helpers shared by the integration tests: the broker they need, and names that never collide
//! between concurrent runs.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker every integration test uses; `scripts/test.sh` makes sure it is reachable.
pub fn amqp_url() -> String {
    std::env::var("HORIZON_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Connects to the test broker, or fails the test with a message that says what to do: an
/// integration test never skips because the broker is missing.
pub async fn amqp_connect() -> lapin::Connection {
    let url = amqp_url();
    match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(e) => panic!(
            "no RabbitMQ broker at {url}: {e}\n\
             run the suite with scripts/test.sh (it starts or installs one), \
             or point HORIZON_TEST_AMQP_URL at a broker"
        ),
    }
}

/// A name unique to this process and call, for exchanges and queues.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{what}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub mod kazoo;

/// `horizon serve` (see [`horizon_command`]) with its WebSocket and REST listeners on ephemeral
/// loopback ports; the log says which.
pub fn serve_command() -> std::process::Command {
    let mut command = horizon_command();
    command.args([
        "serve",
        "--ws-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    command
}

/// Writes `contents` to a new file under the temporary directory (the name starts with `what`)
/// and returns its path; the caller removes it.
pub fn temp_file(what: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{what}-{}.toml", horizon::ids::random_hex(6)));
    std::fs::write(&path, contents).expect("write a temporary file");
    path
}

/// `horizon` (the binary under test) as a command whose child dies with the test thread that
/// started it, so that a failing test never leaves a gateway running.
pub fn horizon_command() -> std::process::Command {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_horizon"));
    // Webhooks (and their database file in the working directory) only where a test asks for
    // them (tests/common/webhooks.rs).
    command.env("HORIZON_WEBHOOKS_ENABLED", "false");
    // A node stopped with sockets open closes them at once, unless a test asks for a drain.
    command.env("HORIZON_DRAIN_SPREAD_SECS", "0");
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}
pub mod voipbin;
pub mod webhooks;

/// One HTTP/1.1 request over a fresh connection (`Connection: close`): status and body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: horizon\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the API answers within 10 s")
    .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    // hyper answers small bodies with Content-Length; chunked only if it streams (it never does here).
    (status, body.to_string())
}

/// A connection and channel to the test broker, with VoIPBin's event exchange declared as
/// VoIPBin declares it (a durable topic exchange) unless it is there already.
pub async fn voipbin_broker() -> (lapin::Connection, lapin::Channel) {
    use lapin::options::ExchangeDeclareOptions;
    use lapin::types::FieldTable;
    const EXCHANGE: &str = horizon::families::voipbin::EXCHANGE;
    let amqp = amqp_connect().await;
    let channel = amqp.create_channel().await.unwrap();
    // A passive declare of a missing exchange closes its channel: probe on a channel of its own.
    let probe = amqp.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = probe
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok();
    if !exists {
        channel
            .exchange_declare(
                EXCHANGE.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare VoIPBin's exchange");
    }
    (amqp, channel)
}

/// The development token a `serve` log line points at (`... written to PATH`): the token itself
/// is never in the log.
#[allow(dead_code)]
pub fn dev_token(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("development token")?;
    let (_, path) = rest.rsplit_once(" written to ")?;
    let token = std::fs::read_to_string(path.trim()).ok()?;
    assert!(
        !line.contains(token.trim()),
        "the token is in the log: {line}"
    );
    Some(token.trim().to_string())
}

/// `serve` on ephemeral loopback ports (the log says which).
#[allow(dead_code)]
pub const SERVE_EPHEMERAL: [&str; 5] = [
    "serve",
    "--ws-listen",
    "127.0.0.1:0",
    "--api-listen",
    "127.0.0.1:0",
];

/// A child process killed (and reaped) when dropped.
#[allow(dead_code)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `horizon serve` in development mode (embedded bus, 2 shards): the process, its WebSocket and
/// API addresses and its development token. The rest of its log is drained in the background.
#[allow(dead_code)]
pub fn start_dev_node() -> (Killed, std::net::SocketAddr, std::net::SocketAddr, String) {
    let node = start_dev_node_with(&[]);
    (node.child, node.ws, node.api, node.token)
}

/// A development node (see [`start_dev_node`]) started with `extra` arguments.
#[allow(dead_code)]
pub struct DevNode {
    pub child: Killed,
    pub ws: std::net::SocketAddr,
    /// The wss listener, if `extra` asked for one.
    pub wss: Option<std::net::SocketAddr>,
    pub api: std::net::SocketAddr,
    pub token: String,
    /// Its log (stdout) so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// [`start_dev_node`] with `extra` arguments (`--wss-listen` and its files, for one).
#[allow(dead_code)]
pub fn start_dev_node_with(extra: &[&std::ffi::OsStr]) -> DevNode {
    use std::io::BufRead as _;
    let wants_wss = extra.iter().any(|a| *a == "--wss-listen");
    let mut child = horizon_command()
        .args(SERVE_EPHEMERAL)
        .args(["--shards", "2"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run horizon");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut wss, mut api, mut token) = (None, None, None, None);
    let mut log = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        match listening(&line) {
            Some(Listening::Ws(addr)) => ws = Some(addr),
            Some(Listening::Api(addr)) => api = Some(addr),
            None => {}
        }
        wss = wss.or(listening_wss(&line));
        if let Some(found) = dev_token(&line) {
            token = Some(found);
        }
        log.push(line);
        if ws.is_some() && api.is_some() && token.is_some() && (wss.is_some() || !wants_wss) {
            break;
        }
    }
    let (Some(ws), Some(api), Some(token)) = (ws, api, token) else {
        panic!("serve did not start: {log:?}");
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(log));
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    DevNode {
        child: Killed(child),
        ws,
        wss,
        api,
        token,
        log,
    }
}

/// A development node with a wss listener too, on a certificate for `localhost` and 127.0.0.1
/// made in `dir` (see [`certificates`]), started with `extra` arguments: the node and the
/// (CA, cert, key, cert+key) files.
#[allow(dead_code)]
pub fn start_wss_dev_node(
    dir: &std::path::Path,
    extra: &[&std::ffi::OsStr],
) -> (
    DevNode,
    (
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
    ),
) {
    let files = certificates(dir, "DNS:localhost,IP:127.0.0.1", "leaf");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--wss-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert-file".as_ref(),
        files.1.as_os_str(),
        "--tls-key-file".as_ref(),
        files.2.as_os_str(),
    ];
    args.extend_from_slice(extra);
    (start_dev_node_with(&args), files)
}

/// What a `serve` log line says about a listener.
#[allow(dead_code)]
pub enum Listening {
    Ws(std::net::SocketAddr),
    Api(std::net::SocketAddr),
}

/// The listener a `serve` log line announces, if it announces one.
#[allow(dead_code)]
pub fn listening(line: &str) -> Option<Listening> {
    let addr = |rest: &str| rest.split_whitespace().next().and_then(|a| a.parse().ok());
    if let Some((_, rest)) = line.split_once("websocket: listening on ws://") {
        return addr(rest).map(Listening::Ws);
    }
    let (_, rest) = line.split_once("api: listening on http://")?;
    addr(rest).map(Listening::Api)
}

/// Spawns `command` (a `horizon serve`) with its stdout and stderr piped into one channel of
/// lines, read in the background: the child, and its log as it comes.
#[allow(dead_code)]
pub fn spawn_logged(
    mut command: std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run horizon serve");
    let (tx, log) = std::sync::mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
    }
    (child, log)
}

/// Resident memory of process `pid`, in bytes.
#[allow(dead_code)]
pub fn rss(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A rustls client configuration trusting only `ca`, with these TLS `versions` and ALPN
/// `protocols` (rustls on *ring*, as the node uses).
#[allow(dead_code)]
pub fn tls_client_config(
    ca: &std::path::Path,
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
    protocols: &[&[u8]],
) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// The wss listener a `serve` log line announces, if it announces it.
#[allow(dead_code)]
pub fn listening_wss(line: &str) -> Option<std::net::SocketAddr> {
    let (_, rest) = line.split_once("websocket: listening on wss://")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A test CA (made once per `dir`) and a certificate it signed for `sans` (e.g.
/// `DNS:localhost,IP:127.0.0.1`), named `name`: (CA, cert, key, cert+key) files. Made with
/// `openssl`; `extendedKeyUsage` covers servers and clients.
#[allow(dead_code)]
pub fn certificates(
    dir: &std::path::Path,
    sans: &str,
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use std::process::{Command, Stdio};
    let file = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?} failed");
    };
    let (key_name, csr_name, ext_name, cert_name, both_name) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
        format!("{name}-both.pem"),
    );
    std::fs::write(
        file(&ext_name),
        format!("subjectAltName={sans}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"),
    )
    .unwrap();
    if !file("ca.pem").exists() {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=horizon-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
    }
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key_name,
        "-out",
        &csr_name,
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr_name,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext_name,
        "-out",
        &cert_name,
    ]);
    let mut pem = std::fs::read(file(&cert_name)).unwrap();
    pem.extend(std::fs::read(file(&key_name)).unwrap());
    std::fs::write(file(&both_name), pem).unwrap();
    (
        file("ca.pem"),
        file(&cert_name),
        file(&key_name),
        file(&both_name),
    )
}

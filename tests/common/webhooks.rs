//! The webhook tests' world: real HTTP receivers on loopback that record every request and
//! answer as told, `horizon serve` nodes as child processes (so that a node can be killed and
//! restarted), fresh PostgreSQL databases, and the crossbar calls a Kazoo user makes.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

/// How a receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u16),
    /// Accepts and reads the request, never answers.
    Hang,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    default: Option<Reply>,
}

/// A real HTTP/1.1 server on a loopback port.
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            script: Arc::default(),
            task: None,
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let requests = self.requests.clone();
        let script = self.script.clone();
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (requests, script) = (requests.clone(), script.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (requests, script) = (requests.clone(), script.clone());
                            async move {
                                let method = request.method().to_string();
                                let target = request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default();
                                let headers = request
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or_default().to_string())
                                    })
                                    .collect();
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let reply = {
                                    let mut script = script.lock().unwrap();
                                    script
                                        .replies
                                        .pop_front()
                                        .or(script.default)
                                        .unwrap_or(Reply::Status(200))
                                };
                                requests.lock().unwrap().push(Received {
                                    method,
                                    target,
                                    headers,
                                    body,
                                    at: Instant::now(),
                                });
                                match reply {
                                    Reply::Hang => std::future::pending::<()>().await,
                                    Reply::Status(_) => {}
                                }
                                let Reply::Status(code) = reply else {
                                    unreachable!()
                                };
                                let mut response =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Answers the next requests with `replies`, in order, then as before.
    pub fn script(&self, replies: &[Reply]) {
        self.script.lock().unwrap().replies.extend(replies);
    }

    /// Answers every request not scripted with `reply`.
    pub fn default_reply(&self, reply: Reply) {
        self.script.lock().unwrap().default = Some(reply);
    }

    /// Closes the port and every open connection: the receiver is down.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.serve(listener);
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("rebind {}: {e}", self.addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `count` requests arrived (panics after `within`).
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.requests();
            if seen.len() >= count {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} requests within {within:?} at {}",
                seen.len(),
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits `quiet` and returns everything received (for "nothing more arrives").
    pub async fn settle(&self, quiet: Duration) -> Vec<Received> {
        tokio::time::sleep(quiet).await;
        self.requests()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `horizon serve` child process.
pub struct Node {
    child: Child,
    pub api: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
    dir: Option<PathBuf>,
}

impl Node {
    /// Starts `horizon serve` with `args` (flag, value pairs) and waits until its API listens
    /// and its webhooks are on.
    pub fn start(args: &[(&str, String)]) -> Node {
        let args: Vec<String> = args
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
            .collect();
        Node::spawn(args, None)
    }

    /// [`Node::start`] in working directory `dir`.
    pub fn start_in(dir: &std::path::Path, args: &[(&str, String)]) -> Node {
        let args: Vec<String> = args
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
            .collect();
        Node::spawn(args, Some(dir.to_path_buf()))
    }

    fn spawn(args: Vec<String>, dir: Option<PathBuf>) -> Node {
        let mut command = super::serve_command();
        command.env_remove("HORIZON_WEBHOOKS_ENABLED");
        if let Some(dir) = &dir {
            command.current_dir(dir);
        }
        command
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start horizon serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, tx) = (log.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, addr)) = line.split_once("api: listening on http://") {
                        let addr = addr.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send(addr.parse::<SocketAddr>().ok());
                    }
                    log.lock().unwrap().push(line);
                }
                let _ = tx.send(None);
            });
        }
        let api = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(api)) => api,
            _ => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "horizon serve did not start:\n{}",
                    log.lock().unwrap().join("\n")
                )
            }
        };
        // With a broker, the hooks' consumer is on once it says so: a hook created earlier
        // would wait for its binding only a few seconds, which a loaded machine can exceed. A
        // node whose broker is meant to be away goes on after a while.
        let has = |flag: &str| args.iter().any(|a| a == flag);
        if has("--amqp-url") && has("--webhooks-db") {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline
                && !log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|line| line.contains("webhooks: consuming"))
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Node {
            child,
            api,
            log,
            args,
            dir,
        }
    }

    /// Kills the process (SIGKILL: no goodbye, in-flight work lost).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The same node again (same configuration, same database, same queue).
    pub fn restart(mut self) -> Node {
        self.kill();
        Node::spawn(self.args.clone(), self.dir.clone())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A crossbar call with `token`; `body` is sent as `{"data": body}`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body
            .map(|b| serde_json::json!({ "data": b }).to_string())
            .unwrap_or_default();
        let (status, text) =
            super::http(self.api, method, path, &[("X-Auth-Token", token)], &body).await;
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        (status, value)
    }

    /// Creates a hook for `account` and returns its id.
    pub async fn create_hook(&self, account: &str, doc: Value) -> String {
        let (status, answer) = self
            .call(
                "PUT",
                &format!("/v2/accounts/{account}/webhooks"),
                &super::kazoo::token(account),
                Some(doc),
            )
            .await;
        assert_eq!(status, 201, "create: {answer}");
        answer["data"]["id"].as_str().unwrap().to_string()
    }

    /// Waits until this node fires exactly `count` hooks (its `/metrics` say so).
    pub async fn wait_hooks(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let want = format!("horizon_webhook_hooks{{state=\"enabled\"}} {count}\n");
        loop {
            let (status, text) = super::http(self.api, "GET", "/metrics", &[], "").await;
            if status == 200 && text.contains(&want) {
                return;
            }
            assert!(Instant::now() < deadline, "never {count} hooks in force");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The attempts of one hook once there are at least `count` (the log is written in
    /// batches, a moment after the requests).
    pub async fn attempts_at_least(&self, account: &str, hook: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempts = self.attempts(account, hook).await;
            if attempts.len() >= count {
                return attempts;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} attempts logged",
                attempts.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The attempts of one hook, newest first.
    pub async fn attempts(&self, account: &str, hook: &str) -> Vec<Value> {
        let (status, answer) = self
            .call(
                "GET",
                &format!("/v2/accounts/{account}/webhooks/{hook}/attempts?page_size=1000"),
                &super::kazoo::token(account),
                None,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        answer["data"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every test node shares: the broker, the auth file of `tenants`, a queue of its own,
/// private targets allowed (receivers are on loopback), quick retries, short timeouts and a
/// failure threshold no test reaches unless it means to.
pub fn node_args(
    auth_file: &std::path::Path,
    queue: &str,
    db: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("amqp-url", super::amqp_url()),
        ("auth-file", auth_file.display().to_string()),
        ("cluster-secret", "webhook-tests".into()),
        ("webhooks-db", db.to_string()),
        ("webhooks-queue", queue.to_string()),
        ("webhooks-allow-private-targets", "true".into()),
        ("webhooks-retry-first-ms", "200".into()),
        ("webhooks-request-timeout-secs", "1".into()),
        ("webhooks-connect-timeout-secs", "1".into()),
        ("webhooks-attempt-failure-count", "1000".into()),
        ("shards", "1".into()),
    ]
}

/// Replaces (or adds) one argument.
pub fn with_arg(
    mut args: Vec<(&'static str, String)>,
    key: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    args.retain(|(k, _)| *k != key);
    args.push((key, value.to_string()));
    args
}

/// A SQLite file of its own under the temporary directory.
pub fn sqlite_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("horizon-{what}-{}.db", horizon::ids::random_hex(6)))
}

/// The PostgreSQL server the tests use; `scripts/test.sh` makes sure it is reachable.
pub fn postgres_url(database: &str) -> String {
    let base = std::env::var("HORIZON_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
    format!("{}/{database}", base.trim_end_matches('/'))
}

/// A fresh PostgreSQL database for one test (dropped by [`drop_postgres`]); fails the test with
/// a message that says what to do when the server is missing.
pub async fn fresh_postgres() -> (String, String) {
    sqlx::any::install_default_drivers();
    let admin = postgres_url("test");
    let mut connection = match <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
        Ok(c) => c,
        Err(e) => panic!(
            "no PostgreSQL at {admin}: {e}\nrun the suite with scripts/test.sh, or point \
             HORIZON_TEST_POSTGRES_URL at a server (trust auth, database test)"
        ),
    };
    let name = format!("horizon_test_{}", horizon::ids::random_hex(6));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    (postgres_url(&name), name)
}

pub async fn drop_postgres(name: &str) {
    let admin = postgres_url("test");
    if let Ok(mut connection) = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut connection)
            .await;
    }
}

/// Deletes a test's shared webhook queue.
pub async fn delete_queue(queue: &str) {
    let amqp = super::amqp_connect().await;
    let channel = amqp.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
        .await;
}

//! A Kazoo-shaped world for the end-to-end tests: a Horizon node started in-process on real
//! sockets, tenants with unique account ids (tests run concurrently against one broker), Kazoo's
//! way of publishing call and document events, and a blackhole client.

#![allow(dead_code)]

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use horizon::api::{Api, ApiConfig};
use horizon::auth::{Auth, JwtKeys};
use horizon::config::ServeConfig;
use horizon::dialect::{BlackholeLimits, Dialects};
use horizon::ingest::{AmqpConfig, EventSource, Ingest, Source};
use horizon::shard::Gateway;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "test-secret";

/// Account ids unique to one test: a reseller with two children, one of which has a child.
pub struct Tenants {
    pub reseller: String,
    pub a: String,
    pub a_child: String,
    pub b: String,
}

impl Tenants {
    pub fn new() -> Tenants {
        let tag = horizon::ids::random_hex(6);
        Tenants {
            reseller: format!("res-{tag}"),
            a: format!("acct-a-{tag}"),
            a_child: format!("acct-ac-{tag}"),
            b: format!("acct-b-{tag}"),
        }
    }

    /// The auth file: the tree, and tokens `tok-<account>` for each account plus `tok-admin`
    /// (superduper) and `tok-expired`.
    pub fn auth_toml(&self) -> String {
        format!(
            r#"
[[accounts]]
id = "{r}"
[[accounts]]
id = "{a}"
parent = "{r}"
[[accounts]]
id = "{ac}"
parent = "{a}"
[[accounts]]
id = "{b}"
parent = "{r}"

[[tokens]]
token = "tok-{r}"
account_id = "{r}"
[[tokens]]
token = "tok-{a}"
account_id = "{a}"
[[tokens]]
token = "tok-{ac}"
account_id = "{ac}"
[[tokens]]
token = "tok-{b}"
account_id = "{b}"
[[tokens]]
token = "tok-admin-{r}"
account_id = "{r}"
superduper_admin = true
[[tokens]]
token = "tok-expired-{a}"
account_id = "{a}"
expires_at = "2001-01-01T00:00:00Z"
"#,
            r = self.reseller,
            a = self.a,
            ac = self.a_child,
            b = self.b
        )
    }
}

pub fn token(account: &str) -> String {
    format!("tok-{account}")
}

/// A Horizon node in this process: shards, dialect, ingest - everything `serve` wires.
/// The cluster secret every test node shares.
pub const CLUSTER_SECRET: &[u8] = b"horizon-test-cluster";

pub struct Node {
    pub gateway: Gateway,
    pub ingest: Ingest,
    pub auth: Arc<Auth>,
    /// The REST API, on its own ephemeral port.
    pub api: Api,
    pub node: String,
    auth_file: PathBuf,
}

impl Node {
    /// `amqp`: consume from the test broker (else the embedded bus).
    pub fn start(
        amqp: bool,
        auth_toml: &str,
        tweak: impl FnOnce(&mut ServeConfig, &mut BlackholeLimits),
    ) -> Node {
        let auth_file = std::env::temp_dir().join(format!(
            "horizon-test-auth-{}-{}.toml",
            std::process::id(),
            horizon::ids::random_hex(6)
        ));
        std::fs::write(&auth_file, auth_toml).expect("write the auth file");
        let mut config = ServeConfig {
            ws_listen: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            // `scripts/test.sh` runs the socket suites on both backends.
            io_backend: std::env::var("HORIZON_IO_BACKEND")
                .ok()
                .and_then(|value| value.parse().ok())
                .unwrap_or_default(),
            // Stopping a node with sockets open is instant (tests/drain.rs measures the spread).
            drain_spread: Duration::ZERO,
            ..ServeConfig::default()
        };
        let mut limits = BlackholeLimits::default();
        tweak(&mut config, &mut limits);
        let keys = JwtKeys::new(Some(JWT_SECRET.as_bytes().to_vec()), None).unwrap();
        let auth = Arc::new(Auth::new(Some(auth_file.clone()), keys).expect("valid auth file"));
        let node = format!("test-{}", horizon::ids::random_hex(4));
        // The test broker, unless the tweak named others (a cluster's nodes).
        let amqp_url = config.amqp_url.clone().unwrap_or_else(super::amqp_url);
        let source = if amqp {
            Source::Amqp(AmqpConfig {
                url: amqp_url.clone(),
                node: node.clone(),
                prefetch: 500,
                queue_expires: Duration::from_secs(30),
            })
        } else {
            Source::Embedded
        };
        let ingest = Ingest::with_history(
            source,
            config.history.then(|| config.history_config.clone()),
        );
        let dialects = Dialects::new(
            auth.clone(),
            Arc::new(ingest.clone()) as Arc<dyn EventSource>,
            limits,
        );
        let api_limits = (config.api_max_connections, config.api_header_timeout);
        let cors = config.cors_allowed_origins.clone();
        let trusted_proxies = config.trusted_proxies.clone();
        let mut gateway = Gateway::start(config, Arc::new(dialects)).expect("gateway starts");
        let publisher = gateway.take_publisher().expect("publisher");
        ingest.start(publisher).expect("ingest starts");
        let api = Api::start(
            ApiConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                node: node.clone(),
                amqp_url: amqp.then_some(amqp_url),
                cluster_timeout: Duration::from_secs(2),
                cluster_key: Some(CLUSTER_SECRET.to_vec()),
                max_connections: api_limits.0,
                header_timeout: api_limits.1,
                cors_allowed_origins: cors,
                // The in-process nodes test the sockets; webhooks are tested on `serve`.
                webhooks: None,
                ws_port: gateway.local_addr().port(),
                trusted_proxies: trusted_proxies.clone(),
            },
            auth.clone(),
            ingest.clone(),
            gateway.take_registry().expect("registry"),
        )
        .expect("api starts");
        Node {
            gateway,
            ingest,
            auth,
            api,
            node,
            auth_file,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }

    pub fn stop(self) {
        self.api.set_draining();
        self.gateway.shutdown();
        self.gateway.join();
        self.ingest.shutdown(Duration::from_secs(3));
        self.api.shutdown();
        let _ = std::fs::remove_file(&self.auth_file);
    }

    /// Waits until the ingest side is consuming (AMQP) or running (embedded).
    pub async fn ready(&self) {
        for _ in 0..200 {
            if self.ingest.status().ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "the ingest side never became ready: {:?}",
            self.ingest.status().state()
        );
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A blackhole client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Event frames that arrived while waiting for a reply.
    pub events: VecDeque<OwnedValue>,
    next_id: u32,
}

pub fn parse(text: &str) -> OwnedValue {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/").await
    }

    pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("upgrade");
        Client {
            ws,
            events: VecDeque::new(),
            next_id: 0,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next text frame, parsed; `None` if nothing comes within `wait`. Panics on close.
    pub async fn next_json(&mut self, wait: Duration) -> Option<OwnedValue> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => return Some(parse(text.as_str())),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a command (a `request_id` is added) and returns its reply; events that arrive
    /// meanwhile are kept in `events`.
    pub async fn command(
        &mut self,
        action: &str,
        auth_token: Option<&str>,
        data: &str,
    ) -> OwnedValue {
        self.next_id += 1;
        let request_id = format!("r{}", self.next_id);
        let auth = auth_token
            .map(|t| format!(r#","auth_token":"{t}""#))
            .unwrap_or_default();
        self.send_text(&format!(
            r#"{{"action":"{action}","request_id":"{request_id}"{auth},"data":{data}}}"#
        ))
        .await;
        self.reply_to(&request_id).await
    }

    pub async fn reply_to(&mut self, request_id: &str) -> OwnedValue {
        loop {
            let frame = self
                .next_json(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no reply to {request_id}"));
            match frame.get_str("action") {
                Some("reply") => {
                    assert_eq!(frame.get_str("request_id"), Some(request_id), "{frame}");
                    return frame;
                }
                Some("event") => self.events.push_back(frame),
                _ => panic!("unexpected frame {frame}"),
            }
        }
    }

    /// Subscribes and asserts success.
    pub async fn subscribe(&mut self, token: Option<&str>, data: &str) -> OwnedValue {
        let reply = self.command("subscribe", token, data).await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        reply
    }

    /// The event frames that arrive before the one whose `data.call_id` or `data.id` is
    /// `sentinel` (which is consumed). Publish what must not arrive, then a sentinel that must:
    /// a socket receives events in publish order, so everything delivered before the sentinel is
    /// in the list, with no wait for silence.
    pub async fn events_until(&mut self, sentinel: &str) -> Vec<OwnedValue> {
        let is_sentinel = |frame: &OwnedValue| {
            frame
                .get("data")
                .and_then(|d| d.get_str("call_id").or_else(|| d.get_str("id")))
                == Some(sentinel)
        };
        let mut out = Vec::new();
        while let Some(frame) = self.events.pop_front() {
            if is_sentinel(&frame) {
                return out;
            }
            out.push(frame);
        }
        loop {
            let frame = self
                .next_json(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("sentinel {sentinel} not received; before it: {out:?}"));
            if is_sentinel(&frame) {
                return out;
            }
            out.push(frame);
        }
    }

    /// Waits for the server's close frame; returns (code, reason).
    pub async fn closed(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close frame within {within:?}"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }
}

/// The error strings of a reply.
pub fn errors(reply: &OwnedValue) -> Vec<String> {
    assert_eq!(reply.get_str("status"), Some("error"), "{reply}");
    reply
        .get("data")
        .and_then(|d| d.get_array("errors"))
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn string_list(value: Option<&OwnedValue>) -> Vec<String> {
    value
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Publishes as Kazoo does: a channel event on `callevt`, key `call.<EVENT>.<encoded call id>`.
pub async fn publish_call(channel: &lapin::Channel, event: &str, call_id: &str, account: &str) {
    let body = format!(
        r#"{{"Event-Name":"{event}","Event-Category":"call_event","Call-ID":"{call_id}",
        "Caller-ID-Number":"+15551230000","Caller-ID-Name":"Tester","Callee-ID-Number":"2000",
        "Call-Direction":"inbound","Timestamp":63890000000,
        "Custom-Channel-Vars":{{"Account-ID":"{account}","Owner-ID":"owner-1","Authorizing-Type":"device"}},
        "Msg-ID":"{msg}","Server-ID":"","Node":"ecallmgr@fs1.example","App-Name":"ecallmgr","App-Version":"4.3.0"}}"#,
        msg = horizon::ids::random_hex(8)
    );
    let key = format!(
        "call.{event}.{}",
        horizon::families::encode_segment(call_id)
    );
    publish(channel, "callevt", &key, body.as_bytes()).await;
}

/// A document change on `configuration`, key `<action>.<encoded account db>.<type>.<id>`.
pub async fn publish_doc(
    channel: &lapin::Channel,
    action: &str,
    account: &str,
    kind: &str,
    id: &str,
) {
    let body = format!(
        r#"{{"Event-Name":"{action}","Event-Category":"configuration","ID":"{id}","Type":"{kind}",
        "Account-ID":"{account}","Database":"account/x","Rev":"1-abc","Msg-ID":"m","App-Name":"crossbar","App-Version":"4.3.0","Node":"n","Server-ID":""}}"#
    );
    let key = format!(
        "{action}.{}.{kind}.{id}",
        horizon::families::account_db(account)
    );
    publish(channel, "configuration", &key, body.as_bytes()).await;
}

pub async fn publish(channel: &lapin::Channel, exchange: &str, key: &str, body: &[u8]) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("publish confirm");
}

/// Declares Kazoo's exchanges the way Kazoo does (non-durable topic), for publishers that may
/// run before a node has bound anything.
pub async fn declare_kazoo_exchanges(channel: &lapin::Channel) {
    for exchange in [
        "callevt",
        "configuration",
        "conference",
        "faxes",
        "presence",
        "registrar",
        // Where commands go (konami's).
        "metaflow",
    ] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
    }
}

/// The node queue's bindings as the broker reports them: `(exchange, routing key)`, without
/// the default exchange's implicit one.
pub fn broker_bindings(queue: &str) -> BTreeSet<(String, String)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_bindings",
            "-q",
            "--no-table-headers",
            "source_name",
            "destination_name",
            "routing_key",
        ])
        .output()
        .expect("rabbitmqctl runs (scripts/test.sh checks the broker)");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut cols = line.split('\t');
            let (source, dest, key) = (cols.next()?, cols.next()?, cols.next()?);
            (dest == queue && !source.is_empty()).then(|| (source.to_string(), key.to_string()))
        })
        .collect()
}

/// Polls the broker until the node queue's bindings equal `want` (binds and unbinds that follow
/// a disconnect are asynchronous), or fails with both sets.
pub async fn expect_bindings(queue: &str, want: &[(&str, &str)]) {
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(e, k)| (e.to_string(), k.to_string()))
        .collect();
    let mut have = BTreeSet::new();
    for _ in 0..20 {
        have = broker_bindings(queue);
        if have == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("node queue {queue} bindings on the broker:\n  have {have:?}\n  want {want:?}");
}

/// Deletes a test's event stream and its epoch queue (`history = "stream"`).
pub async fn delete_stream(channel: &lapin::Channel, stream: &str) {
    // Unbound first: RabbitMQ 3.10 crashes a publisher's channel whose publish is routed to a
    // stream while it is being deleted (`stream_not_found` in rabbit_channel), and the other
    // tests publish to the same exchanges meanwhile.
    for binding in horizon::families::stream_bindings() {
        let _ = channel
            .queue_unbind(
                stream.into(),
                binding.exchange.into(),
                binding.key.as_str().into(),
                lapin::types::FieldTable::default(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for queue in [stream.to_string(), format!("{stream}.epoch")] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
}

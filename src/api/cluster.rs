//! Cluster-wide socket listings over AMQP.
//!
//! Every node declares the fanout exchange `horizon.control` and an exclusive queue
//! `horizon.control.<node>` bound to it, and publishes a heartbeat there every second; a node is
//! *live* while its heartbeat is younger than three seconds. A listing is a request on the
//! fanout (every node, the asker included, receives it) with `reply_to` naming the asker's
//! queue; each node answers from its own shards' registries through the default exchange. The
//! asker waits for every live node or a deadline, and says which nodes did not answer
//! (`partial`). Without a broker the cluster is this node alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Notify;

use crate::json::{self, TapeValue};
use crate::shard::Registry;
use crate::shard::SocketInfo;

const EXCHANGE: &str = "horizon.control";
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is no longer waited for.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// Seconds from year 0 (Gregorian) to 1970: Kazoo's timestamps count from year 0.
const GREGORIAN_OFFSET: u64 = 62_167_219_200;

/// One listing: each socket as a JSON object, and which live nodes did not answer.
#[derive(Debug, Default)]
pub struct Listing {
    pub sockets: Vec<Vec<u8>>,
    pub missing: Vec<String>,
}

struct Pending {
    replies: HashMap<String, Vec<Vec<u8>>>,
    done: Arc<Notify>,
}

#[derive(Default)]
struct State {
    channel: Option<Channel>,
    peers: HashMap<String, Instant>,
    pending: HashMap<String, Pending>,
}

pub struct Cluster {
    node: String,
    url: Option<String>,
    queue: String,
    registry: Arc<Mutex<Registry>>,
    state: Mutex<State>,
    timeout: Duration,
}

impl Cluster {
    pub fn new(
        node: String,
        url: Option<String>,
        registry: Registry,
        timeout: Duration,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            queue: format!("{EXCHANGE}.{node}"),
            node,
            url,
            registry: Arc::new(Mutex::new(registry)),
            state: Mutex::new(State::default()),
            timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shards' registry, for metrics (the same lock serializes every use of it).
    pub async fn with_registry<T: Send + 'static>(
        &self,
        ask: impl FnOnce(&Registry) -> T + Send + 'static,
    ) -> Option<T> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || {
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            ask(&registry)
        })
        .await
        .ok()
    }

    /// Nodes heard from within [`DEAD_AFTER`], this one included.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .state()
            .peers
            .iter()
            .filter(|(_, seen)| seen.elapsed() < DEAD_AFTER)
            .map(|(node, _)| node.clone())
            .collect();
        if !nodes.contains(&self.node) {
            nodes.push(self.node.clone());
        }
        nodes.sort();
        nodes
    }

    /// This node's sockets filed under `account` (and with id `socket`, if given), as JSON.
    async fn local(&self, account: String, socket: Option<String>) -> Vec<Vec<u8>> {
        let node = self.node.clone();
        self.with_registry(move |registry| {
            let (sockets, _) = registry.sockets(Duration::from_secs(1));
            sockets
                .iter()
                .filter(|s| s.accounts.contains(&account))
                .filter(|s| socket.as_ref().is_none_or(|id| *id == socket_id(s.id)))
                .map(|s| socket_json(s, &node))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Every socket of `account` (or the one with id `socket`) across the cluster.
    pub async fn list(&self, account: &str, socket: Option<&str>) -> Listing {
        let channel = self.state().channel.clone();
        let Some(channel) = channel else {
            let sockets = self
                .local(account.to_string(), socket.map(str::to_string))
                .await;
            // With a broker configured but unreachable, other nodes may exist: say so.
            let missing = if self.url.is_some() {
                self.live_nodes()
                    .into_iter()
                    .filter(|n| *n != self.node)
                    .collect()
            } else {
                Vec::new()
            };
            return Listing { sockets, missing };
        };
        let expected = self.live_nodes();
        let request = crate::ids::random_hex(12);
        let done = Arc::new(Notify::new());
        self.state().pending.insert(
            request.clone(),
            Pending {
                replies: HashMap::new(),
                done: done.clone(),
            },
        );
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"type\":\"request\",\"request\":");
        json::write_str(&mut body, &request);
        body.extend_from_slice(b",\"account\":");
        json::write_str(&mut body, account);
        if let Some(socket) = socket {
            body.extend_from_slice(b",\"socket\":");
            json::write_str(&mut body, socket);
        }
        body.extend_from_slice(b",\"reply_to\":");
        json::write_str(&mut body, &self.queue);
        body.push(b'}');
        let sent = channel
            .basic_publish(
                EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .is_ok();
        let deadline = tokio::time::Instant::now() + self.timeout;
        if sent {
            loop {
                let answered = self
                    .state()
                    .pending
                    .get(&request)
                    .is_some_and(|p| expected.iter().all(|n| p.replies.contains_key(n)));
                if answered
                    || tokio::time::timeout_at(deadline, done.notified())
                        .await
                        .is_err()
                {
                    break;
                }
            }
        }
        let replies = self
            .state()
            .pending
            .remove(&request)
            .map(|p| p.replies)
            .unwrap_or_default();
        let missing = expected
            .iter()
            .filter(|n| !replies.contains_key(*n))
            .cloned()
            .collect();
        let mut nodes: Vec<_> = replies.into_iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        Listing {
            sockets: nodes.into_iter().flat_map(|(_, sockets)| sockets).collect(),
            missing,
        }
    }

    /// Keeps the control connection up (reconnecting with backoff) for the life of the thread.
    pub async fn run(self: Arc<Self>) {
        let Some(url) = self.url.clone() else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Err(e) = self.session(&url).await {
                crate::elog!("cluster: control connection lost ({e}); reconnecting");
            }
            self.state().channel = None;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn session(self: &Arc<Self>, url: &str) -> Result<(), lapin::Error> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.queue.as_str().into(),
                EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.state().channel = Some(channel.clone());
        let mut heartbeat = Vec::new();
        heartbeat.extend_from_slice(b"{\"type\":\"heartbeat\",\"node\":");
        json::write_str(&mut heartbeat, &self.node);
        heartbeat.push(b'}');
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    channel
                        .basic_publish(EXCHANGE.into(), "".into(), BasicPublishOptions::default(), &heartbeat, BasicProperties::default())
                        .await?;
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => self.clone().handle(delivery.data, &channel),
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
    }

    /// One control message: a heartbeat, a request to answer, or a reply to collect.
    fn handle(self: Arc<Self>, mut data: Vec<u8>, channel: &Channel) {
        let Ok(tape) = simd_json::to_tape(&mut data) else {
            return;
        };
        let Some(root) = TapeValue::root(&tape.0) else {
            return;
        };
        let text = |name: &str| root.get(name).and_then(|v| v.as_str()).map(str::to_string);
        match root.get("type").and_then(|t| t.as_str()) {
            Some("heartbeat") => {
                if let Some(node) = text("node") {
                    self.state().peers.insert(node, Instant::now());
                }
            }
            Some("request") => {
                let (Some(request), Some(account), Some(reply_to)) =
                    (text("request"), text("account"), text("reply_to"))
                else {
                    return;
                };
                let socket = text("socket");
                let channel = channel.clone();
                tokio::spawn(async move {
                    let sockets = self.local(account, socket).await;
                    let mut body = Vec::new();
                    body.extend_from_slice(b"{\"type\":\"reply\",\"request\":");
                    json::write_str(&mut body, &request);
                    body.extend_from_slice(b",\"node\":");
                    json::write_str(&mut body, &self.node);
                    body.extend_from_slice(b",\"sockets\":[");
                    for (i, socket) in sockets.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(socket);
                    }
                    body.extend_from_slice(b"]}");
                    let _ = channel
                        .basic_publish(
                            "".into(),
                            reply_to.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            BasicProperties::default(),
                        )
                        .await;
                });
            }
            Some("reply") => {
                let (Some(request), Some(node)) = (text("request"), text("node")) else {
                    return;
                };
                let sockets: Vec<Vec<u8>> = root
                    .get("sockets")
                    .map(|list| {
                        list.elements()
                            .map(|s| {
                                let mut out = Vec::new();
                                json::write_value(&mut out, s, &mut |o, k| json::write_str(o, k));
                                out
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut state = self.state();
                // A node that answers is alive, whether or not its heartbeat got here first.
                state.peers.insert(node.clone(), Instant::now());
                if let Some(pending) = state.pending.get_mut(&request) {
                    pending.replies.entry(node).or_insert(sockets);
                    pending.done.notify_one();
                }
            }
            _ => {}
        }
    }
}

/// A socket id as the REST API shows it.
pub fn socket_id(id: u64) -> String {
    format!("{id:016x}")
}

/// One socket in crossbar's shape.
fn socket_json(socket: &SocketInfo, node: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"websocket_session_id\":");
    json::write_str(&mut out, &socket_id(socket.id));
    out.extend_from_slice(b",\"bindings\":");
    let mut labels: Vec<&str> = Vec::new();
    for (_, label) in &socket.bindings {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    json::write_str_array(&mut out, labels);
    let since_1970 = socket
        .connected_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    out.extend_from_slice(format!(",\"timestamp\":{}", since_1970 + GREGORIAN_OFFSET).as_bytes());
    out.extend_from_slice(b",\"destination\":");
    json::write_str(&mut out, node);
    out.extend_from_slice(b",\"source\":");
    json::write_str(&mut out, &socket.peer.ip().to_string());
    out.extend_from_slice(b",\"name\":");
    match &socket.name {
        Some(name) => json::write_str(&mut out, name),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"metadata\":");
    // The dialect stored metadata as JSON it wrote itself.
    out.extend_from_slice(socket.metadata.as_deref().unwrap_or("null").as_bytes());
    out.extend_from_slice(b",\"accounts\":");
    json::write_str_array(&mut out, socket.accounts.iter().map(String::as_str));
    out.push(b'}');
    out
}

/// Seconds since 1970 of a Kazoo (Gregorian) timestamp.
pub fn from_gregorian(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds.saturating_sub(GREGORIAN_OFFSET))
}

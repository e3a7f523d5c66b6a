//! Cluster-wide socket listings over AMQP.
//!
//! Every node declares the fanout exchange `horizon.control` and an exclusive queue
//! `horizon.control.<node>` bound to it, and publishes a heartbeat there every second; a node is
//! *live* while its heartbeat is younger than three seconds. A listing is a request on the
//! fanout (every node, the asker included, receives it) with `reply_to` naming the asker's
//! queue; each node answers from its own shards' registries through the default exchange. The
//! asker waits for every live node or a deadline, and says which nodes did not answer
//! (`partial`). Without a broker the cluster is this node alone.
//!
//! Anyone who may publish on the broker can reach `horizon.control`, so a control message counts
//! only if it is signed with the cluster's key (`cluster_secret`, or one derived from
//! `jwt_hs256_secret`, which every node of a cluster shares anyway): the body is
//! `<64 hex of HMAC-SHA256(key, json)>:<json>`, and the JSON carries its sender and a timestamp
//! (milliseconds) that must be within [`MAX_SKEW`] of ours, so that an old message cannot be
//! replayed. Without a key the node does not join the cluster at all (and says so). Peers are
//! forgotten once their heartbeat is older than [`DEAD_AFTER`], and at most [`MAX_PEERS`] are
//! tracked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};
use tokio::sync::Notify;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::json::{self, TapeValue};
use crate::shard::Registry;
use crate::shard::SocketInfo;

const EXCHANGE: &str = "horizon.control";
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is no longer waited for.
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// A signed control message older or newer than this (by the receiver's clock) is ignored.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// The most peers a node keeps track of; heartbeats from more are ignored.
pub const MAX_PEERS: usize = 1024;

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

type Listener = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    /// Called when another node says its hooks changed.
    hooks_listener: Option<Listener>,
    /// A hooks announcement made while the control connection was down, sent once it is up.
    hooks_unannounced: bool,
    channel: Option<Channel>,
    peers: HashMap<String, Instant>,
    pending: HashMap<String, Pending>,
}

pub struct Cluster {
    node: String,
    url: Option<String>,
    /// Signs and checks control messages; `None`: this node stays out of the cluster.
    key: Option<Vec<u8>>,
    queue: String,
    registry: Arc<Mutex<Registry>>,
    state: Mutex<State>,
    timeout: Duration,
}

impl Cluster {
    pub fn new(
        node: String,
        url: Option<String>,
        key: Option<Vec<u8>>,
        registry: Registry,
        timeout: Duration,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            queue: format!("{EXCHANGE}.{node}"),
            node,
            url,
            key,
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

    /// Tells every node that the webhooks changed (they reload them from the shared store).
    pub fn announce_hooks(self: &Arc<Self>) {
        let channel = {
            let mut state = self.state();
            if state.channel.is_none() {
                state.hooks_unannounced = true;
            }
            state.channel.clone()
        };
        let Some(channel) = channel else {
            return;
        };
        let mut message = self.open_message("hooks");
        message.push(b'}');
        let message = self.sign(&message);
        tokio::spawn(async move {
            let _ = channel
                .basic_publish(
                    EXCHANGE.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &message,
                    BasicProperties::default(),
                )
                .await;
        });
    }

    /// What to do when another node announces changed webhooks.
    pub fn on_hooks_changed(&self, listener: impl Fn() + Send + Sync + 'static) {
        self.state().hooks_listener = Some(Arc::new(listener));
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

    /// This node's sockets filed under `account` (and with id `socket`, if given), as JSON;
    /// `close`: closed too (4003 `closed by administrator`), and those closed are the answer.
    async fn local(&self, account: String, socket: Option<String>, close: bool) -> Vec<Vec<u8>> {
        let node = self.node.clone();
        self.with_registry(move |registry| {
            let (sockets, _) = registry.sockets(Duration::from_secs(1));
            let found: Vec<_> = sockets
                .iter()
                .filter(|s| socket.as_ref().is_none_or(|id| *id == socket_id(s)))
                .filter_map(|s| {
                    let filed = s.filed.iter().find(|f| f.account == account)?;
                    Some((s, socket_json(s, &filed.bindings, &node)))
                })
                .collect();
            if !close {
                return found.into_iter().map(|(_, json)| json).collect();
            }
            let ids = found.iter().map(|(s, _)| (s.instance, s.id)).collect();
            let closed = registry.close(ids, Duration::from_secs(1));
            found
                .into_iter()
                .filter(|(s, _)| closed.contains(&s.id))
                .map(|(_, json)| json)
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Closes this node's sockets whose credential the last auth reload revoked; how many.
    /// Blocking: for the signal-handling thread.
    pub fn close_revoked(&self) -> usize {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.revalidate(Duration::from_secs(1))
    }

    /// Every socket of `account` (or the one with id `socket`) across the cluster; `close`:
    /// each node closes those it holds (4003), and the listing is of what was closed.
    pub async fn list(&self, account: &str, socket: Option<&str>, close: bool) -> Listing {
        let channel = self.state().channel.clone();
        let Some(channel) = channel else {
            let sockets = self
                .local(account.to_string(), socket.map(str::to_string), close)
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
        let mut body = self.open_message("request");
        body.extend_from_slice(b",\"request\":");
        json::write_str(&mut body, &request);
        body.extend_from_slice(b",\"account\":");
        json::write_str(&mut body, account);
        if let Some(socket) = socket {
            body.extend_from_slice(b",\"socket\":");
            json::write_str(&mut body, socket);
        }
        if close {
            body.extend_from_slice(b",\"close\":true");
        }
        body.extend_from_slice(b",\"reply_to\":");
        json::write_str(&mut body, &self.queue);
        body.push(b'}');
        let sent = channel
            .basic_publish(
                EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &self.sign(&body),
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
        if self.key.is_none() {
            tracing::warn!(
                "cluster: no cluster_secret (nor a jwt_hs256_secret to derive one from): this node \
                 does not join the cluster, and its listings show its own sockets only"
            );
            return;
        }
        let mut brokers = crate::ingest::brokers::Brokers::new(&url);
        let mut backoff = Duration::from_millis(100);
        loop {
            let connection = match brokers.connect().await {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::warn!("cluster: cannot connect ({e}); retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            tracing::info!(
                "cluster: control plane on {}{}",
                brokers.current(),
                brokers.position()
            );
            if let Err(e) = self.session(connection).await {
                tracing::warn!(
                    "cluster: control connection to {} lost ({e}); reconnecting",
                    brokers.current()
                );
            }
            brokers.lost();
            self.state().channel = None;
            let jitter = 0.5 + (crate::ids::random_u64() % 1000) as f64 / 2000.0;
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
        }
    }

    async fn session(self: &Arc<Self>, connection: lapin::Connection) -> Result<(), lapin::Error> {
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
        let unannounced = {
            let mut state = self.state();
            state.channel = Some(channel.clone());
            std::mem::take(&mut state.hooks_unannounced)
        };
        if unannounced {
            self.announce_hooks();
        }
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let mut heartbeat = self.open_message("heartbeat");
                    heartbeat.push(b'}');
                    let heartbeat = self.sign(&heartbeat);
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

    /// `{"type":<kind>,"node":<this node>,"ts":<now, ms>` (the caller adds the rest and `}`).
    fn open_message(&self, kind: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"type\":");
        json::write_str(&mut out, kind);
        out.extend_from_slice(b",\"node\":");
        json::write_str(&mut out, &self.node);
        out.extend_from_slice(format!(",\"ts\":{}", unix_millis(SystemTime::now())).as_bytes());
        out
    }

    /// `<hex signature>:<json>`.
    fn sign(&self, json: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNATURE_HEX + 1 + json.len());
        if let Some(key) = &self.key {
            out.extend_from_slice(hex(&mac(key, json)).as_bytes());
        }
        out.push(b':');
        out.extend_from_slice(json);
        out
    }

    /// The JSON of a control message signed with the cluster's key, or `None` (unsigned,
    /// forged, or not of this form).
    fn verify(&self, data: &[u8]) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let signature = data.get(..SIGNATURE_HEX)?;
        let json = data.get(SIGNATURE_HEX..)?.strip_prefix(b":")?;
        let signature = unhex(signature)?;
        let mut check = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        check.update(json);
        check.verify_slice(&signature).ok()?;
        Some(json.to_vec())
    }

    /// Notes that `node` is alive, unless the peer table is full of other live nodes.
    fn heard_from(&self, node: String) {
        let mut state = self.state();
        state.peers.retain(|_, seen| seen.elapsed() < DEAD_AFTER);
        if state.peers.len() < MAX_PEERS || state.peers.contains_key(&node) {
            state.peers.insert(node, Instant::now());
        }
    }

    /// One control message: a heartbeat, a request to answer, or a reply to collect. Anything
    /// not signed with the cluster's key, stale, or malformed is ignored.
    fn handle(self: Arc<Self>, data: Vec<u8>, channel: &Channel) {
        let Some(mut data) = self.verify(&data) else {
            return;
        };
        let Ok(tape) = simd_json::to_tape(&mut data) else {
            return;
        };
        let Some(root) = TapeValue::root(&tape.0).filter(|r| r.is_object()) else {
            return;
        };
        let text = |name: &str| {
            root.get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty() && s.len() <= 255)
                .map(str::to_string)
        };
        let sent = match root.get("ts").and_then(|t| t.0.first().copied()) {
            Some(simd_json::Node::Static(simd_json::StaticNode::U64(ms))) => ms,
            Some(simd_json::Node::Static(simd_json::StaticNode::I64(ms))) if ms >= 0 => ms as u64,
            _ => return,
        };
        if unix_millis(SystemTime::now()).abs_diff(sent) > MAX_SKEW.as_millis() as u64 {
            return;
        }
        let Some(sender) = text("node") else {
            return;
        };
        match root.get("type").and_then(|t| t.as_str()) {
            Some("heartbeat") => self.heard_from(sender),
            Some("hooks") if sender != self.node => {
                let listener = self.state().hooks_listener.clone();
                if let Some(listener) = listener {
                    listener();
                }
            }
            Some("request") => {
                let (Some(request), Some(account), Some(reply_to)) =
                    (text("request"), text("account"), text("reply_to"))
                else {
                    return;
                };
                let socket = text("socket");
                // Signed like every control message: only a node of this cluster asks to close.
                let close = root.get("close").and_then(|c| c.as_bool()) == Some(true);
                let channel = channel.clone();
                tokio::spawn(async move {
                    let sockets = self.local(account, socket, close).await;
                    let mut body = self.open_message("reply");
                    body.extend_from_slice(b",\"request\":");
                    json::write_str(&mut body, &request);
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
                            &self.sign(&body),
                            BasicProperties::default(),
                        )
                        .await;
                });
            }
            Some("reply") => {
                let (Some(request), node) = (text("request"), sender) else {
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
                // A node that answers is alive, whether or not its heartbeat got here first.
                self.heard_from(node.clone());
                let mut state = self.state();
                if let Some(pending) = state.pending.get_mut(&request) {
                    pending.replies.entry(node).or_insert(sockets);
                    pending.done.notify_one();
                }
            }
            _ => {}
        }
    }
}

/// A socket id as the REST API shows it (`websocket_session_id`): 32 hex digits, the random 64-bit
/// id of the gateway instance (drawn at each start) and the socket's own 64-bit id, so that ids
/// are unique across the nodes of a cluster and across restarts, and stay URL-safe.
pub fn socket_id(socket: &SocketInfo) -> String {
    format!("{:016x}{:016x}", socket.instance, socket.id)
}

/// One socket in crossbar's shape, as listed under one account: `bindings` are the socket's
/// client bindings for that account only, and nothing names another account.
fn socket_json(socket: &SocketInfo, bindings: &[String], node: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"websocket_session_id\":");
    json::write_str(&mut out, &socket_id(socket));
    out.extend_from_slice(b",\"bindings\":");
    json::write_str_array(&mut out, bindings.iter().map(String::as_str));
    let timestamp = to_gregorian(socket.connected_at);
    out.extend_from_slice(format!(",\"timestamp\":{timestamp}").as_bytes());
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
    out.push(b'}');
    out
}

pub use crate::families::{from_gregorian, to_gregorian};

/// Hex digits of an HMAC-SHA256 signature.
const SIGNATURE_HEX: usize = 64;

fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// The cluster key: `cluster_secret` if configured, else one derived from the JWT secret (so
/// that a cluster whose nodes share their token secret needs no second secret); `None` when
/// there is neither.
pub fn cluster_key(cluster_secret: Option<&[u8]>, jwt_secret: Option<&[u8]>) -> Option<Vec<u8>> {
    match (cluster_secret, jwt_secret) {
        (Some(secret), _) => Some(secret.to_vec()),
        (None, Some(jwt)) => Some(mac(jwt, b"horizon cluster control key v1")),
        (None, None) => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_signed_with_the_cluster_key_count() {
        let registry = crate::shard::Registry::empty();
        let cluster = Cluster::new(
            "n1".into(),
            None,
            cluster_key(Some(b"k"), None),
            registry,
            Duration::from_secs(1),
        );
        let mut body = cluster.open_message("heartbeat");
        body.push(b'}');
        let signed = cluster.sign(&body);
        assert_eq!(cluster.verify(&signed).as_deref(), Some(&body[..]));
        let mut forged = signed.clone();
        let last = forged.len() - 2;
        forged[last] ^= 1;
        assert_eq!(cluster.verify(&forged), None, "a changed body");
        assert_eq!(cluster.verify(&body), None, "unsigned");
        assert_eq!(cluster.verify(b""), None);
        assert_eq!(cluster.verify("é".repeat(40).as_bytes()), None);
        let other = Cluster::new(
            "n2".into(),
            None,
            cluster_key(Some(b"other"), None),
            crate::shard::Registry::empty(),
            Duration::from_secs(1),
        );
        assert_eq!(other.verify(&signed), None, "another cluster's key");
        assert_ne!(
            cluster_key(None, Some(b"jwt")),
            Some(b"jwt".to_vec()),
            "the derived key is not the token secret itself"
        );
    }
}

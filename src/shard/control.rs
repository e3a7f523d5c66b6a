//! The control plane's view of a shard, by message: the REST API and metrics (issue #6) ask each
//! shard through its control ring and collect the answers; shards never share state with other
//! threads.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use crate::fanout::RingStats;

/// One socket as the control plane lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// The gateway instance (random, drawn at each start): with `id`, unique across a cluster
    /// and across restarts.
    pub instance: u64,
    pub id: u64,
    pub shard: usize,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    /// `(pattern, label)` of each binding.
    pub bindings: Vec<(String, String)>,
    /// What the client called the socket (Kazoo's `name`), if anything.
    pub name: Option<String>,
    /// The client's metadata (a JSON text), if any.
    pub metadata: Option<String>,
    /// The accounts the dialect files the socket under now, each with the client bindings the
    /// socket holds for it: what the REST listing per account filters on and shows.
    pub filed: Vec<Filed>,
}

/// One account a socket is listed under, and its client bindings for that account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filed {
    pub account: String,
    pub bindings: Vec<String>,
}

/// Counters of one shard. Label cardinality is bounded: nothing per account or per socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    pub connections: usize,
    pub bindings: usize,
    pub events: u64,
    /// Frames encoded: one per event per matching binding.
    pub frames_encoded: u64,
    /// Frames queued to sockets.
    pub deliveries: u64,
    /// Events skipped for slow sockets (`drop` policy).
    pub dropped: u64,
    /// Sockets closed as slow consumers (`close` policy).
    pub closed_slow: u64,
    /// Upgrades refused: not a valid WebSocket request (400).
    pub handshakes_invalid: u64,
    /// Upgrades refused by the dialect (401 and the like).
    pub handshakes_refused: u64,
    /// Connections that failed before any upgrade request for want of TLS: a failed TLS
    /// handshake or record on the wss port, plain HTTP sent to it, or TLS sent to the plain one.
    pub handshakes_tls_failed: u64,
    /// Connections closed for their PROXY header: from an untrusted peer, malformed or too long.
    pub handshakes_proxy_refused: u64,
    /// Upgrades answered 503 + `Retry-After` for `max_connects_per_sec`.
    pub handshakes_connect_rate: u64,
    /// Sockets closed with 1001 by a drain.
    pub drain_closed: u64,
    /// Upgrades refused with 429: `max_connections_per_ip`.
    pub handshakes_limited_address: u64,
    /// Upgrades refused with 503: `max_connections`.
    pub handshakes_limited_node: u64,
    /// Sockets closed with 1008 because their client did not read for `blocked_close`.
    pub closed_blocked: u64,
    /// Sockets not being read now, because their client does not read its output.
    pub read_paused: usize,
    /// io_uring: turns that found the completion queue overflowed (0 on epoll).
    pub cq_overflows: u64,
    /// The shard's event ring.
    pub ring: RingStats,
    /// From the ingest side receiving an event to this shard having queued its frames.
    pub delivery_latency: crate::latency::Histogram,
}

/// A question to a shard; the answer goes back on the enclosed channel.
pub(crate) enum Control {
    Sockets(mpsc::Sender<Vec<SocketInfo>>),
    Stats(mpsc::Sender<ShardStats>),
    /// Close every socket whose session's credential is revoked (4001 `token revoked`); the
    /// answer is how many.
    Revalidate(mpsc::Sender<usize>),
    /// Close these sockets (gateway instance, socket id) with 4003 `closed by administrator`;
    /// the answer is the ids this shard closed (a socket already closing is not closed again).
    Close(Arc<Vec<(u64, u64)>>, mpsc::Sender<Vec<u64>>),
}

/// The shard-local counters behind [`ShardStats`] (single-threaded: plain cells).
#[derive(Default)]
pub(crate) struct Counters {
    pub events: Cell<u64>,
    pub frames_encoded: Cell<u64>,
    pub deliveries: Cell<u64>,
    pub dropped: Cell<u64>,
    pub closed_slow: Cell<u64>,
    pub handshakes_invalid: Cell<u64>,
    pub handshakes_refused: Cell<u64>,
    pub handshakes_tls_failed: Cell<u64>,
    pub handshakes_proxy_refused: Cell<u64>,
    pub handshakes_connect_rate: Cell<u64>,
    pub drain_closed: Cell<u64>,
    pub handshakes_limited_address: Cell<u64>,
    pub handshakes_limited_node: Cell<u64>,
    pub closed_blocked: Cell<u64>,
    pub delivery_latency: std::cell::RefCell<crate::latency::Histogram>,
}

impl Counters {
    pub(crate) fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }
}

//! What every part of one shard shares: its configuration, registry, socket I/O, bindings and
//! counters. The event handlers (`connection.rs`) and the tasks (`runtime.rs`) both take it; it
//! depends on neither.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::backend::SocketIo;
use super::bindings::BindingTable;
use super::control::Counters;
use super::limits::ConnectionLimits;
use super::session::SessionFactory;
use super::sockets::SocketTable;
use crate::config::ServeConfig;

/// Scratch buffer each shard reads into; the largest read a socket gets per call.
const SCRATCH_BYTES: usize = 64 * 1024;

/// What every task of one shard shares. Single-threaded: `Rc`, `Cell`, `RefCell`.
pub(crate) struct ShardContext {
    pub index: usize,
    pub config: ServeConfig,
    pub factory: Arc<dyn SessionFactory>,
    /// Connection admission, shared by every shard of the node.
    pub limits: Arc<ConnectionLimits>,
    /// This gateway instance's random id (see `SocketInfo::instance`).
    pub instance: u64,
    /// Where sockets read into; never borrowed across an await.
    pub scratch: RefCell<Vec<u8>>,
    /// Where a wss socket's input is decrypted into (then parsed like a plain socket's).
    pub plain: RefCell<Vec<u8>>,
    /// The wss listener's TLS (certificate swapped on SIGHUP), if the shard has one.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The shard's socket registry.
    pub(crate) sockets: RefCell<SocketTable>,
    /// The socket I/O of every socket in the registry: epoll readiness or the shard's ring.
    pub(crate) io: SocketIo,
    /// Whether the shard still takes new connections (false once shutdown has begun).
    pub(crate) accepting: Cell<bool>,
    /// The shard's bindings and automata.
    pub(crate) bindings: RefCell<BindingTable>,
    pub(crate) counters: Counters,
    /// The log offset of the last event this shard dispatched (`history` on): a resume replays
    /// up to it, and live delivery carries on after it.
    pub(crate) last_offset: Cell<Option<u64>>,
    next_id: Cell<u64>,
    started: Instant,
    /// The wall-clock time of `started`.
    started_wall: SystemTime,
}

impl ShardContext {
    pub fn new(
        index: usize,
        config: ServeConfig,
        factory: Arc<dyn SessionFactory>,
        limits: Arc<ConnectionLimits>,
        instance: u64,
        io: SocketIo,
        tls: Option<Arc<crate::tls::ServerTls>>,
    ) -> ShardContext {
        ShardContext {
            index,
            config,
            factory,
            limits,
            instance,
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            plain: RefCell::new(Vec::new()),
            tls,
            sockets: RefCell::new(SocketTable::default()),
            io,
            accepting: Cell::new(true),
            bindings: RefCell::new(BindingTable::default()),
            counters: Counters::default(),
            last_offset: Cell::new(None),
            next_id: Cell::new(0),
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }

    /// Unique across shards: the shard index in the top 16 bits.
    pub fn next_socket_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        ((self.index as u64) << 48) | n
    }

    /// The wall-clock time of shard clock second `second` (to the second: a socket's record keeps
    /// its accept time as 4 bytes of shard clock, not as a 16-byte `SystemTime`).
    pub fn wall_time(&self, second: u32) -> SystemTime {
        self.started_wall + std::time::Duration::from_secs(u64::from(second))
    }

    /// Seconds since the shard started: a 4-byte clock for per-socket timestamps.
    pub fn clock(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }
}

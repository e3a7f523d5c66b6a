//! Thread-per-core shards: each owns a set of sockets, its copy of the binding automaton, and the
//! outbound queue of every socket it owns.
//!
//! - [`runtime`]: the shard threads, `SO_REUSEPORT` listeners, graceful shutdown ([`Gateway`]).
//! - `executor`: the shard thread's tasks and timers, run between turns of its socket I/O.
//! - `turn`: one turn of a shard's socket I/O, whose backend wait is the thread's only one.
//! - `backend`: the socket I/O a shard runs on: `uring` (native io_uring: multishot accept and
//!   receive, provided buffers, batched sends) or `poller` (epoll).
//! - `connection`: one socket from handshake to close, as a record driven by the shard's turn.
//! - `tls`: a wss socket's TLS record layer (rustls, unbuffered), kept in its record.
//! - `poller`: the epoll set and the shard's service list; `sockets`: the socket registry.
//! - [`outbound`]: the per-socket, byte-bounded queue and the slow-consumer policy.
//! - [`session`]: the seam the dialects plug into.
//! - [`limits`]: connection admission (per node, per client address).
//! - `bindings`: which sockets want which events; the delivery hot path.

mod backend;
mod bindings;
mod conn;
mod connection;
mod context;
pub mod control;
mod executor;
#[doc(hidden)]
pub mod harness;
mod io;
mod lifecycle;
pub mod limits;
pub mod outbound;
mod poller;
mod registry;
pub mod runtime;
pub mod session;
mod sockets;
mod tls;
mod turn;
mod uring;

pub use crate::config::{IoBackend, SlowConsumerPolicy};
pub use backend::Driver;
pub use bindings::{Delivered, FrameEncoder, Subscriptions};
pub use conn::Conn;
pub use control::{Filed, ShardStats, SocketInfo};
/// For a dialect's `Reply::Later`, which runs on its shard's executor.
pub(crate) use executor::timeout;
pub use limits::{Admission, ConnectionLimits};
pub use outbound::{Enqueued, Outbound};
pub use registry::Registry;
pub use runtime::Gateway;
pub use session::{HttpRefusal, Reply, Session, SessionFactory};

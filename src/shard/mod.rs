//! Thread-per-core shards: each owns a set of sockets, its copy of the binding automaton, and the
//! outbound queue of every socket it owns.
//!
//! - [`runtime`]: the shard threads, `SO_REUSEPORT` listeners, graceful shutdown ([`Gateway`]).
//! - `backend`: the socket I/O a shard runs on: `uring` (native io_uring: multishot accept and
//!   receive, provided buffers, batched sends) or `poller` (epoll).
//! - `connection`: one socket from handshake to close, as a record driven by readiness.
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
#[doc(hidden)]
pub mod harness;
mod io;
pub mod limits;
pub mod outbound;
mod poller;
pub mod runtime;
pub mod session;
mod sockets;
mod tls;
mod uring;

pub use backend::{Driver, IoBackend};
pub use bindings::{Delivered, FrameEncoder, Subscriptions};
pub use conn::Conn;
pub use control::{Filed, ShardStats, SocketInfo};
pub use limits::{Admission, ConnectionLimits};
pub use outbound::{Enqueued, Outbound, SlowConsumerPolicy};
pub use runtime::{Gateway, Registry};
pub use session::{HttpRefusal, Reply, Session, SessionFactory};

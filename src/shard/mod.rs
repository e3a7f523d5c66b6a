//! Thread-per-core shards: each owns a set of sockets, its copy of the binding automaton, and the
//! outbound queue of every socket it owns. The runtime (monoio, io_uring with epoll fallback)
//! arrives with the data-plane issue (#3); what is here is the per-socket state it is built from.

pub mod outbound;

pub use outbound::{Enqueued, Outbound, SlowConsumerPolicy};

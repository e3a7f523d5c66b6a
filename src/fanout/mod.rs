//! The rings between the ingest thread and the shards.
//!
//! Each shard has one bounded lock-free ring ([`ring`]); the ingest thread pushes every event
//! (an `Arc` of the parsed event, so a push is a pointer) into every shard's ring.
//!
//! # Cost and guarantees
//! - A push or a pop is one compare-and-swap on a `crossbeam` `ArrayQueue`: no lock, no allocation.
//! - Wakeups are coalesced: a shard that is busy is never woken. The consumer announces that it is
//!   about to sleep (`consumer_parked`) and the producer wakes it only if it sees that flag, so a
//!   burst of N events costs one wakeup, not N.
//! - A full ring makes the producer *wait* (its future stays pending until the shard drains), never
//!   drop: upstream, the AMQP consumer then stops acknowledging and bursts wait in RabbitMQ. Each
//!   wait is counted ([`RingStats::producer_waits`]) so that backpressure is visible in metrics.
//! - Closing (either side, or dropping it) wakes the other side: a waiting producer gets its item
//!   back as [`Closed`], the consumer drains what is left and then sees the end. No deadlock on
//!   shutdown.
//!
//! One producer and one consumer per ring: [`Producer`] and [`Consumer`] are not `Clone`, which is
//! what lets each side keep a single registered waker.

mod ring;

pub use ring::{ring, Closed, Consumer, Producer, Recv, RingStats, StatsHandle};

mod event;
pub mod history;

pub use event::{Event, Publisher};
pub use history::History;

//! Horizon: carries events from RabbitMQ topic exchanges to WebSocket subscribers and webhooks.
//!
//! The crate is laid out along the data path (see docs/architecture.md and the README):
//! `ingest` -> `fanout` -> `shard` -> `ws` -> socket, with the pure matching core in [`binding`],
//! the Kazoo event families in [`families`], identities in [`auth`] and the wire dialects in
//! [`dialect`]. Only the rooms that exist are declared here; each arrives with the issue that
//! builds it.

pub mod api;
pub mod auth;
pub mod binding;
pub mod commands;
pub mod config;
pub mod dialect;
pub mod families;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod ingest;
pub mod json;
pub mod latency;
pub mod log;
pub mod memory;
pub mod proxy;
pub mod shard;
pub mod tls;
pub mod webhooks;
pub mod ws;

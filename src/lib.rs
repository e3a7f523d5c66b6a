//! Horizon: carries events from RabbitMQ topic exchanges to WebSocket subscribers and webhooks.
//!
//! The crate is laid out along the data path (see `../shared/DESIGN.md` and the README):
//! `ingest` -> `fanout` -> `shard` -> `ws` -> socket, with the pure matching core in [`binding`].
//! Only the rooms that exist are declared here; each arrives with the issue that builds it.

pub mod binding;
pub mod config;
pub mod fanout;
pub mod memory;
pub mod shard;
pub mod ws;

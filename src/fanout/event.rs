//! What travels through the rings: one parsed event, shared by every shard.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::ring::{Closed, Producer};
use crate::binding::Separator;

/// An event ready for matching: parsed and normalized once by the ingest side, then shared by
/// pointer with every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The internal key bindings are matched against (account-scoped for Kazoo).
    pub key: String,
    /// More keys the same event is published under (VoIPBin's other topic forms: the
    /// event-typed form, `aicall:`, `chat:`, `webchat_session:`); empty, with no allocation,
    /// for Kazoo. A socket matching several keys still receives the event once.
    pub also: Vec<String>,
    /// Which dialect's automaton the key is for (`.` Kazoo, `:` VoIPBin).
    pub separator: Separator,
    /// The dialect's part of every frame for this event (Kazoo: `"name":..,"routing_key":..,
    /// "data":..}`; VoIPBin: `"type":..,"data":..}`), shared by every binding's encoder.
    pub body: Bytes,
    /// When the ingest side received it: shards measure delivery latency from here.
    pub received_at: Instant,
    /// Its place in the cluster's event log (`history` on): the log offset, and the frame
    /// member `"position":"<epoch>-<offset>",` every frame of it carries, written once.
    pub position: Option<(u64, Bytes)>,
}

impl Event {
    /// An event received now.
    pub fn new(key: String, separator: Separator, body: Bytes) -> Event {
        Event {
            key,
            also: Vec::new(),
            separator,
            body,
            received_at: Instant::now(),
            position: None,
        }
    }

    /// The log offset, when the event has a position.
    pub fn offset(&self) -> Option<u64> {
        self.position.as_ref().map(|(offset, _)| *offset)
    }

    /// The `"position":"..",` member of its frames (empty without a position).
    pub fn position_member(&self) -> &[u8] {
        self.position.as_ref().map_or(&[], |(_, member)| member)
    }
}

/// Broadcasts events to every shard's ring. Owned by the ingest thread (single producer per ring).
pub struct Publisher {
    rings: Vec<Producer<Arc<Event>>>,
}

impl Publisher {
    pub(crate) fn new(rings: Vec<Producer<Arc<Event>>>) -> Publisher {
        Publisher { rings }
    }

    /// Hands `event` to every shard, waiting while a shard's ring is full (backpressure goes
    /// upstream, nothing is dropped). Fails only when the gateway is shutting down.
    pub async fn publish(&self, event: Arc<Event>) -> Result<(), Closed<Arc<Event>>> {
        for ring in &self.rings {
            ring.push(event.clone()).await?;
        }
        Ok(())
    }

    /// Number of shards reached by a publish.
    pub fn shards(&self) -> usize {
        self.rings.len()
    }
}

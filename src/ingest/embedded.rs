//! The embedded bus: the gateway with no broker. Publishes (the REST endpoint, tests) go through
//! the same normalize-and-route path as AMQP deliveries; bindings are active at once, since every
//! event passes through this process anyway.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::counts::Counts;
use super::{route, Command, IngestStatus, SkipLog, SourceState};
use crate::families::Normalizer;
use crate::fanout::Publisher;

pub(super) async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    publisher: Publisher,
    status: Arc<IngestStatus>,
    live: Arc<super::live::Live>,
    history: Option<(Arc<crate::fanout::History>, super::HistoryConfig)>,
) {
    // The process's own log: offsets count the publishes that routed.
    let mut next_offset = 0u64;
    status.set_state(SourceState::Embedded);
    let mut counts = Counts::default();
    let mut normalizer = Normalizer::default();
    let mut skips = SkipLog::default();
    while let Some(command) = commands.recv().await {
        match command {
            Command::Acquire(binding, waiter) => {
                counts.acquire(binding.clone(), waiter);
                counts.activated(&binding);
            }
            Command::Release(binding) => {
                counts.release(&binding);
            }
            Command::Publish {
                exchange,
                routing_key,
                mut payload,
                done,
            } => {
                let at = history.as_ref().map(|(h, _)| (&**h, next_offset));
                let result = route(
                    &live,
                    at,
                    &mut normalizer,
                    &mut skips,
                    &publisher,
                    &status,
                    &exchange,
                    &routing_key,
                    &mut payload,
                )
                .await;
                if result.is_ok() {
                    next_offset += 1;
                }
                let _ = done.send(result);
            }
            Command::Shutdown => break,
        }
        status
            .bindings
            .store(counts.len() as u64, Ordering::Relaxed);
        status
            .stray_releases
            .store(counts.strays, Ordering::Relaxed);
    }
}

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
) {
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
                let result = route(
                    &live,
                    &mut normalizer,
                    &mut skips,
                    &publisher,
                    &status,
                    &exchange,
                    &routing_key,
                    &mut payload,
                )
                .await;
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

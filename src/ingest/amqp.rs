//! AMQP ingest: one client-named node queue, consumed with manual acks in batches, bound to
//! exactly the bindings the node's sockets need.
//!
//! Lifecycle: connect -> declare the node queue (`horizon.<node>.<random>`, auto-delete, with
//! `x-expires` so a vanished node leaves nothing behind) -> consume -> bind every wanted binding
//! -> loop. The loop applies binding changes (each AMQP bind awaited before the acquirers are
//! told, so a client's `success` comes after the broker routes to us), routes deliveries to the
//! shards and acks them in batches once they are in the rings.
//!
//! Broker loss: any channel or consumer error ends the session; the supervisor reconnects with
//! jittered backoff (capped at one second, so delivery resumes within about two seconds of the
//! broker accepting connections) and the new session re-declares the queue, the exchanges and
//! every live binding. Sockets never notice beyond the gap. Acquire and release keep being
//! counted while disconnected.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::brokers::Brokers;
use super::counts::Counts;
use super::{route, Command, IngestStatus, PublishError, SkipLog, SourceState};
use crate::families::{AmqpBinding, Normalizer, EXCHANGES};
use crate::fanout::Publisher;

/// How the node talks to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// The broker URLs, comma-separated: the first that answers, in order ([`Brokers`]).
    pub url: String,
    /// Routing-key-safe node name (the host name by default).
    pub node: String,
    /// Unacknowledged deliveries the broker may push ahead.
    pub prefetch: u16,
    /// The node queue is deleted this long after the node went away.
    pub queue_expires: Duration,
}

/// Acks go out after this many deliveries, or this long after the oldest unacked one.
const ACK_BATCH: u64 = 64;
const ACK_DELAY: Duration = Duration::from_millis(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

enum Ended {
    Shutdown,
    Lost(String),
}

impl From<lapin::Error> for Ended {
    fn from(e: lapin::Error) -> Ended {
        Ended::Lost(e.to_string())
    }
}

/// State that outlives connections.
struct Node {
    config: AmqpConfig,
    brokers: Brokers,
    queue: String,
    counts: Counts,
    normalizer: Normalizer,
    skips: SkipLog,
    publisher: Publisher,
    status: Arc<IngestStatus>,
    live: Arc<super::live::Live>,
}

pub(super) async fn run(
    config: AmqpConfig,
    queue: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    publisher: Publisher,
    status: Arc<IngestStatus>,
    live: Arc<super::live::Live>,
) {
    let mut node = Node {
        brokers: Brokers::new(&config.url),
        config,
        queue,
        counts: Counts::default(),
        normalizer: Normalizer::default(),
        skips: SkipLog::default(),
        publisher,
        status,
        live,
    };
    let mut backoff = BACKOFF_FIRST;
    // Failed attempts since the last successful connection, and when the log last said so.
    let mut failures = 0u64;
    let mut reported = Instant::now();
    loop {
        node.status.set_state(SourceState::Connecting);
        let connects = node.status.connects.load(Ordering::Relaxed);
        match session(&mut node, &mut commands).await {
            Ended::Shutdown => return,
            Ended::Lost(why) => {
                node.counts.deactivate_all();
                if node.status.connects.load(Ordering::Relaxed) != connects {
                    failures = 0;
                    node.brokers.lost();
                    tracing::warn!(
                        "amqp: connection to {} lost ({why}); reconnecting",
                        node.brokers.current()
                    );
                    reported = Instant::now();
                } else {
                    failures += 1;
                    if failures == 1 || reported.elapsed() >= Duration::from_secs(10) {
                        tracing::warn!(
                            "amqp: cannot connect ({why}); retrying ({failures} attempts so far)"
                        );
                        reported = Instant::now();
                    }
                }
            }
        }
        // Jitter (50-100% of the step) keeps a fleet of nodes from reconnecting in lockstep.
        let jitter = 0.5 + (crate::ids::random_u64() % 1000) as f64 / 2000.0;
        let wait = backoff.mul_f64(jitter);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        let until = Instant::now() + wait;
        // Keep counting (and answering publishes) while disconnected.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => return,
                    Some(command) => offline(&mut node, command),
                },
            }
        }
        if node.status.state() == SourceState::Consuming {
            backoff = BACKOFF_FIRST;
        }
    }
}

/// A command while no connection is up.
fn offline(node: &mut Node, command: Command) {
    match command {
        Command::Acquire(binding, waiter) => {
            node.counts.acquire(binding, waiter);
        }
        Command::Release(binding) => {
            node.counts.release(&binding);
        }
        Command::Publish { done, .. } => {
            let _ = done.send(Err(PublishError::BrokerUnavailable));
        }
        Command::Shutdown => {}
    }
    node.publish_counts();
}

impl Node {
    fn publish_counts(&self) {
        self.status
            .bindings
            .store(self.counts.len() as u64, Ordering::Relaxed);
        self.status
            .stray_releases
            .store(self.counts.strays, Ordering::Relaxed);
    }
}

/// Declares `exchange` if it is missing, with the flags its family uses. The existence check
/// runs on a throwaway channel: a failed passive declare closes the channel it ran on.
pub(crate) async fn ensure_exchange(
    connection: &Connection,
    exchange: &str,
) -> Result<(), lapin::Error> {
    let probe = connection.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    if probe
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok()
    {
        let _ = probe.close(200, "ok".into()).await;
        return Ok(());
    }
    let durable = EXCHANGES
        .iter()
        .find(|e| e.name == exchange)
        .is_some_and(|e| e.durable);
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "ok".into()).await;
    Ok(())
}

/// One connection's life. Returns why it ended.
async fn session(node: &mut Node, commands: &mut mpsc::UnboundedReceiver<Command>) -> Ended {
    let connection = match node.brokers.connect().await {
        Ok(connection) => connection,
        Err(why) => return Ended::Lost(why),
    };
    let channel = match open_queue(node, &connection).await {
        Ok(channel) => channel,
        Err(e) => return e.into(),
    };
    let consumer = channel
        .basic_consume(
            node.queue.as_str().into(),
            format!("{}-consumer", node.queue).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(e) => return e.into(),
    };
    node.status.connects.fetch_add(1, Ordering::Relaxed);

    let mut declared: HashSet<&'static str> = HashSet::new();
    let mut bound: HashSet<AmqpBinding> = HashSet::new();
    let mut dirty: VecDeque<AmqpBinding> = node.counts.wanted_bindings().into();
    let mut dirty_set: HashSet<AmqpBinding> = dirty.iter().cloned().collect();
    let mut ack: Option<(u64, u64, Instant)> = None; // (last tag, unacked, oldest)
    let mut publisher: Option<Channel> = None;
    let mut announced = false;

    let ended = 'session: loop {
        // Binding changes first: an acquirer is waiting for each.
        while let Some(binding) = dirty.pop_front() {
            dirty_set.remove(&binding);
            if let Err(e) = sync(
                node,
                &connection,
                &channel,
                &mut declared,
                &mut bound,
                binding,
            )
            .await
            {
                break 'session e.into();
            }
        }
        if !announced {
            // Consuming and every live binding is in place: ready.
            node.status.set_state(SourceState::Consuming);
            tracing::info!(
                "amqp: consuming from {} on {}{} ({} bindings)",
                node.queue,
                node.brokers.current(),
                node.brokers.position(),
                bound.len()
            );
            announced = true;
        }
        let ack_due = ack.map(|(_, _, oldest)| oldest + ACK_DELAY);
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(Command::Shutdown) => break Ended::Shutdown,
                Some(Command::Acquire(binding, waiter)) => {
                    if node.counts.acquire(binding.clone(), waiter) || !bound.contains(&binding) {
                        mark(&mut dirty, &mut dirty_set, binding);
                    }
                }
                Some(Command::Release(binding)) => {
                    if node.counts.release(&binding) {
                        mark(&mut dirty, &mut dirty_set, binding);
                    }
                }
                Some(Command::Publish { exchange, routing_key, payload, done }) => {
                    // Publishes use a channel of their own: a publish to a missing exchange
                    // closes its channel, and that must not stop consumption.
                    // A command exchange is declared once per connection (a publish to a missing
                    // exchange is lost).
                    if let Some(name) = crate::families::COMMAND_EXCHANGES
                        .iter()
                        .find(|name| **name == exchange && !declared.contains(**name))
                    {
                        if ensure_exchange(&connection, name).await.is_ok() {
                            declared.insert(name);
                        }
                    }
                    let result = publish(&connection, &mut publisher, &exchange, &routing_key, &payload).await;
                    let _ = done.send(result);
                }
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(mut delivery)) => {
                    let exchange = delivery.exchange.to_string();
                    let routing_key = delivery.routing_key.to_string();
                    let routed = route(
                        &node.live,
                        &mut node.normalizer,
                        &mut node.skips,
                        &node.publisher,
                        &node.status,
                        &exchange,
                        &routing_key,
                        &mut delivery.data,
                    )
                    .await;
                    if routed == Err(PublishError::ShuttingDown) {
                        break Ended::Shutdown;
                    }
                    // Skipped deliveries are acked too: they would fail the same way again.
                    let (count, oldest) = match ack {
                        Some((_, count, oldest)) => (count + 1, oldest),
                        None => (1, Instant::now()),
                    };
                    ack = Some((delivery.delivery_tag, count, oldest));
                    if count >= ACK_BATCH {
                        if let Err(e) = flush_acks(&channel, &mut ack).await {
                            break e.into();
                        }
                    }
                }
                Some(Err(e)) => break e.into(),
                None => break Ended::Lost("consumer cancelled".into()),
            },
            _ = sleep_until_opt(ack_due) => {
                if let Err(e) = flush_acks(&channel, &mut ack).await {
                    break e.into();
                }
            }
        }
        node.publish_counts();
    };
    node.publish_counts();
    if let Ended::Shutdown = ended {
        let _ = flush_acks(&channel, &mut ack).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "shutdown".into()),
        )
        .await;
    }
    ended
}

/// Publishes on the session's publishing channel, opening it (again) as needed.
async fn publish(
    connection: &Connection,
    channel: &mut Option<Channel>,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
) -> Result<(), PublishError> {
    if !channel.as_ref().is_some_and(|c| c.status().connected()) {
        *channel = Some(
            connection
                .create_channel()
                .await
                .map_err(|_| PublishError::BrokerUnavailable)?,
        );
    }
    let Some(open) = channel.as_ref() else {
        return Err(PublishError::BrokerUnavailable);
    };
    open.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        payload,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .map(|_| ())
    .map_err(|_| PublishError::BrokerUnavailable)
}

async fn open_queue(node: &Node, connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(node.config.prefetch, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(node.config.queue_expires.as_millis() as i64),
    );
    channel
        .queue_declare(
            node.queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    Ok(channel)
}

fn mark(dirty: &mut VecDeque<AmqpBinding>, set: &mut HashSet<AmqpBinding>, binding: AmqpBinding) {
    if set.insert(binding.clone()) {
        dirty.push_back(binding);
    }
}

/// Brings one binding on the broker in line with its count.
async fn sync(
    node: &mut Node,
    connection: &Connection,
    channel: &Channel,
    declared: &mut HashSet<&'static str>,
    bound: &mut HashSet<AmqpBinding>,
    binding: AmqpBinding,
) -> Result<(), lapin::Error> {
    let wanted = node.counts.wanted(&binding);
    let is_bound = bound.contains(&binding);
    if wanted && !is_bound {
        if !declared.contains(binding.exchange) {
            ensure_exchange(connection, binding.exchange).await?;
            declared.insert(binding.exchange);
        }
        channel
            .queue_bind(
                node.queue.as_str().into(),
                binding.exchange.into(),
                binding.key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        bound.insert(binding.clone());
    } else if !wanted && is_bound {
        channel
            .queue_unbind(
                node.queue.as_str().into(),
                binding.exchange.into(),
                binding.key.as_str().into(),
                FieldTable::default(),
            )
            .await?;
        bound.remove(&binding);
    }
    if wanted {
        node.counts.activated(&binding);
    }
    Ok(())
}

async fn flush_acks(
    channel: &Channel,
    ack: &mut Option<(u64, u64, Instant)>,
) -> Result<(), lapin::Error> {
    if let Some((tag, _, _)) = ack.take() {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The URL (or each of a comma-separated list) without its password, for logs.
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && url[scheme + 3..at].contains(':') => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(
            super::redact("amqp://u:p@a:5672,amqp://v:q@b:5672"),
            "amqp://u:***@a:5672,amqp://v:***@b:5672"
        );
        assert_eq!(
            super::redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }
}

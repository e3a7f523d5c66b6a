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
use super::{route, Command, HistoryConfig, IngestStatus, PublishError, SkipLog, SourceState};
use crate::families::{AmqpBinding, Normalizer, EXCHANGES};
use crate::fanout::History;
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
    /// `history = "stream"`: the stream read instead of the node queue, and the offset to
    /// read from after a reconnect (the last delivered + 1).
    history: Option<(Arc<History>, HistoryConfig)>,
    next_offset: Option<u64>,
    gaps: GapLog,
}

/// Offsets the stream skipped for this node: its retention removed them before the node read
/// them (a node lagging behind more than the stream keeps). Logged at most every 10 s.
#[derive(Default)]
struct GapLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl GapLog {
    fn note(&mut self, missed: u64, stream: &str) {
        self.unlogged += missed;
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        tracing::warn!(
            "amqp: {} messages of {stream} were removed by its retention before this node read them (the node lags behind more than the stream keeps: history_max_age_secs, or the stream's length limit)",
            self.unlogged
        );
        self.unlogged = 0;
        self.last = Some(Instant::now());
    }
}

pub(super) async fn run(
    config: AmqpConfig,
    queue: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    publisher: Publisher,
    status: Arc<IngestStatus>,
    live: Arc<super::live::Live>,
    history: Option<(Arc<History>, HistoryConfig)>,
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
        history,
        next_offset: None,
        gaps: GapLog::default(),
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
    let opened = match node.history.clone() {
        None => open_queue(node, &connection).await,
        Some((history, config)) => open_stream(node, &connection, history, config).await,
    };
    let (channel, source, arguments) = match opened {
        Ok(opened) => opened,
        Err(e) => return e.into(),
    };
    let consumer = channel
        .basic_consume(
            source.as_str().into(),
            format!("{}-consumer", node.queue).into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await;
    let mut consumer = match consumer {
        Ok(consumer) => consumer,
        Err(e) => return e.into(),
    };
    node.status.connects.fetch_add(1, Ordering::Relaxed);
    if node.history.is_some() && node.next_offset.is_none() {
        // Read from `next`, the node does not know where in the log it starts until a message
        // arrives; a marker of its own makes one arrive now, on an idle log too, so resumes
        // from before it can be read back from the stream (ingest::catch_up).
        let mut marker = None;
        if let Err(e) = publish(&connection, &mut marker, "", &source, b"").await {
            tracing::warn!("amqp: cannot mark the node's start in {source} ({e})");
        }
        if let Some(marker) = marker {
            let _ = marker.close(200, "ok".into()).await;
        }
    }

    let mut declared: HashSet<&'static str> = HashSet::new();
    let mut bound: HashSet<AmqpBinding> = HashSet::new();
    let mut dirty: VecDeque<AmqpBinding> = if node.history.is_some() {
        // The stream holds every family's events: the bindings are active as they are.
        for binding in node.counts.wanted_bindings() {
            node.counts.activated(&binding);
        }
        VecDeque::new()
    } else {
        node.counts.wanted_bindings().into()
    };
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
                source,
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
                    if node.history.is_some() {
                        // The stream holds every family's events: nothing to bind.
                        node.counts.acquire(binding.clone(), waiter);
                        node.counts.activated(&binding);
                    } else if node.counts.acquire(binding.clone(), waiter) || !bound.contains(&binding) {
                        mark(&mut dirty, &mut dirty_set, binding);
                    }
                }
                Some(Command::Release(binding)) => {
                    if node.counts.release(&binding) && node.history.is_none() {
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
                    let offset = stream_offset(&delivery);
                    // A stream consumer may start at the chunk before the asked offset: what
                    // was delivered already is acked and not routed again.
                    let seen = matches!(
                        (offset, node.next_offset),
                        (Some(offset), Some(next)) if offset < next
                    );
                    let at = match (&node.history, offset) {
                        (Some((history, _)), Some(offset)) if !seen => Some((&**history, offset)),
                        _ => None,
                    };
                    if let (Some((history, _)), Some(offset), false) = (&node.history, offset, seen) {
                        history.saw(offset);
                        if let Some(next) = node.next_offset.filter(|next| offset > *next) {
                            node.gaps.note(offset - next, &source);
                        }
                    }
                    // The stream's own messages (a node's start marker) are not events.
                    let routed = if seen
                        || (node.history.is_some() && (offset.is_none() || exchange.is_empty()))
                    {
                        Ok(())
                    } else {
                        route(
                        &node.live,
                        at,
                        &mut node.normalizer,
                        &mut node.skips,
                        &node.publisher,
                        &node.status,
                        &exchange,
                        &routing_key,
                        &mut delivery.data,
                    )
                    .await
                    };
                    if let (Some(offset), false) = (offset, seen) {
                        node.next_offset = Some(offset + 1);
                    }
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

/// The offset of a stream delivery (its `x-stream-offset` header).
pub(super) fn stream_offset(delivery: &lapin::message::Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// `history = "stream"`: declares the cluster's stream if it is missing (retention, small
/// segments so that retention works), binds it to every family's exchange, learns its epoch,
/// and opens a channel to read it from the last offset delivered + 1 (`next` the first time,
/// `first` in a stream created since).
async fn open_stream(
    node: &mut Node,
    connection: &Connection,
    history: Arc<History>,
    config: HistoryConfig,
) -> Result<(Channel, String, FieldTable), lapin::Error> {
    let stream = config.stream.clone();
    // One node at a time checks the stream and its epoch: an exclusive queue is the cluster's
    // lock (the broker gives it to one connection; a node that dies lets it go).
    let lock = stream_lock(connection, &stream).await?;
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..Default::default()
    };
    let existed = probe
        .queue_declare(stream.as_str().into(), passive, FieldTable::default())
        .await
        .is_ok();
    if existed {
        let _ = probe.close(200, "ok".into()).await;
    }
    let channel = connection.create_channel().await?;
    if !existed {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert(
            "x-max-age".into(),
            AMQPValue::LongString(format!("{}s", config.max_age.as_secs().max(1)).into()),
        );
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(STREAM_SEGMENT_BYTES),
        );
        channel
            .queue_declare(
                stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
    }
    let epoch = stream_epoch(connection, &stream, !existed).await;
    let _ = lock
        .queue_delete(format!("{stream}.lock").as_str().into(), Default::default())
        .await;
    let _ = lock.close(200, "ok".into()).await;
    let epoch = match epoch {
        Ok(epoch) => epoch,
        // The epoch's queue is electing a leader (its node died with the broker we were on):
        // the stream is the one we were reading, so its epoch is the one we know.
        Err(e) if existed && node.next_offset.is_some() => {
            tracing::warn!(
                "amqp: cannot read the epoch of {stream} ({e}); keeping {}",
                history.epoch()
            );
            history.epoch()
        }
        Err(e) => return Err(e),
    };
    if history.epoch() != epoch {
        if node.next_offset.is_some() {
            tracing::warn!(
                "amqp: stream {stream} is a new log (epoch {epoch}): positions of the old one cannot be resumed"
            );
        }
        history.set_epoch(&epoch);
        // A log begun since: read it from its start; the first time: from now.
        node.next_offset = node.next_offset.map(|_| 0);
    }
    let bindings = crate::families::stream_bindings();
    // Each exchange once (a check costs a channel), however many of its keys are bound.
    let exchanges: HashSet<&'static str> = bindings.iter().map(|b| b.exchange).collect();
    for exchange in exchanges {
        ensure_exchange(connection, exchange).await?;
    }
    for binding in bindings {
        channel
            .queue_bind(
                stream.as_str().into(),
                binding.exchange.into(),
                binding.key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .basic_qos(node.config.prefetch, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    let from = match node.next_offset {
        Some(next) => AMQPValue::LongLongInt(next as i64),
        None => AMQPValue::LongString("next".into()),
    };
    arguments.insert("x-stream-offset".into(), from);
    Ok((channel, stream, arguments))
}

/// Takes the cluster-wide lock on `stream`'s set-up: the exclusive queue `<stream>.lock`,
/// waited for up to 10 s (a holder that died lets it go with its connection).
async fn stream_lock(connection: &Connection, stream: &str) -> Result<Channel, lapin::Error> {
    let name = format!("{stream}.lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let channel = connection.create_channel().await?;
        let taken = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match taken {
            Ok(_) => return Ok(channel),
            Err(e) if Instant::now() >= deadline => return Err(e),
            // RESOURCE_LOCKED: another node holds it (its channel is closed by the broker).
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Stream segments are this small so that retention (applied per segment) follows
/// `history_max_age_secs` closely.
const STREAM_SEGMENT_BYTES: i64 = 8_000_000;

/// The stream's incarnation: kept as the one message of the durable queue `<stream>.epoch`,
/// read and written under the set-up lock. A node that created the stream starts a new epoch.
async fn stream_epoch(
    connection: &Connection,
    stream: &str,
    created: bool,
) -> Result<String, lapin::Error> {
    let queue = format!("{stream}.epoch");
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let declared = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await;
    // A broker where it exists as a classic queue: use it as it is.
    let channel = match declared {
        Ok(_) => channel,
        Err(_) => {
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
        }
    };
    if created {
        channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await?;
    }
    // Under the lock: take the epoch (or make one) and put it back, confirmed, before the lock
    // is let go, so the next node reads the same.
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let got = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await?;
    let kept: String = got
        .map(|message| {
            String::from_utf8_lossy(&message.delivery.data)
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(24)
                .collect()
        })
        .unwrap_or_default();
    let epoch = if kept.is_empty() {
        crate::ids::random_hex(6)
    } else {
        kept
    };
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            epoch.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    let _ = channel.close(200, "ok".into()).await;
    Ok(epoch)
}

async fn open_queue(
    node: &mut Node,
    connection: &Connection,
) -> Result<(Channel, String, FieldTable), lapin::Error> {
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
    Ok((channel, node.queue.clone(), FieldTable::default()))
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

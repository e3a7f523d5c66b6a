//! Where events come from: RabbitMQ (`amqp`) or the in-process bus (`embedded`), on one ingest
//! thread that owns the shards' rings.
//!
//! The thread runs a tokio current-thread runtime. Everything that reaches it - a shard asking
//! for an AMQP binding, a socket letting one go, a publish from the REST side - arrives as a
//! [`Command`] on one channel, so the node-wide reference counts ([`counts`]) have a single owner
//! and are never raced. A delivery is parsed and normalized once ([`Normalizer`]) and handed to
//! every shard as one `Arc<Event>`; a full ring makes the thread wait, and with AMQP that wait
//! holds back acks, so bursts queue in RabbitMQ rather than in memory.
//!
//! [`Ingest`] is the handle the rest of the gateway holds: `Clone`, `Send`, cheap.

mod amqp;
pub mod brokers;
pub mod catch_up;
mod counts;
mod embedded;
pub mod live;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::families::{AmqpBinding, Normalizer, Skip};
use crate::fanout::{Event, History, Publisher};

pub(crate) use amqp::ensure_exchange;
pub use amqp::{redact as redact_url, AmqpConfig};
pub mod tls;

/// The cluster's event log (`history`, docs/resume.md): where positions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// The RabbitMQ stream every node reads as its live source (`history_stream`).
    pub stream: String,
    /// The stream's retention (`history_max_age_secs`).
    pub max_age: Duration,
    /// The node's in-memory history, in bytes (`history_memory_mb`).
    pub memory_bytes: usize,
    /// The most events one resume replays (`resume_max_events`).
    pub resume_max_events: usize,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            stream: "horizon.events".into(),
            max_age: Duration::from_secs(86_400),
            memory_bytes: 64 << 20,
            resume_max_events: 10_000,
        }
    }
}

/// Which source feeds the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Amqp(AmqpConfig),
    /// No broker: the in-process bus fed by publishes (the REST endpoint, tests).
    Embedded,
}

/// The source could not activate a binding (it is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event source unavailable")]
pub struct SourceDown;

/// Why a publish was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Embedded bus: the event does not route (not JSON, no account, ...).
    #[error("event not routable: {0}")]
    NotRoutable(Skip),
    #[error("broker unavailable")]
    BrokerUnavailable,
    #[error("gateway shutting down")]
    ShuttingDown,
}

/// What subscriptions need from the event source: reference-counted bindings. Implemented by
/// [`Ingest`]; the dialects hold it as a trait object and know nothing of AMQP connections.
pub trait EventSource: Send + Sync + 'static {
    /// Takes one reference on `binding`; the future resolves once the binding is active at the
    /// source (bound on the broker), so an event published after it resolves is delivered.
    fn acquire(
        &self,
        binding: AmqpBinding,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceDown>> + Send>>;

    /// Gives one reference back; the binding is removed after its last reference.
    fn release(&self, binding: AmqpBinding);

    /// Publishes a message (a command) on `exchange`; resolves once it is handed to the broker.
    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>> {
        let _ = (exchange, routing_key, payload);
        Box::pin(async { Err(PublishError::BrokerUnavailable) })
    }

    /// The tracker of live calls and conferences this source feeds, and the node's name
    /// (`None`: it tracks nothing, so commands cannot be taken).
    fn live(&self) -> Option<(Arc<live::Live>, String)> {
        None
    }

    /// The node's recent history of the event log and the most events one resume replays
    /// (`None`: no log, no positions).
    fn history(&self) -> Option<(Arc<History>, usize)> {
        None
    }

    /// Asks the node's stream reader for the log's events after `after` up to `until`, which
    /// the node no longer has (or never had) in memory (`None`: there is no stream to read).
    fn catch_up(&self, after: u64, until: u64) -> Option<Arc<catch_up::CatchUp>> {
        let _ = (after, until);
        None
    }
}

pub(crate) enum Command {
    Acquire(AmqpBinding, oneshot::Sender<Result<(), SourceDown>>),
    Release(AmqpBinding),
    Publish {
        exchange: String,
        routing_key: String,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<(), PublishError>>,
    },
    Shutdown,
}

/// Where the source is; `readyz` and the log report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceState {
    Starting = 0,
    Connecting = 1,
    Consuming = 2,
    Embedded = 3,
    Stopped = 4,
}

/// Counters and state, readable from any thread.
#[derive(Debug, Default)]
pub struct IngestStatus {
    state: AtomicU8,
    /// Deliveries (or embedded publishes) received.
    pub received: AtomicU64,
    /// Events handed to the shards.
    pub routed: AtomicU64,
    /// Deliveries skipped, per [`Skip::ALL`] reason.
    pub skipped: [AtomicU64; Skip::ALL.len()],
    /// Distinct bindings with at least one reference.
    pub bindings: AtomicU64,
    /// Releases of bindings nobody held (a dialect bug if ever non-zero).
    pub stray_releases: AtomicU64,
    /// Times the broker connection was (re)established.
    pub connects: AtomicU64,
    /// From a delivery's arrival to its event being in every shard's ring.
    pub ingest_latency: crate::latency::AtomicHistogram,
}

impl IngestStatus {
    pub fn state(&self) -> SourceState {
        match self.state.load(Ordering::Acquire) {
            1 => SourceState::Connecting,
            2 => SourceState::Consuming,
            3 => SourceState::Embedded,
            4 => SourceState::Stopped,
            _ => SourceState::Starting,
        }
    }

    fn set_state(&self, state: SourceState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Ready to deliver: consuming from the broker, or running the embedded bus.
    pub fn ready(&self) -> bool {
        matches!(self.state(), SourceState::Consuming | SourceState::Embedded)
    }

    pub fn skipped(&self, reason: Skip) -> u64 {
        self.skipped[reason.index()].load(Ordering::Relaxed)
    }
}

struct Shared {
    source: Source,
    commands: mpsc::UnboundedSender<Command>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    status: Arc<IngestStatus>,
    queue: String,
    /// What the call and conference events routed here say is live (commands).
    live: Arc<live::Live>,
    node: String,
    /// The event log (`history` on).
    history: Option<(Arc<History>, HistoryConfig)>,
    /// The node's stream reader for deep resumes (a broker's stream; started with the thread).
    catch_up: Mutex<Option<mpsc::UnboundedSender<Arc<catch_up::CatchUp>>>>,
}

/// The handle to the ingest thread.
#[derive(Clone)]
pub struct Ingest {
    shared: Arc<Shared>,
}

impl Ingest {
    /// Prepares the ingest side. Commands sent before [`Ingest::start`] wait for the thread, so
    /// the shards (which need this handle) can start first.
    pub fn new(source: Source) -> Ingest {
        Ingest::with_history(source, None)
    }

    /// [`Ingest::new`] with the cluster's event log: a RabbitMQ stream read by every node, or on
    /// the embedded bus the process's own log.
    pub fn with_history(source: Source, history: Option<HistoryConfig>) -> Ingest {
        let (commands, receiver) = mpsc::unbounded_channel();
        let queue = match &source {
            Source::Amqp(config) => {
                format!("horizon.{}.{}", config.node, crate::ids::random_hex(8))
            }
            Source::Embedded => String::new(),
        };
        let node = match &source {
            Source::Amqp(config) => config.node.clone(),
            Source::Embedded => "embedded".to_string(),
        };
        Ingest {
            shared: Arc::new(Shared {
                source,
                commands,
                receiver: Mutex::new(Some(receiver)),
                thread: Mutex::new(None),
                status: Arc::new(IngestStatus::default()),
                queue,
                live: live::Live::new(Default::default()),
                node,
                history: history.map(|config| {
                    // The embedded bus's log lives and dies with the process; a stream's epoch
                    // is read from the broker once connected.
                    let epoch = crate::ids::random_hex(6);
                    (History::new(config.memory_bytes, &epoch), config)
                }),
                catch_up: Mutex::new(None),
            }),
        }
    }

    /// Starts the ingest thread, which owns `publisher` (the shards' rings) from now on.
    pub fn start(&self, publisher: Publisher) -> std::io::Result<()> {
        let receiver = self
            .shared
            .receiver
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .ok_or_else(|| std::io::Error::other("ingest already started"))?;
        let source = self.shared.source.clone();
        let status = self.shared.status.clone();
        let queue = self.shared.queue.clone();
        let live = self.shared.live.clone();
        let history = self.shared.history.clone();
        if let (Source::Amqp(config), Some((log, history))) = (&source, &history) {
            let reader = catch_up::start(config.url.clone(), history.stream.clone(), log.clone())?;
            if let Ok(mut slot) = self.shared.catch_up.lock() {
                *slot = Some(reader);
            }
        }
        let thread = std::thread::Builder::new()
            .name("horizon-ingest".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::warn!("ingest: cannot start its runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    match source {
                        Source::Amqp(config) => {
                            amqp::run(
                                config,
                                queue,
                                receiver,
                                publisher,
                                status.clone(),
                                live,
                                history,
                            )
                            .await
                        }
                        Source::Embedded => {
                            embedded::run(receiver, publisher, status.clone(), live, history).await
                        }
                    }
                    status.set_state(SourceState::Stopped);
                });
            })?;
        if let Ok(mut slot) = self.shared.thread.lock() {
            *slot = Some(thread);
        }
        Ok(())
    }

    pub fn source(&self) -> &Source {
        &self.shared.source
    }

    /// The embedded bus (no broker).
    pub fn is_embedded(&self) -> bool {
        matches!(self.shared.source, Source::Embedded)
    }

    pub fn status(&self) -> &IngestStatus {
        &self.shared.status
    }

    /// The tracker of live calls and conferences (commands).
    pub fn live_calls(&self) -> &Arc<live::Live> {
        &self.shared.live
    }

    /// The node queue's name (AMQP); empty for the embedded bus.
    pub fn queue_name(&self) -> &str {
        &self.shared.queue
    }

    /// Publishes an event: into the embedded bus, or to the broker's exchange.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
    ) -> Result<(), PublishError> {
        let (done, result) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Publish {
                exchange: exchange.to_string(),
                routing_key: routing_key.to_string(),
                payload,
                done,
            })
            .map_err(|_| PublishError::ShuttingDown)?;
        result.await.unwrap_or(Err(PublishError::ShuttingDown))
    }

    /// Stops consuming (pending acks are sent), closes the broker connection and waits up to
    /// `timeout` for the thread.
    pub fn shutdown(&self, timeout: Duration) {
        let _ = self.shared.commands.send(Command::Shutdown);
        let thread = self.shared.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let deadline = Instant::now() + timeout;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl EventSource for Ingest {
    fn acquire(
        &self,
        binding: AmqpBinding,
    ) -> Pin<Box<dyn Future<Output = Result<(), SourceDown>> + Send>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shared.commands.send(Command::Acquire(binding, tx));
        Box::pin(async move {
            sent.map_err(|_| SourceDown)?;
            rx.await.unwrap_or(Err(SourceDown))
        })
    }

    fn release(&self, binding: AmqpBinding) {
        let _ = self.shared.commands.send(Command::Release(binding));
    }

    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>> {
        let this = self.clone();
        let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
        Box::pin(async move { Ingest::publish(&this, &exchange, &routing_key, payload).await })
    }

    fn live(&self) -> Option<(Arc<live::Live>, String)> {
        Some((self.shared.live.clone(), self.shared.node.clone()))
    }

    fn history(&self) -> Option<(Arc<History>, usize)> {
        let (history, config) = self.shared.history.as_ref()?;
        Some((history.clone(), config.resume_max_events))
    }

    fn catch_up(&self, after: u64, until: u64) -> Option<Arc<catch_up::CatchUp>> {
        let (history, _) = self.shared.history.as_ref()?;
        let reader = self.shared.catch_up.lock().ok()?.clone()?;
        let request = catch_up::CatchUp::new(history.epoch(), after, until);
        reader.send(request.clone()).ok()?;
        Some(request)
    }
}

/// Normalizes one delivery and hands it to every shard. Shared by both sources.
#[allow(clippy::too_many_arguments)]
async fn route(
    live: &live::Live,
    history: Option<(&History, u64)>,
    normalizer: &mut Normalizer,
    skips: &mut SkipLog,
    publisher: &Publisher,
    status: &IngestStatus,
    exchange: &str,
    routing_key: &str,
    body: &mut [u8],
) -> Result<(), PublishError> {
    let received_at = Instant::now();
    status.received.fetch_add(1, Ordering::Relaxed);
    match normalizer.normalize(exchange, routing_key, body) {
        Ok(normalized) => {
            if let Some(facts) = &normalized.facts {
                live.observe(&normalized.account, facts);
            }
            let event = Arc::new(Event {
                key: normalized.key,
                also: normalized.also,
                separator: normalized.separator,
                body: normalized.tail,
                received_at,
                position: history.map(|(history, offset)| (offset, history.member(offset))),
            });
            // Kept before any shard sees it: a resume replays from here up to what its shard
            // has dispatched (docs/resume.md).
            if let Some((history, _)) = history {
                history.push(event.clone());
            }
            publisher
                .publish(event)
                .await
                .map_err(|_| PublishError::ShuttingDown)?;
            // Parse, normalize, and any wait for room in the rings (backpressure shows here).
            status.ingest_latency.record(received_at.elapsed());
            status.routed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(skip) => {
            status.skipped[skip.index()].fetch_add(1, Ordering::Relaxed);
            skips.note(skip, exchange, routing_key);
            Err(PublishError::NotRoutable(skip))
        }
    }
}

/// Logs skipped deliveries at most once per reason every ten seconds, with how many there were.
#[derive(Default)]
struct SkipLog {
    last: [Option<Instant>; Skip::ALL.len()],
    unlogged: [u64; Skip::ALL.len()],
}

impl SkipLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, skip: Skip, exchange: &str, routing_key: &str) {
        let i = skip.index();
        self.unlogged[i] += 1;
        if self.last[i].is_some_and(|at| at.elapsed() < Self::EVERY) {
            return;
        }
        let more = self.unlogged[i] - 1;
        let key: String = routing_key.chars().take(200).collect();
        if more > 0 {
            tracing::warn!(
                "ingest: skipped a delivery on {exchange} / {key}: {skip} (and {more} more skipped for this reason since the last report)"
            );
        } else {
            tracing::warn!("ingest: skipped a delivery on {exchange} / {key}: {skip}");
        }
        self.last[i] = Some(Instant::now());
        self.unlogged[i] = 0;
    }
}

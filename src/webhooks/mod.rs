//! Webhooks: Kazoo's AMQP -> HTTP bridge (docs/webhooks.md), on the control plane's runtime;
//! nothing of it runs on the shards.
//!
//! - [`hook`]: hook types, documents and their validation; [`payload`]: what an event becomes.
//! - [`store`]: hooks, attempts, failure counts and pending retries in SQLite or PostgreSQL.
//! - [`request`]: one HTTP request (encodings, signing, the private-address guard).
//! - [`consumer`]: the shared durable queue every node competes on.
//! - `index`: the hooks in force and the bindings they need; `delivery`: one event's deliveries
//!   and each attempt; `retries`: pending deliveries in the store and the loops that run them.
//!
//! This file owns the configuration, the counters and [`Webhooks`] itself (its state, opening,
//! change announcements and the background tasks).
//! The crossbar routes are in `api::webhooks`.
//!
//! An event's deliveries are each tried at once when their hook has room (a per-hook limit and
//! a node-wide one); a delivery that cannot be tried now, or whose attempt failed and may be
//! retried, is written to the store with its next due time before the broker message is
//! acknowledged, so that nothing waits in memory and nothing is lost when a node dies. Retries
//! are claimed from the store with a lease by whichever node is free.

mod consumer;
mod delivery;
pub mod hook;
mod index;
pub mod payload;
pub mod request;
mod retries;
pub mod store;

pub use delivery::{Admitted, Payload};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};

use self::hook::HookType;
use self::index::Index;
use self::store::{Attempt, Backend, Job, Store};
use crate::auth::Auth;
use crate::latency::AtomicHistogram;

/// How webhooks run on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhooksConfig {
    pub db: Backend,
    pub node: String,
    /// `cluster_id` in every payload.
    pub cluster_id: String,
    /// The broker; `None`: events come from the embedded bus, in process.
    pub amqp_url: Option<String>,
    /// The shared durable queue the nodes compete on.
    pub queue: String,
    pub prefetch: u16,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub per_hook_concurrency: usize,
    pub max_in_flight: usize,
    pub failure_count: u32,
    pub failure_window: Duration,
    pub attempts_retention: Duration,
    pub allow_private: bool,
    /// Hooks one account may have.
    pub max_per_account: usize,
}

impl WebhooksConfig {
    pub fn new(db: Backend, node: String) -> WebhooksConfig {
        WebhooksConfig {
            db,
            node,
            cluster_id: "horizon".into(),
            amqp_url: None,
            queue: "horizon.webhooks".into(),
            prefetch: 1000,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry_first: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            per_hook_concurrency: 8,
            max_in_flight: 4096,
            failure_count: 6,
            failure_window: Duration::from_secs(60),
            attempts_retention: Duration::from_secs(7 * 24 * 3600),
            allow_private: false,
            max_per_account: 1000,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Broker messages (or embedded publishes) handed to webhooks.
    pub events: AtomicU64,
    /// Messages that fire no hook type (not JSON, no account, another event).
    pub unusable: AtomicU64,
    pub attempts: AtomicU64,
    /// Deliveries by final result.
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts that failed and left a retry scheduled.
    pub retries_scheduled: AtomicU64,
    /// Deliveries written to the store untried (their hook or the node was at its limit).
    pub deferred: AtomicU64,
    /// Hooks auto-disabled by this node.
    pub auto_disabled: AtomicU64,
    /// Retries waiting in the store (refreshed every few seconds).
    pub pending: AtomicI64,
    /// From the event's arrival to the receiver's 2xx, for deliveries on their first attempt.
    pub latency: AtomicHistogram,
}

/// A change to the pending deliveries, written with others in one transaction.
enum JobOp {
    Save(Job),
    Delete(String),
}

type JobRequest = (JobOp, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Why a delivery could be neither made nor saved.
#[derive(Debug)]
pub struct StoreDown(pub String);

type Announcer = Box<dyn Fn() + Send + Sync>;

pub struct Webhooks {
    config: WebhooksConfig,
    store: Store,
    client: reqwest::Client,
    auth: Arc<Auth>,
    index: RwLock<Index>,
    lanes: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
    attempts: mpsc::Sender<Attempt>,
    attempts_rx: Mutex<Option<mpsc::Receiver<Attempt>>>,
    jobs: mpsc::Sender<JobRequest>,
    jobs_rx: Mutex<Option<mpsc::Receiver<JobRequest>>>,
    retry_wake: Notify,
    bindings_changed: Notify,
    /// Bumped whenever the wanted broker bindings change; the consumer publishes the generation
    /// it has bound, so that a hook saved through the API is live when the API answers.
    wanted_bindings: AtomicU64,
    bound_bindings: tokio::sync::watch::Sender<u64>,
    announcer: Mutex<Option<Announcer>>,
    pub metrics: Metrics,
}

/// The reason a hook is auto-disabled with.
pub const DISABLE_REASON: &str = "too many failed attempts";

impl Webhooks {
    /// Opens the store (creating and migrating it) and loads the hooks. Call on the runtime that
    /// will run [`Webhooks::run`].
    pub async fn open(config: WebhooksConfig, auth: Arc<Auth>) -> Result<Arc<Webhooks>, String> {
        let store = Store::open(config.db.clone()).await?;
        let client = request::client(
            config.connect_timeout,
            config.request_timeout,
            config.allow_private,
        )?;
        let (attempts, attempts_rx) = mpsc::channel(16 * 1024);
        let (jobs, jobs_rx) = mpsc::channel(16 * 1024);
        let webhooks = Arc::new(Webhooks {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
            store,
            client,
            auth,
            index: RwLock::new(Index::default()),
            lanes: Mutex::new(HashMap::new()),
            attempts,
            attempts_rx: Mutex::new(Some(attempts_rx)),
            jobs,
            jobs_rx: Mutex::new(Some(jobs_rx)),
            retry_wake: Notify::new(),
            bindings_changed: Notify::new(),
            wanted_bindings: AtomicU64::new(0),
            bound_bindings: tokio::sync::watch::Sender::new(0),
            announcer: Mutex::new(None),
            metrics: Metrics::default(),
        });
        webhooks
            .reload()
            .await
            .map_err(|e| format!("cannot read the hooks: {e}"))?;
        Ok(webhooks)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    /// What to call when this node changed hooks, so that the other nodes reload theirs.
    pub fn set_announcer(&self, announce: impl Fn() + Send + Sync + 'static) {
        *self.announcer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(announce));
    }

    /// Hooks changed here: reload, wait (briefly) for the broker bindings they need, and tell
    /// the cluster.
    pub async fn changed(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!("webhooks: cannot reload the hooks: {e}");
        }
        if self.config.amqp_url.is_some() {
            let wanted = self.wanted_bindings.load(Ordering::SeqCst);
            let mut bound = self.bound_bindings.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(3), bound.wait_for(|b| *b >= wanted))
                .await;
        }
        if let Some(announce) = self
            .announcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            announce();
        }
    }

    /// Everything that runs in the background: the consumer (AMQP), retries, the attempts log,
    /// periodic reloads (a missed announcement heals within seconds) and pruning.
    pub async fn run(self: Arc<Self>) {
        if let Some(rx) = self
            .attempts_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(self.clone().attempts_writer(rx));
        }
        if let Some(rx) = self
            .jobs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(self.clone().jobs_writer(rx));
        }
        tokio::spawn(self.clone().retry_loop());
        if let Some(url) = self.config.amqp_url.clone() {
            tokio::spawn(consumer::run(self.clone(), url));
        }
        // Announcements make changes visible at once; the reload bounds how stale a node can be
        // when one is lost (a control connection that was down, a node that just joined).
        let mut reload = tokio::time::interval(Duration::from_secs(1));
        let mut prune = Instant::now();
        loop {
            reload.tick().await;
            if let Err(e) = self.reload().await {
                tracing::warn!("webhooks: cannot reload the hooks: {e}");
            }
            if prune.elapsed() >= Duration::from_secs(60) {
                prune = Instant::now();
                if let Err(e) = self
                    .store
                    .prune(self.config.attempts_retention, self.config.failure_window)
                    .await
                {
                    tracing::warn!("webhooks: cannot prune the attempts log: {e}");
                }
            }
        }
    }
}

/// Hook types as the broker sees them, for the consumer.
pub(crate) fn exchanges() -> BTreeSet<&'static str> {
    HookType::ALL
        .iter()
        .flat_map(|t| t.amqp_bindings())
        .map(|(exchange, _)| exchange)
        .collect()
}

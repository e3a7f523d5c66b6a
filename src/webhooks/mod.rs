//! Webhooks: Kazoo's AMQP -> HTTP bridge (docs/webhooks.md), on the control plane's runtime;
//! nothing of it runs on the shards.
//!
//! - [`hook`]: hook types, documents and their validation; [`payload`]: what an event becomes.
//! - [`store`]: hooks, attempts, failure counts and pending retries in SQLite or PostgreSQL.
//! - [`request`]: one HTTP request (encodings, signing, the private-address guard).
//! - [`consumer`]: the shared durable queue every node competes on.
//!
//! The crossbar routes are in `api::webhooks`.
//!
//! An event's deliveries are each tried at once when their hook has room (a per-hook limit and
//! a node-wide one); a delivery that cannot be tried now, or whose attempt failed and may be
//! retried, is written to the store with its next due time before the broker message is
//! acknowledged, so that nothing waits in memory and nothing is lost when a node dies. Retries
//! are claimed from the store with a lease by whichever node is free.

mod consumer;
pub mod hook;
pub mod payload;
pub mod request;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use self::hook::{Hook, HookType};
use self::payload::HookEvent;
use self::request::Outcome;
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

/// The hooks in force, by account and by id, and the broker bindings they need.
#[derive(Default)]
struct Index {
    by_account: HashMap<String, Vec<Arc<Hook>>>,
    by_id: HashMap<String, Arc<Hook>>,
    bindings: BTreeSet<(&'static str, &'static str)>,
    disabled: usize,
}

/// An event's payload, encoded at most once per encoding for all the hooks without custom
/// data (an event fanned out to a thousand hooks is written once, not a thousand times).
#[derive(Debug)]
pub struct Payload {
    pub fields: Map<String, Value>,
    form: std::sync::OnceLock<String>,
    json: std::sync::OnceLock<Vec<u8>>,
}

impl Payload {
    pub fn new(fields: Map<String, Value>) -> Payload {
        Payload {
            fields,
            form: std::sync::OnceLock::new(),
            json: std::sync::OnceLock::new(),
        }
    }

    pub fn form(&self) -> &str {
        self.form.get_or_init(|| payload::form_encode(&self.fields))
    }

    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| serde_json::to_vec(&self.fields).unwrap_or_default())
    }
}

/// One delivery of one event to one hook.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    hook_event: String,
    event_id: Option<String>,
    payload: Arc<Payload>,
}

/// An event's deliveries, with the node's room for them reserved.
pub struct Admitted {
    deliveries: Vec<(Arc<Hook>, Delivery)>,
    permits: Option<OwnedSemaphorePermit>,
}

/// What happened to a delivery after an attempt.
enum Settled {
    /// Delivered, or failed for good: nothing more to do.
    Done,
    /// Saved in the store for a later attempt.
    Scheduled,
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

    /// Re-reads every hook from the store.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let rows = self.store.all_hooks().await?;
        let mut index = Index::default();
        for row in rows {
            let Some(hook) = row.hook() else { continue };
            if !hook.enabled {
                if hook.disable_reason.is_some() {
                    index.disabled += 1;
                }
                continue;
            }
            index.bindings.extend(hook.hook.amqp_bindings());
            let hook = Arc::new(hook);
            index.by_id.insert(hook.id.clone(), hook.clone());
            index
                .by_account
                .entry(hook.account_id.clone())
                .or_default()
                .push(hook);
        }
        let changed = {
            let mut current = self.index.write().unwrap_or_else(|p| p.into_inner());
            let changed = current.bindings != index.bindings;
            *current = index;
            changed
        };
        if changed {
            self.wanted_bindings.fetch_add(1, Ordering::SeqCst);
            self.bindings_changed.notify_waiters();
        }
        Ok(())
    }

    /// The broker bindings the hooks in force need, and their generation.
    fn bindings(&self) -> (u64, BTreeSet<(&'static str, &'static str)>) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        (
            self.wanted_bindings.load(Ordering::SeqCst),
            index.bindings.clone(),
        )
    }

    /// The consumer has bound the bindings of `generation`.
    fn bound(&self, generation: u64) {
        self.bound_bindings.send_if_modified(|b| {
            let newer = generation > *b;
            if newer {
                *b = generation;
            }
            newer
        });
    }

    /// Hooks auto-disabled and not yet re-enabled.
    pub fn disabled_hooks(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .disabled
    }

    /// Hooks in force.
    pub fn enabled_hooks(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    /// The hooks an event fires: the account's own, and each ancestor's that includes
    /// sub-accounts.
    fn matching(&self, event: &HookEvent) -> Vec<Arc<Hook>> {
        let ancestors = self.auth.ancestors(&event.account);
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut add = |account: &str, own: bool| {
            for hook in index.by_account.get(account).into_iter().flatten() {
                if (own || hook.include_subaccounts) && hook.wants(event.hook, &event.filter) {
                    out.push(hook.clone());
                }
            }
        };
        add(&event.account, true);
        for ancestor in &ancestors {
            add(ancestor, false);
        }
        out
    }

    fn lane(&self, hook_id: &str) -> Arc<Semaphore> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if lanes.len() > 4 * self.enabled_hooks().max(1024) {
            // Lanes of deleted hooks: drop the idle ones.
            let limit = self.config.per_hook_concurrency;
            lanes.retain(|_, s| s.available_permits() < limit);
        }
        lanes
            .entry(hook_id.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_hook_concurrency)))
            .clone()
    }

    /// Room for an attempt of `hook_id` now: its own limit and the node's.
    fn try_permits(&self, hook_id: &str) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let lane = self.lane(hook_id).try_acquire_owned().ok()?;
        let node = self.in_flight.clone().try_acquire_owned().ok()?;
        Some((lane, node))
    }

    /// Reads one broker message and waits until the node has room for its deliveries (its
    /// requests in flight stay under `max_in_flight`): the caller stops taking messages while it
    /// waits, so an overloaded node leaves the backlog in the broker. `None`: no hook wants it.
    pub async fn admit(
        self: &Arc<Self>,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Option<Admitted> {
        self.metrics.events.fetch_add(1, Ordering::Relaxed);
        let event = match payload::parse(exchange, routing_key, body, &self.config.cluster_id) {
            Ok(event) => event,
            Err(_) => {
                self.metrics.unusable.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        let hooks = self.matching(&event);
        if hooks.is_empty() {
            return None;
        }
        let wanted = hooks.len().min(self.config.max_in_flight) as u32;
        let permits = self.in_flight.clone().acquire_many_owned(wanted).await.ok();
        let payload = Arc::new(Payload::new(event.payload));
        let deliveries = hooks
            .into_iter()
            .map(|hook| {
                let delivery = Delivery {
                    id: delivery_id(&hook.id, exchange, routing_key, body),
                    hook_event: event.hook.name().to_string(),
                    event_id: event.event_id.clone(),
                    payload: payload.clone(),
                };
                (hook, delivery)
            })
            .collect();
        Some(Admitted {
            deliveries,
            permits,
        })
    }

    /// Makes an admitted event's deliveries: each is made, failed for good, or saved for a retry
    /// before this returns. An error means some could not be saved: the caller must not
    /// acknowledge the message (the broker redelivers it; delivery ids stay the same).
    pub async fn deliver(
        self: &Arc<Self>,
        admitted: Admitted,
        received: Instant,
        redelivered: bool,
    ) -> Result<(), StoreDown> {
        let Admitted {
            deliveries,
            mut permits,
        } = admitted;
        let attempts = deliveries.into_iter().map(|(hook, delivery)| {
            let permit = permits.as_mut().and_then(|p| {
                if p.num_permits() > 1 {
                    p.split(1)
                } else {
                    None
                }
            });
            let permit = permit.or_else(|| permits.take());
            self.first_attempt(hook, delivery, received, redelivered, permit)
        });
        let results = futures_util::future::join_all(attempts).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, StoreDown>>()?;
        Ok(())
    }

    /// [`Webhooks::admit`] then [`Webhooks::deliver`].
    pub async fn handle(
        self: &Arc<Self>,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        received: Instant,
        redelivered: bool,
    ) -> Result<(), StoreDown> {
        match self.admit(exchange, routing_key, body).await {
            Some(admitted) => self.deliver(admitted, received, redelivered).await,
            None => Ok(()),
        }
    }

    async fn first_attempt(
        self: &Arc<Self>,
        hook: Arc<Hook>,
        delivery: Delivery,
        received: Instant,
        redelivered: bool,
        node_permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StoreDown> {
        // A message the broker hands out again (its consumer died before acknowledging it) may
        // have been tried and saved for a retry already: then the saved retry carries on.
        if redelivered
            && self
                .store
                .job_exists(&delivery.id)
                .await
                .map_err(|e| StoreDown(e.to_string()))?
        {
            return Ok(());
        }
        // The node's room was reserved at admission; the hook's own limit is taken here, and a
        // hook at its limit (a slow receiver) gets the delivery saved for later instead of
        // holding up the others.
        let lane = self.lane(&hook.id).try_acquire_owned().ok();
        let node = node_permit.or_else(|| self.in_flight.clone().try_acquire_owned().ok());
        let (Some(lane), Some(node)) = (lane, node) else {
            self.metrics.deferred.fetch_add(1, Ordering::Relaxed);
            self.save(&hook, &delivery, 0, Duration::ZERO).await?;
            return Ok(());
        };
        let outcome = self.attempt(&hook, &delivery, 1).await;
        drop((lane, node));
        if matches!(outcome, Outcome::Success { .. }) {
            self.metrics.latency.record(received.elapsed());
        }
        self.settle(&hook, &delivery, 1, outcome).await.map(|_| ())
    }

    async fn attempt(&self, hook: &Hook, delivery: &Delivery, try_number: u32) -> Outcome {
        self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
        let prepared = request::prepare(hook, &delivery.id, &delivery.payload, SystemTime::now());
        let outcome = request::send(&self.client, &prepared, self.config.allow_private).await;
        let now = store::unix_ms();
        let (result, reason, code, body) = match &outcome {
            Outcome::Success { status, body } => ("success", None, Some(*status), body.as_str()),
            Outcome::Retry {
                status,
                body,
                reason,
                ..
            }
            | Outcome::Fail {
                status,
                body,
                reason,
            } => ("failure", Some(reason.as_str()), *status, body.as_str()),
        };
        let retries_left = match outcome {
            Outcome::Retry { .. } => hook.attempts.saturating_sub(try_number),
            _ => 0,
        };
        let mut req_body = String::from_utf8_lossy(&prepared.body).into_owned();
        truncate(&mut req_body, request::REQUEST_BODY_LOGGED);
        let headers: Map<String, Value> = prepared
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(v.as_str())))
            .collect();
        let mut doc = json!({
            "hook_id": hook.id,
            "hook_event": delivery.hook_event,
            "delivery_id": delivery.id,
            "uri": prepared.url,
            "method": hook.verb.as_str(),
            "req_headers": headers,
            "req_body": req_body,
            "result": result,
            "try": try_number,
            "retries_left": retries_left,
            "timestamp": crate::api::cluster::to_gregorian(SystemTime::now()),
            "node": self.config.node,
        });
        if let Some(id) = &delivery.event_id {
            doc["event_id"] = Value::from(id.as_str());
        }
        if let Some(reason) = reason {
            doc["reason"] = Value::from(reason);
        }
        if let Some(code) = code {
            doc["response_code"] = Value::from(code.to_string());
            doc["response_body"] = Value::from(body);
        }
        let attempt = Attempt {
            id: format!("{}-{try_number}", delivery.id),
            account_id: hook.account_id.clone(),
            hook_id: hook.id.clone(),
            created_ms: now,
            doc: doc.to_string(),
        };
        // The log is bounded: when it cannot keep up, attempts wait here (backpressure), never
        // in an unbounded buffer.
        let _ = self.attempts.send(attempt).await;
        outcome
    }

    /// After attempt number `tries`: saves a retry, or counts the delivery as done.
    async fn settle(
        &self,
        hook: &Hook,
        delivery: &Delivery,
        tries: u32,
        outcome: Outcome,
    ) -> Result<Settled, StoreDown> {
        match outcome {
            Outcome::Success { .. } => {
                self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                Ok(Settled::Done)
            }
            Outcome::Retry { after, .. } if tries < hook.attempts => {
                self.count_failure(hook).await;
                let wait = after
                    .map(|a| a.min(self.config.retry_max))
                    .unwrap_or_else(|| self.backoff(tries));
                self.save(hook, delivery, tries, wait).await?;
                self.metrics
                    .retries_scheduled
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Settled::Scheduled)
            }
            Outcome::Retry { .. } | Outcome::Fail { .. } => {
                self.count_failure(hook).await;
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                Ok(Settled::Done)
            }
        }
    }

    /// Kazoo's spacing (about 2 s first), doubling, capped, with ±25 % jitter.
    fn backoff(&self, tries: u32) -> Duration {
        let doubled = self
            .config
            .retry_first
            .saturating_mul(1 << tries.saturating_sub(1).min(16));
        let capped = doubled.min(self.config.retry_max);
        let jitter = 0.75 + (crate::ids::random_u64() % 1000) as f64 / 2000.0;
        capped.mul_f64(jitter)
    }

    async fn save(
        &self,
        hook: &Hook,
        delivery: &Delivery,
        tries: u32,
        wait: Duration,
    ) -> Result<(), StoreDown> {
        let job = Job {
            id: delivery.id.clone(),
            hook_id: hook.id.clone(),
            hook_event: delivery.hook_event.clone(),
            event_id: delivery.event_id.clone(),
            payload: String::from_utf8_lossy(delivery.payload.json()).into_owned(),
            tries,
            due_ms: store::unix_ms() + wait.as_millis() as i64,
        };
        self.write_job(JobOp::Save(job)).await?;
        self.retry_wake.notify_one();
        Ok(())
    }

    /// One change to the pending deliveries, batched with others (one transaction for many:
    /// the store's write rate, not its transaction rate, bounds a burst of retries).
    async fn write_job(&self, op: JobOp) -> Result<(), StoreDown> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send((op, done))
            .await
            .map_err(|_| StoreDown("shutting down".into()))?;
        result
            .await
            .unwrap_or_else(|_| Err("shutting down".into()))
            .map_err(StoreDown)
    }

    async fn jobs_writer(self: Arc<Self>, mut rx: mpsc::Receiver<JobRequest>) {
        let mut batch: Vec<JobRequest> = Vec::with_capacity(1024);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let mut saves = Vec::new();
            let mut deletes = Vec::new();
            for (op, _) in &batch {
                match op {
                    JobOp::Save(job) => saves.push(job.clone()),
                    JobOp::Delete(id) => deletes.push(id.clone()),
                }
            }
            let result = self
                .store
                .apply_jobs(&saves, &deletes)
                .await
                .map_err(|e| e.to_string());
            for (_, done) in batch.drain(..) {
                let _ = done.send(result.clone());
            }
        }
    }

    /// Counts a failed attempt in the shared store; past the threshold the hook is disabled on
    /// every node.
    async fn count_failure(&self, hook: &Hook) {
        match self
            .store
            .count_failure(
                &hook.id,
                self.config.failure_count,
                self.config.failure_window,
                DISABLE_REASON,
            )
            .await
        {
            Ok(true) => {
                self.metrics.auto_disabled.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "webhooks: hook {} of account {} disabled: {DISABLE_REASON} ({} within {} s)",
                    hook.id,
                    hook.account_id,
                    self.config.failure_count,
                    self.config.failure_window.as_secs()
                );
                self.changed().await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("webhooks: cannot count a failure of hook {}: {e}", hook.id),
        }
    }

    /// One retry claimed from the store.
    async fn retry(self: Arc<Self>, job: Job) {
        let hook = self
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .get(&job.hook_id)
            .cloned();
        let Some(hook) = hook else {
            // Deleted or disabled since: the delivery goes with it.
            let _ = self.write_job(JobOp::Delete(job.id.clone())).await;
            return;
        };
        let payload: Map<String, Value> = serde_json::from_str(&job.payload).unwrap_or_default();
        let delivery = Delivery {
            id: job.id.clone(),
            hook_event: job.hook_event.clone(),
            event_id: job.event_id.clone(),
            payload: Arc::new(Payload::new(payload)),
        };
        let Some(permits) = self.try_permits(&hook.id) else {
            // Still at its limit: back in the store, a little later.
            let _ = self
                .save(&hook, &delivery, job.tries, Duration::from_millis(200))
                .await;
            return;
        };
        let tries = job.tries + 1;
        let outcome = self.attempt(&hook, &delivery, tries).await;
        drop(permits);
        match self.settle(&hook, &delivery, tries, outcome).await {
            Ok(Settled::Done) => {
                if let Err(StoreDown(e)) = self.write_job(JobOp::Delete(job.id.clone())).await {
                    tracing::error!("webhooks: cannot remove delivery {}: {e}", job.id);
                }
            }
            Ok(Settled::Scheduled) => {}
            Err(StoreDown(e)) => {
                // The lease runs out and the delivery is tried again.
                tracing::error!("webhooks: cannot save delivery {}: {e}", job.id)
            }
        }
    }

    /// Claims due retries from the store and runs them, for as long as the node runs.
    async fn retry_loop(self: Arc<Self>) {
        let lease = self.config.request_timeout * 2 + Duration::from_secs(5);
        let mut last_count = Instant::now() - Duration::from_secs(60);
        loop {
            if last_count.elapsed() >= Duration::from_secs(2) {
                if let Ok(n) = self.store.pending_jobs().await {
                    self.metrics.pending.store(n, Ordering::Relaxed);
                }
                last_count = Instant::now();
            }
            let room = self.in_flight.available_permits().min(256) as i64;
            let claimed = if room > 0 {
                match self.store.claim_due(room, lease).await {
                    Ok(jobs) => jobs,
                    Err(e) => {
                        tracing::warn!("webhooks: cannot read pending retries: {e}");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let full = claimed.len() as i64 == room && room > 0;
            for job in claimed {
                tokio::spawn(self.clone().retry(job));
            }
            if full {
                tokio::task::yield_now().await;
                continue;
            }
            // Until the next due retry, a new one, or a look at what other nodes left.
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis((due - store::unix_ms()).clamp(10, 500) as u64)
                }
                _ => Duration::from_millis(500),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.retry_wake.notified() => {}
            }
        }
    }

    /// Writes attempts to the log in batches.
    async fn attempts_writer(self: Arc<Self>, mut rx: mpsc::Receiver<Attempt>) {
        let mut batch = Vec::with_capacity(512);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let deadline = tokio::time::sleep(Duration::from_millis(20));
            tokio::pin!(deadline);
            while batch.len() < 512 {
                tokio::select! {
                    more = rx.recv() => match more {
                        Some(a) => batch.push(a),
                        None => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            if let Err(e) = self.store.log_attempts(&batch).await {
                tracing::warn!(
                    "webhooks: cannot write {} attempts to the log: {e}",
                    batch.len()
                );
            }
            batch.clear();
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

/// A delivery id stable across retries and across redeliveries of the same broker message:
/// `msg_` and 32 hex digits of SHA-256 over the hook and the message.
fn delivery_id(hook_id: &str, exchange: &str, routing_key: &str, body: &[u8]) -> String {
    let mut digest = Sha256::new();
    for part in [
        hook_id.as_bytes(),
        exchange.as_bytes(),
        routing_key.as_bytes(),
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.update(body);
    let hash = digest.finalize();
    let mut out = String::with_capacity(36);
    out.push_str("msg_");
    for b in &hash[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let a = delivery_id("h1", "callevt", "call.X.1", b"{}");
        assert_eq!(a, delivery_id("h1", "callevt", "call.X.1", b"{}"));
        assert_ne!(a, delivery_id("h2", "callevt", "call.X.1", b"{}"));
        assert_eq!(a.len(), 36);
    }
}

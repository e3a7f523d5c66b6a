//! One event's deliveries: admission (the node's room, reserved before the broker message is
//! taken), the first attempt, each attempt's record in the log, and what follows an attempt
//! (done, or saved for a retry). Calls the index for the hooks an event fires, `request` for the
//! HTTP request and the retries' writer for the store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::hook::Hook;
use super::request::{self, Outcome};
use super::store::{self, Attempt, Job};
use super::{payload, JobOp, StoreDown, Webhooks, DISABLE_REASON};

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
pub(super) struct Delivery {
    pub(super) id: String,
    pub(super) hook_event: String,
    pub(super) event_id: Option<String>,
    pub(super) payload: Arc<Payload>,
}

/// An event's deliveries, with the node's room for them reserved.
pub struct Admitted {
    deliveries: Vec<(Arc<Hook>, Delivery)>,
    permits: Option<OwnedSemaphorePermit>,
}

/// What happened to a delivery after an attempt.
pub(super) enum Settled {
    /// Delivered, or failed for good: nothing more to do.
    Done,
    /// Saved in the store for a later attempt.
    Scheduled,
}

impl Webhooks {
    pub(super) fn lane(&self, hook_id: &str) -> Arc<Semaphore> {
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
    pub(super) fn try_permits(
        &self,
        hook_id: &str,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
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

    pub(super) async fn first_attempt(
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

    pub(super) async fn attempt(
        &self,
        hook: &Hook,
        delivery: &Delivery,
        try_number: u32,
    ) -> Outcome {
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
            "timestamp": crate::families::to_gregorian(SystemTime::now()),
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
    pub(super) async fn settle(
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
    pub(super) fn backoff(&self, tries: u32) -> Duration {
        let doubled = self
            .config
            .retry_first
            .saturating_mul(1 << tries.saturating_sub(1).min(16));
        let capped = doubled.min(self.config.retry_max);
        let jitter = 0.75 + (crate::ids::random_u64() % 1000) as f64 / 2000.0;
        capped.mul_f64(jitter)
    }

    pub(super) async fn save(
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

    /// Counts a failed attempt in the shared store; past the threshold the hook is disabled on
    /// every node.
    pub(super) async fn count_failure(&self, hook: &Hook) {
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

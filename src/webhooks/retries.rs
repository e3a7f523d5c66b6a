//! Deliveries waiting in the store: the batched writer of pending deliveries, the loop that
//! claims due retries (with a lease, by whichever node has room) and runs them, and the batched
//! writer of the attempts log. Calls `delivery` for each attempt.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::delivery::{Delivery, Payload, Settled};
use super::store::{self, Attempt, Job};
use super::{JobOp, JobRequest, StoreDown, Webhooks};

impl Webhooks {
    /// One change to the pending deliveries, batched with others (one transaction for many:
    /// the store's write rate, not its transaction rate, bounds a burst of retries).
    pub(super) async fn write_job(&self, op: JobOp) -> Result<(), StoreDown> {
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

    pub(super) async fn jobs_writer(self: Arc<Self>, mut rx: mpsc::Receiver<JobRequest>) {
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

    /// One retry claimed from the store.
    pub(super) async fn retry(self: Arc<Self>, job: Job) {
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
    pub(super) async fn retry_loop(self: Arc<Self>) {
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
    pub(super) async fn attempts_writer(self: Arc<Self>, mut rx: mpsc::Receiver<Attempt>) {
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
}

//! `GET /metrics` in the Prometheus text format (0.0.4). Labels are bounded: per shard, per
//! reason, never per account or socket.

use std::fmt::Write as _;

use crate::auth::Auth;
use crate::families::Skip;
use crate::ingest::IngestStatus;
use crate::latency::{Histogram, BUCKETS_US};
use crate::shard::ShardStats;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one unlabelled series.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn per_shard(
    out: &mut String,
    stats: &[ShardStats],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&ShardStats) -> u64,
) {
    family(out, name, kind, help);
    for s in stats {
        let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (bound, count) in BUCKETS_US.iter().zip(h.counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.count());
}

/// Renders every metric.
pub fn render(
    stats: &[ShardStats],
    ingest: &IngestStatus,
    auth: &Auth,
    live_nodes: usize,
    ready: bool,
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(8192);
    per_shard(
        &mut out,
        stats,
        "horizon_connections",
        "gauge",
        "Open WebSocket connections.",
        |s| s.connections as u64,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_subscriptions",
        "gauge",
        "Distinct bindings held by the shard's sockets.",
        |s| s.bindings as u64,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_shard_events_total",
        "counter",
        "Events the shard received from its ring.",
        |s| s.events,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_frames_encoded_total",
        "counter",
        "Event frames encoded (one per event per matching binding).",
        |s| s.frames_encoded,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_deliveries_total",
        "counter",
        "Event frames queued to sockets.",
        |s| s.deliveries,
    );
    family(
        &mut out,
        "horizon_dropped_total",
        "counter",
        "Events not delivered to a socket, by reason.",
    );
    for s in stats {
        let _ = writeln!(
            out,
            "horizon_dropped_total{{shard=\"{}\",reason=\"slow_consumer\"}} {}",
            s.shard, s.dropped
        );
    }
    per_shard(
        &mut out,
        stats,
        "horizon_slow_consumer_closed_total",
        "counter",
        "Sockets closed as slow consumers (close policy).",
        |s| s.closed_slow,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_ring_depth",
        "gauge",
        "Events waiting in the shard's ring.",
        |s| s.ring.depth as u64,
    );
    per_shard(
        &mut out,
        stats,
        "horizon_ring_producer_waits_total",
        "counter",
        "Times the ingest side found the shard's ring full.",
        |s| s.ring.producer_waits,
    );
    family(
        &mut out,
        "horizon_handshakes_refused_total",
        "counter",
        "WebSocket upgrades refused, by reason.",
    );
    let sum = |count: fn(&ShardStats) -> u64| stats.iter().map(count).sum::<u64>();
    // PROXY headers are refused by the WebSocket listeners' shards and by the REST listener.
    let rest_proxy = crate::proxy::REST_REFUSALS.load(std::sync::atomic::Ordering::Relaxed);
    for (reason, count) in [
        ("invalid_request", sum(|s| s.handshakes_invalid)),
        ("dialect", sum(|s| s.handshakes_refused)),
        ("tls", sum(|s| s.handshakes_tls_failed)),
        ("proxy", sum(|s| s.handshakes_proxy_refused) + rest_proxy),
        ("connect_rate", sum(|s| s.handshakes_connect_rate)),
        ("per_ip_limit", sum(|s| s.handshakes_limited_address)),
        ("connection_limit", sum(|s| s.handshakes_limited_node)),
    ] {
        let _ = writeln!(
            out,
            "horizon_handshakes_refused_total{{reason=\"{reason}\"}} {count}"
        );
    }
    let drained: u64 = stats.iter().map(|s| s.drain_closed).sum();
    single(
        &mut out,
        "horizon_drain_closed_total",
        "counter",
        "Sockets closed with 1001 by a drain (spread over drain_spread_secs).",
        drained,
    );
    family(
        &mut out,
        "horizon_account_limit_refusals_total",
        "counter",
        "Sockets refused for max_connections_per_account: at the upgrade (429) or at the command \
         that first named the account.",
    );
    for (at, counter) in ["upgrade", "command"]
        .iter()
        .zip(&crate::dialect::ACCOUNT_LIMIT_REFUSALS)
    {
        let _ = writeln!(
            out,
            "horizon_account_limit_refusals_total{{at=\"{at}\"}} {}",
            counter.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    let blocked: u64 = stats.iter().map(|s| s.closed_blocked).sum();
    single(
        &mut out,
        "horizon_sockets_closed_blocked_total",
        "counter",
        "Sockets closed with 1008 because their client stopped reading its output.",
        blocked,
    );
    let paused: usize = stats.iter().map(|s| s.read_paused).sum();
    single(
        &mut out,
        "horizon_sockets_read_paused",
        "gauge",
        "Sockets not being read because their client does not read its output.",
        paused,
    );
    let overflows: u64 = stats.iter().map(|s| s.cq_overflows).sum();
    single(&mut out, "horizon_uring_cq_overflows_total", "counter", "io_uring: shard turns that found the completion queue overflowed (each costs one more enter).", overflows);
    family(
        &mut out,
        "horizon_auth_failures_total",
        "counter",
        "Tokens refused, by reason.",
    );
    for (reason, n) in auth.failures() {
        let _ = writeln!(
            out,
            "horizon_auth_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    family(
        &mut out,
        "horizon_events_received_total",
        "counter",
        "Deliveries (or embedded publishes) received by the ingest side.",
    );
    let _ = writeln!(
        out,
        "horizon_events_received_total {}",
        ingest.received.load(Relaxed)
    );
    family(
        &mut out,
        "horizon_events_routed_total",
        "counter",
        "Events handed to the shards.",
    );
    let _ = writeln!(
        out,
        "horizon_events_routed_total {}",
        ingest.routed.load(Relaxed)
    );
    family(
        &mut out,
        "horizon_events_skipped_total",
        "counter",
        "Deliveries skipped by the ingest side, by reason.",
    );
    for reason in Skip::ALL {
        let _ = writeln!(
            out,
            "horizon_events_skipped_total{{reason=\"{}\"}} {}",
            reason.label(),
            ingest.skipped(reason)
        );
    }
    family(
        &mut out,
        "horizon_amqp_bindings",
        "gauge",
        "Node-queue bindings with at least one subscriber.",
    );
    let _ = writeln!(
        out,
        "horizon_amqp_bindings {}",
        ingest.bindings.load(Relaxed)
    );
    family(
        &mut out,
        "horizon_amqp_connects_total",
        "counter",
        "Times the broker connection was established.",
    );
    let _ = writeln!(
        out,
        "horizon_amqp_connects_total {}",
        ingest.connects.load(Relaxed)
    );
    family(
        &mut out,
        "horizon_ready",
        "gauge",
        "1 when the node is ready (listeners up, source consuming, not draining).",
    );
    let _ = writeln!(out, "horizon_ready {}", u8::from(ready));
    family(
        &mut out,
        "horizon_cluster_nodes",
        "gauge",
        "Live nodes this node knows of, itself included.",
    );
    let _ = writeln!(out, "horizon_cluster_nodes {live_nodes}");
    histogram(
        &mut out,
        "horizon_ingest_latency_seconds",
        "From a delivery's arrival to its event being in every shard's ring.",
        &ingest.ingest_latency.snapshot(),
    );
    let mut delivery = Histogram::default();
    for s in stats {
        delivery.merge(&s.delivery_latency);
    }
    histogram(
        &mut out,
        "horizon_delivery_latency_seconds",
        "From a delivery's arrival to a shard having queued its frames (per event per shard).",
        &delivery,
    );
    out
}

/// The webhook metrics (appended when webhooks run on this node).
/// Positions and resume (docs/resume.md): resumes by outcome, and the node's history.
pub fn render_history(out: &mut String, ingest: &crate::ingest::Ingest) {
    use crate::ingest::EventSource;
    use std::sync::atomic::Ordering::Relaxed;
    family(
        out,
        "horizon_resumes_total",
        "counter",
        "Subscribes with resume_from: recovered (the missed events replayed) or not.",
    );
    for (recovered, counter) in ["true", "false"].iter().zip(&crate::dialect::RESUMES) {
        let _ = writeln!(
            out,
            "horizon_resumes_total{{recovered=\"{recovered}\"}} {}",
            counter.load(Relaxed)
        );
    }
    single(
        out,
        "horizon_resume_waits_total",
        "counter",
        "Resumes that waited for their turn (resume_admissions_per_sec reached).",
        crate::dialect::RESUME_WAITS.load(Relaxed),
    );
    family(
        out,
        "horizon_resume_stream_reads_total",
        "counter",
        "Reads of the stream for resumes older than the node's memory: read, or failed (one read serves every resume waiting).",
    );
    for (result, counter) in ["read", "failed"]
        .iter()
        .zip(&crate::ingest::catch_up::READS)
    {
        let _ = writeln!(
            out,
            "horizon_resume_stream_reads_total{{result=\"{result}\"}} {}",
            counter.load(Relaxed)
        );
    }
    let (events, bytes) = ingest.history().map_or((0, 0), |(h, _)| h.size());
    family(
        out,
        "horizon_history",
        "gauge",
        "The recent history this node keeps for resumes (history = stream): events and bytes.",
    );
    let _ = writeln!(out, "horizon_history{{what=\"events\"}} {events}");
    let _ = writeln!(out, "horizon_history{{what=\"bytes\"}} {bytes}");
}

/// Call and conference commands, and what the node tracks for them.
pub fn render_commands(out: &mut String, live: &crate::commands::Live) {
    use crate::commands::{counted_actions, CommandError, COUNTS};
    use std::sync::atomic::Ordering::Relaxed;
    family(
        out,
        "horizon_commands_total",
        "counter",
        "Call and conference commands (socket and REST), by command and result.",
    );
    for (command, counts) in counted_actions().zip(COUNTS.iter()) {
        for (result, counter) in CommandError::RESULTS.iter().zip(counts) {
            let n = counter.load(Relaxed);
            // Every command's `published` line is always there; other results once they happen.
            if n > 0 || *result == "published" {
                let _ = writeln!(
                    out,
                    "horizon_commands_total{{command=\"{command}\",result=\"{result}\"}} {n}"
                );
            }
        }
    }
    let (calls, conferences, accounts) = live.sizes();
    family(
        out,
        "horizon_command_tracked",
        "gauge",
        "What this node tracks for commands: live calls, live conferences, watched accounts.",
    );
    for (what, n) in [
        ("calls", calls),
        ("conferences", conferences),
        ("accounts", accounts),
    ] {
        let _ = writeln!(out, "horizon_command_tracked{{what=\"{what}\"}} {n}");
    }
    single(
        out,
        "horizon_command_untracked_total",
        "counter",
        "Calls and conferences not tracked because commands_max_calls(_per_account) was reached.",
        live.untracked.load(Relaxed),
    );
}

pub fn render_webhooks(out: &mut String, webhooks: &crate::webhooks::Webhooks) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &webhooks.metrics;
    family(
        out,
        "horizon_webhook_hooks",
        "gauge",
        "Hooks this node fires, and hooks auto-disabled.",
    );
    let _ = writeln!(
        out,
        "horizon_webhook_hooks{{state=\"enabled\"}} {}",
        webhooks.enabled_hooks()
    );
    let _ = writeln!(
        out,
        "horizon_webhook_hooks{{state=\"disabled\"}} {}",
        webhooks.disabled_hooks()
    );
    let counters: [(&str, &str, u64); 6] = [
        (
            "horizon_webhook_events_total",
            "Broker messages (or embedded publishes) the webhooks read.",
            m.events.load(Relaxed),
        ),
        (
            "horizon_webhook_events_unusable_total",
            "Messages that fire no hook type (not JSON, no account, another event).",
            m.unusable.load(Relaxed),
        ),
        (
            "horizon_webhook_attempts_total",
            "HTTP requests made to hooks.",
            m.attempts.load(Relaxed),
        ),
        (
            "horizon_webhook_retries_scheduled_total",
            "Failed attempts that left a retry in the store.",
            m.retries_scheduled.load(Relaxed),
        ),
        (
            "horizon_webhook_deferred_total",
            "Deliveries saved untried because their hook or the node was at its limit.",
            m.deferred.load(Relaxed),
        ),
        (
            "horizon_webhook_auto_disabled_total",
            "Hooks this node disabled after too many failed attempts.",
            m.auto_disabled.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        out,
        "horizon_webhook_deliveries_total",
        "counter",
        "Deliveries by final result.",
    );
    let _ = writeln!(
        out,
        "horizon_webhook_deliveries_total{{result=\"delivered\"}} {}",
        m.delivered.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "horizon_webhook_deliveries_total{{result=\"failed\"}} {}",
        m.failed.load(Relaxed)
    );
    family(
        out,
        "horizon_webhook_retries_pending",
        "gauge",
        "Deliveries waiting in the store for their next attempt (all nodes).",
    );
    let _ = writeln!(
        out,
        "horizon_webhook_retries_pending {}",
        m.pending.load(Relaxed)
    );
    histogram(
        out,
        "horizon_webhook_delivery_latency_seconds",
        "From an event's arrival to the receiver's 2xx, for deliveries made on their first attempt.",
        &m.latency.snapshot(),
    );
}

//! The live console: static files compiled into the binary (`/console`), and the one JSON
//! endpoint they read (`GET /v2/console/stats`): this node, the cluster's live nodes, sockets and
//! subscriptions per shard, and the event and delivery rates of the last ten minutes (sampled
//! every two seconds by [`sample`], whether or not anyone is watching).
//!
//! The live tail is not served here: the page opens a WebSocket to the node's own blackhole
//! endpoint with the operator's token, so it sees exactly what that token may see.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::http::{respond, Body, Envelope};
use super::State;

/// How often the rates are sampled, and how many samples are kept (ten minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES: usize = 300;

/// The console's files: path under `/console`, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("console/app.css"),
    ),
];

/// `/console`, `/console/`, `/console/app.js`, `/console/app.css`.
pub fn asset(segments: &[&str]) -> Option<Response<Body>> {
    let name = match segments {
        ["console"] | ["console", ""] => "",
        ["console", name] => name,
        _ => return None,
    };
    let (_, content_type, text) = FILES.iter().find(|(path, _, _)| *path == name)?;
    let mut response = respond(StatusCode::OK, content_type, text.as_bytes().to_vec());
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Nothing from elsewhere: no CDN, no inline script; sockets to any ws/wss endpoint (the
    // WebSocket listener is on another port, or behind a proxy).
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    Some(response)
}

/// One sample of the node's totals.
#[derive(Debug, Clone, Copy)]
struct Sample {
    unix_ms: u64,
    /// Events the node received (every shard sees every event: the largest shard count).
    events: u64,
    /// Frames queued to sockets, all shards.
    deliveries: u64,
    connections: usize,
    subscriptions: usize,
}

/// The last ten minutes of samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// `[[unix_ms, events_per_sec, deliveries_per_sec, connections, subscriptions], ...]`.
    fn rates(&self) -> Vec<serde_json::Value> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let secs = (b.unix_ms.saturating_sub(a.unix_ms)).max(1) as f64 / 1000.0;
                let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / secs).round();
                json!([
                    b.unix_ms,
                    rate(a.events, b.events),
                    rate(a.deliveries, b.deliveries),
                    b.connections,
                    b.subscriptions
                ])
            })
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Samples the shards every [`SAMPLE_EVERY`] until the API stops.
pub async fn sample(state: Arc<State>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(stats) = state.shard_stats().await else {
            continue;
        };
        state.history.push(Sample {
            unix_ms: unix_ms(),
            events: stats.iter().map(|s| s.events).max().unwrap_or(0),
            deliveries: stats.iter().map(|s| s.deliveries).sum(),
            connections: stats.iter().map(|s| s.connections).sum(),
            subscriptions: stats.iter().map(|s| s.bindings).sum(),
        });
    }
}

/// `GET /v2/console/stats`: any valid token (the figures are the node-wide totals `/metrics`
/// serves, no account's data); who the token is, so that the page can offer its account.
pub async fn stats(
    state: &State,
    env: &Envelope<'_>,
    request: &hyper::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let identity = match super::authenticate(state, env, request) {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    let shards: Vec<serde_json::Value> = state
        .shard_stats()
        .await
        .unwrap_or_default()
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "connections": s.connections,
                "subscriptions": s.bindings,
                "events": s.events,
                "deliveries": s.deliveries,
                "dropped": s.dropped,
                "read_paused": s.read_paused,
                "ring_depth": s.ring.depth,
            })
        })
        .collect();
    let nodes: Vec<serde_json::Value> = state
        .cluster
        .live_nodes()
        .into_iter()
        .map(|node| json!({"node": node, "self": node == state.node}))
        .collect();
    let webhooks = state.webhooks.as_ref().map(|w| {
        json!({
            "enabled_hooks": w.enabled_hooks(),
            "disabled_hooks": w.disabled_hooks(),
        })
    });
    let data = json!({
        "node": state.node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "ready": super::ready(state).is_ok(),
        "event_source": if state.ingest.is_embedded() { "embedded bus" } else { "AMQP" },
        "websocket_port": state.ws_port,
        "api_port": state.api_port,
        "you": {
            "account_id": identity.account_id,
            "superduper_admin": identity.superduper_admin,
        },
        "nodes": nodes,
        "shards": shards,
        "sample_every_secs": SAMPLE_EVERY.as_secs(),
        "history": state.history.rates(),
        "webhooks": webhooks,
    });
    env.success(data.to_string().as_bytes(), "")
}

/// When the API started (for `uptime_secs`).
pub fn started() -> Instant {
    Instant::now()
}

//! The control plane: the crossbar-compatible REST API (docs/kazoo.md, "REST"), metrics, health,
//! and cluster-wide socket listings, on a thread of its own with a tokio current-thread runtime.
//!
//! It reaches the shards only through their [`Registry`] (questions by message), the event
//! source through [`Ingest::publish`], and other nodes through [`cluster`]. Answers use the
//! crossbar envelope ([`http`]); `/metrics` is Prometheus text.

pub mod cluster;
mod commands;
mod console;
mod http;
mod metrics;
mod webhooks;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ALLOW, ORIGIN, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use self::cluster::Cluster;
use self::http::{respond, Body, Envelope};
use crate::auth::{Auth, Identity, Permissions};
use crate::families::{catalog, valid_account_id, Normalizer, EXCHANGES};
use crate::ingest::{Ingest, PublishError};
use crate::json::{self, TapeValue};
use crate::shard::Registry;
use crate::webhooks::{Webhooks, WebhooksConfig};

/// Largest request body accepted (`POST /v2/events`).
const MAX_BODY: usize = 1024 * 1024;

/// Where and as whom the API serves.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// This node's id in envelopes and listings (`destination`).
    pub node: String,
    /// The broker other nodes share; `None`: the cluster is this node alone.
    pub amqp_url: Option<String>,
    /// How long a cluster listing waits for every live node.
    pub cluster_timeout: Duration,
    /// Signs and checks the cluster's control messages (see [`cluster::cluster_key`]).
    pub cluster_key: Option<Vec<u8>>,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// A client must send its request headers within this long.
    pub header_timeout: Duration,
    /// Origins allowed to call the API from a browser (`*`: any).
    pub cors_allowed_origins: Vec<String>,
    /// Webhooks on this node (`None`: off).
    pub webhooks: Option<WebhooksConfig>,
    /// The WebSocket listener's port (the console's live tail connects to it).
    pub ws_port: u16,
    /// Peers whose PROXY header and `X-Forwarded-For` name the client.
    pub trusted_proxies: crate::proxy::TrustedProxies,
}

struct State {
    node: String,
    cors_allowed_origins: Vec<String>,
    max_connections: usize,
    header_timeout: Duration,
    trusted_proxies: crate::proxy::TrustedProxies,
    auth: Arc<Auth>,
    ingest: Ingest,
    cluster: Arc<Cluster>,
    draining: Arc<AtomicBool>,
    webhooks: Option<Arc<Webhooks>>,
    ws_port: u16,
    api_port: u16,
    started: std::time::Instant,
    /// The console's rate history.
    history: console::History,
    /// Call and conference commands (`None`: the source tracks no calls).
    commander: Option<Arc<crate::commands::Commander>>,
    /// Accounts watched for REST commands.
    rest_watches: commands::RestWatches,
}

/// The running API.
pub struct Api {
    local_addr: SocketAddr,
    cluster: Arc<Cluster>,
    draining: Arc<AtomicBool>,
    stop: Arc<Notify>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Api {
    /// Binds `config.listen`, opens the webhooks database (errors of both come back here) and
    /// serves on a new thread.
    pub fn start(
        config: ApiConfig,
        auth: Arc<Auth>,
        ingest: Ingest,
        registry: Registry,
    ) -> std::io::Result<Api> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let draining = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(Notify::new());
        let cluster = Cluster::new(
            config.node.clone(),
            config.amqp_url.clone(),
            config.cluster_key.clone(),
            registry,
            config.cluster_timeout,
        );
        let webhooks_config = config.webhooks.clone();
        let mut state = State {
            node: config.node,
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            trusted_proxies: config.trusted_proxies,
            cors_allowed_origins: config.cors_allowed_origins,
            commander: crate::commands::Commander::new(
                auth.clone(),
                Arc::new(ingest.clone()) as Arc<dyn crate::ingest::EventSource>,
            ),
            rest_watches: commands::RestWatches::default(),
            auth,
            ingest,
            cluster: cluster.clone(),
            draining: draining.clone(),
            webhooks: None,
            ws_port: config.ws_port,
            api_port: local_addr.port(),
            started: console::started(),
            history: console::History::default(),
        };
        let stopped = stop.clone();
        let (opened, outcome) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name("horizon-api".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = opened.send(Err(format!("cannot start its runtime: {e}")));
                        return;
                    }
                };
                if let Some(webhooks_config) = webhooks_config {
                    let auth = state.auth.clone();
                    match runtime.block_on(Webhooks::open(webhooks_config, auth)) {
                        Ok(webhooks) => state.webhooks = Some(webhooks),
                        Err(e) => {
                            let _ = opened.send(Err(format!("webhooks: {e}")));
                            return;
                        }
                    }
                }
                let _ = opened.send(Ok(()));
                runtime.block_on(serve(listener, Arc::new(state), stopped));
            })?;
        match outcome.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(std::io::Error::other(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(std::io::Error::other("the API thread ended while starting"));
            }
        }
        Ok(Api {
            local_addr,
            cluster,
            draining,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// After the auth file was reloaded: closes this node's sockets whose token or access key
    /// the file no longer holds (4001 `token revoked`); how many. Blocks (the signal thread).
    pub fn close_revoked(&self) -> usize {
        self.cluster.close_revoked()
    }

    /// From now on `readyz` answers 503 (called before the shards start draining).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Stops serving and waits for the thread.
    pub fn shutdown(&self) {
        self.stop.notify_one();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>, stop: Arc<Notify>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("api: cannot listen: {e}");
            return;
        }
    };
    tokio::spawn(state.cluster.clone().run());
    tokio::spawn(console::sample(state.clone()));
    if let Some(webhooks) = &state.webhooks {
        let cluster = state.cluster.clone();
        webhooks.set_announcer(move || cluster.announce_hooks());
        let reload = webhooks.clone();
        state.cluster.on_hooks_changed(move || {
            let webhooks = reload.clone();
            tokio::spawn(async move {
                if let Err(e) = webhooks.reload().await {
                    tracing::warn!("webhooks: cannot reload the hooks: {e}");
                }
            });
        });
        tokio::spawn(webhooks.clone().run());
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(state.max_connections));
    loop {
        tokio::select! {
            _ = stop.notified() => return,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Over `api_max_connections`: say so in one write and close.
                    let _ = stream.try_write(BUSY);
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let timeout = state.header_timeout;
                    // The PROXY header (if any) counts against the same deadline.
                    let started = tokio::time::Instant::now();
                    let read = tokio::time::timeout(timeout, preface(&stream, peer, &state));
                    let Ok(Some(client)) = read.await else {
                        return;
                    };
                    let timeout = timeout.saturating_sub(started.elapsed());
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(state, request, client).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // A client that does not finish its headers in time is cut (slow-loris).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(timeout)
                        .serve_connection(io, service)
                        .await;
                });
            }
        }
    }
}

/// The client of a REST connection from `peer`: the one a trusted proxy's PROXY header names
/// (the header is consumed), else `peer`. A header from any other peer, or a malformed one,
/// closes the connection (`None`, counted). The first bytes are peeked, so a connection without
/// a header reaches hyper untouched.
async fn preface(
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    state: &State,
) -> Option<SocketAddr> {
    use crate::proxy::{self, Preface};
    let trusted = state.trusted_proxies.contains(peer.ip());
    let mut buf = [0u8; proxy::MAX_HEADER_BYTES];
    let (len, source) = loop {
        let seen = stream.peek(&mut buf).await.ok()?;
        if seen == 0 {
            return None;
        }
        match proxy::parse(&buf[..seen]) {
            Preface::Absent => return Some(peer),
            Preface::Header { len, source } if trusted => break (len, source),
            Preface::Incomplete if seen < buf.len() => {
                // The rest of a header split across segments (rare): look again shortly.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => {
                proxy::count_rest_refusal();
                tracing::debug!(
                    "api: connection from {peer} closed: bad or untrusted PROXY header"
                );
                return None;
            }
        }
    };
    // Consume exactly the header; what follows is the request.
    let mut left = len;
    while left > 0 {
        stream.readable().await.ok()?;
        match stream.try_read(&mut buf[..left]) {
            Ok(0) => return None,
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
    Some(source.unwrap_or(peer))
}

/// The answer to a connection over `api_max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections to the API\n";

/// Every answer, with CORS as crossbar does it: a preflight `OPTIONS` is answered at once, and
/// every answer says which origin may read it, so that a browser UI on another origin (Monster
/// UI's default set-up) can call the API.
async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
    connection: SocketAddr,
) -> Response<Body> {
    let origin = request.headers().get(ORIGIN).cloned();
    // The client: from a trusted proxy, the right-most untrusted X-Forwarded-For hop.
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let client = state
        .trusted_proxies
        .forwarded_client(connection.ip(), forwarded);
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let mut response = if request.method() == Method::OPTIONS {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        let asked = request
            .headers()
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|v| v.len() <= 1024)
            .cloned();
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            asked.unwrap_or(HeaderValue::from_static(
                "Content-Type, X-Auth-Token, Authorization, X-Request-ID",
            )),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
        response
    } else {
        route(state.clone(), request).await
    };
    let headers = response.headers_mut();
    if state.cors_allowed_origins.iter().any(|o| o == "*") {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else {
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        let allowed = origin.filter(|o| {
            o.to_str()
                .is_ok_and(|o| state.cors_allowed_origins.iter().any(|a| a == o))
        });
        if let Some(origin) = allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Content-Type, X-Request-ID"),
    );
    tracing::debug!(
        target: "horizon::api::access",
        "{method} {} {} from {client}",
        shorten(&path),
        response.status().as_u16()
    );
    response
}

/// The token of a request: `X-Auth-Token`, else `Authorization: Bearer`.
fn request_token(request: &Request<Incoming>) -> Option<String> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(token) = header("x-auth-token") {
        return Some(token.trim().to_string());
    }
    let (scheme, token) = header("authorization")?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

async fn route(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::ids::random_hex(16), str::to_string);
    let env = Envelope {
        node: &state.node,
        request_id,
    };
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let allowed: &[Method] = match segments.as_slice() {
        ["healthz"] | ["readyz"] | ["metrics"] | ["v2", "websockets"] => &[Method::GET],
        ["v2", "accounts", _, "websockets"] | ["v2", "accounts", _, "websockets", _] => {
            &[Method::GET, Method::DELETE]
        }
        ["v2", "events"] => &[Method::POST],
        ["console"] | ["console", _] | ["v2", "console", "stats"] => &[Method::GET],
        _ if commands::methods(&segments).is_some() => commands::methods(&segments).unwrap_or(&[]),
        _ if webhooks::methods(&segments).is_some() => webhooks::methods(&segments).unwrap_or(&[]),
        _ => {
            return env.error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {}", shorten(&path)),
            )
        }
    };
    if !allowed.contains(&method) {
        let mut response = env.error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {method} not allowed here"),
        );
        let list: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        if let Ok(value) = HeaderValue::from_str(&list.join(", ")) {
            response.headers_mut().insert(ALLOW, value);
        }
        return response;
    }
    match segments.as_slice() {
        ["healthz"] => env.success(b"{\"healthy\":true}", ""),
        ["readyz"] => readyz(&state, &env),
        ["metrics"] => metrics_text(&state).await,
        ["v2", "websockets"] => env.success(&catalog_json(), ""),
        ["v2", "accounts", account, "websockets"] => {
            let account = account.to_string();
            listing(&state, &env, &request, &account, None).await
        }
        ["v2", "accounts", account, "websockets", socket] => {
            let (account, socket) = (account.to_string(), socket.to_string());
            listing(&state, &env, &request, &account, Some(&socket)).await
        }
        ["v2", "events"] => publish(&state, &env, request).await,
        ["v2", "console", "stats"] => console::stats(&state, &env, &request).await,
        _ if commands::methods(&segments).is_some() => {
            commands::route(&state, &env, request, &segments).await
        }
        ["console"] | ["console", _] => console::asset(&segments).unwrap_or_else(|| {
            env.error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: {}", shorten(&path)),
            )
        }),
        _ => webhooks::route(&state, &env, request, &segments).await,
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

fn ready(state: &State) -> Result<(), &'static str> {
    if state.draining.load(Ordering::SeqCst) {
        Err("shutting down")
    } else if !state.ingest.status().ready() {
        Err("event source not ready (connecting to the broker)")
    } else {
        Ok(())
    }
}

fn readyz(state: &State, env: &Envelope<'_>) -> Response<Body> {
    match ready(state) {
        Ok(()) => env.success(b"{\"ready\":true}", ""),
        Err(why) => env.error(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

impl State {
    /// Every shard's counters, asked through the registry (`None`: the registry did not answer).
    async fn shard_stats(&self) -> Option<Vec<crate::shard::ShardStats>> {
        self.cluster
            .with_registry(|registry| registry.stats(Duration::from_secs(1)).0)
            .await
    }
}

async fn metrics_text(state: &State) -> Response<Body> {
    let stats = state.shard_stats().await.unwrap_or_default();
    let mut text = metrics::render(
        &stats,
        state.ingest.status(),
        &state.auth,
        state.cluster.live_nodes().len(),
        ready(state).is_ok(),
    );
    metrics::render_commands(&mut text, state.ingest.live_calls());
    metrics::render_history(&mut text, &state.ingest);
    if let Some(webhooks) = &state.webhooks {
        metrics::render_webhooks(&mut text, webhooks);
    }
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    )
}

/// `{"call":["call.CHANNEL_CREATE.{CALL_ID}",..],"object":[..],..}`, as the seed documents show
/// it: exactly the binding shapes subscribe accepts.
fn catalog_json() -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'{');
    for (i, entry) in catalog().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(&mut out, entry.family);
        out.extend_from_slice(b":[");
        for (j, binding) in entry.bindings.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::write_str(&mut out, binding);
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// The caller's identity, or the 401 to send.
fn authenticate(
    state: &State,
    env: &Envelope<'_>,
    request: &Request<Incoming>,
) -> Result<Identity, Box<Response<Body>>> {
    let Some(token) = request_token(request) else {
        return Err(Box::new(
            env.error(StatusCode::UNAUTHORIZED, "authentication token required"),
        ));
    };
    state
        .auth
        .authenticate(&token, SystemTime::now())
        .map_err(|e| Box::new(env.error(StatusCode::UNAUTHORIZED, &e.to_string())))
}

async fn listing(
    state: &State,
    env: &Envelope<'_>,
    request: &Request<Incoming>,
    account: &str,
    socket: Option<&str>,
) -> Response<Body> {
    let identity = match authenticate(state, env, request) {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    if !valid_account_id(account) {
        return env.error(StatusCode::BAD_REQUEST, "invalid account id");
    }
    if !state.auth.may_see(&identity, account) {
        return env.error(StatusCode::FORBIDDEN, "unauthorized account id");
    }
    // DELETE closes what GET would list (4003), and answers with what it closed.
    let close = request.method() == Method::DELETE;
    if close && !identity.admin {
        return env.error(
            StatusCode::FORBIDDEN,
            "closing websockets needs a token with the admin right",
        );
    }
    let listing = state.cluster.list(account, socket, close).await;
    if close {
        tracing::info!(
            "api: closed {} websocket(s) of account {account}{} (closed by administrator)",
            listing.sockets.len(),
            socket.map(|s| format!(", socket {s}")).unwrap_or_default()
        );
    }
    let mut extra = String::new();
    if !listing.missing.is_empty() {
        let mut missing = Vec::new();
        json::write_str_array(&mut missing, listing.missing.iter().map(String::as_str));
        extra = format!(
            ",\"partial\":true,\"missing_nodes\":{}",
            String::from_utf8_lossy(&missing)
        );
    }
    match socket {
        Some(_) => match listing.sockets.first() {
            Some(found) => env.success(found, &extra),
            None => env.error(
                StatusCode::NOT_FOUND,
                "websocket not found for this account",
            ),
        },
        None => {
            let mut data =
                Vec::with_capacity(listing.sockets.iter().map(Vec::len).sum::<usize>() + 2);
            data.push(b'[');
            for (i, s) in listing.sockets.iter().enumerate() {
                if i > 0 {
                    data.push(b',');
                }
                data.extend_from_slice(s);
            }
            data.push(b']');
            env.success(&data, &extra)
        }
    }
}

async fn publish(state: &State, env: &Envelope<'_>, request: Request<Incoming>) -> Response<Body> {
    let identity = match authenticate(state, env, &request) {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    if !identity.publish {
        return env.error(StatusCode::FORBIDDEN, "this token may not publish");
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body: Bytes = match tokio::time::timeout(state.header_timeout, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return env.error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than 1 MiB",
            )
        }
        Err(_) => {
            return env.error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
            )
        }
    };
    let mut bytes = body.to_vec();
    let Ok(tape) = simd_json::to_tape(&mut bytes) else {
        return env.error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let Some(root) = TapeValue::root(&tape.0).filter(|r| r.is_object()) else {
        return env.error(StatusCode::BAD_REQUEST, "body must be a JSON object");
    };
    let text = |name: &str| {
        root.get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 255)
    };
    let (Some(exchange), Some(routing_key)) = (text("exchange"), text("routing_key")) else {
        return env.error(
            StatusCode::BAD_REQUEST,
            "exchange and routing_key must be non-empty strings of at most 255 bytes",
        );
    };
    let Some(payload) = root.get("payload").filter(|p| p.is_object()) else {
        return env.error(StatusCode::BAD_REQUEST, "payload must be a JSON object");
    };
    let mut message = Vec::with_capacity(body.len());
    json::write_value(&mut message, payload, &mut |o, k| json::write_str(o, k));
    if let Err(why) = may_publish(&state.auth, &identity, exchange, routing_key, &message) {
        return why.answer(env);
    }
    let embedded = *state.ingest.source() == crate::ingest::Source::Embedded;
    let for_hooks = (embedded && state.webhooks.is_some()).then(|| message.clone());
    match state.ingest.publish(exchange, routing_key, message).await {
        Ok(()) => {
            // The embedded bus has no broker queue: the webhooks get the event in process.
            if let (Some(webhooks), Some(message)) = (&state.webhooks, for_hooks) {
                let webhooks = webhooks.clone();
                let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
                tokio::spawn(async move {
                    let received = std::time::Instant::now();
                    if let Err(e) = webhooks
                        .handle(&exchange, &routing_key, &message, received, false)
                        .await
                    {
                        tracing::warn!(
                            "webhooks: cannot save deliveries of an embedded event: {}",
                            e.0
                        );
                    }
                });
            }
            env.success(b"{\"published\":true}", "")
        }
        Err(PublishError::NotRoutable(why)) => env.error(
            StatusCode::BAD_REQUEST,
            &format!("event not routable: {why}"),
        ),
        Err(e) => env.error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// Why a publish was refused before it reached the event source.
enum Refused {
    /// Not an event family's exchange: 403.
    Exchange(String),
    /// The event does not route (normalized as the ingest side would): 400.
    NotRoutable(crate::families::Skip),
    /// The event belongs to an account the token may not see: 403.
    Account,
}

impl Refused {
    fn answer(self, env: &Envelope<'_>) -> Response<Body> {
        match self {
            Refused::Exchange(exchange) => env.error(
                StatusCode::FORBIDDEN,
                &format!(
                    "exchange {} is not an event family's exchange (allowed: {})",
                    shorten(&exchange),
                    EXCHANGES
                        .iter()
                        .map(|e| e.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Refused::NotRoutable(why) => env.error(
                StatusCode::BAD_REQUEST,
                &format!("event not routable: {why}"),
            ),
            Refused::Account => env.error(
                StatusCode::FORBIDDEN,
                "the event belongs to an account this token may not publish for",
            ),
        }
    }
}

/// Whether `identity` may publish this event: only onto an event family's exchange, and only an
/// event whose account (read from the event itself, exactly as the ingest side will read it) the
/// token may see. A superduper admin may publish for any account. VoIPBin events: a customer's
/// events need that customer (or an ancestor account); an agent's events need that agent itself
/// or a VoIPBin super admin.
fn may_publish(
    auth: &Auth,
    identity: &Identity,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
) -> Result<(), Refused> {
    if !EXCHANGES.iter().any(|e| e.name == exchange) {
        return Err(Refused::Exchange(exchange.to_string()));
    }
    let mut body = payload.to_vec();
    let event = Normalizer::default()
        .normalize(exchange, routing_key, &mut body)
        .map_err(Refused::NotRoutable)?;
    if identity.superduper_admin {
        return Ok(());
    }
    let allowed = if event.key.starts_with("agent_id:") {
        identity.permissions.has(Permissions::SUPER_ADMIN)
            || identity.agent_id.as_deref() == Some(event.account.as_str())
    } else if event.key.starts_with("customer_id:") {
        identity.permissions.has(Permissions::SUPER_ADMIN)
            || identity.customer_id.as_deref() == Some(event.account.as_str())
            || auth.may_see(identity, &event.account)
    } else {
        auth.may_see(identity, &event.account)
    };
    if allowed {
        Ok(())
    } else {
        Err(Refused::Account)
    }
}

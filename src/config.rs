//! `serve` configuration: flags override `HORIZON_<KEY>` environment variables, which override the
//! TOML file given with `--config FILE` (or `HORIZON_CONFIG`), which overrides the defaults
//! (README, "Configuration"). Every key has all three spellings: `ws_listen` in the file,
//! `HORIZON_WS_LISTEN` in the environment, `--ws-listen` on the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::log::LogFormat;

/// Everything `serve` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// WebSocket listener; every shard binds it with `SO_REUSEPORT`.
    pub ws_listen: SocketAddr,
    /// The wss (TLS WebSocket) listener, beside the plain one; `None`: no wss.
    pub wss_listen: Option<SocketAddr>,
    /// wss: certificate chain and private key (PEM), re-read on SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// REST API listener (served by the control plane, a later issue).
    pub api_listen: SocketAddr,
    /// Thread-per-core shards (default: online CPUs).
    pub shards: usize,
    /// The shards' socket I/O: native io_uring, epoll, or `auto` (io_uring where the kernel
    /// allows it).
    pub io_backend: IoBackend,
    /// Largest inbound message; larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Outbound bytes that may wait for one socket before the slow-consumer policy applies.
    pub outbound_queue_bytes: usize,
    pub slow_consumer: SlowConsumerPolicy,
    /// Server ping interval.
    pub ping_interval: Duration,
    /// A socket that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long sockets get to finish the close handshake and drain.
    pub shutdown_grace: Duration,
    /// The broker; `None` runs the embedded event bus.
    pub amqp_url: Option<String>,
    /// amqps: CA file, client certificate and key (PEM).
    pub amqp_tls_ca_file: Option<PathBuf>,
    pub amqp_tls_cert_file: Option<PathBuf>,
    pub amqp_tls_key_file: Option<PathBuf>,
    /// This node's id: in its queue name (`horizon.<node>.<random>`), in REST envelopes and as
    /// the `destination` of its sockets. Default: the host name and a random suffix, so that
    /// several nodes on one machine stay distinct.
    pub node: Option<String>,
    /// Unacknowledged deliveries the broker may push ahead.
    pub amqp_prefetch: u16,
    /// The node queue outlives a vanished node by this long (`x-expires`).
    pub amqp_queue_expires: Duration,
    /// The auth file (accounts and static tokens); re-read on SIGHUP.
    pub auth_file: Option<PathBuf>,
    pub jwt_hs256_secret: Option<String>,
    pub jwt_hs256_secret_file: Option<PathBuf>,
    pub jwt_rs256_public_key_file: Option<PathBuf>,
    /// Blackhole commands per socket: burst, then per second.
    pub rate_limit_burst: u32,
    pub rate_limit_per_sec: f64,
    /// Client bindings one socket may hold.
    pub max_bindings_per_socket: usize,
    /// WebSocket connections this node holds at once (0: no limit); past it an upgrade is
    /// answered `503`.
    pub max_connections: usize,
    /// WebSocket connections one client address may hold at once (0: no limit; Kazoo's
    /// `max_connections_per_ip`); past it an upgrade is answered `429`.
    pub max_connections_per_ip: usize,
    /// WebSocket connections one account may hold on this node (0: no limit; Kazoo's
    /// `bh_limit`); past it `429` at the upgrade, or the error reply to the command that first
    /// names the account.
    pub max_connections_per_account: usize,
    /// New WebSocket connections this node takes per second (0: no limit); past it an upgrade
    /// is answered `503` with `Retry-After`.
    pub max_connects_per_sec: usize,
    /// On shutdown, the sockets' close frames are spread over this long (0: all at once).
    pub drain_spread: Duration,
    /// The cluster's event log (docs/resume.md): `None` is `history = "off"` (the per-node queue,
    /// no positions); with a broker, a RabbitMQ stream every node reads; on the embedded bus,
    /// the process's own log.
    pub history: bool,
    /// The log's settings (`history_stream`, `history_max_age_secs`, `history_memory_mb`,
    /// `resume_max_events`), used when `history` is on.
    pub history_config: crate::ingest::HistoryConfig,
    /// A socket that subscribed with `resume_from` is told the log's head this often while the
    /// log moves.
    pub position_interval: Duration,
    /// Resumes this node admits per second; more wait their turn (never refused).
    pub resume_admissions_per_sec: u32,
    /// Commands: a tracked call or conference with no event for this long is forgotten.
    pub call_idle_expiry: Duration,
    /// Commands: calls and conferences tracked on this node at most.
    pub commands_max_calls: usize,
    /// Commands: calls (and as many conferences) tracked per account at most.
    pub commands_max_calls_per_account: usize,
    /// Peers (addresses, CIDR blocks) that may begin a connection with a PROXY protocol header
    /// and whose `X-Forwarded-For` the REST API believes; their clients' addresses count for
    /// `max_connections_per_ip`, listings and logs (default: none).
    pub trusted_proxies: crate::proxy::TrustedProxies,
    /// A socket whose client stops reading is no longer read either (its queued replies count
    /// against `outbound_queue_bytes`); still blocked after this long, it is closed with 1008.
    pub blocked_close: Duration,
    /// Shared by the nodes of one cluster: signs and checks their control messages. Default:
    /// derived from `jwt_hs256_secret` (every node of a cluster verifies the same tokens).
    pub cluster_secret: Option<String>,
    /// REST connections served at once; more are answered `503` and closed.
    pub api_max_connections: usize,
    /// A REST client must send its request headers within this long.
    pub api_header_timeout: Duration,
    /// Origins a browser may call the REST API from (CORS): `*`, or a list.
    pub cors_allowed_origins: Vec<String>,
    /// Webhooks run on this node.
    pub webhooks_enabled: bool,
    /// Where hooks live: a SQLite file (default `horizon-webhooks.db` in the working directory)
    /// or `postgres://...` (shared by the nodes of a cluster).
    pub webhooks_db: String,
    /// Hooks may target loopback, private and link-local addresses.
    pub webhooks_allow_private_targets: bool,
    pub webhooks_connect_timeout: Duration,
    pub webhooks_request_timeout: Duration,
    /// The first retry's delay (doubling after it).
    pub webhooks_retry_first: Duration,
    pub webhooks_retry_max: Duration,
    /// Requests one hook may have in flight at once.
    pub webhooks_concurrency_per_hook: usize,
    /// Requests this node may have in flight at once.
    pub webhooks_max_in_flight: usize,
    /// A hook is disabled after this many failed attempts within the expiry window.
    pub webhooks_attempt_failure_count: u32,
    pub webhooks_attempt_failure_expiry: Duration,
    /// How long the attempts log keeps an attempt.
    pub webhooks_attempts_retention: Duration,
    /// The shared durable queue the nodes' webhook consumers compete on.
    pub webhooks_queue: String,
    /// Hooks one account may have (every event of the account fans out to each of them).
    pub webhooks_max_per_account: usize,
    /// `cluster_id` in every webhook payload.
    pub cluster_id: String,
    /// The log filter (`None`: `RUST_LOG`, else `info`).
    pub log_level: Option<String>,
    pub log_format: LogFormat,
}

/// The first line of a (clap) error message, without its `error: ` prefix.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The longest any `*_secs` value may be (30 days): longer is a typo, and would overflow the
/// clocks it is added to.
pub const MAX_SECS: u64 = 30 * 24 * 3600;

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 5555)),
            wss_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            shards: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            io_backend: IoBackend::Auto,
            max_message_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Drop,
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
            amqp_url: None,
            amqp_tls_ca_file: None,
            amqp_tls_cert_file: None,
            amqp_tls_key_file: None,
            node: None,
            amqp_prefetch: 1000,
            amqp_queue_expires: Duration::from_secs(60),
            auth_file: None,
            jwt_hs256_secret: None,
            jwt_hs256_secret_file: None,
            jwt_rs256_public_key_file: None,
            rate_limit_burst: 100,
            rate_limit_per_sec: 10.0,
            max_bindings_per_socket: 1000,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_account: 0,
            max_connects_per_sec: 0,
            drain_spread: Duration::from_secs(10),
            history: false,
            history_config: crate::ingest::HistoryConfig::default(),
            position_interval: Duration::from_secs(30),
            resume_admissions_per_sec: 2000,
            call_idle_expiry: Duration::from_secs(7200),
            commands_max_calls: 200_000,
            commands_max_calls_per_account: 10_000,
            trusted_proxies: crate::proxy::TrustedProxies::default(),
            blocked_close: Duration::from_secs(30),
            cluster_secret: None,
            api_max_connections: 1024,
            api_header_timeout: Duration::from_secs(10),
            cors_allowed_origins: vec!["*".to_string()],
            webhooks_enabled: true,
            webhooks_db: "horizon-webhooks.db".to_string(),
            webhooks_allow_private_targets: false,
            webhooks_connect_timeout: Duration::from_secs(2),
            webhooks_request_timeout: Duration::from_secs(5),
            webhooks_retry_first: Duration::from_secs(2),
            webhooks_retry_max: Duration::from_secs(60),
            webhooks_concurrency_per_hook: 8,
            webhooks_max_in_flight: 4096,
            webhooks_attempt_failure_count: 6,
            webhooks_attempt_failure_expiry: Duration::from_secs(60),
            webhooks_attempts_retention: Duration::from_secs(7 * 24 * 3600),
            webhooks_queue: "horizon.webhooks".to_string(),
            webhooks_max_per_account: 1000,
            cluster_id: "horizon".to_string(),
            log_level: None,
            log_format: LogFormat::Text,
        }
    }
}

/// A configuration value that could not be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown option `{0}`")]
    Unknown(String),
    /// The command line could not be parsed: clap's error kind, and its message.
    #[error("{1}")]
    Cli(String, String),
    #[error("invalid value `{value}` for {key}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
}

/// A configuration key: its file spelling and what it does (shown by `--help`).
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub help: &'static str,
}

/// Every key, as written in the file, with its help line.
pub const OPTIONS: &[Key] = &[
    Key {
        name: "ws_listen",
        help: "WebSocket listener; every shard binds it with SO_REUSEPORT",
    },
    Key {
        name: "wss_listen",
        help: "wss (TLS WebSocket) listener, beside the plain one (Kazoo's ssl_port is 5556); empty: none",
    },
    Key {
        name: "tls_cert_file",
        help: "wss: certificate chain (PEM, end-entity first); re-read on SIGHUP",
    },
    Key {
        name: "tls_key_file",
        help: "wss: the certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1); re-read on SIGHUP",
    },
    Key {
        name: "api_listen",
        help: "REST API listener (crossbar API, /metrics, /healthz, /readyz, /console)",
    },
    Key {
        name: "shards",
        help: "thread-per-core shards",
    },
    Key {
        name: "io_backend",
        help: "socket I/O of the shards: `epoll`, `io_uring` (native ring; refuses to start without it), or `auto` (io_uring where the kernel allows it, else epoll)",
    },
    Key {
        name: "max_message_bytes",
        help: "largest inbound WebSocket message; larger closes the socket with 1009",
    },
    Key {
        name: "outbound_queue_bytes",
        help: "bytes that may wait for one socket before the slow-consumer policy applies",
    },
    Key {
        name: "slow_consumer",
        help: "`drop` (skip events for that socket, then send the lag notice) or `close` (close 1008)",
    },
    Key {
        name: "ping_interval_secs",
        help: "server ping interval",
    },
    Key {
        name: "idle_timeout_secs",
        help: "a socket that sends nothing (not even a pong) for this long is closed 1001",
    },
    Key {
        name: "shutdown_grace_secs",
        help: "on shutdown, how long sockets get to answer the 1001 close and drain",
    },
    Key {
        name: "amqp_url",
        help: "the broker, amqp:// or amqps://user:pass@host:port/vhost, or a cluster's nodes \
               (comma-separated; a TOML list in the file), tried in order; empty runs the \
               embedded bus",
    },
    Key {
        name: "amqp_tls_ca_file",
        help: "amqps: CA certificates (PEM) the broker's chain may end in, besides the public roots",
    },
    Key {
        name: "amqp_tls_cert_file",
        help: "amqps: client certificate chain (PEM), for brokers that ask for one",
    },
    Key {
        name: "amqp_tls_key_file",
        help: "amqps: the client certificate's private key (PEM)",
    },
    Key {
        name: "node",
        help: "this node's id ([A-Za-z0-9_-]{1,64}; must differ per node)",
    },
    Key {
        name: "amqp_prefetch",
        help: "unacknowledged deliveries the broker may push ahead",
    },
    Key {
        name: "amqp_queue_expires_secs",
        help: "the node queue outlives a vanished node by this long (x-expires)",
    },
    Key {
        name: "auth_file",
        help: "accounts and static tokens (TOML); re-read on SIGHUP",
    },
    Key {
        name: "jwt_hs256_secret",
        help: "HS256 secret for JWTs",
    },
    Key {
        name: "jwt_hs256_secret_file",
        help: "file holding the HS256 secret (trailing newline ignored)",
    },
    Key {
        name: "jwt_rs256_public_key_file",
        help: "RS256 public key, PEM (SPKI or PKCS#1)",
    },
    Key {
        name: "rate_limit_burst",
        help: "blackhole commands per socket: burst",
    },
    Key {
        name: "rate_limit_per_sec",
        help: "blackhole commands per socket: refill per second",
    },
    Key {
        name: "max_bindings_per_socket",
        help: "client bindings one socket may hold",
    },
    Key {
        name: "max_connections",
        help: "WebSocket connections this node holds (0: no limit); past it 503",
    },
    Key {
        name: "max_connections_per_ip",
        help: "WebSocket connections one client address may hold (0: no limit); past it 429",
    },
    Key {
        name: "max_connections_per_account",
        help: "WebSocket connections one account may hold on this node (0: no limit); past it \
               429 `account connections limit`",
    },
    Key {
        name: "max_connects_per_sec",
        help: "new WebSocket connections per second this node takes (0: no limit); past it 503 \
               with Retry-After",
    },
    Key {
        name: "drain_spread_secs",
        help: "on shutdown, the sockets' 1001 closes are spread over this long (0: at once), \
               then shutdown_grace_secs for the last answers",
    },
    Key {
        name: "history",
        help: "`off` (the per-node queue, no positions) or `stream` (every event has a position \
               and a subscribe may resume after a reconnect, on any node: with a broker the \
               RabbitMQ stream history_stream, on the embedded bus the process's own log)",
    },
    Key {
        name: "history_stream",
        help: "history = stream: the RabbitMQ stream every node reads (declared if missing)",
    },
    Key {
        name: "history_max_age_secs",
        help: "history = stream: the stream's retention (set when Horizon declares it)",
    },
    Key {
        name: "history_memory_mb",
        help: "history = stream: the recent history each node keeps in memory for resumes",
    },
    Key {
        name: "position_interval_secs",
        help: "a socket that subscribed with resume_from is told the log's head this often while \
               the log moves (a position frame)",
    },
    Key {
        name: "resume_admissions_per_sec",
        help: "resumes this node admits per second (a dead node's clients arriving at once take \
               turns); more wait, they are not refused",
    },
    Key {
        name: "resume_max_events",
        help: "the most events one resume replays; past it `recovered: false`",
    },
    Key {
        name: "call_idle_expiry_secs",
        help: "commands: a call or conference with no event for this long is forgotten (a lost \
               CHANNEL_DESTROY costs memory for this long only)",
    },
    Key {
        name: "commands_max_calls",
        help: "commands: calls and conferences this node tracks at most; past it new ones are \
               not tracked (and cannot be commanded)",
    },
    Key {
        name: "commands_max_calls_per_account",
        help: "commands: calls (and as many conferences) tracked per account at most",
    },
    Key {
        name: "trusted_proxies",
        help: "load balancers (addresses, CIDR blocks; comma-separated) that may send a PROXY \
               v1/v2 header, and whose X-Forwarded-For the REST API believes; empty: none",
    },
    Key {
        name: "blocked_close_secs",
        help: "a socket whose client does not read is closed 1008 after this long",
    },
    Key {
        name: "cluster_secret",
        help: "signs the cluster's control messages (default: derived from jwt_hs256_secret)",
    },
    Key {
        name: "api_max_connections",
        help: "REST connections served at once; more get 503",
    },
    Key {
        name: "api_header_timeout_secs",
        help: "a REST client must send its headers and body within this long",
    },
    Key {
        name: "cors_allowed_origins",
        help: "origins a browser may call the REST API from: `*` or a comma-separated list",
    },
    Key {
        name: "webhooks_enabled",
        help: "run webhooks on this node",
    },
    Key {
        name: "webhooks_db",
        help: "hooks store: a SQLite file (path or sqlite:PATH) or postgres://...",
    },
    Key {
        name: "webhooks_allow_private_targets",
        help: "allow hook URIs on loopback, private and link-local addresses",
    },
    Key {
        name: "webhooks_connect_timeout_secs",
        help: "webhook connect timeout, per attempt",
    },
    Key {
        name: "webhooks_request_timeout_secs",
        help: "webhook request timeout, per attempt",
    },
    Key {
        name: "webhooks_retry_first_ms",
        help: "first webhook retry delay (doubling, +-25 % jitter)",
    },
    Key {
        name: "webhooks_retry_max_secs",
        help: "longest webhook retry delay",
    },
    Key {
        name: "webhooks_concurrency_per_hook",
        help: "requests one hook may have in flight",
    },
    Key {
        name: "webhooks_max_in_flight",
        help: "webhook requests this node may have in flight",
    },
    Key {
        name: "webhooks_attempt_failure_count",
        help: "failed attempts within the window that disable a hook",
    },
    Key {
        name: "webhooks_attempt_failure_expiry_ms",
        help: "the failure-count window",
    },
    Key {
        name: "webhooks_attempts_retention_secs",
        help: "how long the attempts log keeps an attempt",
    },
    Key {
        name: "webhooks_queue",
        help: "the shared durable queue the nodes' webhook consumers compete on",
    },
    Key {
        name: "webhooks_max_per_account",
        help: "hooks one account may have",
    },
    Key {
        name: "cluster_id",
        help: "cluster_id in every webhook payload",
    },
    Key {
        name: "log_level",
        help: "log filter: a level (error, warn, info, debug, trace) for Horizon's own lines, or RUST_LOG-style directives; unset: RUST_LOG, else info",
    },
    Key {
        name: "log_format",
        help: "`text` (one line per record) or `json` (one JSON object per line)",
    },
];

/// Every key name, in `OPTIONS` order.
pub fn keys() -> impl Iterator<Item = &'static str> {
    OPTIONS.iter().map(|k| k.name)
}

/// The command-line arguments every command that reads the configuration accepts: `--config
/// FILE` and one `--<key>` per entry of [`OPTIONS`] (underscores accepted too). Each help line
/// names the key's default and its environment variable.
pub fn config_args() -> Vec<clap::Arg> {
    let defaults = ServeConfig::default();
    let mut args = vec![clap::Arg::new("config")
        .long("config")
        .value_name("FILE")
        .help("a flat TOML file with any of the keys below [env: HORIZON_CONFIG]")];
    for key in OPTIONS {
        let default = match key.name {
            "shards" => format!("online CPUs, {} here", defaults.shards),
            name => default_text(name, &defaults),
        };
        let flag = key.name.replace('_', "-");
        let mut arg = clap::Arg::new(key.name)
            .long(flag.clone())
            .value_name("VALUE")
            .help(format!(
                "{} [default: {default}] [env: HORIZON_{}]",
                key.help,
                key.name.to_ascii_uppercase()
            ));
        if flag != key.name {
            arg = arg.alias(key.name);
        }
        args.push(arg);
    }
    args
}

/// What key `name` is when nothing sets it, in words where the value is not a constant.
fn default_text(name: &str, defaults: &ServeConfig) -> String {
    match name {
        "shards" => "online CPUs".to_string(),
        "node" => "<host name>-<random>".to_string(),
        "amqp_url" => "none: the embedded bus".to_string(),
        "trusted_proxies" => "none".to_string(),
        "cluster_secret" => "derived from jwt_hs256_secret".to_string(),
        "log_level" => "RUST_LOG, else info".to_string(),
        name => defaults
            .value_text(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "none".to_string()),
    }
}

/// `docs/configuration.md`: every key of [`OPTIONS`] with its flag, environment variable,
/// default and meaning. Generated, never edited: `tests/configuration_doc.rs` fails when the file
/// drifts from this (and rewrites it with `HORIZON_BLESS=1`).
pub fn reference_markdown() -> String {
    let defaults = ServeConfig::default();
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from the key table in src/config.rs (`horizon::config::reference_markdown`);\n\
         do not edit: `HORIZON_BLESS=1 cargo test --test configuration_doc` rewrites it. -->\n\n\
         Every key can be given three ways, and the first that says something wins: a flag\n\
         (`--ws-listen 0.0.0.0:5555`), an environment variable (`HORIZON_WS_LISTEN`), or a line of\n\
         the flat TOML file named by `--config FILE` (or `HORIZON_CONFIG`). A list may be\n\
         comma-separated anywhere, or a TOML list in the file. `horizon check-config` prints the\n\
         effective configuration and where each value came from; `horizon serve --help` prints\n\
         this table's meanings too. A bad value is refused at start with exit code 2, and the\n\
         message names the key.\n\n\
         | key | flag | variable | default | meaning |\n\
         | --- | --- | --- | --- | --- |\n",
    );
    for key in OPTIONS {
        let cell = |text: &str| text.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | `--{}` | `HORIZON_{}` | {} | {} |\n",
            key.name,
            key.name.replace('_', "-"),
            key.name.to_ascii_uppercase(),
            cell(&default_text(key.name, &defaults)),
            cell(key.help)
        ));
    }
    out
}

/// The `(key, value)` pairs given on the command line (key in file spelling; `config` too).
pub fn flag_pairs(matches: &clap::ArgMatches) -> Vec<(String, String)> {
    std::iter::once("config")
        .chain(keys())
        .filter_map(|key| {
            let value = matches.try_get_one::<String>(key).ok().flatten()?;
            Some((key.to_string(), value.clone()))
        })
        .collect()
}

/// The keys that are not defaults, and where each came from.
pub type Origins = Vec<(&'static str, Origin)>;

/// Where a key's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Default,
    File,
    Environment,
    Flag,
}

/// Reads a flat TOML config file into `(key, value)` pairs.
fn read_file(path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let fail = |message: String| ConfigError::File {
        path: path.to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse_file_text(&text).map_err(fail)
}

/// The `(key, value)` pairs of a config file's text; the error names the key at fault.
pub fn parse_file_text(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut pairs = Vec::new();
    for (key, value) in table {
        if !OPTIONS.iter().any(|k| k.name == key) {
            return Err(format!("unknown key `{key}`"));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list (`amqp_url = ["amqp://a", "amqp://b"]`) reads as its comma-separated form.
            toml::Value::Array(items) => {
                let mut texts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) if !s.contains(',') => texts.push(s),
                        _ => return Err(format!("`{key}`: a list holds strings without commas")),
                    }
                }
                texts.join(",")
            }
            _ => {
                return Err(format!(
                    "`{key}` must be a string, a number or a list of strings"
                ))
            }
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}

impl ServeConfig {
    /// Applies `pairs` (file spelling) over this configuration, as `load` does with each source.
    pub fn apply(&mut self, pairs: &[(String, String)]) -> Result<(), ConfigError> {
        for (key, value) in pairs {
            self.set(key, value)?;
        }
        Ok(())
    }
}

impl ServeConfig {
    /// The node id: `node` if configured, else `<host name>-<6 random hex>`.
    pub fn node_id(&self) -> String {
        self.node
            .clone()
            .unwrap_or_else(|| format!("{}-{}", crate::ids::node_name(), crate::ids::random_hex(3)))
    }

    /// Builds the configuration from command-line `args` (after `serve`) and an environment
    /// lookup (`std::env::var` in the binary, a map in tests).
    pub fn load(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let matches = clap::Command::new("serve")
            .no_binary_name(true)
            .disable_help_flag(true)
            .args_override_self(true)
            .args(config_args())
            .try_get_matches_from(args)
            .map_err(|e| ConfigError::Cli(e.kind().to_string(), first_line(&e.to_string())))?;
        Ok(ServeConfig::from_sources(&flag_pairs(&matches), env)?.0)
    }

    /// Builds the configuration from flags already parsed (`(key, value)`, file spelling) and an
    /// environment lookup; also says where each key that is not a default came from.
    pub fn from_sources(
        flags: &[(String, String)],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(ServeConfig, Origins), ConfigError> {
        let mut config = ServeConfig::default();
        let mut origins: Vec<(&'static str, Origin)> = Vec::new();
        let mut note = |key: &str, origin: Origin| {
            if let Some(k) = OPTIONS.iter().find(|k| k.name == key) {
                origins.retain(|(name, _)| *name != k.name);
                origins.push((k.name, origin));
            }
        };
        let file = flags
            .iter()
            .rev()
            .find(|(k, _)| k == "config")
            .map(|(_, v)| v.clone())
            .or_else(|| env("HORIZON_CONFIG"));
        if let Some(path) = file {
            for (key, value) in read_file(&path)? {
                config.set(&key, &value)?;
                note(&key, Origin::File);
            }
        }
        for key in keys() {
            if let Some(value) = env(&format!("HORIZON_{}", key.to_ascii_uppercase())) {
                config.set(key, &value)?;
                note(key, Origin::Environment);
            }
        }
        for (key, value) in flags.iter().filter(|(k, _)| k != "config") {
            config.set(key, value)?;
            note(key, Origin::Flag);
        }
        Ok((config, origins))
    }

    /// A key's value in file spelling (`None` when unset); secrets are masked.
    pub fn value_text(&self, key: &str) -> Option<String> {
        let secs = |d: Duration| Some(d.as_secs().to_string());
        let millis = |d: Duration| Some(d.as_millis().to_string());
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let masked = |s: &Option<String>| s.as_ref().map(|_| "********".to_string());
        match key {
            "ws_listen" => Some(self.ws_listen.to_string()),
            "wss_listen" => self.wss_listen.map(|addr| addr.to_string()),
            "tls_cert_file" => path(&self.tls_cert_file),
            "tls_key_file" => path(&self.tls_key_file),
            "api_listen" => Some(self.api_listen.to_string()),
            "shards" => Some(self.shards.to_string()),
            "io_backend" => Some(self.io_backend.to_string()),
            "max_message_bytes" => Some(self.max_message_bytes.to_string()),
            "outbound_queue_bytes" => Some(self.outbound_queue_bytes.to_string()),
            "slow_consumer" => Some(
                match self.slow_consumer {
                    SlowConsumerPolicy::Drop => "drop",
                    SlowConsumerPolicy::Close => "close",
                }
                .to_string(),
            ),
            "ping_interval_secs" => secs(self.ping_interval),
            "idle_timeout_secs" => secs(self.idle_timeout),
            "shutdown_grace_secs" => secs(self.shutdown_grace),
            "amqp_url" => self.amqp_url.as_deref().map(crate::ingest::redact_url),
            "node" => self.node.clone(),
            "amqp_prefetch" => Some(self.amqp_prefetch.to_string()),
            "amqp_queue_expires_secs" => secs(self.amqp_queue_expires),
            "auth_file" => path(&self.auth_file),
            "amqp_tls_ca_file" => path(&self.amqp_tls_ca_file),
            "amqp_tls_cert_file" => path(&self.amqp_tls_cert_file),
            "amqp_tls_key_file" => path(&self.amqp_tls_key_file),
            "jwt_hs256_secret" => masked(&self.jwt_hs256_secret),
            "jwt_hs256_secret_file" => path(&self.jwt_hs256_secret_file),
            "jwt_rs256_public_key_file" => path(&self.jwt_rs256_public_key_file),
            "rate_limit_burst" => Some(self.rate_limit_burst.to_string()),
            "rate_limit_per_sec" => Some(self.rate_limit_per_sec.to_string()),
            "max_bindings_per_socket" => Some(self.max_bindings_per_socket.to_string()),
            "max_connections" => Some(self.max_connections.to_string()),
            "max_connections_per_ip" => Some(self.max_connections_per_ip.to_string()),
            "max_connections_per_account" => Some(self.max_connections_per_account.to_string()),
            "max_connects_per_sec" => Some(self.max_connects_per_sec.to_string()),
            "drain_spread_secs" => Some(self.drain_spread.as_secs().to_string()),
            "history" => Some(if self.history { "stream" } else { "off" }.to_string()),
            "history_stream" => Some(self.history_config.stream.clone()),
            "history_max_age_secs" => secs(self.history_config.max_age),
            "history_memory_mb" => Some((self.history_config.memory_bytes >> 20).to_string()),
            "resume_max_events" => Some(self.history_config.resume_max_events.to_string()),
            "position_interval_secs" => secs(self.position_interval),
            "resume_admissions_per_sec" => Some(self.resume_admissions_per_sec.to_string()),
            "call_idle_expiry_secs" => secs(self.call_idle_expiry),
            "commands_max_calls" => Some(self.commands_max_calls.to_string()),
            "commands_max_calls_per_account" => {
                Some(self.commands_max_calls_per_account.to_string())
            }
            "trusted_proxies" => Some(self.trusted_proxies.to_text()),
            "blocked_close_secs" => secs(self.blocked_close),
            "cluster_secret" => masked(&self.cluster_secret),
            "api_max_connections" => Some(self.api_max_connections.to_string()),
            "api_header_timeout_secs" => secs(self.api_header_timeout),
            "cors_allowed_origins" => Some(self.cors_allowed_origins.join(",")),
            "webhooks_enabled" => Some(self.webhooks_enabled.to_string()),
            "webhooks_db" => Some(crate::ingest::redact_url(&self.webhooks_db)),
            "webhooks_allow_private_targets" => {
                Some(self.webhooks_allow_private_targets.to_string())
            }
            "webhooks_connect_timeout_secs" => secs(self.webhooks_connect_timeout),
            "webhooks_request_timeout_secs" => secs(self.webhooks_request_timeout),
            "webhooks_retry_first_ms" => millis(self.webhooks_retry_first),
            "webhooks_retry_max_secs" => secs(self.webhooks_retry_max),
            "webhooks_concurrency_per_hook" => Some(self.webhooks_concurrency_per_hook.to_string()),
            "webhooks_max_in_flight" => Some(self.webhooks_max_in_flight.to_string()),
            "webhooks_attempt_failure_count" => {
                Some(self.webhooks_attempt_failure_count.to_string())
            }
            "webhooks_attempt_failure_expiry_ms" => millis(self.webhooks_attempt_failure_expiry),
            "webhooks_attempts_retention_secs" => secs(self.webhooks_attempts_retention),
            "webhooks_queue" => Some(self.webhooks_queue.clone()),
            "webhooks_max_per_account" => Some(self.webhooks_max_per_account.to_string()),
            "cluster_id" => Some(self.cluster_id.clone()),
            "log_level" => self.log_level.clone(),
            "log_format" => Some(self.log_format.as_str().to_string()),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |why| ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            why,
        };
        let positive = |why| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(why))
        };
        let seconds = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_SECS).contains(n))
                .map(Duration::from_secs)
                .ok_or_else(|| invalid("expected seconds from 1 to 2592000 (30 days)"))
        };
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| invalid("expected a whole number (0: no limit)"))
        };
        let optional = |value: &str| (!value.is_empty()).then(|| value.to_string());
        let boolean = || match value {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid("expected true or false")),
        };
        match key {
            "ws_listen" => {
                self.ws_listen = value.parse().map_err(|_| invalid("expected host:port"))?
            }
            "wss_listen" => {
                self.wss_listen = optional(value)
                    .map(|value| value.parse().map_err(|_| invalid("expected host:port")))
                    .transpose()?
            }
            "tls_cert_file" => self.tls_cert_file = optional(value).map(PathBuf::from),
            "tls_key_file" => self.tls_key_file = optional(value).map(PathBuf::from),
            "api_listen" => {
                self.api_listen = value.parse().map_err(|_| invalid("expected host:port"))?
            }
            "shards" => self.shards = positive("expected a positive number")? as usize,
            "io_backend" => {
                self.io_backend = value
                    .parse()
                    .map_err(|()| invalid("expected `auto`, `io_uring` or `epoll`"))?
            }
            "max_message_bytes" => {
                self.max_message_bytes = positive("expected bytes > 0")? as usize
            }
            "outbound_queue_bytes" => {
                self.outbound_queue_bytes = positive("expected bytes > 0")? as usize
            }
            "slow_consumer" => {
                self.slow_consumer = match value {
                    "drop" => SlowConsumerPolicy::Drop,
                    "close" => SlowConsumerPolicy::Close,
                    _ => return Err(invalid("expected `drop` or `close`")),
                }
            }
            "ping_interval_secs" => self.ping_interval = seconds()?,
            "idle_timeout_secs" => self.idle_timeout = seconds()?,
            "shutdown_grace_secs" => self.shutdown_grace = seconds()?,
            "amqp_url" => {
                let urls = crate::ingest::brokers::broker_urls(value);
                if urls
                    .iter()
                    .any(|url| !url.starts_with("amqp://") && !url.starts_with("amqps://"))
                {
                    return Err(invalid(
                        "expected amqp://user:pass@host:port/vhost or amqps://..., or several \
                         of them separated by commas",
                    ));
                }
                self.amqp_url = (!urls.is_empty()).then(|| urls.join(","))
            }
            "node" => {
                if !crate::families::valid_account_id(value) {
                    return Err(invalid("expected [A-Za-z0-9_-]{1,64}"));
                }
                self.node = Some(value.to_string())
            }
            "amqp_prefetch" => {
                self.amqp_prefetch = value
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid("expected 1..65535"))?
            }
            "amqp_queue_expires_secs" => self.amqp_queue_expires = seconds()?,
            "auth_file" => self.auth_file = optional(value).map(PathBuf::from),
            "amqp_tls_ca_file" => self.amqp_tls_ca_file = optional(value).map(PathBuf::from),
            "amqp_tls_cert_file" => self.amqp_tls_cert_file = optional(value).map(PathBuf::from),
            "amqp_tls_key_file" => self.amqp_tls_key_file = optional(value).map(PathBuf::from),
            "jwt_hs256_secret" => self.jwt_hs256_secret = optional(value),
            "jwt_hs256_secret_file" => {
                self.jwt_hs256_secret_file = optional(value).map(PathBuf::from)
            }
            "jwt_rs256_public_key_file" => {
                self.jwt_rs256_public_key_file = optional(value).map(PathBuf::from)
            }
            "rate_limit_burst" => {
                self.rate_limit_burst =
                    positive("expected a positive number")?.min(u32::MAX as u64) as u32
            }
            "rate_limit_per_sec" => {
                self.rate_limit_per_sec = value
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n > 0.0)
                    .ok_or_else(|| invalid("expected a positive number"))?
            }
            "max_bindings_per_socket" => {
                self.max_bindings_per_socket = positive("expected a positive number")? as usize
            }
            "max_connections" => self.max_connections = count()?,
            "max_connections_per_ip" => self.max_connections_per_ip = count()?,
            "max_connections_per_account" => self.max_connections_per_account = count()?,
            "max_connects_per_sec" => self.max_connects_per_sec = count()?,
            "drain_spread_secs" => {
                self.drain_spread = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= 3600)
                    .map(Duration::from_secs)
                    .ok_or_else(|| invalid("expected seconds from 0 to 3600"))?
            }
            "trusted_proxies" => {
                self.trusted_proxies = crate::proxy::TrustedProxies::parse(value).map_err(|_| {
                    invalid(
                        "expected addresses or CIDR blocks (10.0.0.7, 10.0.0.0/8), comma-separated",
                    )
                })?
            }
            "blocked_close_secs" => self.blocked_close = seconds()?,
            "history" => {
                self.history = match value {
                    "off" => false,
                    "stream" => true,
                    _ => return Err(invalid("expected `off` or `stream`")),
                }
            }
            "history_stream" => {
                let valid = !value.is_empty()
                    && value.len() <= 200
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    return Err(invalid("expected a queue name of A-Z a-z 0-9 . _ -"));
                }
                self.history_config.stream = value.to_string()
            }
            "history_max_age_secs" => self.history_config.max_age = seconds()?,
            "history_memory_mb" => {
                self.history_config.memory_bytes =
                    (positive("expected a positive number of MiB")?.min(1 << 20) as usize) << 20
            }
            "resume_max_events" => {
                self.history_config.resume_max_events =
                    positive("expected a positive number")?.min(10_000_000) as usize
            }
            "position_interval_secs" => self.position_interval = seconds()?,
            "resume_admissions_per_sec" => {
                self.resume_admissions_per_sec =
                    positive("expected a positive number")?.min(1_000_000) as u32
            }
            "call_idle_expiry_secs" => self.call_idle_expiry = seconds()?,
            "commands_max_calls" => {
                self.commands_max_calls = positive("expected a positive number")? as usize
            }
            "commands_max_calls_per_account" => {
                self.commands_max_calls_per_account =
                    positive("expected a positive number")? as usize
            }
            "cluster_secret" => self.cluster_secret = optional(value),
            "api_max_connections" => {
                self.api_max_connections = positive("expected a positive number")? as usize
            }
            "api_header_timeout_secs" => self.api_header_timeout = seconds()?,
            "cors_allowed_origins" => {
                let origins: Vec<String> = value
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
                let valid = |o: &String| {
                    o == "*"
                        || ((o.starts_with("http://") || o.starts_with("https://"))
                            && o.bytes().all(|b| b.is_ascii_graphic()))
                };
                if origins.is_empty() || !origins.iter().all(valid) {
                    return Err(invalid(
                        "expected `*` or a comma-separated list of http(s)://host[:port] origins",
                    ));
                }
                self.cors_allowed_origins = origins
            }
            "webhooks_enabled" => self.webhooks_enabled = boolean()?,
            "webhooks_db" => {
                crate::webhooks::store::Backend::parse(value).map_err(invalid)?;
                self.webhooks_db = value.to_string()
            }
            "webhooks_allow_private_targets" => self.webhooks_allow_private_targets = boolean()?,
            "webhooks_connect_timeout_secs" => self.webhooks_connect_timeout = seconds()?,
            "webhooks_request_timeout_secs" => self.webhooks_request_timeout = seconds()?,
            "webhooks_retry_first_ms" => {
                self.webhooks_retry_first = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (10..=600_000).contains(n))
                    .map(Duration::from_millis)
                    .ok_or_else(|| invalid("expected milliseconds from 10 to 600000"))?
            }
            "webhooks_retry_max_secs" => self.webhooks_retry_max = seconds()?,
            "webhooks_concurrency_per_hook" => {
                self.webhooks_concurrency_per_hook =
                    positive("expected a positive number")?.min(1024) as usize
            }
            "webhooks_max_in_flight" => {
                self.webhooks_max_in_flight =
                    positive("expected a positive number")?.min(1 << 20) as usize
            }
            "webhooks_attempt_failure_count" => {
                self.webhooks_attempt_failure_count =
                    positive("expected a positive number")?.min(u32::MAX as u64) as u32
            }
            "webhooks_attempt_failure_expiry_ms" => {
                self.webhooks_attempt_failure_expiry = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=MAX_SECS * 1000).contains(n))
                    .map(Duration::from_millis)
                    .ok_or_else(|| invalid("expected milliseconds from 1 to 30 days"))?
            }
            "webhooks_max_per_account" => {
                self.webhooks_max_per_account =
                    positive("expected a positive number")?.min(1_000_000) as usize
            }
            "webhooks_attempts_retention_secs" => self.webhooks_attempts_retention = seconds()?,
            "webhooks_queue" => {
                if value.is_empty()
                    || value.len() > 200
                    || !value.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(invalid(
                        "expected a queue name (printable ASCII, at most 200 bytes)",
                    ));
                }
                self.webhooks_queue = value.to_string()
            }
            "cluster_id" => {
                if value.is_empty() || value.len() > 128 {
                    return Err(invalid("expected 1 to 128 characters"));
                }
                self.cluster_id = value.to_string()
            }
            "log_level" => {
                crate::log::filter(Some(value))
                    .map_err(|_| invalid("expected a level (error, warn, info, debug, trace) or RUST_LOG-style directives"))?;
                self.log_level = optional(value)
            }
            "log_format" => {
                self.log_format = match value {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(invalid("expected `text` or `json`")),
                }
            }
            _ => return Err(ConfigError::Unknown(key.into())),
        }
        Ok(())
    }
}

/// The `io_backend` setting. The default is `auto`: the io_uring backend where the kernel allows
/// it, measured at least as good as epoll on every row of BENCHMARKS.md ("io_uring and epoll
/// side by side"), epoll otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring where the kernel allows it (Linux 6.0+, not blocked by a seccomp profile), else
    /// epoll.
    #[default]
    Auto,
    /// The native io_uring backend; the node refuses to start without it.
    IoUring,
    Epoll,
}

impl std::fmt::Display for IoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoBackend::Auto => "auto",
            IoBackend::IoUring => "io_uring",
            IoBackend::Epoll => "epoll",
        })
    }
}

impl std::str::FromStr for IoBackend {
    type Err = ();

    fn from_str(value: &str) -> std::result::Result<IoBackend, ()> {
        match value {
            "auto" => Ok(IoBackend::Auto),
            "io_uring" => Ok(IoBackend::IoUring),
            "epoll" => Ok(IoBackend::Epoll),
            _ => Err(()),
        }
    }
}

/// What to do with an event for a socket whose queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SlowConsumerPolicy {
    /// Skip the event for this socket, count it, and send a lag notice once the queue drains.
    #[default]
    Drop,
    /// Close the socket with 1008 `slow consumer`.
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_what_it_was_given() {
        // The text `--help` and `check-config` show for a value is a value `set` accepts, and
        // gives the same configuration back (secrets excepted: they are masked).
        let defaults = ServeConfig::default();
        for key in keys() {
            let Some(text) = defaults.value_text(key) else {
                continue;
            };
            let mut again = defaults.clone();
            again
                .set(key, &text)
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(again, defaults, "{key} = {text}");
        }
        let mut config = defaults.clone();
        config.set("jwt_hs256_secret", "s3cret").unwrap();
        config
            .set("amqp_url", "amqp://user:pw@host:5672/%2f")
            .unwrap();
        assert_eq!(config.value_text("jwt_hs256_secret").unwrap(), "********");
        assert!(!config.value_text("amqp_url").unwrap().contains("pw"));
        let help: Vec<String> = config_args()
            .iter()
            .map(|a| a.get_help().map(|h| h.to_string()).unwrap_or_default())
            .collect();
        assert_eq!(help.len(), OPTIONS.len() + 1);
        for (key, help) in OPTIONS.iter().zip(&help[1..]) {
            let env = format!("[env: HORIZON_{}]", key.name.to_ascii_uppercase());
            assert!(help.contains(&env) && help.contains("[default: "), "{help}");
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_beat_environment_beats_defaults() {
        let env = |k: &str| match k {
            "HORIZON_WS_LISTEN" => Some("127.0.0.1:7000".to_string()),
            "HORIZON_SHARDS" => Some("3".to_string()),
            _ => None,
        };
        let config = ServeConfig::load(&args(&["--shards", "5"]), env).unwrap();
        assert_eq!(config.shards, 5);
        assert_eq!(config.ws_listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.max_message_bytes, 64 * 1024);
        let config = ServeConfig::load(&args(&["--slow-consumer=close"]), |_| None).unwrap();
        assert_eq!(config.slow_consumer, SlowConsumerPolicy::Close);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = ServeConfig::load(&args(&["--shards", "0"]), |_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value `0` for shards: expected a positive number"
        );
        let err = ServeConfig::load(&args(&["--nope"]), |_| None).unwrap_err();
        assert!(err.to_string().contains("--nope"), "{err}");
        let err = ServeConfig::load(&args(&["--ws-listen"]), |_| None).unwrap_err();
        assert!(err.to_string().contains("--ws-listen"), "{err}");
        // Both spellings, and the last of a repeated flag wins.
        let config = ServeConfig::load(
            &args(&["--max_connections", "3", "--max-connections=4"]),
            |_| None,
        )
        .unwrap();
        assert_eq!(config.max_connections, 4);
        let env = |k: &str| (k == "HORIZON_SLOW_CONSUMER").then(|| "maybe".to_string());
        assert!(ServeConfig::load(&[], env).is_err());
        // A huge grace would overflow the shutdown deadline (it used to panic a shard).
        let err = ServeConfig::load(
            &args(&["--shutdown-grace-secs", "18446744073709551615"]),
            |_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("shutdown_grace_secs"), "{err}");
        assert!(ServeConfig::load(&args(&["--amqp-url", "amqps://h:5671/%2f"]), |_| None).is_ok());
        let err = ServeConfig::load(&args(&["--amqp-url", "http://x"]), |_| None).unwrap_err();
        assert!(err.to_string().contains("amqp_url"), "{err}");
    }

    #[test]
    fn the_file_sits_between_environment_and_defaults() {
        let path = std::env::temp_dir().join(format!("horizon-config-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "shards = 7\nping_interval_secs = 3\namqp_url = \"amqp://127.0.0.1\"\nrate_limit_per_sec = 2.5\n",
        )
        .unwrap();
        let file = path.display().to_string();
        let env = |k: &str| (k == "HORIZON_PING_INTERVAL_SECS").then(|| "4".to_string());
        let config = ServeConfig::load(&args(&["--config", &file, "--shards", "2"]), env).unwrap();
        assert_eq!(config.shards, 2, "flag beats file");
        assert_eq!(
            config.ping_interval,
            Duration::from_secs(4),
            "env beats file"
        );
        assert_eq!(
            config.amqp_url.as_deref(),
            Some("amqp://127.0.0.1"),
            "file beats default"
        );
        assert_eq!(config.rate_limit_per_sec, 2.5);
        let env = |k: &str| (k == "HORIZON_CONFIG").then(|| file.clone());
        assert_eq!(ServeConfig::load(&[], env).unwrap().shards, 7);

        std::fs::write(&path, "shardz = 1\n").unwrap();
        let err = ServeConfig::load(&args(&["--config", &file]), |_| None).unwrap_err();
        assert!(err.to_string().contains("unknown key `shardz`"), "{err}");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            ServeConfig::load(&args(&["--config", "/nonexistent/horizon.toml"]), |_| None),
            Err(ConfigError::File { .. })
        ));
    }

    #[test]
    fn broker_and_proxy_lists_read_from_a_list_or_commas() {
        let pairs = parse_file_text(
            "amqp_url = [\"amqp://a:5672\", \" amqps://b:5671 \"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.10\"]\n",
        )
        .unwrap();
        let mut config = ServeConfig::default();
        config.apply(&pairs).unwrap();
        assert_eq!(
            config.amqp_url.as_deref(),
            Some("amqp://a:5672,amqps://b:5671")
        );
        assert!(config.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
        assert!(config
            .trusted_proxies
            .contains("192.0.2.10".parse().unwrap()));
        assert!(!config
            .trusted_proxies
            .contains("192.0.2.11".parse().unwrap()));
        assert_eq!(
            config.value_text("trusted_proxies").as_deref(),
            Some("10.0.0.0/8,192.0.2.10/32")
        );
        let flags = args(&[
            "--amqp-url",
            "amqp://a, amqp://b",
            "--trusted-proxies",
            "::1",
        ]);
        let config = ServeConfig::load(&flags, |_| None).unwrap();
        assert_eq!(config.amqp_url.as_deref(), Some("amqp://a,amqp://b"));
        for bad in [
            "amqp_url = \"amqp://a,http://b\"\n",
            "amqp_url = [\"amqp://a\", 5]\n",
            "trusted_proxies = \"10.0.0.0/40\"\n",
            "trusted_proxies = \"proxy.internal\"\n",
        ] {
            let result = parse_file_text(bad)
                .map_err(|e| e.to_string())
                .and_then(|pairs| {
                    ServeConfig::default()
                        .apply(&pairs)
                        .map_err(|e| e.to_string())
                });
            assert!(result.is_err(), "{bad}");
        }
    }
}

//! The `horizon` binary: `serve` runs the gateway, `token` mints development JWTs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Arg, ArgAction, ArgMatches, Command};
use horizon::api::{Api, ApiConfig};
use horizon::auth::{format_rfc3339, Auth, JwtKeys, Permissions, TokenClaims};
use horizon::config::{config_args, flag_pairs, Origin, Origins, ServeConfig, OPTIONS};
use horizon::dialect::{BlackholeLimits, Dialects};
use horizon::ingest::{AmqpConfig, EventSource, Ingest, Source};
use horizon::shard::Gateway;
use horizon::webhooks::store::Backend;
use horizon::webhooks::WebhooksConfig;
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line. Every configuration key is a flag of `serve` and `check-config`; its help
/// line names the default and the `HORIZON_*` variable.
fn cli() -> Command {
    let config_keys = || config_args().into_iter();
    let token_keys = config_keys().filter(|a| {
        ["config", "jwt_hs256_secret", "jwt_hs256_secret_file"].contains(&a.get_id().as_str())
    });
    Command::new("horizon")
        .version(env!("CARGO_PKG_VERSION"))
        .about("RabbitMQ to WebSocket and webhook gateway for Kazoo and VoIPBin event streams")
        .after_help(
            "Configuration precedence: flag > HORIZON_* environment variable > --config file > default.\n\
             Run `horizon serve` with no options for a development node (embedded bus, embedded database).",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("serve")
                .about("Run the gateway")
                .args_override_self(true)
                .args(config_keys()),
        )
        .subcommand(
            Command::new("check-config")
                .about(
                    "Validate the configuration and the auth file, reach the broker and the \
                     webhooks database, and print the effective configuration \
                     (exit 0: fine, 2: invalid, 1: a service cannot be reached)",
                )
                .args_override_self(true)
                .args(config_keys())
                .arg(
                    Arg::new("offline")
                        .long("offline")
                        .action(ArgAction::SetTrue)
                        .help("do not reach the broker or the database"),
                ),
        )
        .subcommand(
            Command::new("token")
                .about("Mint a signed HS256 development token (printed on stdout)")
                .args_override_self(true)
                .arg(
                    Arg::new("account_id")
                        .long("account-id")
                        .value_name("ID")
                        .required(true)
                        .help("the account the token is for ([A-Za-z0-9_-]{1,64})"),
                )
                .arg(
                    Arg::new("customer_id")
                        .long("customer-id")
                        .value_name("ID")
                        .help("VoIPBin customer id [default: none]"),
                )
                .arg(
                    Arg::new("agent_id")
                        .long("agent-id")
                        .value_name("ID")
                        .help("VoIPBin agent id [default: none]"),
                )
                .arg(
                    Arg::new("permissions")
                        .long("permissions")
                        .value_name("LIST")
                        .help("VoIPBin permissions, comma-separated (e.g. admin) [default: none]"),
                )
                .arg(
                    Arg::new("publish")
                        .long("publish")
                        .action(ArgAction::SetTrue)
                        .help("may publish events (POST /v2/events) for its account"),
                )
                .arg(
                    Arg::new("admin")
                        .long("admin")
                        .action(ArgAction::SetTrue)
                        .help("may close its accounts' sockets (DELETE /v2/accounts/{A}/websockets)"),
                )
                .arg(
                    Arg::new("commands")
                        .long("commands")
                        .action(ArgAction::SetTrue)
                        .help("may issue call and conference commands (over the socket and REST)"),
                )
                .arg(
                    Arg::new("superduper_admin")
                        .long("superduper-admin")
                        .action(ArgAction::SetTrue)
                        .help("Kazoo's system administrator: may see every account"),
                )
                .arg(
                    Arg::new("ttl")
                        .long("ttl")
                        .value_name("TTL")
                        .default_value("1h")
                        .help("lifetime: 90s, 15m, 1h, 7d, or seconds"),
                )
                .args(token_keys),
        )
        .subcommand(Command::new("version").about("Print the version").hide(true))
}

/// The account the development token of an embedded `serve` is for.
const DEV_ACCOUNT: &str = "dev-account";

/// Blocks the signals `serve` handles in this thread and in every thread started after it, so
/// that the main thread can wait for them with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut signal = 0;
    // SAFETY: `set` is a valid signal set and `signal` a valid out-pointer.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

/// The HS256 secret from the configuration (inline or in a file).
fn jwt_secret(config: &ServeConfig) -> Result<Option<Vec<u8>>, String> {
    Ok(
        match (&config.jwt_hs256_secret, &config.jwt_hs256_secret_file) {
            (Some(secret), _) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        format!("cannot read jwt_hs256_secret_file {}: {e}", path.display())
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        },
    )
}

/// The JWT keys from the configuration (HS256 secret; RS256 public key file).
fn jwt_keys(config: &ServeConfig, secret: Option<Vec<u8>>) -> Result<JwtKeys, String> {
    let pem = match &config.jwt_rs256_public_key_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read jwt_rs256_public_key_file {}: {e}",
                path.display()
            )
        })?),
        None => None,
    };
    JwtKeys::new(secret, pem.as_deref()).map_err(|e| e.to_string())
}

/// A panic anywhere ends the process with exit code 101 (after the panic is logged), so that a
/// supervisor restarts the node: a shard thread that died quietly would leave its sockets
/// unserved and, with its ring full, hold up event delivery for the whole node.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        error!("a thread panicked ({info}); exiting so that the node restarts");
        std::process::exit(101);
    }));
}

/// Webhooks as configured (`None` when `webhooks_enabled` is false).
fn webhooks_config(config: &ServeConfig, node: &str) -> Option<WebhooksConfig> {
    if !config.webhooks_enabled {
        return None;
    }
    // Checked when the configuration was read.
    let db = Backend::parse(&config.webhooks_db).ok()?;
    let mut webhooks = WebhooksConfig::new(db, node.to_string());
    webhooks.cluster_id = config.cluster_id.clone();
    webhooks.amqp_url = config.amqp_url.clone();
    webhooks.queue = config.webhooks_queue.clone();
    webhooks.prefetch = config.amqp_prefetch;
    webhooks.connect_timeout = config.webhooks_connect_timeout;
    webhooks.request_timeout = config.webhooks_request_timeout;
    webhooks.retry_first = config.webhooks_retry_first;
    webhooks.retry_max = config.webhooks_retry_max;
    webhooks.per_hook_concurrency = config.webhooks_concurrency_per_hook;
    webhooks.max_in_flight = config.webhooks_max_in_flight;
    webhooks.failure_count = config.webhooks_attempt_failure_count;
    webhooks.failure_window = config.webhooks_attempt_failure_expiry;
    webhooks.attempts_retention = config.webhooks_attempts_retention;
    webhooks.allow_private = config.webhooks_allow_private_targets;
    webhooks.max_per_account = config.webhooks_max_per_account;
    Some(webhooks)
}

/// The configuration from parsed flags and the process environment; the error names the key.
fn load_config(matches: &ArgMatches) -> Result<(ServeConfig, Origins), String> {
    ServeConfig::from_sources(&flag_pairs(matches), |key| std::env::var(key).ok())
        .map_err(|e| e.to_string())
}

/// Embedded with no auth file and no secret: development mode.
fn development_mode(config: &ServeConfig) -> bool {
    config.amqp_url.is_none()
        && config.auth_file.is_none()
        && config.jwt_hs256_secret.is_none()
        && config.jwt_hs256_secret_file.is_none()
}

/// The amqps files, read and checked; the error names the key and the file. TLS files with an
/// `amqp://` URL would silently do nothing: refused.
fn amqp_tls(config: &ServeConfig) -> Result<horizon::ingest::tls::AmqpTls, String> {
    let any = config.amqp_tls_ca_file.is_some()
        || config.amqp_tls_cert_file.is_some()
        || config.amqp_tls_key_file.is_some();
    let amqps = config.amqp_url.as_deref().is_some_and(|list| {
        horizon::ingest::brokers::broker_urls(list)
            .iter()
            .any(|u| u.starts_with("amqps://"))
    });
    if any && !amqps {
        return Err("amqp_tls_* files are set but amqp_url is not amqps://".into());
    }
    horizon::ingest::tls::load(
        config.amqp_tls_ca_file.as_deref(),
        config.amqp_tls_cert_file.as_deref(),
        config.amqp_tls_key_file.as_deref(),
    )
}

/// The wss certificate and key, read and checked as the shards will load them; the error names
/// the key and the file. Half a wss configuration is refused rather than ignored.
fn wss_tls(config: &ServeConfig) -> Result<Option<horizon::tls::CertificateInfo>, String> {
    match (
        config.wss_listen,
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
    ) {
        (None, None, None) => Ok(None),
        (Some(_), Some(cert), Some(key)) => {
            horizon::tls::ServerTls::load(cert, key).map(|tls| Some(tls.info()))
        }
        (Some(_), _, _) => Err("wss_listen needs tls_cert_file and tls_key_file".into()),
        (None, _, _) => Err("tls_cert_file or tls_key_file is set but wss_listen is not".into()),
    }
}

/// Says how long the wss certificate has left (a warning within two weeks of its end).
fn log_certificate(what: &str, info: &horizon::tls::CertificateInfo) {
    let left = info.days_left();
    let line = format!(
        "{what}: {} until {} ({left} days left)",
        info.subject,
        horizon::tls::utc(info.not_after)
    );
    if info.not_after < std::time::SystemTime::now() + horizon::tls::EXPIRY_WARNING {
        warn!("{line}");
    } else {
        info!("{line}");
    }
}

/// The auth directory and keys the configuration names; the error names the key or entry.
fn load_auth(config: &ServeConfig) -> Result<(Auth, Option<Vec<u8>>), String> {
    let secret = jwt_secret(config)?;
    let keys = jwt_keys(config, secret.clone())?;
    let auth = Auth::new(config.auth_file.clone(), keys).map_err(|e| e.to_string())?;
    Ok((auth, secret))
}

/// A start-up failure: logged, and said on stderr too (the log may be going elsewhere).
fn fatal(message: String, code: u8) -> ExitCode {
    error!("{message}");
    eprintln!("horizon serve: {message}");
    ExitCode::from(code)
}

fn serve(matches: &ArgMatches) -> ExitCode {
    exit_on_panic();
    let mut config = match load_config(matches) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    let node = config.node_id();
    if let Err(e) = horizon::log::init(config.log_level.as_deref(), config.log_format, &node) {
        eprintln!("horizon serve: log_level: {e}");
        return ExitCode::from(2);
    }
    // Embedded with no auth file and no secret: a secret for this run only, so that the
    // development token below works and nothing else does.
    // The development token is minted only with that generated secret: a token signed with an
    // operator's own secret would be valid on every node that shares it.
    let development = development_mode(&config);
    if development {
        config.jwt_hs256_secret = Some(horizon::ids::random_hex(32));
    }
    let (auth, secret) = match load_auth(&config) {
        Ok(loaded) => loaded,
        Err(e) => return fatal(e, 2),
    };
    let auth = Arc::new(auth);
    match amqp_tls(&config) {
        Ok(tls) => horizon::ingest::tls::install(tls),
        Err(e) => return fatal(e, 2),
    }
    if let Err(e) = wss_tls(&config) {
        return fatal(e, 2);
    }
    let cluster_key = horizon::api::cluster::cluster_key(
        config.cluster_secret.as_deref().map(str::as_bytes),
        secret.as_deref(),
    );
    let source = match &config.amqp_url {
        Some(url) => Source::Amqp(AmqpConfig {
            url: url.clone(),
            node: node.clone(),
            prefetch: config.amqp_prefetch,
            queue_expires: config.amqp_queue_expires,
        }),
        None => Source::Embedded,
    };
    let ingest = Ingest::with_history(
        source,
        config.history.then(|| config.history_config.clone()),
    );
    ingest
        .live_calls()
        .configure(horizon::commands::LiveLimits {
            max_total: config.commands_max_calls,
            max_per_account: config.commands_max_calls_per_account,
            idle_expiry: config.call_idle_expiry,
        });
    let dialects = Dialects::new(
        auth.clone(),
        Arc::new(ingest.clone()) as Arc<dyn EventSource>,
        BlackholeLimits {
            rate_burst: config.rate_limit_burst,
            rate_per_sec: config.rate_limit_per_sec,
            max_bindings: config.max_bindings_per_socket,
            max_connections_per_account: config.max_connections_per_account,
            resume_admissions_per_sec: f64::from(config.resume_admissions_per_sec),
            ..BlackholeLimits::default()
        },
    );

    let signals = block_signals();
    let shards = config.shards;
    let grace = config.shutdown_grace;
    info!(
        "horizon {} starting (log format {})",
        env!("CARGO_PKG_VERSION"),
        config.log_format.as_str()
    );
    if config.history {
        match &config.amqp_url {
            Some(_) => info!(
                "history: every node reads the stream {} (positions and resume; {} MiB kept in memory)",
                config.history_config.stream,
                config.history_config.memory_bytes >> 20
            ),
            None => info!(
                "history: the embedded bus's own log (positions and resume; {} MiB kept in memory)",
                config.history_config.memory_bytes >> 20
            ),
        }
    }
    match &config.amqp_url {
        Some(url) => info!(
            "event source: AMQP {} (node queue {})",
            horizon::ingest::redact_url(url),
            ingest.queue_name()
        ),
        None => info!(
            "event source: embedded bus (no amqp_url configured; publish with POST /v2/events)"
        ),
    }
    let mut gateway = match Gateway::start(config.clone(), Arc::new(dialects)) {
        Ok(gateway) => gateway,
        Err(e) => return fatal(format!("cannot start the WebSocket shards: {e}"), 1),
    };
    let Some(publisher) = gateway.take_publisher() else {
        return fatal("the shards' rings are already taken".into(), 1);
    };
    if let Err(e) = ingest.start(publisher) {
        gateway.shutdown();
        gateway.join();
        return fatal(format!("cannot start the ingest thread: {e}"), 1);
    }
    let api = gateway.take_registry().map(|registry| {
        Api::start(
            ApiConfig {
                listen: config.api_listen,
                node: node.clone(),
                amqp_url: config.amqp_url.clone(),
                cluster_timeout: Duration::from_secs(2),
                cluster_key: cluster_key.clone(),
                max_connections: config.api_max_connections,
                header_timeout: config.api_header_timeout,
                cors_allowed_origins: config.cors_allowed_origins.clone(),
                webhooks: webhooks_config(&config, &node),
                ws_port: gateway.local_addr().port(),
                trusted_proxies: config.trusted_proxies.clone(),
            },
            auth.clone(),
            ingest.clone(),
            registry,
        )
    });
    let api = match api {
        Some(Ok(api)) => api,
        Some(Err(e)) => {
            gateway.shutdown();
            gateway.join();
            ingest.shutdown(Duration::from_secs(3));
            return fatal(
                format!("cannot start the REST API on {}: {e}", config.api_listen),
                1,
            );
        }
        None => {
            return fatal("the shards' registry is already taken".into(), 1);
        }
    };
    info!(
        "websocket: listening on ws://{} with {shards} shard(s), driver {}",
        gateway.local_addr(),
        gateway.driver()
    );
    if let (Some(addr), Some(tls)) = (gateway.wss_addr(), gateway.tls()) {
        info!("websocket: listening on wss://{addr} (TLS 1.2 and 1.3, ALPN http/1.1)");
        log_certificate("wss certificate", &tls.info());
    }
    info!(
        "api: listening on http://{} (node {node})",
        api.local_addr()
    );
    info!("console: http://{}/console", api.local_addr());
    match webhooks_config(&config, &node) {
        Some(webhooks) => info!(
            "webhooks: on, hooks in {}; events from {}",
            webhooks.db.describe(),
            if config.amqp_url.is_some() {
                format!("the shared queue {}", config.webhooks_queue)
            } else {
                "the embedded bus".to_string()
            }
        ),
        None => info!("webhooks: off (webhooks_enabled = false)"),
    }
    info!(
        "dialects: VoIPBin on {}, Kazoo blackhole on every other path",
        horizon::dialect::VOIPBIN_PATH
    );
    if !config.trusted_proxies.is_empty() {
        info!(
            "proxies: PROXY v1/v2 headers and X-Forwarded-For taken from {} (a header from any \
             other peer closes its connection)",
            config.trusted_proxies.to_text()
        );
    }
    let mut dev_token_file = None;
    if development {
        let claims = TokenClaims {
            account_id: DEV_ACCOUNT.to_string(),
            publish: true,
            expires_at: Some(SystemTime::now() + Duration::from_secs(24 * 3600)),
            ..TokenClaims::default()
        };
        match auth.keys().sign_hs256(&claims) {
            Ok(token) => dev_token_file = write_dev_token(&node, &token),
            Err(e) => error!("no development token: {e}"),
        }
    }
    loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => {
                match auth.reload() {
                    Ok(()) => {
                        // Sockets whose token or access key left the file go now (4001).
                        let closed = api.close_revoked();
                        info!(
                            "SIGHUP: auth file reloaded; {closed} socket(s) closed (token revoked)"
                        )
                    }
                    Err(e) => {
                        warn!(
                            "SIGHUP: auth file not reloaded, the previous one stays in force: {e}"
                        )
                    }
                }
                if let Some(tls) = gateway.tls() {
                    match tls.reload() {
                        Ok(info) => log_certificate("SIGHUP: wss certificate reloaded", &info),
                        Err(e) => warn!(
                            "SIGHUP: wss certificate not reloaded, the previous one stays in force: {e}"
                        ),
                    }
                }
            }
            signal => {
                let name = if signal == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                info!(
                    "{name}: shutting down (close 1001 to every socket, up to {grace:?} to drain)"
                );
                break;
            }
        }
    }
    // readyz turns 503 first, so load balancers stop sending clients before sockets drain.
    api.set_draining();
    gateway.shutdown();
    gateway.join();
    ingest.shutdown(Duration::from_secs(3));
    api.shutdown();
    if let Some(path) = dev_token_file {
        let _ = std::fs::remove_file(path);
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// `90s`, `15m`, `1h`, `7d`, or plain seconds.
fn parse_ttl(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// The development token goes to a file only its owner may read, never into the log: the log
/// is shipped and kept, the token grants publishing for a day. On a terminal it is also shown.
fn write_dev_token(node: &str, token: &str) -> Option<PathBuf> {
    use std::io::{IsTerminal, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("horizon-dev-token-{node}"));
    let _ = std::fs::remove_file(&path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{token}"));
    match written {
        Ok(()) => {
            info!(
                "development token (account {DEV_ACCOUNT}, publish, valid 24h) written to {}",
                path.display()
            );
            if std::io::stderr().is_terminal() {
                eprintln!("\n  development token: {token}\n  console: open /console on the API address above and paste it\n");
            }
            Some(path)
        }
        Err(e) => {
            error!("no development token: cannot write {}: {e}", path.display());
            None
        }
    }
}

fn token(matches: &ArgMatches) -> ExitCode {
    let fail = |message: String| {
        eprintln!("horizon token: {message}");
        ExitCode::from(2)
    };
    let own = |key: &str| matches.get_one::<String>(key).cloned();
    let config = match load_config(matches) {
        Ok((config, _)) => config,
        Err(e) => return fail(e),
    };
    let Some(account_id) = own("account_id") else {
        return fail("--account-id is required".into());
    };
    if !horizon::families::valid_account_id(&account_id) {
        return fail(format!(
            "invalid account id `{account_id}`: expected [A-Za-z0-9_-]{{1,64}}"
        ));
    }
    let permissions = match own("permissions") {
        None => Permissions::default(),
        Some(list) => {
            match Permissions::from_names(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
            {
                Ok(p) => p,
                Err(e) => return fail(e),
            }
        }
    };
    let ttl_text = own("ttl").unwrap_or_else(|| "1h".to_string());
    let Some(ttl) = parse_ttl(&ttl_text) else {
        return fail(format!(
            "invalid --ttl `{ttl_text}`: expected e.g. 90s, 15m, 1h, 7d"
        ));
    };
    let keys = match jwt_secret(&config).and_then(|secret| jwt_keys(&config, secret)) {
        Ok(keys) => keys,
        Err(e) => return fail(e),
    };
    let expires_at = SystemTime::now() + ttl;
    let claims = TokenClaims {
        account_id,
        customer_id: own("customer_id"),
        agent_id: own("agent_id"),
        permissions,
        publish: matches.get_flag("publish"),
        superduper_admin: matches.get_flag("superduper_admin"),
        admin: matches.get_flag("admin"),
        commands: matches.get_flag("commands"),
        expires_at: Some(expires_at),
    };
    match keys.sign_hs256(&claims) {
        Ok(token) => {
            println!("{token}");
            eprintln!("expires {}", format_rfc3339(expires_at));
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

/// `check-config`: what `serve` would refuse at start, and whether the services it needs answer.
fn check_config(matches: &ArgMatches) -> ExitCode {
    let (config, origins) = match load_config(matches) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("horizon check-config: {e}");
            return ExitCode::from(2);
        }
    };
    println!("config: ok");
    if let Err(e) = horizon::log::filter(config.log_level.as_deref()) {
        eprintln!("horizon check-config: log filter: {e}");
        return ExitCode::from(2);
    }
    match load_auth(&config) {
        Ok((auth, secret)) => {
            let file = match &config.auth_file {
                Some(path) => format!("auth file {} ({})", path.display(), auth.describe()),
                None => "no auth file".to_string(),
            };
            let keys = match (secret.is_some(), config.jwt_rs256_public_key_file.is_some()) {
                (true, true) => "HS256 and RS256 keys",
                (true, false) => "an HS256 secret",
                (false, true) => "an RS256 key",
                (false, false) if development_mode(&config) => {
                    "no JWT key (development mode: a secret for the run)"
                }
                (false, false) => "no JWT key: only the auth file's static tokens authenticate",
            };
            println!("auth: ok, {file}, {keys}");
        }
        Err(e) => {
            eprintln!("horizon check-config: {e}");
            return ExitCode::from(2);
        }
    }
    match amqp_tls(&config) {
        Ok(tls) => {
            if config.amqp_url.as_deref().is_some_and(|list| {
                horizon::ingest::brokers::broker_urls(list)
                    .iter()
                    .any(|u| u.starts_with("amqps://"))
            }) {
                println!(
                    "amqps: ok, {}, {}",
                    if tls.ca_pem.is_some() {
                        "CA file and public roots"
                    } else {
                        "public roots"
                    },
                    if tls.identity.is_some() {
                        "client certificate"
                    } else {
                        "no client certificate"
                    }
                );
            }
            horizon::ingest::tls::install(tls);
        }
        Err(e) => {
            eprintln!("horizon check-config: {e}");
            return ExitCode::from(2);
        }
    }
    match wss_tls(&config) {
        Ok(Some(info)) => println!(
            "wss: ok, {} until {} ({} days left)",
            info.subject,
            horizon::tls::utc(info.not_after),
            info.days_left()
        ),
        Ok(None) => {}
        Err(e) => {
            eprintln!("horizon check-config: {e}");
            return ExitCode::from(2);
        }
    }
    let mut unreachable = false;
    if !matches.get_flag("offline") {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("horizon check-config: {e}");
                return ExitCode::FAILURE;
            }
        };
        let checks = runtime.block_on(reach_services(&config));
        for (what, result) in checks {
            match result {
                Ok(detail) => println!("{what}: ok, {detail}"),
                Err(e) => {
                    eprintln!("horizon check-config: {what}: {e}");
                    unreachable = true;
                }
            }
        }
    }
    println!("\n# effective configuration (# where each value came from; secrets masked)");
    for key in OPTIONS {
        let origin = origins
            .iter()
            .find(|(k, _)| *k == key.name)
            .map(|(_, o)| *o);
        let value = config.value_text(key.name);
        let from = match origin {
            Some(Origin::Flag) => "flag",
            Some(Origin::Environment) => "environment",
            Some(Origin::File) => "file",
            Some(Origin::Default) | None => "default",
        };
        match value {
            Some(value) if value.parse::<f64>().is_ok() || value == "true" || value == "false" => {
                println!("{} = {value}  # {from}", key.name)
            }
            Some(value) => println!("{} = {:?}  # {from}", key.name, value),
            None => println!("# {} is not set", key.name),
        }
    }
    if unreachable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Reaches each broker of `amqp_url` and the webhooks database, each within 5 s.
async fn reach_services(config: &ServeConfig) -> Vec<(String, Result<String, String>)> {
    let within = Duration::from_secs(5);
    let mut out = Vec::new();
    let brokers = config
        .amqp_url
        .as_deref()
        .map(horizon::ingest::brokers::broker_urls)
        .unwrap_or_default();
    let several = brokers.len() > 1;
    for (i, url) in brokers.iter().enumerate() {
        let what = if several {
            format!(
                "amqp_url broker {} of {} {}",
                i + 1,
                brokers.len(),
                horizon::ingest::redact_url(url)
            )
        } else {
            format!("amqp_url {}", horizon::ingest::redact_url(url))
        };
        let connect = horizon::ingest::tls::connect(url);
        let result = match tokio::time::timeout(within, connect).await {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "check-config".into()).await;
                Ok("connected and authenticated".to_string())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {within:?}")),
        };
        out.push((what, result));
    }
    if config.webhooks_enabled {
        let backend = Backend::parse(&config.webhooks_db);
        let what = format!(
            "webhooks_db {}",
            horizon::ingest::redact_url(&config.webhooks_db)
        );
        let result = match backend {
            Ok(backend) => {
                match tokio::time::timeout(within, horizon::webhooks::store::reach(&backend)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {within:?}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        out.push((what, result));
    }
    out
}

fn main() -> ExitCode {
    let matches = match cli().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => {
            // `--help` and `--version` print and succeed; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    match matches.subcommand() {
        Some(("serve", m)) => serve(m),
        Some(("check-config", m)) => check_config(m),
        Some(("token", m)) => token(m),
        Some(("version", _)) => {
            println!("horizon {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => ExitCode::from(2),
    }
}

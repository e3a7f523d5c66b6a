//! The `horizon` binary: `serve` runs the gateway, `token` mints development JWTs.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use horizon::api::{Api, ApiConfig};
use horizon::auth::{format_rfc3339, Auth, JwtKeys, Permissions, TokenClaims};
use horizon::config::{parse_flags, ServeConfig, KEYS};
use horizon::dialect::{BlackholeLimits, Dialects};
use horizon::ingest::{AmqpConfig, EventSource, Ingest, Source};
use horizon::shard::Gateway;
use horizon::webhooks::store::Backend;
use horizon::webhooks::WebhooksConfig;
use horizon::{elog, log};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
horizon - RabbitMQ to WebSocket gateway for Kazoo and VoIPBin event streams

USAGE:
    horizon <COMMAND> [OPTIONS]

COMMANDS:
    serve      run the gateway (options: see README.md, Configuration)
    token      mint a signed development token:
                 horizon token --account-id ID [--customer-id ID] [--agent-id ID]
                   [--permissions admin,...] [--publish] [--superduper-admin] [--ttl 1h]
               signed with jwt_hs256_secret (flag, HORIZON_JWT_HS256_SECRET or --config file)
    help       print this message
    version    print the version
";

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
        elog!("horizon serve: a thread panicked ({info}); exiting so that the node restarts");
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

fn serve(args: &[String]) -> ExitCode {
    exit_on_panic();
    let mut config = match ServeConfig::load(args, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => {
            elog!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    // Embedded with no auth file and no secret: a secret for this run only, so that the
    // development token below works and nothing else does.
    // The development token is minted only with that generated secret: a token signed with an
    // operator's own secret would be valid on every node that shares it.
    let development = config.amqp_url.is_none()
        && config.auth_file.is_none()
        && config.jwt_hs256_secret.is_none()
        && config.jwt_hs256_secret_file.is_none();
    if development {
        config.jwt_hs256_secret = Some(horizon::ids::random_hex(32));
    }
    let secret = match jwt_secret(&config) {
        Ok(secret) => secret,
        Err(e) => {
            elog!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    let cluster_key = horizon::api::cluster::cluster_key(
        config.cluster_secret.as_deref().map(str::as_bytes),
        secret.as_deref(),
    );
    let keys = match jwt_keys(&config, secret) {
        Ok(keys) => keys,
        Err(e) => {
            elog!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    let auth = match Auth::new(config.auth_file.clone(), keys) {
        Ok(auth) => Arc::new(auth),
        Err(e) => {
            elog!("horizon serve: {e}");
            return ExitCode::from(2);
        }
    };
    let node = config.node_id();
    let source = match &config.amqp_url {
        Some(url) => Source::Amqp(AmqpConfig {
            url: url.clone(),
            node: node.clone(),
            prefetch: config.amqp_prefetch,
            queue_expires: config.amqp_queue_expires,
        }),
        None => Source::Embedded,
    };
    let ingest = Ingest::new(source);
    let dialects = Dialects::new(
        auth.clone(),
        Arc::new(ingest.clone()) as Arc<dyn EventSource>,
        BlackholeLimits {
            rate_burst: config.rate_limit_burst,
            rate_per_sec: config.rate_limit_per_sec,
            max_bindings: config.max_bindings_per_socket,
            ..BlackholeLimits::default()
        },
    );

    let signals = block_signals();
    let shards = config.shards;
    let grace = config.shutdown_grace;
    log!("horizon {} starting", env!("CARGO_PKG_VERSION"));
    match &config.amqp_url {
        Some(url) => log!(
            "event source: AMQP {} (node queue {})",
            horizon::ingest::redact_url(url),
            ingest.queue_name()
        ),
        None => log!(
            "event source: embedded bus (no amqp_url configured; publish with POST /v2/events)"
        ),
    }
    let mut gateway = match Gateway::start(config.clone(), Arc::new(dialects)) {
        Ok(gateway) => gateway,
        Err(e) => {
            elog!("horizon serve: cannot start the WebSocket shards: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(publisher) = gateway.take_publisher() else {
        elog!("horizon serve: the shards' rings are already taken");
        return ExitCode::FAILURE;
    };
    if let Err(e) = ingest.start(publisher) {
        elog!("horizon serve: cannot start the ingest thread: {e}");
        gateway.shutdown();
        gateway.join();
        return ExitCode::FAILURE;
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
            },
            auth.clone(),
            ingest.clone(),
            registry,
        )
    });
    let api = match api {
        Some(Ok(api)) => api,
        Some(Err(e)) => {
            elog!(
                "horizon serve: cannot start the REST API on {}: {e}",
                config.api_listen
            );
            gateway.shutdown();
            gateway.join();
            ingest.shutdown(Duration::from_secs(3));
            return ExitCode::FAILURE;
        }
        None => {
            elog!("horizon serve: the shards' registry is already taken");
            return ExitCode::FAILURE;
        }
    };
    log!(
        "websocket: listening on ws://{} with {shards} shard(s), driver {}",
        gateway.local_addr(),
        gateway.driver()
    );
    log!(
        "api: listening on http://{} (node {node})",
        api.local_addr()
    );
    match webhooks_config(&config, &node) {
        Some(webhooks) => log!(
            "webhooks: on, hooks in {}; events from {}",
            webhooks.db.describe(),
            if config.amqp_url.is_some() {
                format!("the shared queue {}", config.webhooks_queue)
            } else {
                "the embedded bus".to_string()
            }
        ),
        None => log!("webhooks: off (webhooks_enabled = false)"),
    }
    log!(
        "dialects: VoIPBin on {}, Kazoo blackhole on every other path",
        horizon::dialect::VOIPBIN_PATH
    );
    if development {
        let claims = TokenClaims {
            account_id: DEV_ACCOUNT.to_string(),
            publish: true,
            expires_at: Some(SystemTime::now() + Duration::from_secs(24 * 3600)),
            ..TokenClaims::default()
        };
        match auth.keys().sign_hs256(&claims) {
            Ok(token) => {
                log!("development token (account {DEV_ACCOUNT}, publish, valid 24h): {token}")
            }
            Err(e) => elog!("horizon serve: no development token: {e}"),
        }
    }
    loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => match auth.reload() {
                Ok(()) => log!("SIGHUP: auth file reloaded"),
                Err(e) => {
                    elog!("SIGHUP: auth file not reloaded, the previous one stays in force: {e}")
                }
            },
            signal => {
                let name = if signal == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                log!(
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
    log!("stopped");
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

fn token(args: &[String]) -> ExitCode {
    const OWN: &[&str] = &[
        "account_id",
        "customer_id",
        "agent_id",
        "permissions",
        "ttl",
    ];
    let fail = |message: String| {
        elog!("horizon token: {message}");
        ExitCode::from(2)
    };
    // `--publish` and `--superduper-admin` take no value; everything else is `--key value`.
    let mut publish = false;
    let mut superduper_admin = false;
    let rest: Vec<String> = args
        .iter()
        .filter(|a| match a.as_str() {
            "--publish" => {
                publish = true;
                false
            }
            "--superduper-admin" => {
                superduper_admin = true;
                false
            }
            _ => true,
        })
        .cloned()
        .collect();
    let known: Vec<&str> = KEYS.iter().chain(OWN).copied().collect();
    let pairs = match parse_flags(&rest, &known) {
        Ok(pairs) => pairs,
        Err(e) => return fail(e.to_string()),
    };
    let own = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let config_args: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), v.clone()])
        .collect();
    let config = match ServeConfig::load(&config_args, |key| std::env::var(key).ok()) {
        Ok(config) => config,
        Err(e) => return fail(e.to_string()),
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
        publish,
        superduper_admin,
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

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("version" | "-V" | "--version") => {
            println!("horizon {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("serve") => serve(&args[1..]),
        Some("token") => token(&args[1..]),
        Some(other) => {
            eprintln!("horizon: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

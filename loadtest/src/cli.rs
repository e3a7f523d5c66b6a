//! Command-line options (clap): `--key value` pairs, every one with a default that `--help` shows.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Which system the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Horizon's blackhole dialect.
    Horizon,
    /// RabbitMQ's Web-MQTT plugin (MQTT 3.1.1 over WebSocket).
    MqttWs,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// WebSocket endpoint (`host:port` and path).
    pub ws_addr: SocketAddr,
    pub ws_path: String,
    pub amqp_url: String,
    /// Horizon's REST API, for `--publish rest`.
    pub api_addr: SocketAddr,
    pub publish_rest: bool,
    pub jwt_secret: String,
    pub mqtt_user: String,
    pub mqtt_password: String,
    pub connections: usize,
    pub accounts: usize,
    pub processes: usize,
    pub threads: usize,
    /// Source addresses the client sockets bind to, round-robin (each has its own port range).
    pub source_ips: Vec<IpAddr>,
    /// Events per second.
    pub rate: u64,
    pub duration: Duration,
    pub payload_bytes: usize,
    /// New connections per second (connect scenario; 0 = as fast as possible).
    pub ramp_rate: u64,
    /// How long idle connections are held (connect scenario).
    pub hold: Duration,
    /// Subscribe/unsubscribe commands per second per connection (churn scenario).
    pub churn_rate: f64,
    /// Processes whose CPU time and memory are sampled (`/proc/<pid>/cmdline` contains this).
    pub gateway_match: Option<String>,
    /// The broker's processes (`/proc/<pid>/cmdline` contains this): every event of either
    /// target passes through the broker, so "deliveries per system CPU-second" counts it too.
    pub broker_match: Option<String>,
    /// Where `report.json` and `report.html` go.
    pub out: Option<String>,
    /// How long subscribers wait for the last events after publishing ends.
    pub drain: Duration,
    /// Pause between "every subscriber is subscribed" and the first publish.
    pub warmup: Duration,
    /// Call events published (round robin) and subscribed to, one binding each.
    pub events: Vec<String>,
    /// Reseller accounts: account `a` is a child of reseller `a % resellers` (0: no tree).
    pub resellers: usize,
    /// With resellers, every `reseller_every`-th connection is a reseller console that
    /// subscribes for each of its children's accounts.
    pub reseller_every: usize,
}

pub fn ip_range(text: &str) -> Result<Vec<IpAddr>, String> {
    let bad = || {
        format!("invalid --source-ips `{text}` (e.g. 127.0.0.2-127.0.0.20 or 127.0.0.1,127.0.0.2)")
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let from: std::net::Ipv4Addr = from.trim().parse().map_err(|_| bad())?;
                let to: std::net::Ipv4Addr = to.trim().parse().map_err(|_| bad())?;
                let (a, b) = (u32::from(from), u32::from(to));
                if b < a || b - a > 250 {
                    return Err(bad());
                }
                out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
            }
            None => out.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    if out.iter().any(|ip| !ip.is_loopback()) {
        return Err(
            "--source-ips must be loopback addresses (test traffic stays on this machine)".into(),
        );
    }
    Ok(out)
}

/// Reads a scenario file: `key = value` lines (`#` comments, quoted or bare values) as flags.
fn scenario_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--scenario {path}: {e}"))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("--scenario {path}:{}: expected key = value", n + 1))?;
        let value = value.trim().trim_matches('"');
        out.push(format!("--{}", key.trim().replace('_', "-")));
        out.push(value.to_string());
    }
    Ok(out)
}

/// Every scenario option: name, default (empty: see the help), help line.
pub const FLAGS: &[(&str, &str, &str)] = &[
    ("target", "horizon", "`horizon` (blackhole dialect) or `mqtt-ws` (RabbitMQ Web-MQTT)"),
    ("url", "", "WebSocket endpoint on loopback [default: ws://127.0.0.1:5555/, mqtt-ws: ws://127.0.0.1:15675/ws]"),
    ("amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f", "the broker events are published to"),
    ("api", "127.0.0.1:8000", "Horizon's REST API (for --publish rest)"),
    ("publish", "amqp", "`amqp` (through the broker) or `rest` (POST /v2/events)"),
    ("jwt-secret", "loadtest-secret", "HS256 secret the client tokens are signed with (the gateway's jwt_hs256_secret)"),
    ("mqtt-user", "guest", "Web-MQTT user"),
    ("mqtt-password", "guest", "Web-MQTT password"),
    ("connections", "1000", "WebSocket connections, over all processes"),
    ("accounts", "100", "accounts the connections are spread over"),
    ("processes", "1", "worker processes holding the connections"),
    ("threads", "2", "client runtimes per worker process"),
    ("source-ips", "127.0.0.1", "loopback source addresses, round-robin (e.g. 127.0.0.2-127.0.0.20)"),
    ("rate", "1000", "events published per second"),
    ("duration", "10", "seconds of publishing (1-3600)"),
    ("payload-bytes", "1024", "event body size"),
    ("ramp-rate", "0", "new connections per second (connect scenario; 0: as fast as possible)"),
    ("hold", "5", "seconds idle connections are held (connect scenario)"),
    ("churn-rate", "2", "subscribe/unsubscribe commands per second per connection (churn scenario)"),
    ("gateway-match", "horizon serve", "processes whose CPU and memory are sampled (command line contains this)"),
    ("broker-match", "beam.smp", "the broker's processes: their CPU is added to the gateway's for the system figure (empty: none)"),
    ("out", "", "directory for report.json and report.html [default: none]"),
    ("drain", "10", "seconds subscribers wait for the last events (1-600)"),
    ("warmup", "0", "seconds between 'all subscribed' and the first publish"),
    ("events", "CHANNEL_CREATE", "call events published round robin and subscribed to, comma-separated"),
    ("resellers", "0", "reseller accounts (account a is a child of reseller a % resellers; 0: no tree)"),
    ("reseller-every", "10", "with resellers, every n-th connection is a reseller console"),
];

/// The environment variable of an option: `HORIZON_LOADTEST_` and its name (`--amqp-url`:
/// `HORIZON_LOADTEST_AMQP_URL`). A flag beats its variable.
/// The text of option `key` (empty when absent).
pub fn text(m: &clap::ArgMatches, key: &str) -> String {
    m.get_one::<String>(key).cloned().unwrap_or_default()
}

/// Option `key` as a whole number.
pub fn number(m: &clap::ArgMatches, key: &str) -> Result<u64, String> {
    text(m, key)
        .parse::<u64>()
        .map_err(|_| format!("--{key}: expected a number"))
}

pub fn env_name(option: &str) -> String {
    format!(
        "HORIZON_LOADTEST_{}",
        option.replace('-', "_").to_ascii_uppercase()
    )
}

/// The scenario options as clap arguments; `--help` shows each default and variable.
pub fn args_list() -> Vec<clap::Arg> {
    let mut out = vec![clap::Arg::new("scenario")
        .long("scenario")
        .value_name("FILE")
        .help("read options from `key = value` lines (flags given on the command line win)")];
    for (name, default, help) in FLAGS {
        let mut arg = clap::Arg::new(*name)
            .long(*name)
            .value_name("VALUE")
            .env(env_name(name))
            .help(*help);
        if !default.is_empty() {
            arg = arg.default_value(*default);
        }
        out.push(arg);
    }
    out
}

/// Expands `--scenario FILE` into the flags it holds, placed before the command line's own (so
/// that those win).
pub fn expand_scenario(args: &[String]) -> Result<Vec<String>, String> {
    let mut all: Vec<String> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--scenario" {
            let path = rest.next().ok_or("--scenario needs a file")?;
            all.splice(0..0, scenario_file(path)?);
        } else if let Some(path) = arg.strip_prefix("--scenario=") {
            all.splice(0..0, scenario_file(path)?);
        } else {
            all.push(arg.clone());
        }
    }
    Ok(all)
}

impl Options {
    /// Parses scenario options (as a worker process gets them).
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let matches = clap::Command::new("options")
            .no_binary_name(true)
            .args_override_self(true)
            .args(args_list())
            .try_get_matches_from(expand_scenario(args)?)
            .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())?;
        Options::from_matches(&matches)
    }

    /// The options from parsed arguments (defaults filled in by clap).
    pub fn from_matches(matches: &clap::ArgMatches) -> Result<Options, String> {
        let get = |key: &str| matches.get_one::<String>(key).cloned();
        let take = |key: &str| get(key).unwrap_or_default();
        let num = |key: &str| {
            let value = take(key);
            value
                .parse::<u64>()
                .map_err(|_| format!("--{key}: expected a number, got `{value}`"))
        };
        let target = match take("target").as_str() {
            "horizon" => Target::Horizon,
            "mqtt-ws" => Target::MqttWs,
            other => return Err(format!("--target: `horizon` or `mqtt-ws`, not `{other}`")),
        };
        let default_url = match target {
            Target::Horizon => "ws://127.0.0.1:5555/",
            Target::MqttWs => "ws://127.0.0.1:15675/ws",
        };
        let url = get("url").unwrap_or_else(|| default_url.to_string());
        let rest = url
            .strip_prefix("ws://")
            .ok_or("--url must start with ws://")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let ws_addr: SocketAddr = host
            .parse()
            .map_err(|_| format!("--url: `{host}` is not ip:port"))?;
        if !ws_addr.ip().is_loopback() {
            return Err(
                "--url must point at a loopback address (test traffic stays on this machine)"
                    .into(),
            );
        }
        let api: SocketAddr = take("api").parse().map_err(|_| "--api: expected ip:port")?;
        let publish_rest = match take("publish").as_str() {
            "amqp" => false,
            "rest" => true,
            other => return Err(format!("--publish: `amqp` or `rest`, not `{other}`")),
        };
        let options = Options {
            target,
            ws_addr,
            ws_path: path,
            amqp_url: take("amqp-url"),
            api_addr: api,
            publish_rest,
            jwt_secret: take("jwt-secret"),
            mqtt_user: take("mqtt-user"),
            mqtt_password: take("mqtt-password"),
            connections: num("connections")? as usize,
            accounts: num("accounts")?.max(1) as usize,
            processes: num("processes")?.max(1) as usize,
            threads: num("threads")?.max(1) as usize,
            source_ips: ip_range(&take("source-ips"))?,
            rate: num("rate")?.max(1),
            duration: Duration::from_secs(num("duration")?.clamp(1, 3600)),
            payload_bytes: num("payload-bytes")? as usize,
            ramp_rate: num("ramp-rate")?,
            hold: Duration::from_secs(num("hold")?.min(3600)),
            churn_rate: take("churn-rate")
                .parse()
                .map_err(|_| "--churn-rate: expected a number")?,
            gateway_match: Some(take("gateway-match")).filter(|m| !m.is_empty()),
            broker_match: Some(take("broker-match")).filter(|m| !m.is_empty()),
            out: get("out"),
            drain: Duration::from_secs(num("drain")?.clamp(1, 600)),
            warmup: Duration::from_secs(num("warmup")?.min(600)),
            events: take("events")
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            resellers: num("resellers")? as usize,
            reseller_every: num("reseller-every")?.max(1) as usize,
        };
        if options.events.is_empty()
            || options
                .events
                .iter()
                .any(|e| !e.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        {
            return Err("--events: a comma-separated list of call events, e.g. CHANNEL_CREATE,CHANNEL_DESTROY".into());
        }
        if options.resellers > options.accounts {
            return Err("--resellers cannot exceed --accounts".into());
        }
        Ok(options)
    }

    /// The options as arguments again (for worker processes).
    pub fn to_args(&self) -> Vec<String> {
        let target = match self.target {
            Target::Horizon => "horizon",
            Target::MqttWs => "mqtt-ws",
        };
        let ips: Vec<String> = self.source_ips.iter().map(|ip| ip.to_string()).collect();
        let mut args = vec![
            ("target", target.to_string()),
            ("url", format!("ws://{}{}", self.ws_addr, self.ws_path)),
            ("amqp-url", self.amqp_url.clone()),
            ("api", self.api_addr.to_string()),
            ("jwt-secret", self.jwt_secret.clone()),
            ("mqtt-user", self.mqtt_user.clone()),
            ("mqtt-password", self.mqtt_password.clone()),
            ("connections", self.connections.to_string()),
            ("accounts", self.accounts.to_string()),
            ("processes", self.processes.to_string()),
            ("threads", self.threads.to_string()),
            ("source-ips", ips.join(",")),
            ("rate", self.rate.to_string()),
            ("duration", self.duration.as_secs().to_string()),
            ("payload-bytes", self.payload_bytes.to_string()),
            ("ramp-rate", self.ramp_rate.to_string()),
            ("hold", self.hold.as_secs().to_string()),
            ("churn-rate", self.churn_rate.to_string()),
            ("drain", self.drain.as_secs().to_string()),
            ("warmup", self.warmup.as_secs().to_string()),
            ("events", self.events.join(",")),
            ("resellers", self.resellers.to_string()),
            ("reseller-every", self.reseller_every.to_string()),
            (
                "gateway-match",
                self.gateway_match.clone().unwrap_or_default(),
            ),
            (
                "broker-match",
                self.broker_match.clone().unwrap_or_default(),
            ),
        ];
        if self.publish_rest {
            args.push(("publish", "rest".into()));
        }
        args.into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect()
    }
}

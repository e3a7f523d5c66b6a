//! Command-line options: `--key value` pairs, every one with a default.

use std::collections::HashMap;
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

fn ip_range(text: &str) -> Result<Vec<IpAddr>, String> {
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

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        // `--scenario FILE`: the same options as `key = value` lines (flat TOML); flags given on
        // the command line win.
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
        let args = &all;
        let mut map: HashMap<String, String> = HashMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument `{arg}`"))?;
            let (key, value) = match key.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    key.to_string(),
                    it.next()
                        .cloned()
                        .ok_or_else(|| format!("--{key} needs a value"))?,
                ),
            };
            map.insert(key, value);
        }
        let out = map.remove("out");
        let mut take =
            |key: &str, default: &str| map.remove(key).unwrap_or_else(|| default.to_string());
        let num = |key: &str, value: String| {
            value
                .parse::<u64>()
                .map_err(|_| format!("--{key}: expected a number, got `{value}`"))
        };
        let target = match take("target", "horizon").as_str() {
            "horizon" => Target::Horizon,
            "mqtt-ws" => Target::MqttWs,
            other => return Err(format!("--target: `horizon` or `mqtt-ws`, not `{other}`")),
        };
        let default_url = match target {
            Target::Horizon => "ws://127.0.0.1:5555/",
            Target::MqttWs => "ws://127.0.0.1:15675/ws",
        };
        let url = take("url", default_url);
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
        let api: SocketAddr = take("api", "127.0.0.1:8000")
            .parse()
            .map_err(|_| "--api: expected ip:port")?;
        let publish_rest = match take("publish", "amqp").as_str() {
            "amqp" => false,
            "rest" => true,
            other => return Err(format!("--publish: `amqp` or `rest`, not `{other}`")),
        };
        let options = Options {
            target,
            ws_addr,
            ws_path: path,
            amqp_url: take("amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            api_addr: api,
            publish_rest,
            jwt_secret: take("jwt-secret", "loadtest-secret"),
            mqtt_user: take("mqtt-user", "guest"),
            mqtt_password: take("mqtt-password", "guest"),
            connections: num("connections", take("connections", "1000"))? as usize,
            accounts: num("accounts", take("accounts", "100"))?.max(1) as usize,
            processes: num("processes", take("processes", "1"))?.max(1) as usize,
            threads: num("threads", take("threads", "2"))?.max(1) as usize,
            source_ips: ip_range(&take("source-ips", "127.0.0.1"))?,
            rate: num("rate", take("rate", "1000"))?.max(1),
            duration: Duration::from_secs(num("duration", take("duration", "10"))?.clamp(1, 3600)),
            payload_bytes: num("payload-bytes", take("payload-bytes", "1024"))? as usize,
            ramp_rate: num("ramp-rate", take("ramp-rate", "0"))?,
            hold: Duration::from_secs(num("hold", take("hold", "5"))?.min(3600)),
            churn_rate: take("churn-rate", "2")
                .parse()
                .map_err(|_| "--churn-rate: expected a number")?,
            gateway_match: Some(take("gateway-match", "horizon serve")).filter(|m| !m.is_empty()),
            out,
            drain: Duration::from_secs(num("drain", take("drain", "10"))?.clamp(1, 600)),
            warmup: Duration::from_secs(num("warmup", take("warmup", "0"))?.min(600)),
            events: take("events", "CHANNEL_CREATE")
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            resellers: num("resellers", take("resellers", "0"))? as usize,
            reseller_every: num("reseller-every", take("reseller-every", "10"))?.max(1) as usize,
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
        if let Some(unknown) = map.keys().next() {
            return Err(format!("unknown option --{unknown}"));
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
        ];
        if self.publish_rest {
            args.push(("publish", "rest".into()));
        }
        args.into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect()
    }
}

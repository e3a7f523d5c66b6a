//! `serve` configuration: flags override `HORIZON_<KEY>` environment variables, which override the
//! defaults (PROTOCOLS.md section 1). The TOML file layer arrives with the auth file (#4).

use std::net::SocketAddr;
use std::time::Duration;

use crate::shard::SlowConsumerPolicy;

/// Everything the data plane needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// WebSocket listener; every shard binds it with `SO_REUSEPORT`.
    pub ws_listen: SocketAddr,
    /// Thread-per-core shards (default: online CPUs).
    pub shards: usize,
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
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 5555)),
            shards: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_message_bytes: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Drop,
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A configuration value that could not be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown option `{0}`")]
    Unknown(String),
    #[error("option `--{0}` needs a value")]
    MissingValue(String),
    #[error("invalid value `{value}` for {key}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: &'static str,
    },
}

const KEYS: &[&str] = &[
    "ws_listen",
    "shards",
    "max_message_bytes",
    "outbound_queue_bytes",
    "slow_consumer",
    "ping_interval_secs",
    "idle_timeout_secs",
    "shutdown_grace_secs",
];

impl ServeConfig {
    /// Builds the configuration from command-line `args` (after `serve`) and an environment
    /// lookup (`std::env::var` in the binary, a map in tests).
    pub fn load(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let mut config = ServeConfig::default();
        for key in KEYS {
            if let Some(value) = env(&format!("HORIZON_{}", key.to_ascii_uppercase())) {
                config.set(key, &value)?;
            }
        }
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::Unknown(arg.clone()));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            let key = name.replace('-', "_");
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Unknown(arg.clone()));
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| ConfigError::MissingValue(name.into()))?,
            };
            config.set(&key, &value)?;
        }
        Ok(config)
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
        match key {
            "ws_listen" => {
                self.ws_listen = value.parse().map_err(|_| invalid("expected host:port"))?
            }
            "shards" => self.shards = positive("expected a positive number")? as usize,
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
            "ping_interval_secs" => {
                self.ping_interval = Duration::from_secs(positive("expected seconds > 0")?)
            }
            "idle_timeout_secs" => {
                self.idle_timeout = Duration::from_secs(positive("expected seconds > 0")?)
            }
            "shutdown_grace_secs" => {
                self.shutdown_grace = Duration::from_secs(positive("expected seconds > 0")?)
            }
            _ => return Err(ConfigError::Unknown(key.into())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            ServeConfig::load(&args(&["--nope"]), |_| None),
            Err(ConfigError::Unknown(_))
        ));
        assert!(matches!(
            ServeConfig::load(&args(&["--ws-listen"]), |_| None),
            Err(ConfigError::MissingValue(_))
        ));
        let env = |k: &str| (k == "HORIZON_SLOW_CONSUMER").then(|| "maybe".to_string());
        assert!(ServeConfig::load(&[], env).is_err());
    }
}

//! Logging on `tracing`: a filter (`log_level`, else `RUST_LOG`, else `info`), `text` or `json`
//! lines on standard output, each with a UTC timestamp, the level, the node id and the target.
//!
//! Logging can never take the gateway down: a closed or broken stdout (the parent went away, a
//! pipe with no reader) only loses the line - the writer swallows the error, and the subscriber
//! is told not to report its own write failures (it would do so on stderr with `eprintln!`, which
//! panics when stderr is broken too).
//!
//! Tokens are never logged: the development token goes to a file (see `horizon serve`).

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per record.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The filter for a `log_level` value. A bare level applies to Horizon's own targets, with the
/// libraries it uses kept at `warn` (or quieter, if the level is quieter); anything else is taken
/// as `RUST_LOG`-style directives. `None`: `RUST_LOG`, else `info`.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, String> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let text = match (level, from_env) {
        (Some(level), _) => level.trim().to_string(),
        (None, Some(env)) => return EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG: {e}")),
        (None, None) => "info".to_string(),
    };
    let directives = match text.to_ascii_lowercase().as_str() {
        quiet @ ("off" | "error" | "warn") => quiet.to_string(),
        level @ ("info" | "debug" | "trace") => format!("warn,horizon={level}"),
        _ => text.clone(),
    };
    if directives.is_empty() {
        return Err("empty filter".to_string());
    }
    EnvFilter::try_new(&directives).map_err(|e| e.to_string())
}

/// Installs the global subscriber. Call once, as early as the node id is known.
pub fn init(level: Option<&str>, format: LogFormat, node: &str) -> Result<(), String> {
    // `try_init` also routes the records of libraries that use the `log` crate.
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(SafeStdout)
        .event_format(Lines {
            node: node.to_string(),
            json: format == LogFormat::Json,
        })
        .log_internal_errors(false);
    tracing_subscriber::registry()
        .with(filter(level)?)
        .with(lines)
        .try_init()
        .map_err(|e| e.to_string())
}

/// Standard output that never reports an error: a lost line is better than a dead gateway.
struct SafeStdout;

struct SafeWriter;

impl std::io::Write for SafeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf);
        let _ = out.flush();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SafeStdout {
    type Writer = SafeWriter;

    fn make_writer(&'a self) -> SafeWriter {
        SafeWriter
    }
}

/// One record per line, text or JSON.
struct Lines {
    node: String,
    json: bool,
}

/// The message and the other fields of an event.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.rest.push((field.name(), text));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut time = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        // `log` records arrive with target `log` and their own target as a field.
        let target = fields
            .rest
            .iter()
            .find(|(k, _)| *k == "log.target")
            .map_or(meta.target().to_string(), |(_, v)| v.clone());
        fields.rest.retain(|(k, _)| !k.starts_with("log."));
        let level = level_name(meta.level());
        if self.json {
            // Written field by field so that the order is stable: ts, level, node, target, msg.
            let text = |v: &str| serde_json::Value::from(v).to_string();
            write!(
                writer,
                "{{\"ts\":{},\"level\":{},\"node\":{},\"target\":{},\"msg\":{}",
                text(&time),
                text(level),
                text(&self.node),
                text(&target),
                text(&fields.message)
            )?;
            for (key, value) in fields.rest {
                write!(writer, ",{}:{}", text(key), text(&value))?;
            }
            writeln!(writer, "}}")
        } else {
            // One record, one line: line breaks inside a message are written as `\n`.
            let one_line = |v: &str| v.replace('\n', "\\n");
            write!(
                writer,
                "{time} {level:>5} {} {target}: {}",
                self.node,
                one_line(&fields.message)
            )?;
            for (key, value) in fields.rest {
                write!(writer, " {key}={}", one_line(&value))?;
            }
            writeln!(writer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_libraries_at_warn_and_directives_pass_through() {
        assert_eq!(
            filter(Some("debug")).unwrap().to_string(),
            "horizon=debug,warn"
        );
        assert_eq!(filter(Some("error")).unwrap().to_string(), "error");
        assert!(filter(Some("horizon::webhooks=trace,info")).is_ok());
        assert!(filter(Some("=[")).is_err());
        assert!(filter(Some("")).is_err());
    }
}

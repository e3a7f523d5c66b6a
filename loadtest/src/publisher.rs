//! The publisher: events at a fixed rate into RabbitMQ (with publisher confirms) or through
//! Horizon's REST API, each stamped with its sequence number and send time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use crate::cli::{Options, Target};
use crate::events;

#[derive(Debug, Default)]
pub struct Published {
    pub count: u64,
    pub nacked: u64,
    pub errors: Vec<String>,
    pub elapsed: Duration,
    pub started_ns: u64,
}

/// Publishes `rate * duration` events; `progress` counts them as they go.
pub fn run(options: &Options, progress: Arc<AtomicU64>) -> Published {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return Published {
                errors: vec![e.to_string()],
                ..Default::default()
            }
        }
    };
    runtime.block_on(async {
        let result = if options.publish_rest {
            rest(options, &progress).await
        } else {
            amqp(options, &progress).await
        };
        result.unwrap_or_else(|e| Published {
            errors: vec![e],
            ..Default::default()
        })
    })
}

/// The call event of event number `i`: each account cycles through `--events`.
fn event_of(options: &Options, i: u64) -> &str {
    &options.events[((i / options.accounts as u64) % options.events.len() as u64) as usize]
}

fn total(options: &Options) -> u64 {
    options.rate * options.duration.as_secs()
}

/// Sleeps until event `i` is due.
async fn pace(start: Instant, i: u64, rate: u64) {
    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
    let now = Instant::now();
    if due > now {
        tokio::time::sleep(due - now).await;
    }
}

/// A connection to the broker and a channel on it in publisher-confirm mode.
pub async fn confirmed_channel(url: &str) -> Result<(Connection, lapin::Channel), String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| format!("publisher: cannot connect to {url}: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, channel))
}

async fn amqp(options: &Options, progress: &AtomicU64) -> Result<Published, String> {
    let (connection, channel) = confirmed_channel(&options.amqp_url).await?;
    let exchange = match options.target {
        Target::Horizon => "callevt",
        Target::MqttWs => "amq.topic",
    };
    if options.target == Target::Horizon {
        // As Kazoo declares it, unless it exists (a failed passive declare closes its channel).
        let probe = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        if probe
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_err()
        {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut out = Published {
        started_ns: events::now_ns(),
        ..Default::default()
    };
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for i in 0..total(options) {
        pace(start, i, options.rate).await;
        let account = events::account(events::account_of(i, options.accounts));
        let event = event_of(options, i);
        let key = match options.target {
            Target::Horizon => format!("call.{event}.lt-{i}"),
            Target::MqttWs => format!("call.{account}.{event}.lt-{i}"),
        };
        let body = events::payload(i, &account, event, options.payload_bytes);
        let confirm = channel
            .basic_publish(
                exchange.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        pending.push_back(confirm);
        while pending.len() > 2000 {
            if let Some(confirm) = pending.pop_front() {
                if !matches!(confirm.await, Ok(c) if c.is_ack()) {
                    out.nacked += 1;
                }
            }
        }
        out.count += 1;
        progress.store(out.count, Relaxed);
    }
    for confirm in pending {
        if !matches!(confirm.await, Ok(c) if c.is_ack()) {
            out.nacked += 1;
        }
    }
    out.elapsed = start.elapsed();
    let _ = connection.close(200, "done".into()).await;
    Ok(out)
}

async fn rest(options: &Options, progress: &AtomicU64) -> Result<Published, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let token = crate::worker::jwt(&options.jwt_secret, "ltpublisher", true);
    let stream = tokio::net::TcpStream::connect(options.api_addr)
        .await
        .map_err(|e| format!("publisher: REST API at {}: {e}", options.api_addr))?;
    let mut stream = BufReader::new(stream);
    let mut out = Published {
        started_ns: events::now_ns(),
        ..Default::default()
    };
    let start = Instant::now();
    for i in 0..total(options) {
        pace(start, i, options.rate).await;
        let account = events::account(events::account_of(i, options.accounts));
        let event = event_of(options, i);
        let payload =
            String::from_utf8_lossy(&events::payload(i, &account, event, options.payload_bytes))
                .into_owned();
        let body = format!(
            r#"{{"exchange":"callevt","routing_key":"call.{event}.lt-{i}","payload":{payload}}}"#
        );
        let request = format!(
            "POST /v2/events HTTP/1.1\r\nHost: horizon\r\nX-Auth-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        stream
            .read_line(&mut status)
            .await
            .map_err(|e| e.to_string())?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0; length];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if !status.contains(" 200 ") {
            out.nacked += 1;
            if out.errors.len() < 3 {
                out.errors.push(format!(
                    "{} {}",
                    status.trim(),
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        out.count += 1;
        progress.store(out.count, Relaxed);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

//! `horizon-loadtest webhooks`: a webhook receiver on loopback, `--hooks` hooks created through
//! the crossbar API (all pointing at it), and `--rate` CHANNEL_CREATE events per second
//! published to RabbitMQ for `--duration` seconds. Every event fans out to every hook, so the
//! receiver must get `events x hooks` requests: it counts them by `webhook-id` (lost,
//! duplicated), measures publish-to-request latency (the call id carries the publish time, same
//! machine clock) and the delivery rate. `--outage-at S --outage-secs D` closes the receiver's
//! port for a while mid-run (retries must bring everything in); `--drain` is how long to wait for
//! the last deliveries. The gateway must allow private targets
//! (`webhooks_allow_private_targets = true`): the receiver is on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Options {
    api: String,
    amqp_url: String,
    token: String,
    account: String,
    hooks: usize,
    retries: u64,
    rate: u64,
    duration: u64,
    outage_at: Option<u64>,
    outage_secs: u64,
    drain: u64,
    receiver: String,
}

/// `horizon-loadtest webhooks` and its options; `--help` shows each default.
pub fn command() -> clap::Command {
    use clap::{Arg, Command};
    let opt = |name: &'static str, default: Option<&'static str>, help: &'static str| {
        let arg = Arg::new(name)
            .long(name)
            .value_name("VALUE")
            .env(crate::cli::env_name(name))
            .help(help);
        match default {
            Some(default) => arg.default_value(default),
            None => arg,
        }
    };
    Command::new("webhooks")
        .about("Hooks pointing at a loopback receiver; counts lost and duplicated deliveries, latency and rate")
        .args_override_self(true)
        .arg(opt("api", Some("127.0.0.1:8000"), "Horizon's REST API"))
        .arg(opt("amqp-url", Some("amqp://guest:guest@127.0.0.1:5672/%2f"), "the broker events are published to"))
        .arg(opt("token", None, "a token that may manage the account's hooks (required)").required(true))
        .arg(opt("account", None, "the account the hooks and events belong to (required)").required(true))
        .arg(opt("hooks", Some("1000"), "hooks created, all pointing at the receiver"))
        .arg(opt("retries", Some("5"), "each hook's retries"))
        .arg(opt("rate", Some("10"), "events published per second"))
        .arg(opt("duration", Some("10"), "seconds of publishing"))
        .arg(opt("outage-at", None, "close the receiver's port this many seconds in [default: no outage]"))
        .arg(opt("outage-secs", Some("0"), "how long the receiver stays closed"))
        .arg(opt("drain", Some("30"), "seconds to wait for the last deliveries"))
        .arg(opt("receiver", Some("127.0.0.1:0"), "the receiver's listen address (loopback)"))
}

fn parse(m: &clap::ArgMatches) -> Result<Options, String> {
    let text = |key: &str| crate::cli::text(m, key);
    let number = |key: &str| crate::cli::number(m, key);
    Ok(Options {
        api: text("api"),
        amqp_url: text("amqp-url"),
        token: text("token"),
        account: text("account"),
        hooks: number("hooks")? as usize,
        retries: number("retries")?,
        rate: number("rate")?.max(1),
        duration: number("duration")?,
        outage_at: match m.get_one::<String>("outage-at") {
            Some(_) => Some(number("outage-at")?),
            None => None,
        },
        outage_secs: number("outage-secs")?,
        drain: number("drain")?,
        receiver: text("receiver"),
    })
}

#[derive(Default)]
struct Seen {
    /// Requests per webhook-id.
    ids: HashMap<String, u32>,
    latencies_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

pub fn main(matches: &clap::ArgMatches) -> i32 {
    let options = match parse(matches) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("horizon-loadtest webhooks: {e}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("horizon-loadtest webhooks: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("horizon-loadtest webhooks: {e}");
            1
        }
    }
}

async fn run(o: Options) -> Result<(), String> {
    let listener = TcpListener::bind(&o.receiver)
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut server = Some(tokio::spawn(receive(listener, seen.clone())));

    // Hooks.
    let mut hook_ids = Vec::with_capacity(o.hooks);
    for i in 0..o.hooks {
        let body = format!(
            r#"{{"data":{{"name":"lt-{i}","hook":"channel_create","uri":"http://{addr}/hook/{i}","retries":{}}}}}"#,
            o.retries
        );
        let (status, answer) = call(
            &o.api,
            "PUT",
            &format!("/v2/accounts/{}/webhooks", o.account),
            &o.token,
            &body,
        )
        .await?;
        if status != 201 {
            return Err(format!("creating hook {i}: {status} {answer}"));
        }
        let id = answer
            .split("\"id\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        hook_ids.push(id);
    }
    eprintln!(
        "{} hooks created; publishing {} events/s for {} s",
        o.hooks, o.rate, o.duration
    );

    // Events.
    let (_connection, channel) = crate::publisher::confirmed_channel(&o.amqp_url).await?;
    let started = Instant::now();
    let total = o.rate * o.duration;
    let mut outage_done = false;
    for n in 0..total {
        let due = started + Duration::from_micros(n * 1_000_000 / o.rate);
        tokio::time::sleep_until(due.into()).await;
        if let (Some(at), false) = (o.outage_at, outage_done) {
            if started.elapsed() >= Duration::from_secs(at) {
                outage_done = true;
                if let Some(task) = server.take() {
                    task.abort();
                }
                eprintln!("receiver down for {} s", o.outage_secs);
                let seen = seen.clone();
                let bind = addr;
                let outage = Duration::from_secs(o.outage_secs);
                server = Some(tokio::spawn(async move {
                    tokio::time::sleep(outage).await;
                    loop {
                        if let Ok(listener) = TcpListener::bind(bind).await {
                            eprintln!("receiver up again");
                            receive(listener, seen).await;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }));
            }
        }
        let sent_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let call_id = format!("lt-{n}-{sent_ns}");
        let body = format!(
            r#"{{"Event-Name":"CHANNEL_CREATE","Event-Category":"call_event","Call-ID":"{call_id}","Call-Direction":"inbound","Caller-ID-Number":"+15551230000","Custom-Channel-Vars":{{"Account-ID":"{}"}},"Msg-ID":"{n}"}}"#,
            o.account
        );
        channel
            .basic_publish(
                "callevt".into(),
                format!("call.CHANNEL_CREATE.{call_id}").as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let published = started.elapsed();
    let expected = total as usize * o.hooks;
    let deadline = Instant::now() + Duration::from_secs(o.drain);
    loop {
        let unique = seen.lock().map(|s| s.ids.len()).unwrap_or(0);
        if unique >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more, so that late duplicates are counted too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report(&o, &seen, total, expected, published)?;
    // Leave the gateway as it was.
    for id in hook_ids {
        let _ = call(
            &o.api,
            "DELETE",
            &format!("/v2/accounts/{}/webhooks/{id}", o.account),
            &o.token,
            "",
        )
        .await;
    }
    Ok(())
}

/// Prints the run's report (JSON) from what the receiver saw.
fn report(
    o: &Options,
    seen: &Mutex<Seen>,
    total: u64,
    expected: usize,
    published: Duration,
) -> Result<(), String> {
    let seen = seen.lock().map_err(|_| "poisoned")?;
    let unique = seen.ids.len();
    let requests: u64 = seen.ids.values().map(|n| u64::from(*n)).sum();
    let duplicates = requests - unique as u64;
    let mut lat = seen.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let span = match (seen.first, seen.last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    println!(
        "{{\"scenario\":\"webhooks\",\"hooks\":{},\"events\":{total},\"published_secs\":{:.2},\"expected\":{expected},\"delivered\":{unique},\"lost\":{},\"duplicates\":{duplicates},\"deliveries_per_sec\":{:.0},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}}}}",
        o.hooks,
        published.as_secs_f64(),
        expected.saturating_sub(unique),
        if span > 0.0 { requests as f64 / span } else { 0.0 },
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat.last().copied().unwrap_or(0),
    );
    Ok(())
}

/// A minimal HTTP/1.1 receiver (keep-alive, Content-Length bodies): answers 200 to everything and
/// records each request's `webhook-id` and publish-to-arrival latency.
async fn receive(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        connections.spawn(async move {
            let _ = serve(stream, seen).await;
        });
    }
}

async fn serve(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) -> std::io::Result<()> {
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
        buffer.drain(..head_end + length);
        let now = Instant::now();
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let sent_ns: Option<u128> = body
            .split('&')
            .find_map(|p| p.strip_prefix("call_id="))
            .and_then(|id| id.rsplit('-').next())
            .and_then(|ns| ns.parse().ok());
        if let Ok(mut s) = seen.lock() {
            if let Some(id) = header("webhook-id") {
                *s.ids.entry(id).or_default() += 1;
            }
            if let Some(sent) = sent_ns {
                s.latencies_us
                    .push((now_ns.saturating_sub(sent) / 1000) as u64);
            }
            s.first.get_or_insert(now);
            s.last = Some(now);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
}

/// One API request over a fresh connection: status and body.
async fn call(
    api: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(api)
        .await
        .map_err(|e| format!("API {api}: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: horizon\r\nConnection: close\r\nX-Auth-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

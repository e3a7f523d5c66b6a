//! `horizon-loadtest storm`: a reconnect storm, as a deploy or a node's death makes one.
//! `--clients` Monster-UI-style clients start on the victim node (`--victim`); when it closes
//! their sockets (a drain) or dies, each reconnects to the survivor (`--survivor`, standing for
//! the load balancer's other nodes) the way Monster UI does: 250 ms after the close, then
//! doubling after each failed attempt, without jitter. Meanwhile `--watchers` clients that were on
//! the survivor all along receive `--rate` events per second, published through RabbitMQ. The
//! wrapper (`loadtest/storm.sh`) drains or kills the victim mid-run.
//!
//! The report (JSON on stdout): the survivor's new connections per 100 ms and the peak per
//! second, upgrades refused (503) and failed attempts, the time from the first close until every
//! moved client is subscribed again, and the watchers' publish-to-receive latency before and
//! during the storm.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::events;
use crate::ws::{Client, Frame};

/// 100 ms buckets of the survivor's new connections, for this many seconds at most.
const TIMELINE_SECS: usize = 600;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(16);

struct Options {
    victim: SocketAddr,
    survivor: SocketAddr,
    clients: usize,
    watchers: usize,
    accounts: usize,
    rate: u64,
    duration: u64,
    threads: usize,
    amqp_url: String,
    jwt_secret: String,
    source_ips: Vec<IpAddr>,
}

/// `horizon-loadtest storm` and its options; `--help` shows each default.
pub fn command() -> clap::Command {
    use clap::{Arg, Command};
    let opt = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("VALUE")
            .env(crate::cli::env_name(name))
            .default_value(default)
            .help(help)
    };
    Command::new("storm")
        .about("Monster-UI-style clients move from a drained or killed node to a survivor: peak connects/s, the survivor's delivery p99")
        .args_override_self(true)
        .arg(opt("victim", "127.0.0.1:18401", "the node whose clients move (drained or killed by the wrapper)"))
        .arg(opt("survivor", "127.0.0.1:18411", "the node they move to, and where the watchers are"))
        .arg(opt("clients", "10000", "clients that start on the victim"))
        .arg(opt("watchers", "500", "clients on the survivor whose delivery latency is measured"))
        .arg(opt("accounts", "100", "accounts the clients and events are spread over"))
        .arg(opt("rate", "200", "events published per second (through RabbitMQ)"))
        .arg(opt("duration", "40", "seconds the run lasts"))
        .arg(opt("threads", "2", "client runtimes"))
        .arg(opt("amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f", "the broker events are published to"))
        .arg(opt("jwt-secret", "loadtest-secret", "HS256 secret of both nodes"))
        .arg(opt("source-ips", "127.0.0.1", "loopback source addresses, round-robin (e.g. 127.0.0.2-127.0.0.9)"))
}

fn parse(m: &clap::ArgMatches) -> Result<Options, String> {
    let text = |key: &str| crate::cli::text(m, key);
    let number = |key: &str| crate::cli::number(m, key);
    let addr = |key: &str| {
        text(key)
            .parse::<SocketAddr>()
            .map_err(|_| format!("--{key}: expected host:port"))
    };
    Ok(Options {
        victim: addr("victim")?,
        survivor: addr("survivor")?,
        clients: number("clients")? as usize,
        watchers: number("watchers")? as usize,
        accounts: number("accounts")?.max(1) as usize,
        rate: number("rate")?.max(1),
        duration: number("duration")?.clamp(5, 3600),
        threads: number("threads")?.clamp(1, 64) as usize,
        amqp_url: text("amqp-url"),
        jwt_secret: text("jwt-secret"),
        source_ips: crate::cli::ip_range(&text("source-ips"))?,
    })
}

/// What every client thread shares.
struct Shared {
    started: Instant,
    stop: AtomicBool,
    /// Survivor upgrades by 100 ms bucket since `started` (moved clients only).
    timeline: Vec<AtomicU64>,
    /// When the victim first closed a socket (ms since `started`, 0: not yet).
    storm_at: AtomicU64,
    /// Moved clients subscribed again on the survivor.
    moved: AtomicU64,
    /// When the last of them did (ms since `started`).
    all_moved_at: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    clients: u64,
    /// Watchers' latency (µs): before the storm, during it (until every client moved).
    before: Mutex<Histogram<u64>>,
    during: Mutex<Histogram<u64>>,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn storm_on(&self) -> bool {
        self.storm_at.load(Relaxed) != 0 && self.all_moved_at.load(Relaxed) == 0
    }
}

pub fn run(m: &clap::ArgMatches) -> Result<String, String> {
    let o = Arc::new(parse(m)?);
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let shared = Arc::new(Shared {
        started: Instant::now(),
        stop: AtomicBool::new(false),
        timeline: (0..TIMELINE_SECS * 10).map(|_| AtomicU64::new(0)).collect(),
        storm_at: AtomicU64::new(0),
        moved: AtomicU64::new(0),
        all_moved_at: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        clients: o.clients as u64,
        before: Mutex::new(histogram()),
        during: Mutex::new(histogram()),
    });
    let publisher = {
        let (o, shared) = (o.clone(), shared.clone());
        std::thread::spawn(move || publish(&o, &shared))
    };
    let threads: Vec<_> = (0..o.threads)
        .map(|t| {
            let (o, shared) = (o.clone(), shared.clone());
            std::thread::spawn(move || clients_thread(&o, &shared, t))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(o.duration));
    shared.stop.store(true, Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let published = publisher.join().unwrap_or(Ok(0))?;
    Ok(report(&o, &shared, published))
}

/// Publishes `--rate` events a second for the watchers' accounts until the run stops.
fn publish(o: &Options, shared: &Shared) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (_connection, channel) = crate::publisher::confirmed_channel(&o.amqp_url).await?;
        let mut seq = 0u64;
        let start = Instant::now();
        while !shared.stop.load(Relaxed) {
            let due = start + Duration::from_secs_f64(seq as f64 / o.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let account = events::account(events::account_of(seq, o.accounts));
            let body = events::payload(seq, &account, "CHANNEL_CREATE", 256);
            let key = format!("call.CHANNEL_CREATE.lt-{seq}");
            let _ = channel
                .basic_publish(
                    "callevt".into(),
                    key.as_str().into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await;
            seq += 1;
        }
        Ok(seq)
    })
}

fn clients_thread(o: &Arc<Options>, shared: &Arc<Shared>, t: usize) {
    let mut runtime = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("storm: runtime: {e}");
            return;
        }
    };
    runtime.block_on(async {
        let tokens: Rc<RefCell<std::collections::HashMap<usize, String>>> = Rc::default();
        let mut tasks = Vec::new();
        let total = o.clients + o.watchers;
        for c in (t..total).step_by(o.threads) {
            let account = c % o.accounts;
            let token = tokens
                .borrow_mut()
                .entry(account)
                .or_insert_with(|| {
                    crate::worker::jwt(&o.jwt_secret, &events::account(account), false)
                })
                .clone();
            let source = o.source_ips.get(c % o.source_ips.len().max(1)).copied();
            let watcher = c >= o.clients;
            let (o, shared) = (o.clone(), shared.clone());
            tasks.push(monoio::spawn(async move {
                client(&o, &shared, source, token, watcher).await
            }));
            // Ramp: a few hundred a second per thread, so the start is not itself a storm.
            if c % 64 == 0 {
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for task in tasks {
            task.await;
        }
    });
}

/// One Monster-UI-style client: on the victim (or, a watcher, on the survivor) until its socket
/// closes, then on the survivor, retrying 250 ms after a close and doubling after each failure.
async fn client(
    o: &Options,
    shared: &Shared,
    source: Option<IpAddr>,
    token: String,
    watcher: bool,
) {
    let mut target = if watcher { o.survivor } else { o.victim };
    let mut retry = FIRST_RETRY;
    let subscribe = format!(
        r#"{{"action":"subscribe","auth_token":"{token}","request_id":"s","data":{{"binding":"call.CHANNEL_CREATE.*"}}}}"#
    );
    while !shared.stop.load(Relaxed) {
        let connected = Client::connect(source, target, "/", None).await;
        let mut ws = match connected {
            Ok(ws) => ws,
            Err(e) => {
                if e.to_string().contains(" 503 ") {
                    shared.refused.fetch_add(1, Relaxed);
                } else {
                    shared.failed.fetch_add(1, Relaxed);
                }
                if target == o.victim {
                    // The balancer no longer sends anyone there.
                    target = o.survivor;
                }
                monoio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        let moved = !watcher && target == o.survivor;
        if moved {
            let bucket = (shared.ms() / 100) as usize;
            if let Some(slot) = shared.timeline.get(bucket) {
                slot.fetch_add(1, Relaxed);
            }
        }
        if ws.send(0x1, subscribe.as_bytes()).await.is_err() {
            continue;
        }
        if moved && shared.moved.fetch_add(1, Relaxed) + 1 == shared.clients {
            shared.all_moved_at.store(shared.ms().max(1), Relaxed);
        }
        // Read until the socket ends (a drain's close, the node's death) or the run stops.
        loop {
            if shared.stop.load(Relaxed) {
                return;
            }
            match monoio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Err(_) => continue,
                Ok(Ok(Some(Frame::Text(text)))) => {
                    if watcher {
                        if let Some((_, _, sent)) = events::stamp(&text) {
                            let micros = events::now_ns().saturating_sub(sent) / 1000;
                            let during = shared.storm_on();
                            let histogram = if during {
                                &shared.during
                            } else {
                                &shared.before
                            };
                            if shared.storm_at.load(Relaxed) == 0 || during {
                                let _ = histogram
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .record(micros.max(1));
                            }
                        }
                    }
                }
                Ok(Ok(Some(Frame::Close(_)))) | Ok(Ok(None)) | Ok(Err(_)) => break,
                Ok(Ok(Some(_))) => {}
            }
        }
        if target == o.victim {
            let _ = shared
                .storm_at
                .compare_exchange(0, shared.ms().max(1), Relaxed, Relaxed);
            target = o.survivor;
        }
        // Monster UI: the first retry 250 ms after the close.
        monoio::time::sleep(FIRST_RETRY).await;
    }
}

fn report(o: &Options, shared: &Shared, published: u64) -> String {
    let buckets: Vec<u64> = shared.timeline.iter().map(|b| b.load(Relaxed)).collect();
    let last = buckets.iter().rposition(|b| *b > 0).map_or(0, |i| i + 1);
    let peak = (0..last.max(1))
        .map(|i| buckets[i..(i + 10).min(buckets.len())].iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let storm_at = shared.storm_at.load(Relaxed);
    let all_moved_at = shared.all_moved_at.load(Relaxed);
    let percentiles = |h: &Mutex<Histogram<u64>>| {
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            r#"{{"count":{},"p50":{:.3},"p99":{:.3},"max":{:.3}}}"#,
            h.len(),
            ms(0.5),
            ms(0.99),
            h.max() as f64 / 1000.0
        )
    };
    let first = storm_at as usize / 100;
    let timeline: Vec<String> = buckets[first.min(last)..last]
        .iter()
        .map(u64::to_string)
        .collect();
    format!(
        r#"{{"scenario":"storm","clients":{},"watchers":{},"published":{published},"moved":{},"storm_at_ms":{storm_at},"all_moved_after_ms":{},"peak_connects_per_sec":{peak},"refused_503":{},"failed_attempts":{},"latency_before_ms":{},"latency_during_ms":{},"survivor_connects_per_100ms_from_storm":[{}]}}"#,
        o.clients,
        o.watchers,
        shared.moved.load(Relaxed),
        if all_moved_at != 0 && storm_at != 0 {
            (all_moved_at - storm_at).to_string()
        } else {
            "null".to_string()
        },
        shared.refused.load(Relaxed),
        shared.failed.load(Relaxed),
        percentiles(&shared.before),
        percentiles(&shared.during),
        timeline.join(",")
    )
}

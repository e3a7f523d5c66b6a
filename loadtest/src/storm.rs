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
//!
//! `horizon-loadtest resume` is the same run with positions (docs/resume.md; the nodes run
//! `history = "stream"`): every client subscribes with `resume_from` ("latest" at first), keeps
//! the last position it saw, and after the victim's death resumes from it on a survivor
//! (`--survivor` may list several: clients spread over them). Every client checks its account's
//! numbered events as they come: the report counts events lost, duplicated and out of order
//! across the move (all must be 0), resumes not recovered, and the time from the first close
//! until every moved client's resume was answered (it is live again). Publishing stops
//! `--drain` seconds before the end so that the last events can arrive.

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
    /// Where moved clients go, round-robin; the watchers are on the first.
    survivors: Vec<SocketAddr>,
    /// `resume`: clients resume from their last position and check every event.
    resume: bool,
    drain: u64,
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
    scenario(
        "storm",
        "Monster-UI-style clients move from a drained or killed node to a survivor: peak connects/s, the survivor's delivery p99",
        "0",
    )
}

/// `horizon-loadtest resume`: the storm with positions; `--help` shows each default.
pub fn resume_command() -> clap::Command {
    scenario(
        "resume",
        "Clients of a killed node resume from their last position on the survivors: events lost, duplicated, reordered (all must be 0), time until all are live",
        "5",
    )
}

fn scenario(name: &'static str, about: &'static str, drain: &'static str) -> clap::Command {
    use clap::{Arg, Command};
    let opt = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("VALUE")
            .env(crate::cli::env_name(name))
            .default_value(default)
            .help(help)
    };
    Command::new(name)
        .about(about)
        .args_override_self(true)
        .arg(opt("victim", "127.0.0.1:18401", "the node whose clients move (drained or killed by the wrapper)"))
        .arg(opt("survivor", "127.0.0.1:18411", "the node(s) they move to (comma-separated: round-robin); the watchers are on the first"))
        .arg(opt("clients", "10000", "clients that start on the victim"))
        .arg(opt("watchers", "500", "clients on the survivor whose delivery latency is measured"))
        .arg(opt("accounts", "100", "accounts the clients and events are spread over"))
        .arg(opt("rate", "200", "events published per second (through RabbitMQ)"))
        .arg(opt("duration", "40", "seconds the run lasts"))
        .arg(opt("drain", drain, "publishing stops this many seconds before the end (the last events arrive)"))
        .arg(opt("threads", "2", "client runtimes"))
        .arg(opt("amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f", "the broker events are published to"))
        .arg(opt("jwt-secret", "loadtest-secret", "HS256 secret of both nodes"))
        .arg(opt("source-ips", "127.0.0.1", "loopback source addresses, round-robin (e.g. 127.0.0.2-127.0.0.9)"))
}

fn parse(m: &clap::ArgMatches, resume: bool) -> Result<Options, String> {
    let text = |key: &str| crate::cli::text(m, key);
    let number = |key: &str| crate::cli::number(m, key);
    let addr = |key: &str| {
        text(key)
            .parse::<SocketAddr>()
            .map_err(|_| format!("--{key}: expected host:port"))
    };
    let survivors = text("survivor")
        .split(',')
        .map(|a| a.trim().parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "--survivor: expected host:port[,host:port...]".to_string())?;
    let duration = number("duration")?.clamp(5, 3600);
    Ok(Options {
        victim: addr("victim")?,
        survivors,
        resume,
        drain: number("drain")?.min(duration - 1),
        clients: number("clients")? as usize,
        watchers: number("watchers")? as usize,
        accounts: number("accounts")?.max(1) as usize,
        rate: number("rate")?.max(1),
        duration,
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
    /// Events published, once publishing has stopped (0 before).
    published: AtomicU64,
    /// `resume`: what the clients' checks found.
    check: Check,
}

/// `resume`: every client's account events, checked as they come.
#[derive(Default)]
struct Check {
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    /// Clients that had no event at all to check.
    silent: AtomicU64,
    checked: AtomicU64,
}

/// One client's view of its account's numbered events (seq `a`, `a + step`, ...).
struct Sequence {
    step: u64,
    last: Option<u64>,
    /// The position of the last frame that had one (what a resume starts from).
    position: String,
}

impl Sequence {
    fn event(&mut self, seq: u64, check: &Check) {
        check.checked.fetch_add(1, Relaxed);
        match self.last {
            Some(last) if seq == last => {
                check.duplicated.fetch_add(1, Relaxed);
            }
            Some(last) if seq < last => {
                check.reordered.fetch_add(1, Relaxed);
            }
            Some(last) => {
                check.lost.fetch_add((seq - last) / self.step - 1, Relaxed);
                self.last = Some(seq);
            }
            None => self.last = Some(seq),
        }
    }

    /// At the end: what the client should have had last, given `published` events.
    fn finish(&self, account: u64, published: u64, check: &Check) {
        let Some(last) = self.last else {
            check.silent.fetch_add(1, Relaxed);
            return;
        };
        if published > account {
            let expected = account + (published - 1 - account) / self.step * self.step;
            if expected > last {
                check.lost.fetch_add((expected - last) / self.step, Relaxed);
            }
        }
    }
}

impl Shared {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn storm_on(&self) -> bool {
        self.storm_at.load(Relaxed) != 0 && self.all_moved_at.load(Relaxed) == 0
    }
}

pub fn run(m: &clap::ArgMatches, resume: bool) -> Result<String, String> {
    let o = Arc::new(parse(m, resume)?);
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
        published: AtomicU64::new(0),
        check: Check::default(),
    });
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let (o, publishing) = (o.clone(), publishing.clone());
        std::thread::spawn(move || publish(&o, &publishing))
    };
    // The watchers have a runtime of their own: their latency is not their frames waiting
    // behind the moved clients' replays in the same load thread.
    let threads: Vec<_> = (0..=o.threads)
        .map(|t| {
            let (o, shared) = (o.clone(), shared.clone());
            let ours: Vec<usize> = if t == o.threads {
                (o.clients..o.clients + o.watchers).collect()
            } else {
                (t..o.clients).step_by(o.threads).collect()
            };
            std::thread::spawn(move || clients_thread(&o, &shared, ours))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(o.duration - o.drain));
    publishing.store(false, Relaxed);
    let published = publisher.join().unwrap_or(Ok(0))?;
    shared.published.store(published, Relaxed);
    std::thread::sleep(Duration::from_secs(o.drain));
    shared.stop.store(true, Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(report(&o, &shared, published))
}

/// Publishes `--rate` events a second for the clients' accounts while `publishing`, each
/// confirmed by the broker before the run counts it.
fn publish(o: &Options, publishing: &AtomicBool) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (_connection, channel) = crate::publisher::confirmed_channel(&o.amqp_url).await?;
        let mut seq = 0u64;
        let start = Instant::now();
        while publishing.load(Relaxed) {
            let due = start + Duration::from_secs_f64(seq as f64 / o.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let account = events::account(events::account_of(seq, o.accounts));
            let body = events::payload(seq, &account, "CHANNEL_CREATE", 256);
            let key = format!("call.CHANNEL_CREATE.lt-{seq}");
            let confirm = channel
                .basic_publish(
                    "callevt".into(),
                    key.as_str().into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await;
            // A publish the broker did not take is not counted (it is retried as the same seq).
            let acked = match confirm {
                Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack()),
                Err(_) => false,
            };
            if !acked {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            seq += 1;
        }
        Ok(seq)
    })
}

fn clients_thread(o: &Arc<Options>, shared: &Arc<Shared>, ours: Vec<usize>) {
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
        for c in ours {
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
                client(&o, &shared, (c, source), token, watcher).await
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
/// closes, then on a survivor, retrying 250 ms after a close and doubling after each failure.
/// With `--resume` (`horizon-loadtest resume`) it subscribes with its last position and checks
/// its account's events.
async fn client(
    o: &Options,
    shared: &Shared,
    (c, source): (usize, Option<IpAddr>),
    token: String,
    watcher: bool,
) {
    let survivor = o.survivors[if watcher { 0 } else { c % o.survivors.len() }];
    let mut target = if watcher { survivor } else { o.victim };
    let mut retry = FIRST_RETRY;
    let account = (c % o.accounts) as u64;
    let mut sequence = Sequence {
        step: o.accounts as u64,
        last: None,
        position: "latest".to_string(),
    };
    let checks = o.resume && !watcher;
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
                    target = survivor;
                }
                monoio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        retry = FIRST_RETRY;
        let moved = !watcher && target != o.victim;
        if moved {
            let bucket = (shared.ms() / 100) as usize;
            if let Some(slot) = shared.timeline.get(bucket) {
                slot.fetch_add(1, Relaxed);
            }
        }
        let resume = if checks {
            format!(r#","resume_from":"{}""#, sequence.position)
        } else {
            String::new()
        };
        let subscribe = format!(
            r#"{{"action":"subscribe","auth_token":"{token}","request_id":"s","data":{{"binding":"call.CHANNEL_CREATE.*"{resume}}}}}"#
        );
        if ws.send(0x1, subscribe.as_bytes()).await.is_err() {
            continue;
        }
        // Without positions a moved client counts once subscribed; with them, once its
        // resume is answered (what it missed comes right behind).
        let mut counted = !moved;
        if moved && !checks {
            count_moved(shared);
            counted = true;
        }
        // Read until the socket ends (a drain's close, the node's death) or the run stops.
        loop {
            if shared.stop.load(Relaxed) {
                if checks {
                    sequence.finish(account, shared.published.load(Relaxed), &shared.check);
                }
                return;
            }
            match monoio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Err(_) => continue,
                Ok(Ok(Some(Frame::Text(text)))) => {
                    if checks {
                        if let Some(position) = text_after(&text, b"\"position\":\"") {
                            sequence.position = position;
                        }
                        if !counted && find(&text, b"\"action\":\"reply\"") {
                            counted = true;
                            if find(&text, b"\"recovered\":true") {
                                shared.check.recovered.fetch_add(1, Relaxed);
                            } else {
                                shared.check.not_recovered.fetch_add(1, Relaxed);
                            }
                            count_moved(shared);
                        }
                    }
                    let Some((_, seq, sent)) = events::stamp(&text) else {
                        continue;
                    };
                    if checks {
                        sequence.event(seq, &shared.check);
                    }
                    if watcher {
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
                Ok(Ok(Some(Frame::Close(_)))) | Ok(Ok(None)) | Ok(Err(_)) => break,
                Ok(Ok(Some(_))) => {}
            }
        }
        if target == o.victim {
            let _ = shared
                .storm_at
                .compare_exchange(0, shared.ms().max(1), Relaxed, Relaxed);
            target = survivor;
        }
        // Monster UI: the first retry 250 ms after the close.
        monoio::time::sleep(FIRST_RETRY).await;
    }
    if checks {
        sequence.finish(account, shared.published.load(Relaxed), &shared.check);
    }
}

/// One more moved client is subscribed again (live); the last one stops the storm's clock.
fn count_moved(shared: &Shared) {
    if shared.moved.fetch_add(1, Relaxed) + 1 == shared.clients {
        shared.all_moved_at.store(shared.ms().max(1), Relaxed);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The string after `key` up to the next quote (positions are plain ASCII, no escapes).
fn text_after(frame: &[u8], key: &[u8]) -> Option<String> {
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let len = frame[at..].iter().position(|b| *b == b'"')?;
    (len <= 64).then(|| String::from_utf8_lossy(&frame[at..at + len]).into_owned())
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
    let check = &shared.check;
    let resume = if o.resume {
        format!(
            r#","resume":{{"recovered":{},"not_recovered":{},"events_checked":{},"lost":{},"duplicated":{},"reordered":{},"clients_without_events":{}}}"#,
            check.recovered.load(Relaxed),
            check.not_recovered.load(Relaxed),
            check.checked.load(Relaxed),
            check.lost.load(Relaxed),
            check.duplicated.load(Relaxed),
            check.reordered.load(Relaxed),
            check.silent.load(Relaxed),
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"scenario":"{}","clients":{},"watchers":{},"published":{published},"moved":{},"storm_at_ms":{storm_at},"all_moved_after_ms":{},"peak_connects_per_sec":{peak},"refused_503":{},"failed_attempts":{},"latency_before_ms":{},"latency_during_ms":{},"survivor_connects_per_100ms_from_storm":[{}]{resume}}}"#,
        if o.resume { "resume" } else { "storm" },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_counts_what_it_lost_got_twice_or_out_of_order() {
        let check = Check::default();
        // Account 2 of 5: its events are 2, 7, 12, 17, ...
        let mut s = Sequence {
            step: 5,
            last: None,
            position: String::new(),
        };
        for seq in [7, 12, 12, 22, 17, 27] {
            s.event(seq, &check);
        }
        assert_eq!(check.duplicated.load(Relaxed), 1);
        assert_eq!(check.reordered.load(Relaxed), 1);
        // 17 missing between 12 and 22 (it came late: reordered, and counted lost).
        assert_eq!(check.lost.load(Relaxed), 1);
        // 40 published: 32 and 37 never came.
        s.finish(2, 40, &check);
        assert_eq!(check.lost.load(Relaxed), 3);
        let fresh = Sequence {
            step: 5,
            last: None,
            position: String::new(),
        };
        fresh.finish(2, 40, &check);
        assert_eq!(check.silent.load(Relaxed), 1);
    }
}

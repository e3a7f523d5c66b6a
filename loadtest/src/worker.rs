//! A subscriber process: its share of the connections, on `threads` monoio runtimes, reporting to
//! the parent over stdin/stdout lines (`ready`, `progress`, `result`; the parent sends
//! `published N` or `stop`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::BufRead as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::{Options, Target};
use crate::events;
use crate::mqtt;
use crate::ws::{Client, Frame};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Connect,
    Churn,
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Connect => "connect",
            Scenario::Churn => "churn",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        match name {
            "fanout" => Some(Scenario::Fanout),
            "connect" => Some(Scenario::Connect),
            "churn" => Some(Scenario::Churn),
            _ => None,
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 us .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Per connection: which of its accounts' events arrived.
struct ConnStats {
    /// Its own account (not a reseller), or its reseller number.
    account: usize,
    reseller: Option<usize>,
    distinct: u64,
    last_seq: Option<u64>,
    seen: Vec<u64>,
}

struct ThreadStats {
    latency: Histogram<u64>,
    connect_latency: Histogram<u64>,
    command_latency: Histogram<u64>,
    conns: Vec<ConnStats>,
    duplicates: u64,
    reordered: u64,
    cross_tenant: u64,
    failed: u64,
    closed: u64,
    commands: u64,
    command_errors: u64,
    /// Connect attempts that had to be repeated.
    retries: u64,
    errors: Vec<String>,
    timeline: HashMap<u64, u64>,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        ThreadStats {
            latency: histogram(),
            connect_latency: histogram(),
            command_latency: histogram(),
            conns: Vec::new(),
            duplicates: 0,
            reordered: 0,
            cross_tenant: 0,
            failed: 0,
            closed: 0,
            commands: 0,
            command_errors: 0,
            retries: 0,
            errors: Vec::new(),
            timeline: HashMap::new(),
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }
}

#[derive(Default)]
struct Shared {
    resellers: usize,
    attempted: AtomicU64,
    connected: AtomicU64,
    received: AtomicU64,
    stop: AtomicBool,
}

/// A Horizon JWT (HS256) for `account`, valid for a day.
/// A client token for `account`; `publisher`: may publish for every account (the REST publisher
/// publishes each account's events, which needs Kazoo's system-administrator flag).
pub fn jwt(secret: &str, account: &str, publisher: bool) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use hmac::Mac as _;
    let exp = events::now_ns() / 1_000_000_000 + 86_400;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"account_id":"{account}","publish":{publisher},"superduper_admin":{publisher},"exp":{exp}}}"#
    ));
    let signed = format!("{header}.{claims}");
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The subscribe and unsubscribe commands for one account: every `--events` binding at once on
/// Horizon (unsubscribe: the first), one MQTT topic filter for the first event.
fn binding(options: &Options, account: &str, event: &str) -> (String, String) {
    match options.target {
        Target::Horizon => {
            let bindings: Vec<String> = options
                .events
                .iter()
                .map(|e| format!("\"call.{e}.*\""))
                .collect();
            (
                format!(
                    r#"{{"action":"subscribe","request_id":"s","data":{{"account_id":"{account}","bindings":[{}]}}}}"#,
                    bindings.join(",")
                ),
                format!(
                    r#"{{"action":"unsubscribe","request_id":"u","data":{{"account_id":"{account}","binding":"call.{event}.*"}}}}"#
                ),
            )
        }
        Target::MqttWs => (
            format!("call/{account}/{event}/+"),
            format!("call/{account}/{event}/+"),
        ),
    }
}

/// How many of the first `published` events connection `conn` must receive.
fn expected_for(published: u64, options: &Options, conn: &ConnStats) -> u64 {
    match conn.reseller {
        Some(r) => (r..options.accounts)
            .step_by(options.resellers.max(1))
            .map(|a| events::expected(published, options.accounts, a))
            .sum(),
        None => events::expected(published, options.accounts, conn.account),
    }
}

/// Waits for the answer to a command, counting events that arrive meanwhile.
async fn answer(
    client: &mut Client,
    options: &Options,
    stats: &RefCell<ThreadStats>,
    slot: usize,
    accounts: usize,
    shared: &Shared,
    mqtt_buf: &mut Vec<u8>,
) -> Result<(), String> {
    loop {
        match client.next().await.map_err(|e| e.to_string())? {
            None => return Err("connection closed".into()),
            Some(Frame::Text(text)) => {
                if text.starts_with(b"{\"action\":\"reply\"") {
                    return if find(&text, b"\"status\":\"success\"") {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&text).into_owned())
                    };
                }
                record(&text, stats, slot, accounts, shared);
            }
            Some(Frame::Binary(bytes)) if options.target == Target::MqttWs => {
                mqtt_buf.extend_from_slice(&bytes);
                while let Some((packet, used)) = mqtt::parse(mqtt_buf)? {
                    mqtt_buf.drain(..used);
                    match packet {
                        mqtt::Packet::ConnAck(0)
                        | mqtt::Packet::SubAck
                        | mqtt::Packet::UnsubAck => return Ok(()),
                        mqtt::Packet::ConnAck(code) => {
                            return Err(format!("CONNACK refused: {code}"))
                        }
                        mqtt::Packet::Publish(payload) => {
                            record(&payload, stats, slot, accounts, shared)
                        }
                        mqtt::Packet::Other => {}
                    }
                }
            }
            Some(Frame::Close(code)) => return Err(format!("closed by the server: {code}")),
            Some(_) => {}
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One event frame (or MQTT payload) for connection `slot`.
fn record(
    frame: &[u8],
    stats: &RefCell<ThreadStats>,
    slot: usize,
    accounts: usize,
    shared: &Shared,
) {
    let Some((account, seq, sent_ns)) = events::stamp(frame) else {
        return;
    };
    let now = events::now_ns();
    let mut stats = stats.borrow_mut();
    let stats = &mut *stats;
    let conn = &mut stats.conns[slot];
    let a = events::account_of(seq, accounts);
    let (mine, index) = match conn.reseller {
        // A reseller's children are the accounts `a` with `a % resellers == r`: one bit per
        // (round of events, child).
        Some(r) => {
            let resellers = shared.resellers.max(1);
            let children = accounts.div_ceil(resellers);
            (
                a % resellers == r,
                (seq / accounts as u64) as usize * children + a / resellers,
            )
        }
        None => (a == conn.account, (seq / accounts as u64) as usize),
    };
    if !mine || account != events::account(a).as_bytes() {
        stats.cross_tenant += 1;
        return;
    }
    let (word, bit) = (index / 64, 1u64 << (index % 64));
    if conn.seen.len() <= word {
        conn.seen.resize(word + 1, 0);
    }
    if conn.seen[word] & bit != 0 {
        stats.duplicates += 1;
        return;
    }
    conn.seen[word] |= bit;
    conn.distinct += 1;
    if conn.last_seq.is_some_and(|last| seq < last) {
        stats.reordered += 1;
    }
    conn.last_seq = Some(conn.last_seq.map_or(seq, |last| last.max(seq)));
    let _ = stats
        .latency
        .record((now.saturating_sub(sent_ns) / 1000).max(1));
    *stats.timeline.entry(now / 100_000_000).or_default() += 1;
    shared.received.fetch_add(1, Relaxed);
}

/// Everything one connection does.
async fn connection(
    options: Rc<Options>,
    scenario: Scenario,
    c: usize,
    slot: usize,
    stats: Rc<RefCell<ThreadStats>>,
    shared: Arc<Shared>,
    token: String,
) {
    let role = events::role(
        c,
        options.accounts,
        options.resellers,
        options.reseller_every,
    );
    let account_id = events::account(role.accounts[0]);
    // Every process spreads its connections over every source address (each address has its own
    // ephemeral ports towards the gateway, and the kernel hands connect() only part of the range).
    let source = options
        .source_ips
        .get((c / options.processes) % options.source_ips.len().max(1))
        .copied();
    let protocol = (options.target == Target::MqttWs).then_some("mqtt");
    let started = Instant::now();
    // A refused or dropped upgrade is retried (as a real client reconnects): a connect storm can
    // overflow the server's accept queue, and the kernel then drops the connection. Counted.
    let mut connected = Client::connect(source, options.ws_addr, &options.ws_path, protocol).await;
    for backoff in [1, 2, 4] {
        if connected.is_ok() {
            break;
        }
        stats.borrow_mut().retries += 1;
        monoio::time::sleep(Duration::from_secs(backoff)).await;
        connected = Client::connect(source, options.ws_addr, &options.ws_path, protocol).await;
    }
    shared.attempted.fetch_add(1, Relaxed);
    let mut client = match connected {
        Ok(client) => client,
        Err(e) => {
            let mut s = stats.borrow_mut();
            s.failed += 1;
            s.error(format!("connect: {e}"));
            return;
        }
    };
    let _ = stats
        .borrow_mut()
        .connect_latency
        .record((started.elapsed().as_micros() as u64).max(1));
    shared.connected.fetch_add(1, Relaxed);
    let accounts = options.accounts;
    let first_event = options.events[0].clone();
    let (subscribe, unsubscribe) = binding(&options, &account_id, &first_event);
    // MQTT packets are a stream inside binary frames: one buffer for the connection's life, so
    // packets that arrive with an answer are not lost.
    let mut mqtt_buf = Vec::new();
    let setup = async {
        match options.target {
            Target::Horizon if scenario != Scenario::Connect => {
                // One subscribe per account (a reseller console: one per child); the token
                // rides on the first.
                for (i, a) in role.accounts.iter().enumerate() {
                    let (command, _) = binding(&options, &events::account(*a), &first_event);
                    let command = if i == 0 {
                        command.replacen(
                            "\"action\":\"subscribe\"",
                            &format!("\"action\":\"subscribe\",\"auth_token\":\"{token}\""),
                            1,
                        )
                    } else {
                        command
                    };
                    client
                        .send(0x1, command.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    answer(
                        &mut client,
                        &options,
                        &stats,
                        slot,
                        accounts,
                        &shared,
                        &mut mqtt_buf,
                    )
                    .await?;
                }
                Ok::<(), String>(())
            }
            Target::MqttWs => {
                let id = format!("lt-{}-{c}", std::process::id());
                client
                    .send(
                        0x2,
                        &mqtt::connect(&id, &options.mqtt_user, &options.mqtt_password),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                answer(
                    &mut client,
                    &options,
                    &stats,
                    slot,
                    accounts,
                    &shared,
                    &mut mqtt_buf,
                )
                .await?;
                if scenario == Scenario::Connect {
                    return Ok(());
                }
                let mut packet_id = 1u16;
                for a in &role.accounts {
                    for event in &options.events {
                        let filter = format!("call/{}/{event}/+", events::account(*a));
                        client
                            .send(0x2, &mqtt::subscribe(packet_id, &filter))
                            .await
                            .map_err(|e| e.to_string())?;
                        answer(
                            &mut client,
                            &options,
                            &stats,
                            slot,
                            accounts,
                            &shared,
                            &mut mqtt_buf,
                        )
                        .await?;
                        packet_id = packet_id.wrapping_add(1).max(1);
                    }
                }
                Ok(())
            }
            Target::Horizon => Ok(()),
        }
    };
    if let Err(e) = setup.await {
        let mut s = stats.borrow_mut();
        s.failed += 1;
        s.error(format!("subscribe: {e}"));
        return;
    }
    let churn_every = (scenario == Scenario::Churn && options.churn_rate > 0.0)
        .then(|| Duration::from_secs_f64(1.0 / options.churn_rate));
    let mut next_command = Instant::now() + churn_every.unwrap_or(Duration::from_secs(3600));
    let mut subscribed = true;
    let mut packet_id: u16 = 0x8000;
    loop {
        // Complete MQTT packets (some may have come in with an answer).
        loop {
            match mqtt::parse(&mqtt_buf) {
                Ok(Some((packet, used))) => {
                    mqtt_buf.drain(..used);
                    if let mqtt::Packet::Publish(payload) = packet {
                        record(&payload, &stats, slot, accounts, &shared);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let mut s = stats.borrow_mut();
                    s.closed += 1;
                    s.error(format!("mqtt: {e}"));
                    return;
                }
            }
        }
        let wait = next_command.saturating_duration_since(Instant::now());
        let frame = monoio::select! {
            frame = client.next() => Some(frame),
            _ = monoio::time::sleep(wait) => None,
        };
        match frame {
            None => {
                // A churn command: alternate unsubscribe and subscribe, timing the answer.
                let sent = Instant::now();
                let result = match options.target {
                    Target::Horizon => {
                        let command = if subscribed { &unsubscribe } else { &subscribe };
                        match client.send(0x1, command.as_bytes()).await {
                            Ok(()) => {
                                answer(
                                    &mut client,
                                    &options,
                                    &stats,
                                    slot,
                                    accounts,
                                    &shared,
                                    &mut mqtt_buf,
                                )
                                .await
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Target::MqttWs => {
                        packet_id = packet_id.wrapping_add(1).max(1);
                        let packet = if subscribed {
                            mqtt::unsubscribe(packet_id, &unsubscribe)
                        } else {
                            mqtt::subscribe(packet_id, &subscribe)
                        };
                        match client.send(0x2, &packet).await {
                            Ok(()) => {
                                answer(
                                    &mut client,
                                    &options,
                                    &stats,
                                    slot,
                                    accounts,
                                    &shared,
                                    &mut mqtt_buf,
                                )
                                .await
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                let mut s = stats.borrow_mut();
                s.commands += 1;
                match result {
                    Ok(()) => {
                        let _ = s
                            .command_latency
                            .record((sent.elapsed().as_micros() as u64).max(1));
                        subscribed = !subscribed;
                    }
                    Err(e) => {
                        s.command_errors += 1;
                        s.error(format!("churn: {e}"));
                    }
                }
                next_command = Instant::now() + churn_every.unwrap_or(Duration::from_secs(3600));
            }
            Some(Ok(Some(Frame::Text(text)))) => record(&text, &stats, slot, accounts, &shared),
            Some(Ok(Some(Frame::Binary(bytes)))) => mqtt_buf.extend_from_slice(&bytes),
            Some(Ok(Some(Frame::Close(code)))) => {
                let mut s = stats.borrow_mut();
                s.closed += 1;
                s.error(format!("closed by the server with {code}"));
                return;
            }
            Some(Ok(Some(_))) => {}
            Some(Ok(None)) | Some(Err(_)) => {
                let mut s = stats.borrow_mut();
                s.closed += 1;
                s.error("connection lost".into());
                return;
            }
        }
        if shared.stop.load(Relaxed) {
            return;
        }
    }
}

fn thread_main(
    options: Arc<Options>,
    scenario: Scenario,
    conns: Vec<usize>,
    shared: Arc<Shared>,
    rate_per_thread: f64,
) -> ThreadStats {
    let mut runtime = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let mut stats = ThreadStats::new();
            stats.failed = conns.len() as u64;
            stats.error(format!("runtime: {e}"));
            return stats;
        }
    };
    runtime.block_on(async move {
        let options = Rc::new((*options).clone());
        let stats = Rc::new(RefCell::new(ThreadStats::new()));
        stats.borrow_mut().conns = conns
            .iter()
            .map(|c| {
                let role = events::role(
                    *c,
                    options.accounts,
                    options.resellers,
                    options.reseller_every,
                );
                ConnStats {
                    account: role.accounts[0],
                    reseller: role.reseller,
                    distinct: 0,
                    last_seq: None,
                    seen: Vec::new(),
                }
            })
            .collect();
        let mut tokens: HashMap<String, String> = HashMap::new();
        let start = Instant::now();
        for (slot, &c) in conns.iter().enumerate() {
            if rate_per_thread > 0.0 {
                let due = start + Duration::from_secs_f64(slot as f64 / rate_per_thread);
                let now = Instant::now();
                if due > now {
                    monoio::time::sleep(due - now).await;
                }
            } else if slot % 64 == 63 {
                // Let the connections started so far make progress.
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            let role = events::role(
                c,
                options.accounts,
                options.resellers,
                options.reseller_every,
            );
            let token = tokens
                .entry(role.token_account.clone())
                .or_insert_with(|| jwt(&options.jwt_secret, &role.token_account, false))
                .clone();
            monoio::spawn(connection(
                options.clone(),
                scenario,
                c,
                slot,
                stats.clone(),
                shared.clone(),
                token,
            ));
            if shared.stop.load(Relaxed) {
                break;
            }
        }
        while !shared.stop.load(Relaxed) {
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
        Rc::try_unwrap(stats)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| {
                let mut s = rc.borrow_mut();
                std::mem::replace(&mut *s, ThreadStats::new())
            })
    })
}

fn pairs(h: &Histogram<u64>) -> String {
    let items: Vec<String> = h
        .iter_recorded()
        .map(|v| format!("[{},{}]", v.value_iterated_to(), v.count_at_value()))
        .collect();
    format!("[{}]", items.join(","))
}

/// The worker's main: runs until the parent says how many events were published (or stop).
pub fn run(options: Options, scenario: Scenario, index: usize) -> i32 {
    let mine: Vec<usize> = (0..options.connections)
        .filter(|c| c % options.processes == index)
        .collect();
    let shared = Arc::new(Shared {
        resellers: options.resellers,
        ..Shared::default()
    });
    let published = Arc::new(AtomicU64::new(u64::MAX));
    {
        let (shared, published) = (shared.clone(), published.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("published ")
                    .and_then(|n| n.trim().parse().ok())
                {
                    published.store(n, Relaxed);
                } else if line.trim() == "stop" {
                    shared.stop.store(true, Relaxed);
                }
            }
            // The parent went away: stop.
            shared.stop.store(true, Relaxed);
        });
    }
    let options = Arc::new(options);
    let threads = options.threads.min(mine.len().max(1));
    let rate_per_thread = if options.ramp_rate > 0 {
        options.ramp_rate as f64 / (options.processes * threads) as f64
    } else {
        0.0
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let conns: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|c| (c / options.processes) % threads == t)
                .collect();
            let (options, shared) = (options.clone(), shared.clone());
            std::thread::spawn(move || {
                thread_main(options, scenario, conns, shared, rate_per_thread)
            })
        })
        .collect();

    let expected_of = |n: u64| -> u64 {
        mine.iter()
            .map(|c| {
                let role = events::role(
                    *c,
                    options.accounts,
                    options.resellers,
                    options.reseller_every,
                );
                role.accounts
                    .iter()
                    .map(|a| events::expected(n, options.accounts, *a))
                    .sum::<u64>()
            })
            .sum()
    };
    let mut ready_sent = false;
    let mut last_received = 0;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let attempted = shared.attempted.load(Relaxed);
        let connected = shared.connected.load(Relaxed);
        let received = shared.received.load(Relaxed);
        println!("progress {attempted} {connected} {received}");
        if !ready_sent && attempted >= mine.len() as u64 {
            println!("ready {connected} {}", attempted - connected);
            ready_sent = true;
        }
        if received != last_received {
            last_received = received;
            quiet_since = Instant::now();
        }
        let n = published.load(Relaxed);
        if n != u64::MAX && (received >= expected_of(n) || quiet_since.elapsed() >= options.drain) {
            shared.stop.store(true, Relaxed);
        }
        if shared.stop.load(Relaxed) {
            break;
        }
    }
    let mut total = ThreadStats::new();
    for handle in handles {
        let Ok(stats) = handle.join() else { continue };
        let _ = total.latency.add(&stats.latency);
        let _ = total.connect_latency.add(&stats.connect_latency);
        let _ = total.command_latency.add(&stats.command_latency);
        total.conns.extend(stats.conns);
        total.duplicates += stats.duplicates;
        total.reordered += stats.reordered;
        total.cross_tenant += stats.cross_tenant;
        total.failed += stats.failed;
        total.closed += stats.closed;
        total.commands += stats.commands;
        total.command_errors += stats.command_errors;
        total.retries += stats.retries;
        for e in stats.errors {
            total.error(e);
        }
        for (slot, n) in stats.timeline {
            *total.timeline.entry(slot).or_default() += n;
        }
    }
    let n = published.load(Relaxed);
    let (expected, lost) = if n == u64::MAX || scenario != Scenario::Fanout {
        (0, 0)
    } else {
        let expected: u64 = total
            .conns
            .iter()
            .map(|c| expected_for(n, &options, c))
            .sum();
        let lost: u64 = total
            .conns
            .iter()
            .map(|c| expected_for(n, &options, c).saturating_sub(c.distinct))
            .sum();
        // Connections that never got as far as subscribing count as losing everything.
        let missing: u64 = mine.len().saturating_sub(total.conns.len()) as u64;
        (expected, lost + missing)
    };
    let received: u64 = total.conns.iter().map(|c| c.distinct).sum();
    // Connections that got none of their events (a subscription that never took effect).
    let silent = if n == u64::MAX || scenario != Scenario::Fanout {
        0
    } else {
        total
            .conns
            .iter()
            .filter(|c| c.distinct == 0 && expected_for(n, &options, c) > 0)
            .count()
    };
    let mut timeline: Vec<_> = total
        .timeline
        .iter()
        .map(|(k, v)| format!("[{k},{v}]"))
        .collect();
    timeline.sort();
    let errors: Vec<String> = total.errors.iter().map(|e| format!("{:?}", e)).collect();
    println!(
        "result {{\"connections\":{},\"connected\":{},\"failed\":{},\"closed\":{},\"expected\":{expected},\"received\":{received},\"lost\":{lost},\"silent\":{silent},\"duplicated\":{},\"reordered\":{},\"cross_tenant\":{},\"commands\":{},\"command_errors\":{},\"connect_retries\":{},\"latency\":{},\"connect_latency\":{},\"command_latency\":{},\"timeline\":[{}],\"errors\":[{}]}}",
        mine.len(),
        shared.connected.load(Relaxed),
        total.failed,
        total.closed,
        total.duplicates,
        total.reordered,
        total.cross_tenant,
        total.commands,
        total.command_errors,
        total.retries,
        pairs(&total.latency),
        pairs(&total.connect_latency),
        pairs(&total.command_latency),
        timeline.join(","),
        errors.join(",")
    );
    0
}

//! `horizon-loadtest`: load scenarios against Horizon, or RabbitMQ's Web-MQTT plugin with the
//! same client code, with loss, duplication, reordering and cross-tenant accounting.
//!
//! ```text
//! horizon-loadtest fanout  [--connections 10000 --accounts 100 --rate 1000 --duration 10 ...]
//! horizon-loadtest connect [--connections 15000 --ramp-rate 5000 --hold 5 ...]
//! horizon-loadtest churn   [--connections 1000 --churn-rate 2 --rate 500 ...]
//! horizon-loadtest auth-file --accounts 1000 --resellers 20 > tree.toml   # for --resellers runs
//! horizon-loadtest storm   [--clients 10000 --victim ADDR --survivor ADDR ...]  # loadtest/storm.sh
//! horizon-loadtest resume  [--clients 1000 --victim ADDR --survivor ADDR,ADDR ...]  # loadtest/resume.sh
//! ```
//! The parent spawns `--processes` worker processes (this binary, `worker` role), each holding a
//! share of the connections on `--threads` monoio runtimes and binding its sockets to
//! `--source-ips` in turn; the parent publishes, samples the system under test from `/proc`, and
//! writes the report (`--out DIR`: `report.json`, `report.html`).

mod cli;
mod events;
mod mqtt;
mod procstat;
mod publisher;
mod report;
mod storm;
mod webhooks;
mod worker;
mod ws;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simd_json::prelude::*;

use cli::{Options, Target};
use report::Report;
use worker::Scenario;

#[derive(Default)]
struct WorkerState {
    attempted: u64,
    connected: u64,
    received: u64,
    ready: bool,
    result: Option<String>,
}

/// The command line; every option's default is in `--help`.
fn command() -> clap::Command {
    use clap::{Arg, Command};
    let scenario = |name: &'static str, about: &'static str| {
        Command::new(name)
            .about(about)
            .args_override_self(true)
            .args(cli::args_list())
    };
    Command::new("horizon-loadtest")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Load scenarios against Horizon, or RabbitMQ Web-MQTT with the same client code (see loadtest/README.md)")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(scenario("fanout", "Subscribers receive published events: rate, loss, duplication, latency, CPU"))
        .subcommand(scenario("connect", "Open idle connections at a ramp rate and hold them: memory per socket"))
        .subcommand(scenario("churn", "Subscribe/unsubscribe churn while events flow"))
        .subcommand(webhooks::command())
        .subcommand(storm::command())
        .subcommand(storm::resume_command())
        .subcommand(
            Command::new("auth-file")
                .about("Print the auth file (account tree) a gateway needs for --resellers runs")
                .arg(Arg::new("accounts").long("accounts").value_name("N").default_value("100").help("accounts"))
                .arg(Arg::new("resellers").long("resellers").value_name("N").default_value("0").help("reseller accounts")),
        )
        .subcommand(
            Command::new("worker")
                .hide(true)
                .arg(Arg::new("rest").num_args(0..).trailing_var_arg(true).allow_hyphen_values(true)),
        )
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    // `--scenario FILE` becomes the flags it holds, before the command line's own.
    if args.len() > 2 && Scenario::parse(&args[1]).is_some() {
        match cli::expand_scenario(&args[2..]) {
            Ok(expanded) => args.splice(2.., expanded).for_each(drop),
            Err(e) => {
                eprintln!("horizon-loadtest: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let matches = match command().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let number = |m: &clap::ArgMatches, key: &str| {
        m.get_one::<String>(key)
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| format!("--{key}: expected a number"))
    };
    match matches.subcommand() {
        Some(("worker", m)) => {
            let rest: Vec<String> = m
                .get_many::<String>("rest")
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            let (Some(scenario), Some(index)) = (
                rest.first().and_then(|s| Scenario::parse(s)),
                rest.get(1).and_then(|i| i.parse().ok()),
            ) else {
                eprintln!("worker: bad arguments");
                return ExitCode::from(2);
            };
            match Options::parse(&rest[2..]) {
                Ok(options) => ExitCode::from(worker::run(options, scenario, index) as u8),
                Err(e) => {
                    eprintln!("worker: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(("webhooks", m)) => ExitCode::from(webhooks::main(m) as u8),
        Some((name @ ("storm" | "resume"), m)) => match storm::run(m, name == "resume") {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("horizon-loadtest {name}: {e}");
                ExitCode::FAILURE
            }
        },
        Some(("auth-file", m)) => match (number(m, "accounts"), number(m, "resellers")) {
            (Ok(accounts), Ok(resellers)) if resellers <= accounts => {
                print!("{}", events::auth_file(accounts.max(1), resellers));
                ExitCode::SUCCESS
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("horizon-loadtest: {e}");
                ExitCode::from(2)
            }
            _ => {
                eprintln!("horizon-loadtest: --resellers cannot exceed --accounts");
                ExitCode::from(2)
            }
        },
        Some((name, m)) => {
            let scenario = Scenario::parse(name).unwrap_or(Scenario::Fanout);
            match Options::from_matches(m) {
                Ok(options) => run(options, scenario),
                Err(e) => {
                    eprintln!("horizon-loadtest {name}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => ExitCode::from(2),
    }
}

fn merge_pairs(
    into: &mut Option<hdrhistogram::Histogram<u64>>,
    pairs: Option<&simd_json::OwnedValue>,
) {
    let Some(list) = pairs.and_then(|p| p.as_array()) else {
        return;
    };
    let h = into.get_or_insert_with(worker::histogram);
    for pair in list {
        if let (Some(v), Some(n)) = (
            pair.get_idx(0).and_then(|v| v.as_u64()),
            pair.get_idx(1).and_then(|n| n.as_u64()),
        ) {
            let _ = h.record_n(v.max(1), n);
        }
    }
}

fn run(options: Options, scenario: Scenario) -> ExitCode {
    let pids = options
        .gateway_match
        .as_deref()
        .map(procstat::find)
        .unwrap_or_default();
    if pids.is_empty() {
        eprintln!("note: no process matches --gateway-match {:?}; CPU and memory of the system under test are not sampled", options.gateway_match);
    }
    // Gateway and broker together, each process once (for Web-MQTT they are the same).
    let mut system_pids = pids.clone();
    for pid in options
        .broker_match
        .as_deref()
        .map(procstat::find)
        .unwrap_or_default()
    {
        if !system_pids.contains(&pid) {
            system_pids.push(pid);
        }
    }
    let (_, rss_before) = procstat::sample(&pids);
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("horizon-loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    let states: Vec<Arc<Mutex<WorkerState>>> =
        (0..options.processes).map(|_| Arc::default()).collect();
    let mut children = Vec::new();
    let started = Instant::now();
    for (index, state) in states.iter().enumerate() {
        let child = Command::new(&exe)
            .arg("worker")
            .arg(scenario.name())
            .arg(index.to_string())
            .args(options.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                eprintln!("horizon-loadtest: cannot start a worker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let state = state.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                let mut parts = line.split_whitespace();
                match parts.next() {
                    Some("progress") => {
                        let n: Vec<u64> = parts.filter_map(|p| p.parse().ok()).collect();
                        if let [a, c, r] = n[..] {
                            (s.attempted, s.connected, s.received) = (a, c, r);
                        }
                    }
                    Some("ready") => s.ready = true,
                    Some("result") => s.result = Some(line["result ".len()..].to_string()),
                    _ => {}
                }
            }
        });
        children.push(child);
    }
    let totals = |states: &[Arc<Mutex<WorkerState>>]| {
        states.iter().fold((0, 0, 0, true), |(a, c, r, ready), s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (
                a + s.attempted,
                c + s.connected,
                r + s.received,
                ready && s.ready,
            )
        })
    };
    // Connect phase.
    let connect_deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (attempted, connected, _, ready) = totals(&states);
        eprint!(
            "\r[{}] connecting: {attempted}/{} attempted, {connected} connected   ",
            scenario.name(),
            options.connections
        );
        if ready || Instant::now() > connect_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    // Give the server a moment to settle its accounting before measuring memory.
    std::thread::sleep(Duration::from_millis(500));
    let (cpu_connected, rss_connected) = procstat::sample(&pids);
    let (system_cpu_connected, _) = procstat::sample(&system_pids);
    eprintln!();

    let send_all = |children: &mut Vec<std::process::Child>, line: &str| {
        for child in children.iter_mut() {
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = writeln!(stdin, "{line}");
            }
        }
    };
    let mut published = publisher::Published::default();
    let run_started = Instant::now();
    match scenario {
        Scenario::Connect => {
            let until = Instant::now() + options.hold;
            while Instant::now() < until {
                let (_, connected, _, _) = totals(&states);
                eprint!("\r[connect] holding {connected} idle connections   ");
                std::thread::sleep(Duration::from_millis(500));
            }
            send_all(&mut children, "stop");
        }
        Scenario::Fanout | Scenario::Churn => {
            std::thread::sleep(options.warmup);
            let progress = Arc::new(AtomicU64::new(0));
            let publisher = {
                let (options, progress) = (options.clone(), progress.clone());
                std::thread::spawn(move || publisher::run(&options, progress))
            };
            let mut last = (Instant::now(), 0u64);
            while !publisher.is_finished() {
                std::thread::sleep(Duration::from_millis(500));
                let (_, connected, received, _) = totals(&states);
                let now = Instant::now();
                let rate = (received - last.1.min(received)) as f64
                    / now.duration_since(last.0).as_secs_f64();
                last = (now, received);
                eprint!(
                    "\r[{}] t={:.0}s published {} received {received} ({rate:.0}/s) on {connected} connections   ",
                    scenario.name(),
                    run_started.elapsed().as_secs_f64(),
                    progress.load(Relaxed)
                );
            }
            published = publisher.join().unwrap_or_default();
            send_all(&mut children, &format!("published {}", published.count));
            if scenario == Scenario::Churn {
                std::thread::sleep(Duration::from_secs(1));
                send_all(&mut children, "stop");
            }
        }
    }
    // Results.
    let deadline = Instant::now() + options.drain + Duration::from_secs(30);
    while states
        .iter()
        .any(|s| s.lock().map(|s| s.result.is_none()).unwrap_or(false))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let run_seconds = run_started.elapsed().as_secs_f64();
    let (cpu_after, _) = procstat::sample(&pids);
    let (system_cpu_after, _) = procstat::sample(&system_pids);
    eprintln!();
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let mut report = Report {
        scenario: scenario.name().into(),
        target: match options.target {
            Target::Horizon => "horizon".into(),
            Target::MqttWs => "rabbitmq-web-mqtt".into(),
        },
        connections: options.connections as u64,
        processes: options.processes,
        accounts: options.accounts,
        published: published.count,
        publish_seconds: published.elapsed.as_secs_f64(),
        nacked: published.nacked,
        connect_seconds,
        gateway_pids: pids.clone(),
        gateway_cpu_seconds: if scenario == Scenario::Connect {
            0.0
        } else {
            cpu_after - cpu_connected
        },
        system_pids: system_pids.clone(),
        system_cpu_seconds: if scenario == Scenario::Connect {
            0.0
        } else {
            system_cpu_after - system_cpu_connected
        },
        gateway_rss_before: rss_before,
        gateway_rss_connected: rss_connected,
        run_seconds,
        errors: published.errors.clone(),
        ..Report::default()
    };
    let mut timeline: std::collections::BTreeMap<u64, u64> = Default::default();
    for state in &states {
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(result) = s.result.clone() else {
            report.errors.push("a worker did not report".into());
            continue;
        };
        let mut bytes = result.into_bytes();
        let Ok(value) = simd_json::to_owned_value(&mut bytes) else {
            report.errors.push("a worker's result is not JSON".into());
            continue;
        };
        let n = |k: &str| value.get_u64(k).unwrap_or(0);
        report.connected += n("connected");
        report.failed += n("failed");
        report.closed += n("closed");
        report.expected += n("expected");
        report.received += n("received");
        report.lost += n("lost");
        report.silent += n("silent");
        report.duplicated += n("duplicated");
        report.reordered += n("reordered");
        report.cross_tenant += n("cross_tenant");
        report.commands += n("commands");
        report.command_errors += n("command_errors");
        report.connect_retries += n("connect_retries");
        merge_pairs(&mut report.latency, value.get("latency"));
        merge_pairs(&mut report.connect_latency, value.get("connect_latency"));
        merge_pairs(&mut report.command_latency, value.get("command_latency"));
        for pair in value.get_array("timeline").into_iter().flatten() {
            if let (Some(slot), Some(count)) = (
                pair.get_idx(0).and_then(|v| v.as_u64()),
                pair.get_idx(1).and_then(|v| v.as_u64()),
            ) {
                *timeline.entry(slot).or_default() += count;
            }
        }
        for e in value.get_array("errors").into_iter().flatten() {
            if report.errors.len() < 10 {
                report
                    .errors
                    .push(e.as_str().unwrap_or_default().to_string());
            }
        }
    }
    if let Some(first) = timeline.keys().next().copied() {
        let start = (published.started_ns / 100_000_000).min(first);
        let last = timeline.keys().last().copied().unwrap_or(start);
        report.timeline = (start..=last)
            .map(|slot| timeline.get(&slot).copied().unwrap_or(0))
            .collect();
    }
    print!("{}", report.summary());
    if let Some(dir) = &options.out {
        let _ = std::fs::create_dir_all(dir);
        let written = std::fs::write(format!("{dir}/report.json"), report.json())
            .and_then(|_| std::fs::write(format!("{dir}/report.html"), report.html()));
        match written {
            Ok(()) => println!("report: {dir}/report.json, {dir}/report.html"),
            Err(e) => eprintln!("cannot write the report to {dir}: {e}"),
        }
    }
    let clean = report.lost == 0
        && report.cross_tenant == 0
        && report.duplicated == 0
        && report.failed == 0
        && report.closed == 0
        && report.nacked == 0;
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

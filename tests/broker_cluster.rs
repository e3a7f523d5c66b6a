//! A broker node's death under live gateways, on a real three-node RabbitMQ cluster that
//! `scripts/rabbitmq-cluster.sh` runs beside the machine's own broker (the script starts it if it
//! is not up; `scripts/test.sh` starts it before the suite). Each test kills node 1 (SIGKILL of
//! its Erlang VM) and starts it again before it ends, so the tests run one at a time.
//!
//! Run alone, with the figures: `cargo test --release --test broker_cluster -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::kazoo::*;
use horizon::ingest::SourceState;
use lapin::options::ConfirmSelectOptions;
use simd_json::prelude::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");

/// Runs the cluster script; its output. Fails the test (never skips) when it fails.
fn cluster(args: &[&str]) -> String {
    let output = std::process::Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run scripts/rabbitmq-cluster.sh");
    assert!(
        output.status.success(),
        "scripts/rabbitmq-cluster.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One test at a time (each kills a broker), with all three nodes up: their URLs.
fn cluster_up() -> (MutexGuard<'static, ()>, Vec<String>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    cluster(&["start"]);
    for n in ["1", "2", "3"] {
        cluster(&["start-node", n]);
    }
    let urls = cluster(&["urls"])
        .trim()
        .split(',')
        .map(String::from)
        .collect();
    (guard, urls)
}

/// Brings node 1 back (its data kept) for the next test.
fn revive() {
    cluster(&["start-node", "1"]);
}

/// A publisher on `url` with confirms on and Kazoo's exchanges declared.
async fn publisher(url: &str) -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("no broker at {url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_kazoo_exchanges(&channel).await;
    (connection, channel)
}

/// Publishes `seq-0`, `seq-1`, ... every 10 ms until `stop`, each confirmed: when each was
/// confirmed.
fn numbered_calls(
    channel: lapin::Channel,
    account: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            publish_call(
                &channel,
                "CHANNEL_CREATE",
                &format!("seq-{}", sent.len()),
                &account,
            )
            .await;
            sent.push(Instant::now());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    })
}

fn call_id(event: Option<&simd_json::OwnedValue>) -> Option<&str> {
    event?.get("data")?.get_str("call_id")
}

fn seq_of(event: &simd_json::OwnedValue) -> Option<usize> {
    call_id(Some(event))?.strip_prefix("seq-")?.parse().ok()
}

#[test]
fn a_node_keeps_serving_when_its_broker_is_killed() {
    let (_serial, urls) = cluster_up();
    let t = Tenants::new();
    let list = urls.join(",");
    let node = Node::start(true, &t.auth_toml(), |config, _| {
        config.amqp_url = Some(list.clone())
    });
    runtime().block_on(async {
        node.ready().await;
        let status = node.ingest.status();
        assert_eq!(status.connects.load(Ordering::Relaxed), 1);
        let mut client = Client::connect(node.addr()).await;
        client
            .subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        // The publisher is on broker 3, which stays up.
        let (_amqp, channel) = publisher(&urls[2]).await;
        publish_call(&channel, "CHANNEL_CREATE", "before", &t.a).await;
        let got = client.next_json(Duration::from_secs(5)).await;
        assert_eq!(
            call_id(got.as_ref()),
            Some("before"),
            "delivery before the kill: {got:?}"
        );

        let stop = Arc::new(AtomicBool::new(false));
        let sending = numbered_calls(channel.clone(), t.a.clone(), stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        cluster(&["kill", "1"]);
        let mut failed_over = None;
        let mut received: BTreeMap<usize, Instant> = BTreeMap::new();
        while killed.elapsed() < Duration::from_secs(4) {
            if let Some(event) = client.next_json(Duration::from_millis(20)).await {
                if let Some(seq) = seq_of(&event) {
                    received.entry(seq).or_insert_with(Instant::now);
                }
            }
            if failed_over.is_none()
                && status.connects.load(Ordering::Relaxed) >= 2
                && status.state() == SourceState::Consuming
            {
                failed_over = Some(killed.elapsed());
            }
        }
        stop.store(true, Ordering::Relaxed);
        let sent = sending.await.unwrap();
        publish_call(&channel, "CHANNEL_CREATE", "sentinel", &t.a).await;
        for event in client.events_until("sentinel").await {
            if let Some(seq) = seq_of(&event) {
                received.entry(seq).or_insert_with(Instant::now);
            }
        }

        let failed_over = failed_over.expect("the node moved to another broker");
        assert!(
            failed_over <= Duration::from_secs(2),
            "on another broker {failed_over:?} after the kill (at most 2 s)"
        );
        // The first event published after the kill that reached the socket.
        let first = received
            .iter()
            .filter(|(seq, _)| sent.get(**seq).is_some_and(|at| *at > killed))
            .map(|(_, at)| at.duration_since(killed))
            .min()
            .expect("events published after the failover reach the open socket");
        let lost: Vec<usize> = (0..sent.len())
            .filter(|seq| !received.contains_key(seq))
            .collect();
        assert!(
            lost.iter().all(|seq| sent[*seq] > killed),
            "only events published after the kill may be lost: {lost:?}"
        );
        // The new binding reaches the publisher's broker (node 3) through the cluster's metadata
        // store: on a loaded 2-core machine that has taken more than half a second.
        let settled = killed + failed_over + Duration::from_millis(1500);
        assert!(
            lost.iter().all(|seq| sent[*seq] < settled),
            "nothing published after the failover is lost: {lost:?}"
        );
        println!(
            "broker failover: on broker 2 after {:.0} ms; first event delivered {:.0} ms after \
             the kill; {} of {} events published at 100/s lost (published during the failover: \
             the node queue died with its broker)",
            failed_over.as_secs_f64() * 1000.0,
            first.as_secs_f64() * 1000.0,
            lost.len(),
            sent.len()
        );

        // New subscriptions work on the new broker.
        let mut late = Client::connect(node.addr()).await;
        late.subscribe(
            Some(&token(&t.a)),
            r#"{"binding":"call.CHANNEL_DESTROY.*"}"#,
        )
        .await;
        publish_call(&channel, "CHANNEL_DESTROY", "after", &t.a).await;
        let got = late.next_json(Duration::from_secs(5)).await;
        assert_eq!(
            call_id(got.as_ref()),
            Some("after"),
            "a subscription made after the failover: {got:?}"
        );
    });
    node.stop();
    revive();
}

#[test]
fn listings_and_the_control_plane_span_nodes_on_different_brokers() {
    let (_serial, urls) = cluster_up();
    let t = Tenants::new();
    let one_list = urls.join(",");
    let two_list = [&urls[1], &urls[2], &urls[0]].map(String::as_str).join(",");
    let one = Node::start(true, &t.auth_toml(), |config, _| {
        config.amqp_url = Some(one_list.clone())
    });
    let two = Node::start(true, &t.auth_toml(), |config, _| {
        config.amqp_url = Some(two_list.clone())
    });
    runtime().block_on(async {
        one.ready().await;
        two.ready().await;
        let mut a1 = Client::connect(one.addr()).await;
        a1.subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        let mut a2 = Client::connect(two.addr()).await;
        a2.subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        let path = format!("/v2/accounts/{}/websockets", t.a);
        let both = |node: &Node| {
            let mut want = vec![one.node.clone(), two.node.clone()];
            want.sort();
            (node.api.local_addr(), want)
        };
        // Every listing through either node names both sockets: before node 1 dies, and after
        // the node that was on it moved to broker 2.
        for phase in ["before the kill", "after the kill"] {
            if phase == "after the kill" {
                cluster(&["kill", "1"]);
                let status = one.ingest.status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while status.connects.load(Ordering::Relaxed) < 2
                    || status.state() != SourceState::Consuming
                {
                    assert!(Instant::now() < deadline, "node one never moved broker");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            for node in [&one, &two] {
                let (api, want) = both(node);
                let mut seen = Vec::new();
                for _ in 0..60 {
                    let (status, body) =
                        common::http(api, "GET", &path, &[("X-Auth-Token", &token(&t.a))], "")
                            .await;
                    assert_eq!(status, 200, "{body}");
                    let value = parse(&body);
                    seen = value
                        .get_array("data")
                        .map(|list| {
                            list.iter()
                                .filter_map(|s| s.get_str("destination").map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    seen.sort();
                    if seen == want && value.get("partial").is_none() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                assert_eq!(seen, want, "listing through {api} {phase}");
            }
        }
        // Both sockets still receive, published on broker 3.
        let (_amqp, channel) = publisher(&urls[2]).await;
        publish_call(&channel, "CHANNEL_CREATE", "both", &t.a).await;
        for client in [&mut a1, &mut a2] {
            let got = client.next_json(Duration::from_secs(5)).await;
            assert_eq!(call_id(got.as_ref()), Some("both"));
        }
    });
    one.stop();
    two.stop();
    revive();
}

#[test]
fn webhooks_deliver_across_the_loss_of_their_queue_leader() {
    let (_serial, urls) = cluster_up();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(webhooks_across_a_leader_loss(urls));
}

async fn webhooks_across_a_leader_loss(urls: Vec<String>) {
    use common::webhooks::{node_args, sqlite_path, with_arg, Node, Receiver};
    let tenants = Tenants::new();
    let account = tenants.a.clone();
    let auth_file = common::temp_file("cluster-webhooks-auth", &tenants.auth_toml());
    let queue = common::unique_name("horizon.webhooks.cluster");
    let db = sqlite_path("cluster-webhooks");
    let args = node_args(&auth_file, &queue, &db.display().to_string());
    let args = with_arg(args, "amqp-url", &urls.join(","));
    let node = tokio::task::block_in_place(|| Node::start(&args));
    let receiver = Receiver::start().await;
    node.create_hook(
        &account,
        serde_json::json!({"name":"r","hook":"channel_create","uri":receiver.url("/"),
            "http_verb":"post","format":"json"}),
    )
    .await;
    node.wait_hooks(1).await;

    // The shared queue is a quorum queue, led by the node the gateway declared it on (1).
    let mut described = String::new();
    for _ in 0..50 {
        described = tokio::task::block_in_place(|| {
            cluster(&[
                "ctl",
                "2",
                "list_queues",
                "name",
                "type",
                "leader",
                "--no-table-headers",
            ])
        });
        if described.contains(&queue) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = described
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue.as_str()))
        .unwrap_or_else(|| panic!("{queue} is not on the cluster: {described}"))
        .to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.get(1), Some(&"quorum"), "{line}");
    assert_eq!(fields.get(2), Some(&"horizon-1@localhost"), "{line}");

    let (_amqp, channel) = publisher(&urls[2]).await;
    let mut confirmed = BTreeSet::new();
    let mut killed = None;
    for i in 0..150 {
        if i == 50 {
            tokio::task::block_in_place(|| cluster(&["kill", "1"]));
            killed = Some(Instant::now());
        }
        let call = format!("hook-{i}-{}", horizon::ids::random_hex(4));
        let confirm = channel
            .basic_publish(
                "callevt".into(),
                format!("call.CHANNEL_CREATE.{call}").as_str().into(),
                Default::default(),
                channel_create(&call, &account).as_bytes(),
                Default::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        if confirm.is_ack() {
            confirmed.insert(call);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = killed.unwrap();
    // Every confirmed event reaches the receiver; a redelivery carries the same delivery id.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ids, mut calls, mut requests) = (BTreeSet::new(), BTreeSet::new(), 0);
    let mut first_after: Option<Duration> = None;
    while Instant::now() < deadline {
        let seen = receiver.requests();
        requests = seen.len();
        ids = seen
            .iter()
            .filter_map(|r| r.header("webhook-id").map(String::from))
            .collect();
        calls = seen
            .iter()
            .filter_map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
                body["call_id"].as_str().map(String::from)
            })
            .collect();
        if first_after.is_none() && calls.iter().any(|c| after_kill(c)) {
            first_after = Some(killed.elapsed());
        }
        if confirmed.is_subset(&calls) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<_> = confirmed.difference(&calls).collect();
    assert!(
        missing.is_empty(),
        "{} confirmed events never delivered ({requests} requests): {missing:?}",
        missing.len()
    );
    assert_eq!(ids.len(), calls.len(), "one delivery id per event");
    println!(
        "webhooks across the loss of the queue leader: {} of 150 publishes confirmed, all \
         delivered; {} requests for {} events ({} redelivered with the same webhook-id); first \
         event published after the kill delivered {:.0} ms after it",
        confirmed.len(),
        requests,
        calls.len(),
        requests - calls.len(),
        first_after.unwrap_or_default().as_secs_f64() * 1000.0
    );
    drop(node);
    let _ = std::fs::remove_file(&auth_file);
    let _ = std::fs::remove_file(&db);
    tokio::task::block_in_place(revive);
}

/// `hook-<i>-...` with i published after the kill (the 51st on).
fn after_kill(call: &str) -> bool {
    call.split('-')
        .nth(1)
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= 50)
}

/// A CHANNEL_CREATE as Kazoo's ecallmgr publishes it.
fn channel_create(call: &str, account: &str) -> String {
    format!(
        r#"{{"Event-Name":"CHANNEL_CREATE","Event-Category":"call_event","Call-ID":"{call}",
        "Call-Direction":"inbound","Timestamp":63890000000,
        "Custom-Channel-Vars":{{"Account-ID":"{account}"}},
        "Msg-ID":"{}","App-Name":"ecallmgr","App-Version":"4.3.0","Node":"n","Server-ID":""}}"#,
        horizon::ids::random_hex(8)
    )
}

#[test]
fn check_config_reaches_each_broker_and_names_the_silent_one() {
    let (_serial, mut urls) = cluster_up();
    // A fourth "broker" nothing listens on.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    drop(silent);
    urls.push(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    let output = common::horizon_command()
        .args(["check-config", "--amqp-url", &urls.join(",")])
        .output()
        .expect("run horizon check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for n in 1..=3 {
        let line = format!("amqp_url broker {n} of 4 amqp://guest:***@127.0.0.1:");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with("ok, connected and authenticated")),
            "broker {n}: {stdout}"
        );
    }
    assert!(
        stderr.contains(&format!(
            "amqp_url broker 4 of 4 amqp://guest:***@127.0.0.1:{port}/%2f"
        )),
        "{stderr}"
    );
    assert_eq!(output.status.code(), Some(1), "one broker does not answer");
    assert!(!stdout.contains("guest:guest"), "passwords stay hidden");
}

#[test]
fn with_the_stream_a_broker_nodes_death_loses_nothing_and_duplicates_nothing() {
    let (_serial, urls) = cluster_up();
    let t = Tenants::new();
    let list = urls.join(",");
    let stream = format!("horizon.test.failover.{}", horizon::ids::random_hex(4));
    let node = Node::start(true, &t.auth_toml(), |config, _| {
        config.amqp_url = Some(list.clone());
        config.history = true;
        config.history_config.stream = stream.clone();
    });
    runtime().block_on(async {
        node.ready().await;
        let mut client = Client::connect(node.addr()).await;
        client
            .subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        let (_amqp, channel) = publisher(&urls[2]).await;
        // Numbered calls every 10 ms; the ones the cluster confirmed are the ones it holds.
        let stop = Arc::new(AtomicBool::new(false));
        let sending = {
            let (channel, account, stop) = (channel.clone(), t.a.clone(), stop.clone());
            tokio::spawn(async move {
                let mut confirmed = BTreeSet::new();
                let mut seq = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!(
                        r#"{{"Event-Name":"CHANNEL_CREATE","Call-ID":"seq-{seq}","Custom-Channel-Vars":{{"Account-ID":"{account}"}}}}"#
                    );
                    let sent = channel
                        .basic_publish(
                            "callevt".into(),
                            format!("call.CHANNEL_CREATE.seq-{seq}").as_str().into(),
                            Default::default(),
                            body.as_bytes(),
                            Default::default(),
                        )
                        .await;
                    if let Ok(confirm) = sent {
                        if confirm.await.is_ok_and(|c| c.is_ack()) {
                            confirmed.insert(seq);
                        }
                    }
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (confirmed, seq)
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster(&["kill", "1"]);
        let mut received: BTreeMap<usize, usize> = BTreeMap::new();
        let mut positions: Vec<u64> = Vec::new();
        let take = |event: &simd_json::OwnedValue,
                        received: &mut BTreeMap<usize, usize>,
                        positions: &mut Vec<u64>| {
            if let Some(seq) = seq_of(event) {
                *received.entry(seq).or_default() += 1;
            }
            if let Some(offset) = event
                .get_str("position")
                .and_then(|p| p.rsplit_once('-'))
                .and_then(|(_, o)| o.parse().ok())
            {
                positions.push(offset);
            }
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(6) {
            if let Some(event) = client.next_json(Duration::from_millis(20)).await {
                take(&event, &mut received, &mut positions);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let (confirmed, published) = sending.await.unwrap();
        publish_call(&channel, "CHANNEL_CREATE", "sentinel", &t.a).await;
        for event in client.events_until("sentinel").await {
            take(&event, &mut received, &mut positions);
        }
        let lost: Vec<&usize> = confirmed
            .iter()
            .filter(|seq| !received.contains_key(seq))
            .collect();
        let twice: Vec<(&usize, &usize)> = received.iter().filter(|(_, n)| **n > 1).collect();
        assert!(lost.is_empty(), "confirmed events lost: {lost:?}");
        assert!(twice.is_empty(), "events received twice: {twice:?}");
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "positions only go forward"
        );
        assert!(
            node.ingest.status().connects.load(Ordering::Relaxed) >= 2,
            "the node moved broker"
        );
        println!(
            "stream failover: {} events published at 100/s, {} confirmed, {} received, 0 lost, \
             0 duplicated",
            published,
            confirmed.len(),
            received.len()
        );
        common::kazoo::delete_stream(&channel, &stream).await;
    });
    node.stop();
    revive();
}

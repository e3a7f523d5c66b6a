//! Ingest throughput for 1 KiB Kazoo call events.
//!
//! Run: `cargo bench --bench ingest`. Two parts:
//!
//! 1. criterion: one delivery parsed (simd-json tape), normalized (Kazoo keys, default headers
//!    dropped), given its account-scoped internal key, wrapped as the shards' `Arc<Event>` and
//!    matched against a shard automaton holding 100,000 call bindings, with the account's calls
//!    tracked for commands - everything the ingest thread and one shard do per delivery before
//!    socket writes.
//! 2. end to end (needs the broker at `HORIZON_TEST_AMQP_URL`, default local guest): a Horizon
//!    node consuming from RabbitMQ, one WebSocket subscriber per shard for the account, and a
//!    publisher pushing `HORIZON_INGEST_EVENTS` (default 50,000) events into `callevt` as fast
//!    as it can; reports events/s from the first publish until the node has routed them all and
//!    the subscribers have received them all. `HORIZON_INGEST_E2E=0` skips it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use horizon::binding::{BindingAutomaton, Separator, SubscriptionId};
use horizon::families::Normalizer;
use horizon::fanout::Event;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A CHANNEL_CREATE as ecallmgr publishes it, with the usual channel variables: about 1 KiB.
fn kazoo_call(account: &str, call_id: &str) -> Vec<u8> {
    format!(
        r#"{{"Event-Name":"CHANNEL_CREATE","Event-Category":"call_event","Call-ID":"{call_id}","Other-Leg-Call-ID":"","Call-Direction":"inbound","Caller-ID-Number":"+15551230000","Caller-ID-Name":"Operator Console","Callee-ID-Number":"2000","Callee-ID-Name":"Support Queue","From":"+15551230000@sip.example.com","Timestamp":63890000000,"Channel-State":"CS_NEW","Channel-Call-State":"RINGING","Channel-Name":"sofia/sipinterface_1/+15551230000@198.51.100.7","Media-Server":"fs1.example.com","Switch-Hostname":"fs1.example.com","Switch-Nodename":"freeswitch@fs1.example.com","Custom-Channel-Vars":{{"Account-ID":"{account}","Owner-ID":"f3a5b2c1d4e6f7a8b9c0d1e2f3a4b5c6","Authorizing-ID":"0a1b2c3d4e5f60718293a4b5c6d7e8f9","Authorizing-Type":"device","Realm":"{account}.sip.example.com","Username":"user_abc123","Channel-Authorized":"true","Global-Resource":"false","Bridge-ID":"{call_id}","Ecallmgr-Node":"ecallmgr@apps1.example.com"}},"Msg-ID":"5f0c1d2e3f4a5b6c","Server-ID":"","Node":"ecallmgr@apps1.example.com","App-Name":"ecallmgr","App-Version":"4.3.142"}}"#
    )
    .into_bytes()
}

fn per_delivery(c: &mut Criterion) {
    let account = "4b31dd1d32ce6d249897c06332375d65";
    let body = kazoo_call(account, "3d9a1f2b-77c1-4c2e-9a7e-1f2b3c4d5e6f@198.51.100.7");
    let mut shard = BindingAutomaton::new(Separator::Dot);
    for i in 0..100_000u32 {
        // Many accounts, a few bindings each, one of them this event's account.
        let acct = if i == 0 {
            account.to_string()
        } else {
            format!("{i:032x}")
        };
        let pattern = match i % 3 {
            0 => format!("call.{acct}.CHANNEL_CREATE.*"),
            1 => format!("call.{acct}.*.*"),
            _ => format!("call.{acct}.CHANNEL_DESTROY.*"),
        };
        shard.insert(&pattern, SubscriptionId(i)).expect("valid");
    }
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    let mut normalizer = Normalizer::default();
    let mut scratch = body.clone();
    let mut matched = Vec::new();
    // The node tracks this account's calls for commands (a command-right socket watches it):
    // the worst case, each call event also updates the tracker.
    let live = horizon::commands::Live::new(Default::default());
    let _watch = live.watch(account);
    group.bench_function("parse_normalize_route_1KiB", |b| {
        b.iter(|| {
            // The delivery's own buffer is parsed in place; restore it for the next round.
            scratch.copy_from_slice(&body);
            let n = normalizer
                .normalize("callevt", "call.CHANNEL_CREATE.x", black_box(&mut scratch))
                .expect("routes");
            if let Some(facts) = &n.facts {
                live.observe(&n.account, facts);
            }
            let event = Arc::new(Event::new(n.key, n.separator, n.tail));
            matched.clear();
            shard.matches(&event.key, &mut matched);
            black_box((event, matched.len()))
        })
    });
    group.finish();
    println!("payload: {} bytes", body.len());
}

fn end_to_end() {
    use futures_util::{SinkExt, StreamExt};
    use horizon::auth::{Auth, JwtKeys};
    use horizon::config::ServeConfig;
    use horizon::dialect::{BlackholeLimits, Dialects};
    use horizon::ingest::{AmqpConfig, EventSource, Ingest, Source};
    use horizon::shard::Gateway;
    use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
    use lapin::types::FieldTable;
    use std::sync::atomic::Ordering;
    use tokio_tungstenite::tungstenite::Message;

    let events: u64 = std::env::var("HORIZON_INGEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let url = std::env::var("HORIZON_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    let account = format!("bench{}", horizon::ids::random_hex(8));
    let auth_file = std::env::temp_dir().join(format!("horizon-bench-{}.toml", std::process::id()));
    std::fs::write(
        &auth_file,
        format!("[[tokens]]\ntoken = \"tok-bench\"\naccount_id = \"{account}\"\n"),
    )
    .expect("auth file");
    let auth = Arc::new(Auth::new(Some(auth_file.clone()), JwtKeys::default()).expect("auth"));
    let ingest = Ingest::new(Source::Amqp(AmqpConfig {
        url: url.clone(),
        node: "bench".into(),
        prefetch: 2000,
        queue_expires: Duration::from_secs(30),
    }));
    let dialects = Dialects::new(
        auth,
        Arc::new(ingest.clone()) as Arc<dyn EventSource>,
        BlackholeLimits::default(),
    );
    let config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        outbound_queue_bytes: 256 * 1024 * 1024,
        ..ServeConfig::default()
    };
    let shards = config.shards;
    let mut gateway = Gateway::start(config, Arc::new(dialects)).expect("gateway");
    ingest
        .start(gateway.take_publisher().expect("publisher"))
        .expect("ingest");
    let addr = gateway.local_addr();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        while !ingest.status().ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Enough subscribers that every shard very likely holds one (SO_REUSEPORT spreads them).
        let mut clients = Vec::new();
        for _ in 0..shards * 4 {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await.expect("ws");
            ws.send(Message::text(
                r#"{"action":"subscribe","auth_token":"tok-bench","data":{"binding":"call.CHANNEL_CREATE.*"}}"#,
            ))
            .await
            .unwrap();
            let reply = ws.next().await.unwrap().unwrap().into_text().unwrap();
            assert!(reply.contains("success"), "{reply}");
            clients.push(ws);
        }
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    let mut got = 0u64;
                    while got < events {
                        match ws.next().await {
                            Some(Ok(Message::Text(_))) => got += 1,
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                    got
                })
            })
            .collect();

        let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("broker for the end-to-end run");
        let channel = amqp.create_channel().await.unwrap();
        channel
            .exchange_declare(
                "callevt".into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = (0..64).map(|i| kazoo_call(&account, &format!("call-{i}"))).collect();
        let before = ingest.status().routed.load(Ordering::Relaxed);
        let start = Instant::now();
        for i in 0..events {
            channel
                .basic_publish(
                    "callevt".into(),
                    "call.CHANNEL_CREATE.x".into(),
                    BasicPublishOptions::default(),
                    &bodies[(i % 64) as usize],
                    lapin::BasicProperties::default(),
                )
                .await
                .expect("publish");
        }
        let published = start.elapsed();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ingest.status().routed.load(Ordering::Relaxed) - before < events && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let routed_in = start.elapsed();
        let mut received = 0;
        for reader in readers {
            received += reader.await.unwrap_or(0);
        }
        let all_in = start.elapsed();
        let routed = ingest.status().routed.load(Ordering::Relaxed) - before;
        println!(
            "end to end: {events} events of {} bytes published in {:.2?} ({:.0}/s); routed {routed} in {:.2?} ({:.0} events/s into the shards); \
             {received} frames to {} sockets in {:.2?} ({:.0} events/s delivered)",
            bodies[0].len(),
            published,
            events as f64 / published.as_secs_f64(),
            routed_in,
            routed as f64 / routed_in.as_secs_f64(),
            shards * 4,
            all_in,
            events as f64 / all_in.as_secs_f64(),
        );
        let _ = amqp.close(200, "done".into()).await;
    });
    gateway.shutdown();
    gateway.join();
    ingest.shutdown(Duration::from_secs(3));
    let _ = std::fs::remove_file(auth_file);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    per_delivery(&mut criterion);
    criterion.final_summary();
    if std::env::var("HORIZON_INGEST_E2E").as_deref() != Ok("0") {
        end_to_end();
    }
}

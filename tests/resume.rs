//! Positions and resume (docs/resume.md): every frame of a node with `history = "stream"`
//! carries its event's position; a subscribe with `resume_from` gets the reply, then exactly the
//! events it missed that its bindings match, in log order, then live - on the embedded bus (the
//! process's own log) and on a real RabbitMQ stream read by two nodes (a client resumes on the
//! other node, after 10 s away, on a node that started after the events it missed, and past
//! the stream's retention).

mod common;

use std::time::Duration;

use common::kazoo::{runtime, Client, Node, Tenants};
use futures_util::{SinkExt, StreamExt};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tokio_tungstenite::tungstenite::Message;

/// A call event as ecallmgr publishes it.
fn call_body(event: &str, call: &str, account: &str) -> Vec<u8> {
    format!(
        r#"{{"Event-Name":"{event}","Call-ID":"{call}","Custom-Channel-Vars":{{"Account-ID":"{account}"}},"Msg-ID":"m"}}"#
    )
    .into_bytes()
}

/// Publishes into the embedded bus (or, on an AMQP node, to the broker).
async fn publish(node: &Node, call: &str, account: &str) {
    node.ingest
        .publish(
            "callevt",
            &format!("call.CHANNEL_CREATE.{call}"),
            call_body("CHANNEL_CREATE", call, account),
        )
        .await
        .expect("published");
}

/// The next event frame's call id and position.
async fn next_event(client: &mut Client) -> (String, String) {
    let frame = client
        .events
        .pop_front()
        .or(client.next_json(Duration::from_secs(10)).await)
        .expect("an event");
    let call = frame
        .get("data")
        .and_then(|d| d.get_str("call_id"))
        .unwrap_or_default()
        .to_string();
    let position = frame
        .get_str("position")
        .unwrap_or_else(|| panic!("no position in {frame}"))
        .to_string();
    (call, position)
}

/// A new socket on `node` subscribing to `call.CHANNEL_CREATE.*` with `resume_from`: the socket
/// and whether it recovered.
async fn resumed(node: &Node, token: &str, from: &str) -> (Client, Option<bool>, OwnedValue) {
    let mut client = Client::connect(node.addr()).await;
    let reply = client
        .subscribe(
            Some(token),
            &format!(r#"{{"binding":"call.CHANNEL_CREATE.*","resume_from":"{from}"}}"#),
        )
        .await;
    let recovered = reply.get("data").and_then(|d| d.get_bool("recovered"));
    (client, recovered, reply)
}

fn history_on(config: &mut horizon::config::ServeConfig) {
    config.history = true;
}

#[test]
fn a_client_resumes_exactly_what_it_missed_then_live() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| history_on(config));
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        node.ready().await;
        let mut first = Client::connect(node.addr()).await;
        let reply = first
            .subscribe(
                Some(&token),
                r#"{"binding":"call.CHANNEL_CREATE.*","resume_from":"latest"}"#,
            )
            .await;
        assert_eq!(
            reply.get("data").and_then(|d| d.get_bool("recovered")),
            Some(true),
            "{reply}"
        );
        publish(&node, "c1", &t.a).await;
        let (call, position) = next_event(&mut first).await;
        assert_eq!(call, "c1");
        drop(first);

        // Away: two of its events, one of another tenant, one it does not bind.
        publish(&node, "c2", &t.a).await;
        publish(&node, "x1", &t.b).await;
        node.ingest
            .publish(
                "callevt",
                "call.CHANNEL_DESTROY.c3",
                call_body("CHANNEL_DESTROY", "c3", &t.a),
            )
            .await
            .unwrap();
        publish(&node, "c4", &t.a).await;

        let (mut second, _, reply) = resumed(&node, &token, &position).await;
        let data = reply.get("data").unwrap();
        assert_eq!(data.get_bool("recovered"), Some(true), "{reply}");
        let head = data
            .get_str("position")
            .expect("the log's head")
            .to_string();
        let mut replayed = Vec::new();
        for _ in 0..2 {
            replayed.push(next_event(&mut second).await);
        }
        let calls: Vec<&str> = replayed.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            calls,
            ["c2", "c4"],
            "exactly the missed events it binds, in order"
        );
        assert_eq!(replayed[1].1, head, "the last replayed is the head");
        // Then live, no gap and no duplicate.
        publish(&node, "c5", &t.a).await;
        let (call, live) = next_event(&mut second).await;
        assert_eq!(call, "c5");
        assert_ne!(live, head);
        assert!(
            second.next_json(Duration::from_millis(300)).await.is_none(),
            "nothing more"
        );

        // Positions it cannot resume from: the reply says so, nothing is replayed, the socket
        // goes on live.
        let epoch = position.rsplit_once('-').unwrap().0.to_string();
        for bad in [
            "garbage".to_string(),
            "zz99-1".to_string(),
            format!("{epoch}x-1"),
            "a".repeat(80),
        ] {
            let mut client = Client::connect(node.addr()).await;
            let reply = client
                .subscribe(
                    Some(&token),
                    &format!(r#"{{"binding":"call.CHANNEL_CREATE.*","resume_from":"{bad}"}}"#),
                )
                .await;
            assert_eq!(
                reply.get("data").and_then(|d| d.get_bool("recovered")),
                Some(false),
                "{bad}: {reply}"
            );
            assert!(client.next_json(Duration::from_millis(200)).await.is_none());
            publish(&node, "c6", &t.a).await;
            assert_eq!(next_event(&mut client).await.0, "c6");
        }

        // Monster UI's client never asks: no position frames, and a subscribe without
        // `resume_from` answers as before.
        let mut plain = Client::connect(node.addr()).await;
        let reply = plain
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        assert!(reply.get("data").unwrap().get("recovered").is_none());

        // Counted (process-wide: the other tests here count too), and the history is sized.
        let (_, metrics) = common::http(node.api.local_addr(), "GET", "/metrics", &[], "").await;
        let value = |prefix: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        assert!(
            value("horizon_resumes_total{recovered=\"true\"} ") >= 2,
            "{metrics}"
        );
        assert!(
            value("horizon_resumes_total{recovered=\"false\"} ") >= 4,
            "{metrics}"
        );
        assert!(value("horizon_history{what=\"events\"} ") >= 6, "{metrics}");
    });
    node.stop();
}

#[test]
fn a_resume_replays_at_most_resume_max_events_and_only_what_memory_holds() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        history_on(config);
        config.history_config.resume_max_events = 3;
    });
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        node.ready().await;
        let mut client = Client::connect(node.addr()).await;
        client
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        publish(&node, "c0", &t.a).await;
        let (_, position) = next_event(&mut client).await;
        for i in 1..=3 {
            publish(&node, &format!("c{i}"), &t.a).await;
        }
        // Three missed: replayed.
        let (mut three, _, reply) = resumed(&node, &token, &position).await;
        assert_eq!(reply.get("data").unwrap().get_bool("recovered"), Some(true));
        for i in 1..=3 {
            assert_eq!(next_event(&mut three).await.0, format!("c{i}"));
        }
        // Four missed: too many.
        publish(&node, "c4", &t.a).await;
        let (mut four, _, reply) = resumed(&node, &token, &position).await;
        assert_eq!(
            reply.get("data").unwrap().get_bool("recovered"),
            Some(false),
            "{reply}"
        );
        assert!(four.next_json(Duration::from_millis(200)).await.is_none());
    });
    node.stop();

    // A history of a few events' worth of memory forgets the oldest: too old.
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        history_on(config);
        config.history_config.memory_bytes = 2_000;
    });
    runtime().block_on(async {
        node.ready().await;
        let mut client = Client::connect(node.addr()).await;
        client
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        publish(&node, "c0", &t.a).await;
        let (_, position) = next_event(&mut client).await;
        for i in 1..=20 {
            publish(&node, &format!("c{i}"), &t.a).await;
        }
        let (_late, _, reply) = resumed(&node, &token, &position).await;
        assert_eq!(
            reply.get("data").unwrap().get_bool("recovered"),
            Some(false),
            "{reply}"
        );
    });
    node.stop();
}

#[test]
fn voipbin_resumes_too() {
    let tag = horizon::ids::random_hex(5);
    let customer = format!("cust-{tag}");
    let toml = format!(
        "[[tokens]]\ntoken = \"vb-{customer}\"\naccount_id = \"{customer}\"\ncustomer_id = \"{customer}\"\npermissions = [\"admin\"]\n"
    );
    let node = Node::start(false, &toml, |config, _| history_on(config));
    runtime().block_on(async {
        node.ready().await;
        let url = format!("ws://{}/v1.0/ws?token=vb-{customer}", node.addr());
        let event = |id: &str| {
            format!(
                r#"{{"type":"call_hangup","publisher":"call-manager","data_type":"application/json","data":{{"id":"{id}"}}}}"#
            )
            .into_bytes()
        };
        let key = |id: &str| format!("customer_id.{customer}.call.call_hangup.{id}");
        let send = |text: String| Message::text(text);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let topic = format!("customer_id:{customer}:call:*");
        ws.send(send(format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#)))
            .await
            .unwrap();
        async fn frame(
            ws: &mut tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        ) -> OwnedValue {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => return common::kazoo::parse(&text),
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("no frame: {other:?}"),
                }
            }
        }
        assert_eq!(frame(&mut ws).await.get_str("type"), Some("subscribed"));
        node.ingest
            .publish(horizon::families::voipbin::EXCHANGE, &key("v1"), event("v1"))
            .await
            .unwrap();
        let got = frame(&mut ws).await;
        let position = got.get_str("position").expect("a position").to_string();
        drop(ws);
        for id in ["v2", "v3"] {
            node.ingest
                .publish(horizon::families::voipbin::EXCHANGE, &key(id), event(id))
                .await
                .unwrap();
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(send(format!(
            r#"{{"type":"subscribe","topics":["{topic}"],"resume_from":"{position}"}}"#
        )))
        .await
        .unwrap();
        let reply = frame(&mut ws).await;
        assert_eq!(reply.get_str("type"), Some("subscribed"), "{reply}");
        assert_eq!(reply.get_bool("recovered"), Some(true), "{reply}");
        for id in ["v2", "v3"] {
            let got = frame(&mut ws).await;
            assert_eq!(
                got.get("data").and_then(|d| d.get_str("id")),
                Some(id),
                "{got}"
            );
        }
    });
    node.stop();
}

#[test]
fn a_client_resumes_on_another_node_from_the_rabbitmq_stream() {
    let t = Tenants::new();
    let stream = format!("horizon.test.events.{}", horizon::ids::random_hex(4));
    let tweak = |config: &mut horizon::config::ServeConfig| {
        history_on(config);
        config.history_config.stream = stream.clone();
    };
    let one = Node::start(true, &t.auth_toml(), |config, _| tweak(config));
    let two = Node::start(true, &t.auth_toml(), |config, _| tweak(config));
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        one.ready().await;
        two.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        let mut client = Client::connect(one.addr()).await;
        client
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        // Both nodes read the same stream: the same event has the same position on both.
        let mut watcher = Client::connect(two.addr()).await;
        watcher
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "s1", &t.a).await;
        let (call, position) = next_event(&mut client).await;
        assert_eq!(call, "s1");
        assert_eq!(next_event(&mut watcher).await, (call, position.clone()));
        drop(client);
        for call in ["s2", "s3", "s4"] {
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", call, &t.a).await;
        }
        for call in ["s2", "s3", "s4"] {
            assert_eq!(next_event(&mut watcher).await.0, call);
        }
        let (mut moved, _, reply) = resumed(&two, &token, &position).await;
        assert_eq!(
            reply.get("data").unwrap().get_bool("recovered"),
            Some(true),
            "{reply}"
        );
        for call in ["s2", "s3", "s4"] {
            assert_eq!(next_event(&mut moved).await.0, call);
        }
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "s5", &t.a).await;
        assert_eq!(next_event(&mut moved).await.0, "s5");
        assert!(moved.next_json(Duration::from_millis(300)).await.is_none());
        common::kazoo::delete_stream(&channel, &stream).await;
    });
    one.stop();
    two.stop();
}

/// A client away for 10 s reconnects to the same node, which reads the RabbitMQ stream: exactly
/// the events it missed and may see, in order, then live, with nothing twice.
#[test]
fn a_client_away_ten_seconds_gets_exactly_what_it_missed_from_the_stream() {
    let t = Tenants::new();
    let stream = format!("horizon.test.away.{}", horizon::ids::random_hex(4));
    let node = Node::start(true, &t.auth_toml(), |config, _| {
        history_on(config);
        config.history_config.stream = stream.clone();
    });
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        let (mut client, recovered, _) = resumed(&node, &token, "latest").await;
        assert_eq!(recovered, Some(true));
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "w1", &t.a).await;
        let (call, position) = next_event(&mut client).await;
        assert_eq!(call, "w1");
        drop(client);
        let away = std::time::Instant::now();
        for (i, pause) in [(2, 0), (3, 5), (4, 5)] {
            tokio::time::sleep(Duration::from_secs(pause)).await;
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("w{i}"), &t.a).await;
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("o{i}"), &t.b).await;
        }
        assert!(away.elapsed() >= Duration::from_secs(10));
        let (mut back, recovered, reply) = resumed(&node, &token, &position).await;
        assert_eq!(recovered, Some(true), "{reply}");
        for i in 2..=4 {
            assert_eq!(next_event(&mut back).await.0, format!("w{i}"));
        }
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "w5", &t.a).await;
        assert_eq!(next_event(&mut back).await.0, "w5");
        assert!(back.next_json(Duration::from_millis(300)).await.is_none());

        // Resume is not a way into another tenant: account a's token asking for account b's
        // events from the same position is refused, and gets none of them.
        let mut prying = Client::connect(node.addr()).await;
        let reply = prying
            .command(
                "subscribe",
                Some(&token),
                &format!(
                    r#"{{"binding":"call.CHANNEL_CREATE.*","account_id":"{}","resume_from":"{position}"}}"#,
                    t.b
                ),
            )
            .await;
        assert_eq!(reply.get_str("status"), Some("error"), "{reply}");
        assert!(prying.next_json(Duration::from_millis(500)).await.is_none());
        common::kazoo::delete_stream(&channel, &stream).await;
    });
    node.stop();
}

/// A position older than the stream keeps (its retention removed the events after it): a node
/// that must read them back finds them gone and says `recovered: false`, replays nothing, and
/// the socket goes on live. The stream is declared here with a small length bound and tiny
/// segments, so that retention (applied per segment) removes the oldest while the test runs.
#[test]
fn a_position_older_than_the_stream_keeps_is_not_recovered() {
    use lapin::types::{AMQPValue, FieldTable};
    let t = Tenants::new();
    let stream = format!("horizon.test.retention.{}", horizon::ids::random_hex(4));
    runtime().block_on(async {
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(20_000));
        arguments.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(4_000),
        );
        channel
            .queue_declare(
                stream.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("the stream declared");
    });
    let tweak = |config: &mut horizon::config::ServeConfig| {
        history_on(config);
        config.history_config.stream = stream.clone();
        config.history_config.memory_bytes = 2_000;
    };
    let one = Node::start(true, &t.auth_toml(), |config, _| tweak(config));
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        one.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        let mut client = Client::connect(one.addr()).await;
        client
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "r0", &t.a).await;
        let (_, position) = next_event(&mut client).await;
        // Some 100 KB more: the segments holding r0 and what followed it are removed.
        for i in 1..=120 {
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("r{i}"), &t.a).await;
        }
        // Read up to the last (a node lagging behind so small a retention may itself miss
        // some: the stream removed them before it read them; it says so at WARN).
        while next_event(&mut client).await.0 != "r120" {}
        // The stream's first offset is now past the position's next.
        let reader = amqp.create_channel().await.unwrap();
        reader.basic_qos(10, Default::default()).await.unwrap();
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let mut consumer = reader
            .basic_consume(
                stream.as_str().into(),
                "retention-probe".into(),
                Default::default(),
                arguments,
            )
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        let first = match first
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned())
        {
            Some(AMQPValue::LongLongInt(n)) => n as u64,
            other => panic!("no offset: {other:?}"),
        };
        let at: u64 = position.rsplit_once('-').unwrap().1.parse().unwrap();
        assert!(
            first > at + 1,
            "retention removed nothing (first {first}, position {at})"
        );
        let _ = reader.close(200, "ok".into()).await;
        let (mut late, recovered, reply) = resumed(&one, &token, &position).await;
        assert_eq!(recovered, Some(false), "{reply}");
        assert!(late.next_json(Duration::from_millis(300)).await.is_none());
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "r121", &t.a).await;
        assert_eq!(next_event(&mut late).await.0, "r121");
        common::kazoo::delete_stream(&channel, &stream).await;
    });
    one.stop();
}

/// Deep resumes: a node that started after the missed events, and a node whose memory forgot
/// them, read them back from the stream (one reader per node) - exactly those the binding and
/// the identity may see, then what memory has, then live.
#[test]
fn what_a_node_never_had_or_forgot_is_read_back_from_the_stream() {
    let t = Tenants::new();
    let stream = format!("horizon.test.events.{}", horizon::ids::random_hex(4));
    let one = Node::start(true, &t.auth_toml(), |config, _| {
        history_on(config);
        config.history_config.stream = stream.clone();
    });
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        one.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        let mut client = Client::connect(one.addr()).await;
        client
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "d1", &t.a).await;
        let (_, position) = next_event(&mut client).await;
        // Missed while away, with another tenant's events between them; then a node starts
        // that has none of them in memory (a few hundred bytes of it at most).
        for i in 2..=6 {
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("d{i}"), &t.a).await;
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("x{i}"), &t.b).await;
        }
        for i in 2..=6 {
            assert_eq!(next_event(&mut client).await.0, format!("d{i}"));
        }
        let two = Node::start(true, &t.auth_toml(), |config, _| {
            history_on(config);
            config.history_config.stream = stream.clone();
            config.history_config.memory_bytes = 2_000;
        });
        two.ready().await;
        let (mut moved, _, reply) = resumed(&two, &token, &position).await;
        assert_eq!(
            reply.get("data").unwrap().get_bool("recovered"),
            Some(true),
            "{reply}"
        );
        for i in 2..=6 {
            assert_eq!(next_event(&mut moved).await.0, format!("d{i}"));
        }
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "d7", &t.a).await;
        let (call, position) = next_event(&mut moved).await;
        assert_eq!(call, "d7");
        assert!(moved.next_json(Duration::from_millis(300)).await.is_none());
        drop(moved);

        // Twenty more: node two's memory keeps the last few, the stream gives the rest.
        for i in 8..=27 {
            common::kazoo::publish_call(&channel, "CHANNEL_CREATE", &format!("d{i}"), &t.a).await;
        }
        for i in 7..=27 {
            assert_eq!(next_event(&mut client).await.0, format!("d{i}"));
        }
        let (mut late, _, reply) = resumed(&two, &token, &position).await;
        assert_eq!(
            reply.get("data").unwrap().get_bool("recovered"),
            Some(true),
            "{reply}"
        );
        for i in 8..=27 {
            assert_eq!(next_event(&mut late).await.0, format!("d{i}"));
        }
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "d28", &t.a).await;
        assert_eq!(next_event(&mut late).await.0, "d28");
        assert!(late.next_json(Duration::from_millis(300)).await.is_none());
        let (_, metrics) = common::http(two.api.local_addr(), "GET", "/metrics", &[], "").await;
        assert!(
            metrics.contains("horizon_resume_stream_reads_total{result=\"read\"}"),
            "{metrics}"
        );
        common::kazoo::delete_stream(&channel, &stream).await;
        two.stop();
    });
    one.stop();
}

#[test]
fn a_resuming_socket_is_told_the_head_while_the_log_moves_and_others_are_not() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, _| {
        history_on(config);
        config.position_interval = Duration::from_secs(1);
    });
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        node.ready().await;
        let mut resuming = Client::connect(node.addr()).await;
        resuming
            .subscribe(
                Some(&token),
                r#"{"binding":"call.CHANNEL_DESTROY.*","resume_from":"latest"}"#,
            )
            .await;
        let mut plain = Client::connect(node.addr()).await;
        plain
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_DESTROY.*"}"#)
            .await;
        // Events neither socket binds: the log moves, nothing is delivered.
        for i in 0..3 {
            publish(&node, &format!("p{i}"), &t.a).await;
        }
        let frame = resuming
            .next_json(Duration::from_secs(5))
            .await
            .expect("a position frame");
        assert_eq!(frame.get_str("action"), Some("position"), "{frame}");
        let position = frame.get_str("position").unwrap();
        assert!(position.ends_with("-2"), "the head: {frame}");
        // Told once per move: nothing more while the log stands still.
        assert!(resuming
            .next_json(Duration::from_millis(2500))
            .await
            .is_none());
        assert!(
            plain.next_json(Duration::from_millis(100)).await.is_none(),
            "Monster UI's client never gets one"
        );
    });
    node.stop();
}

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn clients_of_a_killed_node_resume_on_another_with_nothing_lost_or_twice() {
    use common::webhooks::Node as Serve;
    let t = Tenants::new();
    let auth = common::temp_file("resume-auth", &t.auth_toml());
    let stream = format!("horizon.test.kill.{}", horizon::ids::random_hex(4));
    let (ws_a, ws_b) = (free_port(), free_port());
    let args = |name: &str, ws: u16| {
        vec![
            ("amqp-url", common::amqp_url()),
            ("auth-file", auth.display().to_string()),
            ("history", "stream".to_string()),
            ("history-stream", stream.clone()),
            ("ws-listen", format!("127.0.0.1:{ws}")),
            ("webhooks-enabled", "false".to_string()),
            ("node", format!("{name}-{}", horizon::ids::random_hex(3))),
        ]
    };
    let mut a = Serve::start(&args("a", ws_a));
    let b = Serve::start(&args("b", ws_b));
    let token = format!("tok-{}", t.a);
    const CLIENTS: usize = 20;
    runtime().block_on(async {
        for api in [a.api, b.api] {
            let mut ready = false;
            for _ in 0..100 {
                if common::http(api, "GET", "/readyz", &[], "").await.0 == 200 {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(ready, "node {api} never ready");
        }
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        let subscribe = |from: &str| {
            format!(
                r#"{{"action":"subscribe","request_id":"s","auth_token":"{token}","data":{{"binding":"call.CHANNEL_CREATE.*","resume_from":"{from}"}}}}"#
            )
        };
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_a}/"))
                .await
                .unwrap();
            ws.send(Message::text(subscribe("latest"))).await.unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert!(reply.to_string().contains("\"recovered\":true"), "{reply}");
            clients.push(ws);
        }
        // 200 numbered events a second for 3 s; node a is SIGKILLed 1 s in.
        let publishing = {
            let (channel, account) = (channel.clone(), t.a.clone());
            tokio::spawn(async move {
                for seq in 0..600usize {
                    common::kazoo::publish_call(
                        &channel,
                        "CHANNEL_CREATE",
                        &format!("seq-{seq}"),
                        &account,
                    )
                    .await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.kill();
        // Each client reads what it got before the kill, then resumes on node b.
        let mut seen: Vec<Vec<usize>> = Vec::new();
        let mut moved = Vec::new();
        for mut ws in clients {
            let mut seqs = Vec::new();
            let mut last = "latest".to_string();
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {
                let Message::Text(text) = message else {
                    continue;
                };
                let frame = common::kazoo::parse(&text);
                if let Some(position) = frame.get_str("position") {
                    last = position.to_string();
                }
                if let Some(seq) = frame
                    .get("data")
                    .and_then(|d| d.get_str("call_id"))
                    .and_then(|c| c.strip_prefix("seq-"))
                    .and_then(|s| s.parse().ok())
                {
                    seqs.push(seq);
                }
            }
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_b}/"))
                .await
                .unwrap();
            ws.send(Message::text(subscribe(&last))).await.unwrap();
            moved.push(ws);
            seen.push(seqs);
        }
        publishing.await.unwrap();
        common::kazoo::publish_call(&channel, "CHANNEL_CREATE", "sentinel", &t.a).await;
        for (ws, seqs) in moved.iter_mut().zip(seen.iter_mut()) {
            let mut recovered = None;
            loop {
                let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("frames until the sentinel")
                    .unwrap()
                    .unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let frame = common::kazoo::parse(&text);
                if frame.get_str("action") == Some("reply") {
                    recovered = frame.get("data").and_then(|d| d.get_bool("recovered"));
                    continue;
                }
                let call = frame.get("data").and_then(|d| d.get_str("call_id"));
                if call == Some("sentinel") {
                    break;
                }
                if let Some(seq) = call
                    .and_then(|c| c.strip_prefix("seq-"))
                    .and_then(|s| s.parse().ok())
                {
                    seqs.push(seq);
                }
            }
            assert_eq!(recovered, Some(true), "the resume on node b recovered");
        }
        for (i, seqs) in seen.iter().enumerate() {
            let want: Vec<usize> = (0..600).collect();
            assert_eq!(
                seqs, &want,
                "client {i}: every event once, in order, across the kill"
            );
        }
        common::kazoo::delete_stream(&channel, &stream).await;
    });
    drop(b);
    let _ = std::fs::remove_file(&auth);
}

#[test]
fn a_resume_storm_takes_turns_and_live_delivery_goes_on() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |config, limits| {
        history_on(config);
        limits.resume_admissions_per_sec = 5.0;
    });
    let token = format!("tok-{}", t.a);
    runtime().block_on(async {
        node.ready().await;
        let mut watcher = Client::connect(node.addr()).await;
        watcher
            .subscribe(Some(&token), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        publish(&node, "s0", &t.a).await;
        let (_, position) = next_event(&mut watcher).await;
        publish(&node, "s1", &t.a).await;
        assert_eq!(next_event(&mut watcher).await.0, "s1");
        // Fifteen clients resume at once; five a second are admitted.
        let started = std::time::Instant::now();
        let mut storm = Vec::new();
        for _ in 0..15 {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/", node.addr()))
                .await
                .unwrap();
            ws.send(Message::text(format!(
                r#"{{"action":"subscribe","request_id":"r","auth_token":"{token}","data":{{"binding":"call.CHANNEL_CREATE.*","resume_from":"{position}"}}}}"#
            )))
            .await
            .unwrap();
            storm.push(ws);
        }
        // Live delivery goes on meanwhile.
        for i in 2..6 {
            let sent = std::time::Instant::now();
            publish(&node, &format!("s{i}"), &t.a).await;
            assert_eq!(next_event(&mut watcher).await.0, format!("s{i}"));
            assert!(
                sent.elapsed() < Duration::from_millis(500),
                "a live event took {:?} during the storm",
                sent.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every one of them gets its turn: recovered, the missed events once, in order.
        for (i, ws) in storm.iter_mut().enumerate() {
            let mut calls = Vec::new();
            let mut recovered = None;
            while calls.len() < 5 {
                let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("client {i} waited too long"))
                    .unwrap()
                    .unwrap();
                let Message::Text(text) = message else {
                    continue;
                };
                let frame = common::kazoo::parse(&text);
                if frame.get_str("action") == Some("reply") {
                    recovered = frame.get("data").and_then(|d| d.get_bool("recovered"));
                } else if let Some(call) = frame.get("data").and_then(|d| d.get_str("call_id")) {
                    calls.push(call.to_string());
                }
            }
            assert_eq!(recovered, Some(true), "client {i} is never refused");
            assert_eq!(calls, ["s1", "s2", "s3", "s4", "s5"], "client {i}");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "fifteen resumes at five a second take turns: {:?}",
            started.elapsed()
        );
        let (_, metrics) = common::http(node.api.local_addr(), "GET", "/metrics", &[], "").await;
        let waits: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("horizon_resume_waits_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(waits >= 5, "{metrics}");
    });
    node.stop();
}

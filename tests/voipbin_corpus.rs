//! The VoIPBin wire corpus (`tests/fixtures/voipbin/`): every delivery shaped exactly as
//! VoIPBin's webhook-manager publishes it, replayed on the real broker. For each one, a socket
//! per topic VoIPBin's api-manager would deliver it under must receive it exactly once, with the
//! right frame; a socket per topic that must not, receives nothing. "Nothing" is proved with a
//! sentinel: every socket also holds a sentinel topic of its scope, and the sentinel is
//! published after the delivery (a socket receives events in publish order).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::kazoo::{parse, publish, runtime, Node};
use common::voipbin::Client;
use simd_json::prelude::*;
use simd_json::OwnedValue;

/// The ids a fixture's placeholders stand for, fresh for each run.
fn placeholders() -> BTreeMap<&'static str, String> {
    let tag = horizon::ids::random_hex(4);
    [
        "customer",
        "agent",
        "participant",
        "id",
        "chat",
        "aicall",
        "session",
        "other",
    ]
    .into_iter()
    .map(|name| {
        (
            name,
            format!("{name}-{tag}-{}", horizon::ids::random_hex(4)),
        )
    })
    .collect()
}

fn fill(text: &str, ids: &BTreeMap<&'static str, String>) -> String {
    ids.iter().fold(text.to_string(), |text, (name, id)| {
        text.replace(&format!("{{{name}}}"), id)
    })
}

/// The auth file: a VoIPBin super admin (any customer topic) and one token per agent (an
/// agent's topics are the agent's own).
fn auth_toml(ids: &BTreeMap<&'static str, String>) -> String {
    let mut toml = format!(
        "[[tokens]]\ntoken = \"tok-root-{c}\"\naccount_id = \"{c}\"\ncustomer_id = \"{c}\"\npermissions = [\"super_admin\"]\n",
        c = ids["customer"]
    );
    for agent in ["agent", "participant"] {
        toml.push_str(&format!(
            "[[tokens]]\ntoken = \"tok-{a}\"\naccount_id = \"{c}\"\ncustomer_id = \"{c}\"\nagent_id = \"{a}\"\npermissions = [\"agent\"]\n",
            a = ids[agent],
            c = ids["customer"]
        ));
    }
    toml
}

fn strings(value: Option<&OwnedValue>) -> Vec<String> {
    value
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A topic's scope and owner, and the sentinel topic and routing key of that owner.
fn sentinel_of(topic: &str) -> (String, String) {
    let mut parts = topic.split(':');
    let (scope, owner) = (parts.next().unwrap(), parts.next().unwrap());
    (
        format!("{scope}:{owner}:sentinel"),
        format!("{scope}.{owner}.sentinel.sentinel_reached"),
    )
}

#[test]
fn every_voipbin_delivery_reaches_exactly_its_topics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/voipbin");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the VoIPBin corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus has its deliveries");
    let ids = placeholders();
    let node = Node::start(true, &auth_toml(&ids), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let (amqp, channel) = common::voipbin_broker().await;
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let fixture = parse(&fill(&std::fs::read_to_string(file).unwrap(), &ids));
            assert!(
                !strings(fixture.get("source")).is_empty(),
                "{name} names its source"
            );
            let exchange = fixture.get_str("exchange").unwrap();
            assert_eq!(exchange, horizon::families::voipbin::EXCHANGE, "{name}");
            let routing_key = fixture.get_str("routing_key").unwrap();
            let body = fixture.get("body").unwrap();
            let want = strings(fixture.get("topics"));
            let not = strings(fixture.get("not_topics"));
            assert!(!want.is_empty(), "{name}");

            // One socket per topic, each also holding its owner's sentinel topic.
            let mut sockets = Vec::new();
            for (topic, expected) in want.iter().map(|t| (t, true)).chain(not.iter().map(|t| (t, false))) {
                let token = if topic.starts_with("agent_id:") {
                    format!("tok-{}", topic.split(':').nth(1).unwrap())
                } else {
                    format!("tok-root-{}", ids["customer"])
                };
                let mut client = Client::connect(&node, &token).await;
                let (sentinel_topic, _) = sentinel_of(topic);
                let answer = client.subscribe(&[topic.as_str(), &sentinel_topic]).await;
                assert_eq!(answer.get_str("type"), Some("subscribed"), "{name}: {topic}: {answer}");
                sockets.push((topic.clone(), expected, client));
            }
            let wire = body.encode();
            publish(&channel, exchange, routing_key, wire.as_bytes()).await;
            let sentinel = format!("sentinel-{}", horizon::ids::random_hex(4));
            let mut owners: Vec<String> = sockets.iter().map(|(t, _, _)| sentinel_of(t).1).collect();
            owners.sort();
            owners.dedup();
            for key in owners {
                let body = format!(
                    r#"{{"type":"sentinel_reached","publisher":"test","data_type":"application/json","data":{{"id":"{sentinel}"}}}}"#
                );
                publish(&channel, exchange, &format!("{key}.{sentinel}"), body.as_bytes()).await;
            }

            let event_type = body.get_str("type").unwrap();
            let data = match body.get("data").unwrap() {
                OwnedValue::String(text) => parse(text),
                object => object.clone(),
            };
            for (topic, expected, client) in &mut sockets {
                let got = client.events_until(&sentinel).await;
                if !*expected {
                    assert!(got.is_empty(), "{name}: {topic} must get nothing: {got:?}");
                    continue;
                }
                assert_eq!(got.len(), 1, "{name}: {topic} gets the event once: {got:?}");
                let frame = &got[0];
                assert_eq!(frame.get_str("type"), Some(event_type), "{name}: {frame}");
                assert_eq!(frame.get_str("topic"), Some(topic.as_str()), "{name}: {frame}");
                assert_eq!(frame.get("data"), Some(&data), "{name}: the resource object, as published");
            }
        }
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

//! Commands over the WebSocket and crossbar's REST paths (docs/kazoo.md "Commands"), on the real
//! broker: the message that reaches a queue bound to `metaflow` or `conference` is exactly what
//! crossbar publishes (`tests/fixtures/kazoo/commands/`), and every refusal publishes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::kazoo::{declare_kazoo_exchanges, errors, publish, runtime, Client, Node, Tenants};
use futures_util::StreamExt;
use horizon::families::encode_segment;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use simd_json::prelude::*;

/// The tenants' auth file plus tokens with the `commands` right: `cmd-<account>` for the
/// account and the reseller.
fn auth_toml(t: &Tenants) -> String {
    let mut toml = t.auth_toml();
    for account in [&t.a, &t.reseller] {
        toml.push_str(&format!(
            "[[tokens]]\ntoken = \"cmd-{account}\"\naccount_id = \"{account}\"\ncommands = true\n"
        ));
    }
    toml
}

/// A queue bound to `exchange` (declared by `declare_kazoo_exchanges`) with `key`, consumed
/// without acks.
async fn capture(channel: &lapin::Channel, exchange: &str, key: &str) -> lapin::Consumer {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("capture queue");
    channel
        .queue_bind(
            queue.name().as_str().into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the capture queue");
    channel
        .basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the capture queue")
}

/// The next captured message whose routing key holds `tag` (tests share the broker): routing
/// key and JSON body; `None` after `wait`.
async fn captured(
    consumer: &mut lapin::Consumer,
    tag: &str,
    wait: Duration,
) -> Option<(String, Value)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .ok()??;
        let delivery = delivery.expect("delivery");
        let key = delivery.routing_key.to_string();
        if key.contains(tag) {
            let body = serde_json::from_slice(&delivery.data).expect("a JSON body");
            return Some((key, body));
        }
    }
}

/// The value of a metric line starting with `prefix` (0 when absent).
fn metric(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0)
}

/// A channel event as ecallmgr publishes it, `Other-Leg-Call-ID` when bridged.
async fn call_event(
    channel: &lapin::Channel,
    event: &str,
    call_id: &str,
    account: &str,
    other_leg: Option<&str>,
) {
    let mut body = serde_json::json!({
        "Event-Name": event, "Event-Category": "call_event", "Call-ID": call_id,
        "Call-Direction": "inbound", "Caller-ID-Number": "+15551230000",
        "Custom-Channel-Vars": {"Account-ID": account},
        "Msg-ID": horizon::ids::random_hex(8), "App-Name": "ecallmgr", "App-Version": "4.3.0",
        "Node": "ecallmgr@fs1", "Server-ID": ""
    });
    if let Some(leg) = other_leg {
        body["Other-Leg-Call-ID"] = Value::from(leg);
    }
    let key = format!("call.{event}.{}", encode_segment(call_id));
    publish(channel, "callevt", &key, body.to_string().as_bytes()).await;
}

/// A participant joining a conference, as ecallmgr publishes it.
async fn conference_join(channel: &lapin::Channel, account: &str, conference: &str, call: &str) {
    let body = serde_json::json!({
        "Event-Category": "conference", "Event-Name": "event", "Event": "add-member",
        "Conference-ID": conference, "Call-ID": call, "Participant-ID": 7,
        "Account-ID": account, "Custom-Channel-Vars": {"Account-ID": account},
        "Msg-ID": "m", "App-Name": "ecallmgr", "App-Version": "4.3.0", "Node": "ecallmgr@fs1"
    });
    let key = format!(
        "conference.event.add-member.{account}.{conference}.{}",
        encode_segment(call)
    );
    publish(channel, "conference", &key, body.to_string().as_bytes()).await;
}

/// Reads event frames until one named `name` about `id` (call or conference) has arrived: the
/// node has then seen the event (the tracker learns of it before the shards do).
async fn seen(client: &mut Client, name: &str, id: &str) {
    let matches = |frame: &simd_json::OwnedValue| {
        frame.get_str("name") == Some(name)
            && frame.get("data").is_some_and(|d| {
                d.get_str("call_id") == Some(id) || d.get_str("conference_id") == Some(id)
            })
    };
    while let Some(frame) = client.events.pop_front() {
        if matches(&frame) {
            return;
        }
    }
    loop {
        let frame = client
            .next_json(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("event {name} of {id} not received"));
        if matches(&frame) {
            return;
        }
    }
}

/// A socket with command rights on `account`, watching its calls and conferences.
async fn commander(node: &Node, token: &str) -> Client {
    let mut client = Client::connect(node.addr()).await;
    client
        .subscribe(
            Some(token),
            r#"{"bindings":["call.*.*","conference.event.*.*"]}"#,
        )
        .await;
    client
}

/// What identifies the sender of a message: compared by presence, not value.
const SENDER: &[&str] = &["Msg-ID", "App-Name", "App-Version", "Node", "Server-ID"];

fn without_sender(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        for key in SENDER {
            map.remove(*key);
        }
    }
    body
}

fn fill(text: &str, ids: &BTreeMap<&str, String>) -> String {
    ids.iter().fold(text.to_string(), |text, (name, id)| {
        text.replace(&format!("{{{name}}}"), id)
    })
}

async fn api(node: &Node, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let (status, text) = common::http(
        node.api.local_addr(),
        method,
        path,
        &[("X-Auth-Token", token)],
        body,
    )
    .await;
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value)
}

#[test]
fn every_command_publishes_what_crossbar_publishes_from_the_socket_and_from_rest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kazoo/commands");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the command corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 13, "six channel and seven conference commands");
    let tenants = Tenants::new();
    let node = Node::start(true, &auth_toml(&tenants), |_, _| {});
    let token = format!("cmd-{}", tenants.a);
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let mut client = commander(&node, &token).await;
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let tag = horizon::ids::random_hex(4);
            let call_raw = format!("c-{tag}@pbx.example.com");
            let ids = BTreeMap::from([
                ("account", tenants.a.clone()),
                ("call", encode_segment(&call_raw)),
                ("call_raw", call_raw.clone()),
                ("conf", format!("conf-{tag}")),
            ]);
            let fixture: Value =
                serde_json::from_str(&fill(&std::fs::read_to_string(file).unwrap(), &ids)).unwrap();
            assert!(
                fixture["source"].as_array().is_some_and(|s| !s.is_empty()),
                "{name} names its source"
            );
            let exchange = fixture["exchange"].as_str().unwrap();
            let routing_key = fixture["routing_key"].as_str().unwrap();
            let mut consumer = if exchange == "metaflow" {
                call_event(&channel, "CHANNEL_CREATE", &call_raw, &tenants.a, None).await;
                call_event(
                    &channel,
                    "CHANNEL_BRIDGE",
                    &call_raw,
                    &tenants.a,
                    Some("leg-b"),
                )
                .await;
                seen(&mut client, "CHANNEL_BRIDGE", &call_raw).await;
                capture(
                    &channel,
                    exchange,
                    &format!("metaflow.action.{}.*", ids["call"]),
                )
                .await
            } else {
                conference_join(&channel, &tenants.a, &ids["conf"], &call_raw).await;
                seen(&mut client, "add-member", &ids["conf"]).await;
                capture(&channel, exchange, routing_key).await
            };
            let mut want = without_sender(&fixture["body"]);
            for (k, v) in fixture["horizon_adds"].as_object().unwrap() {
                want[k] = v.clone();
            }

            // The socket.
            let command = &fixture["socket"];
            let reply = client
                .command(
                    command["action"].as_str().unwrap(),
                    None,
                    &command["data"].to_string(),
                )
                .await;
            assert_eq!(reply.get_str("status"), Some("success"), "{name}: {reply}");
            let data = reply.get("data").unwrap();
            let msg_id = data.get_str("msg_id").expect("the reply names the Msg-ID");
            let (key, body) = captured(&mut consumer, &tag, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{name}: nothing published"));
            assert_eq!(key, routing_key, "{name}: routing key");
            assert_eq!(without_sender(&body), want, "{name}: body");
            assert_eq!(body["Msg-ID"].as_str(), Some(msg_id), "{name}");
            for key in ["App-Name", "App-Version", "Node"] {
                assert!(body[key].is_string(), "{name}: {key} is there");
            }

            // The same through crossbar's REST path.
            let rest = &fixture["rest"];
            let (status, answer) = api(
                &node,
                rest["method"].as_str().unwrap(),
                rest["path"].as_str().unwrap(),
                &token,
                &rest["body"].to_string(),
            )
            .await;
            assert_eq!(status, 202, "{name}: {answer}");
            assert_eq!(answer["status"], "success", "{name}");
            assert_eq!(answer["data"], fixture["rest_reply"], "{name}");
            let (key, body) = captured(&mut consumer, &tag, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{name}: nothing published from REST"));
            assert_eq!(key, routing_key, "{name}: REST routing key");
            assert_eq!(without_sender(&body), want, "{name}: REST body");
            assert_eq!(body["Msg-ID"], answer["msg_id"], "{name}: REST Msg-ID");
        }
    });
    node.stop();
}

#[test]
fn refused_commands_say_why_and_publish_nothing() {
    let tenants = Tenants::new();
    let node = Node::start(true, &auth_toml(&tenants), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let tag = horizon::ids::random_hex(4);
        let (live, unbridged, ended) = (
            format!("live-{tag}"),
            format!("unbridged-{tag}"),
            format!("ended-{tag}"),
        );
        let (b_call, parent_call, child_call) = (
            format!("b-{tag}"),
            format!("parent-{tag}"),
            format!("child-{tag}"),
        );
        let conf = format!("conf-{tag}");
        let mut calls = capture(&channel, "metaflow", "metaflow.action.#").await;
        let mut confs = capture(&channel, "conference", "conference.command.*").await;

        // The reseller watches every account of the tree; `a` commands.
        let mut watcher = commander(&node, &format!("cmd-{}", tenants.reseller)).await;
        watcher
            .subscribe(
                None,
                &format!(
                    r#"{{"account_id":"{}","binding":"call.*.*"}}"#,
                    tenants.b
                ),
            )
            .await;
        watcher
            .subscribe(
                None,
                &format!(
                    r#"{{"account_id":"{}","binding":"call.*.*"}}"#,
                    tenants.a_child
                ),
            )
            .await;
        let mut a = commander(&node, &format!("cmd-{}", tenants.a)).await;
        call_event(&channel, "CHANNEL_BRIDGE", &live, &tenants.a, Some("x")).await;
        call_event(&channel, "CHANNEL_CREATE", &unbridged, &tenants.a, None).await;
        call_event(&channel, "CHANNEL_CREATE", &ended, &tenants.a, None).await;
        call_event(&channel, "CHANNEL_DESTROY", &ended, &tenants.a, None).await;
        call_event(&channel, "CHANNEL_CREATE", &b_call, &tenants.b, None).await;
        call_event(&channel, "CHANNEL_CREATE", &parent_call, &tenants.reseller, None).await;
        call_event(&channel, "CHANNEL_CREATE", &child_call, &tenants.a_child, None).await;
        seen(&mut a, "CHANNEL_DESTROY", &ended).await;
        seen(&mut watcher, "CHANNEL_CREATE", &b_call).await;
        seen(&mut watcher, "CHANNEL_CREATE", &parent_call).await;
        seen(&mut watcher, "CHANNEL_CREATE", &child_call).await;

        let hangup = |call: &str| format!(r#"{{"call_id":"{call}","action":"hangup"}}"#);
        let refusals: Vec<(String, &str)> = vec![
            (hangup(&b_call), "bad identifier"),
            (hangup(&parent_call), "bad identifier"),
            (hangup(&child_call), "bad identifier"),
            (hangup(&ended), "bad identifier"),
            (hangup(&format!("never-{tag}")), "bad identifier"),
            (
                format!(r#"{{"call_id":"{unbridged}","action":"transfer","target":"2000"}}"#),
                "Channel is not bridged",
            ),
            (
                format!(r#"{{"call_id":"{live}","action":"transfer"}}"#),
                "invalid data: target required",
            ),
            (
                format!(r#"{{"call_id":"{live}","action":"dance"}}"#),
                "invalid data: action must be one of hangup, break, transfer, callflow, intercept, move",
            ),
            (
                format!(
                    r#"{{"call_id":"{live}","action":"transfer","target":"{}"}}"#,
                    "9".repeat(8000)
                ),
                "invalid data: target must be at most 1024 bytes without control characters",
            ),
            (
                r#"{"call_id":"*","action":"hangup"}"#.to_string(),
                "invalid data: call_id must be a call id (at most 256 bytes, no spaces, not a wildcard)",
            ),
            (
                format!(r#"{{"call_id":"{live}","action":"hangup","account_id":"*"}}"#),
                "unauthorized wildcard account id",
            ),
            (
                format!(
                    r#"{{"call_id":"{live}","action":"hangup","account_id":"{}"}}"#,
                    tenants.b
                ),
                "unauthorized account id",
            ),
        ];
        for (data, why) in &refusals {
            let reply = a.command("channel", None, data).await;
            assert_eq!(errors(&reply), [*why], "{data}");
        }
        for (data, why) in [
            (
                format!(r#"{{"conference_id":"{conf}","action":"mute","participant_id":3}}"#),
                "bad identifier",
            ),
            (
                format!(r#"{{"conference_id":"{conf}","action":"mute","participant_id":"x3"}}"#),
                "invalid data: participant_id must be a participant number",
            ),
            (
                format!(r#"{{"conference_id":"{conf}","action":"mute"}}"#),
                "invalid data: participant_id required",
            ),
            (
                r#"{"conference_id":"c.#","action":"lock"}"#.to_string(),
                "invalid data: conference_id must be at most 256 of A-Z a-z 0-9 - _ ~ @ + =",
            ),
        ] {
            let reply = a.command("conference", None, &data).await;
            assert_eq!(errors(&reply), [why], "{data}");
        }
        // A token without the right, on the socket and on REST.
        let mut plain = Client::connect(node.addr()).await;
        let reply = plain
            .command(
                "channel",
                Some(&format!("tok-{}", tenants.a)),
                &hangup(&live),
            )
            .await;
        assert_eq!(errors(&reply), ["commands not allowed for this token"]);
        let (status, answer) = api(
            &node,
            "POST",
            &format!("/v2/accounts/{}/channels/{live}", tenants.a),
            &format!("tok-{}", tenants.a),
            r#"{"data":{"action":"hangup"}}"#,
        )
        .await;
        assert_eq!(status, 403, "{answer}");
        // REST: crossbar's shapes.
        let cmd = format!("cmd-{}", tenants.a);
        let (status, answer) = api(
            &node,
            "POST",
            &format!("/v2/accounts/{}/channels/{unbridged}", tenants.a),
            &cmd,
            r#"{"data":{"action":"transfer","target":"2000"}}"#,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["message"], "invalid data");
        assert_eq!(
            answer["data"]["other_leg_call_id"]["required"]["message"],
            "Channel is not bridged"
        );
        let (status, answer) = api(
            &node,
            "POST",
            &format!("/v2/accounts/{}/channels/{b_call}", tenants.a),
            &cmd,
            r#"{"data":{"action":"hangup"}}"#,
        )
        .await;
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["message"], "bad identifier");
        assert_eq!(answer["data"][0].as_str(), Some(b_call.as_str()));
        let (status, answer) = api(
            &node,
            "PUT",
            &format!("/v2/accounts/{}/conferences/{conf}/participants/abc", tenants.a),
            &cmd,
            r#"{"data":{"action":"mute"}}"#,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        let long = format!(
            r#"{{"data":{{"action":"transfer","target":"{}"}}}}"#,
            "9".repeat(60_000)
        );
        let (status, answer) = api(
            &node,
            "POST",
            &format!("/v2/accounts/{}/channels/{live}", tenants.a),
            &cmd,
            &long,
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["data"]["target"].is_object(), "{answer}");

        // Nothing of that was published: the next message on each exchange is the sentinel.
        let reply = a.command("channel", None, &hangup(&live)).await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        let (key, _) = captured(&mut calls, &tag, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(key, format!("metaflow.action.{live}.hangup"));
        assert!(captured(&mut calls, &tag, Duration::from_millis(300))
            .await
            .is_none());
        conference_join(&channel, &tenants.a, &conf, &live).await;
        seen(&mut a, "add-member", &conf).await;
        let reply = a
            .command("conference", None, &format!(r#"{{"conference_id":"{conf}","action":"lock"}}"#))
            .await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        let (key, body) = captured(&mut confs, &tag, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(key, format!("conference.command.{conf}"));
        assert_eq!(body["Account-ID"].as_str(), Some(tenants.a.as_str()));

        // Counted by command and result (process-wide: other tests here count too).
        let (_, metrics) = common::http(node.api.local_addr(), "GET", "/metrics", &[], "").await;
        for (line, at_least) in [
            ("horizon_commands_total{command=\"hangup\",result=\"bad_identifier\"} ", 5),
            ("horizon_commands_total{command=\"transfer\",result=\"not_bridged\"} ", 2),
            ("horizon_commands_total{command=\"lock\",result=\"published\"} ", 1),
            ("horizon_commands_total{command=\"hangup\",result=\"not_allowed\"} ", 2),
        ] {
            assert!(metric(&metrics, line) >= at_least, "{line} in\n{metrics}");
        }
        assert!(metric(&metrics, "horizon_command_tracked{what=\"calls\"} ") >= 1);
    });
    node.stop();
}

#[test]
fn a_command_is_taken_by_whichever_node_has_seen_the_call_and_the_monster_ui_viewer_flow_works() {
    let tenants = Tenants::new();
    let toml = auth_toml(&tenants);
    let one = Node::start(true, &toml, |_, _| {});
    let two = Node::start(true, &toml, |_, _| {});
    let cmd = format!("cmd-{}", tenants.a);
    runtime().block_on(async {
        one.ready().await;
        two.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let tag = horizon::ids::random_hex(4);
        let early = format!("early-{tag}");
        let call = format!("call-{tag}");
        let mut calls = capture(&channel, "metaflow", "metaflow.action.#").await;
        let mut socket = commander(&one, &cmd).await;
        call_event(&channel, "CHANNEL_CREATE", &early, &tenants.a, None).await;
        seen(&mut socket, "CHANNEL_CREATE", &early).await;
        // Node two has no socket for the account: it has not seen the call, and says so; its
        // first REST command makes it watch the account.
        let path = |id: &str| format!("/v2/accounts/{}/channels/{id}", tenants.a);
        let hangup = r#"{"data":{"action":"hangup"}}"#;
        let (status, answer) = api(&two, "POST", &path(&early), &cmd, hangup).await;
        assert_eq!(status, 404, "{answer}");
        // Node one, which has seen it, takes it from REST.
        let (status, answer) = api(&one, "POST", &path(&early), &cmd, hangup).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["data"], "hangup initiated");
        let (key, _) = captured(&mut calls, &tag, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(key, format!("metaflow.action.{early}.hangup"));
        // A call that begins now is known to both nodes (node two waits for its binds).
        let mut waited = 0;
        while !common::kazoo::broker_bindings(two.ingest.queue_name())
            .contains(&("callevt".to_string(), "call.CHANNEL_CREATE.*".to_string()))
        {
            waited += 1;
            assert!(waited < 50, "node two never bound the call events");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        call_event(&channel, "CHANNEL_CREATE", &call, &tenants.a, None).await;
        seen(&mut socket, "CHANNEL_CREATE", &call).await;
        let mut status = 0;
        for _ in 0..50 {
            status = api(&two, "POST", &path(&call), &cmd, hangup).await.0;
            if status == 202 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            status, 202,
            "node two takes the command once it has seen the call"
        );
        let (key, _) = captured(&mut calls, &tag, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(key, format!("metaflow.action.{call}.hangup"));

        // Monster UI's conference viewer: it watches the conference over the socket and mutes
        // through crossbar's REST path; the command shows on the socket too.
        let conf = format!("conf-{tag}");
        let mut viewer = Client::connect(one.addr()).await;
        viewer
            .subscribe(
                Some(&cmd),
                &format!(
                    r#"{{"bindings":["conference.event.*.{conf}.*","conference.command.{conf}"]}}"#
                ),
            )
            .await;
        conference_join(&channel, &tenants.a, &conf, &call).await;
        seen(&mut viewer, "add-member", &conf).await;
        let (status, answer) = api(
            &one,
            "PUT",
            &format!(
                "/v2/accounts/{}/conferences/{conf}/participants/7",
                tenants.a
            ),
            &cmd,
            r#"{"data":{"action":"mute"}}"#,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        let frame = viewer
            .next_json(Duration::from_secs(10))
            .await
            .expect("the mute command as an event");
        assert_eq!(frame.get_str("name"), Some("mute_participant"), "{frame}");
        let data = frame.get("data").unwrap();
        assert_eq!(data.get_str("participant_id"), Some("7"), "{frame}");
        assert_eq!(data.get_str("msg_id"), answer["msg_id"].as_str());
    });
    one.stop();
    two.stop();
}

//! VoIPBin's `/v1.0/ws` end to end: events published on a real RabbitMQ as VoIPBin's
//! webhook-manager publishes them, real WebSocket clients subscribing to customer and agent topics.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::kazoo::{expect_bindings, parse, publish, runtime, Node, JWT_SECRET};
use common::voipbin::Client;
use futures_util::{SinkExt, StreamExt};
use hmac::Mac as _;
use horizon::families::voipbin::EXCHANGE;
use simd_json::prelude::*;
use simd_json::OwnedValue;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

/// Customers, agents and their tokens, unique to one test.
struct World {
    c1: String,
    c2: String,
    agent1: String,
    agent2: String,
    agent3: String,
}

impl World {
    fn new() -> World {
        let tag = horizon::ids::random_hex(5);
        World {
            c1: format!("cust1-{tag}"),
            c2: format!("cust2-{tag}"),
            agent1: format!("agent1-{tag}"),
            agent2: format!("agent2-{tag}"),
            agent3: format!("agent3-{tag}"),
        }
    }

    fn auth_toml(&self) -> String {
        let token = |name: &str, customer: &str, agent: Option<&str>, permissions: &str| {
            let agent = agent
                .map(|a| format!("agent_id = \"{a}\"\n"))
                .unwrap_or_default();
            format!(
                "[[tokens]]\ntoken = \"{name}-{c}\"\naccount_id = \"{customer}\"\ncustomer_id = \"{customer}\"\n{agent}permissions = [{permissions}]\n",
                c = self.c1
            )
        };
        [
            token("agent", &self.c1, Some(&self.agent1), "\"agent\""),
            token("manager", &self.c1, Some(&self.agent3), "\"manager\", \"agent\""),
            token("admin", &self.c1, None, "\"admin\""),
            token("accesskey", &self.c1, None, "\"admin\""),
            format!(
                "[[tokens]]\ntoken = \"ak-{c}\"\naccount_id = \"{c}\"\naccess_key = true\n",
                c = self.c1
            ),
            token("super", &self.c2, None, "\"super_admin\""),
            token("other-admin", &self.c2, None, "\"admin\""),
            format!(
                "[[tokens]]\ntoken = \"expired-{c}\"\naccount_id = \"{c}\"\ncustomer_id = \"{c}\"\npermissions = [\"admin\"]\nexpires_at = \"2001-01-01T00:00:00Z\"\n",
                c = self.c1
            ),
        ]
        .concat()
    }

    /// A token in VoIPBin's own shape with its string `expire` claim, as its api-manager signs
    /// them, for `agent2` of `c1`.
    fn voipbin_jwt_expiring(&self, expire: &str) -> String {
        let claims = format!(
            r#"{{"type":"agent","agent":{{"id":"{}","customer_id":"{}","permission":16}},"expire":"{expire}"}}"#,
            self.agent2, self.c1
        );
        sign::<hmac::Hmac<sha2::Sha256>>("HS256", &claims)
    }

    fn token(&self, name: &str) -> String {
        format!("{name}-{}", self.c1)
    }

    /// A token in VoIPBin's own JWT shape for `agent2` of `c1`, signed with the node's secret.
    fn voipbin_jwt(&self) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = format!(
            r#"{{"type":"agent","agent":{{"id":"{}","customer_id":"{}","permission":16}},"exp":4000000000}}"#,
            self.agent2, self.c1
        );
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }
}

/// A JWT of `claims` signed with the test secret under `alg`.
fn sign<M: hmac::Mac + hmac::digest::KeyInit>(alg: &str, claims: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn topics(frame: &OwnedValue) -> Vec<String> {
    frame
        .get_array("topics")
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Publishes as webhook-manager does: `<scope>.<owner>.<resource>.<event_type>.<id>`.
async fn publish_event(channel: &lapin::Channel, key: &str, event_type: &str, data: &str) {
    let body = format!(
        r#"{{"type":"{event_type}","publisher":"call-manager","data_type":"application/json","data":{data}}}"#
    );
    publish(channel, EXCHANGE, key, body.as_bytes()).await;
}

#[test]
fn every_permission_rule() {
    let w = World::new();
    let node = Node::start(true, &w.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let jwt = w.voipbin_jwt();
        let cases: Vec<(String, String, bool)> = vec![
            (w.token("agent"), format!("agent_id:{}", w.agent1), true),
            (
                w.token("agent"),
                format!("agent_id:{}:call", w.agent1),
                true,
            ),
            (w.token("agent"), format!("agent_id:{}", w.agent2), false),
            (w.token("agent"), format!("customer_id:{}", w.c1), false),
            (
                w.token("manager"),
                format!("customer_id:{}:call", w.c1),
                true,
            ),
            (w.token("manager"), format!("agent_id:{}", w.agent3), true),
            (w.token("manager"), format!("agent_id:{}", w.agent1), false),
            (w.token("manager"), format!("customer_id:{}", w.c2), false),
            (w.token("admin"), format!("customer_id:{}", w.c1), true),
            (w.token("admin"), format!("customer_id:{}:*:x", w.c1), true),
            (w.token("admin"), format!("customer_id:{}", w.c2), false),
            (w.token("admin"), "customer_id:*".to_string(), false),
            (
                w.token("accesskey"),
                format!("customer_id:{}:queue", w.c1),
                true,
            ),
            (w.token("super"), format!("customer_id:{}", w.c1), true),
            (w.token("super"), "customer_id:*:call".to_string(), true),
            (w.token("super"), format!("agent_id:{}", w.agent1), false),
            (
                w.token("other-admin"),
                format!("customer_id:{}", w.c1),
                false,
            ),
            (jwt.clone(), format!("agent_id:{}", w.agent2), true),
            (jwt.clone(), format!("agent_id:{}", w.agent1), false),
            (jwt, format!("customer_id:{}", w.c1), false),
        ];
        for (token, topic, allowed) in cases {
            let mut c = Client::connect(&node, &token).await;
            let answer = c.subscribe(&[&topic]).await;
            if allowed {
                assert_eq!(
                    answer.get_str("type"),
                    Some("subscribed"),
                    "{token} {topic}: {answer}"
                );
                assert_eq!(topics(&answer), [topic.as_str()]);
            } else {
                assert_eq!(
                    answer.get_str("type"),
                    Some("error"),
                    "{token} {topic}: {answer}"
                );
                assert_eq!(answer.get_str("message"), Some("unauthorized topic"));
                assert_eq!(topics(&answer), [topic.as_str()]);
            }
        }
        // One unauthorized topic rejects the whole message; the socket stays usable.
        let mut c = Client::connect(&node, &w.token("admin")).await;
        let mine = format!("customer_id:{}", w.c1);
        let theirs = format!("customer_id:{}", w.c2);
        let answer = c.subscribe(&[&mine, &theirs]).await;
        assert_eq!(answer.get_str("type"), Some("error"));
        assert_eq!(topics(&answer), [theirs]);
        let answer = c
            .send(r#"{"type":"unsubscribe","topics":["customer_id:x"]}"#)
            .await;
        assert_eq!(
            topics(&answer),
            Vec::<String>::new(),
            "nothing was subscribed: {answer}"
        );
        let answer = c.subscribe(&[&mine]).await;
        assert_eq!(answer.get_str("type"), Some("subscribed"));
    });
    node.stop();
}

#[test]
fn topics_match_whole_segments_and_each_event_arrives_once() {
    let w = World::new();
    let node = Node::start(true, &w.auth_toml(), |_, _| {});
    let queue = node.ingest.queue_name().to_string();
    runtime().block_on(async {
        node.ready().await;
        let (amqp, channel) = common::voipbin_broker().await;
        let c1 = &w.c1;
        let mut calls = Client::connect(&node, &w.token("admin")).await;
        calls.subscribe(&[&format!("customer_id:{c1}:call")]).await;
        let mut both = Client::connect(&node, &w.token("manager")).await;
        both.subscribe(&[
            &format!("customer_id:{c1}"),
            &format!("customer_id:{c1}:call"),
        ])
        .await;
        let mut agent = Client::connect(&node, &w.token("agent")).await;
        agent.subscribe(&[&format!("agent_id:{}", w.agent1)]).await;
        expect_bindings(
            &queue,
            &[
                (EXCHANGE, &format!("customer_id.{c1}.#")),
                (EXCHANGE, &format!("agent_id.{}.#", w.agent1)),
            ],
        )
        .await;

        publish_event(
            &channel,
            &format!("customer_id.{c1}.call.call_hangup.call-1"),
            "call_hangup",
            r#"{"id":"call-1","status":"hangup"}"#,
        )
        .await;
        publish_event(
            &channel,
            &format!("customer_id.{c1}.callflow.callflow_updated.cf-1"),
            "callflow_updated",
            r#""{\"id\":\"cf-1\"}""#,
        )
        .await;
        publish_event(
            &channel,
            &format!("customer_id.{}.call.call_hangup.call-2", w.c2),
            "call_hangup",
            r#"{"id":"call-2"}"#,
        )
        .await;
        publish_event(
            &channel,
            &format!("customer_id.{c1}.call.call_hangup.end-1"),
            "call_hangup",
            r#"{"id":"end-1"}"#,
        )
        .await;

        let got = calls.events_until("end-1").await;
        assert_eq!(
            got.len(),
            1,
            "customer_id:X:call gets call events, not callflow ones: {got:?}"
        );
        let event = &got[0];
        assert_eq!(event.get_str("type"), Some("call_hangup"));
        assert_eq!(
            event.get_str("topic"),
            Some(format!("customer_id:{c1}:call").as_str())
        );
        assert_eq!(
            event.get("data").and_then(|d| d.get_str("status")),
            Some("hangup")
        );

        let got = both.events_until("end-1").await;
        let ids: Vec<_> = got
            .iter()
            .filter_map(|e| e.get("data").and_then(|d| d.get_str("id")))
            .collect();
        assert_eq!(
            ids,
            ["call-1", "cf-1"],
            "each event once, though two topics match the call: {got:?}"
        );
        assert_eq!(
            got[1].get_str("topic"),
            Some(format!("customer_id:{c1}").as_str())
        );

        // VoIPBin publishes an event for an agent as a second message under the agent's key:
        // a socket subscribed to both scopes gets both messages (see docs/voipbin.md).
        publish_event(
            &channel,
            &format!("agent_id.{}.call.call_hangup.call-3", w.agent1),
            "call_hangup",
            r#"{"id":"call-3"}"#,
        )
        .await;
        publish_event(
            &channel,
            &format!("agent_id.{}.call.call_hangup.end-2", w.agent1),
            "call_hangup",
            r#"{"id":"end-2"}"#,
        )
        .await;
        let got = agent.events_until("end-2").await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].get_str("topic"),
            Some(format!("agent_id:{}", w.agent1).as_str())
        );

        // Unsubscribe stops delivery, and the node queue lets go of what nobody needs.
        let answer = calls
            .send(&format!(
                r#"{{"type":"unsubscribe","topics":["customer_id:{c1}:call"]}}"#
            ))
            .await;
        assert_eq!(answer.get_str("type"), Some("unsubscribed"));
        assert_eq!(topics(&answer), [format!("customer_id:{c1}:call")]);
        drop(agent);
        expect_bindings(&queue, &[(EXCHANGE, &format!("customer_id.{c1}.#"))]).await;
        // The sentinel comes through a topic of its own, which `calls` keeps.
        calls
            .subscribe(&[&format!("customer_id:{c1}:sentinel")])
            .await;
        publish_event(
            &channel,
            &format!("customer_id.{c1}.call.call_hangup.call-4"),
            "call_hangup",
            r#"{"id":"call-4"}"#,
        )
        .await;
        publish_event(
            &channel,
            &format!("customer_id.{c1}.sentinel.sentinel_reached.end-3"),
            "sentinel_reached",
            r#"{"id":"end-3"}"#,
        )
        .await;
        assert!(calls.events_until("end-3").await.is_empty());
        assert_eq!(both.events_until("end-3").await.len(), 1);
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

#[test]
fn the_upgrade_needs_a_valid_token() {
    let w = World::new();
    let node = Node::start(false, &w.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let base = format!("ws://{}/v1.0/ws", node.addr());
        for (url, reason) in [
            (base.clone(), "AUTHENTICATION_REQUIRED"),
            (format!("{base}?token=nope"), "INVALID_CREDENTIALS"),
            (
                format!("{base}?token={}", w.token("expired")),
                "INVALID_CREDENTIALS",
            ),
            (
                format!(
                    "{base}?token={}",
                    w.voipbin_jwt_expiring("2020-01-01T15:04:05.000000Z")
                ),
                "INVALID_CREDENTIALS",
            ),
            (format!("{base}?accesskey=nope"), "INVALID_CREDENTIALS"),
            // A token is not an access key.
            (
                format!("{base}?accesskey={}", w.token("admin")),
                "INVALID_CREDENTIALS",
            ),
        ] {
            match tokio_tungstenite::connect_async(&url).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 401, "{url}");
                    let body =
                        String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                            .into_owned();
                    let body = parse(&body);
                    let error = body.get("error").expect("error object");
                    assert_eq!(error.get_str("status"), Some("UNAUTHENTICATED"));
                    assert_eq!(error.get_str("reason"), Some(reason), "{url}");
                    assert_eq!(error.get_str("domain"), Some("api-manager"));
                    let message = if reason == "AUTHENTICATION_REQUIRED" {
                        "Authentication is required."
                    } else {
                        "The provided credentials are invalid."
                    };
                    assert_eq!(error.get_str("message"), Some(message));
                    assert!(
                        error.get_str("request_id").is_some_and(|id| id.len() >= 16),
                        "{body}"
                    );
                }
                other => panic!("{url}: expected a 401, got {other:?}"),
            }
        }
        // The cookie and the Authorization header work too.
        let token = w.token("admin");
        for (header, value) in [
            ("Cookie", format!("lang=en; token={token}")),
            ("Authorization", format!("Bearer {token}")),
        ] {
            let mut request = base.clone().into_client_request().unwrap();
            request.headers_mut().insert(header, value.parse().unwrap());
            let (mut ws, response) = tokio_tungstenite::connect_async(request)
                .await
                .expect(header);
            assert_eq!(response.status(), 101);
            ws.send(Message::text(format!(
                r#"{{"type":"subscribe","topics":["customer_id:{}"]}}"#,
                w.c1
            )))
            .await
            .unwrap();
            let answer = parse(ws.next().await.unwrap().unwrap().to_text().unwrap());
            assert_eq!(answer.get_str("type"), Some("subscribed"), "{header}");
        }
    });
    node.stop();
}

#[test]
fn malformed_messages_get_error_frames_and_the_socket_stays() {
    let w = World::new();
    let node = Node::start(false, &w.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut c = Client::connect(&node, &w.token("admin")).await;
        for (message, error) in [
            ("{oops", "invalid json"),
            ("[]", "invalid json"),
            (r#"{"type":"dance","topics":[]}"#, "unknown type dance"),
            (r#"{"topics":["customer_id:x"]}"#, "unknown type"),
            (
                r#"{"type":"subscribe"}"#,
                "topics must be a non-empty array of strings",
            ),
            (
                r#"{"type":"subscribe","topics":[]}"#,
                "topics must be a non-empty array of strings",
            ),
            (
                r#"{"type":"subscribe","topics":"customer_id:x"}"#,
                "topics must be a non-empty array of strings",
            ),
            (
                r#"{"type":"subscribe","topics":[7]}"#,
                "topics must be a non-empty array of strings",
            ),
            (
                r#"{"type":"subscribe","topics":["customer_id:a.b","user:1"]}"#,
                "invalid topic",
            ),
            (
                r#"{"type":"unsubscribe","topics":["customer_id:#"]}"#,
                "invalid topic",
            ),
        ] {
            let answer = c.send(message).await;
            assert_eq!(answer.get_str("type"), Some("error"), "{message}: {answer}");
            assert_eq!(answer.get_str("message"), Some(error), "{message}");
        }
        let answer = c
            .send(r#"{"type":"subscribe","topics":["customer_id:a.b","user:1"]}"#)
            .await;
        assert_eq!(topics(&answer), ["customer_id:a.b", "user:1"]);
        let answer = c.subscribe(&[&format!("customer_id:{}", w.c1)]).await;
        assert_eq!(answer.get_str("type"), Some("subscribed"));
        // And it delivers, through the embedded bus here.
        node.ingest
            .publish(
                EXCHANGE,
                &format!("customer_id.{}.queue.queue_updated.q1", w.c1),
                br#"{"type":"queue_updated","data":{"id":"q1"}}"#.to_vec(),
            )
            .await
            .expect("routable");
        let event = c.next(Duration::from_secs(3)).await.expect("an event");
        assert_eq!(event.get_str("type"), Some("queue_updated"));
    });
    node.stop();
}

/// Opens `/v1.0/ws` with `headers`; the HTTP status of the answer.
async fn upgrade_status(node: &Node, query: &str, headers: &[(&'static str, String)]) -> u16 {
    let mut request = format!("ws://{}/v1.0/ws{query}", node.addr())
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other:?}"),
    }
}

#[test]
fn credentials_are_taken_in_voipbins_order_and_access_keys_work() {
    let w = World::new();
    let node = Node::start(false, &w.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let good = w.token("admin");
        let cookie = |v: &str| ("Cookie", format!("theme=dark; token={v}"));
        let bearer = |v: &str| ("Authorization", format!("Bearer {v}"));
        // The cookie comes first, then the query, then the header: the first one given is the
        // one checked (VoIPBin does not fall through to the next on a bad one).
        assert_eq!(upgrade_status(&node, "?token=nope", &[cookie(&good)]).await, 101);
        assert_eq!(upgrade_status(&node, &format!("?token={good}"), &[cookie("nope")]).await, 401);
        assert_eq!(upgrade_status(&node, &format!("?token={good}"), &[bearer("nope")]).await, 101);
        assert_eq!(upgrade_status(&node, "?token=nope", &[bearer(&good)]).await, 401);
        // Access keys, by query or cookie, act as their customer's admin.
        let key = format!("ak-{}", w.c1);
        assert_eq!(upgrade_status(&node, &format!("?accesskey={key}"), &[]).await, 101);
        let ak_cookie = ("Cookie", format!("accesskey={key}"));
        assert_eq!(upgrade_status(&node, "", &[ak_cookie]).await, 101);
        let url = format!("ws://{}/v1.0/ws?accesskey={key}", node.addr());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
        let mut client = Client::from(ws);
        let answer = client.subscribe(&[&format!("customer_id:{}:call", w.c1)]).await;
        assert_eq!(answer.get_str("type"), Some("subscribed"), "{answer}");
        // A token wins over an access key given with it.
        assert_eq!(upgrade_status(&node, &format!("?token=nope&accesskey={key}"), &[]).await, 401);
        // Every HMAC VoIPBin accepts.
        let claims = format!(
            r#"{{"type":"agent","agent":{{"id":"{}","customer_id":"{}","permission":32}},"expire":"2099-01-01T00:00:00.000000Z"}}"#,
            w.agent2, w.c1
        );
        for token in [
            sign::<hmac::Hmac<sha2::Sha256>>("HS256", &claims),
            sign::<hmac::Hmac<sha2::Sha384>>("HS384", &claims),
            sign::<hmac::Hmac<sha2::Sha512>>("HS512", &claims),
        ] {
            assert_eq!(upgrade_status(&node, &format!("?token={token}"), &[]).await, 101);
        }
    });
    node.stop();
}

#[test]
fn a_voipbin_token_is_closed_when_its_expire_passes() {
    let w = World::new();
    let node = Node::start(false, &w.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let soon = std::time::SystemTime::now() + Duration::from_secs(2);
        let expire = horizon::auth::format_rfc3339(soon).replace('Z', ".000000Z");
        let url = format!(
            "ws://{}/v1.0/ws?token={}",
            node.addr(),
            w.voipbin_jwt_expiring(&expire)
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("live until then");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let close = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    break (u16::from(frame.code), frame.reason.to_string())
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("no close frame at expiry: {other:?}"),
            }
        };
        assert_eq!(close, (4001, "token expired".to_string()));
    });
    node.stop();
}

//! The Kazoo path end to end: events published on a real RabbitMQ the way Kazoo publishes them,
//! a Horizon node consuming them, real WebSocket clients speaking the blackhole protocol.

mod common;

use std::time::Duration;

use common::kazoo::*;
use simd_json::prelude::*;
use tokio_tungstenite::tungstenite::Message;

fn call_ids(events: &[simd_json::OwnedValue]) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .filter_map(|e| {
            e.get("data")
                .and_then(|d| d.get_str("call_id"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn each_socket_receives_exactly_the_events_of_the_accounts_it_may_see() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;

        // The reseller watches its child a (and, through a's subtree, nothing else).
        let mut reseller = Client::connect(node.addr()).await;
        let reply = reseller
            .subscribe(
                Some(&token(&t.reseller)),
                &format!(r#"{{"account_id":"{}","binding":"call.CHANNEL_CREATE.*"}}"#, t.a),
            )
            .await;
        assert_eq!(string_list(reply.get("data").and_then(|d| d.get("subscribed"))), ["call.CHANNEL_CREATE.*"]);
        // a watches its own calls (account_id defaults to the token's) with two bindings.
        let mut a = Client::connect(node.addr()).await;
        a.subscribe(
            Some(&token(&t.a)),
            r#"{"bindings":["call.CHANNEL_CREATE.*","call.CHANNEL_DESTROY.*"],"name":"console","metadata":{"desk":7}}"#,
        )
        .await;
        // The sibling b watches its own account only.
        let mut b = Client::connect(node.addr()).await;
        b.subscribe(Some(&token(&t.b)), r#"{"binding":"call.*.*"}"#).await;
        // The reseller may also see its grandchild.
        let mut grand = Client::connect(node.addr()).await;
        grand
            .subscribe(
                Some(&token(&t.reseller)),
                &format!(r#"{{"account_id":"{}","binding":"call.*.*"}}"#, t.a_child),
            )
            .await;

        publish_call(&channel, "CHANNEL_CREATE", "a-1@pbx.example", &t.a).await;
        publish_call(&channel, "CHANNEL_ANSWER", "a-1@pbx.example", &t.a).await;
        publish_call(&channel, "CHANNEL_DESTROY", "a-1@pbx.example", &t.a).await;
        publish_call(&channel, "CHANNEL_CREATE", "b-1", &t.b).await;
        publish_call(&channel, "CHANNEL_CREATE", "ac-1", &t.a_child).await;
        // Sentinels: each socket must get one, after everything it must (not) get.
        publish_call(&channel, "CHANNEL_CREATE", "end-a", &t.a).await;
        publish_call(&channel, "CHANNEL_CREATE", "end-b", &t.b).await;
        publish_call(&channel, "CHANNEL_CREATE", "end-ac", &t.a_child).await;

        let got = reseller.events_until("end-a").await;
        assert_eq!(call_ids(&got), ["a-1@pbx.example"], "reseller: only a's CHANNEL_CREATE");
        let event = &got[0];
        assert_eq!(event.get_str("action"), Some("event"));
        assert_eq!(event.get_str("subscribed_key"), Some("call.CHANNEL_CREATE.*"));
        assert_eq!(event.get_str("subscription_key"), Some(format!("call.{}.CHANNEL_CREATE.*", t.a).as_str()));
        assert_eq!(event.get_str("name"), Some("CHANNEL_CREATE"));
        assert_eq!(
            event.get_str("routing_key"),
            Some(format!("call.{}.CHANNEL_CREATE.a-1%40pbx%2Eexample", t.a).as_str())
        );
        let data = event.get("data").expect("data");
        assert_eq!(data.get_str("caller_id_number"), Some("+15551230000"));
        assert_eq!(data.get("custom_channel_vars").and_then(|c| c.get_str("account_id")), Some(t.a.as_str()));
        // As Kazoo master normalizes: what the event is stays (Monster UI reads event_name),
        // where it travelled goes.
        for kept in ["msg_id", "app_name", "app_version", "event_name", "event_category"] {
            assert!(data.get(kept).is_some(), "{kept} must be kept: {data}");
        }
        for dropped in ["server_id", "node"] {
            assert!(data.get(dropped).is_none(), "{dropped} must be dropped: {data}");
        }

        let got = a.events_until("end-a").await;
        let names: Vec<_> = got.iter().filter_map(|e| e.get_str("name")).collect();
        assert_eq!(names, ["CHANNEL_CREATE", "CHANNEL_DESTROY"], "a: its two bindings, in order");

        let got = b.events_until("end-b").await;
        assert_eq!(call_ids(&got), ["b-1"], "b sees its own call and none of its sibling's");

        let got = grand.events_until("end-ac").await;
        assert_eq!(call_ids(&got), ["ac-1"]);

        // A sibling asking for a's events is refused, and gets nothing.
        let reply = b
            .command(
                "subscribe",
                None,
                &format!(r#"{{"account_id":"{}","binding":"call.*.*"}}"#, t.a),
            )
            .await;
        assert_eq!(errors(&reply), ["unauthorized account id"]);
        // A child asking for its parent's events likewise.
        let reply = a
            .command(
                "subscribe",
                None,
                &format!(r#"{{"account_id":"{}","binding":"call.*.*"}}"#, t.reseller),
            )
            .await;
        assert_eq!(errors(&reply), ["unauthorized account id"]);
        publish_call(&channel, "CHANNEL_CREATE", "a-2", &t.a).await;
        publish_call(&channel, "CHANNEL_CREATE", "end2-a", &t.a).await;
        publish_call(&channel, "CHANNEL_CREATE", "end2-b", &t.b).await;
        assert_eq!(call_ids(&b.events_until("end2-b").await), Vec::<String>::new());
        assert_eq!(call_ids(&a.events_until("end2-a").await), ["a-2"]);

        // Unsubscribe stops delivery.
        let reply = a.command("unsubscribe", None, r#"{"binding":"call.CHANNEL_CREATE.*"}"#).await;
        let data = reply.get("data").expect("data");
        assert_eq!(string_list(data.get("unsubscribed")), ["call.CHANNEL_CREATE.*"]);
        assert_eq!(string_list(data.get("subscribed")), ["call.CHANNEL_DESTROY.*"]);
        publish_call(&channel, "CHANNEL_CREATE", "a-3", &t.a).await;
        publish_call(&channel, "CHANNEL_DESTROY", "a-3", &t.a).await;
        publish_call(&channel, "CHANNEL_DESTROY", "end3-a", &t.a).await;
        let got = a.events_until("end3-a").await;
        let names: Vec<_> = got.iter().filter_map(|e| e.get_str("name")).collect();
        assert_eq!(names, ["CHANNEL_DESTROY"]);
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

#[test]
fn object_events_reach_the_account_and_its_ancestors() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let mut a = Client::connect(node.addr()).await;
        a.subscribe(
            Some(&token(&t.a)),
            r#"{"binding":"object.doc_edited.user"}"#,
        )
        .await;
        let mut reseller = Client::connect(node.addr()).await;
        reseller
            .subscribe(
                Some(&token(&t.reseller)),
                &format!(r#"{{"account_id":"{}","binding":"object.*.*"}}"#, t.a),
            )
            .await;
        let mut b = Client::connect(node.addr()).await;
        b.subscribe(Some(&token(&t.b)), r#"{"binding":"object.*.*"}"#)
            .await;

        publish_doc(&channel, "doc_edited", &t.a, "user", "u1").await;
        publish_doc(&channel, "doc_created", &t.a, "device", "d1").await;
        publish_doc(&channel, "doc_edited", &t.b, "user", "u2").await;
        publish_doc(&channel, "doc_edited", &t.a, "user", "end-a").await;
        publish_doc(&channel, "doc_edited", &t.b, "user", "end-b").await;

        let got = a.events_until("end-a").await;
        assert_eq!(got.len(), 1, "{got:?}");
        let event = &got[0];
        let db = horizon::families::account_db(&t.a);
        assert_eq!(
            event.get_str("routing_key"),
            Some(format!("doc_edited.{db}.user.u1").as_str())
        );
        assert_eq!(
            event.get_str("subscription_key"),
            Some(format!("doc_edited.{db}.user.*").as_str())
        );
        assert_eq!(event.get("data").and_then(|d| d.get_str("id")), Some("u1"));
        let got = reseller.events_until("end-a").await;
        let ids: Vec<_> = got
            .iter()
            .filter_map(|e| e.get("data").and_then(|d| d.get_str("id")))
            .collect();
        assert_eq!(ids, ["u1", "d1"]);
        let got = b.events_until("end-b").await;
        let ids: Vec<_> = got
            .iter()
            .filter_map(|e| e.get("data").and_then(|d| d.get_str("id")))
            .collect();
        assert_eq!(ids, ["u2"]);
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

#[test]
fn the_node_queue_is_bound_to_exactly_what_live_sockets_need() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    let queue = node.ingest.queue_name().to_string();
    runtime().block_on(async {
        node.ready().await;
        expect_bindings(&queue, &[]).await;
        let mut a = Client::connect(node.addr()).await;
        a.subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        // Duplicate subscribe: nothing changes, and one unsubscribe still removes it.
        let reply = a
            .subscribe(None, r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        assert_eq!(
            string_list(reply.get("data").and_then(|d| d.get("subscribed"))),
            ["call.CHANNEL_CREATE.*"]
        );
        // A second socket needing the same AMQP binding, and one needing another.
        let mut b = Client::connect(node.addr()).await;
        b.subscribe(
            Some(&token(&t.b)),
            r#"{"bindings":["call.CHANNEL_CREATE.*","object.doc_edited.user"]}"#,
        )
        .await;
        let db_b = horizon::families::account_db(&t.b);
        let object_key = format!("doc_edited.{db_b}.user.*");
        expect_bindings(
            &queue,
            &[
                ("callevt", "call.CHANNEL_CREATE.*"),
                ("configuration", &object_key),
            ],
        )
        .await;

        // A stray unsubscribe (never subscribed) changes nothing.
        let reply = a
            .command(
                "unsubscribe",
                None,
                r#"{"binding":"call.CHANNEL_DESTROY.*"}"#,
            )
            .await;
        assert_eq!(
            string_list(reply.get("data").and_then(|d| d.get("unsubscribed"))),
            Vec::<String>::new()
        );
        // a leaves: b still needs the call binding.
        let reply = a
            .command(
                "unsubscribe",
                None,
                r#"{"binding":"call.CHANNEL_CREATE.*"}"#,
            )
            .await;
        assert_eq!(
            string_list(reply.get("data").and_then(|d| d.get("subscribed"))),
            Vec::<String>::new()
        );
        let reply = a
            .command(
                "unsubscribe",
                None,
                r#"{"binding":"call.CHANNEL_CREATE.*"}"#,
            )
            .await;
        assert_eq!(
            string_list(reply.get("data").and_then(|d| d.get("unsubscribed"))),
            Vec::<String>::new()
        );
        expect_bindings(
            &queue,
            &[
                ("callevt", "call.CHANNEL_CREATE.*"),
                ("configuration", &object_key),
            ],
        )
        .await;

        // b vanishes without a close handshake: everything it held is unbound.
        drop(b);
        expect_bindings(&queue, &[]).await;

        // And the call binding comes back for a new subscriber, and delivery works through it.
        a.subscribe(None, r#"{"binding":"call.CHANNEL_CREATE.*"}"#)
            .await;
        expect_bindings(&queue, &[("callevt", "call.CHANNEL_CREATE.*")]).await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        publish_call(&channel, "CHANNEL_CREATE", "again", &t.a).await;
        publish_call(&channel, "CHANNEL_CREATE", "end-again", &t.a).await;
        assert_eq!(call_ids(&a.events_until("end-again").await), ["again"]);
        // unsubscribe with no binding removes everything.
        a.subscribe(None, r#"{"binding":"object.*.*"}"#).await;
        let reply = a.command("unsubscribe", None, "{}").await;
        let mut gone = string_list(reply.get("data").and_then(|d| d.get("unsubscribed")));
        gone.sort();
        assert_eq!(gone, ["call.CHANNEL_CREATE.*", "object.*.*"]);
        expect_bindings(&queue, &[]).await;
        assert_eq!(
            node.ingest
                .status()
                .stray_releases
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

#[test]
fn the_first_event_after_a_subscribe_reply_is_never_missed() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        // Each round binds a key nobody else holds, then publishes right after the reply.
        let events = [
            "CHANNEL_HOLD",
            "CHANNEL_UNHOLD",
            "CHANNEL_BRIDGE",
            "PARK_PARKED",
            "PARK_RETRIEVED",
            "PARK_ABANDONED",
        ];
        let mut client = Client::connect(node.addr()).await;
        for (round, event) in events.iter().enumerate() {
            client
                .subscribe(
                    Some(&token(&t.a)),
                    &format!(r#"{{"binding":"call.{event}.*"}}"#),
                )
                .await;
            publish_call(&channel, event, &format!("first-{round}"), &t.a).await;
            let got = client.next_json(Duration::from_secs(3)).await;
            let got = got.unwrap_or_else(|| {
                panic!("round {round}: the first event after the reply was lost")
            });
            assert_eq!(got.get_str("name"), Some(*event));
            client.command("unsubscribe", None, "{}").await;
        }
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

#[test]
fn every_documented_error_reply() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, limits| {
        limits.max_bindings = 3;
    });
    runtime().block_on(async {
        node.ready().await;
        let mut c = Client::connect(node.addr()).await;
        let binding = r#"{"binding":"call.*.*"}"#;
        assert_eq!(errors(&c.command("subscribe", None, binding).await), ["authentication token required"]);
        let reply = c.command("subscribe", Some("has space"), binding).await;
        assert_eq!(errors(&reply), ["invalid authentication token format"]);
        let reply = c.command("subscribe", Some("tok-does-not-exist"), binding).await;
        assert_eq!(errors(&reply), ["failed to authenticate token"]);
        assert!(!reply.to_string().contains("tok-does-not-exist"), "the token is never echoed: {reply}");
        c.send_text(r#"{"action":"subscribe","request_id":"n","auth_token":17,"data":{"binding":"call.*.*"}}"#).await;
        assert_eq!(errors(&c.reply_to("n").await), ["invalid authentication token format"]);
        let reply = c.command("subscribe", Some(&format!("tok-expired-{}", t.a)), binding).await;
        assert_eq!(errors(&reply), ["failed to authenticate token", "token expired"]);

        let tok = token(&t.a);
        let tok = Some(tok.as_str());
        assert_eq!(errors(&c.command("subscribe", tok, "{}").await), ["missing required keys : account_id, binding"]);
        assert_eq!(
            errors(&c.command("subscribe", tok, r#"{"binding":7}"#).await),
            ["missing required keys : account_id, binding"]
        );
        assert_eq!(
            errors(&c.command("subscribe", tok, r#"{"account_id":"*","binding":"call.*.*"}"#).await),
            ["unauthorized wildcard account id"]
        );
        assert_eq!(
            errors(&c.command("subscribe", tok, &format!(r#"{{"account_id":"{}","binding":"call.*.*"}}"#, t.b)).await),
            ["unauthorized account id"]
        );
        assert_eq!(
            errors(&c.command("subscribe", tok, r#"{"account_id":"x.y","binding":"call.*.*"}"#).await),
            ["unauthorized account id"]
        );
        assert_eq!(
            errors(&c.command("subscribe", tok, r#"{"binding":"sms.*.*"}"#).await),
            ["no available subscriptions to requested binding"]
        );
        assert_eq!(
            errors(&c.command("subscribe", tok, r#"{"binding":"call.CHANNEL_EXPLODE.*"}"#).await),
            ["event CHANNEL_EXPLODE not supported"]
        );
        // All or nothing: one bad binding subscribes none.
        let reply = c.command("subscribe", tok, r#"{"bindings":["call.*.*","nope.x"]}"#).await;
        assert_eq!(errors(&reply), ["no available subscriptions to requested binding"]);
        let reply = c.command("unsubscribe", tok, "{}").await;
        assert_eq!(string_list(reply.get("data").and_then(|d| d.get("unsubscribed"))), Vec::<String>::new());
        assert_eq!(
            errors(&c.command("unsubscribe", tok, r#"{"bindings":"call.*.*"}"#).await),
            ["missing required keys : account_id, binding"],
            "a malformed unsubscribe must not mean 'everything'"
        );

        assert_eq!(errors(&c.command("dance", tok, "{}").await), ["unknown action dance"]);
        c.send_text("{not json").await;
        let reply = c.next_json(Duration::from_secs(3)).await.expect("a reply");
        assert_eq!(errors(&reply), ["invalid json"]);
        assert_eq!(reply.get_str("request_id").map(str::len), Some(32), "a generated request id");
        c.send_text("[1,2]").await;
        assert_eq!(errors(&c.next_json(Duration::from_secs(3)).await.expect("a reply")), ["invalid json"]);

        // The binding limit (3 here).
        c.subscribe(tok, r#"{"bindings":["call.CHANNEL_CREATE.*","call.CHANNEL_ANSWER.*"]}"#).await;
        let reply = c.command("subscribe", tok, r#"{"bindings":["call.CHANNEL_DESTROY.*","call.CHANNEL_HOLD.*"]}"#).await;
        assert_eq!(errors(&reply), ["too many bindings"]);
        c.subscribe(tok, r#"{"binding":"call.CHANNEL_DESTROY.*"}"#).await;

        // ping works with or without a token and echoes the request id.
        let reply = c.command("ping", None, "{}").await;
        assert_eq!(reply.get("data").and_then(|d| d.get_str("response")), Some("pong"));
    });
    node.stop();
}

#[test]
fn the_rate_limit_answers_past_the_burst_and_refills() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, limits| {
        limits.rate_burst = 5;
        limits.rate_per_sec = 10.0;
    });
    runtime().block_on(async {
        node.ready().await;
        let mut c = Client::connect(node.addr()).await;
        let mut limited = 0;
        for _ in 0..8 {
            let reply = c.command("ping", None, "{}").await;
            if reply.get_str("status") == Some("error") {
                assert_eq!(errors(&reply), ["rate limiting threshold hit"]);
                limited += 1;
            }
        }
        assert!(
            limited >= 2,
            "8 commands against a burst of 5: {limited} limited"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reply = c.command("ping", None, "{}").await;
        assert_eq!(
            reply.get_str("status"),
            Some("success"),
            "refilled: {reply}"
        );
    });
    node.stop();
}

#[test]
fn garbage_leaves_the_socket_and_the_server_alive() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut c = Client::connect(node.addr()).await;
        let tok = token(&t.a);
        c.subscribe(Some(&tok), r#"{"binding":"call.*.*"}"#).await;
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        for garbage in [
            "", "null", "\"str\"", "{\"action\":null}", "{\"action\":{\"x\":1}}", &deep,
            "{\"action\":\"subscribe\",\"data\":[]}", "{\"action\":\"subscribe\",\"data\":{\"bindings\":[1,2]}}",
            "{\"action\":\"unsubscribe\",\"data\":{\"bindings\":\"call.*.*\"}}", "\u{0}\u{1}",
        ] {
            c.send_text(garbage).await;
            let reply = c.next_json(Duration::from_secs(3)).await.unwrap_or_else(|| panic!("no reply to {garbage:.40}"));
            assert_eq!(reply.get_str("action"), Some("reply"), "{reply}");
        }
        // Still subscribed and delivering.
        node.ingest
            .publish(
                "callevt",
                "call.CHANNEL_CREATE.x",
                format!(r#"{{"Event-Name":"CHANNEL_CREATE","Call-ID":"still","Custom-Channel-Vars":{{"Account-ID":"{}"}}}}"#, t.a).into_bytes(),
            )
            .await
            .expect("routable");
        node.ingest
            .publish(
                "callevt",
                "call.CHANNEL_CREATE.y",
                format!(r#"{{"Event-Name":"CHANNEL_CREATE","Call-ID":"end-still","Custom-Channel-Vars":{{"Account-ID":"{}"}}}}"#, t.a).into_bytes(),
            )
            .await
            .expect("routable");
        assert_eq!(call_ids(&c.events_until("end-still").await), ["still"]);
        // A binary frame is a protocol error for this dialect: that socket closes (1003), others live.
        let mut other = Client::connect(node.addr()).await;
        other.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
        assert_eq!(other.closed(Duration::from_secs(3)).await.0, 1003);
        let reply = c.command("ping", None, "{}").await;
        assert_eq!(reply.get_str("status"), Some("success"));
        // Unroutable publishes into the embedded bus say why.
        let err = node.ingest.publish("callevt", "k", b"{oops".to_vec()).await.unwrap_err();
        assert_eq!(err.to_string(), "event not routable: body is not JSON");
    });
    node.stop();
}

#[test]
fn an_expiring_token_closes_the_socket_with_4001_unless_refreshed() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    let mint = |secs: u64| {
        node.auth
            .keys()
            .sign_hs256(&horizon::auth::TokenClaims {
                account_id: t.a.clone(),
                expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(secs)),
                ..Default::default()
            })
            .expect("secret configured")
    };
    runtime().block_on(async {
        node.ready().await;
        // Given at the handshake, never used in a message: still enforced.
        let mut quiet = Client::connect_path(node.addr(), &format!("/?token={}", mint(2))).await;
        let mut talker = Client::connect(node.addr()).await;
        talker
            .subscribe(Some(&mint(2)), r#"{"binding":"call.*.*"}"#)
            .await;
        let mut refreshed = Client::connect(node.addr()).await;
        refreshed
            .subscribe(Some(&mint(2)), r#"{"binding":"call.*.*"}"#)
            .await;
        refreshed.command("ping", Some(&mint(30)), "{}").await;
        let (code, reason) = quiet.closed(Duration::from_secs(6)).await;
        assert_eq!((code, reason.as_str()), (4001, "token expired"));
        let (code, reason) = talker.closed(Duration::from_secs(3)).await;
        assert_eq!((code, reason.as_str()), (4001, "token expired"));
        let reply = refreshed.command("ping", None, "{}").await;
        assert_eq!(
            reply.get_str("status"),
            Some("success"),
            "a refreshed token keeps the socket"
        );
    });
    node.stop();
}

#[test]
fn a_bad_handshake_token_is_refused_with_401() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let err = tokio_tungstenite::connect_async(format!("ws://{}/?token=nope", node.addr()))
            .await
            .expect_err("refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                assert_eq!(response.status(), 401);
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("failed to authenticate token"), "{body}");
                assert!(!body.contains("nope"), "the token is never echoed: {body}");
            }
            other => panic!("expected an HTTP refusal, got {other}"),
        }
        // A good one at the handshake means no auth_token is needed later.
        let mut c =
            Client::connect_path(node.addr(), &format!("/socket?token={}", token(&t.a))).await;
        c.subscribe(None, r#"{"binding":"call.*.*"}"#).await;
    });
    node.stop();
}

#[test]
fn publishes_through_the_node_reach_the_broker_and_come_back_routed() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut c = Client::connect(node.addr()).await;
        c.subscribe(Some(&token(&t.a)), r#"{"binding":"fax.status.*"}"#)
            .await;
        // A publish to an exchange that does not exist closes only the publishing channel.
        node.ingest
            .publish("no-such-exchange-for-horizon", "x", b"{}".to_vec())
            .await
            .ok();
        let body = format!(
            r#"{{"Event-Name":"status","Fax-ID":"f1","Account-ID":"{}","Status":"sent"}}"#,
            t.a
        );
        let mut delivered = false;
        for _ in 0..20 {
            if node
                .ingest
                .publish(
                    "faxes",
                    &format!("fax.status.{}.f1", t.a),
                    body.clone().into_bytes(),
                )
                .await
                .is_ok()
            {
                if let Some(event) = c.next_json(Duration::from_millis(500)).await {
                    assert_eq!(
                        event.get_str("routing_key"),
                        Some(format!("fax.status.{}.f1", t.a).as_str())
                    );
                    assert_eq!(
                        event.get("data").and_then(|d| d.get_str("status")),
                        Some("sent")
                    );
                    delivered = true;
                    break;
                }
            }
        }
        assert!(
            delivered,
            "a publish through the node came back as an event"
        );
        assert_eq!(
            node.ingest.status().state(),
            horizon::ingest::SourceState::Consuming,
            "consumption never stopped"
        );
    });
    node.stop();
}

//! Webhooks end to end (docs/webhooks.md): `horizon serve` nodes as child processes, the real
//! RabbitMQ broker, real SQLite files and a real PostgreSQL server, and real HTTP receivers on
//! loopback that check every byte they are sent.
//!
//! The expected payloads come from Kazoo's webhooks app (2600hz/kazoo, applications/webhooks):
//! channel hooks from `webhooks_channel_util.erl` (`format_event`, `base_hook_event`), object
//! hooks from `webhooks_object.erl` (`format_event`: id, account_id, action, type), notifications
//! from `webhooks_notifications.erl` (`kz_json:normalize` of the event), parking from
//! `webhooks_parking.erl` (`normalize_jobj` without Node, Msg-ID, App-Version, App-Name,
//! Event-Category, Custom-Channel-Vars), form bodies as `kz_json:to_querystring` writes them; the
//! events are published as `kapi_call`, `kapi_conf` and `kapi_notifications` publish them.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::kazoo::{publish, publish_call, publish_doc, token, Tenants};
use common::webhooks::{
    delete_queue, drop_postgres, fresh_postgres, node_args, sqlite_path, with_arg, Node, Received,
    Receiver, Reply,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

struct World {
    tenants: Tenants,
    auth_file: std::path::PathBuf,
    queue: String,
    db_file: std::path::PathBuf,
    channel: lapin::Channel,
    _amqp: lapin::Connection,
}

impl World {
    async fn new() -> World {
        let tenants = Tenants::new();
        let auth_file = common::temp_file("webhooks-auth", &tenants.auth_toml());
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        common::kazoo::declare_kazoo_exchanges(&channel).await;
        World {
            tenants,
            auth_file,
            queue: common::unique_name("horizon.webhooks.test"),
            db_file: sqlite_path("webhooks"),
            channel,
            _amqp: amqp,
        }
    }

    fn args(&self) -> Vec<(&'static str, String)> {
        node_args(
            &self.auth_file,
            &self.queue,
            &self.db_file.display().to_string(),
        )
    }

    async fn cleanup(self) {
        delete_queue(&self.queue).await;
        let _ = std::fs::remove_file(&self.auth_file);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db_file.display()));
        }
    }
}

fn unique_call() -> String {
    format!("call-{}", horizon::ids::random_hex(6))
}

/// The form body Horizon sends for `publish_call`'s CHANNEL_CREATE (keys in order, Kazoo's
/// field names and nesting), with `extra` pairs already encoded and in place.
fn channel_create_form(account: &str, call: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("account_id".into(), account.into()),
        ("authorizing_type".into(), "device".into()),
        ("call_direction".into(), "inbound".into()),
        ("call_id".into(), call.into()),
        ("callee_id_number".into(), "2000".into()),
        ("caller_id_name".into(), "Tester".into()),
        ("caller_id_number".into(), "%2B15551230000".into()),
        ("cluster_id".into(), "horizon".into()),
        ("custom_channel_vars[account_id]".into(), account.into()),
        (
            "custom_channel_vars[authorizing_type]".into(),
            "device".into(),
        ),
        ("custom_channel_vars[owner_id]".into(), "owner-1".into()),
        ("hook_event".into(), "channel_create".into()),
        ("is_internal_leg".into(), "false".into()),
        ("owner_id".into(), "owner-1".into()),
        ("timestamp".into(), "63890000000".into()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn verify_signature(request: &Received, secret_key: &[u8], signed: &[u8]) {
    let id = request.header("webhook-id").expect("webhook-id");
    let timestamp = request
        .header("webhook-timestamp")
        .expect("webhook-timestamp");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret_key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(signed);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(request.header("webhook-signature"), Some(expected.as_str()));
    let sent: u64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(sent) < 30, "timestamp {sent} vs now {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_and_format_is_sent_byte_for_byte_and_signed() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&world.args());
    let receiver = Receiver::start().await;
    let get = node
        .create_hook(
            &account,
            json!({"name":"get","hook":"channel_create","http_verb":"get","uri":receiver.url("/get?crm=1"),
                   "custom_data":{"tenant":"a b"},"secret":"whsec_c2VjcmV0LWtleQ=="}),
        )
        .await;
    let form = node
        .create_hook(
            &account,
            json!({"name":"form","hook":"channel_create","uri":receiver.url("/form"),"secret":"plain-secret"}),
        )
        .await;
    let json_hook = node
        .create_hook(
            &account,
            json!({"name":"json","hook":"channel_create","http_verb":"post","format":"json","uri":receiver.url("/json")}),
        )
        .await;
    let put = node
        .create_hook(
            &account,
            json!({"name":"put","hook":"channel_create","http_verb":"put","uri":receiver.url("/put")}),
        )
        .await;
    let object = node
        .create_hook(
            &account,
            json!({"name":"obj","hook":"object","format":"json","uri":receiver.url("/object"),
                   "custom_data":{"type":"user","action":"doc_edited"}}),
        )
        .await;
    let notify = node
        .create_hook(
            &account,
            json!({"name":"vm","hook":"notifications","format":"json","uri":receiver.url("/notify"),
                   "custom_data":{"type":"voicemail_new"}}),
        )
        .await;
    let parking = node
        .create_hook(
            &account,
            json!({"name":"park","hook":"parking","format":"json","uri":receiver.url("/parking")}),
        )
        .await;
    let call = unique_call();
    publish_call(&world.channel, "CHANNEL_CREATE", &call, &account).await;
    let parked = json!({"Event-Name":"PARK_PARKED","Event-Category":"call_event","Call-ID":"p-1",
        "Parking-Slot":"1","Caller-ID-Number":"+15551230000","Custom-Channel-Vars":{"Account-ID":account},
        "Msg-ID":"m9","Node":"ecallmgr@fs1","App-Name":"callflow","App-Version":"4.3.0","Server-ID":""});
    publish(
        &world.channel,
        "callevt",
        "call.PARK_PARKED.p-1",
        parked.to_string().as_bytes(),
    )
    .await;
    // Filtered out: another action, another type, another notification.
    publish_doc(&world.channel, "doc_created", &account, "user", "u1").await;
    publish_doc(&world.channel, "doc_edited", &account, "device", "d1").await;
    publish_doc(&world.channel, "doc_edited", &account, "user", "u2").await;
    let notification = |name: &str| {
        json!({"Event-Category":"notification","Event-Name":name,"Account-ID":account,
               "Voicemail-Box":"vmb1","Caller-ID-Number":"+15550001111","Msg-ID":"m1",
               "App-Name":"callflow","Custom-Fields":{"X-Y":"z"}})
        .to_string()
    };
    publish(
        &world.channel,
        "notifications",
        "notifications.voicemail.full",
        notification("voicemail_full").as_bytes(),
    )
    .await;
    publish(
        &world.channel,
        "notifications",
        "notifications.voicemail.new",
        notification("voicemail_new").as_bytes(),
    )
    .await;

    let seen = receiver.wait_for(7, Duration::from_secs(10)).await;
    let seen = {
        let mut more = receiver.settle(Duration::from_millis(500)).await;
        assert_eq!(
            more.len(),
            7,
            "exactly one request per hook: {:?}",
            more.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        more.sort_by_key(|r| r.target.clone());
        drop(seen);
        more
    };
    let by_path = |prefix: &str| {
        seen.iter()
            .find(|r| r.target.starts_with(prefix))
            .unwrap_or_else(|| panic!("no request to {prefix}"))
            .clone()
    };
    let form_body = channel_create_form(&account, &call, &[]);

    // GET: the payload (with custom data) appended to the URI's own query string; signed over
    // that query string with the whsec_ key's bytes.
    let r = by_path("/get");
    assert_eq!(r.method, "GET");
    let query = channel_create_form(&account, &call, &[("tenant", "a+b")]);
    assert_eq!(r.target, format!("/get?crm=1&{query}"));
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-hook-id"), Some(get.as_str()));
    assert_eq!(r.header("x-account-id"), Some(account.as_str()));
    assert!(r.header("webhook-id").unwrap().starts_with("msg_"));
    verify_signature(&r, b"secret-key", query.as_bytes());

    // POST form-data: Kazoo's default.
    let r = by_path("/form");
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.body_text(), form_body);
    assert_eq!(r.header("x-hook-id"), Some(form.as_str()));
    verify_signature(&r, b"plain-secret", &r.body);

    // POST JSON.
    let r = by_path("/json");
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body_text(),
        format!(
            r#"{{"account_id":"{account}","authorizing_type":"device","call_direction":"inbound","call_id":"{call}","callee_id_number":"2000","caller_id_name":"Tester","caller_id_number":"+15551230000","cluster_id":"horizon","custom_channel_vars":{{"account_id":"{account}","authorizing_type":"device","owner_id":"owner-1"}},"hook_event":"channel_create","is_internal_leg":false,"owner_id":"owner-1","timestamp":63890000000}}"#
        )
    );
    assert_eq!(r.header("x-hook-id"), Some(json_hook.as_str()));
    assert_eq!(
        r.header("webhook-signature"),
        None,
        "no secret, no signature"
    );

    // PUT, form-data by default.
    let r = by_path("/put");
    assert_eq!(r.method, "PUT");
    assert_eq!(r.body_text(), form_body);
    assert_eq!(r.header("x-hook-id"), Some(put.as_str()));

    // Object: {id, account_id, action, type} (plus the custom data, which overwrites).
    let r = by_path("/object");
    assert_eq!(
        r.body_text(),
        format!(
            r#"{{"account_id":"{account}","action":"doc_edited","cluster_id":"horizon","id":"u2","type":"user"}}"#
        )
    );
    assert_eq!(r.header("x-hook-id"), Some(object.as_str()));

    // Notifications: the event normalized (keys lower-cased, dashes to underscores).
    let r = by_path("/notify");
    assert_eq!(
        r.body_text(),
        format!(
            r#"{{"account_id":"{account}","app_name":"callflow","caller_id_number":"+15550001111","cluster_id":"horizon","custom_fields":{{"x_y":"z"}},"event_category":"notification","event_name":"voicemail_new","msg_id":"m1","type":"voicemail_new","voicemail_box":"vmb1"}}"#
        )
    );
    assert_eq!(r.header("x-hook-id"), Some(notify.as_str()));

    // Parking: the event normalized, without its envelope and channel variables.
    let r = by_path("/parking");
    assert_eq!(
        r.body_text(),
        r#"{"call_id":"p-1","caller_id_number":"+15551230000","cluster_id":"horizon","event_name":"PARK_PARKED","parking_slot":"1","server_id":""}"#
    );
    assert_eq!(r.header("x-hook-id"), Some(parking.as_str()));

    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_2xx_succeeds_and_5xx_is_retried_until_delivered_once() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&world.args());
    let ok = Receiver::start().await;
    ok.script(&[Reply::Status(201), Reply::Status(202), Reply::Status(204)]);
    let flaky = Receiver::start().await;
    flaky.script(&[Reply::Status(500), Reply::Status(503)]);
    let ok_hook = node
        .create_hook(
            &account,
            json!({"name":"ok","hook":"channel_answer","uri":ok.url("/")}),
        )
        .await;
    let flaky_hook = node
        .create_hook(
            &account,
            json!({"name":"flaky","hook":"channel_destroy","uri":flaky.url("/")}),
        )
        .await;
    for _ in 0..3 {
        publish_call(&world.channel, "CHANNEL_ANSWER", &unique_call(), &account).await;
    }
    publish_call(&world.channel, "CHANNEL_DESTROY", &unique_call(), &account).await;
    ok.wait_for(3, Duration::from_secs(10)).await;
    let flaky_seen = flaky.wait_for(3, Duration::from_secs(10)).await;
    // No retries of a 2xx; the 5xx delivery tried three times in all, always as one delivery.
    assert_eq!(ok.settle(Duration::from_millis(700)).await.len(), 3);
    let flaky_seen = {
        let all = flaky.settle(Duration::from_millis(700)).await;
        assert_eq!(all.len(), 3, "500, 503, then 200: three attempts");
        drop(flaky_seen);
        all
    };
    let ids: Vec<_> = flaky_seen
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id across retries: {ids:?}"
    );
    let gaps: Vec<u128> = flaky_seen
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    assert!(
        gaps[0] >= 140 && gaps[1] >= gaps[0],
        "backoff grows: {gaps:?}"
    );

    // The attempts log: newest first, with Kazoo's fields.
    let attempts = node.attempts_at_least(&account, &flaky_hook, 3).await;
    let results: Vec<&str> = attempts
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["success", "failure", "failure"]);
    let codes: Vec<&str> = attempts
        .iter()
        .map(|a| a["response_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["200", "503", "500"]);
    let last = &attempts[2];
    assert_eq!(last["try"], 1);
    assert_eq!(last["retries_left"], 2);
    assert_eq!(last["reason"], "bad response code");
    assert_eq!(last["hook_event"], "channel_destroy");
    assert_eq!(last["method"], "post");
    assert!(last["req_body"]
        .as_str()
        .unwrap()
        .contains("hook_event=channel_destroy"));
    assert_eq!(last["req_headers"]["x-hook-id"], flaky_hook.as_str());
    assert!(
        last["timestamp"].as_u64().unwrap() > 63_000_000_000,
        "Gregorian seconds"
    );
    assert_eq!(node.attempts_at_least(&account, &ok_hook, 3).await.len(), 3);
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_for_a_while_loses_nothing() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&with_arg(world.args(), "webhooks-retry-first-ms", "300"));
    let mut receiver = Receiver::start().await;
    node.create_hook(
        &account,
        json!({"name":"r","hook":"channel_create","uri":receiver.url("/"),"retries":5}),
    )
    .await;
    receiver.stop();
    let calls: Vec<String> = (0..20).map(|_| unique_call()).collect();
    for call in &calls {
        publish_call(&world.channel, "CHANNEL_CREATE", call, &account).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    receiver.restart().await;
    receiver.wait_for(20, Duration::from_secs(15)).await;
    let seen = receiver.settle(Duration::from_millis(500)).await;
    let mut got: Vec<String> = seen
        .iter()
        .map(|r| {
            let body = r.body_text();
            body.split('&')
                .find_map(|p| p.strip_prefix("call_id=").map(str::to_string))
                .unwrap()
        })
        .collect();
    got.sort();
    let mut want = calls.clone();
    want.sort();
    assert_eq!(
        got, want,
        "every event delivered exactly once after the outage"
    );
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_pending_when_a_node_is_killed_are_delivered_after_restart() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&with_arg(world.args(), "webhooks-retry-first-ms", "3000"));
    let receiver = Receiver::start().await;
    receiver.script(&[Reply::Status(500), Reply::Status(500), Reply::Status(500)]);
    let hook = node
        .create_hook(
            &account,
            json!({"name":"r","hook":"channel_create","uri":receiver.url("/")}),
        )
        .await;
    for _ in 0..3 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    let first = receiver.wait_for(3, Duration::from_secs(10)).await;
    // Each first attempt failed; the retries wait in the database (read here as the node
    // reads it). The node dies before they are due.
    node.attempts_at_least(&account, &hook, 3).await;
    let store = horizon::webhooks::store::Store::open(horizon::webhooks::store::Backend::Sqlite(
        world.db_file.display().to_string(),
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.pending_jobs().await.unwrap() < 3 {
        assert!(Instant::now() < deadline, "the retries were never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);
    // The acknowledgements follow the saves; a message redelivered after all finds its
    // delivery saved and leaves it to the retry.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let node = node.restart();
    let killed_at = Instant::now();
    let all = receiver.wait_for(6, Duration::from_secs(15)).await;
    assert!(killed_at.elapsed() < Duration::from_secs(12));
    let all = {
        let settled = receiver.settle(Duration::from_millis(500)).await;
        assert_eq!(settled.len(), 6, "one retry each, no duplicates");
        drop(all);
        settled
    };
    let mut first_ids: Vec<_> = first
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    let mut retry_ids: Vec<_> = all[3..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    first_ids.sort();
    retry_ids.sort();
    assert_eq!(first_ids, retry_ids, "the retries are the same deliveries");
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_receiver_times_out_and_never_delays_another_hook() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    // A timeout long enough that "before it" is a clear margin on a loaded machine.
    let node = Node::start(&with_arg(
        world.args(),
        "webhooks-request-timeout-secs",
        "4",
    ));
    let hung = Receiver::start().await;
    hung.default_reply(Reply::Hang);
    let fine = Receiver::start().await;
    let hung_hook = node
        .create_hook(
            &account,
            json!({"name":"hung","hook":"channel_create","uri":hung.url("/"),"retries":1}),
        )
        .await;
    node.create_hook(
        &account,
        json!({"name":"fine","hook":"channel_create","uri":fine.url("/")}),
    )
    .await;
    let started = Instant::now();
    for _ in 0..20 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    let seen = fine.wait_for(20, Duration::from_secs(5)).await;
    let last = seen.iter().map(|r| r.at).max().unwrap();
    assert!(
        last - started < Duration::from_millis(3000),
        "the healthy hook got all 20 in {:?}, before the hung one's 4 s timeout",
        last - started
    );
    // The hung hook's attempts (8 at a time, its concurrency limit) time out and are logged so.
    let attempts = node.attempts_at_least(&account, &hung_hook, 8).await;
    assert!(hung.requests().len() >= 8);
    assert!(
        attempts.iter().all(|a| a["reason"] == "request timed out"),
        "{attempts:?}"
    );
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestors_hooks_fire_only_with_include_subaccounts() {
    let world = World::new().await;
    let t = &world.tenants;
    let node = Node::start(&world.args());
    let receiver = Receiver::start().await;
    node.create_hook(&t.reseller, json!({"name":"all-below","hook":"channel_create","uri":receiver.url("/reseller-sub"),"include_subaccounts":true}))
        .await;
    node.create_hook(
        &t.reseller,
        json!({"name":"own","hook":"channel_create","uri":receiver.url("/reseller-own")}),
    )
    .await;
    node.create_hook(
        &t.b,
        json!({"name":"b","hook":"channel_create","uri":receiver.url("/b")}),
    )
    .await;
    node.create_hook(&t.a, json!({"name":"a","hook":"channel_create","uri":receiver.url("/a"),"include_subaccounts":false}))
        .await;
    publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &t.a_child).await;
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    let seen = {
        let all = receiver.settle(Duration::from_millis(700)).await;
        drop(seen);
        all
    };
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/reseller-sub"],
        "only the ancestor hook that includes sub-accounts"
    );
    assert!(seen[0]
        .body_text()
        .contains(&format!("account_id={}", t.a_child)));
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_at_save_and_at_delivery() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let guarded = with_arg(world.args(), "webhooks-allow-private-targets", "false");
    let node = Node::start(&guarded);
    for uri in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/",
        "http://192.168.0.10/",
    ] {
        let (status, answer) = node
            .call(
                "PUT",
                &format!("/v2/accounts/{account}/webhooks"),
                &token(&account),
                Some(json!({"name":"x","hook":"channel_create","uri":uri})),
            )
            .await;
        assert_eq!(status, 400, "{uri}: {answer}");
        assert_eq!(answer["message"], "invalid data");
        assert!(
            answer["data"]["uri"]["forbidden"]["message"]
                .as_str()
                .unwrap()
                .contains("refused"),
            "{answer}"
        );
    }
    // A hook saved while private targets were allowed is refused at delivery once they are not.
    drop(node);
    let receiver = Receiver::start().await;
    let open = Node::start(&world.args());
    let hook = open
        .create_hook(
            &account,
            json!({"name":"x","hook":"channel_create","uri":receiver.url("/")}),
        )
        .await;
    drop(open);
    let node = Node::start(&guarded);
    publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let attempts = loop {
        let attempts = node.attempts(&account, &hook).await;
        if !attempts.is_empty() || Instant::now() > deadline {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempts.len(), 1, "refused, not retried: {attempts:?}");
    assert!(
        attempts[0]["reason"].as_str().unwrap().contains("refused"),
        "{attempts:?}"
    );
    assert!(receiver.settle(Duration::from_millis(300)).await.is_empty());
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crossbar_api_round_trips_and_names_every_validation_error() {
    let world = World::new().await;
    let t = &world.tenants;
    let node = Node::start(&world.args());
    let a = &t.a;
    let base = format!("/v2/accounts/{a}/webhooks");
    let tok = token(a);

    // Hook types (no token needed) and samples.
    let (status, types) = node.call("GET", "/v2/webhooks", "", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "channel_create",
            "channel_answer",
            "channel_bridge",
            "channel_destroy",
            "object",
            "parking",
            "notifications",
            "all"
        ]
    );
    assert!(types["data"][4]["modifiers"]["type"]["items"]
        .as_array()
        .unwrap()
        .contains(&json!("vmbox")));
    let (status, sample) = node
        .call("GET", "/v2/webhooks/samples/channel_destroy", "", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(sample["data"]["hook_event"], "channel_destroy");
    assert!(sample["data"]["hangup_cause"].is_string());

    // Create with defaults filled in.
    let (status, created) = node
        .call(
            "PUT",
            &base,
            &tok,
            Some(json!({"name":"crm","hook":"channel_create","uri":"http://127.0.0.1:9/x"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let doc = &created["data"];
    let id = doc["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            doc["http_verb"].as_str(),
            doc["retries"].as_i64(),
            doc["format"].as_str()
        ),
        (Some("post"), Some(3), Some("form-data"))
    );
    assert_eq!(
        (
            doc["enabled"].as_bool(),
            doc["include_subaccounts"].as_bool(),
            doc["include_internal_legs"].as_bool()
        ),
        (Some(true), Some(false), Some(true))
    );

    // List and get.
    let (_, list) = node.call("GET", &base, &tok, None).await;
    assert_eq!(
        list["data"],
        json!([{"id":id,"hook":"channel_create","name":"crm","uri":"http://127.0.0.1:9/x","enabled":true}])
    );
    let (status, got) = node.call("GET", &format!("{base}/{id}"), &tok, None).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"], created["data"]);

    // PATCH merges; POST replaces.
    let (status, patched) = node
        .call(
            "PATCH",
            &format!("{base}/{id}"),
            &tok,
            Some(json!({"retries":5,"http_verb":"GET"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (
            patched["data"]["retries"].as_i64(),
            patched["data"]["http_verb"].as_str(),
            patched["data"]["name"].as_str()
        ),
        (Some(5), Some("get"), Some("crm"))
    );
    let (status, replaced) = node
        .call(
            "POST",
            &format!("{base}/{id}"),
            &tok,
            Some(json!({"name":"new","hook":"CHANNEL_DESTROY","uri":"https://127.0.0.1:9/y"})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        (
            replaced["data"]["retries"].as_i64(),
            replaced["data"]["hook"].as_str(),
            replaced["data"]["id"].as_str()
        ),
        (Some(3), Some("channel_destroy"), Some(id.as_str()))
    );

    // A secret is written, never read back; sending the masked document back keeps it.
    let (status, with_secret) = node
        .call(
            "PATCH",
            &format!("{base}/{id}"),
            &tok,
            Some(json!({"secret":"s3cr3t"})),
        )
        .await;
    assert_eq!(
        (status, with_secret["data"]["secret"].as_str()),
        (200, Some("********"))
    );
    let (_, read) = node.call("GET", &format!("{base}/{id}"), &tok, None).await;
    assert_eq!(read["data"]["secret"], "********");
    let (status, _) = node
        .call(
            "POST",
            &format!("{base}/{id}"),
            &tok,
            Some(read["data"].clone()),
        )
        .await;
    assert_eq!(status, 200);
    let stored = horizon::webhooks::store::Store::open(horizon::webhooks::store::Backend::Sqlite(
        world.db_file.display().to_string(),
    ))
    .await
    .unwrap()
    .hook(a, &id)
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stored.doc["secret"], "s3cr3t");

    // Every validation error, in crossbar's shape.
    let cases = [
        (
            json!({}),
            vec![
                ("hook", "required"),
                ("name", "required"),
                ("uri", "required"),
            ],
        ),
        (
            json!({"name":"n","hook":"nope","uri":"http://127.0.0.1/"}),
            vec![("hook", "enum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"ftp://127.0.0.1/"}),
            vec![("uri", "format")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://u:p@127.0.0.1/"}),
            vec![("uri", "format")],
        ),
        (
            json!({"name":"","hook":"all","uri":"http://127.0.0.1/"}),
            vec![("name", "minLength")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","http_verb":"delete"}),
            vec![("http_verb", "enum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","format":"xml"}),
            vec![("format", "enum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","retries":6}),
            vec![("retries", "maximum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","retries":-1}),
            vec![("retries", "minimum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","retries":"2"}),
            vec![("retries", "type")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","enabled":"yes"}),
            vec![("enabled", "type")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","custom_data":{"k":1}}),
            vec![("custom_data.k", "type")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","custom_data":"x"}),
            vec![("custom_data", "type")],
        ),
        (
            json!({"name":"n","hook":"object","uri":"http://127.0.0.1/"}),
            vec![
                ("custom_data.type", "required"),
                ("custom_data.action", "required"),
            ],
        ),
        (
            json!({"name":"n","hook":"object","uri":"http://127.0.0.1/","custom_data":{"type":"car","action":"doc_edited"}}),
            vec![("custom_data.type", "enum")],
        ),
        (
            json!({"name":"n","hook":"notifications","uri":"http://127.0.0.1/","custom_data":{"type":"bogus"}}),
            vec![("custom_data.type", "enum")],
        ),
        (
            json!({"name":"n","hook":"all","uri":"http://127.0.0.1/","secret":""}),
            vec![("secret", "type")],
        ),
    ];
    for (doc, expected) in cases {
        let (status, answer) = node.call("PUT", &base, &tok, Some(doc.clone())).await;
        assert_eq!(status, 400, "{doc}: {answer}");
        assert_eq!(
            (
                answer["error"].as_str(),
                answer["message"].as_str(),
                answer["status"].as_str()
            ),
            (Some("400"), Some("invalid data"), Some("error"))
        );
        let fields = answer["data"].as_object().unwrap();
        assert_eq!(fields.len(), expected.len(), "{doc}: {answer}");
        for (field, rule) in expected {
            assert!(
                answer["data"][field][rule]["message"].is_string(),
                "{doc}: {field}.{rule} in {answer}"
            );
        }
    }
    let (status, _) = node
        .call(
            "PATCH",
            &format!("{base}/{id}"),
            &tok,
            Some(json!({"retries":9})),
        )
        .await;
    assert_eq!(status, 400);

    // Authorization: no token, another tenant, an ancestor may; unknown ids 404.
    let (status, _) = node.call("GET", &base, "", None).await;
    assert_eq!(status, 401);
    let (status, _) = node.call("GET", &base, &token(&t.b), None).await;
    assert_eq!(status, 403);
    let (status, _) = node
        .call("DELETE", &format!("{base}/{id}"), &token(&t.b), None)
        .await;
    assert_eq!(status, 403);
    let (status, listed) = node.call("GET", &base, &token(&t.reseller), None).await;
    assert_eq!((status, listed["data"].as_array().unwrap().len()), (200, 1));
    let (status, _) = node.call("GET", &format!("{base}/nope"), &tok, None).await;
    assert_eq!(status, 404);
    let (status, _) = node
        .call(
            "GET",
            &format!("/v2/accounts/{}/webhooks/{id}", t.b),
            &token(&t.b),
            None,
        )
        .await;
    assert_eq!(status, 404, "another account's id is not found under mine");
    let (status, _) = node
        .call("PUT", &format!("{base}/{id}"), &tok, Some(json!({})))
        .await;
    assert_eq!(status, 405);

    // Descendants: the reseller sees the hooks below it.
    let (status, below) = node
        .call(
            "GET",
            &format!("/v2/accounts/{}/descendants/webhooks", t.reseller),
            &token(&t.reseller),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(below["data"][0]["account_id"], a.as_str());

    // Delete.
    let (status, deleted) = node
        .call("DELETE", &format!("{base}/{id}"), &tok, None)
        .await;
    assert_eq!(
        (status, deleted["data"]["id"].as_str()),
        (200, Some(id.as_str()))
    );
    let (status, _) = node.call("GET", &format!("{base}/{id}"), &tok, None).await;
    assert_eq!(status, 404);
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempts_log_pages_and_filters_by_time() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&world.args());
    let receiver = Receiver::start().await;
    let first = node
        .create_hook(
            &account,
            json!({"name":"1","hook":"channel_create","uri":receiver.url("/1")}),
        )
        .await;
    node.create_hook(
        &account,
        json!({"name":"2","hook":"channel_create","uri":receiver.url("/2")}),
    )
    .await;
    for _ in 0..3 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    receiver.wait_for(6, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tok = token(&account);
    let base = format!("/v2/accounts/{account}/webhooks/attempts");
    let (status, page1) = node
        .call("GET", &format!("{base}?page_size=4"), &tok, None)
        .await;
    assert_eq!(status, 200, "{page1}");
    assert_eq!(page1["data"].as_array().unwrap().len(), 4);
    assert_eq!(page1["page_size"], 4);
    let next = page1["next_start_key"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, page2) = node
        .call(
            "GET",
            &format!("{base}?page_size=4&start_key={}", urlencode(&next)),
            &tok,
            None,
        )
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 2);
    assert!(page2.get("next_start_key").is_none());
    let mut ids: Vec<Value> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .map(|a| a["id"].clone())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 6, "pages do not overlap");
    let stamps: Vec<u64> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["timestamp"].as_u64().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // One hook's attempts only.
    let (_, one) = node
        .call(
            "GET",
            &format!("/v2/accounts/{account}/webhooks/{first}/attempts"),
            &tok,
            None,
        )
        .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 3);
    assert!(one["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["hook_id"] == first.as_str()));
    // Time filters (Gregorian seconds, as Kazoo's timestamps).
    let now = stamps[0];
    let (_, later) = node
        .call(
            "GET",
            &format!("{base}?created_from={}", now + 10),
            &tok,
            None,
        )
        .await;
    assert_eq!(later["data"], json!([]));
    let (_, window) = node
        .call(
            "GET",
            &format!("{base}?created_from={}&created_to={}", now - 60, now + 60),
            &tok,
            None,
        )
        .await;
    assert_eq!(window["data"].as_array().unwrap().len(), 6);
    let (status, _) = node
        .call("GET", &format!("{base}?created_from=yesterday"), &tok, None)
        .await;
    assert_eq!(status, 400);
    let (status, _) = node
        .call("GET", &format!("{base}?page_size=0"), &tok, None)
        .await;
    assert_eq!(status, 400);
    // Another tenant sees nothing of it.
    let (status, _) = node
        .call("GET", &base, &token(&world.tenants.b), None)
        .await;
    assert_eq!(status, 403);
    drop(node);
    world.cleanup().await;
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_deliver_each_event_once() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let (db, db_name) = fresh_postgres().await;
    let args = with_arg(world.args(), "webhooks-db", &db);
    // A small prefetch: neither node can take the whole burst before the other gets some.
    let args = with_arg(args, "amqp-prefetch", "10");
    let one = Node::start(&with_arg(args.clone(), "node", "wh-one"));
    let two = Node::start(&with_arg(args, "node", "wh-two"));
    let receiver = Receiver::start().await;
    one.create_hook(
        &account,
        json!({"name":"r","hook":"channel_create","uri":receiver.url("/")}),
    )
    .await;
    // The second node learns of the hook (announced on the control exchange).
    two.wait_hooks(1).await;
    let calls: Vec<String> = (0..100).map(|_| unique_call()).collect();
    for call in &calls {
        publish_call(&world.channel, "CHANNEL_CREATE", call, &account).await;
    }
    receiver.wait_for(100, Duration::from_secs(15)).await;
    let seen = receiver.settle(Duration::from_millis(700)).await;
    assert_eq!(
        seen.len(),
        100,
        "each event delivered once across the two nodes"
    );
    let mut ids: Vec<_> = seen
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    // Both nodes did part of the work (they compete on one queue).
    let (_, attempts) = two
        .call(
            "GET",
            &format!("/v2/accounts/{account}/webhooks/attempts?page_size=1000"),
            &token(&account),
            None,
        )
        .await;
    let nodes: std::collections::BTreeSet<&str> = attempts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["wh-one", "wh-two"]);
    drop(one);
    drop(two);
    drop_postgres(&db_name).await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_disable_is_counted_across_nodes_and_undone_by_patch() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let (db, db_name) = fresh_postgres().await;
    let args = with_arg(
        with_arg(world.args(), "webhooks-db", &db),
        "webhooks-attempt-failure-count",
        "6",
    );
    // One message at a time per node: the broker hands them out in turn.
    let args = with_arg(args, "amqp-prefetch", "1");
    let one = Node::start(&with_arg(args.clone(), "node", "ad-one"));
    let two = Node::start(&with_arg(args, "node", "ad-two"));
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::Status(404));
    let hook = one
        .create_hook(
            &account,
            json!({"name":"bad","hook":"channel_create","uri":receiver.url("/"),"retries":1}),
        )
        .await;
    two.wait_hooks(1).await;
    // Six failures, spread over both nodes by the shared queue, disable the hook.
    for _ in 0..6 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let failed = receiver.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(failed.len(), 6);
    let attempts = one.attempts_at_least(&account, &hook, 6).await;
    let nodes: std::collections::BTreeSet<&str> = attempts
        .iter()
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 2, "both nodes failed some: {nodes:?}");
    let path = format!("/v2/accounts/{account}/webhooks/{hook}");
    let tok = token(&account);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, a) = one.call("GET", &path, &tok, None).await;
        let (_, b) = two.call("GET", &path, &tok, None).await;
        if a["data"]["enabled"] == false && b["data"]["enabled"] == false {
            assert_eq!(a["data"]["disable_reason"], "too many failed attempts");
            assert_eq!(b["data"]["disable_reason"], "too many failed attempts");
            break;
        }
        assert!(Instant::now() < deadline, "not disabled: {a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = two
        .call(
            "GET",
            &format!("/v2/accounts/{account}/webhooks"),
            &tok,
            None,
        )
        .await;
    assert_eq!(
        list["data"][0]["disable_reason"],
        "too many failed attempts"
    );
    // Neither node fires it now.
    one.wait_hooks(0).await;
    two.wait_hooks(0).await;
    for _ in 0..6 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    assert_eq!(
        receiver.settle(Duration::from_millis(1000)).await.len(),
        6,
        "a disabled hook fires on no node"
    );
    // Re-enabled by PATCH (Kazoo's way), on the other node: both fire it again.
    receiver.default_reply(Reply::Status(200));
    let (status, patched) = two
        .call("PATCH", &path, &tok, Some(json!({"enabled":true})))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched["data"].get("disable_reason").is_none());
    one.wait_hooks(1).await;
    for _ in 0..10 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    receiver.wait_for(16, Duration::from_secs(10)).await;
    // The bulk re-enable of an account (and of its descendants) works the same way.
    receiver.default_reply(Reply::Status(404));
    for _ in 0..6 {
        publish_call(&world.channel, "CHANNEL_CREATE", &unique_call(), &account).await;
    }
    receiver.wait_for(22, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while one.call("GET", &path, &tok, None).await.1["data"]["enabled"] != false {
        assert!(Instant::now() < deadline, "disabled again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = one
        .call(
            "PATCH",
            &format!(
                "/v2/accounts/{}/descendants/webhooks",
                world.tenants.reseller
            ),
            &token(&world.tenants.reseller),
            Some(json!({"re-enable":true})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["re-enabled"], 1);
    let (_, after) = two.call("GET", &path, &tok, None).await;
    assert_eq!(after["data"]["enabled"], true);
    drop(one);
    drop(two);
    drop_postgres(&db_name).await;
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_serve_has_webhooks_on_its_embedded_database() {
    // No broker, no database, no auth file: `horizon serve` as on a fresh machine.
    let dir = std::env::temp_dir().join(format!("horizon-fresh-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let node = Node::start_in(&dir, &[("webhooks-allow-private-targets", "true".into())]);
    let token = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = node.log_text();
            if let Some(token) = log.lines().find_map(common::dev_token) {
                break token;
            }
            assert!(Instant::now() < deadline, "no development token in:\n{log}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(
        node.log_text()
            .contains("webhooks: on, hooks in SQLite horizon-webhooks.db"),
        "{}",
        node.log_text()
    );
    assert!(
        dir.join("horizon-webhooks.db").exists(),
        "the database is created in the working directory"
    );
    let receiver = Receiver::start().await;
    let (status, created) = node
        .call(
            "PUT",
            "/v2/accounts/dev-account/webhooks",
            &token,
            Some(json!({"name":"fresh","hook":"channel_answer","uri":receiver.url("/fresh")})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let event = json!({"exchange":"callevt","routing_key":"call.CHANNEL_ANSWER.c1","payload":{
        "Event-Name":"CHANNEL_ANSWER","Call-ID":"c1","Custom-Channel-Vars":{"Account-ID":"dev-account"}}});
    let (status, answer) = common::http(
        node.api,
        "POST",
        "/v2/events",
        &[("X-Auth-Token", &token)],
        &event.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let seen = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(seen[0].body_text().contains("hook_event=channel_answer"));
    assert!(seen[0].body_text().contains("call_id=c1"));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_queue_is_bound_to_exactly_what_the_hooks_need() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&world.args());
    common::kazoo::expect_bindings(&world.queue, &[]).await;
    let create = node
        .create_hook(
            &account,
            json!({"name":"c","hook":"channel_create","uri":"http://127.0.0.1:9/"}),
        )
        .await;
    // Bound when the API answers.
    assert_eq!(
        common::kazoo::broker_bindings(&world.queue),
        [("callevt".to_string(), "call.CHANNEL_CREATE.*".to_string())]
            .into_iter()
            .collect()
    );
    let object = node
        .create_hook(&account, json!({"name":"o","hook":"object","uri":"http://127.0.0.1:9/","custom_data":{"type":"user","action":"doc_edited"}}))
        .await;
    common::kazoo::expect_bindings(
        &world.queue,
        &[
            ("callevt", "call.CHANNEL_CREATE.*"),
            ("configuration", "*.*.*.*"),
        ],
    )
    .await;
    let tok = token(&account);
    for id in [create, object] {
        let (status, _) = node
            .call(
                "DELETE",
                &format!("/v2/accounts/{account}/webhooks/{id}"),
                &tok,
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    common::kazoo::expect_bindings(&world.queue, &[]).await;
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_legs_fire_only_hooks_that_include_them() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&world.args());
    let receiver = Receiver::start().await;
    node.create_hook(
        &account,
        json!({"name":"all-legs","hook":"channel_create","uri":receiver.url("/all")}),
    )
    .await;
    node.create_hook(&account, json!({"name":"external","hook":"channel_create","uri":receiver.url("/external"),"include_internal_legs":false}))
        .await;
    let loopback = json!({"Event-Name":"CHANNEL_CREATE","Call-ID":"loop-1","Channel-Is-Loopback":true,
        "Channel-Loopback-Leg":"A","Custom-Channel-Vars":{"Account-ID":account}});
    publish(
        &world.channel,
        "callevt",
        "call.CHANNEL_CREATE.loop-1",
        loopback.to_string().as_bytes(),
    )
    .await;
    publish_call(&world.channel, "CHANNEL_CREATE", "ext-1", &account).await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    let mut seen: Vec<(String, bool)> = receiver
        .settle(Duration::from_millis(500))
        .await
        .iter()
        .map(|r| {
            (
                r.target.clone(),
                r.body_text().contains("is_internal_leg=true"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/all".to_string(), false),
            ("/all".to_string(), true),
            ("/external".to_string(), false)
        ]
    );
    drop(node);
    world.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_may_not_create_hooks_without_bound() {
    let world = World::new().await;
    let account = world.tenants.a.clone();
    let node = Node::start(&with_arg(world.args(), "webhooks-max-per-account", "2"));
    let doc = json!({"name":"n","hook":"channel_create","uri":"http://127.0.0.1:9/"});
    node.create_hook(&account, doc.clone()).await;
    node.create_hook(&account, doc.clone()).await;
    let (status, answer) = node
        .call(
            "PUT",
            &format!("/v2/accounts/{account}/webhooks"),
            &token(&account),
            Some(doc.clone()),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("webhooks_max_per_account"));
    // Another account has its own allowance.
    node.create_hook(&world.tenants.b, doc).await;
    drop(node);
    world.cleanup().await;
}

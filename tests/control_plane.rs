//! The control plane: crossbar-compatible REST answers, publish, metrics, readiness, and socket
//! listings across two nodes sharing the broker.

mod common;

use std::time::Duration;

use common::http;
use common::kazoo::*;
use simd_json::prelude::*;

fn envelope(body: &str) -> simd_json::OwnedValue {
    let value = parse(body);
    for member in ["status", "request_id", "node", "timestamp", "version"] {
        assert!(
            value.get(member).is_some(),
            "envelope lacks {member}: {body}"
        );
    }
    assert!(value.get("data").is_some(), "envelope lacks data: {body}");
    value
}

fn auth(token: &str) -> Vec<(&'static str, String)> {
    vec![("X-Auth-Token", token.to_string())]
}

async fn get(node: &Node, path: &str, token: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, String)> = token.map(auth).unwrap_or_default();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http(node.api.local_addr(), "GET", path, &headers, "").await
}

async fn post(node: &Node, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let headers: Vec<(&str, String)> = token
        .map(|t| vec![("Authorization", format!("Bearer {t}"))])
        .unwrap_or_default();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http(node.api.local_addr(), "POST", path, &headers, body).await
}

/// The auth file of `Tenants` plus a publisher token for account a.
fn auth_with_publisher(t: &Tenants) -> String {
    format!(
        "{}\n[[tokens]]\ntoken = \"pub-{a}\"\naccount_id = \"{a}\"\npublish = true\n",
        t.auth_toml(),
        a = t.a
    )
}

#[test]
fn rest_answers_in_the_crossbar_envelope_and_publishes_into_the_embedded_bus() {
    let t = Tenants::new();
    let node = Node::start(false, &auth_with_publisher(&t), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let (status, body) = get(&node, "/healthz", None).await;
        assert_eq!(status, 200, "{body}");
        let value = envelope(&body);
        assert_eq!(value.get_str("status"), Some("success"));
        assert_eq!(value.get_str("node"), Some(node.node.as_str()));
        let (status, body) = http(node.api.local_addr(), "GET", "/readyz", &[("X-Request-ID", "req-7")], "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(envelope(&body).get_str("request_id"), Some("req-7"));

        // The catalog is exactly what subscribe accepts, as plain strings (the seed docs' shape).
        let (status, body) = get(&node, "/v2/websockets", None).await;
        assert_eq!(status, 200);
        let value = envelope(&body);
        let data = value.get("data").expect("data");
        for entry in horizon::families::catalog() {
            let listed: Vec<&str> = data
                .get_array(entry.family)
                .expect("family listed")
                .iter()
                .filter_map(|b| b.as_str())
                .collect();
            assert_eq!(listed, entry.bindings.iter().map(String::as_str).collect::<Vec<_>>());
        }

        // Errors are JSON, in the envelope, with Kazoo's string code.
        let (status, body) = get(&node, "/v2/nope", None).await;
        assert_eq!(status, 404);
        let value = envelope(&body);
        assert_eq!((value.get_str("status"), value.get_str("error")), (Some("error"), Some("404")));
        let (status, body) = post(&node, "/v2/websockets", None, "{}").await;
        assert_eq!(status, 405, "{body}");
        let (status, _) = get(&node, &format!("/v2/accounts/{}/websockets", t.a), None).await;
        assert_eq!(status, 401);
        let (status, _) = get(&node, &format!("/v2/accounts/{}/websockets", t.a), Some("tok-nope")).await;
        assert_eq!(status, 401);

        // Publish: rights, body checks, then the event reaches a subscriber.
        let event = format!(
            r#"{{"exchange":"callevt","routing_key":"call.CHANNEL_CREATE.rest-1","payload":{{"Event-Name":"CHANNEL_CREATE","Call-ID":"rest-1","Custom-Channel-Vars":{{"Account-ID":"{}"}}}}}}"#,
            t.a
        );
        assert_eq!(post(&node, "/v2/events", None, &event).await.0, 401);
        assert_eq!(post(&node, "/v2/events", Some(&token(&t.a)), &event).await.0, 403);
        let publisher = format!("pub-{}", t.a);
        for (bad, status) in [("{oops", 400), ("[]", 400), (r#"{"exchange":"callevt"}"#, 400), (r#"{"exchange":"callevt","routing_key":"k","payload":"x"}"#, 400)] {
            let (got, body) = post(&node, "/v2/events", Some(&publisher), bad).await;
            assert_eq!(got, status, "{bad}: {body}");
            envelope(&body);
        }
        let (status, body) = post(&node, "/v2/events", Some(&publisher), r#"{"exchange":"callevt","routing_key":"k","payload":{"Event-Name":"CHANNEL_CREATE"}}"#).await;
        assert_eq!(status, 400);
        assert!(body.contains("event not routable"), "{body}");

        let mut client = Client::connect(node.addr()).await;
        client.subscribe(Some(&token(&t.a)), r#"{"binding":"call.CHANNEL_CREATE.*"}"#).await;
        let (status, body) = post(&node, "/v2/events", Some(&publisher), &event).await;
        assert_eq!(status, 200, "{body}");
        let got = client.next_json(Duration::from_secs(3)).await.expect("the published event");
        assert_eq!(got.get("data").and_then(|d| d.get_str("call_id")), Some("rest-1"));

        // readyz turns 503 when the node starts draining.
        node.api.set_draining();
        let (status, body) = get(&node, "/readyz", None).await;
        assert_eq!(status, 503, "{body}");
    });
    node.stop();
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_events() {
    let t = Tenants::new();
    let node = Node::start(true, &auth_with_publisher(&t), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let scrape = |text: String| {
            let lines = text.lines().map(|l| Ok(l.to_string()));
            prometheus_parse::Scrape::parse(lines).expect("Prometheus text")
        };
        let value = |scrape: &prometheus_parse::Scrape, name: &str| -> f64 {
            scrape
                .samples
                .iter()
                .filter(|s| s.metric == name)
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum()
        };
        let (status, text) = get(&node, "/metrics", None).await;
        assert_eq!(status, 200);
        let before = scrape(text);
        let mut client = Client::connect(node.addr()).await;
        client.subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#).await;
        let publisher = format!("pub-{}", t.a);
        for i in ["0", "1", "2", "3", "4", "-end"] {
            let event = format!(
                r#"{{"exchange":"callevt","routing_key":"call.CHANNEL_CREATE.m{i}","payload":{{"Event-Name":"CHANNEL_CREATE","Call-ID":"m{i}","Custom-Channel-Vars":{{"Account-ID":"{}"}}}}}}"#,
                t.a
            );
            assert_eq!(post(&node, "/v2/events", Some(&publisher), &event).await.0, 200);
        }
        assert_eq!(client.events_until("m-end").await.len(), 5);
        let refused = tokio_tungstenite::connect_async(format!("ws://{}/?token=bad", node.addr())).await;
        assert!(refused.is_err(), "a bad token is refused (and counted)");
        let (_, text) = get(&node, "/metrics", None).await;
        let after = scrape(text.clone());
        assert_eq!(value(&after, "horizon_connections") as u64, 1, "{text}");
        assert!(value(&after, "horizon_deliveries_total") >= value(&before, "horizon_deliveries_total") + 5.0);
        assert!(value(&after, "horizon_events_routed_total") >= value(&before, "horizon_events_routed_total") + 5.0);
        assert_eq!(value(&after, "horizon_amqp_bindings") as u64, 1);
        assert_eq!(value(&after, "horizon_ready") as u64, 1);
        assert!(value(&after, "horizon_auth_failures_total") >= 1.0, "{text}");
        let histogram = after
            .samples
            .iter()
            .find(|s| s.metric == "horizon_delivery_latency_seconds")
            .expect("delivery latency histogram");
        match &histogram.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                assert!(total >= 5.0, "{buckets:?}");
            }
            other => panic!("not a histogram: {other:?}"),
        }
        assert!(!text.contains(&t.a), "no per-account labels");
    });
    node.stop();
}

#[test]
fn listings_span_both_nodes_and_keep_accounts_apart() {
    let t = Tenants::new();
    let one = Node::start(true, &t.auth_toml(), |_, _| {});
    let two = Node::start(true, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        one.ready().await;
        two.ready().await;
        let mut a1 = Client::connect(one.addr()).await;
        a1.subscribe(
            Some(&token(&t.a)),
            r#"{"binding":"call.CHANNEL_CREATE.*","name":"desk 1","metadata":{"seat":1}}"#,
        )
        .await;
        let mut a2 = Client::connect(two.addr()).await;
        a2.subscribe(
            Some(&token(&t.a)),
            r#"{"bindings":["call.*.*","object.*.*"]}"#,
        )
        .await;
        let mut b = Client::connect(two.addr()).await;
        b.subscribe(Some(&token(&t.b)), r#"{"binding":"call.*.*"}"#)
            .await;

        // Both nodes know each other after a heartbeat or two.
        let path = format!("/v2/accounts/{}/websockets", t.a);
        let mut listed = Vec::new();
        for _ in 0..40 {
            let (status, body) = get(&one, &path, Some(&token(&t.a))).await;
            assert_eq!(status, 200, "{body}");
            let value = envelope(&body);
            listed = value.get_array("data").cloned().unwrap_or_default();
            if listed.len() == 2 && value.get("partial").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut destinations: Vec<&str> = listed
            .iter()
            .filter_map(|s| s.get_str("destination"))
            .collect();
        destinations.sort();
        let mut nodes = vec![one.node.as_str(), two.node.as_str()];
        nodes.sort();
        assert_eq!(destinations, nodes, "{listed:?}");
        let on_one = listed
            .iter()
            .find(|s| s.get_str("destination") == Some(one.node.as_str()))
            .expect("node one's socket");
        assert_eq!(on_one.get_str("name"), Some("desk 1"));
        assert_eq!(
            on_one.get("metadata").and_then(|m| m.get_i64("seat")),
            Some(1)
        );
        assert_eq!(on_one.get_str("source"), Some("127.0.0.1"));
        assert!(
            on_one
                .get_u64("timestamp")
                .is_some_and(|t| t > 63_000_000_000),
            "Gregorian seconds"
        );
        let on_two = listed
            .iter()
            .find(|s| s.get_str("destination") == Some(two.node.as_str()))
            .expect("node two's socket");
        let mut bindings: Vec<&str> = on_two
            .get_array("bindings")
            .map(|a| a.iter().filter_map(|b| b.as_str()).collect())
            .unwrap_or_default();
        bindings.sort();
        assert_eq!(bindings, ["call.*.*", "object.*.*"]);

        // The same answer through the other node (once it has heard node one's heartbeat: each
        // node learns of the other on its own); the reseller may look, the sibling may not.
        let mut through_two = None;
        for _ in 0..40 {
            let (status, body) = get(&two, &path, Some(&token(&t.reseller))).await;
            assert_eq!(status, 200);
            let value = envelope(&body);
            through_two = value.get_array("data").map(|d| d.len());
            if through_two == Some(2) && value.get("partial").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(through_two, Some(2));
        let (status, body) = get(&two, &path, Some(&token(&t.b))).await;
        assert_eq!(status, 403, "{body}");

        // One socket by id: found under its account, 404 under another (even for its owner).
        let id = on_two
            .get_str("websocket_session_id")
            .expect("id")
            .to_string();
        let (status, body) = get(&one, &format!("{path}/{id}"), Some(&token(&t.a))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            envelope(&body)
                .get("data")
                .and_then(|d| d.get_str("websocket_session_id")),
            Some(id.as_str())
        );
        let (status, _) = get(
            &one,
            &format!("/v2/accounts/{}/websockets/{id}", t.b),
            Some(&token(&t.b)),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = get(
            &one,
            &format!("{path}/ffffffffffffffff"),
            Some(&token(&t.a)),
        )
        .await;
        assert_eq!(status, 404);
        drop((a1, a2, b));
    });
    two.stop();
    one.stop();
}

/// A child process killed when dropped (a panicking test leaves nothing running).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `horizon serve` process on the test broker; returns the child, its WebSocket and API
/// addresses and its node id (read from its log).
fn spawn_node(
    auth_file: &std::path::Path,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
    String,
) {
    use std::io::BufRead;
    let mut child = common::serve_command()
        .args(["--shards", "1"])
        .args([
            "--amqp-url",
            &common::amqp_url(),
            "--auth-file",
            auth_file.to_str().unwrap(),
            "--cluster-secret",
            std::str::from_utf8(common::kazoo::CLUSTER_SECRET).unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run horizon serve");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ws, mut api, mut node) = (None, None, None);
    while ws.is_none() || api.is_none() {
        let line = lines.next().expect("a log line").unwrap();
        match common::listening(&line) {
            Some(common::Listening::Ws(addr)) => ws = Some(addr),
            Some(common::Listening::Api(addr)) => api = Some(addr),
            None => {}
        }
        if let Some((_, rest)) = line.split_once("api: listening on http://") {
            node = rest
                .split("(node ")
                .nth(1)
                .map(|n| n.trim_end_matches(')').to_string());
        }
    }
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, ws.unwrap(), api.unwrap(), node.unwrap())
}

#[test]
fn a_killed_node_leaves_the_listing_once_its_heartbeat_lapses() {
    let t = Tenants::new();
    let auth_file = common::temp_file("horizon-cluster", &t.auth_toml());
    let (first, ws1, api1, node1) = spawn_node(&auth_file);
    let (second, ws2, _api2, node2) = spawn_node(&auth_file);
    // A failing assertion must not leave gateways running behind the test.
    let (mut first, mut second) = (Reaped(first), Reaped(second));
    runtime().block_on(async {
        let path = format!("/v2/accounts/{}/websockets", t.a);
        let list = || async {
            let (status, body) =
                http(api1, "GET", &path, &[("X-Auth-Token", &token(&t.a))], "").await;
            assert_eq!(status, 200, "{body}");
            envelope(&body)
        };
        let mut c1 = Client::connect(ws1).await;
        c1.subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        let mut c2 = Client::connect(ws2).await;
        c2.subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        let destinations = |value: &simd_json::OwnedValue| {
            let mut d: Vec<String> = value
                .get_array("data")
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.get_str("destination").map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            d.sort();
            d
        };
        let mut both = vec![node1.clone(), node2.clone()];
        both.sort();
        let mut seen = Vec::new();
        for _ in 0..40 {
            let value = list().await;
            seen = destinations(&value);
            if seen == both && value.get("partial").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(seen, both, "both nodes' sockets are listed");

        // SAFETY: kill on the child's own pid.
        unsafe { libc::kill(second.0.id() as i32, libc::SIGKILL) };
        let _ = second.0.wait();
        // Right away the node is still live by its last heartbeat: the listing waits for it,
        // then says who did not answer.
        let value = list().await;
        assert_eq!(
            value.get("partial").and_then(|p| p.as_bool()),
            Some(true),
            "{value}"
        );
        let missing: Vec<&str> = value
            .get_array("missing_nodes")
            .map(|m| m.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(missing, [node2.as_str()]);
        assert_eq!(destinations(&value), [node1.as_str()]);
        // Once its heartbeat lapses it is no longer expected: complete answers again.
        let mut complete = false;
        for _ in 0..40 {
            let value = list().await;
            if value.get("partial").is_none() {
                assert_eq!(destinations(&value), [node1.as_str()]);
                complete = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(complete, "the killed node left the cluster");
        drop((c1, c2));
    });
    // SAFETY: as above.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    let _ = first.0.wait();
    let _ = std::fs::remove_file(auth_file);
}

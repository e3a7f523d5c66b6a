//! What operator consoles asked for (PROTOCOLS section 10), on real sockets and a real broker:
//! registrations by realm, `max_connections_per_account` at the upgrade and at the first
//! command, revocation on SIGHUP, `DELETE` of sockets across two nodes, a drain spread over its
//! window, and `max_connects_per_sec`.

mod common;

use std::time::{Duration, Instant};

use common::kazoo::*;
use simd_json::prelude::*;

/// `Tenants`' auth file with realms for a and b, an admin token for a (`adm-<a>`) and one for b.
fn auth_toml(t: &Tenants) -> String {
    format!(
        "{}\n[[tokens]]\ntoken = \"adm-{a}\"\naccount_id = \"{a}\"\nadmin = true\n\
         [[tokens]]\ntoken = \"adm-{b}\"\naccount_id = \"{b}\"\nadmin = true\n\
         [[tokens]]\ntoken = \"tok2-{a}\"\naccount_id = \"{a}\"\n",
        t.auth_toml()
            .replace(
                &format!("id = \"{}\"\nparent", t.a),
                &format!("id = \"{}\"\nrealm = \"{}.sip.example\"\nparent", t.a, t.a)
            )
            .replace(
                &format!("id = \"{}\"\nparent", t.b),
                &format!("id = \"{}\"\nrealm = \"{}.sip.example\"\nparent", t.b, t.b)
            ),
        a = t.a,
        b = t.b
    )
}

#[test]
fn registrations_reach_their_realm_only_and_need_one() {
    let t = Tenants::new();
    let node = Node::start(true, &auth_toml(&t), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let mut a = Client::connect(node.addr()).await;
        a.subscribe(Some(&token(&t.a)), r#"{"binding":"registration.success"}"#)
            .await;
        let mut b = Client::connect(node.addr()).await;
        b.subscribe(Some(&token(&t.b)), r#"{"binding":"registration.success"}"#)
            .await;
        // The reseller has no realm: refused with bh_registration's error.
        let mut r = Client::connect(node.addr()).await;
        let reply = r
            .command(
                "subscribe",
                Some(&token(&t.reseller)),
                r#"{"binding":"registration.success"}"#,
            )
            .await;
        assert_eq!(errors(&reply), ["account has no realm"], "{reply:?}");
        let reply = r
            .command(
                "subscribe",
                None,
                r#"{"binding":"registration.failure"}"#,
            )
            .await;
        assert_eq!(
            errors(&reply),
            ["invalid format for registration subscription : failure"]
        );

        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let realm = format!("{}.sip.example", t.a);
        let body = format!(
            r#"{{"Event-Category":"directory","Event-Name":"reg_success","Username":"1001","Realm":"{realm}","Contact":"<sip:1001@192.0.2.9>","Expires":300,"Event-Timestamp":63890000000,"Msg-ID":"m","App-Name":"ecallmgr","App-Version":"4.3.0","Node":"n","Server-ID":""}}"#
        );
        let key = format!(
            "registration.success.{}.1001",
            horizon::families::encode_segment(&realm)
        );
        publish(&channel, "registrar", &key, body.as_bytes()).await;
        let got = a.next_json(Duration::from_secs(5)).await.expect("a's realm");
        assert_eq!(got.get_str("name"), Some("reg_success"));
        let data = got.get("data").unwrap();
        assert_eq!(data.get_str("username"), Some("1001"));
        assert_eq!(data.get_str("realm"), Some(realm.as_str()));
        assert!(
            b.next_json(Duration::from_millis(500)).await.is_none(),
            "another realm sees nothing"
        );
    });
    node.stop();
}

#[test]
fn an_account_holds_at_most_its_connections_at_the_upgrade_and_by_command() {
    let t = Tenants::new();
    let node = Node::start(false, &auth_toml(&t), |_, limits| {
        limits.max_connections_per_account = 2;
    });
    runtime().block_on(async {
        let addr = node.addr();
        let with_token = |account: &str| format!("/?token={}", token(account));
        let one = Client::connect_path(addr, &with_token(&t.a)).await;
        let mut two = Client::connect(addr).await;
        let reply = two
            .command("subscribe", Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply:?}");
        // A third for a: refused at the upgrade (429) ...
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}{}", with_token(&t.a)))
            .await
            .expect_err("over the account's limit");
        let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(response.status(), 429);
        let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
        assert!(body.contains("account connections limit"), "{body}");
        // ... and by the command that first names it (nothing done); b is not limited by a.
        let mut three = Client::connect(addr).await;
        let reply = three
            .command("subscribe", Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        assert_eq!(errors(&reply), ["account connections limit"]);
        let reply = three
            .command("subscribe", Some(&token(&t.b)), r#"{"binding":"call.*.*"}"#)
            .await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply:?}");
        // VoIPBin counts in the same place.
        let voipbin =
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1.0/ws?token={}", token(&t.a)))
                .await
                .expect_err("over the limit on VoIPBin's path too");
        assert!(matches!(
            voipbin,
            tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 429
        ));
        // A socket that leaves gives its place back.
        drop(one);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut again = Client::connect(addr).await;
            let reply = again
                .command("subscribe", Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
                .await;
            if reply.get_str("status") == Some("success") {
                break;
            }
            assert!(Instant::now() < deadline, "the place never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, metrics) = common::http(node.api.local_addr(), "GET", "/metrics", &[], "").await;
        for at in ["upgrade", "command"] {
            let line = format!("horizon_account_limit_refusals_total{{at=\"{at}\"}} ");
            let count: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&line))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{line} in {metrics}"));
            assert!(count >= 1, "{line}{count}");
        }
    });
    node.stop();
}

#[test]
fn a_token_removed_from_the_file_closes_its_sockets_on_sighup() {
    let t = Tenants::new();
    let text = auth_toml(&t);
    let file = common::temp_file("revocation-auth", &text);
    let mut command = common::serve_command();
    command.args(["--auth-file", &file.display().to_string()]);
    let (child, log) = common::spawn_logged(command);
    let child = common::Killed(child);
    let mut ws = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ws.is_none() {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve starts");
        if let Some(common::Listening::Ws(addr)) = common::listening(&line) {
            ws = Some(addr);
        }
    }
    let addr = ws.unwrap();
    runtime().block_on(async {
        let mut revoked = Client::connect(addr).await;
        revoked
            .subscribe(Some(&format!("tok2-{}", t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        let mut kept = Client::connect(addr).await;
        kept.subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
            .await;
        let without = text.replace(&format!("token = \"tok2-{}\"", t.a), "token = \"gone\"");
        std::fs::write(&file, without).unwrap();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
        assert_eq!(
            revoked.closed(Duration::from_secs(5)).await,
            (4001, "token revoked".to_string())
        );
        let reply = kept.command("ping", None, "{}").await;
        assert_eq!(reply.get_str("status"), Some("success"), "the other stays");
    });
    let reloaded = std::iter::from_fn(|| log.recv_timeout(Duration::from_secs(2)).ok())
        .any(|l| l.contains("SIGHUP: auth file reloaded; 1 socket(s) closed (token revoked)"));
    assert!(reloaded, "the log says what SIGHUP closed");
    drop(child);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn delete_closes_exactly_the_named_sockets_on_every_node() {
    let t = Tenants::new();
    let one = Node::start(true, &auth_toml(&t), |_, _| {});
    let two = Node::start(true, &auth_toml(&t), |_, _| {});
    runtime().block_on(async {
        one.ready().await;
        two.ready().await;
        let subscribe = |account: String, node: std::net::SocketAddr, name: &'static str| async move {
            let mut client = Client::connect(node).await;
            client
                .subscribe(
                    Some(&token(&account)),
                    &format!(r#"{{"binding":"call.*.*","name":"{name}"}}"#),
                )
                .await;
            client
        };
        let mut a1 = subscribe(t.a.clone(), one.addr(), "a1").await;
        let mut a2 = subscribe(t.a.clone(), one.addr(), "a2").await;
        let mut a3 = subscribe(t.a.clone(), two.addr(), "a3").await;
        let mut b1 = subscribe(t.b.clone(), two.addr(), "b1").await;
        let api = one.api.local_addr();
        let path = format!("/v2/accounts/{}/websockets", t.a);
        // Wait until the listing through node one shows a's three sockets.
        let mut listed = Vec::new();
        for _ in 0..60 {
            let (_, body) =
                common::http(api, "GET", &path, &[("X-Auth-Token", &token(&t.a))], "").await;
            listed = parse(&body).get_array("data").cloned().unwrap_or_default();
            if listed.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(listed.len(), 3, "{listed:?}");
        let id_of = |name: &str| {
            listed
                .iter()
                .find(|s| s.get_str("name") == Some(name))
                .and_then(|s| s.get_str("websocket_session_id"))
                .unwrap()
                .to_string()
        };
        // Without the admin right, or an admin of another tenant: refused, nothing closed.
        for who in [token(&t.a), format!("adm-{}", t.b)] {
            let (status, body) =
                common::http(api, "DELETE", &path, &[("X-Auth-Token", &who)], "").await;
            assert_eq!(status, 403, "{who}: {body}");
        }
        // One socket, held by the other node.
        let a3_id = id_of("a3");
        let (status, body) = common::http(
            api,
            "DELETE",
            &format!("{path}/{a3_id}"),
            &[("X-Auth-Token", &format!("adm-{}", t.a))],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            parse(&body).get("data").and_then(|d| d.get_str("name")),
            Some("a3")
        );
        assert_eq!(
            a3.closed(Duration::from_secs(5)).await,
            (4003, "closed by administrator".to_string())
        );
        // Every socket of a, on both nodes; b's stays.
        let (status, body) = common::http(
            api,
            "DELETE",
            &path,
            &[("X-Auth-Token", &format!("adm-{}", t.a))],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let mut names: Vec<String> = parse(&body)
            .get_array("data")
            .unwrap()
            .iter()
            .filter_map(|s| s.get_str("name").map(String::from))
            .collect();
        names.sort();
        assert_eq!(names, ["a1", "a2"]);
        for client in [&mut a1, &mut a2] {
            assert_eq!(client.closed(Duration::from_secs(5)).await.0, 4003);
        }
        let reply = b1.command("ping", None, "{}").await;
        assert_eq!(reply.get_str("status"), Some("success"));
    });
    one.stop();
    two.stop();
}

#[test]
fn a_drain_spreads_its_closes_over_the_window() {
    let t = Tenants::new();
    let node = Node::start(false, &auth_toml(&t), |config, _| {
        config.drain_spread = Duration::from_secs(2);
        config.shutdown_grace = Duration::from_secs(2);
    });
    let addr = node.addr();
    let rt = runtime();
    let mut clients = rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut client = Client::connect(addr).await;
            client
                .subscribe(Some(&token(&t.a)), r#"{"binding":"call.*.*"}"#)
                .await;
            clients.push(client);
        }
        clients
    });
    let started = Instant::now();
    let stopping = std::thread::spawn(move || node.stop());
    let closes: Vec<Duration> = rt.block_on(async {
        let waits = clients.iter_mut().map(|c| async {
            let (code, _) = c.closed(Duration::from_secs(6)).await;
            assert_eq!(code, 1001);
            started.elapsed()
        });
        futures_util::future::join_all(waits).await
    });
    stopping.join().unwrap();
    let first = closes.iter().min().unwrap();
    let last = closes.iter().max().unwrap();
    println!("drain of 20 sockets over 2 s: first close after {first:?}, last after {last:?}");
    assert!(
        *last - *first >= Duration::from_millis(1500),
        "spread: {first:?} .. {last:?}"
    );
    assert!(
        *last <= Duration::from_millis(3000),
        "within the window: {last:?}"
    );
}

#[test]
fn new_connections_past_the_rate_get_503_with_retry_after() {
    let t = Tenants::new();
    let node = Node::start(false, &auth_toml(&t), |config, _| {
        config.max_connects_per_sec = 5;
    });
    runtime().block_on(async {
        let addr = node.addr();
        let (mut accepted, mut throttled) = (0, 0);
        for _ in 0..12 {
            match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
                Ok(_) => accepted += 1,
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 503);
                    assert_eq!(
                        response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()),
                        Some("1")
                    );
                    throttled += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // 12 in well under two seconds: at most two windows' worth get in.
        assert!((5..=10).contains(&accepted), "{accepted} accepted");
        assert!(throttled >= 2, "{throttled} throttled");
        let (_, metrics) = common::http(node.api.local_addr(), "GET", "/metrics", &[], "").await;
        assert!(
            metrics.contains(&format!(
                "horizon_handshakes_refused_total{{reason=\"connect_rate\"}} {throttled}"
            )),
            "{metrics}"
        );
    });
    node.stop();
}

//! Kazoo fidelity of the REST side and the socket labels, as Monster UI and Kazoo master's
//! clients use them: CORS for a UI on another origin, the catalog's shape, session ids unique
//! across nodes, and `name` / `metadata` where Kazoo master reads them.

mod common;

use std::net::SocketAddr;

use common::kazoo::{parse, runtime, token, Client, Node, Tenants};
use simd_json::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One raw HTTP exchange: the status line and headers (lower-cased names) of the answer.
async fn head(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_browser_ui_on_another_origin_can_call_the_api() {
    let t = Tenants::new();
    let open = Node::start(false, &t.auth_toml(), |_, _| {});
    let listed = Node::start(false, &t.auth_toml(), |config, _| {
        config.cors_allowed_origins = vec!["http://ui.example:3000".into()];
    });
    runtime().block_on(async {
        let api = open.api.local_addr();
        // Monster UI's preflight before `GET .../websockets` with its auth header.
        let (status, headers) = head(
            api,
            &format!(
                "OPTIONS /v2/accounts/{}/websockets HTTP/1.1\r\nHost: api\r\nOrigin: http://monster.example\r\n\
                 Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: x-auth-token, content-type\r\n\
                 Connection: close\r\n\r\n",
                t.a
            ),
        )
        .await;
        assert_eq!(status, 204, "{headers:?}");
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        assert!(header(&headers, "access-control-allow-methods").is_some_and(|m| m.contains("GET")));
        assert_eq!(
            header(&headers, "access-control-allow-headers"),
            Some("x-auth-token, content-type")
        );
        // The real request's answer (an error, too) says who may read it.
        for path in ["/v2/websockets".to_string(), format!("/v2/accounts/{}/websockets", t.a)] {
            let (_, headers) = head(
                api,
                &format!("GET {path} HTTP/1.1\r\nHost: api\r\nOrigin: http://monster.example\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"), "{path}");
        }
        // With a list, only a listed origin is named.
        let api = listed.api.local_addr();
        for (origin, allowed) in [("http://ui.example:3000", true), ("http://evil.example", false)] {
            let (_, headers) = head(
                api,
                &format!("GET /v2/websockets HTTP/1.1\r\nHost: api\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(
                header(&headers, "access-control-allow-origin"),
                allowed.then_some(origin),
                "{origin}"
            );
            assert_eq!(header(&headers, "vary"), Some("Origin"));
        }
    });
    open.stop();
    listed.stop();
}

#[test]
fn the_catalog_lists_plain_binding_strings_for_every_family() {
    let t = Tenants::new();
    let node = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        let (status, body) =
            common::http(node.api.local_addr(), "GET", "/v2/websockets", &[], "").await;
        assert_eq!(status, 200, "{body}");
        let data = parse(&body).get("data").cloned().expect("data");
        for family in [
            "call",
            "object",
            "conference",
            "fax",
            "presence",
            "registration",
        ] {
            let list = data
                .get_array(family)
                .unwrap_or_else(|| panic!("{family} listed"));
            assert!(
                list.iter().all(|b| b.as_str().is_some()),
                "{family}: plain strings"
            );
        }
        // PROTOCOLS section 10: exactly the one binding bh_registration takes.
        let registration: Vec<&str> = data
            .get_array("registration")
            .unwrap()
            .iter()
            .filter_map(|b| b.as_str())
            .collect();
        assert_eq!(registration, ["registration.success"]);
        let presence: Vec<&str> = data
            .get_array("presence")
            .unwrap()
            .iter()
            .filter_map(|b| b.as_str())
            .collect();
        assert!(
            presence.contains(&"presence.dialog.{CALL_ID}"),
            "{presence:?}"
        );
        assert!(
            body.contains("conference.event.*.{CONFERENCE_ID}.{CALL_ID}"),
            "Monster UI's shape"
        );
        assert!(
            body.contains("doc_edited.*.{TYPE}.{DOC_ID}"),
            "the seed docs' raw form"
        );
    });
    node.stop();
}

/// The listing of `account` on `node`, as a list of socket objects.
async fn listing(node: &Node, account: &str) -> Vec<simd_json::OwnedValue> {
    let path = format!("/v2/accounts/{account}/websockets");
    let (status, body) = common::http(
        node.api.local_addr(),
        "GET",
        &path,
        &[("X-Auth-Token", &token(account))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
        .get_array("data")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[test]
fn session_ids_are_unique_across_nodes_and_labels_are_read_where_master_reads_them() {
    let t = Tenants::new();
    let one = Node::start(false, &t.auth_toml(), |_, _| {});
    let two = Node::start(false, &t.auth_toml(), |_, _| {});
    runtime().block_on(async {
        // Kazoo master reads `name` and `metadata` at the top level of the command.
        let mut a1 = Client::connect(one.addr()).await;
        a1.send_text(&format!(
            r#"{{"action":"subscribe","auth_token":"{}","name":"reception","metadata":{{"desk":1}},"data":{{"binding":"call.*.*"}}}}"#,
            token(&t.a)
        ))
        .await;
        let reply = a1.next_json(std::time::Duration::from_secs(5)).await.expect("reply");
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        // The docs put them in `data`: that works too.
        let mut a2 = Client::connect(two.addr()).await;
        a2.subscribe(
            Some(&token(&t.a)),
            r#"{"binding":"call.*.*","name":"back office","metadata":{"desk":2}}"#,
        )
        .await;
        let first = listing(&one, &t.a).await;
        let second = listing(&two, &t.a).await;
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_eq!(first[0].get_str("name"), Some("reception"));
        assert_eq!(first[0].get("metadata").and_then(|m| m.get_u64("desk")), Some(1));
        assert_eq!(second[0].get_str("name"), Some("back office"));
        let (id1, id2) = (
            first[0].get_str("websocket_session_id").unwrap(),
            second[0].get_str("websocket_session_id").unwrap(),
        );
        assert_ne!(id1, id2, "the first socket of each node has its own id");
        for id in [id1, id2] {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "URL-safe: {id}");
        }
    });
    one.stop();
    two.stop();
}

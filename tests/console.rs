//! The live console in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (a WebSocket, like any other client of this project). The page loads from `horizon
//! serve`, signs in with the development token typed into its form, shows a socket a test client
//! opened and an event a test published, and draws its chart. `scripts/test.sh` installs
//! Chromium (apt, as root); without it this test fails and says so.
//!
//! `HORIZON_SCREENSHOTS=DIR` also writes `console.png` there (docs/images is made that way).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Debian's Chromium (`HORIZON_TEST_CHROMIUM` to use another).
fn chromium() -> PathBuf {
    let path =
        std::env::var("HORIZON_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh installs it (apt-get install chromium, as root)",
        path.display()
    );
    path
}

/// Headless Chromium on `url` (with `extra` switches), and its DevTools WebSocket address.
fn start_browser(url: &str, extra: &[&str]) -> (common::Killed, String, PathBuf) {
    let profile =
        std::env::temp_dir().join(format!("horizon-chromium-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1360,1500",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let child = common::Killed(child);
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let mut lines = text.lines();
        if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
            return (child, format!("ws://127.0.0.1:{port}{path}"), profile);
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not open its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on loopback: status and body.
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Publishes a CHANNEL_CREATE for `dev-account` with `call_id` through the REST API: the status.
async fn publish_call(api: SocketAddr, token: &str, call_id: &str) -> u16 {
    let body = json!({"exchange":"callevt","routing_key":format!("call.CHANNEL_CREATE.{call_id}"),
        "payload":{"Event-Name":"CHANNEL_CREATE","Call-ID":call_id,
            "Custom-Channel-Vars":{"Account-ID":"dev-account"}}})
    .to_string();
    common::http(api, "POST", "/v2/events", &[("X-Auth-Token", token)], &body)
        .await
        .0
}

/// One page of the browser, through the browser's DevTools socket (flat sessions).
struct Page {
    cdp: Cdp,
    next: u64,
    session: Option<String>,
}

impl Page {
    /// Attaches to the browser's first page.
    async fn attach(browser: &str) -> Page {
        let (cdp, _) = tokio_tungstenite::connect_async(browser).await.unwrap();
        let mut page = Page {
            cdp,
            next: 0,
            session: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let target = loop {
            let targets = page.call("Target.getTargets", json!({})).await;
            let found = targets["targetInfos"]
                .as_array()
                .and_then(|all| all.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["targetId"].as_str().map(str::to_string));
            if let Some(found) = found {
                break found;
            }
            assert!(Instant::now() < deadline, "no page: {targets}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"].as_str().map(str::to_string);
        page
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut request = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            request["sessionId"] = Value::from(session.clone());
        }
        self.cdp
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(20), self.cdp.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page: its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.eval(expression).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "the console never showed {what}; the page says:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_and_shows_a_live_socket_and_a_live_event() {
    let (_node, ws, api, token) = common::start_dev_node();

    // The page is compiled into the binary; no other origin is allowed to run script.
    let answer = http_get(&api.to_string(), "/console");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("content-security-policy: default-src 'self'"),
        "{answer}"
    );
    assert!(http_get(&api.to_string(), "/console/app.js").contains("text/javascript"));
    assert!(http_get(&api.to_string(), "/console/nope.js").starts_with("HTTP/1.1 404"));
    // Its figures need a token.
    assert!(http_get(&api.to_string(), "/v2/console/stats").starts_with("HTTP/1.1 401"));

    // A client the console must show.
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/"))
        .await
        .unwrap();
    let subscribe = json!({"action":"subscribe","auth_token":token,"request_id":"r1",
        "name":"console-test-client","data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*"}});
    client
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    let reply = client.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(reply.contains("success"), "{reply}");

    let (_browser, devtools, profile) = start_browser(&format!("http://{api}/console"), &[]);
    let mut page = Page::attach(&devtools).await;
    page.wait_for(
        "the sign-in form",
        "document.readyState === 'complete' && !!document.getElementById('token')",
    )
    .await;

    // A wrong token is refused on the page.
    page.eval("document.getElementById('token').value = 'not-a-token'; document.getElementById('connect').click(); true")
        .await;
    page.wait_for(
        "the refusal",
        "document.getElementById('status').textContent.includes('refused')",
    )
    .await;

    // The development token signs in.
    page.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('connect').click(); true",
        Value::from(token.clone())
    ))
    .await;
    page.wait_for("the figures", "!document.getElementById('main').hidden")
        .await;
    let summary = page
        .eval("document.getElementById('summary').textContent")
        .await;
    assert!(
        summary.as_str().unwrap().contains("embedded bus"),
        "{summary}"
    );
    page.wait_for(
        "two shards",
        "document.querySelectorAll('#shards tr').length === 3",
    )
    .await;
    page.wait_for(
        "the test client's socket",
        "document.getElementById('sockets').innerText.includes('console-test-client')",
    )
    .await;
    page.wait_for(
        "this node",
        "document.getElementById('nodes').innerText.includes('this node')",
    )
    .await;
    page.wait_for(
        "the live tail subscribed",
        "document.getElementById('tail-state').textContent.startsWith('live: dev-account')",
    )
    .await;

    // An event published now shows in the tail (and reaches the test client too).
    let call_id = format!("console-call-{}", horizon::ids::random_hex(4));
    let status = publish_call(api, &token, &call_id).await;
    assert!((200..300).contains(&status), "publish: {status}");
    page.wait_for(
        "the published event",
        &format!("document.getElementById('tail').innerText.includes('{call_id}')"),
    )
    .await;
    // Once, though the console subscribes to old and new key forms of each family.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = page
        .eval(&format!(
            "[...document.querySelectorAll('#tail tr')].filter(r => r.cells[3].textContent === '{call_id}').length"
        ))
        .await;
    assert_eq!(rows, Value::from(1), "one row per event");
    let event = client.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(event.contains(&call_id), "{event}");

    // The chart has drawn something (a sample every 2 s).
    page.wait_for(
        "a chart",
        "(() => { const c = document.getElementById('chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; })()",
    )
    .await;

    // A screenshot, as a person would see it. For the documentation's picture, a minute of
    // traffic first, so that the chart has something to show.
    let docs = std::env::var("HORIZON_SCREENSHOTS").ok();
    let traffic = if docs.is_some() { 60 } else { 3 };
    for second in 0..traffic {
        let rate = 10 + (second % 20) * 3;
        for i in 0..rate {
            let call = format!("{call_id}-{second}-{i}");
            let status = publish_call(api, &token, &call).await;
            assert!((200..300).contains(&status), "publish: {status}");
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    page.wait_for(
        "the last event",
        &format!(
            "document.getElementById('tail').innerText.includes('{call_id}-{}-')",
            traffic - 1
        ),
    )
    .await;
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    if let Some(dir) = docs {
        std::fs::write(PathBuf::from(dir).join("console.png"), &png).unwrap();
    }
    drop(page);
    drop(_browser);
    let _ = std::fs::remove_dir_all(profile);
}

/// A real browser speaks wss to the node: headless Chromium (told to accept the test
/// certificate) opens `wss://127.0.0.1:PORT/` from a page, subscribes as Monster UI does, and
/// receives an event published over REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_subscribes_and_receives_over_wss() {
    let dir = std::env::temp_dir().join(format!(
        "horizon-browser-wss-{}",
        horizon::ids::random_hex(6)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (node, _) = common::start_wss_dev_node(&dir, &[]);
    let wss = node.wss.expect("a wss listener");
    let (_browser, devtools, profile) =
        start_browser("about:blank", &["--ignore-certificate-errors"]);
    let mut page = Page::attach(&devtools).await;
    let subscribe = json!({"action":"subscribe","auth_token":node.token,"request_id":"browser",
        "data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*"}});
    page.eval(&format!(
        "window.got = []; window.failed = null; \
         const ws = new WebSocket('wss://{wss}/'); \
         ws.onopen = () => ws.send({}); \
         ws.onmessage = (m) => window.got.push(m.data); \
         ws.onerror = () => window.failed = 'error'; \
         ws.onclose = (c) => window.failed = window.failed || ('closed ' + c.code); true",
        Value::from(subscribe.to_string())
    ))
    .await;
    page.wait_for(
        "the subscribe reply over wss",
        "window.got.length > 0 && window.got[0].includes('success')",
    )
    .await;
    let call_id = format!("browser-wss-{}", horizon::ids::random_hex(4));
    assert_eq!(publish_call(node.api, &node.token, &call_id).await, 200);
    page.wait_for(
        "the event over wss",
        &format!("window.got.some((m) => m.includes('{call_id}'))"),
    )
    .await;
    assert_eq!(page.eval("window.failed").await, Value::Null);
    drop(page);
    let _ = std::fs::remove_dir_all(profile);
    let _ = std::fs::remove_dir_all(dir);
}

/// Monster UI's socket client with positions on (docs/resume.md): a page in headless Chromium
/// handles frames as `monster.socket` does - a reply goes to its request's callback, an event's
/// `data` (with `binding` set from `subscribed_key`) to the binding's listeners, any other action
/// is ignored - and gets every event, with no error, while each frame carries its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monster_ui_s_socket_handling_is_unmoved_by_positions() {
    let dir = std::env::temp_dir().join(format!(
        "horizon-browser-positions-{}",
        horizon::ids::random_hex(6)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (node, _) = common::start_wss_dev_node(&dir, &["--history".as_ref(), "stream".as_ref()]);
    let wss = node.wss.expect("a wss listener");
    let (_browser, devtools, profile) =
        start_browser("about:blank", &["--ignore-certificate-errors"]);
    let mut page = Page::attach(&devtools).await;
    let subscribe = json!({"action":"subscribe","auth_token":node.token,"request_id":"monster-1",
        "data":{"account_id":"dev-account","binding":"call.CHANNEL_CREATE.*"}});
    page.eval(&format!(
        "window.replies = []; window.delivered = []; window.ignored = 0; window.raw = []; \
         window.failed = null; \
         const listeners = {{ 'call.CHANNEL_CREATE.*': [(data) => window.delivered.push(data)] }}; \
         const ws = new WebSocket('wss://{wss}/'); \
         ws.onopen = () => ws.send({}); \
         ws.onmessage = (m) => {{ \
           try {{ \
             window.raw.push(m.data); \
             const frame = JSON.parse(m.data); \
             if (frame.action === 'reply') {{ window.replies.push(frame); }} \
             else if (frame.action === 'event') {{ \
               frame.data.binding = frame.subscribed_key; \
               (listeners[frame.subscribed_key] || []).forEach((f) => f(frame.data)); \
             }} else {{ window.ignored += 1; }} \
           }} catch (e) {{ window.failed = String(e); }} \
         }}; \
         ws.onerror = () => window.failed = 'error'; \
         ws.onclose = (c) => window.failed = window.failed || ('closed ' + c.code); true",
        Value::from(subscribe.to_string())
    ))
    .await;
    page.wait_for(
        "the subscribe reply",
        "window.replies.length === 1 && window.replies[0].status === 'success'",
    )
    .await;
    let calls: Vec<String> = (0..2)
        .map(|i| format!("monster-pos-{i}-{}", horizon::ids::random_hex(4)))
        .collect();
    for call in &calls {
        assert_eq!(publish_call(node.api, &node.token, call).await, 200);
    }
    page.wait_for(
        "both events at the binding's listener",
        &format!(
            "window.delivered.length === 2 && window.delivered[1].call_id === '{}' \
             && window.delivered.every((d) => d.binding === 'call.CHANNEL_CREATE.*')",
            calls[1]
        ),
    )
    .await;
    assert_eq!(page.eval("window.failed").await, Value::Null);
    assert_eq!(page.eval("window.ignored").await, json!(0));
    // Positions were on: each event frame had one (Monster UI never looked at it).
    assert_eq!(
        page.eval("window.raw.filter((r) => r.includes('\"position\"')).length")
            .await,
        json!(2)
    );
    drop(page);
    let _ = std::fs::remove_dir_all(profile);
    let _ = std::fs::remove_dir_all(dir);
}

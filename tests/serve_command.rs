//! `horizon serve` as a user runs it: the real binary, its log, its listener, its signals.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = common::horizon_command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run horizon");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Reads log lines until one starts with `prefix`; returns the rest of that line.
fn wait_for_line(
    lines: &mut std::io::Lines<BufReader<std::process::ChildStdout>>,
    prefix: &str,
    log: &mut Vec<String>,
) -> String {
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("log ended before `{prefix}`: {log:?}"))
            .unwrap();
        log.push(line.clone());
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sends one blackhole command over a fresh socket and returns the reply text.
async fn one_command(url: &str, command: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    ws.send(tokio_tungstenite::tungstenite::Message::text(command))
        .await
        .unwrap();
    loop {
        match ws.next().await.expect("a reply").expect("a frame") {
            tokio_tungstenite::tungstenite::Message::Text(text) => return text.to_string(),
            _ => continue,
        }
    }
}

#[test]
fn serve_runs_embedded_with_a_development_token_and_stops_cleanly_on_sigterm_and_sigint() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let (mut child, mut lines) = spawn(&[
            "serve",
            "--ws-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--shards",
            "2",
        ]);
        let mut log = Vec::new();
        let source = wait_for_line(&mut lines, "event source: ", &mut log);
        assert!(source.starts_with("embedded bus"), "{source}");
        let listening = wait_for_line(&mut lines, "websocket: listening on ws://", &mut log);
        assert!(
            listening.contains("2 shard(s)") && listening.contains("driver "),
            "{listening}"
        );
        let addr = listening.split_whitespace().next().unwrap().to_string();
        let token = wait_for_line(
            &mut lines,
            "development token (account dev-account",
            &mut log,
        );
        let token = token.rsplit(' ').next().unwrap().to_string();
        assert!(log[0].starts_with("horizon "), "{log:?}");

        // The development token works as a blackhole client would use it.
        let reply = runtime().block_on(one_command(
            &format!("ws://{addr}/?token={token}"),
            r#"{"action":"subscribe","request_id":"r1","data":{"binding":"call.CHANNEL_CREATE.*"}}"#,
        ));
        assert_eq!(
            reply,
            r#"{"action":"reply","request_id":"r1","status":"success","data":{"subscribed":["call.CHANNEL_CREATE.*"]}}"#
        );

        // The VoIPBin path wants a token before the upgrade, with VoIPBin's error body.
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(
                b"GET /v1.0/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains(r#""status":"UNAUTHENTICATED""#), "{answer}");

        // SAFETY: kill on the child's own pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status =
            wait_exit(&mut child, Duration::from_secs(10)).expect("exits after the signal");
        assert!(status.success(), "{name}: exit {status:?}");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            rest.iter()
                .any(|l| l.starts_with(&format!("{name}: shutting down"))),
            "{rest:?}"
        );
        assert_eq!(rest.last().map(String::as_str), Some("stopped"));
        assert!(TcpStream::connect(&addr).is_err(), "the listener is gone");
    }
}

#[test]
fn horizon_token_mints_what_serve_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args([
            "token",
            "--account-id",
            "acct-minted",
            "--ttl",
            "10m",
            "--permissions",
            "admin,agent",
            "--publish",
        ])
        .env("HORIZON_JWT_HS256_SECRET", "shared-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("expires "));

    let (mut child, mut lines) = spawn(&[
        "serve",
        "--ws-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--jwt-hs256-secret",
        "shared-secret",
    ]);
    let mut log = Vec::new();
    let listening = wait_for_line(&mut lines, "websocket: listening on ws://", &mut log);
    let addr = listening.split_whitespace().next().unwrap().to_string();
    let reply = runtime().block_on(one_command(
        &format!("ws://{addr}/"),
        &format!(r#"{{"action":"subscribe","request_id":"r","auth_token":"{token}","data":{{"binding":"object.*.user"}}}}"#),
    ));
    assert!(reply.contains(r#""status":"success""#), "{reply}");
    // Another secret's token is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_horizon"))
        .args([
            "token",
            "--account-id",
            "acct-minted",
            "--jwt-hs256-secret",
            "other-secret",
        ])
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let reply = runtime().block_on(one_command(
        &format!("ws://{addr}/"),
        &format!(r#"{{"action":"subscribe","request_id":"r","auth_token":"{forged}","data":{{"binding":"object.*.user"}}}}"#),
    ));
    assert!(reply.contains("failed to authenticate token"), "{reply}");
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));

    let (code, err) = run_to_exit(&["token"]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim(), "horizon token: --account-id is required");
    let (code, err) = run_to_exit(&["token", "--account-id", "a1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no HS256 secret is configured"), "{err}");
    let (code, err) = run_to_exit(&[
        "token",
        "--account-id",
        "a1",
        "--jwt-hs256-secret",
        "s",
        "--ttl",
        "soon",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid --ttl `soon`"), "{err}");
}

#[test]
fn sighup_reloads_the_auth_file_without_dropping_sockets() {
    let dir = std::env::temp_dir().join(format!("horizon-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.toml");
    let one = "[[accounts]]\nid = \"acct-one\"\n[[tokens]]\ntoken = \"tok-one\"\naccount_id = \"acct-one\"\n";
    std::fs::write(&file, one).unwrap();
    let (mut child, mut lines) = spawn(&[
        "serve",
        "--ws-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--auth-file",
        file.to_str().unwrap(),
    ]);
    let mut log = Vec::new();
    let listening = wait_for_line(&mut lines, "websocket: listening on ws://", &mut log);
    let addr = listening.split_whitespace().next().unwrap().to_string();
    let url = format!("ws://{addr}/");
    let subscribe = |tok: &str| {
        format!(
            r#"{{"action":"subscribe","request_id":"r","auth_token":"{tok}","data":{{"binding":"call.*.*"}}}}"#
        )
    };
    runtime().block_on(async {
        use futures_util::{SinkExt, StreamExt};
        let (mut kept, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        kept.send(tokio_tungstenite::tungstenite::Message::text(subscribe(
            "tok-one",
        )))
        .await
        .unwrap();
        let first = kept.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(first.contains("success"), "{first}");
        assert!(one_command(&url, &subscribe("tok-two"))
            .await
            .contains("failed to authenticate token"));

        std::fs::write(
            &file,
            format!("{one}[[tokens]]\ntoken = \"tok-two\"\naccount_id = \"acct-one\"\n"),
        )
        .unwrap();
        // SAFETY: kill on the child's own pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        wait_for_line(&mut lines, "SIGHUP: auth file reloaded", &mut log);
        assert!(one_command(&url, &subscribe("tok-two"))
            .await
            .contains("success"));

        // A broken file is refused; the previous contents stay in force.
        std::fs::write(&file, "[[tokens]]\nbroken").unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        let mut err = String::new();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        stderr.read_line(&mut err).unwrap();
        assert!(err.starts_with("SIGHUP: auth file not reloaded"), "{err}");
        assert!(one_command(&url, &subscribe("tok-two"))
            .await
            .contains("success"));

        // The socket from before every reload is still served.
        kept.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"action":"ping","request_id":"p"}"#,
        ))
        .await
        .unwrap();
        let pong = kept.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(pong.contains("pong"), "{pong}");
    });
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `horizon` with `args` to completion: its exit code and standard error.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let (mut child, _) = spawn(args);
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits");
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).unwrap();
    }
    (status.code(), err)
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let (code, err) = run_to_exit(&["serve", "--shards", "none"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim(),
        "horizon serve: invalid value `none` for shards: expected a positive number"
    );

    // A port held by a listener without SO_REUSEPORT cannot be shared: a clear error, exit 1.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (code, err) = run_to_exit(&["serve", "--ws-listen", &addr, "--api-listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("horizon serve: cannot start the WebSocket shards:"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_does_not_take_the_gateway_down() {
    let (mut child, lines) = spawn(&[
        "serve",
        "--ws-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    drop(lines); // nobody reads the log any more
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running without a log reader"
    );
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

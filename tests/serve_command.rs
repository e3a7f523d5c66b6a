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
        if let Some((_, rest)) = line.split_once(prefix) {
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
        let mut args = common::SERVE_EPHEMERAL.to_vec();
        args.extend(["--shards", "2"]);
        let (mut child, mut lines) = spawn(&args);
        let mut log = Vec::new();
        let source = wait_for_line(&mut lines, "event source: ", &mut log);
        assert!(source.starts_with("embedded bus"), "{source}");
        let listening = wait_for_line(&mut lines, "websocket: listening on ws://", &mut log);
        assert!(
            listening.contains("2 shard(s)") && listening.contains("driver "),
            "{listening}"
        );
        let addr = listening.split_whitespace().next().unwrap().to_string();
        wait_for_line(
            &mut lines,
            "development token (account dev-account",
            &mut log,
        );
        let token = common::dev_token(log.last().unwrap()).expect("the token file");
        assert!(
            log[0].contains("horizon ") && log[0].contains(" starting"),
            "{log:?}"
        );

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
            rest.iter().any(|l| l.contains(&format!(" INFO {}", ""))
                && l.contains(&format!("{name}: shutting down"))),
            "{rest:?}"
        );
        assert!(
            rest.last().is_some_and(|l| l.ends_with(" stopped")),
            "{rest:?}"
        );
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
            "--commands",
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
        // Its own API port: the default one is shared with the other tests that run a node.
        "--api-listen",
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
    // `--commands` gives the command right: the call is unknown, not the right missing.
    let reply = runtime().block_on(one_command(
        &format!("ws://{addr}/"),
        &format!(r#"{{"action":"channel","request_id":"r","auth_token":"{token}","data":{{"call_id":"c1","action":"hangup"}}}}"#),
    ));
    assert!(reply.contains("bad identifier"), "{reply}");
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
    assert!(err.contains("--account-id"), "{err}");
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
        "--api-listen",
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
        let err = wait_for_line(&mut lines, "SIGHUP: auth file not reloaded", &mut log);
        assert!(log.last().unwrap().contains(" WARN "), "{log:?}");
        assert!(
            err.contains("TOML parse error") && err.contains("\\n"),
            "one line: {err}"
        );
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

/// `horizon` run to completion with `env` added: exit code, stdout, stderr.
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = common::horizon_command();
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("run horizon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_option_with_its_default_and_its_variable() {
    let (code, out, _) = run_with_env(&["--help"], &[]);
    assert_eq!(code, Some(0));
    for command in ["serve", "check-config", "token"] {
        assert!(out.contains(command), "{out}");
    }
    for command in ["serve", "check-config"] {
        let (code, out, err) = run_with_env(&[command, "--help"], &[]);
        assert_eq!(code, Some(0), "{err}");
        // clap wraps nothing here (no terminal): one option, one help line.
        for key in horizon::config::OPTIONS {
            let flag = format!("--{} <VALUE>", key.name.replace('_', "-"));
            let at = out
                .find(&flag)
                .unwrap_or_else(|| panic!("{flag} missing:\n{out}"));
            let help = out[at..].lines().nth(1).unwrap_or_default();
            assert!(help.contains("[default: "), "{flag}: {help}");
            let var = format!("[env: HORIZON_{}]", key.name.to_ascii_uppercase());
            assert!(help.contains(&var), "{flag}: {help}");
        }
        assert!(out.contains("[env: HORIZON_CONFIG]"), "{out}");
    }
    let (code, out, _) = run_with_env(&["token", "--help"], &[]);
    assert_eq!(code, Some(0));
    for flag in [
        "--account-id",
        "--ttl",
        "--publish",
        "--jwt-hs256-secret",
        "HORIZON_JWT_HS256_SECRET",
    ] {
        assert!(out.contains(flag), "{flag}: {out}");
    }
    let (code, _, err) = run_with_env(&["serve", "--shardz", "2"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--shardz") && err.contains("--shards"),
        "{err}"
    );
}

#[test]
fn check_config_names_what_is_wrong_and_reaches_the_services() {
    let dir = std::env::temp_dir().join(format!("horizon-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("horizon.toml");
    let auth = dir.join("auth.toml");
    let db = dir.join("hooks.db");
    let db = db.to_str().unwrap();
    std::fs::write(
        &auth,
        "[[accounts]]\nid = \"acct-a\"\n[[tokens]]\ntoken = \"t\"\naccount_id = \"acct-a\"\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "auth_file = {:?}\njwt_hs256_secret = \"very-secret\"\nwebhooks_db = {db:?}\n",
            auth.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let amqp = common::amqp_url();

    // All fine: the broker and the database answer; the effective configuration says where
    // each value came from and masks secrets.
    let (code, out, err) = run_with_env(
        &[
            "check-config",
            "--config",
            config,
            "--shards",
            "3",
            "--webhooks-enabled",
            "true",
        ],
        &[("HORIZON_AMQP_URL", &amqp)],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("auth: ok, auth file") && out.contains("1 accounts, 1 tokens"),
        "{out}"
    );
    assert!(out.contains("connected and authenticated"), "{out}");
    assert!(out.contains("serve will create it"), "{out}");
    assert!(
        !std::path::Path::new(db).exists(),
        "check-config creates nothing"
    );
    assert!(out.contains("shards = 3  # flag"), "{out}");
    assert!(
        out.contains("amqp_url = ") && out.contains("# environment"),
        "{out}"
    );
    assert!(
        out.contains("jwt_hs256_secret = \"********\"  # file"),
        "{out}"
    );
    assert!(!out.contains("very-secret"), "{out}");
    assert!(
        out.contains("ws_listen = \"127.0.0.1:5555\"  # default"),
        "{out}"
    );

    // PostgreSQL too.
    let postgres = common::webhooks::postgres_url("test");
    let (code, out, err) = run_with_env(
        &[
            "check-config",
            "--config",
            config,
            "--webhooks-enabled",
            "on",
            "--webhooks-db",
            &postgres,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("webhooks_db postgres://") && out.contains("reachable"),
        "{out}"
    );

    // A broker that does not answer: exit 1, named.
    let (code, _, err) = run_with_env(
        &[
            "check-config",
            "--config",
            config,
            "--amqp-url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("amqp_url amqp://guest:***@127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
    // ...unless asked not to reach anything.
    let (code, _, err) = run_with_env(
        &[
            "check-config",
            "--offline",
            "--config",
            config,
            "--amqp-url",
            "amqp://127.0.0.1:1",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");

    // A bad auth entry, a bad key in the file, a bad variable: exit 2, each named.
    std::fs::write(
        &auth,
        "[[tokens]]\ntoken = \"t\"\naccount_id = \"no spaces allowed\"\n",
    )
    .unwrap();
    let (code, _, err) = run_with_env(&["check-config", "--offline", "--config", config], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains(auth.to_str().unwrap()), "{err}");
    std::fs::write(dir.join("bad.toml"), "shardz = 2\n").unwrap();
    let bad = dir.join("bad.toml");
    let (code, _, err) = run_with_env(&["check-config", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown key `shardz`"), "{err}");
    let (code, _, err) = run_with_env(
        &["check-config", "--offline"],
        &[("HORIZON_LOG_FORMAT", "xml")],
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("log_format"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `serve` with `args` (and `env` added), lets it run until its API answers, stops it:
/// its whole stdout.
fn run_briefly(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api_addr = api.local_addr().unwrap().to_string();
    drop(api);
    let mut all = vec![
        "serve",
        "--ws-listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--api-listen",
        &api_addr,
    ];
    all.extend_from_slice(args);
    let mut command = common::horizon_command();
    command
        .args(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run horizon");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&api_addr).is_err() {
        assert!(Instant::now() < deadline, "the API never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    lines.map_while(Result::ok).collect()
}

#[test]
fn logs_are_json_or_text_with_time_level_and_node_and_never_a_token() {
    let lines = run_briefly(&["--log-format", "json", "--node", "node-json"], &[]);
    assert!(lines.len() >= 5, "{lines:?}");
    let mut token_file = None;
    for line in &lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(record["node"], "node-json", "{line}");
        assert!(
            record["ts"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() >= 20),
            "{line}"
        );
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&record["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(
            record["target"].as_str().unwrap().starts_with("horizon"),
            "{line}"
        );
        let msg = record["msg"].as_str().unwrap();
        if let Some((_, path)) = msg.split_once(" written to ") {
            token_file = Some(path.to_string());
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("api: listening on http://")),
        "{lines:?}"
    );
    // The development token is in a file only its owner may read, and in no line; the file
    // is removed when the node stops.
    let token_file = token_file.expect("the development token file is named");
    assert!(
        !std::path::Path::new(&token_file).exists(),
        "removed on stop"
    );

    // Text: `<time> <LEVEL> <node> <target>: <message>`.
    let lines = run_briefly(&["--node", "node-text"], &[]);
    let first = &lines[0];
    let mut words = first.split_whitespace();
    assert!(words.next().unwrap().ends_with('Z'), "{first}");
    assert_eq!(words.next(), Some("INFO"), "{first}");
    assert_eq!(words.next(), Some("node-text"), "{first}");

    // A level filter: warn shows no INFO line; directives reach one module.
    let lines = run_briefly(&["--log-level", "warn"], &[]);
    assert!(lines.iter().all(|l| !l.contains(" INFO ")), "{lines:?}");
    // `RUST_LOG` is the filter when `log_level` is not set.
    let lines = run_briefly(&[], &[("RUST_LOG", "warn,horizon=info,horizon::api=off")]);
    assert!(
        lines.iter().any(|l| l.contains("api: listening")),
        "{lines:?}"
    );
}

#[test]
fn closed_stdout_and_stderr_do_not_take_the_gateway_down() {
    let mut args = common::SERVE_EPHEMERAL.to_vec();
    args.extend(["--log-format", "json"]);
    let (mut child, lines) = spawn(&args);
    drop(lines);
    drop(child.stderr.take());
    std::thread::sleep(Duration::from_millis(300));
    // SIGHUP logs a line (nothing to reload): written into a broken pipe.
    // SAFETY: kill on the child's own pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

//! `horizon serve` as a user runs it: the real binary, its log, its listener, its signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_horizon"))
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

#[test]
fn serve_logs_its_listener_and_driver_and_stops_cleanly_on_sigterm_and_sigint() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let (mut child, mut lines) =
            spawn(&["serve", "--ws-listen", "127.0.0.1:0", "--shards", "2"]);
        let mut log = Vec::new();
        let addr = loop {
            let line = lines.next().expect("log line").unwrap();
            log.push(line.clone());
            if let Some(rest) = line.strip_prefix("websocket: listening on ws://") {
                assert!(
                    line.contains("2 shard(s)") && line.contains("driver "),
                    "{line}"
                );
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        assert!(log[0].starts_with("horizon "), "{log:?}");

        // Until a dialect exists, an upgrade is refused with a clear 503, not accepted and ignored.
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable"),
            "{answer}"
        );
        assert!(
            answer.contains("no WebSocket dialect is enabled"),
            "{answer}"
        );

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
    let (code, err) = run_to_exit(&["serve", "--ws-listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("horizon serve: cannot start the WebSocket shards:"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_does_not_take_the_gateway_down() {
    let (mut child, lines) = spawn(&["serve", "--ws-listen", "127.0.0.1:0"]);
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

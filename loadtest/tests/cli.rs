//! `horizon-loadtest --help` explains every option: its default (or that it is required) and its
//! environment variable; a bad value is refused with the option named.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_horizon-loadtest"))
        .args(args)
        .output()
        .expect("run horizon-loadtest");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_option_shows_its_default_and_its_variable() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for command in ["fanout", "connect", "churn", "webhooks", "auth-file"] {
        assert!(out.contains(command), "{out}");
    }
    for command in ["fanout", "connect", "churn", "webhooks"] {
        let (code, out, err) = run(&[command, "--help"]);
        assert_eq!(code, Some(0), "{err}");
        let options: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("--") && l.contains("<VALUE>"))
            .collect();
        assert!(options.len() >= 10, "{command}: {out}");
        for line in options {
            assert!(
                line.contains("[env: HORIZON_LOADTEST_"),
                "{command}: {line}"
            );
            assert!(
                line.contains("[default: ") || line.contains("(required)"),
                "{command}: {line}"
            );
        }
    }
}

#[test]
fn bad_values_are_refused_with_the_option_named() {
    let (code, _, err) = run(&["fanout", "--connections", "many"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--connections"), "{err}");
    let (code, _, err) = run(&["fanout", "--url", "ws://10.0.0.1:5555/"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("loopback"), "{err}");
    let (code, _, err) = run(&["fanout", "--conections", "1"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--connections"),
        "suggests the right name: {err}"
    );
}

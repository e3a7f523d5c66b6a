//! wss handshakes per gateway CPU-second: full TLS 1.3 handshakes (ECDSA P-256 certificate, no
//! resumption) each followed by the WebSocket upgrade, on a one-shard gateway (one core), then the
//! same with session resumption (the client's tickets).
//!
//! Run: `cargo bench --bench tls_handshakes`. Knobs: `HORIZON_TLS_HANDSHAKES` (5000 per run),
//! `HORIZON_TLS_CLIENTS` (4 client threads), `HORIZON_IO_BACKEND`.
//!
//! The gateway runs in this process; the clients in a second process (this binary re-executed),
//! so that their CPU is not counted. Each client thread connects, completes the TLS handshake and
//! the upgrade, reads the `101`, and closes, in a loop. CPU is the gateway process's user + system
//! time over the run.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use horizon::config::ServeConfig;
use horizon::shard::Gateway;

#[path = "support/idle.rs"]
mod idle;
#[path = "support/tls.rs"]
mod tls;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CLIENT_ROLE: &str = "HORIZON_TLS_HANDSHAKE_CLIENT_OF";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The client process: `total` handshakes and upgrades over `threads` threads; prints "done".
fn client(addr: SocketAddr, ca: &str, total: usize, threads: usize, resume: bool) {
    let config = tls::client_config(std::path::Path::new(ca), resume);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || {
                for i in (t..total).step_by(threads) {
                    let mut stream = tls::connect(addr, &config)
                        .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
                    idle::upgrade(&mut stream, i);
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    println!("done");
}

fn main() {
    let total = env("HORIZON_TLS_HANDSHAKES", 5000);
    let threads = env("HORIZON_TLS_CLIENTS", 4);
    if let Ok(spec) = std::env::var(CLIENT_ROLE) {
        let parts: Vec<&str> = spec.split(',').collect();
        client(
            parts[0].parse().unwrap(),
            parts[1],
            total,
            threads,
            parts[2] == "resume",
        );
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let certificates = tls::certificates();
    let config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        wss_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert_file: Some(certificates.cert.clone()),
        tls_key_file: Some(certificates.key.clone()),
        shards: 1,
        io_backend: std::env::var("HORIZON_IO_BACKEND")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        ..ServeConfig::default()
    };
    let gateway = Gateway::start(config, Arc::new(idle::IdleFactory)).expect("gateway");
    let wss = gateway.wss_addr().expect("a wss listener");
    for mode in ["full", "resume"] {
        let before = (cpu_seconds(), Instant::now());
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(
                CLIENT_ROLE,
                format!("{wss},{},{mode}", certificates.ca.display()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("client process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "done", "the client process failed");
        let _ = child.wait();
        let (cpu, wall) = (cpu_seconds() - before.0, before.1.elapsed());
        println!(
            "tls_handshakes/{total} {mode} driver={} (1 shard, {threads} client threads): \
             {:.0} handshakes+upgrades/s wall, gateway CPU {cpu:.2} s -> {:.0} per CPU-second",
            gateway.driver(),
            total as f64 / wall.as_secs_f64(),
            total as f64 / cpu,
        );
        // Let the closed sockets end before the next run.
        std::thread::sleep(Duration::from_millis(500));
    }
    gateway.shutdown();
    gateway.join();
}

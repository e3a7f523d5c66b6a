//! Memory per idle WebSocket connection, measured on the real shard runtime.
//!
//! Run: `cargo bench --bench idle_connections` (15,000 connections; `HORIZON_IDLE_CONNECTIONS=N`
//! to change it, `HORIZON_IO_BACKEND=io_uring` for the io_uring backend, `HORIZON_IDLE_TLS=1` for
//! wss connections: TLS 1.3 on an ECDSA P-256 certificate, each socket's keys and record state
//! then counted too).
//!
//! The gateway runs in this process; the clients run in a second process (this same binary,
//! re-executed) so that their memory is not counted. Once every client has completed its handshake
//! and gone quiet, the gateway process reports, per connection: the growth of live heap bytes (a
//! counting wrapper around mimalloc) and the growth of its resident set (`VmRSS`), which includes
//! allocator and runtime overhead but not the kernel's socket buffers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use horizon::config::ServeConfig;
use horizon::shard::Gateway;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
/// Only the backend choice is used here (no events are sent).
#[allow(dead_code)]
#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/idle.rs"]
mod idle;
#[path = "support/tls.rs"]
mod tls;

use counting_alloc::live_bytes;

const CLIENT_ROLE: &str = "HORIZON_IDLE_CLIENT_OF";

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The client process: opens `count` WebSocket connections (over TLS if `ca` is given), reports
/// "ready", then holds them until its standard input closes.
fn client(addr: SocketAddr, count: usize, ca: Option<&str>) {
    let mut sockets: Vec<Box<dyn ReadWrite>> = Vec::with_capacity(count);
    let config = ca.map(|ca| tls::client_config(std::path::Path::new(ca), false));
    for i in 0..count {
        let mut stream: Box<dyn ReadWrite> = match &config {
            None => {
                Box::new(TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
            }
            Some(config) => Box::new(
                tls::connect(addr, config).unwrap_or_else(|e| panic!("connection {i}: {e}")),
            ),
        };
        idle::upgrade(&mut *stream, i);
        sockets.push(stream);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(sockets);
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ROLE) {
        let mut parts = spec.split(',');
        let (addr, count) = (
            parts.next().unwrap(),
            parts.next().expect("addr,count[,ca]"),
        );
        client(addr.parse().unwrap(), count.parse().unwrap(), parts.next());
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either way.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let count: usize = std::env::var("HORIZON_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    let certificates = std::env::var("HORIZON_IDLE_TLS")
        .is_ok_and(|v| v == "1")
        .then(tls::certificates);
    let config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        wss_listen: certificates
            .as_ref()
            .map(|_| "127.0.0.1:0".parse().unwrap()),
        tls_cert_file: certificates.as_ref().map(|c| c.cert.clone()),
        tls_key_file: certificates.as_ref().map(|c| c.key.clone()),
        // Long enough that no ping is in flight during the measurement.
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        io_backend: gateway::io_backend(),
        ..ServeConfig::default()
    };
    let gateway = Gateway::start(config, Arc::new(idle::IdleFactory)).expect("gateway");
    std::thread::sleep(Duration::from_millis(200));
    let (heap_before, rss_before) = (live_bytes(), rss_bytes());

    let started = Instant::now();
    let spec = match (&certificates, gateway.wss_addr()) {
        (Some(certificates), Some(wss)) => format!("{wss},{count},{}", certificates.ca.display()),
        _ => format!("{},{count}", gateway.local_addr()),
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ROLE, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the client process failed");
    let connect_time = started.elapsed();
    // Let the last sockets' tasks settle into their readiness wait.
    std::thread::sleep(Duration::from_secs(1));
    let (heap_after, rss_after) = (live_bytes(), rss_bytes());

    let per = |before: usize, after: usize| after.saturating_sub(before) as f64 / count as f64;
    println!(
        "idle_connections/{count}{} driver={} arena_eager_commit={}: heap {:.0} bytes per connection, RSS {:.0} bytes per \
         connection ({:.1} MiB total RSS growth); {count} handshakes in {:.2} s",
        if certificates.is_some() { " wss" } else { "" },
        gateway.driver(),
        horizon::memory::arena_eager_commit(),
        per(heap_before, heap_after),
        per(rss_before, rss_after),
        rss_after.saturating_sub(rss_before) as f64 / (1 << 20) as f64,
        connect_time.as_secs_f64(),
    );
    drop(child.stdin.take());
    let _ = child.wait();
    gateway.shutdown();
    gateway.join();
}

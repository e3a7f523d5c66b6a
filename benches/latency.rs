//! Latency on one backend: what a CPU-per-delivery figure cannot see (a shard that sleeps through
//! its work costs no CPU at all).
//!
//! Run: `cargo bench --bench latency` (the default backend) and
//! `HORIZON_IO_BACKEND=io_uring cargo bench --bench latency` / `...=epoll`. Knobs:
//! `HORIZON_LATENCY_SAMPLES` (300), `HORIZON_LATENCY_SUBSCRIBERS` (100),
//! `HORIZON_LATENCY_RATES` (deliveries per second, `10000,100000`), `HORIZON_LATENCY_SECS` (5).
//!
//! The gateway (2 shards) runs in this process; the clients are plain blocking or epoll-driven
//! sockets on a thread of their own, on loopback. Rows:
//! - `handshake`: connect, send the upgrade request, read the `101`; `HORIZON_LATENCY_SAMPLES`
//!   sequential connections, each timed alone.
//! - `command`: a text frame sent on an open socket to its reply read back (the session answers
//!   every message), sequentially.
//! - `publish->receive`: `HORIZON_LATENCY_SUBSCRIBERS` sockets subscribed to every event, events
//!   published at a steady pace (rate / subscribers per second) for `HORIZON_LATENCY_SECS`; each
//!   frame carries its publish time, and every delivery's latency is counted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use horizon::binding::Separator;
use horizon::config::ServeConfig;
use horizon::fanout::Event;
use horizon::shard::{Gateway, HttpRefusal, Reply, Session, SessionFactory, Subscriptions};
use horizon::ws::handshake::Request;

#[path = "support/gateway.rs"]
mod gateway;
/// Only the client's upgrade is used here; the sessions are this bench's own.
#[allow(dead_code)]
#[path = "support/idle.rs"]
mod idle;

use gateway::{env, Raw};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The instant publish times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `subscribe` subscribes to every event; anything else is answered `pong` (a command).
struct Echo;

impl Session for Echo {
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        if text == "subscribe" {
            return match subscriptions.subscribe(Separator::Dot, "lat.#", "lat.#", Rc::new(Raw)) {
                Ok(_) => Reply::Text("ok".into()),
                Err(e) => Reply::Text(e.to_string()),
            };
        }
        Reply::Text("pong".into())
    }
}

struct Factory;

impl SessionFactory for Factory {
    fn open(&self, _request: &Request, _peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        Ok(Box::new(Echo))
    }
}

/// A masked client text frame (a zero mask: the payload goes as it is).
fn client_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Reads one short server text frame (header and payload) from a blocking stream.
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).unwrap();
    assert!(header[1] < 126, "a short frame");
    let mut payload = vec![0u8; header[1] as usize];
    stream.read_exact(&mut payload).unwrap();
    payload
}

fn connect(addr: SocketAddr, i: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
    stream.set_nodelay(true).unwrap();
    idle::upgrade(&mut stream, i);
    stream
}

/// p50 / p99 / p99.9 / max of `samples`, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_secs_f64() * 1e3
    };
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0),
        samples.len()
    )
}

fn handshakes(addr: SocketAddr, samples: usize) -> Vec<Duration> {
    (0..samples)
        .map(|i| {
            let started = Instant::now();
            let stream = connect(addr, i);
            let took = started.elapsed();
            drop(stream);
            took
        })
        .collect()
}

fn commands(addr: SocketAddr, samples: usize) -> Vec<Duration> {
    let mut stream = connect(addr, 0);
    let ping = client_frame("ping");
    (0..samples)
        .map(|_| {
            let started = Instant::now();
            stream.write_all(&ping).unwrap();
            assert_eq!(read_frame(&mut stream), b"pong");
            started.elapsed()
        })
        .collect()
}

/// Per-socket reassembly of the server's frames (short text frames: 2-byte headers).
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    /// Feeds `bytes`; calls `frame` with each complete payload.
    fn feed(&mut self, bytes: &[u8], mut frame: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while self.buf.len() >= at + 2 {
            let len = (self.buf[at + 1] & 0x7F) as usize;
            assert!(len < 126, "a short frame");
            if self.buf.len() < at + 2 + len {
                break;
            }
            frame(&self.buf[at + 2..at + 2 + len]);
            at += 2 + len;
        }
        self.buf.drain(..at);
    }
}

/// Publishes `rate / subscribers` events per second for `secs` to `subscribers` sockets and
/// returns every delivery's latency.
fn publish_to_receive(
    gateway: &mut Gateway,
    addr: SocketAddr,
    subscribers: usize,
    rate: usize,
    secs: u64,
) -> Vec<Duration> {
    let mut sockets: Vec<TcpStream> = (0..subscribers)
        .map(|i| {
            let mut stream = connect(addr, i);
            stream.write_all(&client_frame("subscribe")).unwrap();
            assert_eq!(read_frame(&mut stream), b"ok");
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    let events_per_sec = (rate / subscribers).max(1);
    let total = events_per_sec * secs as usize;
    let expected = total * subscribers;
    let publisher = gateway
        .take_publisher()
        .expect("one latency run per gateway");
    let publishing = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let every = Duration::from_secs_f64(1.0 / events_per_sec as f64);
            let started = Instant::now();
            for i in 0..total {
                let due = started + every * i as u32;
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep(due - now).await;
                }
                let stamp = epoch().elapsed().as_nanos().to_string();
                let event = Event::new(format!("lat.e{i}"), Separator::Dot, stamp.into());
                publisher.publish(Arc::new(event)).await.unwrap();
            }
        });
    });
    // SAFETY: plain epoll calls on descriptors owned by `sockets`, which outlive the loop.
    let epoll = unsafe { libc::epoll_create1(0) };
    for (i, s) in sockets.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let mut frames: Vec<Frames> = (0..subscribers).map(|_| Frames::default()).collect();
    let mut latencies = Vec::with_capacity(expected);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    while latencies.len() < expected && Instant::now() < deadline {
        // SAFETY: `ready` has room for 256 events.
        let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 256, 1000) };
        for ev in &ready[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            loop {
                match sockets[i].read(&mut buf) {
                    Ok(0) => panic!("subscriber {i} closed by the gateway"),
                    Ok(got) => {
                        let now = epoch().elapsed().as_nanos() as u64;
                        frames[i].feed(&buf[..got], |payload| {
                            let sent: u64 = std::str::from_utf8(payload).unwrap().parse().unwrap();
                            latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("subscriber {i}: {e}"),
                }
            }
        }
    }
    publishing.join().unwrap();
    assert_eq!(latencies.len(), expected, "every delivery arrived");
    sockets.clear();
    latencies
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    epoch();
    let samples = env("HORIZON_LATENCY_SAMPLES", 300);
    let subscribers = env("HORIZON_LATENCY_SUBSCRIBERS", 100);
    let secs = env("HORIZON_LATENCY_SECS", 5) as u64;
    let rates: Vec<usize> = std::env::var("HORIZON_LATENCY_RATES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let config = |ws: &str| ServeConfig {
        ws_listen: ws.parse().unwrap(),
        shards: 2,
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        io_backend: gateway::io_backend(),
        ..ServeConfig::default()
    };
    let gateway = Gateway::start(config("127.0.0.1:0"), Arc::new(Factory)).expect("gateway");
    let driver = gateway.driver();
    let addr = gateway.local_addr();
    // A few connections first, so that neither row pays for the first allocations.
    drop(handshakes(addr, 10));
    println!(
        "latency/handshake driver={driver}: {}",
        summary(&mut handshakes(addr, samples))
    );
    println!(
        "latency/command driver={driver}: {}",
        summary(&mut commands(addr, samples))
    );
    gateway.shutdown();
    gateway.join();
    for rate in rates {
        // A gateway per rate: each run takes its publisher.
        let mut gateway =
            Gateway::start(config("127.0.0.1:0"), Arc::new(Factory)).expect("gateway");
        let addr = gateway.local_addr();
        let mut latencies = publish_to_receive(&mut gateway, addr, subscribers, rate, secs);
        println!(
            "latency/publish->receive driver={driver} {rate} deliveries/s ({subscribers} \
             subscribers): {}",
            summary(&mut latencies)
        );
        gateway.shutdown();
        gateway.join();
    }
}

//! Fan-out throughput: events pushed through the shard rings to 10,000 subscribed WebSocket
//! connections on loopback, counted as deliveries per gateway CPU-second.
//!
//! Run: `cargo bench --bench fanout` (io_uring) and
//! `HORIZON_IO_BACKEND=epoll cargo bench --bench fanout` (epoll). Knobs:
//! `HORIZON_FANOUT_CONNECTIONS` (10000), `HORIZON_FANOUT_EVENTS` (200), `HORIZON_FANOUT_BYTES`
//! (1024, the event frame size), `HORIZON_FANOUT_SYSCALLS=1` (count the gateway process's system
//! calls over the run with `perf stat -e raw_syscalls:sys_enter`, and report them per 1,000
//! deliveries; needs `perf` and the permission to trace).
//!
//! The gateway (2 shards, the `close` slow-consumer policy so that a loss would show as a failure)
//! runs in this process and publishes as fast as the rings accept. The clients run in a second
//! process (this binary re-executed) with one epoll loop that reads every frame and counts it; the
//! run ends when every connection has received every event. CPU time is the gateway process's
//! user + system time over the run (publisher thread included); wall time is from the first publish
//! to the last frame received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use horizon::binding::Separator;
use horizon::config::ServeConfig;
use horizon::fanout::Event;
use horizon::shard::{
    FrameEncoder, Gateway, HttpRefusal, Reply, Session, SessionFactory, SlowConsumerPolicy,
    Subscriptions,
};
use horizon::ws::handshake::Request;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The event body is the frame payload as it is: the encode is one copy into a frame.
struct Raw;

impl FrameEncoder for Raw {
    fn encode(&self, event: &Event) -> bytes::Bytes {
        horizon::ws::frame::encode::text(&event.body).into()
    }
}

struct Subscriber;

impl Session for Subscriber {
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        match subscriptions.subscribe(Separator::Dot, text, text, Rc::new(Raw)) {
            Ok(_) => Reply::Text("ok".into()),
            Err(e) => Reply::Text(e.to_string()),
        }
    }
}

struct Factory;

impl SessionFactory for Factory {
    fn open(&self, _request: &Request, _peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        Ok(Box::new(Subscriber))
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

const CLIENT_ROLE: &str = "HORIZON_FANOUT_CLIENT_OF";

/// Per-connection frame counting state in the client.
#[derive(Default, Clone, Copy)]
struct Counter {
    header: [u8; 10],
    header_len: usize,
    payload_left: usize,
    frames: usize,
}

impl Counter {
    /// Consumes `bytes`, counting complete frames.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let take = self.payload_left.min(bytes.len());
                self.payload_left -= take;
                bytes = &bytes[take..];
                if self.payload_left == 0 {
                    self.frames += 1;
                }
                continue;
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            let needed = match self.header.get(1).map(|b| b & 0x7F) {
                _ if self.header_len < 2 => continue,
                Some(126) => 4,
                Some(127) => 10,
                _ => 2,
            };
            if self.header_len < needed {
                continue;
            }
            let len = match needed {
                4 => u16::from_be_bytes([self.header[2], self.header[3]]) as usize,
                10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&self.header[2..10]);
                    u64::from_be_bytes(be) as usize
                }
                _ => (self.header[1] & 0x7F) as usize,
            };
            self.header_len = 0;
            if len == 0 {
                self.frames += 1;
            } else {
                self.payload_left = len;
            }
        }
    }
}

fn client(addr: SocketAddr, connections: usize, events: usize) {
    let request = "GET /bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // A masked "bench.#" subscribe (mask of zeros: the payload is sent as is).
    let mut subscribe = vec![0x81, 0x80 | 7, 0, 0, 0, 0];
    subscribe.extend_from_slice(b"bench.#");
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            answer.push(byte[0]);
        }
        stream.write_all(&subscribe).unwrap();
        let mut reply = [0u8; 4]; // 0x81 0x02 "ok"
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[2..], b"ok");
        stream.set_nonblocking(true).unwrap();
        sockets.push(stream);
    }
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
    println!("ready");
    std::io::stdout().flush().unwrap();

    let mut counters = vec![Counter::default(); connections];
    let mut complete = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let deadline = Instant::now() + Duration::from_secs(300);
    while complete < connections && Instant::now() < deadline {
        // SAFETY: `ready` has room for 1024 events.
        let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 1024, 1000) };
        for ev in &ready[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            loop {
                match (&sockets[i]).read(&mut buf) {
                    Ok(0) => panic!("connection {i} closed by the gateway (slow consumer?)"),
                    Ok(got) => {
                        let before = counters[i].frames;
                        counters[i].feed(&buf[..got]);
                        if before < events && counters[i].frames >= events {
                            complete += 1;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("connection {i}: {e}"),
                }
            }
        }
    }
    let frames: usize = counters.iter().map(|c| c.frames).sum();
    println!("done {frames}");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
}

fn main() {
    let connections = env("HORIZON_FANOUT_CONNECTIONS", 10_000);
    let events = env("HORIZON_FANOUT_EVENTS", 200);
    let frame_bytes = env("HORIZON_FANOUT_BYTES", 1024);
    if let Ok(addr) = std::env::var(CLIENT_ROLE) {
        client(addr.parse().unwrap(), connections, events);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        outbound_queue_bytes: 4 << 20,
        slow_consumer: SlowConsumerPolicy::Close,
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        io_backend: std::env::var("HORIZON_IO_BACKEND")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        ..ServeConfig::default()
    };
    let mut gateway = Gateway::start(config, Arc::new(Factory)).expect("gateway");
    let publisher = gateway.take_publisher().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ROLE, gateway.local_addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "ready",
        "the client process failed"
    );

    // A payload of `frame_bytes` minus the 4-byte frame header.
    let body = bytes::Bytes::from(vec![b'x'; frame_bytes.saturating_sub(4).max(1)]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let perf = std::env::var("HORIZON_FANOUT_SYSCALLS").is_ok().then(|| {
        let perf = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(std::process::id().to_string())
            .stderr(Stdio::piped())
            .spawn()
            .expect("perf (HORIZON_FANOUT_SYSCALLS)");
        // perf attaches to every thread of this process before the first publish.
        std::thread::sleep(Duration::from_millis(500));
        perf
    });
    let (cpu_before, started) = (cpu_seconds(), Instant::now());
    runtime.block_on(async {
        for i in 0..events {
            let event = Event::new(format!("bench.e{i}"), Separator::Dot, body.clone());
            publisher.publish(Arc::new(event)).await.unwrap();
        }
    });
    let done = lines.next().unwrap().unwrap();
    let wall = started.elapsed().as_secs_f64();
    let (user, system) = cpu_seconds();
    let (user, system) = (user - cpu_before.0, system - cpu_before.1);
    let cpu = user + system;
    let frames: usize = done.strip_prefix("done ").unwrap().parse().unwrap();
    let expected = connections * events;
    assert_eq!(frames, expected, "every delivery arrived");
    println!(
        "fanout/{connections}x{events} driver={} frame={frame_bytes}B: {expected} deliveries in \
         {wall:.2} s ({:.0}/s wall), gateway CPU {cpu:.2} s (user {user:.2}, system {system:.2}) \
         -> {:.0} deliveries per CPU-second",
        gateway.driver(),
        expected as f64 / wall,
        expected as f64 / cpu,
    );
    if let Some(perf) = perf {
        // SAFETY: kill with a plain signal number; perf prints its count on SIGINT.
        unsafe {
            libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
        }
        let output = perf.wait_with_output().expect("perf ends");
        let text = String::from_utf8_lossy(&output.stderr);
        let syscalls: f64 = text
            .lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))
            .and_then(|line| line.split(',').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no count from perf: {text}"));
        println!(
            "fanout/{connections}x{events} driver={}: {syscalls:.0} system calls in the gateway \
             process -> {:.1} per 1,000 deliveries",
            gateway.driver(),
            syscalls * 1000.0 / expected as f64,
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
    gateway.shutdown();
    gateway.join();
}

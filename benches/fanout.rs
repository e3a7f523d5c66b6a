//! Fan-out throughput: events pushed through the shard rings to 10,000 subscribed WebSocket
//! connections on loopback, counted as deliveries per gateway CPU-second.
//!
//! Run: `cargo bench --bench fanout` (io_uring) and
//! `HORIZON_IO_BACKEND=epoll cargo bench --bench fanout` (epoll). Knobs:
//! `HORIZON_FANOUT_CONNECTIONS` (10000), `HORIZON_FANOUT_EVENTS` (200), `HORIZON_FANOUT_BYTES`
//! (1024, the event frame size), `HORIZON_FANOUT_SYSCALLS=1` (count the gateway process's system
//! calls over the run with `perf stat -e raw_syscalls:sys_enter`, and report them per 1,000
//! deliveries; needs `perf` and the permission to trace), `HORIZON_FANOUT_TLS=1` (the clients
//! connect with wss: TLS 1.3, AES-256-GCM as rustls's clients choose, every frame encrypted per
//! socket by the gateway and decrypted by the client process), `HORIZON_FANOUT_FLOOR=epoll` or
//! `=io_uring` (no gateway: the physical floor, below).
//!
//! The floor: the same client process and sockets, served by two threads (as the gateway's two
//! shards) that only write one pre-encoded frame, `HORIZON_FANOUT_EVENTS` times, to every socket,
//! in rounds of up to 256 frames per socket per call (the shards' delivery batch), with the best
//! batching each backend allows: epoll, one `writev` per socket per round and `EPOLLOUT` when it
//! is full; io_uring, one `sendmsg` per socket per round, every socket's submitted in one enter,
//! `POLL_ADD(POLLOUT)` when full. Every gateway row reads as a share of the floor of its backend.
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
    Gateway, HttpRefusal, Reply, Session, SessionFactory, SlowConsumerPolicy, Subscriptions,
};
use horizon::ws::handshake::Request;

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/tls.rs"]
mod tls;

use gateway::{env, Raw};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Minor page faults of this process so far.
fn page_faults() -> i64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_minflt
}

/// TCP segments sent by this host so far (`Tcp: OutSegs` of `/proc/net/snmp`, what `nstat`
/// reports as `TcpOutSegs`): on loopback, the gateway's segments and the clients' ACKs.
fn tcp_out_segments() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "OutSegs")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
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

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

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

/// A client socket: plain, or TLS (its rustls connection beside the socket).
struct ClientSocket {
    tcp: TcpStream,
    tls: Option<tokio_rustls::rustls::ClientConnection>,
}

impl ClientSocket {
    /// Reads what the socket has, feeding the plaintext to `counter`; false at WouldBlock.
    fn read_into(&mut self, buf: &mut [u8], counter: &mut Counter, i: usize) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return match (&self.tcp).read(buf) {
                Ok(0) => panic!("connection {i} closed by the gateway (slow consumer?)"),
                Ok(got) => {
                    counter.feed(&buf[..got]);
                    true
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(e) => panic!("connection {i}: {e}"),
            };
        };
        match tls.read_tls(&mut self.tcp) {
            Ok(0) => panic!("connection {i} closed by the gateway (slow consumer?)"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => panic!("connection {i}: {e}"),
        }
        tls.process_new_packets()
            .unwrap_or_else(|e| panic!("connection {i}: TLS: {e}"));
        loop {
            match tls.reader().read(buf) {
                Ok(0) => panic!("connection {i}: close_notify"),
                Ok(got) => counter.feed(&buf[..got]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) => panic!("connection {i}: {e}"),
            }
        }
    }
}

fn client(addr: SocketAddr, connections: usize, events: usize, ca: Option<&str>) {
    let request = "GET /bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // A masked "bench.#" subscribe (mask of zeros: the payload is sent as is).
    let mut subscribe = vec![0x81, 0x80 | 7, 0, 0, 0, 0];
    subscribe.extend_from_slice(b"bench.#");
    let config = ca.map(|ca| tls::client_config(std::path::Path::new(ca), false));
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        fn setup(stream: &mut impl ReadWrite, request: &str, subscribe: &[u8]) {
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut byte = [0u8; 1];
            while !answer.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                answer.push(byte[0]);
            }
            stream.write_all(subscribe).unwrap();
            let mut reply = [0u8; 4]; // 0x81 0x02 "ok"
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(&reply[2..], b"ok");
        }
        let socket = match &config {
            None => {
                let mut tcp =
                    TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}"));
                setup(&mut tcp, request, &subscribe);
                ClientSocket { tcp, tls: None }
            }
            Some(config) => {
                let mut stream =
                    tls::connect(addr, config).unwrap_or_else(|e| panic!("connect {i}: {e}"));
                setup(&mut stream, request, &subscribe);
                ClientSocket {
                    tcp: stream.sock,
                    tls: Some(stream.conn),
                }
            }
        };
        socket.tcp.set_nonblocking(true).unwrap();
        sockets.push(socket);
    }
    // SAFETY: plain epoll calls on descriptors owned by `sockets`, which outlive the loop.
    let epoll = unsafe { libc::epoll_create1(0) };
    for (i, s) in sockets.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: as above.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.tcp.as_raw_fd(), &mut ev) };
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
            let before = counters[i].frames;
            while sockets[i].read_into(&mut buf, &mut counters[i], i) {}
            if before < events && counters[i].frames >= events {
                complete += 1;
            }
        }
    }
    let frames: usize = counters.iter().map(|c| c.frames).sum();
    println!("done {frames}");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
}

/// Frames per socket per write in the floor server (the shards' delivery batch).
const FLOOR_ROUND: usize = 256;

/// The floor server's sockets: the upgrade answered and the subscribe acknowledged as the
/// gateway would, then only written to.
fn floor_accept(listener: &std::net::TcpListener, connections: usize) -> Vec<TcpStream> {
    (0..connections)
        .map(|i| {
            let (mut stream, _) = listener
                .accept()
                .unwrap_or_else(|e| panic!("accept {i}: {e}"));
            stream.set_nodelay(true).unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            stream
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: \
                      Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .unwrap();
            let mut subscribe = [0u8; 13];
            stream.read_exact(&mut subscribe).unwrap();
            stream.write_all(&[0x81, 0x02, b'o', b'k']).unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect()
}

/// One socket's progress through the floor run: bytes written of `events` frames.
struct FloorSocket {
    stream: TcpStream,
    written: usize,
    iov: Vec<libc::iovec>,
    msg: libc::msghdr,
}

impl FloorSocket {
    /// The iovecs of the next round (up to [`FLOOR_ROUND`] frames from where it stopped).
    fn round(&mut self, frame: &[u8], total: usize) -> usize {
        self.iov.clear();
        let mut at = self.written;
        let mut bytes = 0;
        while at < total && self.iov.len() < FLOOR_ROUND {
            let offset = at % frame.len();
            let len = frame.len() - offset;
            self.iov.push(libc::iovec {
                iov_base: frame[offset..].as_ptr() as *mut libc::c_void,
                iov_len: len,
            });
            at += len;
            bytes += len;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = self.iov.len();
        bytes
    }
}

fn floor_sockets(streams: Vec<TcpStream>) -> Vec<FloorSocket> {
    streams
        .into_iter()
        .map(|stream| FloorSocket {
            stream,
            written: 0,
            iov: Vec::with_capacity(FLOOR_ROUND),
            // SAFETY: an all-zero msghdr is a valid empty header.
            msg: unsafe { std::mem::zeroed() },
        })
        .collect()
}

/// The epoll floor: `writev` each socket's round, `EPOLLOUT` (one-shot) for a full one. Returns
/// the sockets (closing them before the client has read everything would end its reads early).
fn floor_epoll(streams: Vec<TcpStream>, frame: &[u8], events: usize) -> Vec<FloorSocket> {
    let total = frame.len() * events;
    let mut sockets = floor_sockets(streams);
    // SAFETY: plain epoll calls on descriptors owned by `sockets`, which outlive the loop.
    let epoll = unsafe { libc::epoll_create1(0) };
    let mut runnable: Vec<usize> = (0..sockets.len()).collect();
    let mut next = Vec::new();
    let mut done = 0;
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while done < sockets.len() {
        for &i in &runnable {
            let socket = &mut sockets[i];
            let bytes = socket.round(frame, total);
            // SAFETY: the iovecs point into `frame`, alive for the call.
            let n = unsafe {
                libc::sendmsg(socket.stream.as_raw_fd(), &socket.msg, libc::MSG_DONTWAIT)
            };
            let n = if n < 0 { 0 } else { n as usize };
            socket.written += n;
            if socket.written == total {
                done += 1;
            } else if n < bytes {
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLOUT | libc::EPOLLONESHOT) as u32,
                    u64: i as u64,
                };
                let fd = socket.stream.as_raw_fd();
                // SAFETY: as above; MOD first, ADD the first time.
                unsafe {
                    if libc::epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, &mut ev) < 0 {
                        libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev);
                    }
                }
            } else {
                next.push(i);
            }
        }
        runnable.clear();
        std::mem::swap(&mut runnable, &mut next);
        let timeout = if runnable.is_empty() { 1000 } else { 0 };
        // SAFETY: `ready` has room for 1024 events.
        let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 1024, timeout) };
        runnable.extend(ready[..n.max(0) as usize].iter().map(|ev| ev.u64 as usize));
    }
    // SAFETY: the epoll descriptor is this function's own.
    unsafe { libc::close(epoll) };
    sockets
}

/// The io_uring floor: every runnable socket's round as one `sendmsg` (MSG_DONTWAIT), all
/// submitted in one enter; a short one waits with `POLL_ADD(POLLOUT)`. Returns the sockets.
fn floor_io_uring(streams: Vec<TcpStream>, frame: &[u8], events: usize) -> Vec<FloorSocket> {
    use io_uring::{opcode, types, IoUring};
    const POLL_TAG: u64 = 1 << 32;
    let total = frame.len() * events;
    let mut sockets = floor_sockets(streams);
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(32768)
        .build(16384)
        .expect("an io_uring ring");
    let mut runnable: Vec<usize> = (0..sockets.len()).collect();
    let mut bytes = vec![0usize; sockets.len()];
    let mut in_flight = 0;
    let mut done = 0;
    while done < sockets.len() {
        for &i in &runnable {
            let socket = &mut sockets[i];
            bytes[i] = socket.round(frame, total);
            let entry = opcode::SendMsg::new(types::Fd(socket.stream.as_raw_fd()), &socket.msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(i as u64);
            // SAFETY: the message header and iovecs live in `sockets` until the completion.
            while unsafe { ring.submission().push(&entry) }.is_err() {
                ring.submit().expect("submit");
            }
            in_flight += 1;
        }
        runnable.clear();
        ring.submit_and_wait(1).expect("enter");
        let completed: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (data, result) in completed {
            in_flight -= 1;
            let i = (data & (POLL_TAG - 1)) as usize;
            if data & POLL_TAG != 0 {
                runnable.push(i);
                continue;
            }
            let n = result.max(0) as usize;
            let socket = &mut sockets[i];
            socket.written += n;
            if socket.written == total {
                done += 1;
            } else if n < bytes[i] {
                let poll = opcode::PollAdd::new(
                    types::Fd(socket.stream.as_raw_fd()),
                    libc::POLLOUT as u32,
                )
                .build()
                .user_data(POLL_TAG | i as u64);
                // SAFETY: a poll takes no memory of ours.
                while unsafe { ring.submission().push(&poll) }.is_err() {
                    ring.submit().expect("submit");
                }
                in_flight += 1;
            } else {
                runnable.push(i);
            }
        }
    }
    assert_eq!(in_flight, 0);
    sockets
}

/// Runs the floor server for `backend` on two threads, once the clients are connected, and prints
/// its row.
fn floor(backend: &str, connections: usize, events: usize, frame_bytes: usize) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CLIENT_ROLE, addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client process");
    let mut streams = floor_accept(&listener, connections);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "ready",
        "the client process failed"
    );
    let frame: &'static [u8] = Vec::leak(horizon::ws::frame::encode::text(&vec![
        b'x';
        frame_bytes
            .saturating_sub(4)
            .max(1)
    ]));
    let halves = [streams.split_off(connections / 2), streams];
    let (cpu_before, segments_before, started) =
        (cpu_seconds(), tcp_out_segments(), Instant::now());
    let writers: Vec<_> = halves
        .into_iter()
        .map(|half| {
            let backend = backend.to_string();
            std::thread::spawn(move || {
                let sockets = match backend.as_str() {
                    "io_uring" => floor_io_uring(half, frame, events),
                    _ => floor_epoll(half, frame, events),
                };
                sockets
                    .into_iter()
                    .map(|socket| socket.stream)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let sockets: Vec<Vec<TcpStream>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let done = lines.next().unwrap().unwrap();
    drop(sockets);
    let wall = started.elapsed().as_secs_f64();
    let (user, system) = cpu_seconds();
    let cpu = user + system - cpu_before.0 - cpu_before.1;
    let segments = tcp_out_segments().saturating_sub(segments_before);
    let frames: usize = done.strip_prefix("done ").unwrap().parse().unwrap();
    let expected = connections * events;
    assert_eq!(frames, expected, "every frame arrived");
    println!(
        "fanout-floor/{connections}x{events} driver={backend} frame={frame_bytes}B: {expected} \
         frames in {wall:.2} s, server CPU {cpu:.2} s (user {:.2}, system {:.2}) -> {:.0} frames \
         per CPU-second; {:.3} TCP segments per frame",
        user - cpu_before.0,
        system - cpu_before.1,
        expected as f64 / cpu,
        segments as f64 / expected as f64,
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

fn main() {
    let connections = env("HORIZON_FANOUT_CONNECTIONS", 10_000);
    let events = env("HORIZON_FANOUT_EVENTS", 200);
    let frame_bytes = env("HORIZON_FANOUT_BYTES", 1024);
    if let Ok(spec) = std::env::var(CLIENT_ROLE) {
        let (addr, ca) = match spec.split_once(',') {
            Some((addr, ca)) => (addr, Some(ca)),
            None => (spec.as_str(), None),
        };
        client(addr.parse().unwrap(), connections, events, ca);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(backend) = std::env::var("HORIZON_FANOUT_FLOOR") {
        floor(&backend, connections, events, frame_bytes);
        return;
    }
    let certificates = std::env::var("HORIZON_FANOUT_TLS")
        .is_ok_and(|v| v == "1")
        .then(tls::certificates);
    let config = ServeConfig {
        ws_listen: "127.0.0.1:0".parse().unwrap(),
        wss_listen: certificates
            .as_ref()
            .map(|_| "127.0.0.1:0".parse().unwrap()),
        tls_cert_file: certificates.as_ref().map(|c| c.cert.clone()),
        tls_key_file: certificates.as_ref().map(|c| c.key.clone()),
        shards: 2,
        outbound_queue_bytes: 4 << 20,
        slow_consumer: SlowConsumerPolicy::Close,
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        io_backend: gateway::io_backend(),
        ..ServeConfig::default()
    };
    let mut gateway = Gateway::start(config, Arc::new(Factory)).expect("gateway");
    let publisher = gateway.take_publisher().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(
            CLIENT_ROLE,
            match (&certificates, gateway.wss_addr()) {
                (Some(certificates), Some(wss)) => format!("{wss},{}", certificates.ca.display()),
                _ => gateway.local_addr().to_string(),
            },
        )
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
    let (cpu_before, faults_before, segments_before, started) = (
        cpu_seconds(),
        page_faults(),
        tcp_out_segments(),
        Instant::now(),
    );
    runtime.block_on(async {
        for i in 0..events {
            let event = Event::new(format!("bench.e{i}"), Separator::Dot, body.clone());
            publisher.publish(Arc::new(event)).await.unwrap();
        }
    });
    let done = lines.next().unwrap().unwrap();
    let wall = started.elapsed().as_secs_f64();
    let faults = page_faults() - faults_before;
    let segments = tcp_out_segments().saturating_sub(segments_before);
    let (user, system) = cpu_seconds();
    let (user, system) = (user - cpu_before.0, system - cpu_before.1);
    let cpu = user + system;
    let frames: usize = done.strip_prefix("done ").unwrap().parse().unwrap();
    let expected = connections * events;
    assert_eq!(frames, expected, "every delivery arrived");
    println!(
        "fanout/{connections}x{events}{} driver={} frame={frame_bytes}B: {expected} deliveries in \
         {wall:.2} s ({:.0}/s wall), gateway CPU {cpu:.2} s (user {user:.2}, system {system:.2}) \
         -> {:.0} deliveries per CPU-second; {faults} page faults; {:.3} TCP segments per \
         delivery",
        if certificates.is_some() { " wss" } else { "" },
        gateway.driver(),
        expected as f64 / wall,
        expected as f64 / cpu,
        segments as f64 / expected as f64,
    );
    let (stats, _) = gateway.stats(Duration::from_secs(2));
    println!(
        "fanout/{connections}x{events} driver={}: {} completion-queue overflows",
        gateway.driver(),
        stats.iter().map(|s| s.cq_overflows).sum::<u64>()
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

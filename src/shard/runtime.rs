//! The thread-per-core runtime: N shard threads, each pinned to a core, each with its own
//! `SO_REUSEPORT` listener on the WebSocket address, so the kernel spreads connections over the
//! shards and no socket ever moves between threads. A shard thread is one loop: run the tasks that
//! were woken (the fan-out and control rings, the keepalive sweep, replies that resolve later;
//! `executor.rs`), fire its timers, then one turn of its socket I/O (`turn.rs`), whose backend
//! wait, `io_uring_enter` on its ring or `epoll_wait` on its set, is the thread's only one.
//!
//! Lives and dies with [`Gateway`]: `start` returns once every shard listens; `shutdown` makes each
//! shard stop accepting, send close 1001 `going away` to its sockets, give them
//! `shutdown_grace` to answer and drain, cut whatever is left, and exit; `join` waits for that.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use super::backend::{Driver, IoBackend, SocketIo};
use super::conn::Conn;
use super::connection;
use super::context::ShardContext;
use super::control::{Control, Counters, ShardStats, SocketInfo};
use super::executor::{self, Executor};
use super::limits::ConnectionLimits;
use super::poller::Poller;
use super::session::SessionFactory;
use super::turn::Turn;
use super::uring::Uring;
use crate::config::ServeConfig;
use crate::fanout::{self, Consumer, Event, Producer, Publisher, Recv};
use crate::tls::ServerTls;
use crate::ws::CloseCode;

const LISTEN_BACKLOG: i32 = 4096;
/// Events that may wait in one shard's ring before the publisher waits.
const RING_CAPACITY: usize = 8192;
/// Control questions that may wait per shard; more fail at once as "busy".
const CONTROL_CAPACITY: usize = 64;
/// Events a shard takes from its ring per wakeup.
const BATCH: usize = 256;

/// The shard threads of one process.
pub struct Gateway {
    local_addr: SocketAddr,
    /// The wss listener's address, if the node has one.
    wss_addr: Option<SocketAddr>,
    /// Its TLS (the certificate swapped by [`Gateway::reload_tls`]).
    tls: Option<Arc<ServerTls>>,
    driver: Driver,
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
    publisher: Option<Publisher>,
    /// One control ring per shard (see `control.rs`).
    registry: Option<Registry>,
}

/// The control plane's handle on the shards: asks each one by message through its control ring.
/// One owner at a time (the rings are single-producer); `Send`, so the API thread can hold it.
pub struct Registry {
    control: Vec<Producer<Control>>,
}

/// The cross-thread shutdown signal: a flag plus one waker per shard.
struct Stop {
    requested: AtomicBool,
    shards: Vec<AtomicWaker>,
}

impl Stop {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        for waker in &self.shards {
            waker.wake();
        }
    }

    async fn wait(&self, shard: usize) {
        poll_fn(|cx| {
            self.shards[shard].register(cx.waker());
            if self.requested.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Gateway {
    /// Starts `config.shards` shards and returns once all of them listen. With port 0 the first
    /// shard's port is shared by the others.
    pub fn start(config: ServeConfig, factory: Arc<dyn SessionFactory>) -> io::Result<Gateway> {
        let shards = config.shards.max(1);
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            shards: (0..shards).map(|_| AtomicWaker::new()).collect(),
        });
        let tls = match (
            config.wss_listen,
            &config.tls_cert_file,
            &config.tls_key_file,
        ) {
            (None, _, _) => None,
            (Some(_), Some(cert), Some(key)) => {
                Some(Arc::new(ServerTls::load(cert, key).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, e)
                })?))
            }
            (Some(_), _, _) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "wss_listen needs tls_cert_file and tls_key_file",
                ))
            }
        };
        let mut gateway = Gateway {
            local_addr: config.ws_listen,
            wss_addr: config.wss_listen,
            tls,
            driver: Driver::Epoll,
            stop,
            threads: Vec::new(),
            publisher: None,
            registry: Some(Registry {
                control: Vec::new(),
            }),
        };
        let limits = Arc::new(
            ConnectionLimits::new(config.max_connections, config.max_connections_per_ip)
                .with_rate(config.max_connects_per_sec),
        );
        let instance = u64::from_str_radix(&crate::ids::random_hex(8), 16).unwrap_or_default();
        let mut producers = Vec::with_capacity(shards);
        for index in 0..shards {
            let (producer, consumer) = fanout::ring::<Arc<Event>>(RING_CAPACITY);
            producers.push(producer);
            let (control_tx, control_rx) = fanout::ring::<Control>(CONTROL_CAPACITY);
            if let Some(registry) = gateway.registry.as_mut() {
                registry.control.push(control_tx);
            }
            let (bound_tx, bound_rx) = mpsc::channel();
            let mut shard_config = config.clone();
            shard_config.ws_listen = gateway.local_addr;
            shard_config.wss_listen = gateway.wss_addr;
            let shared = Shared {
                instance,
                tls: gateway.tls.clone(),
                factory: factory.clone(),
                limits: limits.clone(),
                stop: gateway.stop.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("horizon-shard-{index}"))
                .spawn(move || {
                    let rings = (consumer, control_rx);
                    shard_thread(index, shard_config, shared, rings, bound_tx)
                })?;
            gateway.threads.push(thread);
            match bound_rx.recv() {
                Ok(Ok((addr, wss_addr, driver))) => {
                    gateway.local_addr = addr;
                    gateway.wss_addr = wss_addr;
                    gateway.driver = driver;
                }
                Ok(Err(e)) => {
                    gateway.shutdown();
                    gateway.join();
                    return Err(e);
                }
                Err(_) => {
                    gateway.shutdown();
                    gateway.join();
                    return Err(io::Error::other(format!("shard {index} failed to start")));
                }
            }
        }
        gateway.publisher = Some(Publisher::new(producers));
        Ok(gateway)
    }

    /// The handle that feeds events to every shard; there is one (the ingest side takes it).
    pub fn take_publisher(&mut self) -> Option<Publisher> {
        self.publisher.take()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The wss listener's address, if the node has one.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// The wss listener's TLS, if the node has one.
    pub fn tls(&self) -> Option<&ServerTls> {
        self.tls.as_deref()
    }

    /// Hands the registry to the control plane; [`Gateway::sockets`] and [`Gateway::stats`]
    /// answer nothing afterwards.
    pub fn take_registry(&mut self) -> Option<Registry> {
        self.registry.take()
    }

    /// Every socket of every shard (see [`Registry::sockets`]); empty once the registry is taken.
    pub fn sockets(&self, timeout: Duration) -> (Vec<SocketInfo>, bool) {
        self.registry
            .as_ref()
            .map_or((Vec::new(), false), |r| r.sockets(timeout))
    }

    /// The counters of every shard (see [`Registry::stats`]); empty once the registry is taken.
    pub fn stats(&self, timeout: Duration) -> (Vec<ShardStats>, bool) {
        self.registry
            .as_ref()
            .map_or((Vec::new(), false), |r| r.stats(timeout))
    }

    /// Asks every shard to shut down gracefully; returns at once (see [`Gateway::join`]).
    pub fn shutdown(&self) {
        self.stop.request();
    }

    /// Waits for every shard thread to finish.
    pub fn join(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.request();
    }
}

/// The shard's keepalive sweep: every second, pings each socket whose last ping is
/// `ping_interval` old, closes (1008 `output blocked`) each one whose reading has been paused for
/// `blocked_close`, closes (1001 `idle timeout`) each one not heard from for `idle_timeout`,
/// and cuts a closing socket that stays silent that long (its close frame may sit behind output
/// the client never reads). One timer per shard instead of one per socket (a timer per socket would
/// cost more than an idle socket's whole budget); the walk costs ~10 ns per socket.
/// The clock counts whole seconds, so "silent for more than `idle_timeout` clock seconds" means
/// between the timeout and the timeout plus two seconds of real silence: never early.
async fn keepalive(shard: Rc<ShardContext>) {
    let ping_every = shard.config.ping_interval.as_secs().max(1) as u32;
    let idle_after = shard.config.idle_timeout.as_secs().max(1) as u32;
    let blocked_after = shard.config.blocked_close.as_secs().max(1) as u32;
    let ping = bytes::Bytes::from(crate::ws::frame::encode::ping(b""));
    loop {
        executor::sleep(Duration::from_secs(1)).await;
        let now = shard.clock();
        for socket in shard.sockets.borrow().iter() {
            let mut conn = socket.conn.borrow_mut();
            if connection::handshake_overdue(&conn, now) {
                continue;
            }
            if conn.is_closing() {
                // Its close frame is queued behind output the client never reads: once it has
                // been silent for the idle timeout too, give up on the close handshake.
                if now.saturating_sub(conn.last_heard) > idle_after {
                    conn.cut();
                }
                continue;
            }
            if conn.is_read_paused() && now.saturating_sub(conn.last_heard) > blocked_after {
                // It sends but has not read its output for `blocked_close`: it was not read
                // since (so `last_heard` is when it stopped reading, near enough).
                conn.close_blocked();
                Counters::add(&shard.counters.closed_blocked, 1);
            } else if conn.expires_at != 0 && now >= conn.expires_at {
                conn.close_now(CloseCode::TOKEN_EXPIRED, "token expired");
            } else if now.saturating_sub(conn.last_heard) > idle_after {
                conn.close_now(CloseCode::GOING_AWAY, "idle timeout");
            } else if now.saturating_sub(conn.last_ping) >= ping_every {
                conn.last_ping = now;
                conn.queue(ping.clone());
            }
        }
    }
}

fn pin_to_core(index: usize) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; the call reads
    // `size_of::<cpu_set_t>()` bytes of it. Failure (restricted affinity) only means no pinning.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(index % cores, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// What every shard of a node shares.
/// What a shard reports once it listens: its plain and wss addresses, and its backend.
type Bound = (SocketAddr, Option<SocketAddr>, Driver);

struct Shared {
    instance: u64,
    tls: Option<Arc<ServerTls>>,
    factory: Arc<dyn SessionFactory>,
    limits: Arc<ConnectionLimits>,
    stop: Arc<Stop>,
}

fn shard_thread(
    index: usize,
    config: ServeConfig,
    shared: Shared,
    (events, control): (Consumer<Arc<Event>>, Consumer<Control>),
    bound: mpsc::Sender<io::Result<Bound>>,
) {
    pin_to_core(index);
    let started = Executor::new().and_then(|executor| {
        let listener = bind(config.ws_listen)?;
        let wss = config.wss_listen.map(bind).transpose()?;
        Ok((executor, listener, wss))
    });
    let (mut executor, listener, wss) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let mut fds = vec![listener.as_raw_fd()];
    fds.extend(wss.as_ref().map(OwnedListener::as_raw_fd));
    let io = match open_backend(index, config.io_backend, &fds, executor.wake_fd()) {
        Ok(io) => io,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let driver = io.driver();
    let Shared {
        instance,
        tls,
        factory,
        limits,
        stop,
    } = shared;
    let shard = Rc::new(ShardContext::new(
        index, config, factory, limits, instance, io, tls,
    ));
    let mut turn = match Turn::new(&shard, &fds, executor.wake_fd()) {
        Ok(turn) => turn,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let addrs = listener.local_addr().and_then(|addr| {
        let wss_addr = wss.as_ref().map(OwnedListener::local_addr).transpose()?;
        Ok((addr, wss_addr, driver))
    });
    let _ = bound.send(addrs);
    executor::spawn(keepalive(shard.clone()));
    let ring_stats = events.stats_handle();
    executor::spawn(deliver(shard.clone(), events));
    executor::spawn(answer_control(shard.clone(), control, ring_stats));
    let stopped = Rc::new(Cell::new(false));
    let stopping = Rc::new(Cell::new(false));
    {
        let (shard, stopped, stopping) = (shard.clone(), stopped.clone(), stopping.clone());
        executor::spawn(async move {
            stop.wait(index).await;
            shard.accepting.set(false);
            stopping.set(true);
            going_away(&shard).await;
            stopped.set(true);
        });
    }
    while !stopped.get() {
        executor.run_woken();
        let next_timer = executor.fire_timers(Instant::now());
        if stopping.replace(false) {
            // Stop listening now, not when the descriptors' last reference goes: io_uring's
            // accepts in flight end.
            turn.stop_accepting(&shard);
            for fd in &fds {
                stop_listening(*fd);
            }
        }
        turn.run(&shard, &executor, next_timer);
    }
    if let SocketIo::Uring(uring) = &shard.io {
        uring.finish(Duration::from_secs(1));
    }
    // The tasks (and the `Rc`s of the shard they hold) go before the listeners.
    drop(executor);
    drop((listener, wss));
}

/// The shard's socket I/O as `io_backend` asks: `auto` takes io_uring where the ring can be set
/// up as the backend needs it (and says why not, once, otherwise).
fn open_backend(
    index: usize,
    backend: IoBackend,
    listeners: &[RawFd],
    wake_fd: RawFd,
) -> io::Result<SocketIo> {
    if backend != IoBackend::Epoll {
        match Uring::new(listeners, wake_fd) {
            Ok(uring) => {
                if index == 0 {
                    tracing::debug!("io_uring: one ring per shard, task work {:?}", uring.mode);
                }
                return Ok(SocketIo::Uring(Box::new(uring)));
            }
            Err(e) if backend == IoBackend::IoUring => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_backend = io_uring, but the ring cannot be set up: {e}"),
                ))
            }
            Err(e) => {
                if index == 0 {
                    tracing::warn!("io_uring unavailable ({e}): the shards run on epoll");
                }
            }
        }
    }
    Poller::new().map(SocketIo::Epoll)
}

/// Stops a listener now, not when its descriptor's last reference goes: an accept waiting on
/// it ends.
fn stop_listening(fd: RawFd) {
    // SAFETY: shutdown on a listener's own descriptor; no memory is passed.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// The shard's listener on `addr`: `SO_REUSEPORT` (every shard binds the same address and the
/// kernel spreads connections over them), non-blocking, close-on-exec.
fn bind(addr: SocketAddr) -> io::Result<OwnedListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open and owned by no one else.
    let listener = OwnedListener(unsafe { OwnedFd::from_raw_fd(fd) });
    let on: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: `on` is a valid c_int for the duration of the call.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for `addr`'s family.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen takes no pointers.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// A bound, listening socket.
struct OwnedListener(OwnedFd);

impl OwnedListener {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::TcpListener::from(self.0.try_clone()?).local_addr()
    }
}

impl From<OwnedListener> for std::net::TcpListener {
    fn from(listener: OwnedListener) -> std::net::TcpListener {
        std::net::TcpListener::from(listener.0)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The shard's delivery loop: takes events from its ring in batches, hands each to the binding
/// table (one match, one encode per binding, one `Bytes` clone per socket), then writes to every
/// socket that has new output. A socket whose kernel buffer is full waits for writability in the
/// backend; the others are never held up by it.
async fn deliver(shard: Rc<ShardContext>, events: Consumer<Arc<Event>>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut dirty = Vec::new();
    loop {
        batch.clear();
        if events.recv_batch(&mut batch, BATCH).await == Recv::Closed {
            return;
        }
        {
            let mut table = shard.bindings.borrow_mut();
            let counters = &shard.counters;
            let mut latency = counters.delivery_latency.borrow_mut();
            for event in &batch {
                let report = table.deliver(event, &mut dirty, &shard.io);
                latency.record(event.received_at.elapsed());
                Counters::add(&counters.frames_encoded, report.frames_encoded);
                Counters::add(&counters.deliveries, report.queued);
                Counters::add(&counters.dropped, report.dropped);
                Counters::add(&counters.closed_slow, report.closed_slow);
            }
            Counters::add(&counters.events, batch.len() as u64);
        }
        for conn in dirty.drain(..) {
            connection::after_delivery(&shard, &conn);
        }
        // One batch per turn: the turn submits the batch's sends (io_uring: in one enter) and
        // reads the sockets' input before the next batch, however fast events arrive.
        executor::yield_now().await;
    }
}

/// Answers the control plane's questions about this shard.
async fn answer_control(
    shard: Rc<ShardContext>,
    control: Consumer<Control>,
    ring: fanout::StatsHandle,
) {
    let mut questions = Vec::new();
    while control.recv_batch(&mut questions, 16).await != Recv::Closed {
        for question in questions.drain(..) {
            match question {
                Control::Sockets(reply) => {
                    let table = shard.bindings.borrow();
                    let sockets = shard.sockets.borrow();
                    let list = sockets
                        .iter()
                        .map(|socket| socket.conn.borrow())
                        .filter(|conn| conn.is_upgraded())
                        .map(|conn| {
                            let labels = conn.labels.as_deref();
                            SocketInfo {
                                instance: shard.instance,
                                id: conn.id,
                                shard: shard.index,
                                peer: conn.peer,
                                connected_at: shard.wall_time(conn.opened),
                                bindings: table.list(&conn),
                                name: labels.and_then(|l| l.name.clone()),
                                metadata: labels.and_then(|l| l.metadata.clone()),
                                filed: labels.map(|l| l.filed.clone()).unwrap_or_default(),
                            }
                        })
                        .collect();
                    let _ = reply.send(list);
                }
                Control::Revalidate(reply) => {
                    let mut closed = 0;
                    for socket in shard.sockets.borrow().iter() {
                        if socket.input.session.as_ref().is_some_and(|s| s.revoked()) {
                            let mut conn = socket.conn.borrow_mut();
                            if !conn.is_closing() {
                                conn.close_now(CloseCode::TOKEN_EXPIRED, "token revoked");
                                closed += 1;
                            }
                        }
                    }
                    let _ = reply.send(closed);
                }
                Control::Close(ids, reply) => {
                    let mut closed = Vec::new();
                    for socket in shard.sockets.borrow().iter() {
                        let mut conn = socket.conn.borrow_mut();
                        if conn.is_upgraded()
                            && !conn.is_closing()
                            && ids.contains(&(shard.instance, conn.id))
                        {
                            conn.close_now(CloseCode::CLOSED_BY_ADMIN, "closed by administrator");
                            closed.push(conn.id);
                        }
                    }
                    let _ = reply.send(closed);
                }
                Control::Stats(reply) => {
                    let c = &shard.counters;
                    let _ = reply.send(ShardStats {
                        shard: shard.index,
                        connections: shard
                            .sockets
                            .borrow()
                            .iter()
                            .filter(|socket| socket.conn.borrow().is_upgraded())
                            .count(),
                        bindings: shard.bindings.borrow().len(),
                        events: c.events.get(),
                        frames_encoded: c.frames_encoded.get(),
                        deliveries: c.deliveries.get(),
                        dropped: c.dropped.get(),
                        closed_slow: c.closed_slow.get(),
                        handshakes_invalid: c.handshakes_invalid.get(),
                        handshakes_refused: c.handshakes_refused.get(),
                        handshakes_tls_failed: c.handshakes_tls_failed.get(),
                        handshakes_proxy_refused: c.handshakes_proxy_refused.get(),
                        handshakes_connect_rate: c.handshakes_connect_rate.get(),
                        drain_closed: c.drain_closed.get(),
                        handshakes_limited_address: c.handshakes_limited_address.get(),
                        handshakes_limited_node: c.handshakes_limited_node.get(),
                        closed_blocked: c.closed_blocked.get(),
                        read_paused: shard
                            .sockets
                            .borrow()
                            .iter()
                            .filter(|socket| socket.conn.borrow().is_read_paused())
                            .count(),
                        cq_overflows: match &shard.io {
                            SocketIo::Uring(uring) => uring.overflows(),
                            SocketIo::Epoll(_) => 0,
                        },
                        ring: ring.stats(),
                        delivery_latency: c.delivery_latency.borrow().clone(),
                    });
                }
            }
        }
    }
}

/// Graceful shutdown of one shard: a handshake in progress is cut; open sockets get close 1001
/// spread evenly over `drain_spread` (so that their clients do not all reconnect elsewhere in the
/// same second), then `shutdown_grace` to answer and drain; the rest is cut.
async fn going_away(shard: &ShardContext) {
    let open: Vec<Rc<RefCell<Conn>>> = shard
        .sockets
        .borrow()
        .iter()
        .filter_map(|socket| {
            let conn = socket.conn.borrow();
            if conn.is_upgraded() {
                Some(socket.conn.clone())
            } else {
                conn.cut();
                None
            }
        })
        .collect();
    let spread = shard.config.drain_spread;
    let started = Instant::now();
    for (i, conn) in open.iter().enumerate() {
        let due = started + spread.mul_f64(i as f64 / open.len() as f64);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            executor::sleep(due - now).await;
        }
        let mut conn = conn.borrow_mut();
        if conn.is_upgraded() && !conn.is_closing() {
            conn.queue_close(CloseCode::GOING_AWAY, "going away");
            Counters::add(&shard.counters.drain_closed, 1);
        }
    }
    let deadline = Instant::now() + shard.config.shutdown_grace;
    while !shard.sockets.borrow().is_empty() && Instant::now() < deadline {
        executor::sleep(Duration::from_millis(5)).await;
    }
    for socket in shard.sockets.borrow().iter() {
        socket.conn.borrow().cut();
    }
    // The poller sees the cut sockets' end of stream and unregisters them.
    let cut_deadline = Instant::now() + Duration::from_secs(1);
    while !shard.sockets.borrow().is_empty() && Instant::now() < cut_deadline {
        executor::sleep(Duration::from_millis(5)).await;
    }
}

impl Registry {
    /// A registry of no shards (it answers every question with nothing).
    pub fn empty() -> Registry {
        Registry {
            control: Vec::new(),
        }
    }

    /// Every socket of every shard, asked by message. A shard that does not answer within
    /// `timeout` is left out; the second value says whether the answer is complete.
    pub fn sockets(&self, timeout: Duration) -> (Vec<SocketInfo>, bool) {
        let (answers, complete) = self.ask(timeout, Control::Sockets);
        (answers.into_iter().flatten().collect(), complete)
    }

    /// The counters of every shard, asked by message (see [`Registry::sockets`] for `timeout`).
    pub fn stats(&self, timeout: Duration) -> (Vec<ShardStats>, bool) {
        self.ask(timeout, Control::Stats)
    }

    /// Closes every socket whose credential the last auth reload revoked; how many.
    pub fn revalidate(&self, timeout: Duration) -> usize {
        self.ask(timeout, Control::Revalidate).0.into_iter().sum()
    }

    /// Closes the sockets `(instance, id)` (as [`SocketInfo`] names them) with 4003; the ids of
    /// those closed (one already closing is not).
    pub fn close(&self, sockets: Vec<(u64, u64)>, timeout: Duration) -> Vec<u64> {
        let sockets = Arc::new(sockets);
        let (answers, _) = self.ask(timeout, |reply| Control::Close(sockets.clone(), reply));
        answers.into_iter().flatten().collect()
    }

    fn ask<T>(
        &self,
        timeout: Duration,
        question: impl Fn(mpsc::Sender<T>) -> Control,
    ) -> (Vec<T>, bool) {
        let (tx, rx) = mpsc::channel();
        let mut asked = 0;
        for ring in &self.control {
            if ring.try_push(question(tx.clone())).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        let mut answers = Vec::with_capacity(asked);
        while answers.len() < asked {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(answer) => answers.push(answer),
                Err(_) => break,
            }
        }
        let complete = answers.len() == self.control.len();
        (answers, complete)
    }
}

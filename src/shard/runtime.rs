//! The thread-per-core runtime: N shard threads, each pinned to a core, each with its own
//! `SO_REUSEPORT` listener on the WebSocket address, so the kernel spreads connections over the
//! shards and no socket ever moves between threads. A shard thread is one loop: run the tasks that
//! were woken (the fan-out and control rings, the keepalive sweep, replies that resolve later;
//! `executor.rs`), fire its timers, then one turn of its socket I/O (`turn.rs`), whose backend
//! wait, `io_uring_enter` on its ring or `epoll_wait` on its set, is the thread's only one.
//!
//! Lives and dies with [`Gateway`]: `start` returns once every shard listens; `shutdown` makes each
//! shard stop accepting, close its sockets with 1001 `going away` spread over `drain_spread`, give
//! them `shutdown_grace` to answer and drain, cut whatever is left, and exit; `join` waits for
//! that. Owns the threads, the listeners and the delivery loop; the keepalive sweep and the
//! graceful end are in `lifecycle.rs`, the control plane's questions and answers in
//! `registry.rs`.

use std::cell::Cell;
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

use super::backend::{Driver, SocketIo};
use super::connection;
use super::context::ShardContext;
use super::control::{Control, Counters, ShardStats, SocketInfo};
use super::executor::{self, Executor};
use super::lifecycle::{going_away, keepalive};
use super::limits::ConnectionLimits;
use super::poller::Poller;
use super::registry::{answer_control, Registry};
use super::session::SessionFactory;
use super::turn::Turn;
use super::uring::Uring;
use crate::config::IoBackend;
use crate::config::ServeConfig;
use crate::fanout::{self, Consumer, Event, Publisher, Recv};
use crate::tls::ServerTls;

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
                if let Some(offset) = event.offset() {
                    shard.last_offset.set(Some(offset));
                }
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

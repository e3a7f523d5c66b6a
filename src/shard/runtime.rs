//! The thread-per-core runtime: N shard threads, each pinned to a core, each running a monoio
//! runtime (io_uring, or epoll when io_uring is unavailable or `MONOIO_FORCE_LEGACY_DRIVER=1`) with
//! its own `SO_REUSEPORT` listener on the WebSocket address, so the kernel spreads connections
//! over the shards and no socket ever moves between threads.
//!
//! Lives and dies with [`Gateway`]: `start` returns once every shard listens; `shutdown` makes each
//! shard stop accepting, send close 1001 `going away` to its sockets, give them
//! `shutdown_grace` to answer and drain, cut whatever is left, and exit; `join` waits for that.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use monoio::net::{ListenerOpts, TcpListener};

use super::connection;
use super::context::ShardContext;
use super::control::{Control, Counters, ShardStats, SocketInfo};
use super::limits::ConnectionLimits;
use super::poller::{self, Poller, EVENTS_PER_WAIT};
use super::session::SessionFactory;
use crate::config::ServeConfig;
use crate::fanout::{self, Consumer, Event, Producer, Publisher, Recv};
use crate::ws::CloseCode;

/// Scratch buffer each shard reads into; the largest read a socket gets per call.
const SCRATCH_BYTES: usize = 64 * 1024;
const LISTEN_BACKLOG: i32 = 4096;
/// Events that may wait in one shard's ring before the publisher waits.
const RING_CAPACITY: usize = 8192;
/// Control questions that may wait per shard; more fail at once as "busy".
const CONTROL_CAPACITY: usize = 64;
/// Events a shard takes from its ring per wakeup.
const BATCH: usize = 256;

/// Which I/O driver the shards run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// The shard threads of one process.
pub struct Gateway {
    local_addr: SocketAddr,
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
        let driver = if monoio::utils::detect_uring() {
            Driver::IoUring
        } else {
            Driver::Epoll
        };
        let stop = Arc::new(Stop {
            requested: AtomicBool::new(false),
            shards: (0..shards).map(|_| AtomicWaker::new()).collect(),
        });
        let mut gateway = Gateway {
            local_addr: config.ws_listen,
            driver,
            stop,
            threads: Vec::new(),
            publisher: None,
            registry: Some(Registry {
                control: Vec::new(),
            }),
        };
        let limits = Arc::new(ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
        ));
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
            let shared = Shared {
                instance,
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
                Ok(Ok(addr)) => gateway.local_addr = addr,
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
/// the client never reads). One timer per shard instead of one per socket (a monoio timer future is
/// 640 bytes, more than an idle socket's whole budget); the walk costs ~10 ns per socket.
/// The clock counts whole seconds, so "silent for more than `idle_timeout` clock seconds" means
/// between the timeout and the timeout plus two seconds of real silence: never early.
async fn keepalive(shard: Rc<ShardContext>) {
    let ping_every = shard.config.ping_interval.as_secs().max(1) as u32;
    let idle_after = shard.config.idle_timeout.as_secs().max(1) as u32;
    let blocked_after = shard.config.blocked_close.as_secs().max(1) as u32;
    let ping = bytes::Bytes::from(crate::ws::frame::encode::ping(b""));
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
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
struct Shared {
    instance: u64,
    factory: Arc<dyn SessionFactory>,
    limits: Arc<ConnectionLimits>,
    stop: Arc<Stop>,
}

fn shard_thread(
    index: usize,
    config: ServeConfig,
    Shared {
        instance,
        factory,
        limits,
        stop,
    }: Shared,
    (events, control): (Consumer<Arc<Event>>, Consumer<Control>),
    bound: mpsc::Sender<io::Result<SocketAddr>>,
) {
    pin_to_core(index);
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).backlog(LISTEN_BACKLOG);
        let listener = match TcpListener::bind_with_config(config.ws_listen, &opts) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let poller = match Poller::new() {
            Ok(poller) => poller,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(listener.local_addr());
        let shard = Rc::new(ShardContext::new(
            index,
            config,
            factory,
            limits,
            instance,
            poller,
            SCRATCH_BYTES,
        ));
        // The sweep, delivery and control tasks run until this `block_on` returns and the
        // runtime, with its tasks, is dropped.
        monoio::spawn(keepalive(shard.clone()));
        monoio::spawn(poll_sockets(shard.clone()));
        let ring_stats = events.stats_handle();
        monoio::spawn(deliver(shard.clone(), events));
        monoio::spawn(answer_control(shard.clone(), control, ring_stats));
        loop {
            monoio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => connection::accept(&shard, stream, peer),
                    // Out of descriptors and the like: back off instead of spinning.
                    Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
                },
                _ = stop.wait(index) => break,
            }
        }
        // Stop listening now, not when the descriptor's last reference goes: under io_uring the
        // accept in flight holds the listener until the kernel tears the ring down, which it does
        // asynchronously after the thread (or the process) is gone.
        // SAFETY: shutdown on the listener's own descriptor; no memory is passed.
        unsafe {
            libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        drop(listener);
        going_away(&shard).await;
    });
}

/// The shard's poller task: services the sockets other tasks queued work for, handles every
/// readiness report, and otherwise waits for the epoll descriptor (through the runtime: an
/// io_uring poll or the legacy driver's epoll) or for a socket to be scheduled.
async fn poll_sockets(shard: Rc<ShardContext>) {
    // The runtime's handle on the epoll descriptor: a duplicate, owned by a monoio stream type
    // only to be awaited for readability (an epoll descriptor is pollable like a socket; nothing
    // else is done with it).
    // SAFETY: dup of a descriptor the shard owns; the duplicate is owned by `waitable` alone.
    let dup = unsafe { libc::fcntl(shard.poller.fd(), libc::F_DUPFD_CLOEXEC, 0) };
    let waitable = if dup >= 0 {
        // SAFETY: `dup` is a fresh descriptor nothing else owns.
        monoio::net::UnixStream::from_std(unsafe {
            std::os::unix::net::UnixStream::from_raw_fd(dup)
        })
    } else {
        Err(io::Error::last_os_error())
    };
    let waitable = match waitable {
        Ok(waitable) => waitable,
        Err(e) => {
            tracing::warn!(
                "shard {}: cannot wait for socket readiness: {e}",
                shard.index
            );
            return;
        }
    };
    let mut raw = Vec::with_capacity(EVENTS_PER_WAIT);
    let mut ready = Vec::with_capacity(EVENTS_PER_WAIT);
    let mut scheduled = Vec::new();
    // Kept across turns until it completes, so that a turn woken by the service list does not
    // leave an io_uring poll behind.
    let mut readable: Option<Pin<Box<dyn Future<Output = io::Result<()>> + '_>>> = None;
    loop {
        poller::take_scheduled(&mut scheduled);
        for token in scheduled.drain(..) {
            connection::service(&shard, token);
        }
        let reports = shard.poller.ready_now(&mut raw, &mut ready);
        for report in ready.drain(..) {
            connection::on_ready(&shard, report);
        }
        if reports == EVENTS_PER_WAIT {
            // More may be waiting: let deliveries, accepts and the sweep run, then go on.
            poller::yield_now().await;
            continue;
        }
        let wait = readable.get_or_insert_with(|| Box::pin(waitable.readable(false)));
        let woke = poll_fn(|cx| {
            if let Poll::Ready(result) = wait.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            poller::poll_scheduled(cx).map(|()| None)
        })
        .await;
        if let Some(result) = woke {
            readable = None;
            if let Err(e) = result {
                tracing::error!("shard {}: waiting for socket readiness: {e}", shard.index);
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The shard's delivery loop: takes events from its ring in batches, hands each to the binding
/// table (one match, one encode per binding, one `Bytes` clone per socket), then writes to every
/// socket that has new output. A socket whose kernel buffer is full is left to its own task, which
/// waits for writability; the others are never held up by it.
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
                let report = table.deliver(event, &mut dirty);
                latency.record(event.received_at.elapsed());
                Counters::add(&counters.frames_encoded, report.frames_encoded);
                Counters::add(&counters.deliveries, report.queued);
                Counters::add(&counters.dropped, report.dropped);
                Counters::add(&counters.closed_slow, report.closed_slow);
            }
            Counters::add(&counters.events, batch.len() as u64);
        }
        for conn in dirty.drain(..) {
            conn.borrow_mut().flush_or_wake();
        }
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
                                connected_at: conn.connected_at,
                                bindings: table.list(&conn),
                                name: labels.and_then(|l| l.name.clone()),
                                metadata: labels.and_then(|l| l.metadata.clone()),
                                filed: labels.map(|l| l.filed.clone()).unwrap_or_default(),
                            }
                        })
                        .collect();
                    let _ = reply.send(list);
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
                        handshakes_limited_address: c.handshakes_limited_address.get(),
                        handshakes_limited_node: c.handshakes_limited_node.get(),
                        closed_blocked: c.closed_blocked.get(),
                        read_paused: shard
                            .sockets
                            .borrow()
                            .iter()
                            .filter(|socket| socket.conn.borrow().is_read_paused())
                            .count(),
                        ring: ring.stats(),
                        delivery_latency: c.delivery_latency.borrow().clone(),
                    });
                }
            }
        }
    }
}

/// Graceful shutdown of one shard: close 1001 to everyone, wait for answers and drains, cut the
/// rest.
async fn going_away(shard: &ShardContext) {
    let deadline = Instant::now() + shard.config.shutdown_grace;
    for socket in shard.sockets.borrow().iter() {
        let mut conn = socket.conn.borrow_mut();
        if conn.is_upgraded() {
            conn.queue_close(CloseCode::GOING_AWAY, "going away");
        } else {
            conn.cut();
        }
    }
    while !shard.sockets.borrow().is_empty() && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    for socket in shard.sockets.borrow().iter() {
        socket.conn.borrow().cut();
    }
    // The poller sees the cut sockets' end of stream and unregisters them.
    let cut_deadline = Instant::now() + Duration::from_secs(1);
    while !shard.sockets.borrow().is_empty() && Instant::now() < cut_deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
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

    fn ask<T>(
        &self,
        timeout: Duration,
        question: fn(mpsc::Sender<T>) -> Control,
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

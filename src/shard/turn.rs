//! One turn of a shard's socket I/O, per backend, and the shard's one wait.
//!
//! A turn: write the sockets other parts of the shard queued work for (the service list), then
//! hand the backend everything and take everything it has: on io_uring one `io_uring_enter` that
//! submits every queued operation (the turn's sends, re-armed receives) and collects every
//! completion; on epoll one `epoll_wait` and the reads and writes its reports ask for. The call
//! blocks only when the shard has nothing else to do (no task woken, no socket scheduled), and at
//! most until the next timer; a task woken from another thread ends the wait through the wake
//! eventfd (a read armed on the ring, or an entry in the epoll set).
//!
//! May call: the connection handlers (`connection.rs`), the backends (`uring.rs`, `poller.rs`),
//! the executor (to spawn an accept retry). Called by the shard thread's loop (`runtime.rs`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::backend::SocketIo;
use super::connection;
use super::context::ShardContext;
use super::executor::{self, Executor};
use super::poller::{self, Poller, Token, EVENTS_PER_WAIT};
use super::uring::{Completion, Uring};

/// Connections accepted per listener per epoll report (level-triggered: the rest are reported
/// again next turn).
const ACCEPTS_PER_TURN: usize = 64;
/// After an accept error (out of descriptors, most likely): how long before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest a shard waits without looking at its timers (it always has the keepalive sweep's,
/// so this only bounds a wait if none is set).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// The epoll set's tokens that are not sockets': the wake eventfd and the listeners. A socket's
/// generation never reaches `u32::MAX` in practice (it would take four billion sockets in one
/// slot), and its slot never does.
const WAKE: Token = Token {
    slot: u32::MAX,
    generation: u32::MAX,
};

fn listener_token(index: usize) -> Token {
    Token {
        slot: u32::MAX - 1 - index as u32,
        generation: u32::MAX,
    }
}

fn listener_of(token: Token) -> Option<usize> {
    (token.generation == u32::MAX && token != WAKE).then(|| (u32::MAX - 1 - token.slot) as usize)
}

/// What a shard keeps between turns.
pub(crate) struct Turn {
    listeners: Vec<RawFd>,
    scheduled: Vec<Token>,
    done: Vec<Completion>,
    rearm: Vec<Token>,
    raw: Vec<libc::epoll_event>,
    ready: Vec<poller::Ready>,
}

impl Turn {
    /// Readies the backend for the shard's turns: on epoll, the wake eventfd and the listeners
    /// join the readiness set (io_uring armed its accepts and the wake read when it was set up).
    pub fn new(shard: &ShardContext, listeners: &[RawFd], wake_fd: RawFd) -> io::Result<Turn> {
        if let SocketIo::Epoll(poller) = &shard.io {
            poller.add(wake_fd, WAKE)?;
            for (index, &fd) in listeners.iter().enumerate() {
                poller.add(fd, listener_token(index))?;
            }
        }
        Ok(Turn {
            listeners: listeners.to_vec(),
            scheduled: Vec::new(),
            done: Vec::new(),
            rearm: Vec::new(),
            raw: Vec::with_capacity(EVENTS_PER_WAIT),
            ready: Vec::with_capacity(EVENTS_PER_WAIT),
        })
    }

    /// Stops taking connections: the listeners leave the readiness set (epoll; io_uring's
    /// accepts end when the listeners are shut down).
    pub fn stop_accepting(&self, shard: &ShardContext) {
        if let SocketIo::Epoll(poller) = &shard.io {
            for &fd in &self.listeners {
                let _ = poller.remove(fd);
            }
        }
    }

    /// One turn (see the module's comment). `next_timer`: when the executor's next timer is due.
    pub fn run(
        &mut self,
        shard: &Rc<ShardContext>,
        executor: &Executor,
        next_timer: Option<Instant>,
    ) {
        poller::take_scheduled(&mut self.scheduled);
        for token in self.scheduled.drain(..) {
            connection::service(shard, token);
        }
        let idle = !executor.has_woken() && !poller::has_scheduled();
        let wait = idle.then(|| {
            next_timer.map_or(MAX_WAIT, |at| {
                at.saturating_duration_since(Instant::now()).min(MAX_WAIT)
            })
        });
        match &shard.io {
            SocketIo::Uring(uring) => self.ring_turn(shard, uring, executor, wait),
            SocketIo::Epoll(poller) => self.epoll_turn(shard, poller, executor, wait),
        }
    }

    fn ring_turn(
        &mut self,
        shard: &Rc<ShardContext>,
        uring: &Uring,
        executor: &Executor,
        wait: Option<Duration>,
    ) {
        self.done.clear();
        uring.take_backlog(&mut self.done);
        let wait = wait.filter(|_| self.done.is_empty() && executor.park());
        let entered = uring.enter(&mut self.done, wait);
        if wait.is_some() {
            executor.unpark();
        }
        if let Err(e) = entered {
            tracing::error!("shard {}: io_uring enter: {e}", shard.index);
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        for completion in self.done.drain(..) {
            match completion {
                Completion::Accepted {
                    listener,
                    result,
                    ended,
                } => {
                    let failed = result.is_err();
                    match result.and_then(|fd| peer_of(fd).map(|peer| (fd, peer))) {
                        Ok((fd, peer)) if shard.accepting.get() => {
                            connection::accept_fd(shard, fd, peer, listener == 1)
                        }
                        Ok((fd, _)) => super::io::close(fd),
                        Err(_) => {}
                    }
                    if ended && shard.accepting.get() {
                        if let (true, Some(&fd)) = (failed, self.listeners.get(listener)) {
                            accept_later(shard, listener, fd);
                        } else {
                            uring.arm_accept(listener);
                        }
                    }
                }
                other => connection::on_completion(shard, other),
            }
        }
        uring.publish_buffers();
        uring.take_rearm(&mut self.rearm);
        for token in self.rearm.drain(..) {
            connection::rearm(shard, token);
        }
    }

    fn epoll_turn(
        &mut self,
        shard: &Rc<ShardContext>,
        poller: &Poller,
        executor: &Executor,
        wait: Option<Duration>,
    ) {
        let wait = wait.filter(|_| executor.park());
        poller.wait(&mut self.raw, &mut self.ready, wait);
        if wait.is_some() {
            executor.unpark();
        }
        for index in 0..self.ready.len() {
            let report = self.ready[index];
            if report.token == WAKE {
                executor.clear_wake();
            } else if let Some(listener) = listener_of(report.token) {
                self.accept_ready(shard, poller, listener);
            } else {
                connection::on_ready(shard, report);
            }
        }
    }

    /// The epoll backend's accepts on a listener reported readable.
    fn accept_ready(&self, shard: &Rc<ShardContext>, poller: &Poller, index: usize) {
        let Some(&listener) = self.listeners.get(index) else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            match accept(listener) {
                Ok((fd, peer)) if shard.accepting.get() => {
                    connection::accept_fd(shard, fd, peer, index == 1)
                }
                Ok((fd, _)) => super::io::close(fd),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(_) if !shard.accepting.get() => return,
                Err(e) => {
                    // Out of descriptors and the like: stop listening for a moment instead of
                    // spinning on a level-triggered report.
                    tracing::debug!("shard {}: accept: {e}", shard.index);
                    if poller
                        .interest(listener, listener_token(index), false, false)
                        .is_ok()
                    {
                        accept_later(shard, index, listener);
                    }
                    return;
                }
            }
        }
    }
}

/// After an accept error (out of descriptors, most likely): accepts again on listener `index`
/// (descriptor `listener`) after [`ACCEPT_BACKOFF`], unless the shard has stopped accepting.
fn accept_later(shard: &Rc<ShardContext>, index: usize, listener: RawFd) {
    let shard = shard.clone();
    executor::spawn(async move {
        executor::sleep(ACCEPT_BACKOFF).await;
        if !shard.accepting.get() {
            return;
        }
        match &shard.io {
            SocketIo::Uring(uring) => uring.arm_accept(index),
            SocketIo::Epoll(poller) => {
                let _ = poller.interest(listener, listener_token(index), true, false);
            }
        }
    });
}

/// One connection from `listener`: non-blocking and close-on-exec, with its peer's address.
fn accept(listener: RawFd) -> io::Result<(RawFd, SocketAddr)> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: accept4 writes at most `len` bytes into `storage`.
    let fd = unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    match address(&storage) {
        Ok(peer) => Ok((fd, peer)),
        Err(e) => {
            super::io::close(fd);
            Err(e)
        }
    }
}

/// The peer address of an accepted socket (io_uring's multishot accept does not give it).
fn peer_of(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `storage`.
    let got = unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if got < 0 {
        let e = io::Error::last_os_error();
        super::io::close(fd);
        return Err(e);
    }
    address(&storage).inspect_err(|_| super::io::close(fd))
}

fn address(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::from((
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddr::V6(std::net::SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => Err(io::Error::other("accepted a socket of an unknown family")),
    }
}

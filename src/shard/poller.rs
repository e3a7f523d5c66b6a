//! The epoll backend's readiness set: one epoll instance per shard holding every socket it owns,
//! so that a socket is a plain record in the shard's registry rather than a task with readiness
//! futures of its own. Also the shard's service list, which both backends use.
//!
//! Why: an idle WebSocket must cost as little user-space memory as possible. A task per socket,
//! parked on a readiness future, was ~720 bytes of future state, task header and driver
//! bookkeeping; that alone was over the budget once the socket's own state was added. Here a
//! socket's readiness is an entry in the kernel's epoll set (kernel memory, like an io_uring poll
//! request), and the shard's turn (`turn.rs`) waits in `epoll_wait` on the set itself: the
//! shard's only wait, which the listeners and the executor's wake eventfd share.
//!
//! Interest is level-triggered: `EPOLLIN | EPOLLRDHUP` unless the socket's reading is paused (its
//! client does not read what it is sent), plus `EPOLLOUT` only while a socket's queue is blocked
//! on a full send buffer. A socket that is not read to exhaustion in one
//! turn (the fairness cap) is simply reported again.
//!
//! Work that other parts of the shard create for a socket (a reply resolved later, a ping, a
//! shutdown close, a slow consumer to close) is put on the shard's service list with
//! [`schedule`]; the shard's next turn flushes those sockets and ends the ones that are done.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Readiness reports taken per `epoll_wait`.
pub(crate) const EVENTS_PER_WAIT: usize = 256;

const READ_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const WRITE_INTEREST: u32 = libc::EPOLLOUT as u32;

/// A socket's identity in the readiness set and on the service list: its registry slot and the
/// slot's generation, so that a report for a socket that has since left is recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    fn from_u64(value: u64) -> Token {
        Token {
            slot: value as u32,
            generation: (value >> 32) as u32,
        }
    }
}

/// What a readiness report says about a socket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    pub token: Token,
    /// Readable, or the peer closed or the socket failed (a read then says which). Otherwise
    /// writable: the socket's queue is written either way.
    pub input: bool,
}

pub(crate) struct Poller {
    epoll: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above: `fd` is open and owned by no one else.
        Ok(Poller {
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds a socket with read interest.
    pub fn add(&self, fd: RawFd, token: Token) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, READ_INTEREST, token)
    }

    /// Sets the socket's interest: input (readable or peer closed) and/or output (writable).
    /// Errors and hang-ups are reported whatever the interest.
    pub fn interest(&self, fd: RawFd, token: Token, input: bool, output: bool) -> io::Result<()> {
        let mut events = 0;
        if input {
            events |= READ_INTEREST;
        }
        if output {
            events |= WRITE_INTEREST;
        }
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: Token) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: token.to_u64(),
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes a socket out of the set.
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event argument (null is allowed since Linux 2.6.9).
        if unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes the reports there are into `out`, waiting at most `wait` for the first one (not at
    /// all with `None`); returns how many. The wait is rounded up to whole milliseconds, so
    /// that a timer is never run early.
    pub fn wait(
        &self,
        buf: &mut Vec<libc::epoll_event>,
        out: &mut Vec<Ready>,
        wait: Option<Duration>,
    ) -> usize {
        let timeout = wait.map_or(0, |wait| wait.as_micros().div_ceil(1000).min(60_000) as i32);
        buf.clear();
        buf.reserve(EVENTS_PER_WAIT);
        // SAFETY: `buf` has room for EVENTS_PER_WAIT events; the kernel writes at most that many,
        // and `set_len` below covers exactly the ones written.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                buf.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                timeout,
            )
        };
        let n = n.max(0) as usize;
        // SAFETY: the kernel initialised the first `n` entries.
        unsafe { buf.set_len(n) };
        out.clear();
        out.extend(buf.iter().map(|event| {
            let events = event.events;
            Ready {
                token: Token::from_u64(event.u64),
                input: events & (READ_INTEREST | (libc::EPOLLHUP | libc::EPOLLERR) as u32) != 0,
            }
        }));
        n
    }
}

/// Sockets with work for the shard's turn that arose outside it (a reply resolved later, a ping,
/// a close, a slow consumer to close): the next turn writes them.
#[derive(Default)]
pub(crate) struct ServiceList {
    tokens: RefCell<Vec<Token>>,
}

thread_local! {
    /// The service list of the shard running on this thread (one shard per thread).
    static SERVICE: ServiceList = ServiceList::default();
}

/// Asks the shard's next turn to flush `token`'s socket (and end it, if it is done).
pub(crate) fn schedule(token: Token) {
    SERVICE.with(|list| list.tokens.borrow_mut().push(token));
}

/// Moves the scheduled tokens into `out` (emptying the list).
pub(crate) fn take_scheduled(out: &mut Vec<Token>) {
    SERVICE.with(|list| std::mem::swap(&mut *list.tokens.borrow_mut(), out));
}

/// Whether sockets wait on the service list.
pub(crate) fn has_scheduled() -> bool {
    SERVICE.with(|list| !list.tokens.borrow().is_empty())
}

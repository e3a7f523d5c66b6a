//! The boundary between a shard's connections and its socket I/O: the same handlers
//! (`connection.rs`) run on either backend.
//!
//! | | epoll | io_uring |
//! |---|---|---|
//! | wait (the shard's only one) | `epoll_wait` on the shard's set, level-triggered | `io_uring_enter` on the shard's ring |
//! | read | `read` into the shard's scratch buffer on readiness | a multishot receive per socket into the shard's provided buffers |
//! | write | one `writev` per socket per flush; `EPOLLOUT` when full | one send or `sendmsg` per socket, submitted with all the others in one enter; `POLL_ADD(POLLOUT)` when full |
//! | pause reading | read interest withdrawn | the receive cancelled |
//! | end | `close` | `shutdown` (completing what is in flight), then `close` |

use std::os::fd::RawFd;

use super::conn::Conn;
use super::io::{self, Flushed};
use super::poller::{Poller, Token};
use super::uring::Uring;
use std::io::Result;

/// Which backend a shard runs (see the table above).
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

pub(crate) enum SocketIo {
    Epoll(Poller),
    Uring(Box<Uring>),
}

impl SocketIo {
    pub fn driver(&self) -> Driver {
        match self {
            SocketIo::Epoll(_) => Driver::Epoll,
            SocketIo::Uring(_) => Driver::IoUring,
        }
    }

    /// Takes a new socket in: read interest (epoll) or its receive (io_uring).
    pub fn register(&self, conn: &mut Conn) -> Result<()> {
        match self {
            SocketIo::Epoll(poller) => poller.add(conn.fd, conn.token),
            SocketIo::Uring(uring) => uring.register(conn),
        }
    }

    /// Sets whether the socket is read (`input`) and, on epoll, whether it waits for room in
    /// its send buffer (`output`), and records it in `conn`.
    pub fn set_interest(&self, conn: &mut Conn, input: bool, output: bool) -> Result<()> {
        match self {
            SocketIo::Epoll(poller) => {
                poller.interest(conn.fd, conn.token, input, output)?;
                conn.write_armed = output;
            }
            SocketIo::Uring(uring) => {
                if input {
                    uring.arm_recv(conn);
                } else if !conn.read_paused {
                    uring.cancel_recv(conn);
                }
            }
        }
        conn.read_paused = !input;
        Ok(())
    }

    /// Writes (epoll) or queues a send of (io_uring) what the socket has queued.
    pub fn flush(&self, conn: &mut Conn) -> Result<Flushed> {
        match self {
            SocketIo::Epoll(_) => io::flush(conn.fd, &mut conn.outbound),
            SocketIo::Uring(uring) => Ok(uring.send(conn)),
        }
    }

    /// Writes (epoll) or queues the send of (io_uring) what the socket has queued, from the
    /// delivery path; if it cannot all go now, or something must follow (a lag notice, the end,
    /// reading to resume), leaves the rest to the shard's next turn.
    pub fn flush_now(&self, conn: &mut Conn) {
        match self.flush(conn) {
            Ok(Flushed::All | Flushed::InFlight)
                if conn.outbound.lagged() == 0 && !conn.is_ending() && !conn.is_read_paused() => {}
            _ => conn.schedule(),
        }
    }

    /// The delivery path found the socket's queue full, or filling fast, in the middle of a
    /// batch: give the kernel what it takes now, before the socket is called slow.
    pub fn make_room(&self, conn: &mut Conn) {
        if let SocketIo::Uring(uring) = self {
            uring.send(conn);
            uring.push_through(conn);
        }
        self.flush_now(conn);
    }

    /// Ends the socket's I/O and closes its descriptor. On io_uring the shutdown completes its
    /// receive and any send in flight first (the ring holds the socket open while they are), and
    /// the socket leaves the ring's fixed-file table (`token`: its registry slot's) once nothing
    /// queued can still name it.
    pub fn close(&self, fd: RawFd, token: Token) {
        if let SocketIo::Uring(uring) = self {
            io::shutdown(fd);
            uring.unregister(token.slot);
        }
        io::close(fd);
    }

    /// Whether `token`'s socket is driven by readiness reports (epoll) rather than completions.
    pub fn reads_on_readiness(&self) -> bool {
        matches!(self, SocketIo::Epoll(_))
    }
}

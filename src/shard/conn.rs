//! A connection's record: what the rest of its shard (registry, bindings, keepalive, shutdown,
//! fan-out) sees of a socket, and the one close state every path out of it consults. The event
//! handlers that drive it are in `connection.rs`; this module depends on neither them nor the
//! bindings, so the shard's modules import each other without a cycle.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;

use super::io;
use super::outbound::Outbound;
use super::poller::{self, Token};
use crate::ws::frame::encode;
use crate::ws::CloseCode;

/// A live socket as the rest of its shard sees it (registry, shutdown, fan-out).
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    /// The socket's descriptor; -1 once the connection has ended (a stale handle, such as a reply
    /// resolved after the client left, then writes nowhere).
    pub(super) fd: RawFd,
    /// The socket's place in the registry and the readiness set.
    pub(super) token: Token,
    pub(crate) outbound: Outbound,
    /// Shard clock second of the accept (the handshake deadline counts from it; the listing's
    /// connection time is read from it).
    pub(super) opened: u32,
    /// Shard clock second at which the client was last heard from (any bytes).
    pub(crate) last_heard: u32,
    /// Shard clock second of the last keepalive ping.
    pub(crate) last_ping: u32,
    /// Shard clock second at which the session's credentials expire (0: never); the keepalive
    /// sweep closes the socket with 4001 then.
    pub(crate) expires_at: u32,
    /// Where the connection is in its life: the one state every path through it consults.
    pub(super) stage: Stage,
    /// Read interest is withdrawn: the queue is over its bound because the client does not read.
    pub(super) read_paused: bool,
    /// Write interest is registered (epoll: the send buffer was full).
    pub(super) write_armed: bool,
    /// A send is in flight (io_uring): nothing else is written until it completes.
    pub(crate) send_in_flight: bool,
    /// A receive is in flight (io_uring), armed or being cancelled.
    pub(super) recv_armed: bool,
    /// Non-zero: the upgrade is to be refused with this HTTP status (a connection limit), and
    /// the connection was not counted against the limits; [`NOT_ADMITTED`] while a trusted
    /// proxy's header, which names the client to count, is still to be read.
    pub(super) refusal: u16,
    /// On the shard's service list.
    pub(super) scheduled: bool,
    /// Ids of the shard bindings this socket is in (see `bindings.rs`).
    pub(crate) bindings: Vec<u32>,
    /// The client's name and metadata for the socket, if it gave any (boxed: most sockets have
    /// none, and an idle socket's every byte counts).
    pub(crate) labels: Option<Box<Labels>>,
}

/// [`Conn::refusal`] of a connection not yet counted against the limits (never a status).
pub(super) const NOT_ADMITTED: u16 = 1;

/// Where a connection is in its life. Preface -> Handshake -> Open -> Closing -> Ending, or straight to
/// Ending (a refusal, a violation, the client's close, a close that does not wait). The readiness
/// interest and the service-list mark beside it are I/O bookkeeping, not lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Nothing read yet, or the start of a PROXY protocol header: the first bytes say whether the
    /// connection begins with one (see `proxy.rs`). `trusted`: the peer is a trusted proxy, so a
    /// header is taken (and the connection is counted against the limits once it is read);
    /// from any other peer a header closes the connection.
    Preface { trusted: bool },
    /// The upgrade request is being read; the keepalive sweep cuts it after [`HANDSHAKE_SECS`].
    /// Nothing is queued for it but the answer to the request.
    ///
    /// [`HANDSHAKE_SECS`]: super::connection::HANDSHAKE_SECS
    Handshake,
    /// Upgraded: input is parsed and handed to the session; replies, events and pings are
    /// queued.
    Open,
    /// Our close frame is queued and we wait for the client's (graceful shutdown, an expired
    /// token): input is parsed only for that close frame.
    Closing,
    /// Write what is queued, then end: input is read only to be discarded. `upgraded`: whether
    /// the socket got as far as speaking WebSocket.
    Ending { upgraded: bool },
}

/// What a client may call its socket (Kazoo's `name` and `metadata`).
#[derive(Debug, Default)]
pub(crate) struct Labels {
    pub name: Option<String>,
    pub metadata: Option<String>,
    /// Accounts the socket is listed under now, with its bindings for each (see
    /// `SocketInfo::filed`).
    pub filed: Vec<super::control::Filed>,
    /// A socket that subscribed with `resume_from`: its position frames (docs/resume.md).
    pub positions: Option<PositionFrames>,
    /// A message the session asked to see again at this time (`Reply::Hold`): until then the
    /// socket is not read.
    pub held: Option<(String, std::time::Instant)>,
}

/// How and when a resuming socket is told the log's head while it receives nothing.
#[derive(Debug)]
pub(crate) struct PositionFrames {
    /// The frame with the position where `{}` goes (each dialect's shape).
    pub template: (String, String),
    /// The log's epoch, for the position text.
    pub epoch: String,
    /// The head when the socket was last told (or subscribed), and the shard clock then.
    pub told: Option<u64>,
    pub told_at: u32,
}

impl Conn {
    /// Queues a reply or control frame for the poller to write. It is never dropped, but it
    /// counts against the queue's bound: past the bound the socket is no longer read, so a client
    /// that does not read cannot make the shard hold more than one bound's worth.
    pub fn queue(&mut self, frame: Bytes) {
        if self.stage == Stage::Open {
            self.outbound.push_control(frame);
            self.schedule();
        }
    }

    /// Queues the close frame; the connection ends once it is sent (and, when the server
    /// initiated it politely, once the client answers or the shard's deadline passes).
    pub fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if self.stage == Stage::Open {
            self.outbound
                .push_control(Bytes::from(encode::close(code, reason)));
            self.stage = Stage::Closing;
            self.schedule();
        }
    }

    /// Closing or ending (a socket in its handshake is neither).
    pub fn is_closing(&self) -> bool {
        matches!(self.stage, Stage::Closing | Stage::Ending { .. })
    }

    /// Input is parsed (the upgrade request, or frames for the session).
    pub(super) fn is_parsing(&self) -> bool {
        matches!(
            self.stage,
            Stage::Preface { .. } | Stage::Handshake | Stage::Open
        )
    }

    pub(super) fn is_ending(&self) -> bool {
        matches!(self.stage, Stage::Ending { .. })
    }

    /// From now on: write what is queued, then end; input is discarded. A wss socket's last
    /// record is its close_notify.
    pub(super) fn set_ending(&mut self) {
        self.stage = Stage::Ending {
            upgraded: self.is_upgraded(),
        };
        self.outbound.close_notify();
    }

    /// Whether reading is paused because the client does not read its output.
    pub(crate) fn is_read_paused(&self) -> bool {
        self.read_paused
    }

    /// Whether the queue holds a bound's worth, or a message is held: the socket is not read
    /// until it drains (and the held message's time has come).
    pub(super) fn over_bound(&self) -> bool {
        self.outbound.queued_bytes() >= self.outbound.limit() || self.holding()
    }

    /// Whether a held message (`Reply::Hold`) is still waiting for its time.
    pub(super) fn holding(&self) -> bool {
        self.labels
            .as_ref()
            .and_then(|l| l.held.as_ref())
            .is_some_and(|(_, at)| std::time::Instant::now() < *at)
    }

    /// The held message, once its time has come.
    pub(super) fn take_held(&mut self) -> Option<String> {
        if self.holding() {
            return None;
        }
        self.labels
            .as_mut()
            .and_then(|l| l.held.take())
            .map(|(text, _)| text)
    }

    /// Whether the socket has completed its upgrade (before that it is not listed, pinged or sent
    /// close frames).
    pub fn is_upgraded(&self) -> bool {
        match self.stage {
            Stage::Preface { .. } | Stage::Handshake => false,
            Stage::Open | Stage::Closing => true,
            Stage::Ending { upgraded } => upgraded,
        }
    }

    /// Closes without waiting for the client's answer (idle timeout, slow consumer).
    pub(crate) fn close_now(&mut self, code: CloseCode, reason: &str) {
        self.queue_close(code, reason);
        self.set_ending();
        self.schedule();
    }

    /// Closes a socket whose client has not read its output for too long: the close frame
    /// replaces what is queued (the client would never get to it) and the socket is cut.
    pub(crate) fn close_blocked(&mut self) {
        // A frame (or record) already partly written is finished first: the close frame behind
        // it is then still readable.
        self.outbound.clear_unstarted();
        self.outbound.push_control(Bytes::from(encode::close(
            CloseCode::POLICY,
            "output blocked",
        )));
        if !self.send_in_flight {
            // Best effort, straight from here (no send of the backend's is in flight to be
            // overtaken); the socket is cut either way.
            let _ = io::flush(self.fd, &mut self.outbound);
        }
        self.set_ending();
        self.cut();
    }

    /// Shuts both directions down: the poller then sees end of stream and ends the connection
    /// (the handshake deadline, an unanswered close, the last resort of shutdown).
    pub(crate) fn cut(&self) {
        if self.fd >= 0 {
            io::shutdown(self.fd);
        }
    }

    /// Puts the socket on the shard's service list (once).
    pub(super) fn schedule(&mut self) {
        if !self.scheduled && self.fd >= 0 {
            self.scheduled = true;
            poller::schedule(self.token);
        }
    }
}

impl Conn {
    /// A connection just accepted on `fd`, before its first byte, at shard clock second `now`:
    /// not yet registered with the backend, counted against the limits, or given its id.
    pub(crate) fn accepted(
        fd: RawFd,
        token: Token,
        peer: SocketAddr,
        outbound: Outbound,
        now: u32,
    ) -> Conn {
        Conn {
            id: 0,
            peer,
            fd,
            token,
            outbound,
            opened: now,
            last_heard: now,
            last_ping: now,
            expires_at: 0,
            stage: Stage::Preface { trusted: false },
            read_paused: false,
            write_armed: false,
            send_in_flight: false,
            recv_armed: false,
            refusal: 0,
            scheduled: false,
            bindings: Vec::new(),
            labels: None,
        }
    }

    /// A connection with no socket behind it (what it queues is never written): for driving a
    /// session without I/O, as the fuzzing harness does.
    pub(crate) fn detached(outbound_limit: usize) -> Conn {
        let token = Token {
            slot: 0,
            generation: 0,
        };
        let outbound = Outbound::new(outbound_limit, Default::default());
        let mut conn = Conn::accepted(
            -1,
            token,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            outbound,
            0,
        );
        conn.id = 1;
        conn.stage = Stage::Open;
        conn
    }
}

impl Drop for Conn {
    /// A connection still open when its shard stops (past the shutdown grace and the cut) closes
    /// its descriptor with it; one that ended normally closed it already.
    fn drop(&mut self) {
        io::close(std::mem::replace(&mut self.fd, -1));
    }
}

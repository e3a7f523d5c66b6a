//! One WebSocket connection on its shard, from the first byte of the handshake to the close.
//!
//! A connection is a record in the shard's registry, driven by the shard's poller task (see
//! `poller.rs`): no task, no future and no buffer of its own while it waits. Lifecycle: accepted
//! and registered for readiness -> the upgrade request is read (bounded; the keepalive sweep cuts
//! it after [`HANDSHAKE_SECS`]) -> the dialect's [`SessionFactory`] accepts or refuses -> `101` ->
//! frames -> close. Bytes are read into the shard's scratch buffer; only a request or frame split
//! across reads is copied into a per-socket buffer until it completes.
//!
//! A protocol violation ends this connection and nothing else: the close frame with the RFC's code
//! is sent and the socket closed. Shutdown, keepalive and fan-out reach the connection through its
//! [`Conn`], which holds its outbound queue; whatever they queue is written by the poller task (or
//! at once by the delivery loop), never by a task of the socket's own.
//!
//! [`SessionFactory`]: super::session::SessionFactory

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::SystemTime;

use bytes::Bytes;
use monoio::net::TcpStream;

use super::bindings::Subscriptions;
use super::control::Counters;
use super::io::{self, Flushed};
use super::outbound::Outbound;
use super::poller::{self, Ready, Token};
use super::runtime::ShardContext;
use super::session::{Reply, Session};
use super::sockets::{Input, Socket};
use crate::ws::frame::{encode, Message, Reader};
use crate::ws::{handshake, CloseCode};

/// A client must finish its upgrade request within this many shard-clock seconds (the keepalive
/// sweep cuts it between this and two seconds more).
pub(crate) const HANDSHAKE_SECS: u32 = 10;
/// Reads per readiness report before other sockets get their turn (level-triggered readiness
/// reports the socket again).
const READS_PER_WAKEUP: usize = 8;

/// A live socket as the rest of its shard sees it (registry, shutdown, fan-out).
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    /// The socket's descriptor; -1 once the connection has ended (a stale handle, such as a reply
    /// resolved after the client left, then writes nowhere).
    fd: RawFd,
    /// The socket's place in the registry and the readiness set.
    token: Token,
    pub(crate) outbound: Outbound,
    /// Shard clock second of the accept (the handshake deadline counts from it).
    opened: u32,
    /// Shard clock second at which the client was last heard from (any bytes).
    pub(crate) last_heard: u32,
    /// Shard clock second of the last keepalive ping.
    pub(crate) last_ping: u32,
    /// Shard clock second at which the session's credentials expire (0: never); the keepalive
    /// sweep closes the socket with 4001 then.
    pub(crate) expires_at: u32,
    /// The upgrade was accepted: the socket speaks WebSocket.
    upgraded: bool,
    /// A close frame has been queued: nothing else will be.
    closing: bool,
    /// End the connection as soon as the queue is written (do not wait for the client's close).
    end_after_flush: bool,
    /// Write interest is registered (the send buffer was full).
    write_armed: bool,
    /// On the shard's service list.
    scheduled: bool,
    /// Ids of the shard bindings this socket is in (see `bindings.rs`).
    pub(crate) bindings: Vec<u32>,
    /// The client's name and metadata for the socket, if it gave any (boxed: most sockets have
    /// none, and an idle socket's every byte counts).
    pub(crate) labels: Option<Box<Labels>>,
}

/// What a client may call its socket (Kazoo's `name` and `metadata`).
#[derive(Debug, Default)]
pub(crate) struct Labels {
    pub name: Option<String>,
    pub metadata: Option<String>,
    /// Accounts the socket is listed under (see `SocketInfo::accounts`).
    pub accounts: Vec<String>,
}

impl Conn {
    /// Queues a frame (not subject to the slow-consumer bound) for the poller to write.
    pub fn queue(&mut self, frame: Bytes) {
        if !self.closing {
            self.outbound.push_control(frame);
            self.schedule();
        }
    }

    /// Queues the close frame; the connection ends once it is sent (and, when the server
    /// initiated it politely, once the client answers or the shard's deadline passes).
    pub fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if !self.closing {
            self.outbound
                .push_control(Bytes::from(encode::close(code, reason)));
            self.closing = true;
            self.schedule();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the socket has completed its upgrade (before that it is not listed, pinged or sent
    /// close frames).
    pub fn is_upgraded(&self) -> bool {
        self.upgraded
    }

    /// Closes without waiting for the client's answer (idle timeout, slow consumer).
    pub(crate) fn close_now(&mut self, code: CloseCode, reason: &str) {
        self.queue_close(code, reason);
        self.end_after_flush = true;
        self.schedule();
    }

    /// Writes what is queued right away; if the socket cannot take it all, or something must
    /// follow (a lag notice, the end), leaves the rest to the poller. Called by the delivery loop
    /// after each batch.
    pub(crate) fn flush_or_wake(&mut self) {
        match io::flush(self.fd, &mut self.outbound) {
            Ok(Flushed::All) if self.outbound.lagged() == 0 && !self.end_after_flush => {}
            _ => self.schedule(),
        }
    }

    /// Shuts both directions down: the poller then sees end of stream and ends the connection
    /// (the handshake deadline, an unanswered close, the last resort of shutdown).
    pub(crate) fn cut(&self) {
        if self.fd >= 0 {
            io::shutdown(self.fd);
        }
    }

    /// Puts the socket on the shard's service list (once).
    fn schedule(&mut self) {
        if !self.scheduled && self.fd >= 0 {
            self.scheduled = true;
            poller::schedule(self.token);
        }
    }
}

impl Drop for Conn {
    /// A connection still open when its shard stops (past the shutdown grace and the cut) closes
    /// its descriptor with it; one that ended normally closed it already.
    fn drop(&mut self) {
        io::close(std::mem::replace(&mut self.fd, -1));
    }
}

/// How a socket goes on after a batch of input.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    /// Send what is queued (a close frame, a refusal) and end.
    FlushAndEnd,
    /// End now: the peer is gone.
    End,
}

/// Takes a freshly accepted socket into the shard: registry and readiness set. Nothing is read
/// yet; the request is read when the socket reports readable.
pub(crate) fn accept(shard: &ShardContext, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    // A stream just accepted has no operation in flight, so the runtime lets go of it (and, under
    // the legacy driver, deregisters it from its own epoll set).
    let fd = stream.into_raw_fd();
    if io::set_nonblocking(fd).is_err() {
        io::close(fd);
        return;
    }
    let now = shard.clock();
    let mut sockets = shard.sockets.borrow_mut();
    let token = sockets.next_token();
    if shard.poller.add(fd, token).is_err() {
        io::close(fd);
        return;
    }
    let conn = Conn {
        id: shard.next_socket_id(),
        peer,
        connected_at: SystemTime::now(),
        fd,
        token,
        outbound: Outbound::new(
            shard.config.outbound_queue_bytes,
            shard.config.slow_consumer,
        ),
        opened: now,
        last_heard: now,
        last_ping: now,
        expires_at: 0,
        upgraded: false,
        closing: false,
        end_after_flush: false,
        write_armed: false,
        scheduled: false,
        bindings: Vec::new(),
        labels: None,
    };
    sockets.insert(Socket {
        conn: Rc::new(RefCell::new(conn)),
        input: Input {
            session: None,
            reader: Reader::new(shard.config.max_message_bytes),
            partial: Vec::new(),
        },
    });
}

/// The keepalive sweep's part for a socket still in its handshake: cut it once its deadline has
/// passed. Returns whether the socket is still in its handshake.
pub(crate) fn handshake_overdue(conn: &Conn, now: u32) -> bool {
    if conn.upgraded {
        return false;
    }
    if now.saturating_sub(conn.opened) > HANDSHAKE_SECS {
        conn.cut();
    }
    true
}

/// A readiness report for a socket: read and handle its input, then write what is queued.
pub(crate) fn on_ready(shard: &ShardContext, ready: Ready) {
    if ready.input {
        let next = {
            let mut sockets = shard.sockets.borrow_mut();
            let Some(socket) = sockets.get_mut(ready.token) else {
                return;
            };
            read_available(shard, socket)
        };
        match next {
            Next::Continue => {}
            Next::FlushAndEnd => {
                if let Some(socket) = shard.sockets.borrow().get(ready.token) {
                    socket.conn.borrow_mut().end_after_flush = true;
                }
            }
            Next::End => return end(shard, ready.token),
        }
    }
    service(shard, ready.token);
}

/// Writes what the socket has queued; arms write interest if the send buffer is full, sends the
/// lag notice once a slow socket drains, and ends the connection once it is done.
pub(crate) fn service(shard: &ShardContext, token: Token) {
    let done = match shard.sockets.borrow().get(token) {
        Some(socket) => flush(shard, socket),
        None => return,
    };
    if done {
        end(shard, token);
    }
}

/// [`service`] for one socket; returns whether the connection is over.
fn flush(shard: &ShardContext, socket: &Socket) -> bool {
    let mut conn = socket.conn.borrow_mut();
    conn.scheduled = false;
    loop {
        let fd = conn.fd;
        match io::flush(fd, &mut conn.outbound) {
            Err(_) => return true,
            Ok(Flushed::WouldBlock) => {
                if !conn.write_armed {
                    if shard.poller.want_output(fd, conn.token, true).is_err() {
                        return true;
                    }
                    conn.write_armed = true;
                }
                return false;
            }
            Ok(Flushed::All) => {
                if conn.write_armed {
                    if shard.poller.want_output(fd, conn.token, false).is_err() {
                        return true;
                    }
                    conn.write_armed = false;
                }
                if conn.end_after_flush {
                    return true;
                }
                // Drained after dropping events for this socket: tell the client how many.
                let session = socket.input.session.as_deref();
                let notice = conn
                    .outbound
                    .take_lag()
                    .and_then(|skipped| session?.lag_notice(skipped));
                match notice {
                    Some(notice) if !conn.closing => {
                        conn.queue(Bytes::from(encode::text(notice.as_bytes())))
                    }
                    _ => {
                        // Replies, pongs and pings go out through here, and most sockets are
                        // idle between them: they keep no queue buffer.
                        conn.outbound.release_if_empty();
                        return false;
                    }
                }
            }
        }
    }
}

/// Ends a connection: out of every binding and the registry, descriptor closed. Whatever still
/// holds its `Conn` (a reply being resolved) finds it closing, with no descriptor.
fn end(shard: &ShardContext, token: Token) {
    let Some(socket) = shard.sockets.borrow_mut().remove(token) else {
        return;
    };
    // Leave every binding before the descriptor is closed, so that nothing on this shard can act
    // on a descriptor number the kernel may hand out again.
    shard.bindings.borrow_mut().unsubscribe_all(&socket.conn);
    let mut conn = socket.conn.borrow_mut();
    conn.closing = true;
    conn.outbound.clear();
    let fd = std::mem::replace(&mut conn.fd, -1);
    // Closing the descriptor also takes it out of the readiness set.
    io::close(fd);
}

/// Reads what the socket has and handles the upgrade request or every complete frame in it.
fn read_available(shard: &ShardContext, socket: &mut Socket) -> Next {
    let Socket { conn, input } = socket;
    let fd = conn.borrow().fd;
    let mut next = Next::Continue;
    let mut heard = false;
    let mut scratch = shard.scratch.borrow_mut();
    for _ in 0..READS_PER_WAKEUP {
        let n = match io::read(fd, &mut scratch) {
            Ok(0) => return Next::End,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return Next::End,
        };
        heard = true;
        if input.session.is_none() {
            input.partial.extend_from_slice(&scratch[..n]);
            next = upgrade(shard, conn, input);
        } else if let Input {
            session: Some(session),
            reader,
            partial,
        } = input
        {
            if partial.is_empty() {
                // The common case: whole frames straight out of the shard's scratch buffer.
                let used = handle_input(
                    reader,
                    &mut scratch[..n],
                    conn,
                    shard,
                    session.as_mut(),
                    &mut next,
                );
                partial.extend_from_slice(&scratch[used..n]);
            } else {
                partial.extend_from_slice(&scratch[..n]);
                let used = handle_input(reader, partial, conn, shard, session.as_mut(), &mut next);
                partial.drain(..used);
                if partial.is_empty() {
                    *partial = Vec::new();
                }
            }
        }
        if next != Next::Continue || n < scratch.len() {
            break;
        }
    }
    if heard {
        conn.borrow_mut().last_heard = shard.clock();
    }
    next
}

/// The upgrade request, once `input.partial` holds all of it: the dialect's decision, the `101`
/// (or the refusal), and any frames that arrived behind the request.
fn upgrade(shard: &ShardContext, conn: &Rc<RefCell<Conn>>, input: &mut Input) -> Next {
    let (request, used) = match handshake::parse(&input.partial) {
        Ok(None) => return Next::Continue,
        Ok(Some(parsed)) => parsed,
        Err(refusal) => {
            Counters::add(&shard.counters.handshakes_invalid, 1);
            let answer = handshake::refuse_bad_request(&refusal);
            conn.borrow_mut().outbound.push_control(Bytes::from(answer));
            return Next::FlushAndEnd;
        }
    };
    let peer = conn.borrow().peer;
    let mut session = match shard.factory.open(&request, peer) {
        Ok(session) => session,
        Err(refusal) => {
            Counters::add(&shard.counters.handshakes_refused, 1);
            let answer = handshake::refuse(refusal.status, refusal.content_type, &refusal.body);
            conn.borrow_mut().outbound.push_control(Bytes::from(answer));
            return Next::FlushAndEnd;
        }
    };
    {
        let mut conn = conn.borrow_mut();
        conn.outbound
            .push_control(Bytes::from(handshake::accept(&request)));
        conn.upgraded = true;
    }
    if let Some(left) = session.expires_in() {
        Subscriptions {
            table: &shard.bindings,
            conn,
            now: shard.clock(),
        }
        .set_expiry(Some(left));
    }
    // Bytes that arrived right behind the upgrade request.
    let mut rest = std::mem::take(&mut input.partial);
    rest.drain(..used);
    let mut next = Next::Continue;
    if !rest.is_empty() {
        let used = handle_input(
            &mut input.reader,
            &mut rest,
            conn,
            shard,
            session.as_mut(),
            &mut next,
        );
        rest.drain(..used);
    }
    input.partial = if rest.is_empty() { Vec::new() } else { rest };
    input.session = Some(session);
    next
}

/// Handles the complete frames at the front of `buf`; returns how many bytes they took.
fn handle_input(
    reader: &mut Reader,
    buf: &mut [u8],
    conn: &Rc<RefCell<Conn>>,
    shard: &ShardContext,
    session: &mut dyn Session,
    next: &mut Next,
) -> usize {
    let mut at = 0;
    while *next == Next::Continue {
        let (used, message) = match reader.next(&mut buf[at..]) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(violation) => {
                conn.borrow_mut()
                    .queue_close(violation.code, violation.reason);
                *next = Next::FlushAndEnd;
                break;
            }
        };
        at += used;
        match message {
            None => {}
            Some(Message::Text(text)) => {
                // The session may subscribe or unsubscribe: no borrow of the socket is held here.
                let mut subscriptions = Subscriptions {
                    table: &shard.bindings,
                    conn,
                    now: shard.clock(),
                };
                match session.on_text(text, &mut subscriptions) {
                    Reply::None => {}
                    Reply::Text(reply) => conn
                        .borrow_mut()
                        .queue(Bytes::from(encode::text(reply.as_bytes()))),
                    Reply::Close(code, reason) => {
                        conn.borrow_mut().queue_close(code, &reason);
                        *next = Next::FlushAndEnd;
                    }
                    Reply::Later(answer) => {
                        // A task of its own, alive only while the answer is pending: the
                        // connection's own future stays as small as an idle socket needs.
                        let conn = conn.clone();
                        monoio::spawn(async move {
                            let mut reply = answer.await;
                            while let Reply::Later(next) = reply {
                                reply = next.await;
                            }
                            let mut conn = conn.borrow_mut();
                            match reply {
                                Reply::Text(text) => {
                                    conn.queue(Bytes::from(encode::text(text.as_bytes())))
                                }
                                Reply::Close(code, reason) => conn.close_now(code, &reason),
                                Reply::None | Reply::Later(_) => {}
                            }
                        });
                    }
                }
            }
            Some(Message::Ping(payload)) => {
                conn.borrow_mut().queue(Bytes::from(encode::pong(payload)))
            }
            Some(Message::Pong(_)) => {}
            Some(Message::Close(status)) => {
                // Echo the client's code (RFC 6455 5.5.1), unless we had already sent ours.
                let code = status.map_or(CloseCode::NORMAL, |(code, _)| CloseCode(code));
                conn.borrow_mut().queue_close(code, "");
                *next = Next::FlushAndEnd;
            }
        }
        reader.release();
    }
    at
}

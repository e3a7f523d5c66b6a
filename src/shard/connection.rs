//! One WebSocket connection on its shard, from the first byte of the handshake to the close.
//!
//! Lifecycle: read the upgrade request (bounded, with a deadline) -> the dialect's
//! [`SessionFactory`] accepts or refuses -> `101` -> the frame loop -> close. The loop waits for
//! readiness, never with a read buffer of its own: bytes go into the shard's scratch buffer, and
//! only a frame split across reads is copied into a per-socket buffer until it completes.
//!
//! A protocol violation ends this connection and nothing else: the close frame with the RFC's code
//! is sent and the socket closed. Shutdown, keepalive and (later) fan-out reach the connection
//! through its [`Conn`] in the shard registry, which holds its outbound queue.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use monoio::net::TcpStream;

use super::bindings::Subscriptions;
use super::control::Counters;
use super::io::{self, Flushed};
use super::outbound::Outbound;
use super::runtime::ShardContext;
use super::session::{Reply, Session};
use crate::ws::frame::{encode, Message, Reader};
use crate::ws::{handshake, CloseCode};

/// A client must finish its upgrade request within this time.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Reads per readiness event before other sockets get their turn.
const READS_PER_WAKEUP: usize = 8;

/// A live socket as the rest of its shard sees it (registry, shutdown, fan-out).
pub struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    fd: RawFd,
    pub(crate) outbound: Outbound,
    /// A close frame has been queued: nothing else will be.
    closing: bool,
    /// End the connection as soon as the queue is written (do not wait for the client's close).
    end_after_flush: bool,
    /// Shard clock second at which the client was last heard from (any bytes).
    pub(crate) last_heard: u32,
    /// Shard clock second of the last keepalive ping.
    pub(crate) last_ping: u32,
    /// Shard clock second at which the session's credentials expire (0: never); the keepalive
    /// sweep closes the socket with 4001 then.
    pub(crate) expires_at: u32,
    /// The connection task, waiting for output to send.
    writer: Option<Waker>,
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
    /// Queues a frame (not subject to the slow-consumer bound) and wakes the writer.
    pub fn queue(&mut self, frame: Bytes) {
        if !self.closing {
            self.outbound.push_control(frame);
            self.wake_writer();
        }
    }

    /// Queues the close frame; the connection ends once it is sent (and, when the server
    /// initiated it politely, once the client answers or the shard's deadline passes).
    pub fn queue_close(&mut self, code: CloseCode, reason: &str) {
        if !self.closing {
            self.outbound
                .push_control(Bytes::from(encode::close(code, reason)));
            self.closing = true;
            self.wake_writer();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Closes without waiting for the client's answer (idle timeout, slow consumer).
    pub(crate) fn close_now(&mut self, code: CloseCode, reason: &str) {
        self.queue_close(code, reason);
        self.end_after_flush = true;
        self.wake_writer();
    }

    /// Writes what is queued right away; if the socket cannot take it all, wakes the connection
    /// task, which waits for writability. Called by the delivery loop after each batch.
    pub(crate) fn flush_or_wake(&mut self) {
        match io::flush(self.fd, &mut self.outbound) {
            Ok(Flushed::All) if self.outbound.lagged() == 0 => {}
            _ => self.wake_writer(),
        }
    }

    /// Forces the connection task out of its wait (end of stream): the last resort of shutdown.
    pub(crate) fn cut(&self) {
        io::shutdown(self.fd);
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

/// Why the frame loop woke up.
enum Wake {
    /// The socket is readable.
    Input,
    /// Output to send, or room to send it.
    Output,
    /// The socket failed.
    Gone,
}

impl Wake {
    fn from_readable(ready: std::io::Result<()>) -> Wake {
        if ready.is_ok() {
            Wake::Input
        } else {
            Wake::Gone
        }
    }

    fn from_other(ready: std::io::Result<()>) -> Wake {
        if ready.is_ok() {
            Wake::Output
        } else {
            Wake::Gone
        }
    }
}

/// How the frame loop goes on after a batch of input.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    /// Send what is queued (a close frame) and end.
    FlushAndEnd,
    /// End now: the peer is gone.
    End,
}

pub(crate) async fn run(stream: TcpStream, peer: SocketAddr, shard: Rc<ShardContext>) {
    let fd = stream.as_raw_fd();
    if io::set_nonblocking(fd).is_err() {
        return;
    }
    // Each phase is its own heap future, freed when it ends: inline, the handshake's state would
    // stay part of every idle connection's task (an async fn is as large as its largest await
    // point), which costs more than the socket's whole steady state.
    let Some((mut session, leftover)) = Box::pin(upgrade(&stream, fd, peer, &shard)).await else {
        return;
    };
    let conn = Rc::new(RefCell::new(Conn {
        id: shard.next_socket_id(),
        peer,
        connected_at: SystemTime::now(),
        fd,
        outbound: Outbound::new(
            shard.config.outbound_queue_bytes,
            shard.config.slow_consumer,
        ),
        closing: false,
        end_after_flush: false,
        last_heard: shard.clock(),
        last_ping: shard.clock(),
        expires_at: 0,
        writer: None,
        bindings: Vec::new(),
        labels: None,
    }));
    let id = conn.borrow().id;
    if let Some(left) = session.expires_in() {
        Subscriptions {
            table: &shard.bindings,
            conn: &conn,
            now: shard.clock(),
        }
        .set_expiry(Some(left));
    }
    shard.sockets.borrow_mut().insert(id, conn.clone());
    Box::pin(frames(
        &stream,
        fd,
        &conn,
        &shard,
        session.as_mut(),
        leftover,
    ))
    .await;
    // Leave every binding and unregister before the stream (and its descriptor) is dropped, so
    // that nothing on this shard can act on a descriptor number the kernel may hand out again.
    shard.bindings.borrow_mut().unsubscribe_all(&conn);
    shard.sockets.borrow_mut().remove(&id);
}

/// The handshake phase: the request, the dialect's decision, the `101`. Returns the session and
/// any bytes that arrived behind the request.
async fn upgrade(
    stream: &TcpStream,
    fd: RawFd,
    peer: SocketAddr,
    shard: &ShardContext,
) -> Option<(Box<dyn Session>, Vec<u8>)> {
    let (request, leftover) = read_request(stream, fd, shard).await?;
    match shard.factory.open(&request, peer) {
        Ok(session) => write_all(stream, fd, handshake::accept(&request))
            .await
            .then_some((session, leftover)),
        Err(refusal) => {
            Counters::add(&shard.counters.handshakes_refused, 1);
            let answer = handshake::refuse(refusal.status, refusal.content_type, &refusal.body);
            write_all(stream, fd, answer).await;
            None
        }
    }
}

/// Reads the upgrade request. `None` when the client left, was too slow, or was refused (the
/// `400` has then been sent).
async fn read_request(
    stream: &TcpStream,
    fd: RawFd,
    shard: &ShardContext,
) -> Option<(handshake::Request, Vec<u8>)> {
    let deadline = Instant::now() + HANDSHAKE_DEADLINE;
    // Read through the shard's scratch buffer: a buffer of our own here would be part of this
    // task's state for the whole life of the connection (an async fn is as large as its largest
    // await point).
    let mut buf = Vec::new();
    loop {
        monoio::select! {
            ready = stream.readable(false) => ready.ok()?,
            _ = monoio::time::sleep_until(deadline.into()) => return None,
        }
        let read = {
            let mut scratch = shard.scratch.borrow_mut();
            let room = (handshake::MAX_REQUEST_BYTES + 1)
                .saturating_sub(buf.len())
                .max(1);
            let limit = room.min(scratch.len());
            io::read(fd, &mut scratch[..limit]).inspect(|n| buf.extend_from_slice(&scratch[..*n]))
        };
        match read {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        match handshake::parse(&buf) {
            Ok(None) => continue,
            Ok(Some((request, used))) => return Some((request, buf.split_off(used))),
            Err(refusal) => {
                Counters::add(&shard.counters.handshakes_invalid, 1);
                write_all(stream, fd, handshake::refuse_bad_request(&refusal)).await;
                return None;
            }
        }
    }
}

/// Writes `bytes` completely (handshake answers), waiting for writability as needed.
async fn write_all(stream: &TcpStream, fd: RawFd, bytes: Vec<u8>) -> bool {
    let mut queue = Outbound::new(usize::MAX, Default::default());
    queue.push_control(Bytes::from(bytes));
    loop {
        match io::flush(fd, &mut queue) {
            Ok(Flushed::All) => return true,
            Ok(Flushed::WouldBlock) => {
                if stream.writable(false).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// Resolves once the connection has output queued (registering the task to be woken otherwise).
async fn output_queued(conn: &RefCell<Conn>) {
    poll_fn(|cx| {
        let mut conn = conn.borrow_mut();
        if conn.outbound.is_empty() {
            conn.writer = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}

async fn frames(
    stream: &TcpStream,
    fd: RawFd,
    conn: &Rc<RefCell<Conn>>,
    shard: &ShardContext,
    session: &mut dyn Session,
    mut partial: Vec<u8>,
) {
    let mut reader = Reader::new(shard.config.max_message_bytes);
    let mut next = Next::Continue;

    // Bytes that arrived right behind the upgrade request.
    if !partial.is_empty() {
        let mut bytes = std::mem::take(&mut partial);
        let used = handle_input(&mut reader, &mut bytes, conn, shard, session, &mut next);
        partial = bytes.split_off(used);
    }

    // Keepalive is not here: one sweep per shard pings and times out every socket (see
    // `runtime::keepalive`), so that a connection carries no timer of its own.
    loop {
        let flushed = io::flush(fd, &mut conn.borrow_mut().outbound);
        match flushed {
            Err(_) => return,
            Ok(Flushed::All) if next != Next::Continue || conn.borrow().end_after_flush => return,
            Ok(Flushed::All) => {
                // Drained after dropping events for this socket: tell the client how many.
                let lag = conn.borrow_mut().outbound.take_lag();
                if let Some(notice) = lag.and_then(|skipped| session.lag_notice(skipped)) {
                    conn.borrow_mut()
                        .queue(Bytes::from(encode::text(notice.as_bytes())));
                    continue;
                }
            }
            _ => {}
        }
        if next == Next::End {
            return;
        }
        // Two select sites rather than one with preconditions: each await point holds only its
        // own futures, so the task is as large as the larger site, not the sum of both.
        let woke = if matches!(flushed, Ok(Flushed::WouldBlock)) {
            monoio::select! {
                ready = stream.readable(false) => Wake::from_readable(ready),
                ready = stream.writable(false) => Wake::from_other(ready),
            }
        } else {
            monoio::select! {
                ready = stream.readable(false) => Wake::from_readable(ready),
                _ = output_queued(conn) => Wake::Output,
            }
        };
        match woke {
            Wake::Gone => return,
            Wake::Output => {}
            Wake::Input => {
                next = read_available(fd, shard, &mut reader, &mut partial, conn, session);
                conn.borrow_mut().last_heard = shard.clock();
            }
        }
        // Closing on the server's initiative (shutdown): the loop goes on until the client's close
        // answer arrives (handled as input) or the shard cuts the socket.
    }
}

/// Reads what the socket has and handles every complete frame in it.
fn read_available(
    fd: RawFd,
    shard: &ShardContext,
    reader: &mut Reader,
    partial: &mut Vec<u8>,
    conn: &Rc<RefCell<Conn>>,
    session: &mut dyn Session,
) -> Next {
    let mut next = Next::Continue;
    let mut scratch = shard.scratch.borrow_mut();
    for _ in 0..READS_PER_WAKEUP {
        let n = match io::read(fd, &mut scratch) {
            Ok(0) => return Next::End,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => return Next::End,
        };
        if partial.is_empty() {
            // The common case: whole frames straight out of the shard's scratch buffer.
            let used = handle_input(reader, &mut scratch[..n], conn, shard, session, &mut next);
            partial.extend_from_slice(&scratch[used..n]);
        } else {
            partial.extend_from_slice(&scratch[..n]);
            let used = handle_input(reader, partial, conn, shard, session, &mut next);
            partial.drain(..used);
            if partial.is_empty() {
                *partial = Vec::new();
            }
        }
        if next != Next::Continue || n < scratch.len() {
            break;
        }
    }
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

//! One WebSocket connection on its shard, from the first byte of the handshake to the close.
//!
//! A connection is a record in the shard's registry, driven by the shard's turn (see
//! `turn.rs`): no task, no future and no buffer of its own while it waits. Lifecycle: accepted
//! and registered for readiness -> the upgrade request is read (bounded; the keepalive sweep cuts
//! it after [`HANDSHAKE_SECS`]) -> the dialect's [`SessionFactory`] accepts or refuses -> `101` ->
//! frames -> close. Bytes are read into the shard's scratch buffer; only a request or frame split
//! across reads is copied into a per-socket buffer until it completes.
//!
//! A protocol violation ends this connection and nothing else: the close frame with the RFC's code
//! is sent and the socket closed; from then on (and from a client's own close) its input is read
//! only to be discarded, never parsed. Everything a client can make the shard hold is bounded:
//! the request or frame being assembled (handshake cap, `max_message_bytes`), and its outbound
//! queue, replies and control frames included: while that queue is over `outbound_queue_bytes`
//! (a client that sends but does not read) the socket is not read at all, so it cannot ask for
//! more, and if it stays so for `blocked_close` it is closed with 1008. Shutdown, keepalive and fan-out reach the connection through its
//! [`Conn`], which holds its outbound queue; whatever they queue is written by the shard's turn (or
//! at once by the delivery loop), never by a task of the socket's own.
//!
//! [`SessionFactory`]: super::session::SessionFactory

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

use bytes::Bytes;

use super::backend::SocketIo;
use super::bindings::Subscriptions;
use super::conn::{Conn, Stage, NOT_ADMITTED};
use super::context::ShardContext;
use super::control::Counters;
use super::executor;
use super::io::{self, Flushed};
use super::limits::TOO_FAST;
use super::outbound::Outbound;
use super::poller::{Ready, Token};
use super::session::{Reply, Session};
use super::sockets::{Input, Socket};
use super::tls::{Received, TlsLayer, HANDSHAKE_RECORD};
use super::uring::Completion;
use crate::proxy::{self, Preface};
use crate::ws::frame::{encode, Message, Reader};
use crate::ws::{handshake, CloseCode};

/// A client must finish its upgrade request within this many shard-clock seconds (the keepalive
/// sweep cuts it between this and two seconds more).
pub(crate) const HANDSHAKE_SECS: u32 = 10;
/// Reads per readiness report before other sockets get their turn (level-triggered readiness
/// reports the socket again).
const READS_PER_WAKEUP: usize = 8;

/// How a socket goes on after a batch of input.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    /// Send what is queued (a close frame, a refusal) and end.
    FlushAndEnd,
    /// End now: the peer is gone.
    End,
}

/// Takes a freshly accepted, non-blocking socket into the shard: registry and socket I/O
/// (readiness, or its receive). Nothing is parsed yet; the request is read when it arrives. A
/// connection over a limit is taken too, to be answered `429`/`503` once its request is in.
/// `tls`: it came in on the wss listener, and its TLS handshake comes first (within the same
/// handshake deadline).
pub(crate) fn accept_fd(shard: &ShardContext, fd: RawFd, peer: SocketAddr, tls: bool) {
    io::set_nodelay(fd);
    let tls = match (tls, &shard.tls) {
        (false, _) => None,
        (true, Some(server)) => match TlsLayer::new(server.config()) {
            Ok(layer) => Some(Box::new(layer)),
            Err(e) => {
                tracing::warn!("wss: cannot start a TLS connection: {e}");
                io::close(fd);
                return;
            }
        },
        (true, None) => {
            io::close(fd);
            return;
        }
    };
    let now = shard.clock();
    let mut sockets = shard.sockets.borrow_mut();
    let token = sockets.next_token();
    let outbound = Outbound::new(
        shard.config.outbound_queue_bytes,
        shard.config.slow_consumer,
    );
    let mut conn = Conn::accepted(fd, token, peer, outbound, now);
    conn.outbound.tls = tls;
    if shard.io.register(&mut conn).is_err() {
        // Nothing registered: the descriptor is closed with the record.
        return;
    }
    conn.id = shard.next_socket_id();
    // A trusted proxy's connection is counted for the client its header names, once read.
    let trusted = shard.config.trusted_proxies.contains(peer.ip());
    conn.stage = Stage::Preface { trusted };
    conn.refusal = if trusted {
        NOT_ADMITTED
    } else {
        shard.limits.admit(peer.ip()).status()
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
    if conn.is_upgraded() {
        return false;
    }
    if now.saturating_sub(conn.opened) > HANDSHAKE_SECS {
        conn.cut();
    }
    true
}

/// A readiness report for a socket: read and handle its input, then write what is queued.
pub(crate) fn on_ready(shard: &ShardContext, ready: Ready) {
    if ready.input && !handle_readable(shard, ready.token, None) {
        return;
    }
    service(shard, ready.token);
}

/// A completion of the socket's io_uring operations: data received (handled, its buffer given
/// back), end of stream, or a send done (the queue advanced and the rest sent).
pub(crate) fn on_completion(shard: &ShardContext, completion: Completion) {
    let SocketIo::Uring(uring) = &shard.io else {
        return;
    };
    match completion {
        Completion::Received {
            token,
            result,
            buffer,
            ended,
        } => {
            let mut alive = true;
            if let Some(buffer) = buffer {
                if result > 0 {
                    // SAFETY: the buffer comes from this completion and is given back only
                    // below, after the slice is gone.
                    let data = unsafe { uring.received(buffer, result as usize) };
                    alive = handle_readable(shard, token, Some(data));
                }
                uring.give_back(buffer);
                if alive {
                    // Write what the input produced (the upgrade's answer, replies, pongs).
                    service(shard, token);
                }
            }
            let finished = result == 0
                || (result < 0 && -result != libc::ENOBUFS && -result != libc::ECANCELED);
            if finished {
                end(shard, token);
                return;
            }
            if ended && alive {
                if let Some(socket) = shard.sockets.borrow().get(token) {
                    let mut conn = socket.conn.borrow_mut();
                    conn.recv_armed = false;
                    if !conn.read_paused {
                        uring.rearm_later(token);
                    }
                }
            }
        }
        Completion::Sent {
            token,
            result,
            short,
        } => {
            {
                let sockets = shard.sockets.borrow();
                let Some(socket) = sockets.get(token) else {
                    return;
                };
                let mut conn = socket.conn.borrow_mut();
                conn.send_in_flight = false;
                if result >= 0 {
                    conn.outbound.advance(result as usize);
                }
                if short && result >= 0 {
                    // The send buffer is full: the rest goes when there is room, all at once.
                    uring.wait_writable(&mut conn);
                    return;
                }
            }
            if result < 0 {
                end(shard, token);
            } else {
                service(shard, token);
            }
        }
        Completion::Writable { token } => {
            match shard.sockets.borrow().get(token) {
                Some(socket) => socket.conn.borrow_mut().send_in_flight = false,
                None => return,
            }
            service(shard, token);
        }
        Completion::Accepted { .. } | Completion::Nothing => {}
    }
}

/// Arms the receive of a socket whose previous one ended (io_uring).
pub(crate) fn rearm(shard: &ShardContext, token: Token) {
    if let (SocketIo::Uring(uring), Some(socket)) = (&shard.io, shard.sockets.borrow().get(token)) {
        let mut conn = socket.conn.borrow_mut();
        if !conn.read_paused {
            uring.arm_recv(&mut conn);
        }
    }
}

/// After a delivery batch: see [`SocketIo::flush_now`].
pub(crate) fn after_delivery(shard: &ShardContext, conn: &RefCell<Conn>) {
    shard.io.flush_now(&mut conn.borrow_mut());
}

/// Handles the socket's input: what it has `received` (io_uring), or what can be read now
/// (epoll); false once the connection has ended.
fn handle_readable(shard: &ShardContext, token: Token, received: Option<&mut [u8]>) -> bool {
    let next = {
        let mut sockets = shard.sockets.borrow_mut();
        let Some(socket) = sockets.get_mut(token) else {
            return false;
        };
        read_available(shard, socket, received)
    };
    match next {
        Next::Continue => {}
        Next::FlushAndEnd => {
            if let Some(socket) = shard.sockets.borrow().get(token) {
                socket.conn.borrow_mut().set_ending();
            }
        }
        Next::End => {
            end(shard, token);
            return false;
        }
    }
    true
}

/// Writes what the socket has queued; arms write interest if the send buffer is full, resumes
/// reading once a blocked queue has drained (and handles the input it had left unread), sends
/// the lag notice once a slow socket drains, and ends the connection once it is done.
pub(crate) fn service(shard: &ShardContext, token: Token) {
    for _ in 0..READS_PER_WAKEUP {
        let outcome = match shard.sockets.borrow().get(token) {
            Some(socket) => flush(shard, socket),
            None => return,
        };
        match outcome {
            Serviced::Done => return end(shard, token),
            Serviced::Waiting => return,
            // Frames that arrived before the pause may be waiting, with nothing more to come
            // from the client to report the socket readable again.
            Serviced::Resumed => {
                if !handle_readable(shard, token, None) {
                    return;
                }
            }
        }
    }
    // A client that reads as fast as it sends keeps this going: give the other sockets their
    // turn and come back to it from the service list.
    if let Some(socket) = shard.sockets.borrow().get(token) {
        socket.conn.borrow_mut().schedule();
    }
}

/// What [`flush`] left the socket in.
#[derive(PartialEq, Eq)]
enum Serviced {
    Waiting,
    /// Reading had been paused and the queue has drained below half its bound.
    Resumed,
    /// The connection is over.
    Done,
}

/// [`service`] for one socket.
fn flush(shard: &ShardContext, socket: &Socket) -> Serviced {
    let mut conn = socket.conn.borrow_mut();
    conn.scheduled = false;
    loop {
        let flushed = match shard.io.flush(&mut conn) {
            Err(_) => return Serviced::Done,
            Ok(flushed) => flushed,
        };
        let resume = conn.read_paused
            && !conn.is_ending()
            && !conn.holding()
            && conn.outbound.queued_bytes() <= conn.outbound.limit() / 2;
        let output = flushed == Flushed::WouldBlock;
        let input = !conn.read_paused || resume;
        if (output != conn.write_armed || resume)
            && shard.io.set_interest(&mut conn, input, output).is_err()
        {
            return Serviced::Done;
        }
        match flushed {
            Flushed::WouldBlock | Flushed::InFlight if resume => return Serviced::Resumed,
            Flushed::WouldBlock | Flushed::InFlight => return Serviced::Waiting,
            Flushed::All => {
                if conn.is_ending() {
                    return Serviced::Done;
                }
                if resume {
                    return Serviced::Resumed;
                }
                // Drained after dropping events for this socket: tell the client how many.
                let session = socket.input.session.as_deref();
                let notice = conn
                    .outbound
                    .take_lag()
                    .and_then(|skipped| session?.lag_notice(skipped));
                match notice {
                    Some(notice) if conn.stage == Stage::Open => {
                        conn.queue(Bytes::from(encode::text(notice.as_bytes())))
                    }
                    _ => {
                        // Replies, pongs and pings go out through here, and most sockets are
                        // idle between them: they keep no queue buffer.
                        conn.outbound.release_if_empty();
                        return Serviced::Waiting;
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
    // Nothing more is written: the queue and a wss socket's TLS state go first, so that nothing
    // is encrypted for a socket that is closing (no backlog, no close_notify).
    conn.outbound.clear();
    conn.outbound.tls = None;
    conn.set_ending();
    if conn.refusal == 0 {
        shard.limits.release(conn.peer.ip());
    }
    let fd = std::mem::replace(&mut conn.fd, -1);
    // Closing the descriptor also takes it out of the readiness set; on io_uring the socket is
    // shut down first, which completes its receive and any send in flight.
    shard.io.close(fd, token);
}

/// Handles the socket's input: frames left from before a pause, then what it has `received`
/// (io_uring) or what can be read now (epoll): the upgrade request or every complete frame.
fn read_available(shard: &ShardContext, socket: &mut Socket, received: Option<&mut [u8]>) -> Next {
    let Socket { conn, input } = socket;
    let mut next = Next::Continue;
    let mut heard = false;
    // A message the session held comes back first, once its time has come.
    let held = conn.borrow_mut().take_held();
    // Held again: what follows waits (`over_bound` says so) and reading pauses below.
    if let (Some(text), Some(session)) = (held, input.session.as_mut()) {
        if !conn.borrow().is_closing() {
            on_text(shard, conn, session.as_mut(), &text, &mut next);
        }
    }
    if input.session.is_some() && !input.partial.is_empty() && !conn.borrow().is_closing() {
        // Complete frames may be waiting from before a pause.
        let used = handle_buffered(shard, conn, input, &mut next);
        input.partial.drain(..used);
        if input.partial.is_empty() {
            input.partial = Vec::new();
        }
    }
    match received {
        Some(data) => {
            heard = true;
            feed(shard, conn, input, data, &mut next);
        }
        None if shard.io.reads_on_readiness() => {
            let fd = conn.borrow().fd;
            let mut scratch = shard.scratch.borrow_mut();
            for _ in 0..READS_PER_WAKEUP {
                match pause_if_over_bound(shard, &mut conn.borrow_mut()) {
                    Err(()) => return Next::End,
                    Ok(true) => break,
                    Ok(false) => {}
                }
                let n = match io::read(fd, &mut scratch) {
                    Ok(0) => return Next::End,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => return Next::End,
                };
                heard = true;
                let more = feed(shard, conn, input, &mut scratch[..n], &mut next);
                if !more || n < scratch.len() {
                    break;
                }
            }
        }
        None => {}
    }
    if heard {
        conn.borrow_mut().last_heard = shard.clock();
    }
    // The last read may have filled the bound with frames still unhandled in `partial`: pause,
    // so that the drain that makes room comes back for them (no new bytes may ever arrive to
    // report the socket readable).
    if next == Next::Continue && pause_if_over_bound(shard, &mut conn.borrow_mut()).is_err() {
        return Next::End;
    }
    next
}

/// Bytes just read from the socket. On a wss socket they are decrypted first (what the TLS
/// handshake answers is queued) and the plaintext goes on as a plain socket's bytes do; a plain
/// socket whose client starts a TLS handshake is refused with a TLS alert. Returns whether
/// reading should go on now.
fn feed(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    input: &mut Input,
    data: &mut [u8],
    next: &mut Next,
) -> bool {
    let stage = conn.borrow().stage;
    if let Stage::Preface { trusted } = stage {
        return read_preface(shard, conn, input, data, next, trusted);
    }
    let received = {
        let mut guard = conn.borrow_mut();
        let c = &mut *guard;
        let Some(tls) = c.outbound.tls.as_mut() else {
            let tls_hello = c.stage == Stage::Handshake
                && input.partial.is_empty()
                && data.first() == Some(&HANDSHAKE_RECORD);
            drop(guard);
            if tls_hello {
                return refuse_tls(shard, conn, next);
            }
            return take_bytes(shard, conn, input, data, next);
        };
        let mut plain = shard.plain.borrow_mut();
        plain.clear();
        let mut wire = Vec::new();
        let received = tls.receive(data, &mut plain, &mut wire);
        // Handshake records, session tickets, an alert: already wire bytes.
        c.outbound.push_wire(Bytes::from(wire));
        received
    };
    match received {
        Received::Open | Received::PeerClosed => {}
        Received::PlainHttp => {
            Counters::add(&shard.counters.handshakes_tls_failed, 1);
            // Not encrypted: the client speaks plain HTTP, and this is what it can read.
            let answer = handshake::refuse(
                400,
                "text/plain; charset=utf-8",
                "this port speaks TLS: connect with wss://\n",
            );
            conn.borrow_mut().outbound.push_wire(Bytes::from(answer));
            *next = Next::FlushAndEnd;
            return false;
        }
        Received::Failed(e) => {
            if !conn.borrow().is_upgraded() {
                Counters::add(&shard.counters.handshakes_tls_failed, 1);
            }
            tracing::debug!("socket {}: TLS: {e}", conn.borrow().id);
            *next = Next::FlushAndEnd;
            return false;
        }
    }
    let mut plain = shard.plain.borrow_mut();
    let more = plain.is_empty() || take_bytes(shard, conn, input, &mut plain, next);
    if received == Received::PeerClosed {
        // close_notify: nothing more will come; what is queued still goes out.
        if *next == Next::Continue {
            *next = Next::FlushAndEnd;
        }
        return false;
    }
    more
}

/// The connection's first bytes, before TLS and HTTP: a PROXY protocol header (v1 or v2) from a
/// trusted proxy names the client, and the connection is counted for that client; no header is
/// a direct connection. A header from any other peer, a malformed one, or one past the bound
/// closes the connection at once. Returns whether reading should go on now.
fn read_preface(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    input: &mut Input,
    data: &mut [u8],
    next: &mut Next,
    trusted: bool,
) -> bool {
    let buffered = !input.partial.is_empty();
    if buffered {
        input.partial.extend_from_slice(data);
    }
    let bytes: &[u8] = if buffered { &input.partial } else { data };
    let (used, source) = match proxy::parse(bytes) {
        Preface::Incomplete => {
            // At most proxy::MAX_HEADER_BYTES: longer is Invalid.
            if !buffered {
                input.partial.extend_from_slice(data);
            }
            return true;
        }
        Preface::Absent => (0, None),
        Preface::Header { len, source } if trusted => (len, source),
        Preface::Header { .. } => {
            return refuse_preface(
                shard,
                conn,
                input,
                next,
                "PROXY header from an untrusted peer",
            )
        }
        Preface::Invalid(why) => return refuse_preface(shard, conn, input, next, why),
    };
    {
        let mut c = conn.borrow_mut();
        if trusted {
            if let Some(client) = source {
                c.peer = client;
            }
            c.refusal = shard.limits.admit(c.peer.ip()).status();
        }
        c.stage = Stage::Handshake;
    }
    if buffered {
        let mut rest = std::mem::take(&mut input.partial);
        rest.drain(..used);
        rest.is_empty() || feed(shard, conn, input, &mut rest, next)
    } else {
        let rest = &mut data[used..];
        rest.is_empty() || feed(shard, conn, input, rest, next)
    }
}

fn refuse_preface(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    input: &mut Input,
    next: &mut Next,
    why: &str,
) -> bool {
    Counters::add(&shard.counters.handshakes_proxy_refused, 1);
    let c = conn.borrow();
    tracing::debug!("socket {} from {}: {why}; closed", c.id, c.peer);
    input.partial = Vec::new();
    *next = Next::End;
    false
}

/// A TLS client on the plain listener: a fatal `handshake_failure` alert (which a TLS client
/// reports as such, where an HTTP answer would read as a garbled record), then the end.
fn refuse_tls(shard: &ShardContext, conn: &Rc<RefCell<Conn>>, next: &mut Next) -> bool {
    /// Alert record, TLS 1.0 record version (what a server not yet agreed on one sends), fatal,
    /// handshake_failure (40).
    const ALERT: &[u8] = &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 40];
    Counters::add(&shard.counters.handshakes_tls_failed, 1);
    conn.borrow_mut()
        .outbound
        .push_control(Bytes::from_static(ALERT));
    *next = Next::FlushAndEnd;
    false
}

/// Bytes just read: the upgrade request or frames, parsed unless the connection is ending
/// (then they are discarded). Returns whether reading should go on now.
fn take_bytes(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    input: &mut Input,
    data: &mut [u8],
    next: &mut Next,
) -> bool {
    if conn.borrow().is_ending() || *next != Next::Continue {
        // After a violation, the client's close or a refusal: read only to see the end of the
        // stream; nothing is parsed and nothing kept.
        input.partial = Vec::new();
        *next = Next::FlushAndEnd;
        return true;
    }
    if input.session.is_none() {
        input.partial.extend_from_slice(data);
        *next = upgrade(shard, conn, input);
    } else if let Input {
        session: Some(session),
        reader,
        partial,
    } = input
    {
        if partial.is_empty() {
            // The common case: whole frames straight out of the buffer read into.
            let used = handle_input(reader, data, conn, shard, session.as_mut(), next);
            partial.extend_from_slice(&data[used..]);
        } else {
            partial.extend_from_slice(data);
            let used = handle_input(reader, partial, conn, shard, session.as_mut(), next);
            partial.drain(..used);
            if partial.is_empty() {
                *partial = Vec::new();
            }
        }
    }
    if *next != Next::Continue {
        // Nothing after the violation or close is parsed or kept.
        input.partial = Vec::new();
        return false;
    }
    true
}

/// Stops reading a socket whose output queue is at its bound (the client sends but does not
/// read): it is read again once the queue drains, and the keepalive sweep closes it if it stays
/// so. `Ok(true)` when reading is (now) paused; `Err` when the readiness set refused.
fn pause_if_over_bound(shard: &ShardContext, conn: &mut Conn) -> Result<bool, ()> {
    if conn.read_paused {
        return Ok(true);
    }
    if !conn.is_parsing() || !conn.over_bound() {
        return Ok(false);
    }
    let output = conn.write_armed;
    shard.io.set_interest(conn, false, output).map_err(|_| ())?;
    Ok(true)
}

/// Handles the complete frames in `input.partial` (left from before a pause); returns how many
/// bytes they took.
fn handle_buffered(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    input: &mut Input,
    next: &mut Next,
) -> usize {
    let Input {
        session: Some(session),
        reader,
        partial,
    } = input
    else {
        return 0;
    };
    handle_input(reader, partial, conn, shard, session.as_mut(), next)
}

/// One text message to the session, and its reply queued (or awaited, or held); true when the
/// session held it (`Reply::Hold`).
fn on_text(
    shard: &ShardContext,
    conn: &Rc<RefCell<Conn>>,
    session: &mut dyn Session,
    text: &str,
    next: &mut Next,
) -> bool {
    // The session may subscribe or unsubscribe: no borrow of the socket is held here.
    let mut subscriptions = Subscriptions {
        table: &shard.bindings,
        conn,
        now: shard.clock(),
        instance: shard.instance,
        last_offset: shard.last_offset.get(),
    };
    match session.on_text(text, &mut subscriptions) {
        Reply::None => {}
        Reply::Text(reply) => conn
            .borrow_mut()
            .queue(Bytes::from(encode::text(reply.as_bytes()))),
        Reply::Resumed(reply, frames) => queue_resumed(&mut conn.borrow_mut(), reply, frames),
        Reply::Close(code, reason) => {
            conn.borrow_mut().queue_close(code, &reason);
            *next = Next::FlushAndEnd;
        }
        Reply::Hold(wait) => {
            // Kept, and the socket not read, until `wait` has passed; then the service list
            // comes back for it (`read_available` hands the message over again first).
            let at = std::time::Instant::now() + wait;
            {
                let mut conn = conn.borrow_mut();
                let labels = conn.labels.get_or_insert_with(Default::default);
                labels.held = Some((text.to_string(), at));
            }
            let conn = conn.clone();
            executor::spawn(async move {
                executor::sleep(wait).await;
                conn.borrow_mut().schedule();
            });
            return true;
        }
        Reply::Later(answer) => {
            // A task of its own, alive only while the answer is pending: the connection's own
            // future stays as small as an idle socket needs.
            let conn = conn.clone();
            executor::spawn(async move {
                let mut reply = answer.await;
                while let Reply::Later(next) = reply {
                    reply = next.await;
                }
                let mut conn = conn.borrow_mut();
                match reply {
                    Reply::Text(text) => conn.queue(Bytes::from(encode::text(text.as_bytes()))),
                    Reply::Resumed(text, frames) => queue_resumed(&mut conn, text, frames),
                    Reply::Close(code, reason) => conn.close_now(code, &reason),
                    Reply::None | Reply::Later(_) | Reply::Hold(_) => {}
                }
            });
        }
    }
    false
}

/// A resume's reply, then its replayed frames: like replies, never dropped.
fn queue_resumed(conn: &mut Conn, reply: String, frames: Vec<Bytes>) {
    conn.queue(Bytes::from(encode::text(reply.as_bytes())));
    for frame in frames {
        conn.queue(frame);
    }
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
    let refusal = conn.borrow().refusal;
    if refusal == TOO_FAST {
        // A reconnect storm: come back in a second or so (jittered by the client's own retry).
        Counters::add(&shard.counters.handshakes_connect_rate, 1);
        let answer = handshake::refuse_with(
            503,
            "text/plain; charset=utf-8",
            "too many new connections on this node; retry\n",
            "Retry-After: 1\r\n",
        );
        conn.borrow_mut().outbound.push_control(Bytes::from(answer));
        return Next::FlushAndEnd;
    }
    if refusal != 0 {
        let (counter, body) = if refusal == 429 {
            (
                &shard.counters.handshakes_limited_address,
                "too many connections from this address\n",
            )
        } else {
            (
                &shard.counters.handshakes_limited_node,
                "too many connections on this node\n",
            )
        };
        Counters::add(counter, 1);
        let answer = handshake::refuse(refusal, "text/plain; charset=utf-8", body);
        conn.borrow_mut().outbound.push_control(Bytes::from(answer));
        return Next::FlushAndEnd;
    }
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
        conn.stage = Stage::Open;
    }
    if let Some(left) = session.expires_in() {
        Subscriptions {
            table: &shard.bindings,
            conn,
            now: shard.clock(),
            instance: shard.instance,
            last_offset: shard.last_offset.get(),
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
        if conn.borrow().over_bound() {
            // The client has not read its earlier replies: the rest waits (bounded by one read)
            // until it does.
            break;
        }
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
            // Waiting for the client's answer to our close: only that answer matters.
            Some(Message::Text(_) | Message::Ping(_)) if conn.borrow().is_closing() => {}
            // Held: nothing more of this socket is handled until its time has come.
            Some(Message::Text(text)) if on_text(shard, conn, session, text, next) => {
                reader.release();
                break;
            }
            Some(Message::Text(_)) => {}
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

//! A shard's life beside its sockets' I/O: the once-a-second keepalive sweep (pings, idle and
//! blocked sockets, expired tokens, handshake deadlines) and the graceful end (a drain spread
//! over `drain_spread`, then `shutdown_grace`, then the cut). Calls the shard's context and
//! connection records, never the runtime.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::connection;
use super::context::ShardContext;
use super::control::Counters;
use super::executor;
use crate::ws::CloseCode;

/// The shard's keepalive sweep: every second, pings each socket whose last ping is
/// `ping_interval` old, closes (1008 `output blocked`) each one whose reading has been paused for
/// `blocked_close`, closes (1001 `idle timeout`) each one not heard from for `idle_timeout`,
/// and cuts a closing socket that stays silent that long (its close frame may sit behind output
/// the client never reads). One timer per shard instead of one per socket (a timer per socket would
/// cost more than an idle socket's whole budget); the walk costs ~10 ns per socket.
/// The clock counts whole seconds, so "silent for more than `idle_timeout` clock seconds" means
/// between the timeout and the timeout plus two seconds of real silence: never early.
pub(super) async fn keepalive(shard: Rc<ShardContext>) {
    let ping_every = shard.config.ping_interval.as_secs().max(1) as u32;
    let idle_after = shard.config.idle_timeout.as_secs().max(1) as u32;
    let blocked_after = shard.config.blocked_close.as_secs().max(1) as u32;
    let ping = bytes::Bytes::from(crate::ws::frame::encode::ping(b""));
    let position_every = shard.config.position_interval.as_secs().max(1) as u32;
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
            tell_position(&mut conn, shard.last_offset.get(), now, position_every);
        }
    }
}

/// A resuming socket is told the log's head (`{"action":"position",...}`) once every
/// `position_interval_secs` while the log moves, so that its last position stays fresh even when
/// none of the events match its bindings.
fn tell_position(conn: &mut Conn, head: Option<u64>, now: u32, every: u32) {
    let Some(head) = head else {
        return;
    };
    let Some(positions) = conn.labels.as_mut().and_then(|l| l.positions.as_mut()) else {
        return;
    };
    if positions.told.is_some_and(|told| told >= head)
        || now.saturating_sub(positions.told_at) < every
    {
        return;
    }
    positions.told = Some(head);
    positions.told_at = now;
    let (before, after) = &positions.template;
    let text = format!("{before}{}-{head}{after}", positions.epoch);
    conn.queue(bytes::Bytes::from(crate::ws::frame::encode::text(
        text.as_bytes(),
    )));
}

/// Graceful shutdown of one shard: a handshake in progress is cut; open sockets get close 1001
/// spread evenly over `drain_spread` (so that their clients do not all reconnect elsewhere in the
/// same second), then `shutdown_grace` to answer and drain; the rest is cut.
pub(super) async fn going_away(shard: &ShardContext) {
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

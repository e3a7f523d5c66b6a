//! The control plane's side of the shards: [`Registry`], the handle the API thread holds, asks
//! every shard a question through its control ring (its sockets, its counters, to close sockets
//! an operator or a revoked token names) and collects the answers; [`answer_control`] is each
//! shard's side, a task that answers on the shard's own thread. Owns nothing else; calls the
//! shard's context, records and counters, never the runtime.

use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::backend::SocketIo;
use super::context::ShardContext;
use super::control::{Control, ShardStats, SocketInfo};
use crate::fanout::{self, Consumer, Producer, Recv};
use crate::ws::CloseCode;

/// The control plane's handle on the shards: asks each one by message through its control ring.
/// One owner at a time (the rings are single-producer); `Send`, so the API thread can hold it.
pub struct Registry {
    pub(super) control: Vec<Producer<Control>>,
}

/// Answers the control plane's questions about this shard.
pub(super) async fn answer_control(
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
                                connected_at: shard.wall_time(conn.opened),
                                bindings: table.list(&conn),
                                name: labels.and_then(|l| l.name.clone()),
                                metadata: labels.and_then(|l| l.metadata.clone()),
                                filed: labels.map(|l| l.filed.clone()).unwrap_or_default(),
                            }
                        })
                        .collect();
                    let _ = reply.send(list);
                }
                Control::Revalidate(reply) => {
                    let mut closed = 0;
                    for socket in shard.sockets.borrow().iter() {
                        if socket.input.session.as_ref().is_some_and(|s| s.revoked()) {
                            let mut conn = socket.conn.borrow_mut();
                            if !conn.is_closing() {
                                conn.close_now(CloseCode::TOKEN_EXPIRED, "token revoked");
                                closed += 1;
                            }
                        }
                    }
                    let _ = reply.send(closed);
                }
                Control::Close(ids, reply) => {
                    let mut closed = Vec::new();
                    for socket in shard.sockets.borrow().iter() {
                        let mut conn = socket.conn.borrow_mut();
                        if conn.is_upgraded()
                            && !conn.is_closing()
                            && ids.contains(&(shard.instance, conn.id))
                        {
                            conn.close_now(CloseCode::CLOSED_BY_ADMIN, "closed by administrator");
                            closed.push(conn.id);
                        }
                    }
                    let _ = reply.send(closed);
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
                        handshakes_tls_failed: c.handshakes_tls_failed.get(),
                        handshakes_proxy_refused: c.handshakes_proxy_refused.get(),
                        handshakes_connect_rate: c.handshakes_connect_rate.get(),
                        drain_closed: c.drain_closed.get(),
                        handshakes_limited_address: c.handshakes_limited_address.get(),
                        handshakes_limited_node: c.handshakes_limited_node.get(),
                        closed_blocked: c.closed_blocked.get(),
                        read_paused: shard
                            .sockets
                            .borrow()
                            .iter()
                            .filter(|socket| socket.conn.borrow().is_read_paused())
                            .count(),
                        cq_overflows: match &shard.io {
                            SocketIo::Uring(uring) => uring.overflows(),
                            SocketIo::Epoll(_) => 0,
                        },
                        ring: ring.stats(),
                        delivery_latency: c.delivery_latency.borrow().clone(),
                    });
                }
            }
        }
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

    /// Closes every socket whose credential the last auth reload revoked; how many.
    pub fn revalidate(&self, timeout: Duration) -> usize {
        self.ask(timeout, Control::Revalidate).0.into_iter().sum()
    }

    /// Closes the sockets `(instance, id)` (as [`SocketInfo`] names them) with 4003; the ids of
    /// those closed (one already closing is not).
    pub fn close(&self, sockets: Vec<(u64, u64)>, timeout: Duration) -> Vec<u64> {
        let sockets = Arc::new(sockets);
        let (answers, _) = self.ask(timeout, |reply| Control::Close(sockets.clone(), reply));
        answers.into_iter().flatten().collect()
    }

    fn ask<T>(
        &self,
        timeout: Duration,
        question: impl Fn(mpsc::Sender<T>) -> Control,
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

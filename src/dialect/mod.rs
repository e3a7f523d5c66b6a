//! The wire dialects: what a client's text messages mean and what its event frames look like.
//! They sit on the shard's [`Session`] seam and know nothing of sockets; they reach the event
//! source through [`EventSource`](crate::ingest::EventSource) and know nothing of AMQP either.
//!
//! - [`blackhole`]: Kazoo's blackhole protocol (every path but `/v1.0/ws`).
//! - VoIPBin's `/v1.0/ws` arrives with its own issue; until then that path answers 404.

pub mod blackhole;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::shard::{HttpRefusal, Reply, Session, SessionFactory};
use crate::ws::handshake::Request;

pub use blackhole::{Blackhole, BlackholeLimits};

/// The WebSocket path of the VoIPBin dialect.
pub const VOIPBIN_PATH: &str = "/v1.0/ws";

/// Picks the dialect by path.
pub struct Dialects {
    pub blackhole: Arc<Blackhole>,
}

impl SessionFactory for Dialects {
    fn open(&self, request: &Request, peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        if request.path == VOIPBIN_PATH {
            return Err(HttpRefusal {
                status: 404,
                content_type: "application/json",
                body: r#"{"error":{"status":"NOT_FOUND","reason":"DIALECT_NOT_ENABLED","message":"the VoIPBin dialect is not part of this build yet"}}"#.into(),
            });
        }
        self.blackhole.open(request, peer)
    }
}

/// The bearer token a client gave at the handshake: `?token=`, `Authorization: Bearer`, or the
/// `token` cookie (in that order).
pub fn handshake_token(request: &Request) -> Option<String> {
    if let Some(token) = request.query_param("token") {
        return Some(crate::families::decode_segment(token));
    }
    if let Some(value) = request.header("authorization") {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    request.header("cookie").and_then(|cookies| {
        cookies.split(';').find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == "token").then(|| value.to_string())
        })
    })
}

/// Keeps a socket's replies in the order of its commands when some of them wait (a subscribe
/// waits for its AMQP bind): a reply is held until every earlier one has been sent.
#[derive(Default)]
pub struct Sequencer {
    tail: Option<Rc<Turn>>,
}

#[derive(Default)]
struct Turn {
    done: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

/// Marks a turn done when the reply is out, or when its future is dropped unfinished.
struct Finish(Rc<Turn>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.done.set(true);
        if let Some(waker) = self.0.waiter.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Sequencer {
    /// `reply`, delayed if an earlier reply is still pending.
    pub fn order(&mut self, reply: Reply) -> Reply {
        let previous = self.tail.take().filter(|turn| !turn.done.get());
        if previous.is_none() && !matches!(reply, Reply::Later(_)) {
            return reply;
        }
        let turn = Rc::new(Turn::default());
        self.tail = Some(turn.clone());
        Reply::Later(Box::pin(async move {
            let _finish = Finish(turn);
            if let Some(previous) = previous {
                std::future::poll_fn(|cx| {
                    if previous.done.get() {
                        Poll::Ready(())
                    } else {
                        *previous.waiter.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
            }
            let mut reply = reply;
            while let Reply::Later(next) = reply {
                reply = next.await;
            }
            reply
        }))
    }
}

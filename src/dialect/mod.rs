//! The wire dialects: what a client's text messages mean and what its event frames look like.
//! They sit on the shard's [`Session`] seam and know nothing of sockets; they reach the event
//! source through [`EventSource`](crate::ingest::EventSource) and know nothing of AMQP either.
//!
//! - [`blackhole`]: Kazoo's blackhole protocol (every path but `/v1.0/ws`).
//! - [`voipbin`]: VoIPBin's `/v1.0/ws`.

pub mod blackhole;
pub mod voipbin;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use crate::auth::Identity;

use crate::shard::{HttpRefusal, Reply, Session, SessionFactory};
use crate::ws::handshake::Request;

pub use blackhole::{Blackhole, BlackholeLimits};
pub use voipbin::Voipbin;

/// The WebSocket path of the VoIPBin dialect.
pub const VOIPBIN_PATH: &str = "/v1.0/ws";

/// Picks the dialect by path: VoIPBin on `/v1.0/ws`, Kazoo's blackhole everywhere else.
pub struct Dialects {
    pub blackhole: Arc<Blackhole>,
    pub voipbin: Arc<Voipbin>,
}

impl Dialects {
    /// Both dialects over one auth, one event source and one set of limits.
    pub fn new(
        auth: Arc<crate::auth::Auth>,
        source: Arc<dyn crate::ingest::EventSource>,
        limits: BlackholeLimits,
    ) -> Dialects {
        Dialects {
            blackhole: Arc::new(Blackhole::new(auth.clone(), source.clone(), limits.clone())),
            voipbin: Arc::new(Voipbin::new(auth, source, limits)),
        }
    }
}

impl SessionFactory for Dialects {
    fn open(&self, request: &Request, peer: SocketAddr) -> Result<Box<dyn Session>, HttpRefusal> {
        if request.path == VOIPBIN_PATH {
            return self.voipbin.open(request, peer);
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

/// A token bucket: `burst` tokens, refilled at `rate` per second.
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, rate: f64) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate,
            last: Instant::now(),
        }
    }

    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Time left on an identity's token (`None`: it does not expire).
pub(crate) fn remaining(identity: &Identity) -> Option<Duration> {
    identity.expires_at.map(|at| {
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

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

/// The error of PROTOCOLS section 10 (Kazoo's `bh_limit`): at the upgrade (HTTP 429) or in
/// the reply to the command that first names the account.
pub const ACCOUNT_LIMIT: &str = "account connections limit";

/// Refusals for `max_connections_per_account`, since the process started: at the upgrade and at
/// a command (one node per process).
pub static ACCOUNT_LIMIT_REFUSALS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Sockets per account on this node (`max_connections_per_account`; Kazoo's `bh_limit`),
/// shared by both dialects. A socket holds an [`AccountSlot`] for its identity's account; the
/// slot is given back when the session ends or moves to another account.
pub struct AccountConnections {
    limit: usize,
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One socket's place in its account's count (nothing is counted without a limit).
pub struct AccountSlot {
    owner: Option<(Arc<AccountConnections>, String)>,
}

impl AccountSlot {
    /// The account this slot counts for (`None`: no limit is configured).
    pub fn account(&self) -> Option<&str> {
        self.owner.as_ref().map(|(_, account)| account.as_str())
    }
}

impl AccountConnections {
    pub fn new(limit: usize) -> Arc<AccountConnections> {
        Arc::new(AccountConnections {
            limit,
            counts: Default::default(),
        })
    }

    /// A slot for one more socket of `account`, or `None` when it holds `limit` already.
    pub fn claim(self: &Arc<Self>, account: &str) -> Option<AccountSlot> {
        if self.limit == 0 {
            return Some(AccountSlot { owner: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(account.to_string()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AccountSlot {
            owner: Some((self.clone(), account.to_string())),
        })
    }

    /// Counts a refusal: `at_upgrade`, or at a command.
    pub fn refused(at_upgrade: bool) {
        ACCOUNT_LIMIT_REFUSALS[usize::from(!at_upgrade)]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        let Some((owner, account)) = self.owner.take() else {
            return;
        };
        let mut counts = owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&account);
            }
        }
    }
}

/// Resumes admitted at a bounded rate per node (`resume_admissions_per_sec`): a whole node's
/// clients arriving at once take their turns instead of stalling live delivery. A client over
/// the rate is given a turn (its place is reserved) and waits for it; it is never refused.
pub struct ResumeAdmission {
    rate: f64,
    state: std::sync::Mutex<(f64, Instant, Option<Instant>)>,
}

/// Resumes that had to wait for their turn, since the process started.
pub static RESUME_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ResumeAdmission {
    pub fn new(per_sec: f64) -> Arc<ResumeAdmission> {
        let rate = per_sec.max(1.0);
        Arc::new(ResumeAdmission {
            rate,
            // A second's worth may go at once.
            state: std::sync::Mutex::new((rate, Instant::now(), None)),
        })
    }

    /// A turn: `None` to go now, or how long until the turn reserved for this client.
    pub fn turn(&self) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, last, logged) = &mut *state;
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        *tokens -= 1.0;
        if *tokens >= 0.0 {
            return None;
        }
        RESUME_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
            *logged = Some(now);
            tracing::info!(
                "resume: more than {} resumes/s (resume_admissions_per_sec); clients wait their turn ({:.1} s ahead)",
                self.rate,
                -*tokens / self.rate
            );
        }
        Some(Duration::from_secs_f64(-*tokens / self.rate).max(Duration::from_millis(5)))
    }
}

/// Subscribes with `resume_from` since the process started: recovered, and not (docs/resume.md).
pub static RESUMES: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// What a subscribe with `resume_from` gets (docs/resume.md): whether it could, the log's head
/// (the position of the last event this socket's shard dispatched), and the missed events'
/// frames for the bindings it just added, in log order.
pub(crate) struct Resumed {
    pub recovered: bool,
    pub position: Option<String>,
    pub frames: Vec<bytes::Bytes>,
}

impl Resumed {
    /// `"recovered":..,"position":..` (a JSON object's members, no braces).
    pub fn members(&self) -> String {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("\"recovered\":{},\"position\":", self.recovered).as_bytes());
        match &self.position {
            Some(position) => crate::json::write_str(&mut out, position),
            None => out.extend_from_slice(b"null"),
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A resuming subscribe's progress while it is held (`Reply::Hold`): its admission turn, how
/// long it has waited, and the read of the stream it waits for.
#[derive(Default)]
pub(crate) struct ResumeTurn {
    /// A turn was given when it was first held (it goes when the turn comes).
    reserved: bool,
    admitted: bool,
    held_since: Option<Instant>,
    catch_up: Option<Arc<crate::ingest::catch_up::CatchUp>>,
    /// Reads done before the current one (memory forgot more while they went on), and where
    /// each ended.
    done: Vec<(u64, crate::ingest::catch_up::Read)>,
}

/// What the reads of the stream for one resume gave: one read's shared list, or several
/// merged (memory forgot more while the first went on), and the offset the last one ended at.
enum Deep {
    One(u64, crate::ingest::catch_up::Read),
    Merged(u64, Vec<Arc<crate::fanout::Event>>),
}

impl Deep {
    fn range(&self) -> (u64, &[Arc<crate::fanout::Event>]) {
        match self {
            Deep::One(ended, events) => (*ended, events.as_slice()),
            Deep::Merged(ended, events) => (*ended, events.as_slice()),
        }
    }
}

impl ResumeTurn {
    /// What the reads of the stream fetched, if the resume needed any; `None` too if the last
    /// failed or is not done (the range is then not whole: not recovered).
    fn deep(&mut self) -> Option<Deep> {
        let mut reads = std::mem::take(&mut self.done);
        match self.catch_up.take()?.outcome() {
            Some(Some(read)) => reads.push(read),
            _ => return None,
        }
        if reads.len() == 1 {
            let (ended, events) = reads.pop()?;
            return Some(Deep::One(ended, events));
        }
        let ended = reads.last().map_or(0, |(ended, _)| *ended);
        let events = reads
            .iter()
            .flat_map(|(_, events)| events.iter().cloned())
            .collect();
        Some(Deep::Merged(ended, events))
    }
}

/// A node that has not read the log yet (it just started) is waited for this long.
const NOT_YET_LIMIT: Duration = Duration::from_secs(5);
/// A read of the stream for a deep resume is waited for this long.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// How often a held resume looks again.
const HOLD_STEP: Duration = Duration::from_millis(20);

/// Whether a resuming subscribe may go now (`None`), or must be held: behind an earlier reply
/// still pending (the replay must come right behind its own reply), for its admission turn, or
/// for what it missed to be at hand - a node that just started reading the log, or a read of
/// the stream for events the node does not have in memory (ingest::catch_up).
pub(crate) fn resume_gate(
    source: &dyn crate::ingest::EventSource,
    admission: &ResumeAdmission,
    sequencer: &Sequencer,
    turn: &mut ResumeTurn,
    (from, head): (Option<&str>, Option<u64>),
) -> Option<Duration> {
    use crate::fanout::history::{Position, Reach, Unresumable};
    let (history, max) = source.history()?;
    if sequencer.pending() {
        return Some(HOLD_STEP);
    }
    if !turn.admitted && !turn.reserved {
        // A new resume: nothing of an earlier one that ended before replaying (an error) is
        // kept.
        turn.catch_up = None;
        turn.done.clear();
    }
    if !turn.admitted {
        if !turn.reserved {
            if let Some(wait) = admission.turn() {
                turn.reserved = true;
                return Some(wait);
            }
        }
        turn.admitted = true;
    }
    let held = turn.held_since.get_or_insert_with(Instant::now).elapsed();
    let reach = from
        .and_then(Position::parse)
        .map(|from| history.reach(&from, head, max));
    let hold = match reach {
        Some(Err(Unresumable::NotYet)) => held < NOT_YET_LIMIT,
        Some(Ok(Reach::Stream { after, until })) => {
            match turn.catch_up.as_ref().map(|read| read.outcome()) {
                None => {
                    turn.catch_up = source.catch_up(after, until);
                    turn.catch_up.is_some()
                }
                Some(None) => held < CATCH_UP_LIMIT,
                // Failed: not recovered.
                Some(Some(None)) => false,
                Some(Some(Some((ended, events)))) => {
                    // Memory may have forgotten more while the stream was read: read on from
                    // where the read ended until memory has the rest.
                    if history.covers(ended, head) || held >= CATCH_UP_LIMIT {
                        false
                    } else {
                        turn.done.push((ended, events));
                        turn.catch_up = source.catch_up(ended, until);
                        turn.catch_up.is_some()
                    }
                }
            }
        }
        _ => false,
    };
    if hold {
        return Some(HOLD_STEP);
    }
    turn.reserved = false;
    turn.admitted = false;
    turn.held_since = None;
    None
}

/// The position frame of each dialect, around the position (docs/resume.md).
pub(crate) const KAZOO_POSITION: (&str, &str) = ("{\"action\":\"position\",\"position\":\"", "\"}");
pub(crate) const VOIPBIN_POSITION: (&str, &str) = ("{\"type\":\"position\",\"position\":\"", "\"}");

/// Replays, for the bindings a subscribe just added (`(internal pattern, encoder)`), the events
/// of the node's history after `from` up to what this socket's shard has dispatched: each event
/// once per matching binding (Kazoo), or once per socket (`once`, VoIPBin). The bindings are
/// account-scoped exactly as for live delivery, so a resume sees what the socket may see and
/// nothing else. Anything it cannot do is `recovered: false` and nothing replayed. The socket
/// then gets position frames (`position_frame`, around the position) while the log moves.
pub(crate) fn resume(
    source: &dyn crate::ingest::EventSource,
    from: Option<&str>,
    subscriptions: &mut crate::shard::Subscriptions<'_>,
    (separator, position_frame): (crate::binding::Separator, (&str, &str)),
    bindings: &[(String, Rc<dyn crate::shard::FrameEncoder>)],
    once: bool,
    turn: &mut ResumeTurn,
) -> Resumed {
    use crate::binding::{BindingAutomaton, SubscriptionId};
    use crate::fanout::history::Position;
    let Some((history, max)) = source.history() else {
        RESUMES[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Resumed {
            recovered: false,
            position: None,
            frames: Vec::new(),
        };
    };
    let head = subscriptions.last_offset();
    subscriptions.send_positions(position_frame.0, position_frame.1, &history.epoch());
    let position = head.map(|offset| history.position(offset));
    let events = from
        .and_then(Position::parse)
        .ok_or(crate::fanout::history::Unresumable::Unknown)
        .and_then(|from| {
            let deep = turn.deep();
            let deep = deep.as_ref().map(Deep::range);
            history.since(&from, head, max, deep)
        });
    let Ok(events) = events else {
        RESUMES[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Resumed {
            recovered: false,
            position,
            frames: Vec::new(),
        };
    };
    let mut automaton = BindingAutomaton::new(separator);
    for (i, (pattern, _)) in bindings.iter().enumerate() {
        let _ = automaton.insert(pattern, SubscriptionId(i as u32));
    }
    let mut frames = Vec::new();
    let mut matched = Vec::new();
    for event in events {
        matched.clear();
        automaton.matches(&event.key, &mut matched);
        for key in &event.also {
            automaton.matches(key, &mut matched);
        }
        matched.sort_unstable();
        matched.dedup();
        for id in matched.iter().take(if once { 1 } else { usize::MAX }) {
            if let Some((_, encoder)) = bindings.get(id.0 as usize) {
                frames.push(encoder.encode(&event));
            }
        }
    }
    RESUMES[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Resumed {
        recovered: true,
        position,
        frames,
    }
}

/// The JSON body of a refused upgrade: `{"status":"error","data":{"errors":[why]}}`.
pub(crate) fn refusal(status: u16, why: &str) -> HttpRefusal {
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"status\":\"error\",\"data\":{\"errors\":[");
    crate::json::write_str(&mut body, why);
    body.extend_from_slice(b"]}}");
    HttpRefusal {
        status,
        content_type: "application/json",
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

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
        let blackhole = Blackhole::new(auth.clone(), source.clone(), limits.clone());
        let voipbin = Voipbin::new(
            auth,
            source,
            limits,
            blackhole.accounts.clone(),
            blackhole.admission.clone(),
        );
        Dialects {
            blackhole: Arc::new(blackhole),
            voipbin: Arc::new(voipbin),
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
    /// Whether an earlier reply is still pending.
    pub fn pending(&self) -> bool {
        self.tail.as_ref().is_some_and(|turn| !turn.done.get())
    }

    /// `reply`, delayed if an earlier reply is still pending. A held message (`Reply::Hold`) is
    /// no reply: it passes as it is.
    pub fn order(&mut self, reply: Reply) -> Reply {
        if matches!(reply, Reply::Hold(_)) {
            return reply;
        }
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

    /// Gives back the token of a message the session held (it is handed over again).
    pub(crate) fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
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

//! Kazoo's blackhole protocol (docs/kazoo.md), one [`BlackholeSession`] per socket.
//!
//! A command is one JSON object: `action` (`subscribe`, `unsubscribe`, `ping`, and the call and
//! conference commands `channel` and `conference` of [`crate::commands`]), `auth_token`
//! (required until the socket has an identity), `request_id` (echoed, or generated), `data`.
//! A subscribe resolves each client binding through its family into an account-scoped internal
//! pattern, adds the socket to the shard's binding for it, takes one reference on the AMQP
//! binding, and answers once the source has confirmed every binding it needs. Every path out of
//! a subscription (unsubscribe, a token for fewer accounts, the socket closing) gives the
//! reference back exactly once.
//!
//! Errors are replies (`status: error`) with Kazoo's strings; nothing a client sends closes the
//! socket except an expired identity (4001).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{
    handshake_token, refusal, remaining, AccountConnections, AccountSlot, Sequencer, TokenBucket,
    ACCOUNT_LIMIT,
};
use crate::auth::{Auth, AuthError, Identity};
use crate::binding::{validate_pattern, Separator};
use crate::commands::{self, CommandWatch, Commander};
use crate::families::{self, AmqpBinding};
use crate::fanout::Event;
use crate::ingest::EventSource;
use crate::json::{self, TapeValue};
use crate::shard::{Filed, FrameEncoder, HttpRefusal, Reply, Session, Subscriptions};
use crate::ws::frame::encode;
use crate::ws::handshake::Request;

/// Per-socket limits (docs/kazoo.md).
#[derive(Debug, Clone, PartialEq)]
pub struct BlackholeLimits {
    /// Commands a socket may send in a burst.
    pub rate_burst: u32,
    /// Commands per second the burst refills at.
    pub rate_per_sec: f64,
    /// Client bindings one socket may hold.
    pub max_bindings: usize,
    /// Longest a subscribe reply waits for its AMQP binds; past it the reply is sent anyway and
    /// the bindings become active as soon as the broker has them.
    pub bind_wait: Duration,
    /// Sockets one account may hold on this node (0: no limit).
    pub max_connections_per_account: usize,
    /// Resumes admitted per second on this node (`resume_admissions_per_sec`).
    pub resume_admissions_per_sec: f64,
}

impl Default for BlackholeLimits {
    fn default() -> BlackholeLimits {
        BlackholeLimits {
            rate_burst: 100,
            rate_per_sec: 10.0,
            max_bindings: 1000,
            bind_wait: Duration::from_secs(5),
            max_connections_per_account: 0,
            resume_admissions_per_sec: 2000.0,
        }
    }
}

/// The longest socket name kept, in characters.
const MAX_LABEL_CHARS: usize = 256;
/// The largest socket metadata kept, as JSON bytes.
const MAX_METADATA_BYTES: usize = 4096;

/// The dialect, shared by every shard.
pub struct Blackhole {
    auth: Arc<Auth>,
    source: Arc<dyn EventSource>,
    limits: BlackholeLimits,
    /// Sockets per account on this node, shared with the VoIPBin dialect.
    pub(super) accounts: Arc<AccountConnections>,
    /// Takes call and conference commands (`None`: the source tracks no calls).
    commander: Option<Arc<Commander>>,
    /// Resumes admitted at a bounded rate, shared with the VoIPBin dialect.
    pub(super) admission: Arc<super::ResumeAdmission>,
}

/// The most accounts one socket keeps call and conference events flowing for (its token's and
/// those it subscribes to), for commands.
const MAX_WATCHED_ACCOUNTS: usize = 32;

/// Kazoo's error strings (and Horizon's few additions), exactly as clients match them.
mod errors {
    pub const TOKEN_REQUIRED: &str = "authentication token required";
    pub const TOKEN_FORMAT: &str = "invalid authentication token format";
    pub const TOKEN_FAILED: &str = "failed to authenticate token";
    pub const TOKEN_EXPIRED: &str = "token expired";
    pub const MISSING_KEYS: &str = "missing required keys : account_id, binding";
    pub const WILDCARD_ACCOUNT: &str = "unauthorized wildcard account id";
    pub const ACCOUNT: &str = "unauthorized account id";
    pub const RATE_LIMITED: &str = "rate limiting threshold hit";
    pub const TOO_MANY: &str = "too many bindings";
    pub const INVALID_JSON: &str = "invalid json";
}

impl Blackhole {
    pub fn new(
        auth: Arc<Auth>,
        source: Arc<dyn EventSource>,
        limits: BlackholeLimits,
    ) -> Blackhole {
        Blackhole {
            commander: Commander::new(auth.clone(), source.clone()),
            admission: super::ResumeAdmission::new(limits.resume_admissions_per_sec),
            auth,
            source,
            accounts: AccountConnections::new(limits.max_connections_per_account),
            limits,
        }
    }

    /// Opens a session. A token given at the handshake must be valid (401 otherwise); without
    /// one, the first command must carry `auth_token`.
    pub fn open(
        self: &Arc<Self>,
        request: &Request,
        _peer: SocketAddr,
    ) -> Result<Box<dyn Session>, HttpRefusal> {
        let identity = match handshake_token(request) {
            None => None,
            Some(token) => match self.auth.authenticate(&token, SystemTime::now()) {
                Ok(identity) => Some(identity),
                Err(e) => return Err(refusal(401, &e.to_string())),
            },
        };
        let slot = match &identity {
            None => None,
            Some(identity) => match self.accounts.claim(&identity.account_id) {
                Some(slot) => Some(slot),
                None => {
                    AccountConnections::refused(true);
                    return Err(refusal(429, ACCOUNT_LIMIT));
                }
            },
        };
        let mut session = BlackholeSession {
            dialect: self.clone(),
            identity,
            slot,
            subscriptions: Vec::new(),
            bucket: TokenBucket::new(self.limits.rate_burst, self.limits.rate_per_sec),
            sequencer: Sequencer::default(),
            watches: Vec::new(),
            pending_binds: Vec::new(),
            resume_turn: super::ResumeTurn::default(),
        };
        // The upgrade cannot wait for the binds; the first subscribe's reply does.
        drop(session.rewatch());
        Ok(Box::new(session))
    }
}

/// One subscription of a socket: a client binding for one account.
struct Subscription {
    binding: String,
    account: String,
    pattern: String,
    /// The broker bindings it holds one reference on each.
    amqp: Vec<AmqpBinding>,
}

pub struct BlackholeSession {
    dialect: Arc<Blackhole>,
    identity: Option<Identity>,
    /// The socket's place in its identity's account count (`max_connections_per_account`).
    slot: Option<AccountSlot>,
    subscriptions: Vec<Subscription>,
    bucket: TokenBucket,
    sequencer: Sequencer,
    /// With command rights: the accounts whose calls and conferences this socket keeps tracked.
    watches: Vec<CommandWatch>,
    /// Binds of those watches begun by an authentication; the next subscribe reply waits for
    /// them, so events published after it reach the tracker.
    pending_binds: Vec<commands::BindWait>,
    /// A resume held for its admission turn has it reserved.
    resume_turn: super::ResumeTurn,
}

/// The event frame of one binding: a head made once per binding, the event's shared tail.
struct KazooFrame {
    head: Vec<u8>,
}

impl KazooFrame {
    fn new(binding: &str, pattern: &str) -> KazooFrame {
        let mut head = Vec::with_capacity(64 + binding.len() + pattern.len());
        head.extend_from_slice(b"{\"action\":\"event\",\"subscribed_key\":");
        json::write_str(&mut head, binding);
        head.extend_from_slice(b",\"subscription_key\":");
        json::write_str(&mut head, pattern);
        head.push(b',');
        KazooFrame { head }
    }
}

impl FrameEncoder for KazooFrame {
    /// Hot path: once per event per matching binding.
    fn encode(&self, event: &Event) -> Bytes {
        Bytes::from(encode::text_parts(&[
            &self.head,
            event.position_member(),
            &event.body,
        ]))
    }
}

/// A reply under construction.
struct Answer {
    request_id: String,
}

impl Answer {
    fn success(&self, data: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"action\":\"reply\",\"request_id\":");
        json::write_str(&mut out, &self.request_id);
        out.extend_from_slice(b",\"status\":\"success\",\"data\":");
        data(&mut out);
        out.push(b'}');
        String::from_utf8_lossy(&out).into_owned()
    }

    fn error(&self, errors: &[&str]) -> Reply {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(b"{\"action\":\"reply\",\"request_id\":");
        json::write_str(&mut out, &self.request_id);
        out.extend_from_slice(b",\"status\":\"error\",\"data\":{\"errors\":");
        json::write_str_array(&mut out, errors.iter().copied());
        out.extend_from_slice(b"}}");
        Reply::Text(String::from_utf8_lossy(&out).into_owned())
    }
}

impl Session for BlackholeSession {
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        let reply = self.command(text, subscriptions);
        if matches!(reply, Reply::Hold(_)) {
            // Handed over again later: it does not count twice against the rate limit.
            self.bucket.refund();
        }
        self.sequencer.order(reply)
    }

    fn expires_in(&self) -> Option<Duration> {
        remaining(self.identity.as_ref()?)
    }

    fn lag_notice(&self, skipped: u64) -> Option<String> {
        Some(format!(
            "{{\"action\":\"lagged\",\"data\":{{\"skipped\":{skipped}}}}}"
        ))
    }

    fn revoked(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|identity| self.dialect.auth.revoked(identity))
    }
}

impl BlackholeSession {
    fn command(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        let mut bytes = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes);
        let root = tape
            .as_ref()
            .ok()
            .and_then(|t| TapeValue::root(&t.0))
            .filter(|r| r.is_object());
        let request_id = root
            .and_then(|r| r.get("request_id"))
            .and_then(|v| v.as_str())
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .map_or_else(|| crate::ids::random_hex(16), str::to_string);
        let answer = Answer { request_id };
        if !self.bucket.take() {
            return answer.error(&[errors::RATE_LIMITED]);
        }
        let Some(root) = root else {
            return answer.error(&[errors::INVALID_JSON]);
        };

        let action = root.get("action");
        let is_ping = action.and_then(|a| a.as_str()) == Some("ping");
        match root.get("auth_token") {
            Some(token) => {
                let Some(token) = token.as_str() else {
                    return answer.error(&[errors::TOKEN_FORMAT]);
                };
                match self.dialect.auth.authenticate(token, SystemTime::now()) {
                    Ok(identity) => {
                        // The socket counts for its identity's account: a token of another
                        // account needs a place in that account's count first.
                        let counted = self.slot.as_ref().and_then(AccountSlot::account);
                        if self.slot.is_none() || counted.is_some_and(|a| a != identity.account_id)
                        {
                            match self.dialect.accounts.claim(&identity.account_id) {
                                Some(slot) => self.slot = Some(slot),
                                None => {
                                    AccountConnections::refused(false);
                                    return answer.error(&[ACCOUNT_LIMIT]);
                                }
                            }
                        }
                        self.adopt(identity, subscriptions)
                    }
                    Err(AuthError::Format) => return answer.error(&[errors::TOKEN_FORMAT]),
                    Err(AuthError::Failed) => return answer.error(&[errors::TOKEN_FAILED]),
                    Err(AuthError::Expired) => {
                        return answer.error(&[errors::TOKEN_FAILED, errors::TOKEN_EXPIRED])
                    }
                }
            }
            // A ping needs no identity (a client may keep a socket warm before it logs in).
            None if is_ping => {}
            None if self.identity.is_none() => return answer.error(&[errors::TOKEN_REQUIRED]),
            None => {}
        }
        if is_ping {
            return Reply::Text(
                answer.success(|out| out.extend_from_slice(b"{\"response\":\"pong\"}")),
            );
        }
        if self
            .identity
            .as_ref()
            .and_then(remaining)
            .is_some_and(|left| left.is_zero())
        {
            return answer.error(&[errors::TOKEN_FAILED, errors::TOKEN_EXPIRED]);
        }

        let data = root.get("data").filter(|d| d.is_object());
        match action.and_then(|a| a.as_str()) {
            Some("subscribe") => self.subscribe(&answer, root, data, subscriptions),
            Some("unsubscribe") => self.unsubscribe(&answer, data, subscriptions),
            Some("channel") => {
                self.take_command(commands::Kind::Channel, &answer, root, subscriptions)
            }
            Some("conference") => {
                self.take_command(commands::Kind::Conference, &answer, root, subscriptions)
            }
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                answer.error(&[&format!("unknown action {shown}")])
            }
            None => answer.error(&["unknown action"]),
        }
    }

    /// Takes a (new or refreshed) identity: moves the expiry, and drops subscriptions the new
    /// identity may not see.
    fn adopt(&mut self, identity: Identity, subscriptions: &mut Subscriptions<'_>) {
        subscriptions.set_expiry(remaining(&identity));
        let auth = &self.dialect.auth;
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .partition(|s| {
                if s.account == "*" {
                    identity.superduper_admin
                } else {
                    auth.may_see(&identity, &s.account)
                }
            });
        self.subscriptions = keep;
        for sub in drop {
            self.leave(sub, subscriptions);
        }
        self.identity = Some(identity);
        self.file(subscriptions);
        self.pending_binds = self.rewatch();
    }

    /// Keeps the call and conference events of the socket's accounts flowing while it has
    /// command rights: its token's account and every account it subscribes for.
    fn rewatch(&mut self) -> Vec<commands::BindWait> {
        let Some(commander) = &self.dialect.commander else {
            return Vec::new();
        };
        let mut wanted: Vec<&str> = Vec::new();
        if let Some(identity) = self.identity.as_ref().filter(|i| i.commands) {
            wanted.push(&identity.account_id);
            for sub in &self.subscriptions {
                if sub.account != "*"
                    && !wanted.contains(&sub.account.as_str())
                    && wanted.len() < MAX_WATCHED_ACCOUNTS
                {
                    wanted.push(&sub.account);
                }
            }
        }
        self.watches.retain(|w| wanted.contains(&w.account()));
        let mut waits = Vec::new();
        for account in wanted {
            if !self.watches.iter().any(|w| w.account() == account) {
                let (watch, binding) = commander.watch(account);
                self.watches.push(watch);
                waits.extend(binding);
            }
        }
        waits
    }

    /// A call or conference command (docs/kazoo.md "Commands"): checked, then published; the reply
    /// names the published `Msg-ID`.
    fn take_command(
        &mut self,
        kind: commands::Kind,
        answer: &Answer,
        root: TapeValue<'_, '_>,
        subscriptions: &mut Subscriptions<'_>,
    ) -> Reply {
        let Some(identity) = self.identity.as_ref() else {
            return answer.error(&[errors::TOKEN_REQUIRED]);
        };
        let data = root.get("data");
        let action = data.and_then(|d| d.get("action")).and_then(|a| a.as_str());
        let refuse = |e: commands::CommandError| {
            commands::refused(action, &e);
            answer.error(&[&e.to_string()])
        };
        let Some(commander) = self.dialect.commander.clone() else {
            return refuse(commands::CommandError::Unavailable);
        };
        if !identity.commands {
            return refuse(commands::CommandError::NotAllowed);
        }
        let Some(data) = data else {
            return refuse(commands::CommandError::Invalid("data", "required"));
        };
        let command = match commands::parse(kind, data, &identity.account_id) {
            Ok(command) => command,
            Err(e) => return refuse(e),
        };
        let prepared = match commander.authorize(identity, command) {
            Ok(prepared) => prepared,
            Err(e) => return answer.error(&[&e.to_string()]),
        };
        let sent = commander.publish(prepared, format!("socket {}", subscriptions.socket_id()));
        let answer = Answer {
            request_id: answer.request_id.clone(),
        };
        Reply::Later(Box::pin(async move {
            match sent.await {
                Ok(prepared) => Reply::Text(
                    answer.success(|out| out.extend_from_slice(&commands::reply_data(&prepared))),
                ),
                Err(e) => answer.error(&[&e.to_string()]),
            }
        }))
    }

    /// Files the socket for the REST listing as it is now: under its identity's account (with
    /// any `*` bindings of a superduper admin) and under every account it holds bindings for.
    fn file(&self, subscriptions: &mut Subscriptions<'_>) {
        let mut filed: Vec<Filed> = Vec::new();
        if let Some(identity) = &self.identity {
            filed.push(Filed {
                account: identity.account_id.clone(),
                bindings: Vec::new(),
            });
        }
        for sub in &self.subscriptions {
            let account = match (&self.identity, sub.account.as_str()) {
                (Some(identity), "*") => identity.account_id.as_str(),
                _ => sub.account.as_str(),
            };
            let at = match filed.iter().position(|f| f.account == account) {
                Some(at) => at,
                None => {
                    filed.push(Filed {
                        account: account.to_string(),
                        bindings: Vec::new(),
                    });
                    filed.len() - 1
                }
            };
            if !filed[at].bindings.contains(&sub.binding) {
                filed[at].bindings.push(sub.binding.clone());
            }
        }
        subscriptions.set_filed(filed);
    }

    fn leave(&self, sub: Subscription, subscriptions: &mut Subscriptions<'_>) {
        if subscriptions.unsubscribe(Separator::Dot, &sub.pattern, &sub.binding) {
            for amqp in sub.amqp {
                self.dialect.source.release(amqp);
            }
        }
    }

    fn subscribe(
        &mut self,
        answer: &Answer,
        root: TapeValue<'_, '_>,
        data: Option<TapeValue<'_, '_>>,
        subscriptions: &mut Subscriptions<'_>,
    ) -> Reply {
        let Some(identity) = self.identity.as_ref() else {
            return answer.error(&[errors::TOKEN_REQUIRED]);
        };
        let Some(bindings) = data
            .and_then(|d| requested_bindings(d).ok().flatten())
            .filter(|b| !b.is_empty())
        else {
            return answer.error(&[errors::MISSING_KEYS]);
        };
        let account = match data.and_then(|d| d.get("account_id")) {
            None => identity.account_id.clone(),
            Some(account) => match account.as_str() {
                Some(account) => account.to_string(),
                None => return answer.error(&[errors::MISSING_KEYS]),
            },
        };
        if account == "*" {
            if !identity.superduper_admin {
                return answer.error(&[errors::WILDCARD_ACCOUNT]);
            }
        } else if !families::valid_account_id(&account)
            || !self.dialect.auth.may_see(identity, &account)
        {
            return answer.error(&[errors::ACCOUNT]);
        }

        // Every binding is resolved and checked before anything changes: a command is applied
        // whole or not at all.
        let mut resolved = Vec::with_capacity(bindings.len());
        let mut problems: Vec<String> = Vec::new();
        let realm = (account != "*")
            .then(|| self.dialect.auth.realm(&account))
            .flatten();
        for binding in &bindings {
            let checked = families::resolve(binding, &account, realm.as_deref()).and_then(|r| {
                validate_pattern(&r.internal_pattern, Separator::Dot)
                    .map(|()| r)
                    .map_err(|_| families::ResolveError::NoSubscription)
            });
            match checked {
                Ok(r) => resolved.push((binding.clone(), r)),
                Err(e) => {
                    let e = e.to_string();
                    if !problems.contains(&e) {
                        problems.push(e);
                    }
                }
            }
        }
        if !problems.is_empty() {
            let problems: Vec<&str> = problems.iter().map(String::as_str).collect();
            return answer.error(&problems);
        }
        let fresh = resolved
            .iter()
            .filter(|(b, _)| !self.has(b, &account))
            .count();
        if self.subscriptions.len() + fresh > self.dialect.limits.max_bindings {
            return answer.error(&[errors::TOO_MANY]);
        }
        if data.and_then(|d| d.get("resume_from")).is_some() {
            if let Some(wait) = super::resume_gate(
                self.dialect.source.as_ref(),
                &self.dialect.admission,
                &self.sequencer,
                &mut self.resume_turn,
                (
                    data.and_then(|d| d.get("resume_from"))
                        .and_then(|v| v.as_str()),
                    subscriptions.last_offset(),
                ),
            ) {
                return Reply::Hold(wait);
            }
        }

        let mut added: Vec<Subscription> = Vec::new();
        // The added bindings' encoders, for a resume's replay.
        let mut encoders: Vec<(String, Rc<dyn FrameEncoder>)> = Vec::new();
        for (binding, r) in resolved {
            let encoder: Rc<dyn FrameEncoder> =
                Rc::new(KazooFrame::new(&binding, &r.internal_pattern));
            encoders.push((r.internal_pattern.clone(), encoder.clone()));
            match subscriptions.subscribe(Separator::Dot, &r.internal_pattern, &binding, encoder) {
                Ok(true) => added.push(Subscription {
                    binding,
                    account: account.clone(),
                    pattern: r.internal_pattern,
                    amqp: r.amqp,
                }),
                // Already subscribed: a duplicate changes nothing (and takes no reference).
                Ok(false) => {
                    encoders.pop();
                }
                Err(_) => {
                    // Validated above, so not expected; should it happen, undo this command's
                    // part so that the error the client gets is the whole truth.
                    for sub in added {
                        subscriptions.unsubscribe(Separator::Dot, &sub.pattern, &sub.binding);
                    }
                    return answer.error(&["no available subscriptions to requested binding"]);
                }
            }
        }
        let mut waits = Vec::with_capacity(added.len());
        for sub in added {
            for amqp in &sub.amqp {
                waits.push(self.dialect.source.acquire(amqp.clone()));
            }
            self.subscriptions.push(sub);
        }
        self.file(subscriptions);
        waits.extend(self.rewatch());
        waits.append(&mut self.pending_binds);
        // Kazoo master reads `name` and `metadata` at the top level of the command; its docs put
        // them in `data`. Either works; the top level wins.
        let label = |key: &str| {
            root.get(key)
                .filter(|v| !v.is_null())
                .or_else(|| data.and_then(|d| d.get(key)).filter(|v| !v.is_null()))
        };
        let name = label("name")
            .and_then(|n| n.as_str())
            .map(|n| n.chars().take(MAX_LABEL_CHARS).collect());
        let metadata = label("metadata").and_then(|m| {
            let mut out = Vec::new();
            json::write_value(&mut out, m, &mut |out, k| json::write_str(out, k));
            // Kept whole or not at all: a cut would not be JSON.
            (out.len() <= MAX_METADATA_BYTES).then(|| String::from_utf8_lossy(&out).into_owned())
        });
        subscriptions.set_labels(name, metadata);

        // `resume_from` (docs/resume.md): the reply, then what was missed, then live. The
        // bindings are in the shard already, so nothing is waited for: every event after the
        // shard's last one reaches them live, every one up to it is replayed from the history.
        if let Some(from) = data.and_then(|d| d.get("resume_from")) {
            let resumed = super::resume(
                self.dialect.source.as_ref(),
                from.as_str(),
                subscriptions,
                (Separator::Dot, super::KAZOO_POSITION),
                &encoders,
                false,
                &mut self.resume_turn,
            );
            let reply = answer.success(|out| {
                out.extend_from_slice(b"{\"subscribed\":");
                json::write_str_array(out, self.client_bindings());
                out.push(b',');
                out.extend_from_slice(resumed.members().as_bytes());
                out.push(b'}');
            });
            return Reply::Resumed(reply, resumed.frames);
        }
        let reply = answer.success(|out| {
            out.extend_from_slice(b"{\"subscribed\":");
            json::write_str_array(out, self.client_bindings());
            out.push(b'}');
        });
        if waits.is_empty() {
            return Reply::Text(reply);
        }
        let wait = self.dialect.limits.bind_wait;
        Reply::Later(Box::pin(async move {
            let all = futures_util::future::join_all(waits);
            // Past the wait the bindings stay registered: the source activates them when it can.
            let _ = crate::shard::timeout(wait, all).await;
            Reply::Text(reply)
        }))
    }

    fn unsubscribe(
        &mut self,
        answer: &Answer,
        data: Option<TapeValue<'_, '_>>,
        subscriptions: &mut Subscriptions<'_>,
    ) -> Reply {
        // No binding(s) at all means every binding; malformed ones must not.
        let requested = match data.map(requested_bindings) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(list))) => Some(list),
            Some(Err(())) => return answer.error(&[errors::MISSING_KEYS]),
        };
        let account = match data.and_then(|d| d.get("account_id")) {
            None => None,
            Some(account) => match account.as_str() {
                Some(account) => Some(account.to_string()),
                None => return answer.error(&[errors::MISSING_KEYS]),
            },
        };
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.subscriptions)
            .into_iter()
            .partition(|s| {
                requested.as_ref().is_none_or(|r| r.contains(&s.binding))
                    && account.as_ref().is_none_or(|a| *a == s.account)
            });
        self.subscriptions = keep;
        let mut unsubscribed: Vec<String> = Vec::new();
        for sub in gone {
            if !unsubscribed.contains(&sub.binding) {
                unsubscribed.push(sub.binding.clone());
            }
            self.leave(sub, subscriptions);
        }
        self.file(subscriptions);
        drop(self.rewatch());
        Reply::Text(answer.success(|out| {
            out.extend_from_slice(b"{\"unsubscribed\":");
            json::write_str_array(out, unsubscribed.iter().map(String::as_str));
            out.extend_from_slice(b",\"subscribed\":");
            json::write_str_array(out, self.client_bindings());
            out.push(b'}');
        }))
    }

    fn has(&self, binding: &str, account: &str) -> bool {
        self.subscriptions
            .iter()
            .any(|s| s.binding == binding && s.account == account)
    }

    /// The socket's client bindings, each once, in subscription order.
    fn client_bindings(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(self.subscriptions.len());
        for s in &self.subscriptions {
            if !out.contains(&s.binding.as_str()) {
                out.push(&s.binding);
            }
        }
        out
    }
}

impl Drop for BlackholeSession {
    /// The socket is gone (the shard has already removed it from its bindings): give back every
    /// AMQP reference it held.
    fn drop(&mut self) {
        for sub in self.subscriptions.drain(..) {
            for amqp in sub.amqp {
                self.dialect.source.release(amqp);
            }
        }
    }
}

/// `data.binding` (wins) or `data.bindings`, each once: `Ok(None)` when neither is there,
/// `Err` when the one given is not a string (or an array of strings).
fn requested_bindings(data: TapeValue<'_, '_>) -> Result<Option<Vec<String>>, ()> {
    if let Some(binding) = data.get("binding") {
        return binding
            .as_str()
            .map(|b| Some(vec![b.to_string()]))
            .ok_or(());
    }
    let Some(list) = data.get("bindings") else {
        return Ok(None);
    };
    if !list.is_array() {
        return Err(());
    }
    let mut out: Vec<String> = Vec::new();
    for item in list.elements() {
        let item = item.as_str().ok_or(())?;
        if !out.iter().any(|b| b == item) {
            out.push(item.to_string());
        }
    }
    Ok(Some(out))
}

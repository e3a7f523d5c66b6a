//! VoIPBin's `/v1.0/ws` dialect (docs/voipbin.md), one [`VoipbinSession`] per socket.
//!
//! The credential comes with the upgrade, in VoIPBin's order: cookie `token`, `?token=`,
//! `Authorization: Bearer`, then an access key (cookie `accesskey`, `?accesskey=`); without a
//! valid one the upgrade is refused with VoIPBin's 401 envelope (`AUTHENTICATION_REQUIRED` when
//! none was given, `INVALID_CREDENTIALS` otherwise, with a `request_id`). Commands are
//! `{"type":"subscribe"|"unsubscribe","topics":[...]}`. Unlike VoIPBin, every command is
//! answered (`subscribed`, `unsubscribed`, or `error` naming the topics at fault), topics match by
//! whole `:` segments, and an event reaches a socket once however many of its topics match.
//!
//! Permissions: `customer_id:<c>` topics need admin or manager rights on customer `c` (a super
//! admin may name any customer, or `*`); `agent_id:<a>` topics only the agent `a` itself.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{remaining, AccountConnections, AccountSlot, BlackholeLimits, Sequencer, TokenBucket};
use crate::auth::{Auth, Identity, Permissions};
use crate::binding::{validate_pattern, Separator};
use crate::families::voipbin::{Scope, Topic};
use crate::families::AmqpBinding;
use crate::fanout::Event;
use crate::ingest::EventSource;
use crate::json::{self, TapeValue};
use crate::shard::{Filed, FrameEncoder, HttpRefusal, Reply, Session, Subscriptions};
use crate::ws::frame::encode;
use crate::ws::handshake::Request;

/// The dialect, shared by every shard. Limits are the blackhole ones (rate, topics per socket).
pub struct Voipbin {
    auth: Arc<Auth>,
    source: Arc<dyn EventSource>,
    limits: BlackholeLimits,
    /// Sockets per account on this node, shared with the blackhole dialect.
    accounts: Arc<AccountConnections>,
    /// Resumes admitted at a bounded rate, shared with the blackhole dialect.
    admission: Arc<super::ResumeAdmission>,
}

/// The messages of error frames.
mod errors {
    pub const INVALID_JSON: &str = "invalid json";
    pub const TOPICS: &str = "topics must be a non-empty array of strings";
    pub const INVALID_TOPIC: &str = "invalid topic";
    pub const UNAUTHORIZED_TOPIC: &str = "unauthorized topic";
    pub const TOO_MANY: &str = "too many topics";
    pub const RATE_LIMITED: &str = "rate limiting threshold hit";
    pub const TOKEN_EXPIRED: &str = "token expired";
}

impl Voipbin {
    pub fn new(
        auth: Arc<Auth>,
        source: Arc<dyn EventSource>,
        limits: BlackholeLimits,
        accounts: Arc<AccountConnections>,
        admission: Arc<super::ResumeAdmission>,
    ) -> Voipbin {
        Voipbin {
            auth,
            source,
            limits,
            accounts,
            admission,
        }
    }

    /// Opens a session for a valid credential; VoIPBin's 401 otherwise.
    pub fn open(
        self: &Arc<Self>,
        request: &Request,
        _peer: SocketAddr,
    ) -> Result<Box<dyn Session>, HttpRefusal> {
        let request_id = request_id(request);
        let now = SystemTime::now();
        let identity = match credential(request) {
            None => {
                return Err(unauthenticated(
                    "AUTHENTICATION_REQUIRED",
                    "Authentication is required.",
                    &request_id,
                ))
            }
            Some(Credential::Token(token)) => self.auth.authenticate(&token, now),
            Some(Credential::AccessKey(key)) => self.auth.authenticate_access_key(&key, now),
        };
        // VoIPBin says no more than this, whatever failed (an expired token included).
        let identity = identity.map_err(|_| {
            unauthenticated(
                "INVALID_CREDENTIALS",
                "The provided credentials are invalid.",
                &request_id,
            )
        })?;
        let Some(slot) = self.accounts.claim(&identity.account_id) else {
            AccountConnections::refused(true);
            return Err(super::refusal(429, super::ACCOUNT_LIMIT));
        };
        Ok(Box::new(VoipbinSession {
            dialect: self.clone(),
            identity,
            _slot: slot,
            topics: Vec::new(),
            bucket: TokenBucket::new(self.limits.rate_burst, self.limits.rate_per_sec),
            sequencer: Sequencer::default(),
            resume_turn: super::ResumeTurn::default(),
        }))
    }
}

/// What a client authenticates with, in VoIPBin's order: a token (cookie `token`, then
/// `?token=`, then `Authorization: Bearer`), else an access key (cookie `accesskey`, then
/// `?accesskey=`).
#[derive(Debug, PartialEq, Eq)]
enum Credential {
    Token(String),
    AccessKey(String),
}

fn credential(request: &Request) -> Option<Credential> {
    let cookie = |name: &str| {
        request
            .headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name && !v.is_empty()).then(|| v.to_string())
            })
    };
    let query = |name: &str| {
        request
            .query_param(name)
            .filter(|v| !v.is_empty())
            .map(crate::families::decode_segment)
    };
    let bearer = || {
        let value = request.header("authorization")?;
        let (scheme, token) = value.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| token.trim().to_string())
    };
    cookie("token")
        .or_else(|| query("token"))
        .or_else(bearer)
        .map(Credential::Token)
        .or_else(|| {
            cookie("accesskey")
                .or_else(|| query("accesskey"))
                .map(Credential::AccessKey)
        })
}

/// The client's `X-Request-ID` if it is a sane one, else a new UUID-shaped id.
fn request_id(request: &Request) -> String {
    request
        .header("x-request-id")
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map_or_else(
            || {
                let hex = crate::ids::random_hex(16);
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            },
            str::to_string,
        )
}

/// VoIPBin's 401 envelope.
fn unauthenticated(reason: &str, message: &str, request_id: &str) -> HttpRefusal {
    let mut body = Vec::new();
    body.extend_from_slice(br#"{"error":{"status":"UNAUTHENTICATED","reason":"#);
    json::write_str(&mut body, reason);
    body.extend_from_slice(br#","domain":"api-manager","message":"#);
    json::write_str(&mut body, message);
    body.extend_from_slice(br#","request_id":"#);
    json::write_str(&mut body, request_id);
    body.extend_from_slice(b"}}");
    HttpRefusal {
        status: 401,
        content_type: "application/json",
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Whether `identity` may subscribe to `topic`.
pub fn may_subscribe(identity: &Identity, topic: &Topic<'_>) -> bool {
    let p = identity.permissions;
    match topic.scope {
        Scope::Customer => {
            p.has(Permissions::SUPER_ADMIN)
                || (topic.owner != "*"
                    && identity.customer_id.as_deref() == Some(topic.owner)
                    && (p.has(Permissions::ADMIN) || p.has(Permissions::MANAGER)))
        }
        Scope::Agent => topic.owner != "*" && identity.agent_id.as_deref() == Some(topic.owner),
    }
}

struct Subscribed {
    topic: String,
    pattern: String,
    amqp: AmqpBinding,
}

pub struct VoipbinSession {
    dialect: Arc<Voipbin>,
    identity: Identity,
    /// The socket's place in its account's count, given back when the session ends.
    _slot: AccountSlot,
    topics: Vec<Subscribed>,
    bucket: TokenBucket,
    sequencer: Sequencer,
    /// A resume held for its admission turn has it reserved.
    resume_turn: super::ResumeTurn,
}

/// `{"topic":"<topic>",` + the event's `"type":..,"data":..}`.
struct VoipbinFrame {
    head: Vec<u8>,
}

impl FrameEncoder for VoipbinFrame {
    /// Hot path: once per event per matching topic.
    fn encode(&self, event: &Event) -> Bytes {
        Bytes::from(encode::text_parts(&[
            &self.head,
            event.position_member(),
            &event.body,
        ]))
    }
}

fn frame(kind: &str, message: Option<&str>, topics: &[&str]) -> String {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"type\":");
    json::write_str(&mut out, kind);
    if let Some(message) = message {
        out.extend_from_slice(b",\"message\":");
        json::write_str(&mut out, message);
    }
    out.extend_from_slice(b",\"topics\":");
    json::write_str_array(&mut out, topics.iter().copied());
    out.push(b'}');
    String::from_utf8_lossy(&out).into_owned()
}

fn error(message: &str, topics: &[&str]) -> Reply {
    Reply::Text(frame("error", Some(message), topics))
}

impl Session for VoipbinSession {
    fn on_text(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        let reply = self.command(text, subscriptions);
        if matches!(reply, Reply::Hold(_)) {
            // Handed over again later: it does not count twice against the rate limit.
            self.bucket.refund();
        }
        self.sequencer.order(reply)
    }

    fn expires_in(&self) -> Option<Duration> {
        remaining(&self.identity)
    }

    fn lag_notice(&self, skipped: u64) -> Option<String> {
        Some(format!("{{\"type\":\"lagged\",\"skipped\":{skipped}}}"))
    }

    fn revoked(&self) -> bool {
        self.dialect.auth.revoked(&self.identity)
    }
}

impl VoipbinSession {
    fn command(&mut self, text: &str, subscriptions: &mut Subscriptions<'_>) -> Reply {
        if !self.bucket.take() {
            return error(errors::RATE_LIMITED, &[]);
        }
        if remaining(&self.identity).is_some_and(|left| left.is_zero()) {
            return error(errors::TOKEN_EXPIRED, &[]);
        }
        let mut bytes = text.as_bytes().to_vec();
        let Ok(tape) = simd_json::to_tape(&mut bytes) else {
            return error(errors::INVALID_JSON, &[]);
        };
        let Some(root) = TapeValue::root(&tape.0).filter(|r| r.is_object()) else {
            return error(errors::INVALID_JSON, &[]);
        };
        let kind = root.get("type").and_then(|t| t.as_str());
        if !matches!(kind, Some("subscribe" | "unsubscribe")) {
            let shown: String = kind.unwrap_or("").chars().take(64).collect();
            return error(format!("unknown type {shown}").trim_end(), &[]);
        }
        let Some(list) = root.get("topics").filter(|t| t.is_array()) else {
            return error(errors::TOPICS, &[]);
        };
        let mut topics: Vec<&str> = Vec::new();
        for item in list.elements() {
            let Some(topic) = item.as_str() else {
                return error(errors::TOPICS, &[]);
            };
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
        if topics.is_empty() {
            return error(errors::TOPICS, &[]);
        }
        let invalid: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| Topic::parse(t).is_none())
            .collect();
        if !invalid.is_empty() {
            return error(errors::INVALID_TOPIC, &invalid);
        }
        if kind == Some("unsubscribe") {
            return self.unsubscribe(&topics, subscriptions);
        }
        let parsed: Vec<Topic<'_>> = topics.iter().filter_map(|t| Topic::parse(t)).collect();
        let unauthorized: Vec<&str> = parsed
            .iter()
            .filter(|t| !may_subscribe(&self.identity, t))
            .map(|t| t.text)
            .collect();
        if !unauthorized.is_empty() {
            return error(errors::UNAUTHORIZED_TOPIC, &unauthorized);
        }
        // Every topic is checked as the shard will insert it before anything changes: a
        // command is applied whole or not at all.
        let unfit: Vec<&str> = parsed
            .iter()
            .filter(|t| validate_pattern(&t.internal_pattern(), Separator::Colon).is_err())
            .map(|t| t.text)
            .collect();
        if !unfit.is_empty() {
            return error(errors::INVALID_TOPIC, &unfit);
        }
        let fresh = parsed
            .iter()
            .filter(|t| !self.topics.iter().any(|s| s.topic == t.text))
            .count();
        if self.topics.len() + fresh > self.dialect.limits.max_bindings {
            return error(errors::TOO_MANY, &topics);
        }
        if root.get("resume_from").is_some() {
            if let Some(wait) = super::resume_gate(
                self.dialect.source.as_ref(),
                &self.dialect.admission,
                &self.sequencer,
                &mut self.resume_turn,
                (
                    root.get("resume_from").and_then(|v| v.as_str()),
                    subscriptions.last_offset(),
                ),
            ) {
                return Reply::Hold(wait);
            }
        }
        let mut added: Vec<Subscribed> = Vec::new();
        let mut encoders: Vec<(String, Rc<dyn FrameEncoder>)> = Vec::new();
        for topic in &parsed {
            let pattern = topic.internal_pattern();
            let mut head = Vec::with_capacity(16 + topic.text.len());
            head.extend_from_slice(b"{\"topic\":");
            json::write_str(&mut head, topic.text);
            head.push(b',');
            let encoder: Rc<dyn FrameEncoder> = Rc::new(VoipbinFrame { head });
            match subscriptions.subscribe(Separator::Colon, &pattern, topic.text, encoder.clone()) {
                Ok(true) => {
                    encoders.push((pattern.clone(), encoder));
                    added.push(Subscribed {
                        topic: topic.text.to_string(),
                        pattern,
                        amqp: topic.amqp(),
                    })
                }
                Ok(false) => {}
                Err(_) => {
                    // Validated above, so not expected; should it happen, undo this command's
                    // part so that the error is the whole truth.
                    for sub in added {
                        subscriptions.unsubscribe(Separator::Colon, &sub.pattern, &sub.topic);
                    }
                    return error(errors::INVALID_TOPIC, &[topic.text]);
                }
            }
        }
        let mut waits = Vec::with_capacity(added.len());
        for sub in added {
            waits.push(self.dialect.source.acquire(sub.amqp.clone()));
            self.topics.push(sub);
        }
        self.file(subscriptions);
        // `resume_from` (docs/resume.md): the `subscribed` frame says whether it could, then what
        // was missed, once per socket, then live.
        if let Some(from) = root.get("resume_from") {
            let resumed = super::resume(
                self.dialect.source.as_ref(),
                from.as_str(),
                subscriptions,
                (Separator::Colon, super::VOIPBIN_POSITION),
                &encoders,
                true,
                &mut self.resume_turn,
            );
            let mut reply = frame("subscribed", None, &topics);
            reply.pop();
            reply.push(',');
            reply.push_str(&resumed.members());
            reply.push('}');
            return Reply::Resumed(reply, resumed.frames);
        }
        let reply = frame("subscribed", None, &topics);
        if waits.is_empty() {
            return Reply::Text(reply);
        }
        let wait = self.dialect.limits.bind_wait;
        Reply::Later(Box::pin(async move {
            let _ = crate::shard::timeout(wait, futures_util::future::join_all(waits)).await;
            Reply::Text(reply)
        }))
    }

    fn unsubscribe(&mut self, topics: &[&str], subscriptions: &mut Subscriptions<'_>) -> Reply {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.topics)
            .into_iter()
            .partition(|s| topics.contains(&s.topic.as_str()));
        self.topics = keep;
        let mut removed = Vec::with_capacity(gone.len());
        for sub in gone {
            if subscriptions.unsubscribe(Separator::Colon, &sub.pattern, &sub.topic) {
                self.dialect.source.release(sub.amqp);
            }
            removed.push(sub.topic);
        }
        self.file(subscriptions);
        let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
        Reply::Text(frame("unsubscribed", None, &removed))
    }

    /// Files the socket for the REST listing under its identity's account, with its topics.
    fn file(&self, subscriptions: &mut Subscriptions<'_>) {
        subscriptions.set_filed(vec![Filed {
            account: self.identity.account_id.clone(),
            bindings: self.topics.iter().map(|t| t.topic.clone()).collect(),
        }]);
    }
}

impl Drop for VoipbinSession {
    /// The socket is gone: give back every AMQP reference it held.
    fn drop(&mut self) {
        for sub in self.topics.drain(..) {
            self.dialect.source.release(sub.amqp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(customer: Option<&str>, agent: Option<&str>, bits: u32) -> Identity {
        Identity {
            account_id: customer.unwrap_or("x").to_string(),
            superduper_admin: false,
            publish: false,
            customer_id: customer.map(str::to_string),
            agent_id: agent.map(str::to_string),
            permissions: Permissions(bits),
            expires_at: None,
            admin: false,
            commands: false,
            file_credential: None,
        }
    }

    fn may(identity: &Identity, topic: &str) -> bool {
        may_subscribe(identity, &Topic::parse(topic).expect("valid topic"))
    }

    #[test]
    fn permissions_follow_voipbin() {
        let agent = identity(Some("c1"), Some("a1"), Permissions::AGENT);
        assert!(may(&agent, "agent_id:a1"));
        assert!(may(&agent, "agent_id:a1:call"));
        assert!(!may(&agent, "agent_id:a2"));
        assert!(!may(&agent, "agent_id:*"));
        assert!(
            !may(&agent, "customer_id:c1"),
            "an agent is not a customer admin"
        );
        for bits in [Permissions::ADMIN, Permissions::MANAGER] {
            let manager = identity(Some("c1"), None, bits);
            assert!(may(&manager, "customer_id:c1:call"));
            assert!(!may(&manager, "customer_id:c2"));
            assert!(!may(&manager, "customer_id:*"));
            assert!(!may(&manager, "agent_id:a1"), "only the agent itself");
        }
        let root = identity(None, None, Permissions::SUPER_ADMIN);
        assert!(may(&root, "customer_id:c2:call"));
        assert!(may(&root, "customer_id:*"));
        assert!(
            !may(&root, "agent_id:a1"),
            "agent topics are the agent's own"
        );
    }
}

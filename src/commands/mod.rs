//! Call and conference commands (docs/kazoo.md "Commands"): a command taken
//! on a socket or on crossbar's REST paths becomes exactly the AMQP message crossbar would
//! publish, so Kazoo's own apps act on it (konami for channels, ecallmgr for conferences).
//!
//! One path for both ways in: [`parse`] reads and bounds every field (nothing from the network
//! reaches a routing key or a body unchecked), [`Commander::authorize`] checks the token's right,
//! the account, and that the call or conference is live in exactly that account ([`Live`]), and
//! builds the message; [`Commander::publish`] sends it and counts the result.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::auth::{Auth, Identity};
use crate::families::{encode_kazoo_key, valid_account_id, AmqpBinding};
use crate::ingest::{EventSource, PublishError};
use crate::json::{self, TapeValue};

pub use crate::ingest::live::{Call, Live, LiveLimits, Watch};

/// The longest id (call, conference) and the longest string field, in bytes.
const MAX_ID_BYTES: usize = 256;
const MAX_FIELD_BYTES: usize = 1024;
/// The largest free-form field (`captures`, `collected`) once written as JSON.
const MAX_VALUE_BYTES: usize = 4096;

/// Channel actions (konami's metaflow actions), in the order metrics list them.
pub const CHANNEL_ACTIONS: &[&str] = &[
    "hangup",
    "break",
    "transfer",
    "callflow",
    "intercept",
    "move",
];
/// Conference actions, and the `Application-Name` ecallmgr knows each by.
pub const CONFERENCE_ACTIONS: &[(&str, &str)] = &[
    ("mute", "mute_participant"),
    ("unmute", "unmute_participant"),
    ("deaf", "deaf_participant"),
    ("undeaf", "undeaf_participant"),
    ("kick", "kick"),
    ("lock", "lock"),
    ("unlock", "unlock"),
];

/// Why a command was not carried out. The strings are what clients see (crossbar's where it
/// has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("commands not allowed for this token")]
    NotAllowed,
    #[error("unauthorized account id")]
    Account,
    #[error("unauthorized wildcard account id")]
    WildcardAccount,
    /// A field is missing, malformed or out of bounds: `(field, why)`.
    #[error("invalid data: {0} {1}")]
    Invalid(&'static str, &'static str),
    /// The call or conference is not live in the account (crossbar's 404).
    #[error("bad identifier")]
    BadIdentifier(String),
    #[error("Channel is not bridged")]
    NotBridged,
    #[error("broker unavailable")]
    Unavailable,
}

impl CommandError {
    /// Results, in the order metrics list them.
    pub const RESULTS: [&'static str; 7] = [
        "published",
        "not_allowed",
        "bad_account",
        "invalid_data",
        "bad_identifier",
        "not_bridged",
        "unavailable",
    ];

    fn result_index(&self) -> usize {
        match self {
            CommandError::NotAllowed => 1,
            CommandError::Account | CommandError::WildcardAccount => 2,
            CommandError::Invalid(..) => 3,
            CommandError::BadIdentifier(_) => 4,
            CommandError::NotBridged => 5,
            CommandError::Unavailable => 6,
        }
    }
}

/// What is commanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Channel { call_id: String },
    Conference { conference_id: String },
}

/// A parsed, bounded command; not yet authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The account it acts in (`account_id`, default the token's).
    pub account: String,
    pub target: Target,
    /// The action, one of [`CHANNEL_ACTIONS`] or [`CONFERENCE_ACTIONS`].
    pub action: &'static str,
    /// Channel actions: the `Data` members, JSON-encoded values, empty ones dropped.
    data: Vec<(&'static str, Vec<u8>)>,
    /// Conference actions: the participant.
    participant: Option<u32>,
}

/// Which command a message is: the socket's `action` (`channel` or `conference`), or the REST
/// path it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Channel,
    Conference,
}

/// How one field of an action is read.
#[derive(Clone, Copy)]
enum Field {
    Text,
    Flag,
    /// Any JSON (`captures`, `collected`), bounded once written.
    Value,
}

/// The `Data` fields of each channel action (crossbar's `cb_channels`), and which are required.
fn channel_fields(action: &str) -> &'static [(&'static str, Field, bool)] {
    match action {
        "transfer" => &[
            ("target", Field::Text, true),
            ("transfer-type", Field::Text, false),
            ("moh", Field::Text, false),
        ],
        "callflow" => &[
            ("id", Field::Text, true),
            ("captures", Field::Value, false),
            ("collected", Field::Value, false),
        ],
        "intercept" => &[
            ("target_type", Field::Text, true),
            ("target_id", Field::Text, true),
            ("unbridged_only", Field::Flag, false),
        ],
        "move" => &[
            ("device_id", Field::Text, false),
            ("owner_id", Field::Text, false),
            ("auto_answer", Field::Flag, false),
            ("can_call_self", Field::Flag, false),
            ("dial_strategy", Field::Text, false),
        ],
        _ => &[],
    }
}

/// A string field: at most [`MAX_FIELD_BYTES`], no control characters.
fn text<'v>(value: TapeValue<'_, 'v>, field: &'static str) -> Result<&'v str, CommandError> {
    let text = value
        .as_str()
        .ok_or(CommandError::Invalid(field, "must be a string"))?;
    if text.is_empty() {
        return Err(CommandError::Invalid(field, "must not be empty"));
    }
    if text.len() > MAX_FIELD_BYTES || text.chars().any(char::is_control) {
        return Err(CommandError::Invalid(
            field,
            "must be at most 1024 bytes without control characters",
        ));
    }
    Ok(text)
}

/// A call id: as a string field, at most [`MAX_ID_BYTES`], never a lone wildcard (Kazoo's key
/// encoding leaves `*` and `#` as they are).
fn call_id(value: Option<TapeValue<'_, '_>>) -> Result<String, CommandError> {
    let value = value.ok_or(CommandError::Invalid("call_id", "required"))?;
    let id = text(value, "call_id")?;
    if id.len() > MAX_ID_BYTES || id == "*" || id == "#" || id.contains(char::is_whitespace) {
        return Err(CommandError::Invalid(
            "call_id",
            "must be a call id (at most 256 bytes, no spaces, not a wildcard)",
        ));
    }
    Ok(id.to_string())
}

/// A conference id: it is published unencoded in the routing key, so only characters that
/// cannot change the key's meaning.
fn conference_id(value: Option<TapeValue<'_, '_>>) -> Result<String, CommandError> {
    let value = value.ok_or(CommandError::Invalid("conference_id", "required"))?;
    let id = text(value, "conference_id")?;
    if !valid_conference_id(id) {
        return Err(CommandError::Invalid(
            "conference_id",
            "must be at most 256 of A-Z a-z 0-9 - _ ~ @ + =",
        ));
    }
    Ok(id.to_string())
}

/// Whether `id` may name a conference in a routing key as it is.
pub fn valid_conference_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_~@+=".contains(&b))
}

/// A participant id: a non-negative integer (a number, or a string of digits as in a REST path).
pub fn participant_id(value: TapeValue<'_, '_>) -> Result<u32, CommandError> {
    const WHY: &str = "must be a participant number";
    if let Some(n) = value.as_u64() {
        return u32::try_from(n).map_err(|_| CommandError::Invalid("participant_id", WHY));
    }
    parse_participant(value.as_str().unwrap_or_default())
}

/// A participant id from text (a REST path segment).
pub fn parse_participant(text: &str) -> Result<u32, CommandError> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Invalid(
            "participant_id",
            "must be a participant number",
        ));
    }
    text.parse()
        .map_err(|_| CommandError::Invalid("participant_id", "must be a participant number"))
}

/// Reads a command from its `data` object. `kind` says which family; `account` is the
/// token's, used when `data.account_id` is absent.
pub fn parse(kind: Kind, data: TapeValue<'_, '_>, account: &str) -> Result<Command, CommandError> {
    if !data.is_object() {
        return Err(CommandError::Invalid("data", "must be an object"));
    }
    let account = match data.get("account_id") {
        None => account.to_string(),
        Some(value) => match value.as_str() {
            Some("*") => return Err(CommandError::WildcardAccount),
            Some(account) if valid_account_id(account) => account.to_string(),
            _ => return Err(CommandError::Account),
        },
    };
    let action = data
        .get("action")
        .ok_or(CommandError::Invalid("action", "required"))?
        .as_str()
        .ok_or(CommandError::Invalid("action", "must be a string"))?;
    match kind {
        Kind::Channel => {
            let action = CHANNEL_ACTIONS
                .iter()
                .copied()
                .find(|a| *a == action)
                .ok_or(CommandError::Invalid(
                    "action",
                    "must be one of hangup, break, transfer, callflow, intercept, move",
                ))?;
            let call_id = call_id(data.get("call_id"))?;
            let mut fields = Vec::new();
            for &(name, field, required) in channel_fields(action) {
                let value = data.get(name).filter(|v| !v.is_null());
                let Some(value) = value else {
                    if required {
                        return Err(CommandError::Invalid(name, "required"));
                    }
                    continue;
                };
                let mut out = Vec::new();
                match field {
                    Field::Text => json::write_str(&mut out, text(value, name)?),
                    Field::Flag => {
                        let flag = value
                            .as_bool()
                            .ok_or(CommandError::Invalid(name, "must be true or false"))?;
                        out.extend_from_slice(if flag { b"true" } else { b"false" });
                    }
                    Field::Value => {
                        json::write_value(&mut out, value, &mut |o, k| json::write_str(o, k));
                        if out.len() > MAX_VALUE_BYTES {
                            return Err(CommandError::Invalid(name, "must be at most 4096 bytes"));
                        }
                    }
                }
                fields.push((name, out));
            }
            if action == "transfer" && !fields.iter().any(|(n, _)| *n == "transfer-type") {
                fields.push(("transfer-type", b"\"blind\"".to_vec()));
            }
            if action == "move"
                && !fields
                    .iter()
                    .any(|(n, _)| matches!(*n, "device_id" | "owner_id"))
            {
                return Err(CommandError::Invalid("device_id", "or owner_id required"));
            }
            Ok(Command {
                account,
                target: Target::Channel { call_id },
                action,
                data: fields,
                participant: None,
            })
        }
        Kind::Conference => {
            let (action, _) = CONFERENCE_ACTIONS
                .iter()
                .copied()
                .find(|(a, _)| *a == action)
                .ok_or(CommandError::Invalid(
                    "action",
                    "must be one of mute, unmute, deaf, undeaf, kick, lock, unlock",
                ))?;
            let conference_id = conference_id(data.get("conference_id"))?;
            let participant = match data.get("participant_id").filter(|v| !v.is_null()) {
                Some(value) => Some(participant_id(value)?),
                None => None,
            };
            let needs_participant = matches!(action, "mute" | "unmute" | "deaf" | "undeaf");
            if needs_participant && participant.is_none() {
                return Err(CommandError::Invalid("participant_id", "required"));
            }
            Ok(Command {
                account,
                target: Target::Conference { conference_id },
                action,
                data: Vec::new(),
                participant: participant.filter(|_| !matches!(action, "lock" | "unlock")),
            })
        }
    }
}

/// An authorized command, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub command: Command,
    pub exchange: &'static str,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub msg_id: String,
}

/// Commands per action and result since the process started (`horizon_commands_total`).
pub static COUNTS: [[AtomicU64; CommandError::RESULTS.len()]; 14] =
    [const { [const { AtomicU64::new(0) }; CommandError::RESULTS.len()] }; 14];

/// The actions in the order [`COUNTS`] holds them (the last: an action not understood).
pub fn counted_actions() -> impl Iterator<Item = &'static str> {
    CHANNEL_ACTIONS
        .iter()
        .copied()
        .chain(CONFERENCE_ACTIONS.iter().map(|(a, _)| *a))
        .chain(["unknown"])
}

fn count(action: Option<&str>, result: usize) {
    let at = action
        .and_then(|a| counted_actions().position(|c| c == a))
        .unwrap_or(13);
    COUNTS[at][result].fetch_add(1, Ordering::Relaxed);
}

/// Counts a command refused before it could be authorized (its action, if it had one).
pub fn refused(action: Option<&str>, error: &CommandError) {
    count(action, error.result_index());
}

/// Takes commands for one node: shared by the shards' sessions and the REST side.
pub struct Commander {
    auth: Arc<Auth>,
    source: Arc<dyn EventSource>,
    live: Arc<Live>,
    /// `Node` of the messages published: `horizon@<node>`.
    node: String,
}

/// One socket's (or REST caller's) hold on an account's call and conference events: the
/// tracker watches the account, and the node consumes its events, while it lives.
pub struct CommandWatch {
    watch: Watch,
    source: Arc<dyn EventSource>,
    bindings: Vec<AmqpBinding>,
}

impl CommandWatch {
    pub fn account(&self) -> &str {
        self.watch.account()
    }
}

impl Drop for CommandWatch {
    fn drop(&mut self) {
        for binding in self.bindings.drain(..) {
            self.source.release(binding);
        }
    }
}

/// A binding being made at the source.
pub type BindWait =
    Pin<Box<dyn std::future::Future<Output = Result<(), crate::ingest::SourceDown>> + Send>>;

/// The call events that make a call known, bridged, or gone.
const TRACKED_CALL_EVENTS: &[&str] = &[
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_BRIDGE",
    "CHANNEL_DESTROY",
];

impl Commander {
    /// `None` when the source tracks nothing (it has no [`Live`]).
    pub fn new(auth: Arc<Auth>, source: Arc<dyn EventSource>) -> Option<Arc<Commander>> {
        let (live, node) = source.live()?;
        Some(Arc::new(Commander {
            auth,
            source,
            live,
            node: format!("horizon@{node}"),
        }))
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Starts tracking `account`'s calls and conferences: the tracker watches it and the node
    /// binds its call and conference events (reference-counted like every binding). The
    /// futures resolve once the broker has the bindings.
    pub fn watch(&self, account: &str) -> (CommandWatch, Vec<BindWait>) {
        let mut bindings: Vec<AmqpBinding> = TRACKED_CALL_EVENTS
            .iter()
            .map(|event| AmqpBinding {
                exchange: "callevt",
                key: format!("call.{event}.*"),
            })
            .collect();
        bindings.push(AmqpBinding {
            exchange: "conference",
            key: format!("conference.event.*.{account}.*.*"),
        });
        // Each reference is taken as its request is sent; the futures only report the bind.
        let waits = bindings
            .iter()
            .map(|binding| self.source.acquire(binding.clone()))
            .collect();
        let watch = CommandWatch {
            watch: self.live.watch(account),
            source: self.source.clone(),
            bindings,
        };
        (watch, waits)
    }

    /// Checks the token's right, the account and what is live, and builds the message.
    pub fn authorize(
        &self,
        identity: &Identity,
        command: Command,
    ) -> Result<Prepared, CommandError> {
        let result = self.check(identity, command);
        if let Err((action, e)) = &result {
            count(Some(action), e.result_index());
        }
        result.map_err(|(_, e)| e)
    }

    fn check(
        &self,
        identity: &Identity,
        command: Command,
    ) -> Result<Prepared, (&'static str, CommandError)> {
        let action = command.action;
        let fail = |e| (action, e);
        if !identity.commands {
            return Err(fail(CommandError::NotAllowed));
        }
        if !self.auth.may_see(identity, &command.account) {
            return Err(fail(CommandError::Account));
        }
        let msg_id = crate::ids::random_hex(16);
        let mut body = Vec::with_capacity(512);
        let (exchange, routing_key) = match &command.target {
            Target::Channel { call_id } => {
                let call = self
                    .live
                    .call(call_id)
                    .filter(|call| call.account == command.account)
                    .ok_or_else(|| fail(CommandError::BadIdentifier(call_id.clone())))?;
                if action == "transfer" && call.other_leg.is_none() {
                    return Err(fail(CommandError::NotBridged));
                }
                body.extend_from_slice(
                    b"{\"Event-Category\":\"metaflow\",\"Event-Name\":\"action\",\"Action\":",
                );
                json::write_str(&mut body, action);
                body.extend_from_slice(b",\"Call-ID\":");
                json::write_str(&mut body, call_id);
                body.extend_from_slice(b",\"Data\":{");
                for (i, (name, value)) in command.data.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    json::write_str(&mut body, name);
                    body.push(b':');
                    body.extend_from_slice(value);
                }
                body.push(b'}');
                (
                    "metaflow",
                    format!("metaflow.action.{}.{action}", encode_kazoo_key(call_id)),
                )
            }
            Target::Conference { conference_id } => {
                if !self.live.conference(&command.account, conference_id) {
                    return Err(fail(CommandError::BadIdentifier(conference_id.clone())));
                }
                let application = CONFERENCE_ACTIONS
                    .iter()
                    .find(|(a, _)| *a == action)
                    .map_or(action, |(_, name)| name);
                body.extend_from_slice(b"{\"Event-Category\":\"conference\",\"Event-Name\":\"command\",\"Application-Name\":");
                json::write_str(&mut body, application);
                body.extend_from_slice(b",\"Conference-ID\":");
                json::write_str(&mut body, conference_id);
                if let Some(participant) = command.participant {
                    body.extend_from_slice(
                        format!(",\"Participant-ID\":\"{participant}\"").as_bytes(),
                    );
                }
                body.extend_from_slice(b",\"Account-ID\":");
                json::write_str(&mut body, &command.account);
                ("conference", format!("conference.command.{conference_id}"))
            }
        };
        body.extend_from_slice(b",\"Msg-ID\":");
        json::write_str(&mut body, &msg_id);
        body.extend_from_slice(b",\"App-Name\":\"horizon\",\"App-Version\":");
        json::write_str(&mut body, env!("CARGO_PKG_VERSION"));
        body.extend_from_slice(b",\"Node\":");
        json::write_str(&mut body, &self.node);
        body.push(b'}');
        Ok(Prepared {
            command,
            exchange,
            routing_key,
            body,
            msg_id,
        })
    }

    /// Publishes an authorized command; logs it (`by`: the socket or REST caller, never the
    /// token) and counts the result.
    pub fn publish(
        self: &Arc<Self>,
        prepared: Prepared,
        by: String,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Prepared, CommandError>> + Send>> {
        let sent = self.source.publish(
            prepared.exchange,
            &prepared.routing_key,
            prepared.body.clone(),
        );
        Box::pin(async move {
            // The embedded bus routes what it can and has no broker to hand the rest to: a
            // command nobody in this process consumes is still carried out.
            let result = match sent.await {
                Ok(()) | Err(PublishError::NotRoutable(_)) => Ok(()),
                Err(_) => Err(CommandError::Unavailable),
            };
            let command = &prepared.command;
            let target = match &command.target {
                Target::Channel { call_id } => format!("call {call_id}"),
                Target::Conference { conference_id } => format!("conference {conference_id}"),
            };
            match result {
                Ok(()) => {
                    count(Some(command.action), 0);
                    tracing::info!(
                        "command: {} on {target} of account {} by {by}: published (Msg-ID {})",
                        command.action,
                        command.account,
                        prepared.msg_id
                    );
                    Ok(prepared)
                }
                Err(e) => {
                    count(Some(command.action), e.result_index());
                    tracing::warn!(
                        "command: {} on {target} of account {} by {by}: not published ({e})",
                        command.action,
                        command.account
                    );
                    Err(e)
                }
            }
        })
    }
}

/// The reply data of a published command: `{"command":..,"call_id"|"conference_id":..,
/// "msg_id":..}`.
pub fn reply_data(prepared: &Prepared) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"{\"command\":");
    json::write_str(&mut out, prepared.command.action);
    match &prepared.command.target {
        Target::Channel { call_id } => {
            out.extend_from_slice(b",\"call_id\":");
            json::write_str(&mut out, call_id);
        }
        Target::Conference { conference_id } => {
            out.extend_from_slice(b",\"conference_id\":");
            json::write_str(&mut out, conference_id);
            if let Some(p) = prepared.command.participant {
                out.extend_from_slice(format!(",\"participant_id\":{p}").as_bytes());
            }
        }
    }
    out.extend_from_slice(b",\"msg_id\":");
    json::write_str(&mut out, &prepared.msg_id);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(kind: Kind, text: &str) -> Result<Command, CommandError> {
        let mut bytes = text.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("JSON");
        parse(kind, TapeValue::root(&tape.0).expect("a value"), "acct-a")
    }

    fn data(command: &Command) -> Vec<(&str, String)> {
        command
            .data
            .iter()
            .map(|(k, v)| (*k, String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    #[test]
    fn channel_commands_keep_crossbars_fields_and_defaults() {
        let c = parsed(
            Kind::Channel,
            r#"{"call_id":"c1@h.example","action":"transfer","target":"2000","moh":null}"#,
        )
        .unwrap();
        assert_eq!(c.account, "acct-a");
        assert_eq!(c.action, "transfer");
        assert_eq!(
            data(&c),
            [
                ("target", "\"2000\"".into()),
                ("transfer-type", "\"blind\"".into())
            ]
        );
        let c = parsed(
            Kind::Channel,
            r#"{"call_id":"c1","action":"callflow","id":"cf","captures":["1"],"account_id":"acct-b"}"#,
        )
        .unwrap();
        assert_eq!(c.account, "acct-b");
        assert_eq!(
            data(&c),
            [("id", "\"cf\"".into()), ("captures", "[\"1\"]".into())]
        );
        assert_eq!(
            parsed(Kind::Channel, r#"{"call_id":"c1","action":"move"}"#),
            Err(CommandError::Invalid("device_id", "or owner_id required"))
        );
        assert_eq!(
            parsed(
                Kind::Channel,
                r#"{"call_id":"c1","action":"intercept","target_type":"device","target_id":"d","unbridged_only":"yes"}"#
            ),
            Err(CommandError::Invalid(
                "unbridged_only",
                "must be true or false"
            ))
        );
    }

    #[test]
    fn hostile_fields_are_refused_before_anything_is_built() {
        let long = "9".repeat(MAX_FIELD_BYTES + 1);
        for (text, want) in [
            (
                format!(r#"{{"call_id":"c1","action":"transfer","target":"{long}"}}"#),
                CommandError::Invalid(
                    "target",
                    "must be at most 1024 bytes without control characters",
                ),
            ),
            (
                r#"{"call_id":"*","action":"hangup"}"#.into(),
                CommandError::Invalid(
                    "call_id",
                    "must be a call id (at most 256 bytes, no spaces, not a wildcard)",
                ),
            ),
            (
                r#"{"call_id":"a b","action":"hangup"}"#.into(),
                CommandError::Invalid(
                    "call_id",
                    "must be a call id (at most 256 bytes, no spaces, not a wildcard)",
                ),
            ),
            (
                r#"{"call_id":"c1","action":"hangup","account_id":"*"}"#.into(),
                CommandError::WildcardAccount,
            ),
            (
                r#"{"call_id":"c1","action":"hangup","account_id":"a.b"}"#.into(),
                CommandError::Account,
            ),
            (
                r#"{"call_id":"c1","action":"eavesdrop"}"#.into(),
                CommandError::Invalid(
                    "action",
                    "must be one of hangup, break, transfer, callflow, intercept, move",
                ),
            ),
        ] {
            assert_eq!(parsed(Kind::Channel, &text), Err(want), "{text}");
        }
        for (text, want) in [
            (
                r#"{"conference_id":"c.1","action":"lock"}"#,
                CommandError::Invalid(
                    "conference_id",
                    "must be at most 256 of A-Z a-z 0-9 - _ ~ @ + =",
                ),
            ),
            (
                r#"{"conference_id":"c1","action":"mute","participant_id":-3}"#,
                CommandError::Invalid("participant_id", "must be a participant number"),
            ),
            (
                r#"{"conference_id":"c1","action":"mute","participant_id":4294967296}"#,
                CommandError::Invalid("participant_id", "must be a participant number"),
            ),
            (
                r#"{"conference_id":"c1","action":"deaf"}"#,
                CommandError::Invalid("participant_id", "required"),
            ),
        ] {
            assert_eq!(parsed(Kind::Conference, text), Err(want), "{text}");
        }
        let c = parsed(
            Kind::Conference,
            r#"{"conference_id":"c1","action":"mute","participant_id":"12"}"#,
        )
        .unwrap();
        assert_eq!(c.participant, Some(12));
        let c = parsed(
            Kind::Conference,
            r#"{"conference_id":"c1","action":"lock","participant_id":3}"#,
        )
        .unwrap();
        assert_eq!(c.participant, None, "lock names no participant");
    }

    #[test]
    fn every_command_and_result_has_a_counter() {
        assert_eq!(counted_actions().count(), COUNTS.len());
    }
}

//! The ingest side of the families: one AMQP delivery in, one routed event out.
//!
//! Hot path (once per delivery, not per socket; `benches/ingest.rs`). The body is parsed once into
//! a simd-json tape (reused buffers, strings unescaped in place), the family's fields are read off
//! the tape, and the payload is written once in Kazoo master's normalized form - keys lower-cased
//! with `-` turned into `_` at every depth, `null` members dropped, the routing headers and private
//! fields dropped at the top. The result
//! is the part of the event frame every subscriber shares:
//! `"name":..,"routing_key":..,"data":{..}}`.

use bytes::Bytes;
use simd_json::{Buffers, Tape};

use super::encoding::{account_db, account_from_db, decode_segment, encode_segment};
use super::voipbin;
use super::{valid_account_id, CALL_EVENTS, PRESENCE_KINDS};
use crate::binding::Separator;
use crate::json::{self, TapeValue};

/// Routing headers dropped from `data`, as Kazoo master's blackhole does
/// (`kz_json:normalize_jobj(kz_api:public_fields(J))`): where a message came from and went, not
/// what it says. `Event-Name`, `Event-Category`, `App-Name`, `App-Version` and `Msg-ID` stay (Monster
/// UI reads `data.event_name`); so do keys starting with `_` or `pvt_` not, being private.
const ROUTING_HEADERS: &[&str] = &[
    "Server-ID",
    "Node",
    "Server-Queue-ID",
    "Raw-Headers",
    "Destination-Server",
    "Defer-Response",
];

fn is_private(key: &str) -> bool {
    ROUTING_HEADERS.contains(&key) || key.starts_with('_') || key.starts_with("pvt_")
}

/// An event ready for the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The account-scoped internal key bindings are matched against.
    pub key: String,
    /// More internal keys of the same event (VoIPBin's other topic forms; see `Event::also`).
    pub also: Vec<String>,
    /// `.` for Kazoo keys, `:` for VoIPBin topics.
    pub separator: Separator,
    /// The account the event belongs to.
    pub account: String,
    /// `"name":..,"routing_key":..,"data":{..}}`: the tail of every event frame for it.
    pub tail: Bytes,
    /// What a call or conference event says about what is live (commands check against it).
    pub facts: Option<Facts>,
}

/// The part of a call or conference event that command authorization needs
/// ([`crate::ingest::live::Live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// A call event: the call is live until its `CHANNEL_DESTROY`.
    Call {
        call_id: String,
        /// `Other-Leg-Call-ID`: the call is bridged to that leg.
        other_leg: Option<String>,
        destroyed: bool,
    },
    /// A conference event (ecallmgr's): the conference is live until `conference-destroy`.
    Conference { conference: String, destroyed: bool },
}

/// Why a delivery was skipped (acked and counted, never retried: it would fail again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Skip {
    #[error("body is not JSON")]
    NotJson,
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("missing or empty {0}")]
    Missing(&'static str),
    #[error("account id is not a valid routing-key segment")]
    InvalidAccount,
    #[error("database is not an account database")]
    NotAccountDb,
    #[error("event is not one the family carries")]
    UnsupportedEvent,
    #[error("routing key does not have the family's shape")]
    MalformedRoutingKey,
    #[error("exchange is not one of the families'")]
    UnknownExchange,
}

impl Skip {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Skip; 8] = [
        Skip::NotJson,
        Skip::NotAnObject,
        Skip::Missing(""),
        Skip::InvalidAccount,
        Skip::NotAccountDb,
        Skip::UnsupportedEvent,
        Skip::MalformedRoutingKey,
        Skip::UnknownExchange,
    ];

    /// A short label for counters and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::NotAnObject => "not_an_object",
            Skip::Missing(_) => "missing_field",
            Skip::InvalidAccount => "invalid_account",
            Skip::NotAccountDb => "not_account_db",
            Skip::UnsupportedEvent => "unsupported_event",
            Skip::MalformedRoutingKey => "malformed_routing_key",
            Skip::UnknownExchange => "unknown_exchange",
        }
    }

    /// Position in [`Skip::ALL`].
    pub fn index(&self) -> usize {
        Skip::ALL
            .iter()
            .position(|s| s.label() == self.label())
            .unwrap_or(0)
    }
}

/// Parses and normalizes deliveries, reusing its buffers. One per ingest thread.
pub struct Normalizer {
    buffers: Buffers,
    tape: Tape<'static>,
    out: Vec<u8>,
}

impl Default for Normalizer {
    fn default() -> Normalizer {
        Normalizer {
            buffers: Buffers::default(),
            tape: Tape::null().reset(),
            out: Vec::with_capacity(4096),
        }
    }
}

impl Normalizer {
    /// Routes and normalizes one delivery. `body` is parsed in place (simd-json unescapes
    /// strings into it), so the caller hands over a buffer it no longer needs.
    pub fn normalize(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: &mut [u8],
    ) -> Result<Normalized, Skip> {
        let mut tape = std::mem::replace(&mut self.tape, Tape::null().reset()).reset();
        let result = match simd_json::fill_tape(body, &mut self.buffers, &mut tape) {
            Ok(()) => match TapeValue::root(&tape.0) {
                Some(root) if root.is_object() => self.route(exchange, routing_key, root),
                _ => Err(Skip::NotAnObject),
            },
            Err(_) => Err(Skip::NotJson),
        };
        self.tape = tape.reset();
        result
    }

    fn route(
        &mut self,
        exchange: &str,
        routing_key: &str,
        root: TapeValue<'_, '_>,
    ) -> Result<Normalized, Skip> {
        if exchange == voipbin::EXCHANGE {
            return self.route_voipbin(routing_key, root);
        }
        let field = |name: &'static str| {
            root.get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .ok_or(Skip::Missing(name))
        };
        let event_name = || field("Event-Name");
        let segments: Vec<&str> = routing_key.split('.').collect();
        let mut facts = None;
        let (key, account, name) = match exchange {
            "callevt" => {
                let name = event_name()?;
                if !CALL_EVENTS.contains(&name) {
                    return Err(Skip::UnsupportedEvent);
                }
                let call_id = field("Call-ID")?;
                let account = root
                    .get("Custom-Channel-Vars")
                    .and_then(|ccv| ccv.get("Account-ID"))
                    .and_then(|v| v.as_str())
                    .ok_or(Skip::Missing("Custom-Channel-Vars.Account-ID"))?;
                let account = checked_account(account)?;
                let key = format!("call.{account}.{name}.{}", encode_segment(call_id));
                facts = Some(Facts::Call {
                    call_id: call_id.to_string(),
                    other_leg: root
                        .get("Other-Leg-Call-ID")
                        .and_then(|v| v.as_str())
                        .filter(|leg| !leg.is_empty())
                        .map(str::to_string),
                    destroyed: name == "CHANNEL_DESTROY",
                });
                (key, account.to_string(), name)
            }
            // `{ACTION}.{DB}.{TYPE}.{ID}`; a monthly database (`...-YYYYMM`) is keyed as its
            // account's database, so subscriptions match every month.
            "configuration" => {
                let [action, db, kind, id] = segments.as_slice() else {
                    return Err(Skip::MalformedRoutingKey);
                };
                let account = account_from_db(db).ok_or(Skip::NotAccountDb)?;
                let account = checked_account(&account)?.to_string();
                let key = format!(
                    "{}.{}.{}.{}",
                    plain(action)?,
                    account_db(&account),
                    plain(kind)?,
                    canonical(id)?
                );
                let name = field("Event-Name").unwrap_or(action);
                (key, account, name)
            }
            "conference" => match segments.as_slice() {
                // ecallmgr: `conference.event.{EVENT}.{ACCT}.{CONF}.{CALL}` (kapi_conference
                // event_key).
                ["conference", "event", event, account, conference, call] => {
                    let account = checked_account(account)?;
                    let key = format!(
                        "conference.event.{account}.{}.{}.{}",
                        plain(event)?,
                        canonical(conference)?,
                        canonical(call)?
                    );
                    let name = field("Event").or_else(|_| event_name())?;
                    facts = Some(Facts::Conference {
                        conference: decode_segment(conference),
                        destroyed: *event == "conference-destroy",
                    });
                    (key, account.to_string(), name)
                }
                // Commands name no account in their key: the payload's, or no one's.
                ["conference", "command", conference] => {
                    let account = payload_account(root)?;
                    let key = format!("conference.command.{account}.{}", canonical(conference)?);
                    let name = field("Application-Name").or_else(|_| event_name())?;
                    (key, account.to_string(), name)
                }
                _ => return Err(Skip::MalformedRoutingKey),
            },
            // kapi_fax: `fax.status.{ACCT}.{FAX_ID}` on `faxes`.
            "faxes" => {
                let ["fax", "status", account, fax_id] = segments.as_slice() else {
                    return Err(Skip::MalformedRoutingKey);
                };
                let account = checked_account(account)?;
                let key = format!("fax.status.{account}.{}", canonical(fax_id)?);
                (key, account.to_string(), event_name().unwrap_or("status"))
            }
            // kapi_presence: `{dialog|update|mwi_updates}.{REALM}.{ID}`. The account is the
            // realm's; the shard matches the realm a subscription's account has.
            "presence" => {
                let [kind, realm, id] = segments.as_slice() else {
                    return Err(Skip::MalformedRoutingKey);
                };
                if !PRESENCE_KINDS.contains(kind) {
                    return Err(Skip::UnsupportedEvent);
                }
                let realm = encode_segment(&decode_segment(realm).to_ascii_lowercase());
                if realm.is_empty() {
                    return Err(Skip::MalformedRoutingKey);
                }
                let key = format!("presence.{realm}.{kind}.{}", canonical(id)?);
                (key, realm, event_name().unwrap_or(kind))
            }
            // kapi_registration: `registration.success.{REALM}.{USERNAME}` on `registrar`, both
            // amqp-encoded. The account is the realm's, as for presence.
            "registrar" => {
                let ["registration", "success", realm, username] = segments.as_slice() else {
                    return Err(Skip::MalformedRoutingKey);
                };
                let name = event_name()?;
                if name != "reg_success" {
                    return Err(Skip::UnsupportedEvent);
                }
                let realm = encode_segment(&decode_segment(realm).to_ascii_lowercase());
                if realm.is_empty() {
                    return Err(Skip::MalformedRoutingKey);
                }
                let key = format!("registration.success.{realm}.{}", canonical(username)?);
                (key, realm, name)
            }
            _ => return Err(Skip::UnknownExchange),
        };

        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"\"name\":");
        json::write_str(out, name);
        out.extend_from_slice(b",\"routing_key\":");
        json::write_str(out, &key);
        out.extend_from_slice(b",\"data\":{");
        let mut first = true;
        for (k, v) in root.entries() {
            if is_private(k) || v.is_null() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            normalized_key(out, k);
            out.push(b':');
            json::write_value_without_nulls(out, v, &mut normalized_key);
        }
        out.extend_from_slice(b"}}");
        Ok(Normalized {
            key,
            also: Vec::new(),
            separator: Separator::Dot,
            account,
            tail: Bytes::copy_from_slice(out),
            facts,
        })
    }

    /// A VoIPBin delivery: `{"type","publisher","data_type","data"}` with `data` an object or a
    /// JSON string holding one. The tail is `"type":..,"data":..}` (the frame head carries the
    /// matched topic); `data` is forwarded as it is, keys untouched.
    fn route_voipbin(
        &mut self,
        routing_key: &str,
        root: TapeValue<'_, '_>,
    ) -> Result<Normalized, Skip> {
        let owner = routing_key
            .split('.')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let body_type = root
            .get("type")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty());
        let data = root.get("data").ok_or(Skip::Missing("data"))?;
        // `data` holding the object as a JSON string: the object is what is read and forwarded.
        let mut inner = data.as_str().map(|text| text.as_bytes().to_vec());
        let inner_tape = inner
            .as_mut()
            .and_then(|bytes| simd_json::to_tape(bytes).ok());
        let object = match &inner_tape {
            Some(tape) => TapeValue::root(&tape.0),
            None if data.as_str().is_none() => Some(data),
            None => None,
        };
        let field = |name: &str| object.and_then(|o| o.get(name)).and_then(|v| v.as_str());
        let anchors = voipbin::Anchors {
            id: field("id"),
            aicall_id: field("aicall_id"),
            chat_id: field("chat_id"),
            session_id: field("session_id"),
        };
        let voipbin::Keys {
            mut keys,
            event_type,
        } = voipbin::internal_keys(routing_key, body_type, anchors)
            .ok_or(Skip::MalformedRoutingKey)?;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"\"type\":");
        json::write_str(out, &event_type);
        out.extend_from_slice(b",\"data\":");
        let mut same = |out: &mut Vec<u8>, k: &str| json::write_str(out, k);
        match (object, data.as_str()) {
            (Some(value), _) => json::write_value(out, value, &mut same),
            // A string that does not hold JSON is forwarded as the string it is.
            (None, Some(text)) => json::write_str(out, text),
            (None, None) => json::write_value(out, data, &mut same),
        }
        out.push(b'}');
        let key = keys.remove(0);
        Ok(Normalized {
            key,
            also: keys,
            separator: Separator::Colon,
            account: owner,
            tail: Bytes::copy_from_slice(out),
            facts: None,
        })
    }
}

fn checked_account(account: &str) -> Result<&str, Skip> {
    if valid_account_id(account) {
        Ok(account)
    } else {
        Err(Skip::InvalidAccount)
    }
}

/// The account of a conference or fax event: `Account-ID`, else the channel's.
fn payload_account<'i>(root: TapeValue<'_, 'i>) -> Result<&'i str, Skip> {
    let account = root
        .get("Account-ID")
        .or_else(|| {
            root.get("Custom-Channel-Vars")
                .and_then(|c| c.get("Account-ID"))
        })
        .and_then(|v| v.as_str())
        .ok_or(Skip::Missing("Account-ID"))?;
    checked_account(account)
}

/// A routing-key word (an action, a type, an event name): used as it is, but never empty and never
/// a wildcard (it would match subscriptions it is not).
fn plain(segment: &str) -> Result<&str, Skip> {
    if segment.is_empty() || segment == "*" || segment == "#" {
        return Err(Skip::MalformedRoutingKey);
    }
    Ok(segment)
}

/// A routing-key id segment in the one encoding subscriptions use.
fn canonical(segment: &str) -> Result<String, Skip> {
    if segment.is_empty() {
        return Err(Skip::MalformedRoutingKey);
    }
    Ok(encode_segment(&decode_segment(segment)))
}

/// Writes `key` lower-cased with `-` turned into `_`, as Kazoo's blackhole normalizes. ASCII
/// only: bytes of multi-byte characters are all >= 0x80 and pass through unchanged.
fn normalized_key(out: &mut Vec<u8>, key: &str) {
    let bytes = key.as_bytes();
    if bytes.iter().any(|&b| json::needs_escape(b)) {
        // Rare (a key with quotes or control characters): escape, then map the rest.
        let mut mapped = String::with_capacity(key.len());
        mapped.extend(key.chars().map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        }));
        json::write_str(out, &mapped);
        return;
    }
    // Copy, then map in place: a loop the compiler vectorizes.
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let from = out.len();
    out.extend_from_slice(bytes);
    for b in &mut out[from..] {
        *b = match *b {
            b'-' => b'_',
            b'A'..=b'Z' => *b + 32,
            other => other,
        };
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(exchange: &str, key: &str, body: &str) -> Result<Normalized, Skip> {
        Normalizer::default().normalize(exchange, key, &mut body.as_bytes().to_vec())
    }

    fn tail(n: &Normalized) -> String {
        String::from_utf8(n.tail.to_vec()).expect("utf-8")
    }

    const CALL: &str = r#"{"Event-Name":"CHANNEL_CREATE","Event-Category":"call_event","Call-ID":"abc@host.example",
        "Caller-ID-Number":"+15551234","Msg-ID":"m1","Server-ID":"s1","App-Name":"ecallmgr","App-Version":"4.3",
        "Node":"ecallmgr@fs1","Nothing":null,"_private":1,"pvt_type":"x",
        "Custom-Channel-Vars":{"Account-ID":"acct-a","Owner-ID":"u1","Gone":null,"Nested-List":[{"A-B":1},null]}}"#;

    #[test]
    fn call_events_get_the_account_scoped_key_and_kazoo_normalized_data() {
        let n =
            normalize("callevt", "call.CHANNEL_CREATE.abc%40host%2Eexample", CALL).expect("routed");
        assert_eq!(n.key, "call.acct-a.CHANNEL_CREATE.abc%40host%2Eexample");
        assert_eq!(n.account, "acct-a");
        let t = tail(&n);
        let frame = format!("{{{t}");
        let mut bytes = frame.into_bytes();
        let v = simd_json::to_owned_value(&mut bytes).expect("the tail completes a JSON object");
        use simd_json::prelude::*;
        assert_eq!(v.get_str("name"), Some("CHANNEL_CREATE"));
        assert_eq!(
            v.get_str("routing_key"),
            Some("call.acct-a.CHANNEL_CREATE.abc%40host%2Eexample")
        );
        let data = v.get("data").expect("data");
        assert_eq!(data.get_str("call_id"), Some("abc@host.example"));
        assert_eq!(data.get_str("caller_id_number"), Some("+15551234"));
        // Kazoo master keeps what the event is; only where it travelled is dropped.
        for kept in [
            "msg_id",
            "app_name",
            "app_version",
            "event_name",
            "event_category",
        ] {
            assert!(data.get(kept).is_some(), "{kept} must be kept: {data}");
        }
        for dropped in ["server_id", "node", "Msg-ID", "_private", "pvt_type"] {
            assert!(data.get(dropped).is_none(), "{dropped} must be dropped");
        }
        assert_eq!(data.get_str("event_name"), Some("CHANNEL_CREATE"));
        assert!(data.get("nothing").is_none(), "null members are dropped");
        let ccv = data.get("custom_channel_vars").expect("ccv");
        assert_eq!(ccv.get_str("account_id"), Some("acct-a"));
        assert_eq!(
            ccv.get("nested_list")
                .and_then(|l| l.get_idx(0))
                .and_then(|o| o.get_i64("a_b")),
            Some(1)
        );
    }

    #[test]
    fn object_events_keep_their_routing_key() {
        let body = r#"{"Event-Name":"doc_edited","ID":"u1","Type":"user","Account-ID":"acct-a"}"#;
        let n = normalize(
            "configuration",
            "doc_edited.account%2Fac%2Fct%2F-a.user.u1",
            body,
        )
        .expect("routed");
        assert_eq!(n.key, "doc_edited.account%2Fac%2Fct%2F-a.user.u1");
        assert_eq!(n.account, "acct-a");
        assert_eq!(
            normalize("configuration", "doc_edited.system_config.user.u1", body),
            Err(Skip::NotAccountDb)
        );
        assert_eq!(
            normalize("configuration", "doc_edited.x", body),
            Err(Skip::MalformedRoutingKey)
        );
    }

    #[test]
    fn conference_fax_and_presence_keys_are_as_kazoo_master_publishes_them() {
        let body = r#"{"Event-Name":"event","Event":"add-member","Account-ID":"acct-a","Conference-ID":"conf1"}"#;
        let n = normalize(
            "conference",
            "conference.event.add-member.acct-a.conf1.abc%40h",
            body,
        )
        .expect("routed");
        assert_eq!(n.key, "conference.event.acct-a.add-member.conf1.abc%40h");
        assert_eq!(n.account, "acct-a");
        assert!(
            tail(&n).starts_with(r#""name":"add-member""#),
            "{}",
            tail(&n)
        );
        // Commands carry no account in their key: the payload's, or none at all.
        let command = r#"{"Event-Name":"command","Application-Name":"kick","Account-ID":"acct-a"}"#;
        let n = normalize("conference", "conference.command.conf1", command).expect("routed");
        assert_eq!(n.key, "conference.command.acct-a.conf1");
        assert_eq!(
            normalize(
                "conference",
                "conference.command.conf1",
                r#"{"Application-Name":"kick"}"#
            ),
            Err(Skip::Missing("Account-ID"))
        );
        let n = normalize(
            "faxes",
            "fax.status.acct-a.f1",
            r#"{"Event-Name":"status"}"#,
        )
        .expect("routed");
        assert_eq!(n.key, "fax.status.acct-a.f1");
        // Voicemail in a monthly database: keyed as the account's database.
        let db = super::super::account_db("acct-a");
        let n = normalize(
            "configuration",
            &format!("doc_created.{db}-202612.mailbox_message.vm1"),
            r#"{"Event-Name":"doc_created","Type":"mailbox_message"}"#,
        )
        .expect("routed");
        assert_eq!(n.key, format!("doc_created.{db}.mailbox_message.vm1"));
        let n = normalize(
            "presence",
            "dialog.A%2ESip%2Eexample%2Ecom.call%40x",
            r#"{"Event-Name":"dialog","State":"early"}"#,
        )
        .expect("routed");
        assert_eq!(n.key, "presence.a%2Esip%2Eexample%2Ecom.dialog.call%40x");
        assert_eq!(
            normalize("presence", "blf.realm.x", r#"{"Event-Name":"x"}"#),
            Err(Skip::UnsupportedEvent)
        );
    }

    #[test]
    fn bad_deliveries_are_skipped_with_a_reason() {
        assert_eq!(
            normalize("callevt", "call.X.y", "{not json"),
            Err(Skip::NotJson)
        );
        assert_eq!(
            normalize("callevt", "call.X.y", "[1]"),
            Err(Skip::NotAnObject)
        );
        assert_eq!(normalize("callevt", "call.X.y", ""), Err(Skip::NotJson));
        assert_eq!(
            normalize(
                "callevt",
                "call.X.y",
                r#"{"Event-Name":"CHANNEL_CREATE","Call-ID":"c"}"#
            ),
            Err(Skip::Missing("Custom-Channel-Vars.Account-ID"))
        );
        assert_eq!(
            normalize(
                "callevt",
                "call.X.y",
                r#"{"Event-Name":"CHANNEL_CREATE","Call-ID":7}"#
            ),
            Err(Skip::Missing("Call-ID"))
        );
        let evil = r#"{"Event-Name":"CHANNEL_CREATE","Call-ID":"c","Custom-Channel-Vars":{"Account-ID":"acct-b.CHANNEL_CREATE"}}"#;
        assert_eq!(
            normalize("callevt", "call.X.y", evil),
            Err(Skip::InvalidAccount)
        );
        let star = r#"{"Event-Name":"CHANNEL_CREATE","Call-ID":"c","Custom-Channel-Vars":{"Account-ID":"*"}}"#;
        assert_eq!(
            normalize("callevt", "call.X.y", star),
            Err(Skip::InvalidAccount)
        );
        assert_eq!(
            normalize(
                "callevt",
                "call.X.y",
                r#"{"Event-Name":"CHANNEL_EXECUTE","Call-ID":"c"}"#
            ),
            Err(Skip::UnsupportedEvent)
        );
        assert_eq!(normalize("other", "x", "{}"), Err(Skip::UnknownExchange));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(50_000), "]".repeat(50_000));
        assert_eq!(
            normalize("callevt", "k", &deep),
            Err(Skip::Missing("Event-Name"))
        );
    }

    #[test]
    fn voipbin_events_keep_their_data_and_get_topic_keys() {
        let object = r#"{"type":"call_hangup","publisher":"call-manager","data_type":"application/json","data":{"id":"c-1","Status":"hangup"}}"#;
        let n = normalize(
            voipbin::EXCHANGE,
            "customer_id.cust-1.call.call_hangup.c-1",
            object,
        )
        .expect("routed");
        assert_eq!(n.key, "customer_id:cust-1:call:c-1");
        assert_eq!(n.separator, Separator::Colon);
        assert_eq!(
            tail(&n),
            r#""type":"call_hangup","data":{"id":"c-1","Status":"hangup"}}"#
        );
        let string = r#"{"type":"call_hangup","data":"{\"id\":\"c-1\"}"}"#;
        let n = normalize(
            voipbin::EXCHANGE,
            "agent_id.a-1.call.call_hangup.c-1",
            string,
        )
        .expect("routed");
        assert_eq!(tail(&n), r#""type":"call_hangup","data":{"id":"c-1"}}"#);
        let not_json = r#"{"type":"note","data":"plain text"}"#;
        let n = normalize(voipbin::EXCHANGE, "agent_id.a-1.note.note.x", not_json).expect("routed");
        assert_eq!(tail(&n), r#""type":"note","data":"plain text"}"#);
        assert_eq!(
            normalize(voipbin::EXCHANGE, "customer_id.c.call", object),
            Err(Skip::MalformedRoutingKey)
        );
        assert_eq!(
            normalize(
                voipbin::EXCHANGE,
                "customer_id.c.call.x.y",
                r#"{"type":"x"}"#
            ),
            Err(Skip::Missing("data"))
        );
    }

    #[test]
    fn buffers_are_reused_across_deliveries() {
        let mut normalizer = Normalizer::default();
        for i in 0..3 {
            let body = CALL.replace("abc@host.example", &format!("call-{i}"));
            let n = normalizer
                .normalize("callevt", "k", &mut body.into_bytes())
                .expect("routed");
            assert_eq!(n.key, format!("call.acct-a.CHANNEL_CREATE.call-{i}"));
        }
    }
}

//! Kazoo event families (PROTOCOLS.md 3.1): how a client binding becomes an account-scoped
//! internal pattern and the AMQP binding that brings its events, and how an AMQP delivery
//! becomes the internal key it is matched by.
//!
//! Both directions live here so they cannot drift apart: a subscription's internal pattern and an
//! event's internal key are built from the same segment encoders. The account is always a
//! segment of its own, taken from the event itself (payload or account database), never from the
//! client: that is what keeps tenants apart.
//!
//! | family | client binding | AMQP (exchange, key) | internal key |
//! |---|---|---|---|
//! | call | `call.EVENT.CALL_ID` | `callevt`, `call.EVENT.*` | `call.ACCT.EVENT.CALL_ID` |
//! | object | `object.ACTION.TYPE` | `configuration`, `ACTION.ACCOUNT_DB.TYPE.*` | the routing key |
//! | conference | `conference.event.CONF.CALL`, `conference.command.CONF` | `conference`, same | `conference.event.ACCT.CONF.CALL` |
//! | fax | `fax.status.FAX_ID`, `fax.object.ACTION` | `fax` / `configuration` | `fax.status.ACCT.FAX_ID` / the routing key |

mod encoding;
mod normalize;
pub mod voipbin;

pub use encoding::{account_db, account_from_db, decode_segment, encode_segment};
pub use normalize::{Normalized, Normalizer, Skip};

/// An AMQP binding of the node queue: `(exchange, binding key)`. Reference-counted node-wide by
/// the ingest side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AmqpBinding {
    pub exchange: &'static str,
    pub key: String,
}

/// The exchanges Horizon binds to, with the flags their publishers declare them with (Kazoo's
/// non-durable, VoIPBin's durable).
pub const EXCHANGES: &[Exchange] = &[
    Exchange {
        name: "callevt",
        durable: false,
    },
    Exchange {
        name: "configuration",
        durable: false,
    },
    Exchange {
        name: "conference",
        durable: false,
    },
    Exchange {
        name: "fax",
        durable: false,
    },
    Exchange {
        name: voipbin::EXCHANGE,
        durable: true,
    },
];

/// A topic exchange Horizon binds to (declared if missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    pub name: &'static str,
    pub durable: bool,
}

/// Call events a client may bind to.
pub const CALL_EVENTS: &[&str] = &[
    "CHANNEL_CREATE",
    "CHANNEL_ANSWER",
    "CHANNEL_DESTROY",
    "CHANNEL_HOLD",
    "CHANNEL_UNHOLD",
    "CHANNEL_BRIDGE",
    "PARK_PARKED",
    "PARK_RETRIEVED",
    "PARK_ABANDONED",
];

/// Document actions of the object family.
pub const OBJECT_ACTIONS: &[&str] = &["doc_created", "doc_edited", "doc_deleted"];

/// Document types of the object family.
pub const OBJECT_TYPES: &[&str] = &[
    "account",
    "callflow",
    "device",
    "faxbox",
    "media",
    "user",
    "vmbox",
    "fax",
    "mailbox_message",
    "call_recording",
];

/// A client binding resolved for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What the shard automaton matches internal keys against.
    pub internal_pattern: String,
    /// What the node queue must be bound to for these events to arrive.
    pub amqp: AmqpBinding,
}

/// Why a client binding cannot be subscribed (the strings are Kazoo's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no available subscriptions to requested binding")]
    NoSubscription,
    #[error("event {0} not supported")]
    EventNotSupported(String),
}

/// Resolves `binding` for `account` (an account id, or `*` for every account).
///
/// `account` must already be authorized and valid as a segment (see [`valid_account_id`]).
pub fn resolve(binding: &str, account: &str) -> Result<Resolved, ResolveError> {
    // The last segment is an id and takes the rest of the binding: a raw call id may contain
    // dots (`abc@host.example`), which are encoded, not separators.
    let segments: Vec<&str> = match binding.split_once('.') {
        Some(("call", rest)) => std::iter::once("call").chain(rest.splitn(2, '.')).collect(),
        Some(("conference", rest)) => match rest.split_once('.') {
            Some(("event", rest)) => ["conference", "event"]
                .into_iter()
                .chain(rest.splitn(2, '.'))
                .collect(),
            _ => std::iter::once("conference")
                .chain(rest.splitn(2, '.'))
                .collect(),
        },
        Some(("fax", rest)) => std::iter::once("fax").chain(rest.splitn(2, '.')).collect(),
        _ => binding.split('.').collect(),
    };
    let resolved = |internal_pattern: String, exchange: &'static str, key: String| Resolved {
        internal_pattern,
        amqp: AmqpBinding { exchange, key },
    };
    match segments.as_slice() {
        ["call", event, call_id] => {
            if *event != "*" && !CALL_EVENTS.contains(event) {
                return Err(ResolveError::EventNotSupported((*event).to_string()));
            }
            let call_id = id_segment(call_id)?;
            Ok(resolved(
                format!("call.{account}.{event}.{call_id}"),
                "callevt",
                format!("call.{event}.*"),
            ))
        }
        ["object", action, kind] => {
            if *action != "*" && !OBJECT_ACTIONS.contains(action) {
                return Err(ResolveError::EventNotSupported((*action).to_string()));
            }
            if *kind != "*" && !OBJECT_TYPES.contains(kind) {
                return Err(ResolveError::EventNotSupported((*kind).to_string()));
            }
            let db = db_segment(account);
            let key = format!("{action}.{db}.{kind}.*");
            Ok(resolved(key.clone(), "configuration", key))
        }
        ["conference", "event", conference, call_id] => {
            let conference = id_segment(conference)?;
            let call_id = id_segment(call_id)?;
            Ok(resolved(
                format!("conference.event.{account}.{conference}.{call_id}"),
                "conference",
                format!("conference.event.{conference}.{call_id}"),
            ))
        }
        ["conference", "command", conference] => {
            let conference = id_segment(conference)?;
            Ok(resolved(
                format!("conference.command.{account}.{conference}"),
                "conference",
                format!("conference.command.{conference}"),
            ))
        }
        ["conference", other, ..] => Err(ResolveError::EventNotSupported((*other).to_string())),
        ["fax", "status", fax_id] => {
            let fax_id = id_segment(fax_id)?;
            Ok(resolved(
                format!("fax.status.{account}.{fax_id}"),
                "fax",
                format!("fax.status.{fax_id}"),
            ))
        }
        ["fax", "object", action] => {
            if *action != "*" && !OBJECT_ACTIONS.contains(action) {
                return Err(ResolveError::EventNotSupported((*action).to_string()));
            }
            let db = db_segment(account);
            let key = format!("{action}.{db}.fax.*");
            Ok(resolved(key.clone(), "configuration", key))
        }
        ["fax", other, ..] => Err(ResolveError::EventNotSupported((*other).to_string())),
        _ => Err(ResolveError::NoSubscription),
    }
}

/// An id segment of a client binding: `*`, or an id named raw (or already encoded), which is
/// encoded as Kazoo encodes routing-key segments. `#` and empty segments are refused.
fn id_segment(raw: &str) -> Result<String, ResolveError> {
    match raw {
        "*" => Ok("*".to_string()),
        "" | "#" => Err(ResolveError::NoSubscription),
        _ => Ok(encode_segment(&decode_segment(raw))),
    }
}

fn db_segment(account: &str) -> String {
    if account == "*" {
        "*".to_string()
    } else {
        account_db(account)
    }
}

/// Whether `id` can be an account id: non-empty, at most 64 bytes of `[A-Za-z0-9_-]`, so that it
/// is exactly one routing-key segment and never a wildcard.
pub fn valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One family's entry in the catalog `GET /v2/websockets` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub family: &'static str,
    /// Client bindings, with `{...}` placeholders for ids.
    pub bindings: Vec<String>,
}

/// Every binding the gateway accepts, family by family.
pub fn catalog() -> Vec<CatalogEntry> {
    let mut call: Vec<String> = CALL_EVENTS
        .iter()
        .map(|e| format!("call.{e}.{{CALL_ID}}"))
        .collect();
    call.push("call.*.{CALL_ID}".to_string());
    let mut object = Vec::new();
    for action in OBJECT_ACTIONS.iter().chain(&["*"]) {
        for kind in OBJECT_TYPES.iter().chain(&["*"]) {
            object.push(format!("object.{action}.{kind}"));
        }
    }
    let fax = std::iter::once("fax.status.{FAX_ID}".to_string())
        .chain(
            OBJECT_ACTIONS
                .iter()
                .chain(&["*"])
                .map(|a| format!("fax.object.{a}")),
        )
        .collect();
    vec![
        CatalogEntry {
            family: "call",
            bindings: call,
        },
        CatalogEntry {
            family: "object",
            bindings: object,
        },
        CatalogEntry {
            family: "conference",
            bindings: vec![
                "conference.event.{CONFERENCE_ID}.{CALL_ID}".to_string(),
                "conference.command.{CONFERENCE_ID}".to_string(),
            ],
        },
        CatalogEntry {
            family: "fax",
            bindings: fax,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(exchange: &'static str, key: &str) -> AmqpBinding {
        AmqpBinding {
            exchange,
            key: key.to_string(),
        }
    }

    #[test]
    fn resolves_each_family() {
        let r = resolve("call.CHANNEL_CREATE.*", "acct-a").expect("call");
        assert_eq!(r.internal_pattern, "call.acct-a.CHANNEL_CREATE.*");
        assert_eq!(r.amqp, amqp("callevt", "call.CHANNEL_CREATE.*"));

        let r = resolve("call.*.abc@host.example", "*").expect("raw call id");
        assert_eq!(r.internal_pattern, "call.*.*.abc%40host%2Eexample");
        assert_eq!(r.amqp, amqp("callevt", "call.*.*"));
        let encoded = resolve("call.*.abc%40host%2Eexample", "*").expect("encoded call id");
        assert_eq!(encoded.internal_pattern, r.internal_pattern);

        let r = resolve("object.doc_edited.user", "acct-a").expect("object");
        assert_eq!(
            r.internal_pattern,
            "doc_edited.account%2Fac%2Fct%2F-a.user.*"
        );
        assert_eq!(r.amqp, amqp("configuration", &r.internal_pattern));

        let r = resolve("conference.event.c1.*", "acct-a").expect("conference");
        assert_eq!(r.internal_pattern, "conference.event.acct-a.c1.*");
        assert_eq!(r.amqp, amqp("conference", "conference.event.c1.*"));
        let r = resolve("conference.command.c1", "acct-a").expect("conference command");
        assert_eq!(r.internal_pattern, "conference.command.acct-a.c1");

        let r = resolve("fax.status.*", "acct-a").expect("fax status");
        assert_eq!(r.internal_pattern, "fax.status.acct-a.*");
        assert_eq!(r.amqp, amqp("fax", "fax.status.*"));
        let r = resolve("fax.object.doc_created", "acct-a").expect("fax object");
        assert_eq!(
            r.internal_pattern,
            "doc_created.account%2Fac%2Fct%2F-a.fax.*"
        );
    }

    #[test]
    fn refuses_unknown_families_events_and_shapes() {
        use ResolveError::*;
        assert_eq!(resolve("sms.*.*", "a1234"), Err(NoSubscription));
        assert_eq!(resolve("call.CHANNEL_CREATE", "a1234"), Err(NoSubscription));
        assert_eq!(
            resolve("call.CHANNEL_CREATE.#", "a1234"),
            Err(NoSubscription)
        );
        assert_eq!(resolve("call.#", "a1234"), Err(NoSubscription));
        assert_eq!(resolve("call.*.", "a1234"), Err(NoSubscription));
        assert_eq!(resolve("object.*.user.x", "a1234"), Err(NoSubscription));
        assert_eq!(resolve("", "a1234"), Err(NoSubscription));
        assert_eq!(
            resolve("call.CHANNEL_EXPLODE.*", "a1234"),
            Err(EventNotSupported("CHANNEL_EXPLODE".into()))
        );
        assert_eq!(
            resolve("object.doc_edited.spaceship", "a1234"),
            Err(EventNotSupported("spaceship".into()))
        );
        assert_eq!(
            resolve("fax.outbound.x", "a1234"),
            Err(EventNotSupported("outbound".into()))
        );
    }

    #[test]
    fn account_ids_are_single_plain_segments() {
        assert!(valid_account_id("4b31dd1d32ce6d249897c06332375d65"));
        assert!(valid_account_id("acct-a"));
        for bad in ["", "*", "#", "a.b", "a b", "a%2E", &"x".repeat(65)] {
            assert!(!valid_account_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_catalog_lists_only_bindings_that_resolve() {
        for entry in catalog() {
            for binding in entry.bindings {
                let concrete = binding
                    .replace("{CALL_ID}", "abc")
                    .replace("{FAX_ID}", "f1")
                    .replace("{CONFERENCE_ID}", "c1");
                assert!(resolve(&concrete, "acct-a").is_ok(), "{binding}");
            }
        }
    }
}

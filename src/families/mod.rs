//! Kazoo event families (docs/kazoo.md): how a client binding becomes an
//! account-scoped internal pattern and the AMQP bindings that bring its events, and how an AMQP
//! delivery becomes the internal key it is matched by.
//!
//! Both directions live here so they cannot drift apart: a subscription's internal pattern and an
//! event's internal key are built from the same segment encoders. The account is always a
//! segment of its own, taken from the event itself (routing key, payload, account database or
//! realm), never from the client: that is what keeps tenants apart. Broker bindings are per
//! family and account (or coarser), never per client-chosen id: ids are filtered by the shard.
//!
//! | family | client binding | AMQP (exchange, key bound) | internal key |
//! |---|---|---|---|
//! | call | `call.EVENT.CALL_ID` | `callevt`, `call.EVENT.*` | `call.ACCT.EVENT.CALL_ID` |
//! | object | `object.ACTION.TYPE`, raw `ACTION.DB.TYPE.ID` | `configuration`, `ACTION.DB.TYPE.*` (monthly types: `ACTION.*.TYPE.*`) | `ACTION.DB.TYPE.ID`, month stripped |
//! | conference | `conference.event.CONF.CALL`, `conference.event.EVENT.CONF.CALL`, `conference.command.CONF` | `conference`, `conference.event.*.ACCT.*.*` / `conference.command.*` | `conference.event.ACCT.EVENT.CONF.CALL` / `conference.command.ACCT.CONF` |
//! | fax | `fax.status.FAX_ID`, `fax.object.ACTION` | `faxes`, `fax.status.ACCT.*` / as object | `fax.status.ACCT.FAX_ID` / as object |
//! | presence | `presence.KIND.ID` | `presence`, `KIND.REALM.*` | `presence.REALM.KIND.ID` |
//! | registration | `registration.success` | `registrar`, `registration.success.REALM.*` | `registration.success.REALM.USERNAME` |

mod encoding;
mod normalize;
pub mod voipbin;

pub use encoding::{
    account_db, account_from_db, decode_segment, encode_kazoo_key, encode_segment, from_gregorian,
    to_gregorian,
};
pub use normalize::{Facts, Normalized, Normalizer, Skip};

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
        name: "faxes",
        durable: false,
    },
    Exchange {
        name: "presence",
        durable: false,
    },
    Exchange {
        name: "registrar",
        durable: false,
    },
    Exchange {
        name: voipbin::EXCHANGE,
        durable: true,
    },
];

/// What the cluster's event log (a RabbitMQ stream, docs/resume.md) is bound to: every family's
/// bindings with the account (or realm, owner, database) as a wildcard, so the log holds every
/// event any subscription could want, and nothing else.
pub fn stream_bindings() -> Vec<AmqpBinding> {
    let one = |exchange: &'static str, key: String| AmqpBinding { exchange, key };
    let mut out: Vec<AmqpBinding> = CALL_EVENTS
        .iter()
        .map(|event| one("callevt", format!("call.{event}.*")))
        .collect();
    for action in OBJECT_ACTIONS {
        for kind in OBJECT_TYPES {
            out.push(one("configuration", format!("{action}.*.{kind}.*")));
        }
    }
    out.push(one("conference", "conference.event.*.*.*.*".into()));
    out.push(one("conference", "conference.command.*".into()));
    out.push(one("faxes", "fax.status.*.*".into()));
    for kind in PRESENCE_KINDS {
        out.push(one("presence", format!("{kind}.*.*")));
    }
    out.push(one("registrar", "registration.success.*.*".into()));
    for scope in ["customer_id", "agent_id"] {
        out.push(one(voipbin::EXCHANGE, format!("{scope}.*.#")));
    }
    out
}

/// The exchanges call and conference commands are published on (docs/kazoo.md "Commands"),
/// declared (topic, not durable, as Kazoo does) if missing.
pub const COMMAND_EXCHANGES: &[&str] = &["metaflow", "conference"];

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

/// Object types whose documents live in the account's monthly database (`...-YYYYMM`).
pub const MONTHLY_TYPES: &[&str] = &["fax", "mailbox_message"];

/// Conference events ecallmgr publishes (`ecallmgr_conference_event_publisher`).
pub const CONFERENCE_EVENTS: &[&str] = &[
    "conference-create",
    "conference-destroy",
    "lock",
    "unlock",
    "add-member",
    "del-member",
    "stop-talking",
    "start-talking",
    "mute-member",
    "unmute-member",
    "deaf-member",
    "undeaf-member",
];

/// Presence event kinds (`bh_presence`): the first segment of their routing keys.
pub const PRESENCE_KINDS: &[&str] = &["dialog", "update", "mwi_updates"];

/// A client binding resolved for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// What the shard automaton matches internal keys against.
    pub internal_pattern: String,
    /// What the node queue must be bound to for these events to arrive (usually one).
    pub amqp: Vec<AmqpBinding>,
}

/// Why a client binding cannot be subscribed (the strings are Kazoo's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no available subscriptions to requested binding")]
    NoSubscription,
    #[error("event {0} not supported")]
    EventNotSupported(String),
    /// A known family, a shape it does not have: Kazoo's `invalid format for <family>
    /// subscription : <keys joined by ", ">`.
    #[error("invalid format for {family} subscription : {keys}")]
    InvalidFormat { family: &'static str, keys: String },
    /// A raw object binding naming another account's database.
    #[error("unauthorized account id")]
    Unauthorized,
    /// Registrations are per SIP realm, and the account has none (`bh_registration` fetches it).
    #[error("account has no realm")]
    NoRealm,
}

/// The realm segment of `account`'s presence and registration keys: `*` for every account, the
/// account's realm lower-cased and encoded, or `None` when it has none.
fn realm_segment(account: &str, realm: Option<&str>) -> Option<String> {
    match (account, realm) {
        ("*", _) => Some("*".to_string()),
        (_, Some(realm)) => Some(encode_segment(&realm.to_ascii_lowercase())),
        (_, None) => None,
    }
}

fn invalid(family: &'static str, keys: &[&str]) -> ResolveError {
    ResolveError::InvalidFormat {
        family,
        keys: keys.join(", "),
    }
}

/// Resolves `binding` for `account` (an account id, or `*` for every account); `realm` is the
/// account's SIP realm, for presence and registrations (`None`: the account has none: presence
/// cannot match, and a registration subscription is refused).
///
/// `account` must already be authorized and valid as a segment (see [`valid_account_id`]).
pub fn resolve(
    binding: &str,
    account: &str,
    realm: Option<&str>,
) -> Result<Resolved, ResolveError> {
    let Some((family, rest)) = binding.split_once('.') else {
        return Err(ResolveError::NoSubscription);
    };
    // The last segment is an id and takes the rest of the binding: a raw call id may contain
    // dots (`abc@host.example`), which are encoded, not separators.
    let split = |n: usize| -> Vec<&str> { rest.splitn(n, '.').collect() };
    let one = |exchange: &'static str, key: String| vec![AmqpBinding { exchange, key }];
    match family {
        "call" => {
            let keys = split(2);
            let [event, call_id] = keys.as_slice() else {
                return Err(invalid("call", &keys));
            };
            if *event != "*" && !CALL_EVENTS.contains(event) {
                return Err(ResolveError::EventNotSupported((*event).to_string()));
            }
            let call_id = id_segment(call_id, "call", &keys)?;
            Ok(Resolved {
                internal_pattern: format!("call.{account}.{event}.{call_id}"),
                amqp: one("callevt", format!("call.{event}.*")),
            })
        }
        "object" => {
            let keys: Vec<&str> = rest.split('.').collect();
            let [action, kind] = keys.as_slice() else {
                return Err(invalid("object", &keys));
            };
            object(action, kind, "*", account)
        }
        "conference" => {
            let keys: Vec<&str> = rest.split('.').collect();
            let id = |raw: &str| id_segment(raw, "conference", &keys);
            match keys.as_slice() {
                // Kazoo master: `conference.event.{CONF}.{CALL}`.
                ["event", conference, call] => {
                    Ok(conference_event("*", &id(conference)?, &id(call)?, account))
                }
                // Kazoo 4.3 and Monster UI: `conference.event.{EVENT}.{CONF}.{CALL}`.
                ["event", event, conference, call] => {
                    if *event != "*" && !CONFERENCE_EVENTS.contains(event) {
                        return Err(ResolveError::EventNotSupported((*event).to_string()));
                    }
                    Ok(conference_event(
                        event,
                        &id(conference)?,
                        &id(call)?,
                        account,
                    ))
                }
                ["command", conference] => Ok(Resolved {
                    internal_pattern: format!("conference.command.{account}.{}", id(conference)?),
                    // Commands carry no account in their key: bound once for all, and delivered
                    // only where the payload names a visible account.
                    amqp: one("conference", "conference.command.*".to_string()),
                }),
                [other, ..] if *other != "event" && *other != "command" => {
                    Err(ResolveError::EventNotSupported((*other).to_string()))
                }
                _ => Err(invalid("conference", &keys)),
            }
        }
        "fax" => {
            let keys: Vec<&str> = rest.split('.').collect();
            match keys.as_slice() {
                ["status", fax_id] => {
                    let fax_id = id_segment(fax_id, "fax", &keys)?;
                    Ok(Resolved {
                        internal_pattern: format!("fax.status.{account}.{fax_id}"),
                        amqp: one("faxes", format!("fax.status.{account}.*")),
                    })
                }
                ["object", action] => object(action, "fax", "*", account),
                [other, ..] if *other != "status" && *other != "object" => {
                    Err(ResolveError::EventNotSupported((*other).to_string()))
                }
                _ => Err(invalid("fax", &keys)),
            }
        }
        "presence" => {
            let keys = split(2);
            let [kind, id] = keys.as_slice() else {
                return Err(invalid("presence", &keys));
            };
            if !PRESENCE_KINDS.contains(kind) {
                return Err(ResolveError::EventNotSupported((*kind).to_string()));
            }
            let id = id_segment(id, "presence", &keys)?;
            // Without a realm no presence event can be this account's: nothing to bind.
            let realm = realm_segment(account, realm).ok_or(ResolveError::NoSubscription)?;
            Ok(Resolved {
                internal_pattern: format!("presence.{realm}.{kind}.{id}"),
                amqp: one("presence", format!("{kind}.{realm}.*")),
            })
        }
        // `bh_registration`: exactly `registration.success`, for the account's realm.
        "registration" => {
            let keys: Vec<&str> = rest.split('.').collect();
            if keys != ["success"] {
                return Err(invalid("registration", &keys));
            }
            let realm = realm_segment(account, realm).ok_or(ResolveError::NoRealm)?;
            Ok(Resolved {
                internal_pattern: format!("registration.success.{realm}.*"),
                amqp: one("registrar", format!("registration.success.{realm}.*")),
            })
        }
        // The seed docs' raw object form: `{ACTION}.{* or DB}.{TYPE or *}.{ID or *}`.
        action if OBJECT_ACTIONS.contains(&action) || action == "*" => {
            let keys: Vec<&str> = binding.split('.').collect();
            let [_, db, kind, id] = keys.as_slice() else {
                return Err(invalid("object", &keys));
            };
            if *db != "*" {
                let owner = account_from_db(db).ok_or_else(|| invalid("object", &keys))?;
                if owner != account {
                    return Err(ResolveError::Unauthorized);
                }
            }
            let id = id_segment(id, "object", &keys)?;
            object(action, kind, &id, account)
        }
        _ => Err(ResolveError::NoSubscription),
    }
}

/// An object subscription: documents of `kind` (or `*`) changed by `action` (or `*`), with id
/// `id` (or `*`), in the account's database - and in its monthly databases, any month, for the
/// types that live there.
fn object(action: &str, kind: &str, id: &str, account: &str) -> Result<Resolved, ResolveError> {
    if action != "*" && !OBJECT_ACTIONS.contains(&action) {
        return Err(ResolveError::EventNotSupported(action.to_string()));
    }
    if kind != "*" && !OBJECT_TYPES.contains(&kind) {
        return Err(ResolveError::EventNotSupported(kind.to_string()));
    }
    let db = db_segment(account);
    let binding = |db: &str, kind: &str| AmqpBinding {
        exchange: "configuration",
        key: format!("{action}.{db}.{kind}.*"),
    };
    // A monthly database is one routing-key segment (`account%2F..-YYYYMM`), which an AMQP
    // wildcard cannot cut: its types are bound for every database, and the shard keeps the
    // account's (the internal key carries the account database without the month).
    let amqp = if MONTHLY_TYPES.contains(&kind) {
        vec![binding("*", kind)]
    } else if kind == "*" {
        std::iter::once(binding(&db, "*"))
            .chain(
                MONTHLY_TYPES
                    .iter()
                    .filter(|_| db != "*")
                    .map(|t| binding("*", t)),
            )
            .collect()
    } else {
        vec![binding(&db, kind)]
    };
    Ok(Resolved {
        internal_pattern: format!("{action}.{db}.{kind}.{id}"),
        amqp,
    })
}

fn conference_event(event: &str, conference: &str, call: &str, account: &str) -> Resolved {
    Resolved {
        internal_pattern: format!("conference.event.{account}.{event}.{conference}.{call}"),
        amqp: vec![AmqpBinding {
            exchange: "conference",
            key: format!("conference.event.*.{account}.*.*"),
        }],
    }
}

/// An id segment of a client binding: `*`, or an id named raw (or already encoded), which is
/// encoded as Kazoo encodes routing-key segments. `#` and empty segments are refused as a shape
/// the family does not have.
fn id_segment(raw: &str, family: &'static str, keys: &[&str]) -> Result<String, ResolveError> {
    match raw {
        "*" => Ok("*".to_string()),
        "" | "#" => Err(invalid(family, keys)),
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

/// Every binding shape the gateway accepts, family by family, with `{...}` placeholders for ids
/// (what `GET /v2/websockets` serves, and exactly what subscribe accepts).
pub fn catalog() -> Vec<CatalogEntry> {
    let star = ["*"];
    let mut call: Vec<String> = CALL_EVENTS
        .iter()
        .chain(&star)
        .map(|e| format!("call.{e}.{{CALL_ID}}"))
        .collect();
    call.dedup();
    let mut object = Vec::new();
    for action in OBJECT_ACTIONS.iter().chain(&star) {
        for kind in OBJECT_TYPES.iter().chain(&star) {
            object.push(format!("object.{action}.{kind}"));
        }
    }
    // The seed documents' raw form, scoped to the subscribing account.
    for action in OBJECT_ACTIONS.iter().chain(&star) {
        object.push(format!("{action}.*.{{TYPE}}.{{DOC_ID}}"));
    }
    let mut conference = vec![
        "conference.event.{CONFERENCE_ID}.{CALL_ID}".to_string(),
        "conference.command.{CONFERENCE_ID}".to_string(),
    ];
    conference.extend(
        CONFERENCE_EVENTS
            .iter()
            .chain(&star)
            .map(|e| format!("conference.event.{e}.{{CONFERENCE_ID}}.{{CALL_ID}}")),
    );
    let fax = std::iter::once("fax.status.{FAX_ID}".to_string())
        .chain(
            OBJECT_ACTIONS
                .iter()
                .chain(&star)
                .map(|a| format!("fax.object.{a}")),
        )
        .collect();
    let presence = vec![
        "presence.dialog.{CALL_ID}".to_string(),
        "presence.update.{CALL_ID}".to_string(),
        "presence.mwi_updates.{USER}".to_string(),
    ];
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
            bindings: conference,
        },
        CatalogEntry {
            family: "fax",
            bindings: fax,
        },
        CatalogEntry {
            family: "presence",
            bindings: presence,
        },
        CatalogEntry {
            family: "registration",
            bindings: vec!["registration.success".to_string()],
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

    fn resolve(binding: &str, account: &str) -> Result<Resolved, ResolveError> {
        super::resolve(binding, account, Some("a.sip.example.com"))
    }

    #[test]
    fn resolves_each_family_as_kazoo_master_publishes_it() {
        let r = resolve("call.CHANNEL_CREATE.*", "acct-a").expect("call");
        assert_eq!(r.internal_pattern, "call.acct-a.CHANNEL_CREATE.*");
        assert_eq!(r.amqp, [amqp("callevt", "call.CHANNEL_CREATE.*")]);
        let r = resolve("call.*.abc@host.example", "*").expect("raw call id");
        assert_eq!(r.internal_pattern, "call.*.*.abc%40host%2Eexample");
        let encoded = resolve("call.*.abc%40host%2Eexample", "*").expect("encoded call id");
        assert_eq!(encoded.internal_pattern, r.internal_pattern);

        let db = "account%2Fac%2Fct%2F-a";
        let r = resolve("object.doc_edited.user", "acct-a").expect("object");
        assert_eq!(r.internal_pattern, format!("doc_edited.{db}.user.*"));
        assert_eq!(r.amqp, [amqp("configuration", &r.internal_pattern)]);
        // Monthly types: bound for every database (a month cannot be wildcarded inside a
        // segment), matched on the account database.
        let r = resolve("object.doc_created.mailbox_message", "acct-a").expect("voicemail");
        assert_eq!(
            r.internal_pattern,
            format!("doc_created.{db}.mailbox_message.*")
        );
        assert_eq!(
            r.amqp,
            [amqp("configuration", "doc_created.*.mailbox_message.*")]
        );
        let r = resolve("object.*.*", "acct-a").expect("everything");
        assert_eq!(
            r.amqp,
            [
                amqp("configuration", &format!("*.{db}.*.*")),
                amqp("configuration", "*.*.fax.*"),
                amqp("configuration", "*.*.mailbox_message.*"),
            ]
        );
        // The seed documents' raw form.
        let r = resolve("doc_edited.*.user.*", "acct-a").expect("raw object form");
        assert_eq!(r.internal_pattern, format!("doc_edited.{db}.user.*"));
        let r = resolve(&format!("doc_edited.{db}.user.u1"), "acct-a").expect("own db named");
        assert_eq!(r.internal_pattern, format!("doc_edited.{db}.user.u1"));
        assert_eq!(
            resolve(
                &format!("doc_edited.{}.user.*", account_db("acct-b")),
                "acct-a"
            ),
            Err(ResolveError::Unauthorized)
        );

        // Conference: master's and 4.3's shapes (Monster UI sends the latter).
        let r = resolve("conference.event.c1.*", "acct-a").expect("master");
        assert_eq!(r.internal_pattern, "conference.event.acct-a.*.c1.*");
        assert_eq!(
            r.amqp,
            [amqp("conference", "conference.event.*.acct-a.*.*")]
        );
        let r = resolve("conference.event.*.c1.*", "acct-a").expect("Monster UI");
        assert_eq!(r.internal_pattern, "conference.event.acct-a.*.c1.*");
        let r = resolve("conference.event.add-member.*.*", "acct-a").expect("4.3 with event");
        assert_eq!(r.internal_pattern, "conference.event.acct-a.add-member.*.*");
        let r = resolve("conference.command.c1", "acct-a").expect("command");
        assert_eq!(r.internal_pattern, "conference.command.acct-a.c1");
        assert_eq!(r.amqp, [amqp("conference", "conference.command.*")]);

        // Registrations: exactly `registration.success`, for the account's realm.
        let r = resolve("registration.success", "acct-a").expect("registrations");
        assert_eq!(
            r.internal_pattern,
            "registration.success.a%2Esip%2Eexample%2Ecom.*"
        );
        assert_eq!(
            r.amqp,
            [amqp(
                "registrar",
                "registration.success.a%2Esip%2Eexample%2Ecom.*"
            )]
        );
        for bad in ["registration.success.1000", "registration.failure"] {
            let err = resolve(bad, "acct-a").unwrap_err().to_string();
            assert!(
                err.starts_with("invalid format for registration subscription : "),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            super::resolve("registration.success", "acct-a", None)
                .unwrap_err()
                .to_string(),
            "account has no realm"
        );

        let r = resolve("fax.status.*", "acct-a").expect("fax status");
        assert_eq!(r.internal_pattern, "fax.status.acct-a.*");
        assert_eq!(r.amqp, [amqp("faxes", "fax.status.acct-a.*")]);
        let r = resolve("fax.object.doc_created", "acct-a").expect("fax object");
        assert_eq!(r.internal_pattern, format!("doc_created.{db}.fax.*"));
        assert_eq!(r.amqp, [amqp("configuration", "doc_created.*.fax.*")]);

        let r = resolve("presence.dialog.*", "acct-a").expect("presence");
        assert_eq!(
            r.internal_pattern,
            "presence.a%2Esip%2Eexample%2Ecom.dialog.*"
        );
        assert_eq!(
            r.amqp,
            [amqp("presence", "dialog.a%2Esip%2Eexample%2Ecom.*")]
        );
        let r = resolve("presence.mwi_updates.1000", "acct-a").expect("mwi");
        assert_eq!(
            r.internal_pattern,
            "presence.a%2Esip%2Eexample%2Ecom.mwi_updates.1000"
        );
        assert_eq!(
            super::resolve("presence.update.*", "acct-a", None),
            Err(ResolveError::NoSubscription),
            "an account without a realm has no presence"
        );
    }

    #[test]
    fn refuses_with_kazoos_strings_and_accepts_nothing_dead() {
        use ResolveError::*;
        let format = |family: &'static str, keys: &str| InvalidFormat {
            family,
            keys: keys.to_string(),
        };
        assert_eq!(resolve("sms.*.*", "a1234"), Err(NoSubscription));
        assert_eq!(resolve("", "a1234"), Err(NoSubscription));
        assert_eq!(
            resolve("call.CHANNEL_CREATE", "a1234"),
            Err(format("call", "CHANNEL_CREATE"))
        );
        assert_eq!(
            resolve("call.CHANNEL_CREATE.#", "a1234"),
            Err(format("call", "CHANNEL_CREATE, #"))
        );
        assert_eq!(resolve("call.*.", "a1234"), Err(format("call", "*, ")));
        assert_eq!(
            resolve("object.*.user.x", "a1234"),
            Err(format("object", "*, user, x"))
        );
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
        assert_eq!(resolve("fax.status", "a1234"), Err(format("fax", "status")));
        // The dead binding: `a` is no conference event.
        assert_eq!(
            resolve("conference.event.a.*.extra", "a1234"),
            Err(EventNotSupported("a".into()))
        );
        assert_eq!(
            resolve("conference.event.a.b.c.d", "a1234"),
            Err(format("conference", "event, a, b, c, d"))
        );
        assert_eq!(
            resolve("conference.event", "a1234"),
            Err(format("conference", "event"))
        );
        assert_eq!(
            resolve("presence.blf.*", "a1234"),
            Err(EventNotSupported("blf".into()))
        );
        assert_eq!(
            InvalidFormat {
                family: "conference",
                keys: "a, b, c".into()
            }
            .to_string(),
            "invalid format for conference subscription : a, b, c"
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
                    .replace("{CONFERENCE_ID}", "c1")
                    .replace("{USER}", "1000")
                    .replace("{TYPE}", "user")
                    .replace("{DOC_ID}", "d1");
                assert!(resolve(&concrete, "acct-a").is_ok(), "{binding}");
            }
        }
    }
}

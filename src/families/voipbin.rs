//! VoIPBin's topics (docs/voipbin.md): `customer_id:<customer>[:resource[:id]]` and
//! `agent_id:<agent>[:...]`, matched by segment prefix on `:` boundaries.
//!
//! A client topic of N segments is the internal pattern `topic:#` (so `customer_id:X:call` covers
//! `customer_id:X:call:<id>` and not `customer_id:X:callflow:...`, which VoIPBin's plain string
//! prefix would); `*` is a one-segment wildcard. A delivery with routing key
//! `<scope>.<owner>.<resource>.<event_type>.<id>` has every internal key VoIPBin would publish
//! it under (see [`internal_keys`]): the old form `<scope>:<owner>:<resource>:<id>` (or its
//! `aicall:`, `chat:`, `webchat_session:` variant) and the new form
//! `<scope>:<owner>:<resource>:<event_type>:<id>`; the node queue binds `<scope>.<owner>.#` per
//! topic owner.

use super::AmqpBinding;

/// VoIPBin's event exchange (a durable topic exchange).
pub const EXCHANGE: &str = "bin-manager.webhook-manager.event.topic";

/// Longest topic accepted, and most segments.
const MAX_TOPIC_BYTES: usize = 512;
const MAX_SEGMENTS: usize = 8;

/// Whose events a topic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Customer,
    Agent,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Customer => "customer_id",
            Scope::Agent => "agent_id",
        }
    }
}

/// A valid client topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic<'a> {
    pub text: &'a str,
    pub scope: Scope,
    /// The customer or agent id, or `*`.
    pub owner: &'a str,
}

impl<'a> Topic<'a> {
    /// Parses and validates a topic: a known scope, then non-empty segments without `.`, `#`,
    /// spaces or control characters; `*` only as a whole segment.
    pub fn parse(text: &'a str) -> Option<Topic<'a>> {
        if text.is_empty() || text.len() > MAX_TOPIC_BYTES {
            return None;
        }
        let mut segments = text.split(':');
        let scope = match segments.next()? {
            "customer_id" => Scope::Customer,
            "agent_id" => Scope::Agent,
            _ => return None,
        };
        let owner = segments.next()?;
        let mut count = 2;
        for segment in std::iter::once(owner).chain(segments) {
            count += 1;
            let plain = segment
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'#' | b'*') || b >= 0x80);
            if segment.is_empty() || (segment != "*" && !plain) || count > MAX_SEGMENTS + 1 {
                return None;
            }
        }
        Some(Topic { text, scope, owner })
    }

    /// What the shard automaton matches (colon separator).
    pub fn internal_pattern(&self) -> String {
        format!("{}:#", self.text)
    }

    /// The node-queue binding that brings this topic's events.
    pub fn amqp(&self) -> AmqpBinding {
        AmqpBinding {
            exchange: EXCHANGE,
            key: format!("{}.{}.#", self.scope.as_str(), self.owner),
        }
    }
}

/// What a delivery's resource object says about where it belongs (the fields VoIPBin's
/// `commonWebhookData` reads: `id`, `aicall_id`, `chat_id`, `session_id`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Anchors<'a> {
    pub id: Option<&'a str>,
    pub aicall_id: Option<&'a str>,
    pub chat_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

/// One delivery's internal keys: every topic form VoIPBin would publish it under, for the owner
/// its routing key names. `keys[0]` is the primary (matched first); the event's type comes
/// with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub keys: Vec<String>,
    pub event_type: String,
}

/// A usable key segment: non-empty, no separator, no wildcard.
fn segment(text: &str) -> Option<&str> {
    (!text.is_empty() && !text.contains([':', '.']) && text != "*" && text != "#").then_some(text)
}

/// The internal keys of a delivery on [`EXCHANGE`] with routing key
/// `<scope>.<owner>.<resource>.<event_type>[.<id>]` (as webhook-manager's `createRoutingKeys`
/// and `createRoutingKeysForChat` build it), following bin-api-manager's `createTopics`:
///
/// - the old form `<scope>:<owner>:<resource>:<id>` - except `aimessage` events, whose old form
///   is `customer_id:<c>:aicall:<aicall_id>` (none for an agent), `chat*` events,
///   `<scope>:<owner>:chat:<chat_id>`, and `webchat*` events with a session,
///   `customer_id:<c>:webchat_session:<session_id>`;
/// - the new form `<scope>:<owner>:<resource>:<event_type>:<id>`.
///
/// `resource` is the event type's first `_`-separated word (`chatmessage` of
/// `chatmessage_created`; the routing key says `talk` for chat events), and `id` the object's
/// own `id` (the routing key carries the chat's id for chat events). `event_type` is the body's
/// `type` when given, else the routing key's. `None` when the key does not have VoIPBin's shape.
pub fn internal_keys(
    routing_key: &str,
    body_type: Option<&str>,
    anchors: Anchors<'_>,
) -> Option<Keys> {
    let mut parts = routing_key.split('.');
    let scope = parts.next()?;
    if scope != "customer_id" && scope != "agent_id" {
        return None;
    }
    let owner = segment(parts.next()?)?;
    let key_resource = segment(parts.next()?)?;
    let key_type = segment(parts.next()?)?;
    let key_id = match parts.next() {
        Some(id) => Some(segment(id)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    let event_type = body_type.and_then(segment).unwrap_or(key_type);
    let resource = match event_type.split_once('_') {
        Some((word, _)) if segment(word).is_some() => word,
        _ => key_resource,
    };
    let id = anchors.id.and_then(segment).or(key_id);
    let customer = scope == "customer_id";
    let join = |parts: &[&str]| -> String {
        let mut key = format!("{scope}:{owner}");
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    };
    let old = match resource {
        "aimessage" => anchors
            .aicall_id
            .and_then(segment)
            .filter(|_| customer)
            .map(|aicall| join(&["aicall", aicall])),
        "chat" | "chatmessage" | "chatparticipant" => anchors
            .chat_id
            .and_then(segment)
            .or(id)
            .map(|chat| join(&["chat", chat])),
        webchat
            if webchat.starts_with("webchat")
                && customer
                && anchors.session_id.and_then(segment).is_some() =>
        {
            anchors
                .session_id
                .map(|session| join(&["webchat_session", session]))
        }
        _ => Some(match id {
            Some(id) => join(&[resource, id]),
            None => join(&[resource]),
        }),
    };
    let new = match id {
        Some(id) => join(&[resource, event_type, id]),
        None => join(&[resource, event_type]),
    };
    let mut keys = Vec::with_capacity(2);
    keys.extend(old);
    if !keys.contains(&new) {
        keys.push(new);
    }
    Some(Keys {
        keys,
        event_type: event_type.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{BindingAutomaton, Separator, SubscriptionId};

    #[test]
    fn topics_parse_and_resolve() {
        let t = Topic::parse("customer_id:c1:call").expect("valid");
        assert_eq!((t.scope, t.owner), (Scope::Customer, "c1"));
        assert_eq!(t.internal_pattern(), "customer_id:c1:call:#");
        assert_eq!(t.amqp().key, "customer_id.c1.#");
        assert_eq!(t.amqp().exchange, EXCHANGE);
        let t = Topic::parse("agent_id:a1").expect("valid");
        assert_eq!(t.amqp().key, "agent_id.a1.#");
        let t = Topic::parse("customer_id:*:call").expect("wildcard owner parses");
        assert_eq!(t.amqp().key, "customer_id.*.#");
        for bad in [
            "",
            "customer_id",
            "customer_id:",
            "customer_id::call",
            "user_id:x",
            "customer_id:a.b",
            "customer_id:c1:#",
            "customer_id:c1:ca*",
            "customer_id:c 1",
            "customer_id:c1:call:",
            "customer_id:1:2:3:4:5:6:7:8",
        ] {
            assert!(Topic::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Topic::parse("customer_id:1:2:3:4:5:6:7").is_some());
    }

    #[test]
    fn prefix_matching_is_by_whole_segments() {
        let mut automaton = BindingAutomaton::new(Separator::Colon);
        for (i, topic) in [
            "customer_id:c1:call",
            "customer_id:c1",
            "customer_id:*:callflow",
        ]
        .iter()
        .enumerate()
        {
            let pattern = Topic::parse(topic).expect("valid").internal_pattern();
            automaton
                .insert(&pattern, SubscriptionId(i as u32))
                .expect("valid pattern");
        }
        let mut out = Vec::new();
        let mut matches = |key: &str| {
            out.clear();
            automaton.matches(key, &mut out);
            let mut ids: Vec<u32> = out.iter().map(|s| s.0).collect();
            ids.sort();
            ids
        };
        assert_eq!(matches("customer_id:c1:call:abc"), vec![0, 1]);
        assert_eq!(matches("customer_id:c1:callflow:abc"), vec![1, 2]);
        assert_eq!(matches("customer_id:c2:call:abc"), Vec::<u32>::new());
        assert_eq!(matches("customer_id:c2:callflow:x"), vec![2]);
    }

    #[test]
    fn routing_keys_become_every_topic_form_voipbin_publishes() {
        let keys = |rk: &str, kind: Option<&str>, anchors: Anchors<'_>| {
            internal_keys(rk, kind, anchors).map(|k| (k.keys, k.event_type))
        };
        let id = |id| Anchors {
            id: Some(id),
            ..Anchors::default()
        };
        assert_eq!(
            keys(
                "customer_id.c1.call.call_hangup.id-1",
                Some("call_hangup"),
                id("id-1")
            ),
            Some((
                vec![
                    "customer_id:c1:call:id-1".into(),
                    "customer_id:c1:call:call_hangup:id-1".into()
                ],
                "call_hangup".into()
            ))
        );
        assert_eq!(
            keys("agent_id.a1.agent.agent_updated", None, Anchors::default()),
            Some((
                vec![
                    "agent_id:a1:agent".into(),
                    "agent_id:a1:agent:agent_updated".into()
                ],
                "agent_updated".into()
            ))
        );
        // aimessage: the old form is the AI call's; an agent gets only the new form.
        let ai = Anchors {
            id: Some("m1"),
            aicall_id: Some("ac1"),
            ..Anchors::default()
        };
        assert_eq!(
            keys("customer_id.c1.aimessage.aimessage_created.m1", None, ai)
                .unwrap()
                .0,
            [
                "customer_id:c1:aicall:ac1",
                "customer_id:c1:aimessage:aimessage_created:m1"
            ]
        );
        assert_eq!(
            keys("agent_id.g1.aimessage.aimessage_created.m1", None, ai)
                .unwrap()
                .0,
            ["agent_id:g1:aimessage:aimessage_created:m1"]
        );
        // chat: the routing key names the chat; the new form names the message.
        let msg = Anchors {
            id: Some("m9"),
            chat_id: Some("ch1"),
            ..Anchors::default()
        };
        assert_eq!(
            keys(
                "agent_id.p2.talk.chatmessage_created.ch1",
                Some("chatmessage_created"),
                msg
            )
            .unwrap()
            .0,
            [
                "agent_id:p2:chat:ch1",
                "agent_id:p2:chatmessage:chatmessage_created:m9"
            ]
        );
        // webchat: the visitor's session.
        let web = Anchors {
            id: Some("w1"),
            session_id: Some("s1"),
            ..Anchors::default()
        };
        assert_eq!(
            keys(
                "customer_id.c1.webchat.webchat_message_created.w1",
                None,
                web
            )
            .unwrap()
            .0,
            [
                "customer_id:c1:webchat_session:s1",
                "customer_id:c1:webchat:webchat_message_created:w1"
            ]
        );
        for bad in [
            "customer_id.c1.call",
            "other.c1.call.x.y",
            "customer_id.c:1.call.x.y",
            "customer_id.c1.call.x.y.z",
            "customer_id..call.x.y",
            "customer_id.*.call.x.y",
        ] {
            assert_eq!(keys(bad, None, Anchors::default()), None, "{bad}");
        }
        // A body field that would break a key is not used.
        let odd = Anchors {
            id: Some("a:b"),
            ..Anchors::default()
        };
        assert_eq!(
            keys("customer_id.c1.call.call_created.k1", Some("x:y"), odd)
                .unwrap()
                .0,
            [
                "customer_id:c1:call:k1",
                "customer_id:c1:call:call_created:k1"
            ]
        );
    }
}

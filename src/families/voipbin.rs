//! VoIPBin's topics (PROTOCOLS.md section 4): `customer_id:<customer>[:resource[:id]]` and
//! `agent_id:<agent>[:...]`, matched by segment prefix on `:` boundaries.
//!
//! A client topic of N segments is the internal pattern `topic:#` (so `customer_id:X:call` covers
//! `customer_id:X:call:<id>` and not `customer_id:X:callflow:...`, which VoIPBin's plain string
//! prefix would); `*` is a one-segment wildcard. A delivery with routing key
//! `<scope>.<owner>.<resource>.<event_type>.<id>` has the internal key
//! `<scope>:<owner>:<resource>:<id>`; the node queue binds `<scope>.<owner>.#` per topic owner.

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

/// The internal key of a delivery on [`EXCHANGE`], and its event type from the routing key.
/// `None` when the key does not have VoIPBin's shape.
pub fn internal_key(routing_key: &str) -> Option<(String, &str)> {
    let mut segments = routing_key.split('.');
    let scope = segments.next()?;
    if scope != "customer_id" && scope != "agent_id" {
        return None;
    }
    let (owner, resource, event_type) = (segments.next()?, segments.next()?, segments.next()?);
    let id = segments.next();
    if segments.next().is_some() {
        return None;
    }
    let parts = [Some(owner), Some(resource), Some(event_type), id];
    if parts
        .iter()
        .flatten()
        .any(|s| s.is_empty() || s.contains(':') || *s == "*" || *s == "#")
    {
        return None;
    }
    let key = match id {
        Some(id) => format!("{scope}:{owner}:{resource}:{id}"),
        None => format!("{scope}:{owner}:{resource}"),
    };
    Some((key, event_type))
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
    fn routing_keys_become_internal_keys() {
        assert_eq!(
            internal_key("customer_id.c1.call.call_hangup.id-1"),
            Some(("customer_id:c1:call:id-1".to_string(), "call_hangup"))
        );
        assert_eq!(
            internal_key("agent_id.a1.agent.agent_updated"),
            Some(("agent_id:a1:agent".to_string(), "agent_updated"))
        );
        for bad in [
            "customer_id.c1.call",
            "other.c1.call.x.y",
            "customer_id.c:1.call.x.y",
            "customer_id.c1.call.x.y.z",
            "customer_id..call.x.y",
        ] {
            assert_eq!(internal_key(bad), None, "{bad}");
        }
    }
}

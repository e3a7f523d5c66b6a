//! The compiled binding automaton: which subscriptions does a routing key reach?
//!
//! A pure data structure, no I/O, no clocks, no threads. Every shard owns one copy per dialect
//! (`.`-separated for AMQP/Kazoo keys, `:`-separated for VoIPBin topics) and asks it, once per event,
//! for the subscriptions whose pattern matches the event's key.
//!
//! # Semantics
//! Exactly RabbitMQ's topic exchange. A pattern and a key are lists of segments split on the
//! separator. In a pattern, a segment that is exactly `*` matches exactly one key segment and a
//! segment that is exactly `#` matches zero or more; every other segment (including `ab*`, `#x` and
//! the empty segment) is a literal compared byte for byte. Empty segments are legal (`a..b` has three
//! segments, `a.` has two). The empty key has zero segments, so only patterns made of `#` alone
//! (`#`, `#.#`) match it. Patterns must be non-empty, at most [`MAX_PATTERN_BYTES`] bytes and at most
//! [`MAX_SEGMENTS`] segments; keys are not limited.
//!
//! # Algorithm and cost
//! Patterns are stored in a segment trie. Literal segments are interned to `u32` ids once, at insert
//! time. A narrow node (at most 12 literal children: the root, an account's event names) keeps its
//! literal edges in a short list scanned by id; a wide one (`call`, with a child per account) keeps
//! them as `(node, segment id) -> node` entries in one shared hash table. Each node has two dedicated
//! edges for `*` and `#`. A node reached through a `#` edge loops on itself: it may absorb any
//! number of further segments.
//!
//! Matching simulates the trie as an NFA, one key segment at a time, over the *set* of active nodes:
//! - the set starts as `{root}` closed under `#` edges (a `#` may match nothing);
//! - for each key segment, the segment is looked up once in the interner (a key segment no pattern
//!   names can only be matched by `*` and `#`), and every active node moves along its literal edge,
//!   its `*` edge, and (if it is a `#` node) its self-loop; each new node is closed under `#` again;
//! - at the end, every active node that terminates a pattern contributes its subscribers.
//!
//! A node enters a set at most once per position (an epoch stamp per node, no clearing), so a match
//! costs O(key segments x active nodes) hash probes - never exponential, whatever `#.#.#.#.x` or a
//! 30-segment key do. With the few `#` bindings real traffic has, the active set is a handful of
//! nodes and a match is at most one interner probe per segment (none where only wildcards can follow)
//! plus a short scan or one table probe per active node. No allocation happens in
//! steady state: the two active-set vectors are kept and reused, and results go into the caller's
//! vector.
//!
//! Each subscription is returned once: a terminating node holds a set, and when more than one node
//! terminates the results of that call are sorted and deduplicated (O(k log k) in the results).
//!
//! Insert and remove walk the pattern: O(pattern segments) hash probes, plus an O(1) expected update
//! of the terminating node's subscriber set, which switches to an index once it is large so that
//! removing one of 20,000 subscribers of a single pattern costs the same as removing the only one
//! (RabbitMQ's trie once scanned such a list on every subscribe). Remove prunes the nodes, edges and
//! interned segments that no pattern uses any more, so a churning account population does not leak.

mod automaton;
mod interner;
mod pattern;
mod slab;
mod subscribers;

#[cfg(test)]
mod tests;

pub use automaton::BindingAutomaton;
pub use pattern::{
    split_key, BindingError, KeySegments, Separator, MAX_PATTERN_BYTES, MAX_SEGMENTS,
};

/// Checks `pattern` as [`BindingAutomaton::insert`] will, without inserting it: a subscription
/// validates every pattern of a command first, so that a command is applied whole or not at all.
pub fn validate_pattern(pattern: &str, separator: Separator) -> Result<(), BindingError> {
    pattern::parse_pattern(pattern, separator).map(|_| ())
}

/// Identifies one subscriber of a pattern; the owner of the automaton decides what it stands for
/// (in a shard: one binding shared by the sockets that asked for the same internal pattern).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u32);

//! The segment trie and its NFA-style matcher. The algorithm and its cost are described in the
//! module documentation (`binding/mod.rs`); the invariants it keeps are listed on the types below.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::interner::{Interner, SegmentId};
use super::pattern::{parse_pattern, split_key, BindingError, Segment, Separator, MAX_SEGMENTS};
use super::slab::Slab;
use super::subscribers::SubscriberSet;
use super::SubscriptionId;

type NodeId = u32;

/// "No node" / "no subscriber set" in the compact `u32` links below.
const NONE: u32 = u32::MAX;
const ROOT: NodeId = 0;
/// Bit of [`Node::meta`] set on nodes reached through a `#` edge (they loop on themselves).
const HASH_NODE: u32 = 1 << 31;
/// A node keeps up to this many literal edges in its own short list, scanned by segment id; past
/// that they move to the shared edge table. Most nodes are narrow (the root: a few families; an
/// account: a few event names), so most edge lookups cost no hashing at all. Unit tests use a tiny
/// threshold so that the property tests cross it (and back) all the time.
const NARROW_MAX: usize = if cfg!(test) { 2 } else { 12 };

/// The literal edges of a narrow node: `(segment id, child)`.
type NarrowEdges = SmallVec<[(SegmentId, NodeId); 2]>;

/// One trie node: 20 bytes, all links are indices.
///
/// Invariants: `meta`'s low bits count the node's child edges (literal, plus `star` and `hash`
/// when set). The literal edges are in `narrow` when it is set, otherwise in the shared
/// [`BindingAutomaton::edges`] table. A node other than the root has a child edge or a subscriber
/// set, otherwise it has been pruned.
#[derive(Clone, Copy)]
struct Node {
    star: NodeId,
    hash: NodeId,
    meta: u32,
    /// Index into [`BindingAutomaton::sets`]; `NONE` when no pattern ends here.
    set: u32,
    /// Index into [`BindingAutomaton::narrow`]; `NONE` when the node has no literal edge or keeps
    /// them in the shared table.
    narrow: u32,
}

impl Default for Node {
    fn default() -> Node {
        Node::new(false)
    }
}

impl Node {
    const fn new(hash_node: bool) -> Node {
        Node {
            star: NONE,
            hash: NONE,
            meta: if hash_node { HASH_NODE } else { 0 },
            set: NONE,
            narrow: NONE,
        }
    }

    fn children(&self) -> u32 {
        self.meta & !HASH_NODE
    }

    fn is_hash(&self) -> bool {
        self.meta & HASH_NODE != 0
    }

    fn literal_children(&self) -> u32 {
        self.children() - u32::from(self.star != NONE) - u32::from(self.hash != NONE)
    }
}

#[inline]
fn edge_key(node: NodeId, segment: SegmentId) -> u64 {
    (u64::from(node) << 32) | u64::from(segment)
}

/// The compiled set of `(pattern, subscription)` pairs of one dialect.
///
/// Owned by one thread (a shard); `matches` takes `&mut self` only for its reusable scratch space.
pub struct BindingAutomaton {
    separator: Separator,
    nodes: Slab<Node>,
    /// Literal edges of wide nodes: `(parent, segment id)` packed into a `u64` -> child.
    edges: HashMap<u64, NodeId, ahash::RandomState>,
    /// Literal edges of narrow nodes.
    narrow: Slab<NarrowEdges>,
    interner: Interner,
    sets: Slab<SubscriberSet>,
    /// Number of `(pattern, subscription)` pairs.
    bindings: usize,
    scratch: MatchScratch,
}

/// Reused by every match so that steady-state matching allocates nothing.
#[derive(Default)]
struct MatchScratch {
    /// `stamps[node] == stamp` means the node is already in the set being built.
    stamps: Vec<u32>,
    stamp: u32,
    current: Vec<NodeId>,
    next: Vec<NodeId>,
}

/// A stamp no node carries yet. On wrap-around (after 4 billion key segments) every stamp is reset,
/// so a stale stamp can never be mistaken for a current one.
#[inline]
fn fresh_stamp(stamp: &mut u32, stamps: &mut [u32]) -> u32 {
    *stamp = stamp.wrapping_add(1);
    if *stamp == 0 {
        stamps.fill(0);
        *stamp = 1;
    }
    *stamp
}

/// Adds `node` to `set` unless it is there already, and closes it under `#` edges (a `#` may match
/// zero segments, so being at a node means being at its `#` child too).
#[inline]
fn enter(nodes: &[Node], stamps: &mut [u32], set: &mut Vec<NodeId>, mut node: NodeId, stamp: u32) {
    while node != NONE && stamps[node as usize] != stamp {
        stamps[node as usize] = stamp;
        set.push(node);
        node = nodes[node as usize].hash;
    }
}

impl BindingAutomaton {
    pub fn new(separator: Separator) -> BindingAutomaton {
        let mut automaton = BindingAutomaton {
            separator,
            nodes: Slab::default(),
            edges: HashMap::default(),
            narrow: Slab::default(),
            interner: Interner::default(),
            sets: Slab::default(),
            bindings: 0,
            scratch: MatchScratch::default(),
        };
        let root = automaton.alloc_node(false);
        debug_assert_eq!(root, ROOT);
        automaton
    }

    pub fn separator(&self) -> Separator {
        self.separator
    }

    /// Number of `(pattern, subscription)` pairs.
    pub fn len(&self) -> usize {
        self.bindings
    }

    pub fn is_empty(&self) -> bool {
        self.bindings == 0
    }

    /// Number of live trie nodes, root included (for metrics and memory accounting).
    pub fn node_count(&self) -> usize {
        self.nodes.live()
    }

    /// Number of distinct literal segments currently interned.
    pub fn segment_count(&self) -> usize {
        self.interner.len()
    }

    /// Adds `subscription` to the subscribers of `pattern`. Returns whether it was new; inserting a
    /// pair that is already present changes nothing (no reference count here: callers that need
    /// one keep it themselves).
    ///
    /// Cost: O(segments) hash probes plus O(1) expected for the subscriber set.
    pub fn insert(
        &mut self,
        pattern: &str,
        subscription: SubscriptionId,
    ) -> Result<bool, BindingError> {
        let segments = parse_pattern(pattern, self.separator)?;
        let mut node = ROOT;
        for segment in &segments {
            node = self.child_or_insert(node, *segment);
        }
        let set = match self.nodes[node].set {
            NONE => {
                let set = self.sets.alloc(SubscriberSet::default());
                self.nodes[node].set = set;
                set
            }
            set => set,
        };
        let added = self.sets[set].insert(subscription);
        self.bindings += usize::from(added);
        Ok(added)
    }

    /// Removes `subscription` from the subscribers of `pattern`, pruning what no pattern needs any
    /// more. Returns whether the pair was present (an invalid pattern never is).
    ///
    /// Cost: O(segments) hash probes plus O(1) expected for the subscriber set.
    pub fn remove(&mut self, pattern: &str, subscription: SubscriptionId) -> bool {
        let Ok(segments) = parse_pattern(pattern, self.separator) else {
            return false;
        };
        let mut path: SmallVec<[NodeId; MAX_SEGMENTS + 1]> = SmallVec::new();
        path.push(ROOT);
        for segment in &segments {
            match self.child(*path.last().unwrap_or(&ROOT), *segment) {
                Some(child) => path.push(child),
                None => return false,
            }
        }
        let node = *path.last().unwrap_or(&ROOT);
        let set = self.nodes[node].set;
        if set == NONE || !self.sets[set].remove(subscription) {
            return false;
        }
        self.bindings -= 1;
        if self.sets[set].is_empty() {
            self.sets.free(set);
            self.nodes[node].set = NONE;
        }
        // Prune bottom-up: a node with neither children nor subscribers is unreachable garbage.
        for depth in (0..segments.len()).rev() {
            let child = path[depth + 1];
            let node = self.nodes[child];
            if node.children() > 0 || node.set != NONE {
                break;
            }
            self.unlink(path[depth], segments[depth]);
            self.nodes.free(child);
        }
        true
    }

    /// Whether `subscription` is a subscriber of exactly `pattern` (not: of a pattern matching it).
    pub fn contains(&self, pattern: &str, subscription: SubscriptionId) -> bool {
        let Ok(segments) = parse_pattern(pattern, self.separator) else {
            return false;
        };
        let mut node = ROOT;
        for segment in &segments {
            match self.child(node, *segment) {
                Some(child) => node = child,
                None => return false,
            }
        }
        match self.nodes[node].set {
            NONE => false,
            set => self.sets[set].as_slice().contains(&subscription),
        }
    }

    /// Appends to `out` every subscription with a pattern matching `key`, each once, and returns how
    /// many it appended. Hot path: called once per event per shard; allocates nothing once the
    /// scratch vectors and `out` have grown to their working size.
    pub fn matches(&mut self, key: &str, out: &mut Vec<SubscriptionId>) -> usize {
        let start = out.len();
        let MatchScratch {
            stamps,
            stamp,
            current,
            next,
        } = &mut self.scratch;
        let (nodes, narrow, edges) = (self.nodes.as_slice(), &self.narrow, &self.edges);
        current.clear();
        let first = fresh_stamp(stamp, stamps);
        enter(nodes, stamps, current, ROOT, first);
        for segment in split_key(key.as_bytes(), self.separator) {
            if current.is_empty() {
                break;
            }
            // The interner is probed only if some active node has a literal edge to follow: a
            // segment that only wildcards can consume (a call id under `*`) costs no hashing.
            let mut literal = None;
            let now = fresh_stamp(stamp, stamps);
            next.clear();
            for &id in current.iter() {
                let node = nodes[id as usize];
                if node.literal_children() > 0 {
                    let literal = *literal.get_or_insert_with(|| self.interner.get(segment));
                    if let Some(child) =
                        literal.and_then(|l| literal_child(narrow, edges, id, &node, l))
                    {
                        enter(nodes, stamps, next, child, now);
                    }
                }
                enter(nodes, stamps, next, node.star, now);
                if node.is_hash() {
                    enter(nodes, stamps, next, id, now);
                }
            }
            std::mem::swap(current, next);
        }

        let mut terminals = 0usize;
        for &id in current.iter() {
            let set = nodes[id as usize].set;
            if set != NONE {
                out.extend_from_slice(self.sets[set].as_slice());
                terminals += 1;
            }
        }
        if terminals > 1 {
            dedup_tail(out, start);
        }
        out.len() - start
    }

    /// Releases spare capacity (after a mass unsubscribe, say).
    pub fn shrink_to_fit(&mut self) {
        self.edges.shrink_to_fit();
        self.interner.shrink_to_fit();
        self.nodes.shrink_to_fit();
        self.narrow.shrink_to_fit();
        self.sets.shrink_to_fit();
    }

    fn literal_child(&self, id: NodeId, node: &Node, segment: SegmentId) -> Option<NodeId> {
        literal_child(&self.narrow, &self.edges, id, node, segment)
    }

    fn child(&self, id: NodeId, segment: Segment<'_>) -> Option<NodeId> {
        let node = &self.nodes[id];
        let child = match segment {
            Segment::Star => node.star,
            Segment::Hash => node.hash,
            Segment::Literal(text) => {
                if node.literal_children() == 0 {
                    return None;
                }
                self.literal_child(id, node, self.interner.get(text)?)?
            }
        };
        (child != NONE).then_some(child)
    }

    fn child_or_insert(&mut self, id: NodeId, segment: Segment<'_>) -> NodeId {
        if let Some(child) = self.child(id, segment) {
            return child;
        }
        let child = self.alloc_node(segment == Segment::Hash);
        match segment {
            Segment::Star => self.nodes[id].star = child,
            Segment::Hash => self.nodes[id].hash = child,
            Segment::Literal(text) => {
                let segment = self.interner.intern(text);
                self.interner.retain(text);
                self.add_literal_edge(id, segment, child);
            }
        }
        self.nodes[id].meta += 1;
        child
    }

    /// Adds a literal edge that `id` does not have yet. Call before counting it in `meta`.
    fn add_literal_edge(&mut self, id: NodeId, segment: SegmentId, child: NodeId) {
        let node = self.nodes[id];
        if node.narrow != NONE {
            let edges = &mut self.narrow[node.narrow];
            if edges.len() < NARROW_MAX {
                edges.push((segment, child));
                return;
            }
            // The node has become wide: its edges move to the shared table for good.
            for (s, c) in edges.drain(..) {
                self.edges.insert(edge_key(id, s), c);
            }
            self.narrow.free(node.narrow);
            self.nodes[id].narrow = NONE;
        } else if node.literal_children() == 0 {
            let mut edges = NarrowEdges::new();
            edges.push((segment, child));
            self.nodes[id].narrow = self.narrow.alloc(edges);
            return;
        }
        self.edges.insert(edge_key(id, segment), child);
    }

    /// Removes the edge labelled `segment` from `id` (the child itself is freed by the caller).
    fn unlink(&mut self, id: NodeId, segment: Segment<'_>) {
        match segment {
            Segment::Star => self.nodes[id].star = NONE,
            Segment::Hash => self.nodes[id].hash = NONE,
            Segment::Literal(text) => {
                if let Some(segment) = self.interner.get(text) {
                    let narrow = self.nodes[id].narrow;
                    if narrow != NONE {
                        let edges = &mut self.narrow[narrow];
                        edges.retain(|(s, _)| *s != segment);
                        if edges.is_empty() {
                            self.narrow.free(narrow);
                            self.nodes[id].narrow = NONE;
                        }
                    } else {
                        self.edges.remove(&edge_key(id, segment));
                    }
                    self.interner.release(text);
                }
            }
        }
        self.nodes[id].meta -= 1;
    }

    fn alloc_node(&mut self, hash_node: bool) -> NodeId {
        let id = self.nodes.alloc(Node::new(hash_node));
        if self.scratch.stamps.len() < self.nodes.high_water() {
            // A new node starts with stamp 0, which `fresh_stamp` never hands out.
            self.scratch.stamps.resize(self.nodes.high_water(), 0);
        }
        id
    }
}

/// The child of node `id` along the literal edge `segment`. Hot path: a scan of at most
/// [`NARROW_MAX`] integers for a narrow node, one table probe for a wide one. A free function so
/// that `matches` can call it while it borrows its scratch space mutably.
#[inline]
fn literal_child(
    narrow: &Slab<NarrowEdges>,
    edges: &HashMap<u64, NodeId, ahash::RandomState>,
    id: NodeId,
    node: &Node,
    segment: SegmentId,
) -> Option<NodeId> {
    if node.narrow != NONE {
        let list = &narrow[node.narrow];
        list.iter()
            .find(|(s, _)| *s == segment)
            .map(|(_, child)| *child)
    } else {
        edges.get(&edge_key(id, segment)).copied()
    }
}

/// Removes duplicates from `out[start..]` in place. Small tails (the usual case: a socket's event
/// matched by two or three patterns) are deduplicated by comparison, larger ones are sorted first.
fn dedup_tail(out: &mut Vec<SubscriptionId>, start: usize) {
    const QUADRATIC_UP_TO: usize = 16;
    if out.len() - start <= QUADRATIC_UP_TO {
        let mut write = start;
        for read in start..out.len() {
            let candidate = out[read];
            if !out[start..write].contains(&candidate) {
                out[write] = candidate;
                write += 1;
            }
        }
        out.truncate(write);
        return;
    }
    out[start..].sort_unstable();
    let mut write = start;
    for read in start..out.len() {
        if write == start || out[read] != out[write - 1] {
            out[write] = out[read];
            write += 1;
        }
    }
    out.truncate(write);
}

impl std::fmt::Debug for BindingAutomaton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingAutomaton")
            .field("separator", &self.separator)
            .field("bindings", &self.bindings)
            .field("nodes", &self.node_count())
            .field("segments", &self.segment_count())
            .finish()
    }
}

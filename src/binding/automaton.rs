//! The segment trie and its NFA-style matcher. The algorithm and its cost are described in the
//! module documentation (`binding/mod.rs`); the invariants it keeps are listed on the types below.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::interner::{Interner, SegmentId};
use super::pattern::{parse_pattern, split_key, BindingError, Segment, Separator, MAX_SEGMENTS};
use super::subscribers::SubscriberSet;
use super::SubscriptionId;

type NodeId = u32;

/// "No node" / "no subscriber set" in the compact `u32` links below.
const NONE: u32 = u32::MAX;
const ROOT: NodeId = 0;
/// Bit of [`Node::meta`] set on nodes reached through a `#` edge (they loop on themselves).
const HASH_NODE: u32 = 1 << 31;

/// One trie node: 16 bytes, all links are indices.
///
/// Invariants: `meta`'s low bits count the node's child edges (literal edges in
/// [`BindingAutomaton::edges`], plus `star` and `hash` when set); a node other than the root has a
/// child edge or a subscriber set, otherwise it has been pruned.
#[derive(Clone, Copy)]
struct Node {
    star: NodeId,
    hash: NodeId,
    meta: u32,
    /// Index into [`BindingAutomaton::sets`]; `NONE` when no pattern ends here.
    set: u32,
}

impl Node {
    const fn new(hash_node: bool) -> Node {
        Node {
            star: NONE,
            hash: NONE,
            meta: if hash_node { HASH_NODE } else { 0 },
            set: NONE,
        }
    }

    fn children(&self) -> u32 {
        self.meta & !HASH_NODE
    }

    fn is_hash(&self) -> bool {
        self.meta & HASH_NODE != 0
    }

    fn has_literal_children(&self) -> bool {
        self.children() > u32::from(self.star != NONE) + u32::from(self.hash != NONE)
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
    nodes: Vec<Node>,
    free_nodes: Vec<NodeId>,
    /// Literal edges: `(parent, segment id)` packed into a `u64` -> child.
    edges: HashMap<u64, NodeId, ahash::RandomState>,
    interner: Interner,
    sets: Vec<SubscriberSet>,
    free_sets: Vec<u32>,
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

impl MatchScratch {
    /// A stamp no node carries yet. On wrap-around (after 4 billion key segments) every stamp is
    /// reset, so a stale stamp can never be mistaken for a current one.
    fn fresh_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamps.fill(0);
            self.stamp = 1;
        }
        self.stamp
    }
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
            nodes: Vec::new(),
            free_nodes: Vec::new(),
            edges: HashMap::default(),
            interner: Interner::default(),
            sets: Vec::new(),
            free_sets: Vec::new(),
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
        self.nodes.len() - self.free_nodes.len()
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
        let set = match self.nodes[node as usize].set {
            NONE => {
                let set = self.alloc_set();
                self.nodes[node as usize].set = set;
                set
            }
            set => set,
        };
        let added = self.sets[set as usize].insert(subscription);
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
        let set = self.nodes[node as usize].set;
        if set == NONE || !self.sets[set as usize].remove(subscription) {
            return false;
        }
        self.bindings -= 1;
        if self.sets[set as usize].is_empty() {
            self.free_set(set);
            self.nodes[node as usize].set = NONE;
        }
        // Prune bottom-up: a node with neither children nor subscribers is unreachable garbage.
        for depth in (0..segments.len()).rev() {
            let child = path[depth + 1];
            let node = self.nodes[child as usize];
            if node.children() > 0 || node.set != NONE {
                break;
            }
            self.unlink(path[depth], segments[depth]);
            self.free_node(child);
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
        match self.nodes[node as usize].set {
            NONE => false,
            set => self.sets[set as usize].as_slice().contains(&subscription),
        }
    }

    /// Appends to `out` every subscription with a pattern matching `key`, each once, and returns how
    /// many it appended. Hot path: called once per event per shard; allocates nothing once the
    /// scratch vectors and `out` have grown to their working size.
    pub fn matches(&mut self, key: &str, out: &mut Vec<SubscriptionId>) -> usize {
        let start = out.len();
        let scratch = &mut self.scratch;
        let mut current = std::mem::take(&mut scratch.current);
        let mut next = std::mem::take(&mut scratch.next);
        current.clear();

        let stamp = scratch.fresh_stamp();
        enter(&self.nodes, &mut scratch.stamps, &mut current, ROOT, stamp);
        for segment in split_key(key.as_bytes(), self.separator) {
            if current.is_empty() {
                break;
            }
            // The interner is probed only if some active node has a literal edge to follow: a
            // segment that only wildcards can consume (a call id under `*`) costs no hashing.
            let mut literal = None;
            let stamp = scratch.fresh_stamp();
            next.clear();
            for &id in &current {
                let node = self.nodes[id as usize];
                if node.has_literal_children() {
                    let literal = *literal.get_or_insert_with(|| self.interner.get(segment));
                    if let Some(child) = literal.and_then(|l| self.edges.get(&edge_key(id, l))) {
                        enter(&self.nodes, &mut scratch.stamps, &mut next, *child, stamp);
                    }
                }
                enter(
                    &self.nodes,
                    &mut scratch.stamps,
                    &mut next,
                    node.star,
                    stamp,
                );
                if node.is_hash() {
                    enter(&self.nodes, &mut scratch.stamps, &mut next, id, stamp);
                }
            }
            std::mem::swap(&mut current, &mut next);
        }

        let mut terminals = 0usize;
        for &id in &current {
            let set = self.nodes[id as usize].set;
            if set != NONE {
                out.extend_from_slice(self.sets[set as usize].as_slice());
                terminals += 1;
            }
        }
        if terminals > 1 {
            dedup_tail(out, start);
        }
        scratch.current = current;
        scratch.next = next;
        out.len() - start
    }

    /// Releases spare capacity (after a mass unsubscribe, say).
    pub fn shrink_to_fit(&mut self) {
        self.edges.shrink_to_fit();
        self.interner.shrink_to_fit();
        self.free_nodes.shrink_to_fit();
        self.free_sets.shrink_to_fit();
    }

    fn child(&self, node: NodeId, segment: Segment<'_>) -> Option<NodeId> {
        let node_ref = &self.nodes[node as usize];
        let child = match segment {
            Segment::Star => node_ref.star,
            Segment::Hash => node_ref.hash,
            Segment::Literal(text) => {
                let id = self.interner.get(text)?;
                *self.edges.get(&edge_key(node, id))?
            }
        };
        (child != NONE).then_some(child)
    }

    fn child_or_insert(&mut self, node: NodeId, segment: Segment<'_>) -> NodeId {
        if let Some(child) = self.child(node, segment) {
            return child;
        }
        let child = self.alloc_node(segment == Segment::Hash);
        match segment {
            Segment::Star => self.nodes[node as usize].star = child,
            Segment::Hash => self.nodes[node as usize].hash = child,
            Segment::Literal(text) => {
                let id = self.interner.intern(text);
                self.interner.retain(text);
                self.edges.insert(edge_key(node, id), child);
            }
        }
        self.nodes[node as usize].meta += 1;
        child
    }

    /// Removes the edge labelled `segment` from `node` (the child itself is freed by the caller).
    fn unlink(&mut self, node: NodeId, segment: Segment<'_>) {
        match segment {
            Segment::Star => self.nodes[node as usize].star = NONE,
            Segment::Hash => self.nodes[node as usize].hash = NONE,
            Segment::Literal(text) => {
                if let Some(id) = self.interner.get(text) {
                    self.edges.remove(&edge_key(node, id));
                    self.interner.release(text);
                }
            }
        }
        self.nodes[node as usize].meta -= 1;
    }

    fn alloc_node(&mut self, hash_node: bool) -> NodeId {
        let node = Node::new(hash_node);
        match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                // A new node starts with stamp 0, which `fresh_stamp` never hands out.
                self.scratch.stamps.push(0);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    fn free_node(&mut self, id: NodeId) {
        self.nodes[id as usize] = Node::new(false);
        self.free_nodes.push(id);
    }

    fn alloc_set(&mut self) -> u32 {
        match self.free_sets.pop() {
            Some(set) => set,
            None => {
                self.sets.push(SubscriberSet::default());
                (self.sets.len() - 1) as u32
            }
        }
    }

    fn free_set(&mut self, set: u32) {
        self.sets[set as usize] = SubscriberSet::default();
        self.free_sets.push(set);
    }
}

/// Sorts `out[start..]` and removes duplicates from it, in place.
fn dedup_tail(out: &mut Vec<SubscriptionId>, start: usize) {
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

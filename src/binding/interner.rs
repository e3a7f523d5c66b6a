//! Literal segments interned to dense `u32` ids, reference-counted by the trie edges that use them.
//!
//! The trie compares ids, never strings. An id lives as long as at least one edge is labelled with
//! it; when the last such edge goes, the text is freed and the id reused, so account ids that come
//! and go over months do not accumulate.

use std::collections::HashMap;

/// Id of an interned literal segment.
pub(crate) type SegmentId = u32;

struct Entry {
    id: SegmentId,
    /// Number of trie edges labelled with this segment.
    edges: u32,
}

#[derive(Default)]
pub(crate) struct Interner {
    by_text: HashMap<Box<[u8]>, Entry, ahash::RandomState>,
    free_ids: Vec<SegmentId>,
    next_id: SegmentId,
}

impl Interner {
    /// Hot path: one hash and one probe per key segment.
    #[inline]
    pub(crate) fn get(&self, text: &[u8]) -> Option<SegmentId> {
        self.by_text.get(text).map(|entry| entry.id)
    }

    /// The id of `text`, interning it if needed. The caller must follow with [`Interner::retain`]
    /// when it labels a new edge with the id; an id no edge uses is dropped by the next release.
    pub(crate) fn intern(&mut self, text: &[u8]) -> SegmentId {
        if let Some(entry) = self.by_text.get(text) {
            return entry.id;
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        self.by_text.insert(text.into(), Entry { id, edges: 0 });
        id
    }

    /// One more edge is labelled with `text`.
    pub(crate) fn retain(&mut self, text: &[u8]) {
        if let Some(entry) = self.by_text.get_mut(text) {
            entry.edges += 1;
        }
    }

    /// One edge labelled with `text` is gone; forgets the text when it was the last.
    pub(crate) fn release(&mut self, text: &[u8]) {
        let Some(entry) = self.by_text.get_mut(text) else {
            return;
        };
        entry.edges = entry.edges.saturating_sub(1);
        if entry.edges == 0 {
            let id = entry.id;
            self.by_text.remove(text);
            self.free_ids.push(id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_text.len()
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.by_text.shrink_to_fit();
        self.free_ids.shrink_to_fit();
    }
}

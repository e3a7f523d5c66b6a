//! Literal segments interned to dense `u32` ids, reference-counted by the trie edges that use them.
//!
//! The trie compares ids, never strings. An id lives as long as at least one edge is labelled with
//! it; when the last such edge goes, the text is freed and the id reused, so account ids that come
//! and go over months do not accumulate.
//!
//! Hot path: [`Interner::get`] runs once per key segment of every event. It hashes the bytes once
//! and compares candidates inline (a `memcmp` library call per probe was a measurable share of a
//! match), which is why this is a `hashbrown::HashTable` with our own hash and equality rather
//! than a `HashMap<Box<[u8]>, _>`.

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

/// Id of an interned literal segment.
pub(crate) type SegmentId = u32;

struct Entry {
    text: Box<[u8]>,
    id: SegmentId,
    /// Number of trie edges labelled with this segment.
    edges: u32,
}

#[derive(Default)]
pub(crate) struct Interner {
    table: HashTable<Entry>,
    hasher: ahash::RandomState,
    free_ids: Vec<SegmentId>,
    next_id: SegmentId,
}

/// Byte equality without a library call: segments are short (event names, 32-hex account ids).
#[inline]
fn same_text(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in a_words.by_ref().zip(b_words.by_ref()) {
        // As whole words: comparing the 8-byte slices themselves would call `bcmp` again.
        let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map(u64::from_ne_bytes).ok();
        if word(x) != word(y) {
            return false;
        }
    }
    a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .all(|(x, y)| x == y)
}

impl Interner {
    #[inline]
    fn hash(&self, text: &[u8]) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(text);
        hasher.finish()
    }

    /// Hot path: one hash and one probe per key segment.
    #[inline]
    pub(crate) fn get(&self, text: &[u8]) -> Option<SegmentId> {
        self.table
            .find(self.hash(text), |entry| same_text(&entry.text, text))
            .map(|entry| entry.id)
    }

    fn entry_mut(&mut self, text: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(text);
        self.table
            .find_mut(hash, |entry| same_text(&entry.text, text))
    }

    /// The id of `text`, interning it if needed. The caller must follow with [`Interner::retain`]
    /// when it labels a new edge with the id; an id no edge uses is dropped by the next release.
    pub(crate) fn intern(&mut self, text: &[u8]) -> SegmentId {
        if let Some(id) = self.get(text) {
            return id;
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let hash = self.hash(text);
        let entry = Entry {
            text: text.into(),
            id,
            edges: 0,
        };
        let hasher = &self.hasher;
        self.table.insert_unique(hash, entry, |e| {
            let mut h = hasher.build_hasher();
            h.write(&e.text);
            h.finish()
        });
        id
    }

    /// One more edge is labelled with `text`.
    pub(crate) fn retain(&mut self, text: &[u8]) {
        if let Some(entry) = self.entry_mut(text) {
            entry.edges += 1;
        }
    }

    /// One edge labelled with `text` is gone; forgets the text when it was the last.
    pub(crate) fn release(&mut self, text: &[u8]) {
        let hash = self.hash(text);
        let Ok(mut slot) = self
            .table
            .find_entry(hash, |entry| same_text(&entry.text, text))
        else {
            return;
        };
        let entry = slot.get_mut();
        entry.edges = entry.edges.saturating_sub(1);
        if entry.edges == 0 {
            let (removed, _) = slot.remove();
            self.free_ids.push(removed.id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        self.table.shrink_to_fit(|e| {
            let mut h = hasher.build_hasher();
            h.write(&e.text);
            h.finish()
        });
        self.free_ids.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_compares_every_byte() {
        let a = b"0123456789abcdef0123456789abcdeX";
        for len in 0..a.len() {
            assert!(same_text(&a[..len], &a[..len]));
            for flip in 0..len {
                let mut b = a[..len].to_vec();
                b[flip] ^= 1;
                assert!(!same_text(&a[..len], &b), "len {len}, byte {flip}");
            }
        }
        assert!(!same_text(b"ab", b"abc"));
    }

    #[test]
    fn ids_are_reused_only_after_the_last_edge_goes() {
        let mut interner = Interner::default();
        let a = interner.intern(b"acct-a");
        interner.retain(b"acct-a");
        interner.retain(b"acct-a");
        assert_eq!(interner.intern(b"acct-a"), a);
        interner.release(b"acct-a");
        assert_eq!(interner.get(b"acct-a"), Some(a));
        interner.release(b"acct-a");
        assert_eq!(interner.get(b"acct-a"), None);
        assert_eq!(interner.len(), 0);
        let b = interner.intern(b"acct-b");
        assert_eq!(b, a, "the freed id is reused");
    }
}

//! The set of subscribers of one pattern.
//!
//! Almost every pattern has one or two subscribers, so they are held inline with no heap at all. A
//! pattern that many subscribers share (one hot binding on a shard with 20,000 sockets) gets a
//! position index, so that insert and remove stay O(1) instead of scanning the list.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::SubscriptionId;

/// Up to this many subscribers a linear scan is cheaper than hashing.
const INDEX_ABOVE: usize = 16;
/// The index is dropped again below this size (hysteresis, so a set hovering around the threshold
/// does not rebuild it on every call).
const UNINDEX_BELOW: usize = 8;

#[derive(Default)]
pub(crate) struct SubscriberSet {
    /// Dense, unordered: what a match copies out.
    members: SmallVec<[SubscriptionId; 2]>,
    /// Position of each member in `members`, present only for large sets. Boxed on purpose: an
    /// absent index costs 8 bytes in every set instead of the map's ~64.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<SubscriptionId, u32, ahash::RandomState>>>,
}

impl SubscriberSet {
    #[inline]
    pub(crate) fn as_slice(&self) -> &[SubscriptionId] {
        &self.members
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds `id`; false if it was already a member.
    pub(crate) fn insert(&mut self, id: SubscriptionId) -> bool {
        match &mut self.index {
            Some(index) => {
                if index.contains_key(&id) {
                    return false;
                }
                index.insert(id, self.members.len() as u32);
            }
            None if self.members.contains(&id) => return false,
            None => {}
        }
        self.members.push(id);
        if self.index.is_none() && self.members.len() > INDEX_ABOVE {
            let index = self
                .members
                .iter()
                .enumerate()
                .map(|(pos, member)| (*member, pos as u32))
                .collect();
            self.index = Some(Box::new(index));
        }
        true
    }

    /// Removes `id`; false if it was not a member.
    pub(crate) fn remove(&mut self, id: SubscriptionId) -> bool {
        let pos = match &mut self.index {
            Some(index) => match index.remove(&id) {
                Some(pos) => pos as usize,
                None => return false,
            },
            None => match self.members.iter().position(|member| *member == id) {
                Some(pos) => pos,
                None => return false,
            },
        };
        self.members.swap_remove(pos);
        if let Some(index) = &mut self.index {
            if let Some(moved) = self.members.get(pos) {
                index.insert(*moved, pos as u32);
            }
            if self.members.len() < UNINDEX_BELOW {
                self.index = None;
                self.members.shrink_to_fit();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_across_the_index_threshold() {
        let mut set = SubscriberSet::default();
        for i in 0..100 {
            assert!(set.insert(SubscriptionId(i)));
            assert!(!set.insert(SubscriptionId(i)));
        }
        assert!(set.index.is_some());
        for i in (0..100).step_by(2) {
            assert!(set.remove(SubscriptionId(i)));
            assert!(!set.remove(SubscriptionId(i)));
        }
        let mut left: Vec<u32> = set.as_slice().iter().map(|s| s.0).collect();
        left.sort_unstable();
        assert_eq!(left, (1..100).step_by(2).collect::<Vec<_>>());
        for i in (1..100).step_by(2) {
            assert!(set.remove(SubscriptionId(i)));
        }
        assert!(set.is_empty());
        assert!(set.index.is_none());
    }
}

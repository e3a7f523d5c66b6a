//! Node-wide reference counts of AMQP bindings.
//!
//! One reference per (socket, client binding) that needs the AMQP binding; the dialects take a
//! reference exactly when the shard reports a subscription as new and give it back exactly when
//! it reports one as removed (including every subscription of a socket that vanished), so
//! duplicates, strays and abrupt disconnects cannot skew the count. A release with no reference
//! to return is counted as a stray and changes nothing.
//!
//! A binding is *wanted* while its count is positive and *active* once the source confirmed it;
//! acquirers wait for activity.

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::SourceDown;
use crate::families::AmqpBinding;

type Waiter = oneshot::Sender<Result<(), SourceDown>>;

#[derive(Default)]
struct Entry {
    refs: usize,
    active: bool,
    waiters: Vec<Waiter>,
}

#[derive(Default)]
pub(super) struct Counts {
    entries: HashMap<AmqpBinding, Entry>,
    pub strays: u64,
}

impl Counts {
    /// Takes a reference; `waiter` is answered once the binding is active. Returns true when the
    /// binding just became wanted.
    pub fn acquire(&mut self, binding: AmqpBinding, waiter: Waiter) -> bool {
        let entry = self.entries.entry(binding).or_default();
        entry.refs += 1;
        if entry.active {
            let _ = waiter.send(Ok(()));
        } else {
            entry.waiters.push(waiter);
        }
        entry.refs == 1
    }

    /// Returns a reference. Returns true when the binding just stopped being wanted.
    pub fn release(&mut self, binding: &AmqpBinding) -> bool {
        let Some(entry) = self.entries.get_mut(binding) else {
            self.strays += 1;
            return false;
        };
        entry.refs -= 1;
        if entry.refs == 0 {
            self.entries.remove(binding);
            return true;
        }
        false
    }

    pub fn wanted(&self, binding: &AmqpBinding) -> bool {
        self.entries.contains_key(binding)
    }

    /// The source confirmed `binding`: answer everyone waiting for it.
    pub fn activated(&mut self, binding: &AmqpBinding) {
        if let Some(entry) = self.entries.get_mut(binding) {
            entry.active = true;
            for waiter in entry.waiters.drain(..) {
                let _ = waiter.send(Ok(()));
            }
        }
    }

    /// The source was lost: every binding must be confirmed again.
    pub fn deactivate_all(&mut self) {
        for entry in self.entries.values_mut() {
            entry.active = false;
        }
    }

    pub fn wanted_bindings(&self) -> Vec<AmqpBinding> {
        self.entries.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(key: &str) -> AmqpBinding {
        AmqpBinding {
            exchange: "callevt",
            key: key.into(),
        }
    }

    #[test]
    fn counts_references_and_answers_waiters_once_active() {
        let mut counts = Counts::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        assert!(
            counts.acquire(b("k"), tx1),
            "first reference wants the binding"
        );
        assert!(!counts.acquire(b("k"), tx2));
        assert!(rx1.try_recv().is_err(), "not active yet");
        counts.activated(&b("k"));
        assert_eq!(rx1.try_recv(), Ok(Ok(())));
        assert_eq!(rx2.try_recv(), Ok(Ok(())));
        let (tx3, mut rx3) = oneshot::channel();
        assert!(!counts.acquire(b("k"), tx3));
        assert_eq!(rx3.try_recv(), Ok(Ok(())), "active bindings answer at once");
        assert!(!counts.release(&b("k")));
        assert!(!counts.release(&b("k")));
        assert!(counts.release(&b("k")), "last reference");
        assert!(!counts.wanted(&b("k")));
        assert!(!counts.release(&b("k")), "a stray changes nothing");
        assert_eq!(counts.strays, 1);
        assert_eq!(counts.len(), 0);
    }

    #[test]
    fn losing_the_source_makes_acquirers_wait_again() {
        let mut counts = Counts::default();
        let (tx, _rx) = oneshot::channel();
        counts.acquire(b("k"), tx);
        counts.activated(&b("k"));
        counts.deactivate_all();
        let (tx, mut rx) = oneshot::channel();
        counts.acquire(b("k"), tx);
        assert!(rx.try_recv().is_err());
        assert_eq!(counts.wanted_bindings(), vec![b("k")]);
        counts.activated(&b("k"));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
    }
}

//! The hooks in force on this node, by account and by id, and the broker bindings they need:
//! rebuilt from the store on every change (and every second, should an announcement be lost).
//! Owns [`Index`]; reads the store, calls nothing else of webhooks.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::hook::Hook;
use super::payload::HookEvent;
use super::Webhooks;

/// The hooks in force, by account and by id, and the broker bindings they need.
#[derive(Default)]
pub(super) struct Index {
    pub(super) by_account: HashMap<String, Vec<Arc<Hook>>>,
    pub(super) by_id: HashMap<String, Arc<Hook>>,
    pub(super) bindings: BTreeSet<(&'static str, &'static str)>,
    pub(super) disabled: usize,
}

impl Webhooks {
    /// Re-reads every hook from the store.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let rows = self.store.all_hooks().await?;
        let mut index = Index::default();
        for row in rows {
            let Some(hook) = row.hook() else { continue };
            if !hook.enabled {
                if hook.disable_reason.is_some() {
                    index.disabled += 1;
                }
                continue;
            }
            index.bindings.extend(hook.hook.amqp_bindings());
            let hook = Arc::new(hook);
            index.by_id.insert(hook.id.clone(), hook.clone());
            index
                .by_account
                .entry(hook.account_id.clone())
                .or_default()
                .push(hook);
        }
        let changed = {
            let mut current = self.index.write().unwrap_or_else(|p| p.into_inner());
            let changed = current.bindings != index.bindings;
            *current = index;
            changed
        };
        if changed {
            self.wanted_bindings.fetch_add(1, Ordering::SeqCst);
            self.bindings_changed.notify_waiters();
        }
        Ok(())
    }

    /// The broker bindings the hooks in force need, and their generation.
    pub(super) fn bindings(&self) -> (u64, BTreeSet<(&'static str, &'static str)>) {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        (
            self.wanted_bindings.load(Ordering::SeqCst),
            index.bindings.clone(),
        )
    }

    /// The consumer has bound the bindings of `generation`.
    pub(super) fn bound(&self, generation: u64) {
        self.bound_bindings.send_if_modified(|b| {
            let newer = generation > *b;
            if newer {
                *b = generation;
            }
            newer
        });
    }

    /// Hooks auto-disabled and not yet re-enabled.
    pub fn disabled_hooks(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .disabled
    }

    /// Hooks in force.
    pub fn enabled_hooks(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    /// The hooks an event fires: the account's own, and each ancestor's that includes
    /// sub-accounts.
    pub(super) fn matching(&self, event: &HookEvent) -> Vec<Arc<Hook>> {
        let ancestors = self.auth.ancestors(&event.account);
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let mut add = |account: &str, own: bool| {
            for hook in index.by_account.get(account).into_iter().flatten() {
                if (own || hook.include_subaccounts) && hook.wants(event.hook, &event.filter) {
                    out.push(hook.clone());
                }
            }
        };
        add(&event.account, true);
        for ancestor in &ancestors {
            add(ancestor, false);
        }
        out
    }
}

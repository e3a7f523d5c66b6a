//! What is live, per account: the calls and conferences a command may name (docs/kazoo.md
//! "Commands").
//!
//! Fed by the ingest thread from the call and conference events it routes ([`Facts`]), read by
//! whoever takes a command (a shard, the REST side). Only *watched* accounts are tracked: those
//! for which a socket of this node holds command rights ([`Watch`], reference-counted); an
//! account nobody watches costs one hash lookup per event.
//!
//! Bounded: at most `max_per_account` calls (and as many conferences) per account and
//! `max_total` node-wide; past a cap a new call is not tracked (and counted). An entry with no
//! event for `idle_expiry` is forgotten, so a lost `CHANNEL_DESTROY` costs memory for that long
//! only. Nothing is persisted: after a restart a call is known again from its next event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::families::Facts;

/// The bounds of the tracker (`commands_max_calls`, `commands_max_calls_per_account`,
/// `call_idle_expiry_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    pub max_total: usize,
    pub max_per_account: usize,
    pub idle_expiry: Duration,
}

impl Default for LiveLimits {
    fn default() -> LiveLimits {
        LiveLimits {
            max_total: 200_000,
            max_per_account: 10_000,
            idle_expiry: Duration::from_secs(7200),
        }
    }
}

/// A live call as its events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub account: String,
    /// `Other-Leg-Call-ID` of its latest event that had one: the call is bridged.
    pub other_leg: Option<String>,
    seen: Instant,
}

#[derive(Default)]
struct State {
    limits: LiveLimits,
    /// Account -> sockets (or REST watches) holding command rights for it.
    watched: HashMap<String, usize>,
    calls: HashMap<String, Call>,
    /// (account, conference id) -> last event.
    conferences: HashMap<(String, String), Instant>,
    /// Account -> calls + conferences tracked for it.
    per_account: HashMap<String, usize>,
    last_sweep: Option<Instant>,
}

/// The tracker; one per node, shared.
#[derive(Default)]
pub struct Live {
    state: Mutex<State>,
    /// Calls and conferences not tracked because a cap was reached.
    pub untracked: AtomicU64,
}

/// Idle entries are looked for at most this often (from the ingest thread).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Live {
    pub fn new(limits: LiveLimits) -> Arc<Live> {
        let live = Live::default();
        live.lock().limits = limits;
        Arc::new(live)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the bounds (before events flow; `serve` reads them from the configuration).
    pub fn configure(&self, limits: LiveLimits) {
        self.lock().limits = limits;
    }

    /// Starts tracking `account` (or takes one more reference on it).
    pub fn watch(self: &Arc<Self>, account: &str) -> Watch {
        *self.lock().watched.entry(account.to_string()).or_default() += 1;
        Watch {
            live: self.clone(),
            account: account.to_string(),
        }
    }

    fn unwatch(&self, account: &str) {
        let mut state = self.lock();
        let Some(count) = state.watched.get_mut(account) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        // Nobody asks for this account's events any more: what is known of it would go stale.
        state.watched.remove(account);
        state.calls.retain(|_, call| call.account != account);
        state.conferences.retain(|(owner, _), _| owner != account);
        state.per_account.remove(account);
    }

    /// How long an entry lives without an event.
    pub fn idle_expiry(&self) -> Duration {
        self.lock().limits.idle_expiry
    }

    /// Takes in what one routed event says (the ingest thread; once per call or conference
    /// event, so it does nothing for an account nobody watches).
    pub fn observe(&self, account: &str, facts: &Facts) {
        let now = Instant::now();
        let mut state = self.lock();
        if state
            .last_sweep
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            state.sweep(now);
        }
        if !state.watched.contains_key(account) {
            return;
        }
        match facts {
            Facts::Call {
                call_id,
                destroyed: true,
                ..
            } => {
                if let Some(call) = state.calls.remove(call_id) {
                    state.forget_one(&call.account);
                }
            }
            Facts::Call {
                call_id,
                other_leg,
                destroyed: false,
            } => {
                if let Some(call) = state.calls.get_mut(call_id) {
                    if call.account == account {
                        call.seen = now;
                        if other_leg.is_some() {
                            call.other_leg.clone_from(other_leg);
                        }
                        return;
                    }
                    // The same id in another account's event: the newest event is the truth.
                    let before = std::mem::take(&mut call.account);
                    state.calls.remove(call_id);
                    state.forget_one(&before);
                }
                if state.room_for(account) {
                    state.remember_one(account);
                    state.calls.insert(
                        call_id.clone(),
                        Call {
                            account: account.to_string(),
                            other_leg: other_leg.clone(),
                            seen: now,
                        },
                    );
                } else {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Facts::Conference {
                conference,
                destroyed,
            } => {
                let key = (account.to_string(), conference.clone());
                if *destroyed {
                    if state.conferences.remove(&key).is_some() {
                        state.forget_one(account);
                    }
                } else if let Some(seen) = state.conferences.get_mut(&key) {
                    *seen = now;
                } else if state.room_for(account) {
                    state.remember_one(account);
                    state.conferences.insert(key, now);
                } else {
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The call `call_id` if it is live (and not idle past the expiry).
    pub fn call(&self, call_id: &str) -> Option<Call> {
        let state = self.lock();
        let idle = state.limits.idle_expiry;
        state
            .calls
            .get(call_id)
            .filter(|call| call.seen.elapsed() < idle)
            .cloned()
    }

    /// Whether `account` has the conference `conference` live.
    pub fn conference(&self, account: &str, conference: &str) -> bool {
        let state = self.lock();
        let idle = state.limits.idle_expiry;
        state
            .conferences
            .get(&(account.to_string(), conference.to_string()))
            .is_some_and(|seen| seen.elapsed() < idle)
    }

    /// Calls and conferences tracked now, and accounts watched.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (
            state.calls.len(),
            state.conferences.len(),
            state.watched.len(),
        )
    }
}

impl State {
    fn tracked(&self) -> usize {
        self.calls.len() + self.conferences.len()
    }

    fn room_for(&self, account: &str) -> bool {
        self.tracked() < self.limits.max_total
            && self.per_account.get(account).copied().unwrap_or(0) < self.limits.max_per_account
    }

    fn remember_one(&mut self, account: &str) {
        *self.per_account.entry(account.to_string()).or_default() += 1;
    }

    fn forget_one(&mut self, account: &str) {
        if let Some(count) = self.per_account.get_mut(account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_account.remove(account);
            }
        }
    }

    /// Forgets what has had no event for the idle expiry.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let idle = self.limits.idle_expiry;
        let mut gone: Vec<String> = Vec::new();
        self.calls.retain(|_, call| {
            let keep = now.duration_since(call.seen) < idle;
            if !keep {
                gone.push(call.account.clone());
            }
            keep
        });
        self.conferences.retain(|(account, _), seen| {
            let keep = now.duration_since(*seen) < idle;
            if !keep {
                gone.push(account.clone());
            }
            keep
        });
        for account in gone {
            self.forget_one(&account);
        }
    }
}

/// One reference on an account's tracking; given back when dropped.
pub struct Watch {
    live: Arc<Live>,
    account: String,
}

impl Watch {
    pub fn account(&self) -> &str {
        &self.account
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.live.unwatch(&self.account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, leg: Option<&str>, destroyed: bool) -> Facts {
        Facts::Call {
            call_id: id.into(),
            other_leg: leg.map(str::to_string),
            destroyed,
        }
    }

    #[test]
    fn a_call_is_live_from_its_first_event_to_its_destroy_in_watched_accounts_only() {
        let live = Live::new(LiveLimits::default());
        live.observe("acct-a", &call("c1", None, false));
        assert!(live.call("c1").is_none(), "not watched: not tracked");
        let watch = live.watch("acct-a");
        live.observe("acct-a", &call("c1", None, false));
        assert_eq!(live.call("c1").map(|c| c.account), Some("acct-a".into()));
        assert_eq!(live.call("c1").and_then(|c| c.other_leg), None);
        live.observe("acct-a", &call("c1", Some("c2"), false));
        assert_eq!(live.call("c1").and_then(|c| c.other_leg), Some("c2".into()));
        live.observe("acct-a", &call("c1", None, true));
        assert!(live.call("c1").is_none());
        live.observe("acct-a", &call("c3", None, false));
        drop(watch);
        assert!(live.call("c3").is_none(), "unwatched: forgotten");
        assert_eq!(live.sizes(), (0, 0, 0));
    }

    #[test]
    fn caps_bound_what_is_tracked_and_idle_entries_expire() {
        let live = Live::new(LiveLimits {
            max_total: 3,
            max_per_account: 2,
            idle_expiry: Duration::from_millis(0),
        });
        let _a = live.watch("acct-a");
        let _b = live.watch("acct-b");
        for id in ["a1", "a2", "a3"] {
            live.observe("acct-a", &call(id, None, false));
        }
        live.observe("acct-b", &call("b1", None, false));
        live.observe("acct-b", &call("b2", None, false));
        assert_eq!(live.sizes().0, 3);
        assert_eq!(live.untracked.load(Ordering::Relaxed), 2);
        // An idle expiry of zero: nothing counts as live.
        assert!(live.call("a1").is_none());
        live.lock().sweep(Instant::now());
        assert_eq!(live.sizes().0, 0);
        assert!(live.lock().per_account.is_empty());
    }

    #[test]
    fn conferences_are_per_account() {
        let live = Live::new(LiveLimits::default());
        let _a = live.watch("acct-a");
        let conf = |destroyed| Facts::Conference {
            conference: "conf1".into(),
            destroyed,
        };
        live.observe("acct-a", &conf(false));
        assert!(live.conference("acct-a", "conf1"));
        assert!(!live.conference("acct-b", "conf1"));
        live.observe("acct-a", &conf(true));
        assert!(!live.conference("acct-a", "conf1"));
    }
}

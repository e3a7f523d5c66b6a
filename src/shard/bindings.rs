//! The shard's bindings: which sockets want which events, and how each binding's frame is made.
//!
//! A binding is one `(separator, pattern, label)` on this shard, shared by every socket that asked
//! for it: the label is the dialect's client-side name (Kazoo's `subscribed_key`), so two sockets
//! that subscribed the same way share one binding and one encoded frame per event. The binding
//! automaton maps an event key to binding ids; each binding holds its sockets, so a delivery is
//! one match, one encode per matching binding, and one `Bytes` clone per socket.
//!
//! Invariants: a binding exists iff it has at least one socket; its id is in the automaton under
//! its pattern iff it exists; a socket's `Conn::bindings` lists exactly the bindings holding it.
//! Subscribe and unsubscribe are idempotent per socket, and a socket leaving removes itself from
//! every binding, so nothing is miscounted by duplicates, strays or abrupt disconnects.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::backend::SocketIo;
use super::conn::Conn;
use crate::binding::{BindingAutomaton, BindingError, Separator, SubscriptionId};
use crate::fanout::Event;

/// Turns an event into the frame the sockets of one binding receive (the dialect decides the
/// shape). Called once per event per matching binding: hot path.
pub trait FrameEncoder {
    fn encode(&self, event: &Event) -> Bytes;
}

struct Binding {
    separator: Separator,
    pattern: String,
    label: String,
    encoder: Rc<dyn FrameEncoder>,
    sockets: HashMap<u64, Rc<RefCell<Conn>>, ahash::RandomState>,
}

type Key = (Separator, String, String);

pub(crate) struct BindingTable {
    dot: BindingAutomaton,
    colon: BindingAutomaton,
    bindings: HashMap<u32, Binding, ahash::RandomState>,
    by_key: HashMap<Key, u32, ahash::RandomState>,
    next_id: u32,
    free_ids: Vec<u32>,
    /// Reused by every delivery.
    matched: Vec<SubscriptionId>,
    /// Sockets already given the current event, when it must reach each socket once.
    seen: hashbrown::HashSet<u64, ahash::RandomState>,
}

impl Default for BindingTable {
    fn default() -> BindingTable {
        BindingTable {
            dot: BindingAutomaton::new(Separator::Dot),
            colon: BindingAutomaton::new(Separator::Colon),
            bindings: HashMap::default(),
            by_key: HashMap::default(),
            next_id: 0,
            free_ids: Vec::new(),
            matched: Vec::new(),
            seen: Default::default(),
        }
    }
}

/// What happened to one event on one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub frames_encoded: u64,
    pub queued: u64,
    pub dropped: u64,
    pub closed_slow: u64,
}

impl BindingTable {
    fn automaton(&mut self, separator: Separator) -> &mut BindingAutomaton {
        match separator {
            Separator::Dot => &mut self.dot,
            Separator::Colon => &mut self.colon,
        }
    }

    /// Adds `conn` to the binding `(separator, pattern, label)`, creating it (with `encoder`) if
    /// needed. Returns whether the socket was newly added.
    pub(crate) fn subscribe(
        &mut self,
        conn: &Rc<RefCell<Conn>>,
        separator: Separator,
        pattern: &str,
        label: &str,
        encoder: Rc<dyn FrameEncoder>,
    ) -> Result<bool, BindingError> {
        let key = (separator, pattern.to_string(), label.to_string());
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => {
                let id = self.free_ids.pop().unwrap_or_else(|| {
                    self.next_id += 1;
                    self.next_id - 1
                });
                self.automaton(separator)
                    .insert(pattern, SubscriptionId(id))
                    .inspect_err(|_| {
                        self.free_ids.push(id);
                    })?;
                self.bindings.insert(
                    id,
                    Binding {
                        separator,
                        pattern: key.1.clone(),
                        label: key.2.clone(),
                        encoder,
                        sockets: HashMap::default(),
                    },
                );
                self.by_key.insert(key, id);
                id
            }
        };
        let socket = conn.borrow().id;
        let Some(binding) = self.bindings.get_mut(&id) else {
            // Unreachable while `by_key` and `bindings` agree (see the invariants above); a
            // client's command must never bring the shard down, so report "not added".
            return Ok(false);
        };
        if binding.sockets.insert(socket, conn.clone()).is_some() {
            return Ok(false);
        }
        conn.borrow_mut().bindings.push(id);
        Ok(true)
    }

    /// Removes `conn` from the binding `(separator, pattern, label)`; false if it was not in it.
    pub(crate) fn unsubscribe(
        &mut self,
        conn: &RefCell<Conn>,
        separator: Separator,
        pattern: &str,
        label: &str,
    ) -> bool {
        let key = (separator, pattern.to_string(), label.to_string());
        let Some(id) = self.by_key.get(&key).copied() else {
            return false;
        };
        let mut conn = conn.borrow_mut();
        let Some(at) = conn.bindings.iter().position(|b| *b == id) else {
            return false;
        };
        conn.bindings.swap_remove(at);
        let socket = conn.id;
        drop(conn);
        self.leave(id, socket);
        true
    }

    /// Removes `conn` from every binding it is in (unsubscribe-all, disconnect).
    pub(crate) fn unsubscribe_all(&mut self, conn: &RefCell<Conn>) -> usize {
        let (socket, ids) = {
            let mut conn = conn.borrow_mut();
            (conn.id, std::mem::take(&mut conn.bindings))
        };
        for id in &ids {
            self.leave(*id, socket);
        }
        ids.len()
    }

    fn leave(&mut self, id: u32, socket: u64) {
        let Some(binding) = self.bindings.get_mut(&id) else {
            return;
        };
        binding.sockets.remove(&socket);
        if binding.sockets.is_empty() {
            if let Some(binding) = self.bindings.remove(&id) {
                self.automaton(binding.separator)
                    .remove(&binding.pattern, SubscriptionId(id));
                self.by_key
                    .remove(&(binding.separator, binding.pattern, binding.label));
                self.free_ids.push(id);
            }
        }
    }

    /// Number of distinct bindings on this shard.
    pub(crate) fn len(&self) -> usize {
        self.bindings.len()
    }

    /// `(pattern, label)` of each binding `conn` is in.
    pub(crate) fn list(&self, conn: &Conn) -> Vec<(String, String)> {
        conn.bindings
            .iter()
            .filter_map(|id| self.bindings.get(id))
            .map(|b| (b.pattern.clone(), b.label.clone()))
            .collect()
    }

    /// Hot path: matches `event` (under each of its keys), encodes once per matching binding, and
    /// queues the frame on every
    /// socket of the binding. Kazoo (`.` keys) sends one frame per matching binding, each naming
    /// its `subscribed_key`; VoIPBin (`:` topics) sends each event to a socket once, however many
    /// of its topics match (the first matching topic names it). Sockets whose queue went from empty to non-empty are added to
    /// `dirty`, for the caller to flush after the batch.
    pub(crate) fn deliver(
        &mut self,
        event: &Event,
        dirty: &mut Vec<Rc<RefCell<Conn>>>,
        io: &SocketIo,
    ) -> Delivered {
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        let automaton = self.automaton(event.separator);
        automaton.matches(&event.key, &mut matched);
        if !event.also.is_empty() {
            // VoIPBin's other topic forms of the same event: one binding may match under
            // several, and is still one binding.
            for key in &event.also {
                automaton.matches(key, &mut matched);
            }
            matched.sort_unstable();
            matched.dedup();
        }
        let mut report = Delivered::default();
        let once = event.separator == Separator::Colon && matched.len() > 1;
        self.seen.clear();
        for id in &matched {
            let Some(binding) = self.bindings.get(&id.0) else {
                continue;
            };
            let frame = binding.encoder.encode(event);
            report.frames_encoded += 1;
            for (socket_id, conn) in &binding.sockets {
                if once && !self.seen.insert(*socket_id) {
                    continue;
                }
                let mut socket = conn.borrow_mut();
                if socket.is_closing() {
                    continue;
                }
                if !socket.outbound.fits(frame.len()) {
                    // Full only in user space, perhaps: give the kernel what it takes before
                    // calling the socket slow.
                    io.make_room(&mut socket);
                }
                let was_idle = socket.outbound.is_empty();
                match socket.outbound.push_event(frame.clone()) {
                    super::Enqueued::Queued => {
                        report.queued += 1;
                        if was_idle {
                            dirty.push(conn.clone());
                        } else if socket.outbound.queued_bytes() >= socket.outbound.limit() / 4 {
                            // A burst must not overrun a socket that keeps up: write now rather
                            // than at the end of the batch.
                            io.make_room(&mut socket);
                        }
                    }
                    super::Enqueued::Dropped => report.dropped += 1,
                    super::Enqueued::MustClose => {
                        report.closed_slow += 1;
                        socket.close_now(crate::ws::CloseCode::POLICY, "slow consumer");
                    }
                }
            }
        }
        self.matched = matched;
        report
    }
}

/// The subscription operations a session may perform for its own socket.
pub struct Subscriptions<'a> {
    pub(crate) table: &'a RefCell<BindingTable>,
    pub(crate) conn: &'a Rc<RefCell<Conn>>,
    /// The shard clock (seconds) when the message arrived.
    pub(crate) now: u32,
    /// This gateway instance's id (with the socket's, the id listings show).
    pub(crate) instance: u64,
    /// The log offset of the last event the shard dispatched (`None`: none yet, or no log).
    pub(crate) last_offset: Option<u64>,
}

impl Subscriptions<'_> {
    /// Subscribes this socket; `Ok(false)` if it already was (a duplicate changes nothing).
    pub fn subscribe(
        &mut self,
        separator: Separator,
        pattern: &str,
        label: &str,
        encoder: Rc<dyn FrameEncoder>,
    ) -> Result<bool, BindingError> {
        self.table
            .borrow_mut()
            .subscribe(self.conn, separator, pattern, label, encoder)
    }

    /// Unsubscribes this socket; false if it was not subscribed (a stray changes nothing).
    pub fn unsubscribe(&mut self, separator: Separator, pattern: &str, label: &str) -> bool {
        self.table
            .borrow_mut()
            .unsubscribe(self.conn, separator, pattern, label)
    }

    /// Unsubscribes this socket from everything; returns how many bindings it left.
    pub fn unsubscribe_all(&mut self) -> usize {
        self.table.borrow_mut().unsubscribe_all(self.conn)
    }

    /// `(pattern, label)` of every binding of this socket.
    pub fn list(&self) -> Vec<(String, String)> {
        self.table.borrow().list(&self.conn.borrow())
    }

    /// The log offset of the last event this socket's shard dispatched: a resume replays up to
    /// it; later events reach the socket's bindings live.
    pub fn last_offset(&self) -> Option<u64> {
        self.last_offset
    }

    /// Marks the socket as resuming (it subscribed with `resume_from`): while the log moves, it
    /// is told the head every `position_interval_secs` in a frame `before` + position + `after`.
    pub fn send_positions(&mut self, before: &str, after: &str, epoch: &str) {
        let mut conn = self.conn.borrow_mut();
        let labels = conn.labels.get_or_insert_with(Default::default);
        labels.positions = Some(super::conn::PositionFrames {
            template: (before.to_string(), after.to_string()),
            epoch: epoch.to_string(),
            told: self.last_offset,
            told_at: self.now,
        });
    }

    /// The socket's id as the REST listings show it.
    pub fn socket_id(&self) -> String {
        format!("{:016x}{:016x}", self.instance, self.conn.borrow().id)
    }

    /// Number of bindings of this socket.
    pub fn count(&self) -> usize {
        self.conn.borrow().bindings.len()
    }

    /// Files the socket for the control plane's per-account listing: exactly these accounts,
    /// each with the client bindings shown under it. The dialect calls it after every command
    /// that changes its identity or subscriptions, so the listing follows what the socket is now.
    pub fn set_filed(&mut self, filed: Vec<super::control::Filed>) {
        let mut conn = self.conn.borrow_mut();
        if filed.is_empty() && conn.labels.is_none() {
            return;
        }
        conn.labels.get_or_insert_with(Default::default).filed = filed;
    }

    /// Closes the socket with 4001 `token expired` once `remaining` has passed (`None`: the
    /// credentials never expire). A later call replaces the deadline (a refreshed token).
    pub fn set_expiry(&mut self, remaining: Option<std::time::Duration>) {
        let at = remaining.map_or(0, |left| {
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            self.now
                .saturating_add(secs.min(u64::from(u32::MAX)) as u32)
                .max(1)
        });
        self.conn.borrow_mut().expires_at = at;
    }

    /// Sets what the client calls this socket; `None` leaves the current value (Kazoo: a later
    /// message without `name` does not erase it).
    pub fn set_labels(&mut self, name: Option<String>, metadata: Option<String>) {
        if name.is_none() && metadata.is_none() {
            return;
        }
        let mut conn = self.conn.borrow_mut();
        let labels = conn.labels.get_or_insert_with(Default::default);
        if name.is_some() {
            labels.name = name;
        }
        if metadata.is_some() {
            labels.metadata = metadata;
        }
    }
}

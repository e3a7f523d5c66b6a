//! The node's recent history of the cluster's event log (docs/resume.md): every event with a
//! position, in log order, kept in memory up to `history_memory_mb`, for resumes.
//!
//! The ingest thread appends each event *before* it hands it to the shards, so when a shard has
//! dispatched the event at offset `n`, every event up to `n` is here: a resume that registers
//! its bindings and then replays `(from, n]` from here hands over to live delivery with no gap
//! and no duplicate. An event costs its `Arc<Event>` (the same allocation the shards share) and
//! a slot here; [`History::retained_bytes`] counts its struct, key and payload.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::Event;

/// The longest epoch name, in characters.
const MAX_EPOCH: usize = 24;

#[derive(Default)]
struct Log {
    epoch: String,
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// The first offset from which every event of the log is here: set by the node's first
    /// delivery of this epoch, moved on as the oldest are forgotten. `None` before the node has
    /// read anything of the log.
    covered: Option<u64>,
}

/// What a resume from a position spans: the events after `after` up to `upto` (what the
/// resuming socket's shard has dispatched), with memory having every event from `covered` on.
struct Span {
    after: u64,
    upto: u64,
    covered: u64,
}

impl Log {
    /// The span of a resume from `from` when the shard has dispatched up to `upto` (`None`:
    /// nothing of the log yet); `Ok(None)` when there is nothing to replay.
    fn span(&self, from: &Position, upto: Option<u64>) -> Result<Option<Span>, Unresumable> {
        let (epoch, after) = match from {
            Position::Latest => return Ok(None),
            Position::At { epoch, offset } => (epoch, *offset),
        };
        if *epoch != self.epoch {
            return Err(Unresumable::OtherEpoch);
        }
        let covered = self.covered.ok_or(Unresumable::NotYet)?;
        let upto = match upto {
            Some(upto) => upto,
            // Events read but not dispatched yet on this shard: in a moment they are.
            None if !self.events.is_empty() => return Err(Unresumable::NotYet),
            // Nothing of the log dispatched: the node has everything from `covered` on, and
            // everything before it may have been missed.
            None => match covered.checked_sub(1) {
                Some(before) => before,
                None => return Ok(None),
            },
        };
        Ok(Some(Span {
            after,
            upto,
            covered,
        }))
    }
}

/// The node's recent history; one per node, shared by the ingest thread and the shards.
pub struct History {
    limit: usize,
    log: Mutex<Log>,
}

/// Why a position could not be resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresumable {
    /// Not a position (garbage, or too long).
    Unknown,
    /// From another log (the stream was re-created) or another process.
    OtherEpoch,
    /// Older than what this node keeps.
    TooOld,
    /// More events since then than `resume_max_events`.
    TooMany,
    /// The node has not read the log yet (it just started): ask again shortly.
    NotYet,
}

/// Where a resume's missed events are (History::reach).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// All in this node's memory (or none at all).
    Memory,
    /// Some of those after `after` only in the stream: a catch-up read (ingest::catch_up)
    /// fetches everything up to `until` (what the shard has dispatched), later ones come from
    /// memory.
    Stream { after: u64, until: u64 },
}

/// A parsed position: `<epoch>-<offset>`, or `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Latest,
    At { epoch: String, offset: u64 },
}

impl Position {
    /// Reads a client's position (at most 64 ASCII characters, no spaces).
    pub fn parse(text: &str) -> Option<Position> {
        if text == "latest" {
            return Some(Position::Latest);
        }
        if text.len() > 64 {
            return None;
        }
        let (epoch, offset) = text.rsplit_once('-')?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Position::At {
            epoch: epoch.to_string(),
            offset: offset.parse().ok()?,
        })
    }
}

impl History {
    /// A history of at most `limit_bytes`, for the log `epoch`.
    pub fn new(limit_bytes: usize, epoch: &str) -> Arc<History> {
        Arc::new(History {
            limit: limit_bytes,
            log: Mutex::new(Log {
                epoch: epoch.to_string(),
                ..Log::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log's incarnation.
    pub fn epoch(&self) -> String {
        self.lock().epoch.clone()
    }

    /// A new incarnation of the log (the stream was re-created): what is kept is forgotten.
    pub fn set_epoch(&self, epoch: &str) {
        let mut log = self.lock();
        if log.epoch != epoch {
            log.epoch = epoch.to_string();
            log.events.clear();
            log.bytes = 0;
            log.covered = None;
        }
    }

    /// The position text of `offset` in this log.
    pub fn position(&self, offset: u64) -> String {
        format!("{}-{offset}", self.lock().epoch)
    }

    /// The `"position":"..",` member for an event at `offset` (written once per event).
    pub fn member(&self, offset: u64) -> Bytes {
        Bytes::from(format!("\"position\":\"{}\",", self.position(offset)))
    }

    /// Memory an event holds while kept: its struct, key, other keys, payload and position.
    pub fn retained_bytes(event: &Event) -> usize {
        std::mem::size_of::<Event>()
            + std::mem::size_of::<Arc<Event>>()
            + event.key.capacity()
            + event.also.iter().map(|k| k.capacity() + 24).sum::<usize>()
            + event.body.len()
            + event.position_member().len()
    }

    /// The node has read the log's `offset` (any message, kept or not): the first one read
    /// starts what the history covers.
    pub fn saw(&self, offset: u64) {
        let mut log = self.lock();
        if log.covered.is_none() {
            log.covered = Some(offset);
        }
    }

    /// Keeps `event` (the ingest thread, before the shards see it); the oldest go when the
    /// history is over its bound. Events without a position, or not after the last, are not
    /// kept.
    pub fn push(&self, event: Arc<Event>) {
        let Some(offset) = event.offset() else {
            return;
        };
        let size = History::retained_bytes(&event);
        let mut log = self.lock();
        if log.covered.is_none() {
            log.covered = Some(offset);
        }
        if log
            .events
            .back()
            .and_then(|e| e.offset())
            .is_some_and(|last| offset <= last)
        {
            return;
        }
        log.bytes += size;
        log.events.push_back(event);
        while log.bytes > self.limit {
            let Some(old) = log.events.pop_front() else {
                break;
            };
            log.bytes -= History::retained_bytes(&old);
            if let Some(gone) = old.offset() {
                log.covered = Some(gone + 1);
            }
        }
    }

    /// Events kept and their bytes.
    pub fn size(&self) -> (usize, usize) {
        let log = self.lock();
        (log.events.len(), log.bytes)
    }

    /// Where the events after `from` up to `upto` (what the resuming socket's shard has
    /// dispatched) are: in memory, or partly only in the stream. `upto` is `None` while the
    /// shard has dispatched nothing of this log.
    pub fn reach(
        &self,
        from: &Position,
        upto: Option<u64>,
        max: usize,
    ) -> Result<Reach, Unresumable> {
        let log = self.lock();
        let Some(Span {
            after,
            upto,
            covered,
        }) = log.span(from, upto)?
        else {
            return Ok(Reach::Memory);
        };
        if after >= upto || after + 1 >= covered {
            return Ok(Reach::Memory);
        }
        // Offsets count every message of the log, events of every account among them.
        if upto - after > max as u64 {
            return Err(Unresumable::TooMany);
        }
        // Read back up to what the shard has dispatched, not only up to what memory lacks now:
        // memory may forget more while the read goes on (then only what is dispatched after
        // the read comes from memory).
        Ok(Reach::Stream {
            after,
            until: upto.max(covered - 1),
        })
    }

    /// The offset of the newest event kept.
    pub fn newest(&self) -> Option<u64> {
        self.lock().events.back().and_then(|e| e.offset())
    }

    /// Whether memory has every event after offset `after` up to `upto` (what a shard has
    /// dispatched): a read of the stream that ended at `after` needs nothing more.
    pub fn covers(&self, after: u64, upto: Option<u64>) -> bool {
        upto.is_some_and(|upto| after >= upto)
            || self
                .lock()
                .covered
                .is_some_and(|covered| after + 1 >= covered)
    }

    /// The events after `from` up to `upto` (both offsets), at most `max`: what a resume from
    /// `from` replays when the shard has dispatched everything up to `upto`. `deep` is what a
    /// catch-up read of the stream fetched for [`Reach::Stream`] (`None` otherwise): the
    /// events after `from` up to its `until`, in order.
    pub fn since(
        &self,
        from: &Position,
        upto: Option<u64>,
        max: usize,
        deep: Option<(u64, &[Arc<Event>])>,
    ) -> Result<Vec<Arc<Event>>, Unresumable> {
        let log = self.lock();
        let Some(Span {
            after,
            upto,
            covered,
        }) = log.span(from, upto)?
        else {
            return Ok(Vec::new());
        };
        if after >= upto {
            // Already has everything this shard has dispatched (or a position from the
            // future: nothing to give either way).
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        // What the stream gave, then memory from where it ended.
        let after = match deep {
            Some((until, events)) => {
                // Several reads may overlap (one read serves several resumes): each offset once.
                let mut last = after;
                for event in events {
                    let offset = event.offset().unwrap_or(0);
                    if offset <= last || offset > upto {
                        continue;
                    }
                    if out.len() == max {
                        return Err(Unresumable::TooMany);
                    }
                    out.push(event.clone());
                    last = offset;
                }
                until.max(after)
            }
            None => after,
        };
        // Every event right after `after` must still be here.
        if after >= upto {
            return Ok(out);
        }
        if after + 1 < covered {
            return Err(Unresumable::TooOld);
        }
        let start = log
            .events
            .partition_point(|e| e.offset().unwrap_or(0) <= after);
        for event in log.events.range(start..) {
            let offset = event.offset().unwrap_or(0);
            if offset > upto {
                break;
            }
            if out.len() == max {
                return Err(Unresumable::TooMany);
            }
            out.push(event.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::Separator;

    fn event(history: &History, offset: u64, body: &str) -> Arc<Event> {
        let mut event = Event::new(
            format!("k.{offset}"),
            Separator::Dot,
            Bytes::from(body.to_string()),
        );
        event.position = Some((offset, history.member(offset)));
        Arc::new(event)
    }

    #[test]
    fn positions_parse_strictly() {
        assert_eq!(Position::parse("latest"), Some(Position::Latest));
        assert_eq!(
            Position::parse("ab12-42"),
            Some(Position::At {
                epoch: "ab12".into(),
                offset: 42
            })
        );
        for bad in [
            "",
            "-1",
            "ab-",
            "ab-x1",
            "a b-1",
            "ab-1-",
            &"a".repeat(70),
            "ab-99999999999999999999999",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn replays_exactly_the_range_and_says_when_it_cannot() {
        let history = History::new(1 << 20, "e1");
        for offset in 10..20 {
            history.push(event(&history, offset, "{}"));
        }
        let at = |offset| Position::At {
            epoch: "e1".into(),
            offset,
        };
        let got: Vec<u64> = history
            .since(&at(12), Some(15), 100, None)
            .unwrap()
            .iter()
            .filter_map(|e| e.offset())
            .collect();
        assert_eq!(got, [13, 14, 15]);
        assert_eq!(
            history.since(&at(9), Some(19), 100, None).map(|v| v.len()),
            Ok(10)
        );
        assert_eq!(
            history.since(&at(8), Some(19), 100, None).err(),
            Some(Unresumable::TooOld)
        );
        assert_eq!(
            history.since(&at(10), Some(19), 3, None).err(),
            Some(Unresumable::TooMany)
        );
        assert_eq!(
            history.since(&at(19), Some(19), 3, None).map(|v| v.len()),
            Ok(0)
        );
        let other = Position::At {
            epoch: "e0".into(),
            offset: 12,
        };
        assert_eq!(
            history.since(&other, Some(19), 100, None).err(),
            Some(Unresumable::OtherEpoch)
        );
        history.set_epoch("e2");
        assert_eq!(history.size(), (0, 0));
    }

    #[test]
    fn what_memory_lacks_is_asked_of_the_stream_then_merged() {
        let at = |offset| Position::At {
            epoch: "e1".into(),
            offset,
        };
        let history = History::new(1 << 20, "e1");
        // Nothing read yet: the resume must wait.
        assert_eq!(history.reach(&at(3), None, 100), Err(Unresumable::NotYet));
        // The node started at offset 10 (its marker), then kept 11..=15.
        history.saw(10);
        assert_eq!(
            history.reach(&at(3), None, 100),
            Ok(Reach::Stream { after: 3, until: 9 })
        );
        for offset in 11..=15 {
            history.push(event(&history, offset, "{}"));
        }
        assert_eq!(history.reach(&at(9), Some(15), 100), Ok(Reach::Memory));
        assert_eq!(
            history.reach(&at(3), Some(15), 100),
            Ok(Reach::Stream {
                after: 3,
                until: 15
            })
        );
        assert_eq!(
            history.reach(&at(3), Some(15), 5),
            Err(Unresumable::TooMany)
        );
        // What the stream read: 4..=9 (an event of the range may be missing: skipped live too).
        let deep: Vec<Arc<Event>> = [4, 5, 7, 8, 9]
            .into_iter()
            .map(|o| event(&history, o, "{}"))
            .collect();
        let got: Vec<u64> = history
            .since(&at(3), Some(15), 100, Some((9, &deep)))
            .unwrap()
            .iter()
            .filter_map(|e| e.offset())
            .collect();
        assert_eq!(got, [4, 5, 7, 8, 9, 11, 12, 13, 14, 15]);
        // Two reads that overlap (the second begun where memory forgot more): each once.
        let twice: Vec<Arc<Event>> = deep.iter().chain(deep[2..].iter()).cloned().collect();
        assert_eq!(
            history
                .since(&at(3), Some(15), 100, Some((9, &twice)))
                .map(|v| v.len()),
            Ok(10)
        );
        // Without the read, the range is missing.
        assert_eq!(
            history.since(&at(3), Some(15), 100, None).err(),
            Some(Unresumable::TooOld)
        );
        // Forgetting moves what memory covers.
        let small = History::new(History::retained_bytes(&event(&history, 1, "{}")) * 2, "e1");
        for offset in 20..25 {
            small.push(event(&small, offset, "{}"));
        }
        let first = 25 - small.size().0 as u64;
        assert!(first > 21);
        assert_eq!(
            small.reach(&at(20), Some(24), 100),
            Ok(Reach::Stream {
                after: 20,
                until: 24
            })
        );
        assert_eq!(
            small.reach(&at(first - 1), Some(24), 100),
            Ok(Reach::Memory)
        );
    }

    #[test]
    fn the_bound_forgets_the_oldest() {
        let history = History::new(0, "e1");
        let one = History::retained_bytes(&event(&history, 1, "{}"));
        let history = History::new(one * 3, "e1");
        for offset in 1..=5 {
            history.push(event(&history, offset, "{}"));
        }
        assert_eq!(history.size().0, 3);
        // Struct and bookkeeping per event, beside its key and payload.
        let e = event(&history, 6, "");
        let overhead = History::retained_bytes(&e) - e.key.capacity() - e.body.len();
        println!("history: {overhead} bytes per event besides its key and payload");
        assert!(
            overhead <= 200,
            "{overhead} bytes per event besides the payload"
        );
    }
}

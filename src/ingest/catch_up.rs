//! Deep resumes (docs/resume.md): the missed events a node does not have in memory - it started
//! after them, or has forgotten them (`history_memory_mb`) - read back from the stream itself.
//!
//! One reader per node, on its own thread and broker connection, so that a deep read never
//! delays live ingest. Resumes ask it for a range of offsets ([`CatchUp`]) and wait (their
//! subscribe is held, `Reply::Hold`); the reader takes every request waiting, reads the union of
//! their ranges once with a stream consumer from the lowest offset, normalizes each event as
//! live ingest does, and hands all of them the same list: a storm of deep resumes costs one
//! read of the stream, not one consumer per client. A range is at most `resume_max_events`
//! offsets long (a longer one is `recovered: false` before it is asked for).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Connection;
use tokio::sync::mpsc;

use super::brokers::Brokers;
use crate::families::Normalizer;
use crate::fanout::{Event, History};

/// One read gives up after this long (the broker is down, or the range is gone).
const READ_LIMIT: Duration = Duration::from_secs(15);
/// Unacknowledged deliveries of a read (a stream consumer needs acks for credit).
const PREFETCH: u16 = 2_000;
const ACK_EVERY: u64 = 500;
/// How long a read goes on past its range to catch up with the newest event the node has.
const CHASE_LIMIT: Duration = Duration::from_secs(1);
/// The reader's connection is let go after this long without a request.
const IDLE: Duration = Duration::from_secs(60);

/// Stream reads for deep resumes since the process started: done, failed.
pub static READS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The events one read of the stream gave, shared by every resume it served.
pub type Read = Arc<Vec<Arc<Event>>>;

/// What a deep resume asked for: the events after `after` up to `until` (offsets) of the log
/// `epoch`. The resume polls [`CatchUp::outcome`] until the reader has answered.
pub struct CatchUp {
    epoch: String,
    pub after: u64,
    pub until: u64,
    outcome: Mutex<Option<Option<(u64, Read)>>>,
}

impl CatchUp {
    pub fn new(epoch: String, after: u64, until: u64) -> Arc<CatchUp> {
        Arc::new(CatchUp {
            epoch,
            after,
            until,
            outcome: Mutex::new(None),
        })
    }

    /// `None` while the read goes on; then where the read ended (at `until` or past it) and
    /// the events read (a list shared by every resume of the same read: each takes its range
    /// from it), or `Some(None)` if it could not be read.
    pub fn outcome(&self) -> Option<Option<(u64, Read)>> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn answer(&self, events: Option<(u64, Read)>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(events);
    }
}

/// Starts the node's reader on its own thread; requests go to the returned sender.
pub(super) fn start(
    url: String,
    stream: String,
    history: Arc<History>,
) -> std::io::Result<mpsc::UnboundedSender<Arc<CatchUp>>> {
    let (sender, requests) = mpsc::unbounded_channel();
    // Built here, so that a runtime that cannot start fails the node's start.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("horizon-catch-up".into())
        .spawn(move || runtime.block_on(run(url, stream, history, requests)))?;
    Ok(sender)
}

async fn run(
    url: String,
    stream: String,
    history: Arc<History>,
    mut requests: mpsc::UnboundedReceiver<Arc<CatchUp>>,
) {
    let mut brokers = Brokers::new(&url);
    let mut connection: Option<Connection> = None;
    let mut normalizer = Normalizer::default();
    loop {
        let first = match tokio::time::timeout(IDLE, requests.recv()).await {
            Ok(Some(first)) => first,
            Ok(None) => return,
            Err(_) => {
                if let Some(idle) = connection.take() {
                    let _ = idle.close(200, "idle".into()).await;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        let epoch = history.epoch();
        // A request of an older log cannot be served: its offsets name other events.
        batch.retain(|request| {
            let current = request.epoch == epoch;
            if !current {
                request.answer(None);
            }
            current
        });
        let (Some(after), Some(until)) = (
            batch.iter().map(|r| r.after).min(),
            batch.iter().map(|r| r.until).max(),
        ) else {
            continue;
        };
        let began = Instant::now();
        let read = tokio::time::timeout(
            READ_LIMIT,
            read(
                &mut brokers,
                &mut connection,
                &stream,
                (after, until),
                &history,
                &mut normalizer,
            ),
        )
        .await;
        let read = match read {
            Ok(Ok(read)) if history.epoch() == epoch => Ok(read),
            Ok(Ok(_)) => Err("the stream was re-created meanwhile".to_string()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("not done in {} s", READ_LIMIT.as_secs())),
        };
        match read {
            Ok((first, ended, events)) => {
                READS[0].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "resume: read offsets {}..={until} of {stream} for {} resumes ({} events, {} ms)",
                    after + 1,
                    batch.len(),
                    events.len(),
                    began.elapsed().as_millis()
                );
                let events = Arc::new(events);
                for request in batch {
                    // The stream's retention may have removed the start of a range.
                    let whole = first.is_some_and(|first| first <= request.after + 1);
                    request.answer(whole.then(|| (ended, events.clone())));
                }
            }
            Err(why) => {
                READS[1].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "resume: cannot read {stream} back from offset {} ({why}); {} resumes are not recovered",
                    after + 1,
                    batch.len()
                );
                if let Some(lost) = connection.take() {
                    let _ = lost.close(200, "failed".into()).await;
                }
                brokers.lost();
                for request in batch {
                    request.answer(None);
                }
            }
        }
    }
}

/// Reads the stream's events after `after` up to `until`, normalized as live ingest does them,
/// and on up to the newest event the node has (for a second at most): memory forgets the
/// oldest while the read goes on, so the read ends where memory surely has the rest. Also
/// returns the first offset the broker delivered (past `after + 1`, retention removed the start
/// of the range) and the last one read.
async fn read(
    brokers: &mut Brokers,
    connection: &mut Option<Connection>,
    stream: &str,
    (after, until): (u64, u64),
    history: &History,
    normalizer: &mut Normalizer,
) -> Result<(Option<u64>, u64, Vec<Arc<Event>>), String> {
    if !connection.as_ref().is_some_and(|c| c.status().connected()) {
        *connection = Some(brokers.connect().await?);
    }
    let Some(open) = connection.as_ref() else {
        return Err("no connection".into());
    };
    let fail = |e: lapin::Error| e.to_string();
    let channel = open.create_channel().await.map_err(fail)?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(fail)?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(i64::try_from(after + 1).unwrap_or(i64::MAX)),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            format!("horizon-catch-up-{}", crate::ids::random_hex(6)).into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(fail)?;
    let mut events = Vec::new();
    let mut first = None;
    let chased = Instant::now();
    let mut unacked = 0u64;
    while let Some(delivery) = consumer.next().await {
        let mut delivery = delivery.map_err(fail)?;
        unacked += 1;
        let offset = super::amqp::stream_offset(&delivery);
        let done = offset.is_none_or(|offset| {
            offset >= until
                && (history.newest().is_none_or(|newest| offset >= newest)
                    || chased.elapsed() >= CHASE_LIMIT)
        });
        if unacked >= ACK_EVERY || done {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(fail)?;
            unacked = 0;
        }
        let Some(offset) = offset else {
            return Err("a delivery without its offset".into());
        };
        first.get_or_insert(offset);
        if offset > after {
            let exchange = delivery.exchange.to_string();
            let routing_key = delivery.routing_key.to_string();
            // What does not normalize was skipped live too.
            if let Ok(normalized) =
                normalizer.normalize(&exchange, &routing_key, &mut delivery.data)
            {
                events.push(Arc::new(Event {
                    key: normalized.key,
                    also: normalized.also,
                    separator: normalized.separator,
                    body: normalized.tail,
                    received_at: std::time::Instant::now(),
                    position: Some((offset, history.member(offset))),
                }));
            }
        }
        if done {
            let _ = channel.close(200, "read".into()).await;
            return Ok((first, offset, events));
        }
    }
    Err("the broker ended the read".into())
}

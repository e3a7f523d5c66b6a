//! One bounded single-producer, single-consumer ring with coalesced wakeups (see the module docs).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

struct Shared<T> {
    queue: ArrayQueue<T>,
    closed: AtomicBool,
    /// The consumer found the ring empty and is (about to be) asleep; the next push must wake it.
    consumer_parked: AtomicBool,
    consumer_waker: AtomicWaker,
    /// The producer found the ring full and waits; the next pop must wake it.
    producer_parked: AtomicBool,
    producer_waker: AtomicWaker,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    pushed: AtomicU64,
    consumer_wakeups: AtomicU64,
    producer_waits: AtomicU64,
}

/// Counters of one ring, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub pushed: u64,
    /// How many times the producer had to wake the consumer (one per burst, not per event).
    pub consumer_wakeups: u64,
    /// How many times the producer found the ring full and had to wait.
    pub producer_waits: u64,
    /// Items in the ring right now.
    pub depth: usize,
}

/// The ring was closed; the item that could not be pushed comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

/// What a receive produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many items were appended to the caller's vector.
    Items(usize),
    /// The ring is closed and empty: nothing more will come.
    Closed,
}

/// Creates a ring holding at most `capacity` items.
pub fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity.max(1)),
        closed: AtomicBool::new(false),
        consumer_parked: AtomicBool::new(false),
        consumer_waker: AtomicWaker::new(),
        producer_parked: AtomicBool::new(false),
        producer_waker: AtomicWaker::new(),
        stats: Stats::default(),
    });
    (
        Producer {
            shared: shared.clone(),
        },
        Consumer { shared },
    )
}

impl<T> Shared<T> {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.consumer_waker.wake();
        self.producer_waker.wake();
    }

    fn stats(&self) -> RingStats {
        RingStats {
            pushed: self.stats.pushed.load(Ordering::Relaxed),
            consumer_wakeups: self.stats.consumer_wakeups.load(Ordering::Relaxed),
            producer_waits: self.stats.producer_waits.load(Ordering::Relaxed),
            depth: self.queue.len(),
        }
    }
}

/// The ingest side of a shard's ring.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Producer<T> {
    /// Pushes `item`, waiting while the ring is full. Fails only when the ring is closed.
    pub async fn push(&self, item: T) -> Result<(), Closed<T>> {
        let mut item = Some(item);
        let mut counted_wait = false;
        poll_fn(|cx| {
            let Some(value) = item.take() else {
                return Poll::Ready(Ok(()));
            };
            match self.poll_push(cx, value) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(PushError::Closed(value)) => Poll::Ready(Err(Closed(value))),
                Err(PushError::Full(value)) => {
                    if !counted_wait {
                        counted_wait = true;
                        self.shared
                            .stats
                            .producer_waits
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    item = Some(value);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Pushes without waiting: gives the item back if the ring is full or closed.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(item);
        }
        self.shared.queue.push(item)?;
        self.after_push();
        Ok(())
    }

    fn poll_push(&self, cx: &mut Context<'_>, item: T) -> Result<(), PushError<T>> {
        let shared = &*self.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(PushError::Closed(item));
        }
        let item = match shared.queue.push(item) {
            Ok(()) => {
                self.after_push();
                return Ok(());
            }
            Err(item) => item,
        };
        // Full: register, announce, then try once more, so that a pop between the first try and
        // the announcement cannot leave us asleep with room in the ring.
        shared.producer_waker.register(cx.waker());
        shared.producer_parked.store(true, Ordering::SeqCst);
        if shared.closed.load(Ordering::SeqCst) {
            return Err(PushError::Closed(item));
        }
        match shared.queue.push(item) {
            Ok(()) => {
                shared.producer_parked.store(false, Ordering::SeqCst);
                self.after_push();
                Ok(())
            }
            Err(item) => Err(PushError::Full(item)),
        }
    }

    fn after_push(&self) {
        let shared = &*self.shared;
        shared.stats.pushed.fetch_add(1, Ordering::Relaxed);
        // Coalescing: only a consumer that said it is going to sleep is woken.
        if shared.consumer_parked.swap(false, Ordering::SeqCst) {
            shared
                .stats
                .consumer_wakeups
                .fetch_add(1, Ordering::Relaxed);
            shared.consumer_waker.wake();
        }
    }

    /// Closes the ring: the consumer drains what is left, then sees [`Recv::Closed`].
    pub fn close(&self) {
        self.shared.close();
    }

    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

enum PushError<T> {
    Full(T),
    Closed(T),
}

/// The shard side of its ring.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Consumer<T> {
    /// Waits for items and moves up to `max` of them into `out`, in order. A batch, not one item:
    /// the shard handles a whole burst per wakeup.
    pub async fn recv_batch(&self, out: &mut Vec<T>, max: usize) -> Recv {
        poll_fn(|cx| self.poll_recv_batch(cx, out, max)).await
    }

    /// Moves up to `max` ready items into `out` without waiting.
    pub fn try_recv_batch(&self, out: &mut Vec<T>, max: usize) -> usize {
        let shared = &*self.shared;
        let mut n = 0;
        while n < max {
            match shared.queue.pop() {
                Some(item) => {
                    out.push(item);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 && shared.producer_parked.swap(false, Ordering::SeqCst) {
            shared.producer_waker.wake();
        }
        n
    }

    pub fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<T>,
        max: usize,
    ) -> Poll<Recv> {
        let n = self.try_recv_batch(out, max);
        if n > 0 {
            return Poll::Ready(Recv::Items(n));
        }
        let shared = &*self.shared;
        // Empty: register, announce, and look again so that a push racing with the announcement
        // is never missed.
        shared.consumer_waker.register(cx.waker());
        shared.consumer_parked.store(true, Ordering::SeqCst);
        let n = self.try_recv_batch(out, max);
        if n > 0 {
            shared.consumer_parked.store(false, Ordering::SeqCst);
            return Poll::Ready(Recv::Items(n));
        }
        if shared.closed.load(Ordering::SeqCst) {
            // Closed, but a push may have landed just before the flag: drain it first.
            let n = self.try_recv_batch(out, max);
            return Poll::Ready(if n > 0 { Recv::Items(n) } else { Recv::Closed });
        }
        Poll::Pending
    }

    /// Closes the ring from the shard side (the shard is stopping): a waiting producer gets its
    /// item back instead of waiting forever.
    pub fn close(&self) {
        self.shared.close();
    }

    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }

    /// A handle that reads this ring's counters from anywhere, without owning either end.
    pub fn stats_handle(&self) -> StatsHandle
    where
        T: Send + 'static,
    {
        StatsHandle {
            read: Arc::new(Reader(self.shared.clone())),
        }
    }
}

/// Reads one ring's counters (see [`Consumer::stats_handle`]).
#[derive(Clone)]
pub struct StatsHandle {
    read: Arc<dyn ReadStats + Send + Sync>,
}

impl StatsHandle {
    pub fn stats(&self) -> RingStats {
        self.read.stats()
    }
}

trait ReadStats {
    fn stats(&self) -> RingStats;
}

struct Reader<T>(Arc<Shared<T>>);

impl<T> ReadStats for Reader<T> {
    fn stats(&self) -> RingStats {
        self.0.stats()
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn every_item_arrives_once_and_in_order_through_a_tiny_ring() {
        const N: u64 = 200_000;
        let (producer, consumer) = ring::<u64>(64);
        let sender = std::thread::spawn(move || {
            runtime().block_on(async {
                for i in 0..N {
                    producer.push(i).await.unwrap();
                }
                producer.stats()
            })
        });
        let received = runtime().block_on(async {
            let mut all = Vec::new();
            let mut batch = Vec::new();
            loop {
                batch.clear();
                match consumer.recv_batch(&mut batch, 256).await {
                    Recv::Items(n) => {
                        assert_eq!(n, batch.len());
                        all.extend_from_slice(&batch);
                    }
                    Recv::Closed => break all,
                }
            }
        });
        let stats = sender.join().unwrap();
        assert_eq!(received.len() as u64, N, "nothing lost, nothing duplicated");
        assert!(
            received.iter().enumerate().all(|(i, v)| *v == i as u64),
            "in order"
        );
        assert_eq!(stats.pushed, N);
        assert!(
            stats.producer_waits > 0,
            "a 64-slot ring must have made the producer wait"
        );
    }

    #[test]
    fn a_burst_into_a_sleeping_consumer_costs_one_wakeup() {
        let (producer, consumer) = ring::<u32>(4096);
        let rt = runtime();
        let mut out = Vec::new();
        let first = rt.block_on(async {
            // The consumer goes to sleep on an empty ring...
            let waiting = consumer.recv_batch(&mut out, 4096);
            let burst = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                for i in 0..1000 {
                    producer.push(i).await.unwrap();
                }
            };
            let (got, ()) = tokio::join!(waiting, burst);
            got
        });
        let Recv::Items(first) = first else {
            panic!("the consumer must wake with items")
        };
        let rest = consumer.try_recv_batch(&mut out, 4096);
        assert_eq!(first + rest, 1000);
        assert_eq!(out, (0..1000).collect::<Vec<u32>>());
        // ...and the whole burst woke it exactly once.
        assert_eq!(producer.stats().consumer_wakeups, 1);
    }

    #[test]
    fn closing_releases_a_waiting_producer_with_its_item() {
        let (producer, consumer) = ring::<String>(1);
        let rt = runtime();
        rt.block_on(async {
            producer.push("first".to_string()).await.unwrap();
            let blocked = producer.push("second".to_string());
            let closer = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                consumer.close();
            };
            let (result, ()) = tokio::join!(blocked, closer);
            assert_eq!(result, Err(Closed("second".to_string())));
        });
        assert_eq!(
            producer.try_push("third".to_string()),
            Err("third".to_string())
        );
    }

    #[test]
    fn a_dropped_producer_lets_the_consumer_drain_then_end() {
        let (producer, consumer) = ring::<u8>(8);
        producer.try_push(1).unwrap();
        producer.try_push(2).unwrap();
        drop(producer);
        let rt = runtime();
        let mut out = Vec::new();
        rt.block_on(async {
            assert_eq!(consumer.recv_batch(&mut out, 1).await, Recv::Items(1));
            assert_eq!(consumer.recv_batch(&mut out, 8).await, Recv::Items(1));
            assert_eq!(consumer.recv_batch(&mut out, 8).await, Recv::Closed);
        });
        assert_eq!(out, vec![1, 2]);
    }
}

//! The outbound queue of one socket: frames waiting to be written, bounded in bytes.
//!
//! Frames are `Bytes` handles: an event frame is encoded once per binding and the same buffer is
//! queued on every socket that receives it, so queueing is a reference-count increment, never a
//! copy. An idle socket's queue is an empty `VecDeque`, which owns no heap memory.
//!
//! Backpressure: event frames count against the byte bound. When a socket cannot take more (it
//! stops reading, or reads slower than events arrive), the [`SlowConsumerPolicy`] decides: `Drop`
//! skips the event for this socket only and counts it, so that once the queue drains the dialect
//! can tell the client how many it missed ([`Outbound::take_lag`]); `Close` asks for the socket to
//! be closed with 1008. Either way the socket never slows the others and never grows past its bound.
//! Control frames (replies, pongs, close) are never dropped: they are small and bounded by the
//! client's own rate limit.
//!
//! A wss socket's queue holds its TLS layer too, and the frames stay shared plaintext until they
//! are about to be written: [`Outbound::seal`] encrypts the next batch (up to [`SEAL_BYTES`]) into
//! one buffer of the socket's own, just before a write. A burst for many slow sockets then costs
//! the same shared frames as on plain sockets, not a private copy per socket; only what is being
//! written, and a record the kernel took part of, is ciphertext. The queue's front `sealed`
//! frames are what goes on the wire as it is (ciphertext, or raw bytes such as TLS handshake
//! records); on a plain socket every frame is.

use crate::config::SlowConsumerPolicy;
use std::collections::VecDeque;
use std::io;

use bytes::Bytes;

use super::tls::TlsLayer;

/// Plaintext encrypted into one buffer per write of a wss socket, at most (one frame more, if a
/// single frame is larger).
pub(crate) const SEAL_BYTES: usize = 64 * 1024;
/// Frames encrypted per write, at most.
const SEAL_FRAMES: usize = 64;

thread_local! {
    /// Where a wss socket's batch of frames is gathered to be encrypted (one per shard thread).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What happened to an event frame offered to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Skipped under [`SlowConsumerPolicy::Drop`].
    Dropped,
    /// Not queued; under [`SlowConsumerPolicy::Close`] the socket must now be closed.
    MustClose,
}

#[derive(Debug)]
pub struct Outbound {
    frames: VecDeque<Bytes>,
    /// Unwritten bytes in `frames` (the written prefix of the front frame excluded).
    queued: usize,
    /// Bytes of the front frame already written by a partial write.
    written_of_front: u32,
    /// Frames at the front that go on the wire as they are (all of them on a plain socket).
    sealed: u32,
    limit: usize,
    policy: SlowConsumerPolicy,
    /// Events skipped since the last lag notice.
    lagged: u64,
    /// A wss socket's TLS record layer: frames are encrypted by [`Outbound::seal`].
    pub(crate) tls: Option<Box<TlsLayer>>,
}

impl Outbound {
    /// `limit`: the most event bytes that may wait for this socket.
    pub fn new(limit: usize, policy: SlowConsumerPolicy) -> Outbound {
        Outbound {
            frames: VecDeque::new(),
            queued: 0,
            written_of_front: 0,
            sealed: 0,
            limit,
            policy,
            lagged: 0,
            tls: None,
        }
    }

    /// Offers an event frame. A frame is taken if it fits under the bound, or if the queue is
    /// empty (an event larger than the bound is still delivered to a socket that keeps up).
    pub fn push_event(&mut self, frame: Bytes) -> Enqueued {
        if self.fits(frame.len()) {
            self.push(frame);
            return Enqueued::Queued;
        }
        match self.policy {
            SlowConsumerPolicy::Drop => {
                self.lagged += 1;
                Enqueued::Dropped
            }
            SlowConsumerPolicy::Close => Enqueued::MustClose,
        }
    }

    /// Whether an event frame of `len` bytes would be taken now.
    pub fn fits(&self, len: usize) -> bool {
        self.frames.is_empty() || self.queued + len <= self.limit
    }

    /// Queues a control frame or reply; these are never dropped.
    pub fn push_control(&mut self, frame: Bytes) {
        self.push(frame);
    }

    fn push(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.queued += frame.len();
        self.frames.push_back(frame);
        if self.tls.is_none() {
            self.sealed += 1;
        }
    }

    /// Queues bytes that go on the wire as they are (TLS handshake records, an alert, an answer
    /// to a client that does not speak TLS): after what is already sealed, ahead of frames still
    /// to be encrypted (a record rustls made has its sequence number already).
    pub(crate) fn push_wire(&mut self, wire: Bytes) {
        if wire.is_empty() {
            return;
        }
        self.queued += wire.len();
        self.frames.insert(self.sealed as usize, wire);
        self.sealed += 1;
    }

    /// On a wss socket with nothing sealed left to write: encrypts the next frames (up to
    /// [`SEAL_BYTES`] of plaintext) into one buffer, which takes their place. An error (the TLS
    /// connection cannot encrypt) ends the socket.
    pub(crate) fn seal(&mut self) -> io::Result<()> {
        if self.tls.is_none() || self.sealed > 0 || self.frames.is_empty() {
            return Ok(());
        }
        self.seal_batch(SEAL_BYTES)
    }

    /// Encrypts the frames after the sealed ones (up to `max_plain` bytes of them, and at least
    /// one) into one buffer, which takes their place.
    fn seal_batch(&mut self, max_plain: usize) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        let start = self.sealed as usize;
        let mut plain = 0;
        let mut count = 0;
        for frame in self.frames.iter().skip(start).take(SEAL_FRAMES) {
            if count > 0 && plain + frame.len() > max_plain {
                break;
            }
            plain += frame.len();
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        // The batch's frames as one plaintext, encrypted in records of up to 16 KiB: a record
        // may carry many frames (TLS is a byte stream), and each record costs its header, tag
        // and AEAD set-up.
        let records = plain.div_ceil(16 * 1024).max(1);
        let mut wire = Vec::with_capacity(plain + records * super::tls::RECORD_OVERHEAD);
        if count == 1 {
            tls.encrypt(&self.frames[start], &mut wire)
                .map_err(io::Error::other)?;
        } else {
            let frames = self.frames.range(start..start + count);
            GATHER
                .with_borrow_mut(|gather| {
                    gather.clear();
                    for frame in frames {
                        gather.extend_from_slice(frame);
                    }
                    tls.encrypt(gather, &mut wire)
                })
                .map_err(io::Error::other)?;
        }
        self.frames.drain(start..start + count);
        self.queued = self.queued - plain + wire.len();
        self.frames.insert(start, Bytes::from(wire));
        self.sealed += 1;
        Ok(())
    }

    /// Seals everything queued (it is written first), then queues the TLS close_notify: a wss
    /// socket's last record.
    pub(crate) fn close_notify(&mut self) {
        if self.tls.is_none() {
            return;
        }
        while (self.sealed as usize) < self.frames.len() {
            if self.seal_batch(usize::MAX).is_err() {
                return;
            }
        }
        if let Some(notify) = self.tls.as_mut().and_then(|tls| tls.close_notify()) {
            self.push_wire(notify);
        }
    }

    /// Frames ready for the wire at the front (a write sends only these).
    pub fn sealed_frames(&self) -> usize {
        self.sealed as usize
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frees the queue's buffer if nothing waits: an idle socket then holds no heap memory here.
    /// Not for the delivery path, where a busy socket would reallocate for every batch.
    pub fn release_if_empty(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Drops everything queued (the connection has ended).
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.queued = 0;
        self.written_of_front = 0;
        self.sealed = 0;
    }

    /// Drops everything queued except a frame already partly written (the client is to be sent
    /// something else next, and a frame cut short would garble it).
    pub fn clear_unstarted(&mut self) {
        if self.written_of_front == 0 {
            return self.clear();
        }
        self.frames.truncate(1);
        self.sealed = 1;
        self.queued =
            self.frames.front().map_or(0, |front| front.len()) - self.written_of_front as usize;
    }

    /// Unwritten bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// The most event bytes that may wait.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Frames waiting (a partially written one included).
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// The unwritten sealed bytes, in order, as up to `max` slices: what a vectored write sends.
    pub fn chunks(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        let skip = self.written_of_front as usize;
        self.frames
            .iter()
            .take(max.min(self.sealed as usize))
            .enumerate()
            .map(move |(i, frame)| if i == 0 { &frame[skip..] } else { &frame[..] })
    }

    /// The first `max` frames (handles, not copies): what keeps a send's data alive until the
    /// kernel is done with it.
    pub fn frames(&self, max: usize) -> impl Iterator<Item = Bytes> + '_ {
        self.frames
            .iter()
            .take(max.min(self.sealed as usize))
            .cloned()
    }

    /// Records that the first `written` unwritten bytes went out; frees the frames fully written.
    pub fn advance(&mut self, mut written: usize) {
        written = written.min(self.queued);
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.written_of_front as usize;
            if written < left {
                self.written_of_front += written as u32;
                return;
            }
            written -= left;
            self.written_of_front = 0;
            self.frames.pop_front();
            self.sealed = self.sealed.saturating_sub(1);
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // A burst grew the ring buffer; give it back so an idle socket holds nothing.
            self.frames = VecDeque::new();
        }
    }

    /// Once the queue has drained after events were skipped: how many, for the dialect's lag
    /// notice. Resets the count.
    pub fn take_lag(&mut self) -> Option<u64> {
        if self.frames.is_empty() && self.lagged > 0 {
            Some(std::mem::take(&mut self.lagged))
        } else {
            None
        }
    }

    /// Events skipped since the last lag notice.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    fn unwritten(queue: &Outbound) -> Vec<u8> {
        queue.chunks(usize::MAX).flatten().copied().collect()
    }

    #[test]
    fn events_past_the_bound_are_dropped_counted_and_reported_once_drained() {
        let mut q = Outbound::new(100, SlowConsumerPolicy::Drop);
        assert_eq!(q.push_event(frame(60, 1)), Enqueued::Queued);
        assert_eq!(q.push_event(frame(40, 2)), Enqueued::Queued);
        assert_eq!(q.push_event(frame(1, 3)), Enqueued::Dropped);
        assert_eq!(q.push_event(frame(50, 4)), Enqueued::Dropped);
        assert_eq!(q.queued_bytes(), 100, "never past the bound");
        assert_eq!(q.take_lag(), None, "not before the queue has drained");
        q.push_control(frame(5, 9));
        assert_eq!(q.queued_bytes(), 105, "control frames are never dropped");
        q.advance(105);
        assert!(q.is_empty());
        assert_eq!(q.take_lag(), Some(2));
        assert_eq!(q.take_lag(), None);
    }

    #[test]
    fn the_close_policy_asks_for_the_socket_to_be_closed() {
        let mut q = Outbound::new(10, SlowConsumerPolicy::Close);
        assert_eq!(q.push_event(frame(10, 1)), Enqueued::Queued);
        assert_eq!(q.push_event(frame(1, 1)), Enqueued::MustClose);
        assert_eq!(q.queued_frames(), 1);
    }

    #[test]
    fn an_event_larger_than_the_bound_reaches_a_socket_that_keeps_up() {
        let mut q = Outbound::new(10, SlowConsumerPolicy::Drop);
        assert_eq!(q.push_event(frame(1000, 1)), Enqueued::Queued);
        assert_eq!(q.push_event(frame(1, 1)), Enqueued::Dropped);
    }

    #[test]
    fn partial_writes_resume_exactly_where_they_stopped() {
        let mut q = Outbound::new(1 << 20, SlowConsumerPolicy::Drop);
        let mut expected = Vec::new();
        for i in 0..10u8 {
            let f = frame(10 + i as usize, i);
            expected.extend_from_slice(&f);
            q.push_event(f);
        }
        let mut sent = Vec::new();
        for step in [1usize, 7, 13, 2, 50, 3, 100] {
            let chunk: Vec<u8> = unwritten(&q).into_iter().take(step).collect();
            sent.extend_from_slice(&chunk);
            q.advance(chunk.len());
            assert_eq!(q.queued_bytes(), expected.len() - sent.len());
        }
        assert_eq!(sent, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn one_encoding_is_shared_not_copied() {
        let shared = frame(4096, 7);
        let mut sockets: Vec<Outbound> = (0..100)
            .map(|_| Outbound::new(1 << 20, SlowConsumerPolicy::Drop))
            .collect();
        for q in &mut sockets {
            q.push_event(shared.clone());
        }
        let first = sockets[0].chunks(1).next().unwrap().as_ptr();
        assert!(sockets
            .iter()
            .all(|q| q.chunks(1).next().unwrap().as_ptr() == first));
    }

    #[test]
    fn a_drained_queue_gives_its_memory_back() {
        let mut q = Outbound::new(1 << 20, SlowConsumerPolicy::Drop);
        for _ in 0..1000 {
            q.push_event(frame(10, 0));
        }
        q.advance(10_000);
        assert!(q.is_empty());
        assert_eq!(q.frames.capacity(), 0);
        assert_eq!(q.chunks(8).count(), 0);
    }
}

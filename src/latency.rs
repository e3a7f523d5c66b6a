//! Latency histograms with fixed buckets, for the metrics endpoint: a shard-local one (plain
//! integers, the shard is single-threaded) and an atomic one (the ingest thread writes, the API
//! thread reads). Fixed buckets keep the Prometheus output small and mergeable across shards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds; one more bucket (`+Inf`) follows.
pub const BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 1_000_000,
];

const SLOTS: usize = BUCKETS_US.len() + 1;

fn slot(us: u64) -> usize {
    BUCKETS_US
        .iter()
        .position(|bound| us <= *bound)
        .unwrap_or(BUCKETS_US.len())
}

/// Counts per bucket (not cumulative) and the sum of all samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; SLOTS],
    pub sum_us: u64,
}

impl Histogram {
    pub fn record(&mut self, sample: Duration) {
        let us = sample.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[slot(us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A histogram several threads may read while one writes.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    counts: [AtomicU64; SLOTS],
    sum_us: AtomicU64,
}

impl AtomicHistogram {
    pub fn record(&self, sample: Duration) {
        let us = sample.as_micros().min(u128::from(u64::MAX)) as u64;
        self.counts[slot(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        let mut out = Histogram::default();
        for (slot, count) in out.counts.iter_mut().zip(&self.counts) {
            *slot = count.load(Ordering::Relaxed);
        }
        out.sum_us = self.sum_us.load(Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_bucket() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(5));
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[SLOTS - 1], 1);
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_us, 5_000_111);
        let a = AtomicHistogram::default();
        a.record(Duration::from_micros(300));
        let mut merged = a.snapshot();
        merged.merge(&h);
        assert_eq!(merged.count(), 5);
        assert_eq!(merged.counts[3], 1);
    }
}

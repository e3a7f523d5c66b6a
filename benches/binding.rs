//! Binding automaton benchmarks: match (hit, rotating hits, miss), insert, remove, and bytes per
//! binding, at 1k, 100k and 1M bindings shaped like a Kazoo node's internal patterns.
//!
//! Run: `cargo bench --bench binding` (figures recorded in BENCHMARKS.md).
//! Quick look at one size: `cargo bench --bench binding -- 1000000`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use horizon::binding::{BindingAutomaton, Separator, SubscriptionId};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::live_bytes;

/// Deterministic 32-hex-digit account ids, like Kazoo's.
fn account(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut y = x.rotate_left(29).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    y ^= y >> 27;
    format!("{x:016x}{y:016x}")
}

/// Kazoo's encoded account database name: `account%2Fab%2Fcd%2Fef...`.
fn account_db(id: &str) -> String {
    format!("account%2F{}%2F{}%2F{}", &id[0..2], &id[2..4], &id[4..])
}

/// Ten internal patterns per account, the shapes a node holds when its sockets follow calls,
/// documents, conferences and faxes: most end in `*`, one in a hundred accounts uses `#`.
fn account_patterns(i: usize) -> [String; 10] {
    let a = account(i);
    let db = account_db(&a);
    let catch_all = if i % 100 == 0 { "#" } else { "*.*" };
    [
        format!("call.{a}.CHANNEL_CREATE.*"),
        format!("call.{a}.CHANNEL_ANSWER.*"),
        format!("call.{a}.CHANNEL_DESTROY.*"),
        format!("call.{a}.{catch_all}"),
        format!("call.{a}.CHANNEL_BRIDGE.{i:08x}-call%40sbc1"),
        format!("doc_edited.{db}.user.*"),
        format!("doc_created.{db}.device.*"),
        format!("doc_deleted.{db}.*.*"),
        format!("conference.event.{a}.conf{i}.*"),
        format!("fax.status.{a}.*"),
    ]
}

/// A superduper-admin style binding or two, which every call event has to walk past.
const GLOBAL_PATTERNS: &[&str] = &["call.*.CHANNEL_CREATE.*", "doc_edited.#"];

fn build(bindings: usize) -> BindingAutomaton {
    let mut automaton = BindingAutomaton::new(Separator::Dot);
    let mut next = 0u32;
    for pattern in GLOBAL_PATTERNS {
        automaton.insert(pattern, SubscriptionId(next)).unwrap();
        next += 1;
    }
    'outer: for i in 0.. {
        for pattern in account_patterns(i) {
            if automaton.len() >= bindings {
                break 'outer;
            }
            automaton.insert(&pattern, SubscriptionId(next)).unwrap();
            next += 1;
        }
    }
    automaton
}

fn accounts_in(bindings: usize) -> usize {
    bindings / 10
}

fn call_key(i: usize, event: &str) -> String {
    format!("call.{}.{event}.{i:08x}-abc%40host", account(i))
}

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn memory(c: &mut Criterion) {
    let _ = c;
    for &n in &SIZES {
        let before = live_bytes();
        let automaton = build(n);
        let after = live_bytes();
        println!(
            "memory/{n}: {:.1} bytes per binding ({} nodes, {} interned segments, {:.1} MiB)",
            (after - before) as f64 / n as f64,
            automaton.node_count(),
            automaton.segment_count(),
            (after - before) as f64 / (1 << 20) as f64,
        );
        drop(automaton);
    }
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("match");
    for &n in &SIZES {
        let mut automaton = build(n);
        let accounts = accounts_in(n);
        let mut out = Vec::with_capacity(64);

        // One account's burst: the same key shape over and over (caches warm).
        let hot = call_key(accounts / 2, "CHANNEL_CREATE");
        group.bench_with_input(BenchmarkId::new("hit_hot", n), &hot, |b, key| {
            b.iter(|| {
                out.clear();
                black_box(automaton.matches(black_box(key), &mut out))
            })
        });

        // Events spread over 4096 accounts in turn, as a busy node sees them (caches cold-ish).
        let events = [
            "CHANNEL_CREATE",
            "CHANNEL_ANSWER",
            "CHANNEL_DESTROY",
            "CHANNEL_HOLD",
        ];
        let keys: Vec<String> = (0..4096)
            .map(|k| call_key((k * 7919) % accounts, events[k % events.len()]))
            .collect();
        let mut k = 0usize;
        group.bench_function(BenchmarkId::new("hit_rotating", n), |b| {
            b.iter(|| {
                out.clear();
                k = (k + 1) & 4095;
                black_box(automaton.matches(&keys[k], &mut out))
            })
        });

        // An account nobody on this shard follows.
        let miss = call_key(accounts + 12_345, "CHANNEL_CREATE");
        group.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, key| {
            b.iter(|| {
                out.clear();
                black_box(automaton.matches(black_box(key), &mut out))
            })
        });
    }
    group.finish();
}

/// Fresh patterns for accounts the automaton does not hold yet (the expensive insert: new nodes,
/// new edges, new interned text).
fn fresh_patterns(base: usize, count: usize) -> Vec<String> {
    (0..count)
        .map(|j| format!("call.{}.CHANNEL_CREATE.*", account(base + j)))
        .collect()
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    for &n in &SIZES {
        let mut automaton = build(n);
        let base = accounts_in(n) + 1_000_000;
        let fresh = fresh_patterns(base, 10_000);
        let sub = SubscriptionId(u32::MAX - 1);

        group.bench_function(BenchmarkId::new("insert", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let batch = (iters - done).min(fresh.len() as u64) as usize;
                    let start = Instant::now();
                    for pattern in &fresh[..batch] {
                        black_box(automaton.insert(pattern, sub).unwrap());
                    }
                    total += start.elapsed();
                    for pattern in &fresh[..batch] {
                        automaton.remove(pattern, sub);
                    }
                    done += batch as u64;
                }
                total
            })
        });

        group.bench_function(BenchmarkId::new("remove", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0u64;
                while done < iters {
                    let batch = (iters - done).min(fresh.len() as u64) as usize;
                    for pattern in &fresh[..batch] {
                        automaton.insert(pattern, sub).unwrap();
                    }
                    let start = Instant::now();
                    for pattern in &fresh[..batch] {
                        black_box(automaton.remove(pattern, sub));
                    }
                    total += start.elapsed();
                    done += batch as u64;
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = memory, matching, churn
}
criterion_main!(benches);

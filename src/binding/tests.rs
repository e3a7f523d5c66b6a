//! Tests of the automaton: RabbitMQ's edge cases, churn sequences, and property tests against a
//! naive recursive matcher written straight from the specification.

use proptest::prelude::*;

use super::*;

/// The specification, executed literally: exponential in the worst case, obviously correct.
fn reference_matches(pattern: &str, key: &str, sep: Separator) -> bool {
    fn go(pattern: &[&[u8]], key: &[&[u8]]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&b"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
            Some((&b"*", rest)) => !key.is_empty() && go(rest, &key[1..]),
            Some((literal, rest)) => key.first() == Some(literal) && go(rest, &key[1..]),
        }
    }
    let s = sep.byte();
    let pattern: Vec<&[u8]> = pattern.as_bytes().split(|b| *b == s).collect();
    let key: Vec<&[u8]> = if key.is_empty() {
        Vec::new()
    } else {
        key.as_bytes().split(|b| *b == s).collect()
    };
    go(&pattern, &key)
}

fn ids(automaton: &mut BindingAutomaton, key: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let n = automaton.matches(key, &mut out);
    assert_eq!(n, out.len());
    let mut ids: Vec<u32> = out.iter().map(|s| s.0).collect();
    let before = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(before, ids.len(), "{key:?} returned a subscription twice");
    ids
}

/// The binding and key table of RabbitMQ's topic exchange tests, plus Kazoo-shaped keys.
const EDGE_PATTERNS: &[&str] = &[
    "a.b.c",
    "a.*.c",
    "a.#.b",
    "a.b.b.c",
    "#",
    "#.#",
    "#.b",
    "*.*",
    "a.*",
    "*.b.c",
    "a.#",
    "a.#.#",
    "b.b.c",
    "a.b.b",
    "a.b",
    "b.c",
    "*.#",
    "#.*",
    "#.*.#",
    "*.#.*",
    "a.*.#",
    "#.a.*",
    "*",
    "a..b",
    ".",
    "a.",
    ".a",
    "#.#.#.#.x",
    "ab*",
    "#x",
];
const EDGE_KEYS: &[&str] = &[
    "a.b.c",
    "a.x.c",
    "a.b",
    "a.b.b",
    "a.b.b.c",
    "a",
    "b",
    "b.c",
    "b.b.c",
    "",
    ".",
    "a..b",
    "a.",
    ".a",
    "x",
    "a.x.y.z.b",
    "ab*",
    "#x",
    "*",
    "#",
    "a.*",
    "y.y.y.y.y.y.y.y.y.y.x",
];

#[test]
fn edge_cases_agree_with_the_specification() {
    let mut automaton = BindingAutomaton::new(Separator::Dot);
    for (i, pattern) in EDGE_PATTERNS.iter().enumerate() {
        assert!(automaton.insert(pattern, SubscriptionId(i as u32)).unwrap());
    }
    for key in EDGE_KEYS {
        let expected: Vec<u32> = EDGE_PATTERNS
            .iter()
            .enumerate()
            .filter(|(_, p)| reference_matches(p, key, Separator::Dot))
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(ids(&mut automaton, key), expected, "key {key:?}");
    }
}

#[test]
fn documented_examples() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    let id = |a: &mut BindingAutomaton, p: &str, i| a.insert(p, SubscriptionId(i)).unwrap();
    id(&mut a, "#", 1);
    id(&mut a, "a.#.b", 2);
    id(&mut a, "*.#", 3);
    id(&mut a, "#.*", 4);
    assert_eq!(ids(&mut a, ""), vec![1], "the empty key has no segment");
    assert_eq!(ids(&mut a, "a.b"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&mut a, "a.x.y.b"), vec![1, 2, 3, 4]);
    assert_eq!(ids(&mut a, "a"), vec![1, 3, 4]);
    assert_eq!(ids(&mut a, "a.b.x"), vec![1, 3, 4]);
}

#[test]
fn kazoo_shaped_keys() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    a.insert("call.acct1.CHANNEL_CREATE.*", SubscriptionId(1))
        .unwrap();
    a.insert("call.acct1.*.*", SubscriptionId(2)).unwrap();
    a.insert("call.acct2.*.*", SubscriptionId(3)).unwrap();
    a.insert("doc_edited.account%2Fac%2Fct%2F1.user.*", SubscriptionId(4))
        .unwrap();
    assert_eq!(
        ids(&mut a, "call.acct1.CHANNEL_CREATE.abc%40host"),
        vec![1, 2]
    );
    assert_eq!(ids(&mut a, "call.acct1.CHANNEL_ANSWER.abc%40host"), vec![2]);
    assert_eq!(
        ids(&mut a, "call.acct3.CHANNEL_CREATE.x"),
        Vec::<u32>::new()
    );
    assert_eq!(
        ids(&mut a, "doc_edited.account%2Fac%2Fct%2F1.user.u1"),
        vec![4]
    );
    assert_eq!(
        ids(&mut a, "doc_edited.account%2Fac%2Fct%2F1.device.d1"),
        Vec::<u32>::new()
    );
}

#[test]
fn colon_separator_for_voipbin_topics() {
    let mut a = BindingAutomaton::new(Separator::Colon);
    a.insert("customer_id:c1:call:#", SubscriptionId(1))
        .unwrap();
    a.insert("customer_id:c1:#", SubscriptionId(2)).unwrap();
    a.insert("customer_id:*:callflow:#", SubscriptionId(3))
        .unwrap();
    assert_eq!(ids(&mut a, "customer_id:c1:call:abc"), vec![1, 2]);
    assert_eq!(ids(&mut a, "customer_id:c1:callflow:abc"), vec![2, 3]);
    assert_eq!(ids(&mut a, "customer_id:c2:callflow:x.y"), vec![3]);
    assert_eq!(ids(&mut a, "customer_id.c1.call.abc"), Vec::<u32>::new());
}

#[test]
fn one_subscription_under_many_matching_patterns_is_returned_once() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    for pattern in ["#", "a.#", "#.c", "a.*.c", "*.b.*", "#.#", "a.b.c"] {
        a.insert(pattern, SubscriptionId(7)).unwrap();
    }
    a.insert("a.b.c", SubscriptionId(8)).unwrap();
    assert_eq!(ids(&mut a, "a.b.c"), vec![7, 8]);
}

#[test]
fn duplicate_insert_and_stray_remove_change_nothing() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    assert_eq!(a.insert("a.*", SubscriptionId(1)), Ok(true));
    assert_eq!(a.insert("a.*", SubscriptionId(1)), Ok(false));
    assert_eq!(a.len(), 1);
    assert!(!a.remove("a.*", SubscriptionId(2)));
    assert!(!a.remove("a.#", SubscriptionId(1)));
    assert!(!a.remove("b.c.d", SubscriptionId(1)));
    assert!(!a.remove("", SubscriptionId(1)));
    assert_eq!(ids(&mut a, "a.x"), vec![1]);
    assert!(a.contains("a.*", SubscriptionId(1)));
    assert!(a.remove("a.*", SubscriptionId(1)));
    assert!(!a.remove("a.*", SubscriptionId(1)));
    assert!(!a.contains("a.*", SubscriptionId(1)));
    assert!(a.is_empty());
}

#[test]
fn invalid_patterns_are_refused_and_leave_no_trace() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    assert_eq!(a.insert("", SubscriptionId(1)), Err(BindingError::Empty));
    let long = format!("a.{}", "b".repeat(254));
    assert_eq!(
        a.insert(&long, SubscriptionId(1)),
        Err(BindingError::TooLong { len: 256 })
    );
    let deep = vec!["*"; 33].join(".");
    assert_eq!(
        a.insert(&deep, SubscriptionId(1)),
        Err(BindingError::TooManySegments { count: 33 })
    );
    assert_eq!((a.len(), a.node_count(), a.segment_count()), (0, 1, 0));
}

#[test]
fn remove_prunes_everything_it_no_longer_needs() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    let patterns = ["a.b.c", "a.b.#", "a.*.c", "#.c", "x.y", "a.b.c.d", "#.#.a"];
    for (round, _) in (0..3).enumerate() {
        for (i, p) in patterns.iter().enumerate() {
            for sub in 0..20u32 {
                a.insert(p, SubscriptionId(sub * 100 + i as u32)).unwrap();
            }
        }
        assert_eq!(a.len(), patterns.len() * 20, "round {round}");
        for (i, p) in patterns.iter().enumerate().rev() {
            for sub in 0..20u32 {
                assert!(a.remove(p, SubscriptionId(sub * 100 + i as u32)));
            }
        }
        assert_eq!(a.len(), 0);
        assert_eq!(a.node_count(), 1, "only the root is left");
        assert_eq!(a.segment_count(), 0, "no interned text is left");
        assert_eq!(ids(&mut a, "a.b.c"), Vec::<u32>::new());
    }
}

#[test]
fn removing_one_pattern_keeps_its_neighbours() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    a.insert("a.b", SubscriptionId(1)).unwrap();
    a.insert("a.b.c", SubscriptionId(2)).unwrap();
    a.insert("a.#", SubscriptionId(3)).unwrap();
    assert!(a.remove("a.b", SubscriptionId(1)));
    assert_eq!(ids(&mut a, "a.b.c"), vec![2, 3]);
    assert!(a.remove("a.b.c", SubscriptionId(2)));
    assert_eq!(ids(&mut a, "a.b.c"), vec![3]);
    assert_eq!(ids(&mut a, "a"), vec![3]);
    assert!(a.remove("a.#", SubscriptionId(3)));
    assert_eq!(a.node_count(), 1);
}

#[test]
fn many_hashes_against_a_long_key_terminate_quickly() {
    // The naive matcher explores C(30, 4) splits here; the automaton visits a handful of nodes.
    let mut a = BindingAutomaton::new(Separator::Dot);
    a.insert("#.#.#.#.x", SubscriptionId(1)).unwrap();
    a.insert("#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.y", SubscriptionId(2))
        .unwrap();
    let miss = vec!["a"; 30].join(".");
    let hit = format!("{miss}.x");
    for _ in 0..1000 {
        assert_eq!(ids(&mut a, &miss), Vec::<u32>::new());
        assert_eq!(ids(&mut a, &hit), vec![1]);
    }
}

#[test]
fn wide_nodes_and_their_pruning() {
    // One `call` node with a child per account: far past the narrow-list threshold.
    let mut a = BindingAutomaton::new(Separator::Dot);
    let pattern = |i: u32| format!("call.acct{i}.CHANNEL_CREATE.*");
    for i in 0..500 {
        a.insert(&pattern(i), SubscriptionId(i)).unwrap();
    }
    for i in 0..500 {
        assert_eq!(
            ids(&mut a, &format!("call.acct{i}.CHANNEL_CREATE.x")),
            vec![i]
        );
    }
    for i in (0..500).filter(|i| i % 2 == 0) {
        assert!(a.remove(&pattern(i), SubscriptionId(i)));
    }
    for i in 0..500 {
        let expected = if i % 2 == 0 { vec![] } else { vec![i] };
        assert_eq!(
            ids(&mut a, &format!("call.acct{i}.CHANNEL_CREATE.x")),
            expected
        );
    }
    for i in (0..500).filter(|i| i % 2 == 1) {
        assert!(a.remove(&pattern(i), SubscriptionId(i)));
    }
    assert_eq!((a.node_count(), a.segment_count()), (1, 0));
    // A node that went wide and emptied out becomes narrow again and still works.
    a.insert("call.x.y", SubscriptionId(1)).unwrap();
    assert_eq!(ids(&mut a, "call.x.y"), vec![1]);
}

#[test]
fn many_subscribers_on_one_pattern() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    for i in 0..20_000 {
        a.insert("call.acct.*.*", SubscriptionId(i)).unwrap();
    }
    assert_eq!(ids(&mut a, "call.acct.X.Y").len(), 20_000);
    for i in (0..20_000).filter(|i| i % 3 != 0) {
        assert!(a.remove("call.acct.*.*", SubscriptionId(i)));
    }
    let left = ids(&mut a, "call.acct.X.Y");
    assert_eq!(left, (0..20_000).filter(|i| i % 3 == 0).collect::<Vec<_>>());
}

#[test]
fn keys_are_not_limited_like_patterns() {
    let mut a = BindingAutomaton::new(Separator::Dot);
    a.insert("#", SubscriptionId(1)).unwrap();
    a.insert("*.#.z", SubscriptionId(2)).unwrap();
    let key = format!("{}.z", vec!["seg"; 500].join("."));
    assert_eq!(ids(&mut a, &key), vec![1, 2]);
}

// --- property tests -------------------------------------------------------------------------

/// A small alphabet so that random patterns and keys actually meet; includes the empty segment and
/// literals that look like wildcards.
fn key_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just(String::new()),
        Just("ab*".to_string()),
        Just("*".to_string()),
        Just("#".to_string()),
    ]
}

fn pattern_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => key_segment(),
        2 => Just("*".to_string()),
        2 => Just("#".to_string()),
    ]
}

/// A pattern's segments; never the single empty segment, which joins to the (refused) empty pattern.
fn pattern_segments(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(pattern_segment(), 1..max)
        .prop_filter("the empty pattern is refused", |segs| {
            !(segs.len() == 1 && segs[0].is_empty())
        })
}

fn separator() -> impl Strategy<Value = Separator> {
    prop_oneof![Just(Separator::Dot), Just(Separator::Colon)]
}

fn join(segments: &[String], sep: Separator) -> String {
    segments.join(&char::from(sep.byte()).to_string())
}

#[derive(Debug, Clone)]
enum Op {
    Insert(usize, u32),
    Remove(usize, u32),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// Random pattern sets, random keys: the automaton returns exactly the subscriptions whose
    /// pattern the reference matcher accepts, each once.
    #[test]
    fn matches_like_the_reference(
        sep in separator(),
        patterns in prop::collection::vec(pattern_segments(6), 1..12),
        subs in prop::collection::vec(0u32..6, 12),
        keys in prop::collection::vec(prop::collection::vec(key_segment(), 0..7), 1..8),
    ) {
        let patterns: Vec<String> = patterns.iter().map(|p| join(p, sep)).collect();
        let mut automaton = BindingAutomaton::new(sep);
        for (i, pattern) in patterns.iter().enumerate() {
            automaton.insert(pattern, SubscriptionId(subs[i])).unwrap();
        }
        for key in keys.iter().map(|k| join(k, sep)) {
            let mut expected: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| reference_matches(p, &key, sep))
                .map(|(i, _)| subs[i])
                .collect();
            expected.sort_unstable();
            expected.dedup();
            prop_assert_eq!(ids(&mut automaton, &key), expected, "key {:?}", key);
        }
    }

    /// Interleaved inserts and removes: the automaton always agrees with a plain set of pairs, and
    /// once everything is removed nothing at all is left behind.
    #[test]
    fn churn_keeps_the_automaton_equal_to_a_set_of_pairs(
        sep in separator(),
        patterns in prop::collection::vec(pattern_segments(5), 1..8),
        ops in prop::collection::vec(
            prop_oneof![
                (0usize..8, 0u32..4).prop_map(|(p, s)| Op::Insert(p, s)),
                (0usize..8, 0u32..4).prop_map(|(p, s)| Op::Remove(p, s)),
            ],
            1..40,
        ),
        keys in prop::collection::vec(prop::collection::vec(key_segment(), 0..6), 1..5),
    ) {
        let patterns: Vec<String> = patterns.iter().map(|p| join(p, sep)).collect();
        let mut automaton = BindingAutomaton::new(sep);
        let mut pairs = std::collections::BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(p, s) => {
                    let pattern = &patterns[p % patterns.len()];
                    let fresh = pairs.insert((pattern.clone(), s));
                    prop_assert_eq!(automaton.insert(pattern, SubscriptionId(s)), Ok(fresh));
                }
                Op::Remove(p, s) => {
                    let pattern = &patterns[p % patterns.len()];
                    let present = pairs.remove(&(pattern.clone(), s));
                    prop_assert_eq!(automaton.remove(pattern, SubscriptionId(s)), present);
                }
            }
            prop_assert_eq!(automaton.len(), pairs.len());
            for key in keys.iter().map(|k| join(k, sep)) {
                let mut expected: Vec<u32> = pairs
                    .iter()
                    .filter(|(p, _)| reference_matches(p, &key, sep))
                    .map(|(_, s)| *s)
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                prop_assert_eq!(ids(&mut automaton, &key), expected, "key {:?}", key);
            }
        }
        for (pattern, s) in std::mem::take(&mut pairs) {
            prop_assert!(automaton.remove(&pattern, SubscriptionId(s)));
        }
        prop_assert_eq!(automaton.node_count(), 1);
        prop_assert_eq!(automaton.segment_count(), 0);
    }
}

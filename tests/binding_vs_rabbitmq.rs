//! The binding automaton against the thing it imitates: a real RabbitMQ topic exchange.
//!
//! Each pattern is bound to its own queue on a fresh topic exchange; every key is published with
//! publisher confirms; then each queue is drained and what the broker routed is compared, key by
//! key, with what the automaton matches. RabbitMQ is the oracle for the semantics, including the
//! corners (empty key, empty segments, `#.#`, literal `ab*`).
//!
//! Needs a broker at `HORIZON_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`);
//! `scripts/test.sh` makes sure one is running. Without one this test fails, it never skips.

mod common;

use std::collections::BTreeSet;

use horizon::binding::{BindingAutomaton, Separator, SubscriptionId};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

/// RabbitMQ's own corner cases, and Kazoo-shaped patterns.
const EDGE_PATTERNS: &[&str] = &[
    "#",
    "#.#",
    "*",
    "*.*",
    "*.#",
    "#.*",
    "#.*.#",
    "*.#.*",
    "a.#",
    "a.#.#",
    "a.#.b",
    "#.b",
    "a.*",
    "a.*.c",
    "a.*.#",
    "#.a.*",
    "a.b.c",
    "a.b",
    "a..b",
    ".",
    "a.",
    ".a",
    "ab*",
    "#x",
    "#.#.#.#.x",
    "call.acct1.CHANNEL_CREATE.*",
    "call.*.CHANNEL_CREATE.*",
    "call.acct1.#",
    "doc_edited.account%2Fac%2Fct%2F1.user.*",
];
const EDGE_KEYS: &[&str] = &[
    "",
    ".",
    "..",
    "a",
    "b",
    "x",
    "a.b",
    "a.b.c",
    "a.x.c",
    "a.b.b",
    "a.b.b.c",
    "a..b",
    "a.",
    ".a",
    "a.x.y.z.b",
    "ab*",
    "#x",
    "*",
    "#",
    "a.*",
    "y.y.y.y.y.y.y.y.y.y.x",
    "call.acct1.CHANNEL_CREATE.abc%40host",
    "call.acct2.CHANNEL_CREATE.abc%40host",
    "call.acct1.CHANNEL_DESTROY.abc%40host",
    "doc_edited.account%2Fac%2Fct%2F1.user.u1",
];

/// A fixed-seed generator, so a failure reproduces exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as usize
    }

    fn words(&mut self, alphabet: &[&str], min: usize, max: usize) -> String {
        let n = min + self.next(max - min + 1);
        (0..n)
            .map(|_| alphabet[self.next(alphabet.len())])
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn automaton_routes_exactly_like_a_rabbitmq_topic_exchange() {
    let connection = common::amqp_connect().await;
    let channel = connection.create_channel().await.expect("open channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");

    let mut rng = XorShift(0x5EED_1234_ABCD_0001);
    let mut patterns: Vec<String> = EDGE_PATTERNS.iter().map(|p| p.to_string()).collect();
    while patterns.len() < EDGE_PATTERNS.len() + 60 {
        let p = rng.words(&["a", "b", "", "*", "#", "ab*"], 1, 5);
        if !p.is_empty() && !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    let mut keys: Vec<String> = EDGE_KEYS.iter().map(|k| k.to_string()).collect();
    while keys.len() < EDGE_KEYS.len() + 150 {
        let k = rng.words(&["a", "b", "", "ab*", "c"], 0, 6);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }

    let run = common::unique_name("binding-oracle");
    let exchange = format!("horizon.test.{run}");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");

    let mut automaton = BindingAutomaton::new(Separator::Dot);
    let mut queues = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let queue = format!("{exchange}.q{i}");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {pattern:?}: {e}"));
        automaton
            .insert(pattern, SubscriptionId(i as u32))
            .expect("valid pattern");
        queues.push(queue);
    }

    for key in &keys {
        channel
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("publisher confirm");
    }

    // What the broker routed, as (pattern index, key) pairs.
    let mut routed = BTreeSet::new();
    for (i, queue) in queues.iter().enumerate() {
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let key = String::from_utf8(message.delivery.data).expect("utf-8 body");
            assert!(
                routed.insert((i, key)),
                "the broker routed a key twice to one queue"
            );
        }
    }

    let mut matched = BTreeSet::new();
    let mut out = Vec::new();
    for key in &keys {
        out.clear();
        automaton.matches(key, &mut out);
        for sub in &out {
            assert!(
                matched.insert((sub.0 as usize, key.clone())),
                "duplicate match for {key:?}"
            );
        }
    }

    let only_broker: Vec<_> = routed
        .difference(&matched)
        .map(|(i, k)| (patterns[*i].as_str(), k.as_str()))
        .collect();
    let only_automaton: Vec<_> = matched
        .difference(&routed)
        .map(|(i, k)| (patterns[*i].as_str(), k.as_str()))
        .collect();
    assert!(
        only_broker.is_empty() && only_automaton.is_empty(),
        "(pattern, key) pairs routed by RabbitMQ only: {only_broker:?}\n\
         matched by the automaton only: {only_automaton:?}"
    );
    assert!(
        routed.len() > keys.len(),
        "the oracle routed suspiciously little: {}",
        routed.len()
    );

    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete exchange");
    connection.close(200, "done".into()).await.expect("close");
}

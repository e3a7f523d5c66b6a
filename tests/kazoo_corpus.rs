//! The Kazoo wire corpus (`tests/fixtures/kazoo/`): every family's deliveries shaped as Kazoo
//! master's publishers build them, replayed on the real broker. For each one, a blackhole socket
//! per client binding that must see it receives it exactly once with the right frame, and a
//! socket per binding that must not, receives nothing - proved with a sentinel call event every
//! socket also subscribes to, published after the delivery (a socket receives events in order).
//! This corpus is how the project stays honest about "drop-in".

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::kazoo::{declare_kazoo_exchanges, parse, publish, publish_call, runtime, Client, Node};
use horizon::families::{account_db, encode_segment};
use simd_json::prelude::*;
use simd_json::OwnedValue;

/// Fresh ids for a fixture's placeholders.
fn placeholders() -> BTreeMap<&'static str, String> {
    let tag = horizon::ids::random_hex(4);
    let account = format!("acct-k-{tag}");
    let call_raw = format!("c-{tag}@pbx.example.com");
    let realm = format!("a-{tag}.sip.example.com");
    let db = account_db(&account);
    BTreeMap::from([
        ("account", account.clone()),
        ("other", format!("acct-o-{tag}")),
        ("reseller", format!("res-k-{tag}")),
        ("call", encode_segment(&call_raw)),
        ("call_raw", call_raw),
        ("conf", format!("conf-{tag}")),
        ("fax", format!("fax-{tag}")),
        ("doc", format!("doc-{tag}")),
        ("modb1", format!("{db}-202611")),
        ("modb2", format!("{db}-202612")),
        ("db", db),
        ("realm_enc", encode_segment(&realm)),
        ("realm", realm),
        ("other_realm", format!("b-{tag}.sip.example.com")),
    ])
}

fn fill(text: &str, ids: &BTreeMap<&'static str, String>) -> String {
    ids.iter().fold(text.to_string(), |text, (name, id)| {
        text.replace(&format!("{{{name}}}"), id)
    })
}

/// The account tree: a reseller with two children, each with its own SIP realm; `tok-<id>` for
/// each.
fn auth_toml(ids: &BTreeMap<&'static str, String>) -> String {
    let mut toml = format!(
        "[[accounts]]\nid = \"{r}\"\n[[accounts]]\nid = \"{a}\"\nparent = \"{r}\"\nrealm = \"{ra}\"\n\
         [[accounts]]\nid = \"{o}\"\nparent = \"{r}\"\nrealm = \"{ro}\"\n",
        r = ids["reseller"],
        a = ids["account"],
        o = ids["other"],
        ra = ids["realm"],
        ro = ids["other_realm"],
    );
    for account in ["reseller", "account", "other"] {
        toml.push_str(&format!(
            "[[tokens]]\ntoken = \"tok-{a}\"\naccount_id = \"{a}\"\n",
            a = ids[account]
        ));
    }
    toml
}

fn strings(value: &OwnedValue) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_kazoo_delivery_reaches_exactly_the_bindings_that_may_see_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kazoo");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the Kazoo corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "the corpus covers every family");
    let ids = placeholders();
    let node = Node::start(true, &auth_toml(&ids), |_, _| {});
    runtime().block_on(async {
        node.ready().await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let mut families = std::collections::BTreeSet::new();
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let fixture = parse(&fill(&std::fs::read_to_string(file).unwrap(), &ids));
            assert!(
                !strings(fixture.get("source").unwrap()).is_empty(),
                "{name} names its source"
            );
            let exchange = fixture.get_str("exchange").unwrap();
            families.insert(exchange.to_string());
            let routing_key = fixture.get_str("routing_key").unwrap();
            let body = fixture.get("body").unwrap();
            let sentinel = format!("sentinel-{}", horizon::ids::random_hex(4));
            let sentinel_binding = format!("call.PARK_ABANDONED.{sentinel}");

            let mut sockets = Vec::new();
            for (list, expected) in [("receive", true), ("not_receive", false)] {
                for entry in fixture.get_array(list).unwrap() {
                    let entry = strings(entry);
                    let (token_account, binding) = (&entry[0], &entry[1]);
                    let account = entry.get(2).unwrap_or(token_account);
                    let mut client = Client::connect(node.addr()).await;
                    let data = format!(
                        r#"{{"account_id":"{account}","bindings":["{binding}","{sentinel_binding}"]}}"#
                    );
                    client
                        .subscribe(Some(&format!("tok-{token_account}")), &data)
                        .await;
                    sockets.push((binding.clone(), account.clone(), expected, client));
                }
            }
            publish(&channel, exchange, routing_key, body.encode().as_bytes()).await;
            let mut accounts: Vec<&String> = sockets.iter().map(|s| &s.1).collect();
            accounts.sort();
            accounts.dedup();
            for account in accounts {
                publish_call(&channel, "PARK_ABANDONED", &sentinel, account).await;
            }

            let want_name = fixture.get_str("name").unwrap();
            let want_key = fixture.get_str("internal_key").unwrap();
            for (binding, _, expected, client) in &mut sockets {
                let got = client.events_until(&sentinel).await;
                if !*expected {
                    assert!(got.is_empty(), "{name}: {binding} must get nothing: {got:?}");
                    continue;
                }
                assert_eq!(got.len(), 1, "{name}: {binding} gets it once: {got:?}");
                let frame = &got[0];
                assert_eq!(frame.get_str("action"), Some("event"), "{name}: {frame}");
                assert_eq!(frame.get_str("subscribed_key"), Some(binding.as_str()), "{name}");
                assert_eq!(frame.get_str("name"), Some(want_name), "{name}: {frame}");
                assert_eq!(frame.get_str("routing_key"), Some(want_key), "{name}: {frame}");
                let data = frame.get("data").expect("data");
                // Normalized as Kazoo master: what the event is stays, routing headers go.
                assert_eq!(
                    data.get_str("event_name"),
                    body.get_str("Event-Name"),
                    "{name}: {data}"
                );
                assert!(data.get("msg_id").is_some(), "{name}: {data}");
                for gone in ["server_id", "node"] {
                    assert!(data.get(gone).is_none(), "{name}: {gone} in {data}");
                }
                assert!(!data.encode().contains("null"), "{name}: nulls dropped: {data}");
            }
        }
        for family in ["callevt", "configuration", "conference", "faxes", "presence", "registrar"] {
            assert!(families.contains(family), "the corpus has {family} deliveries");
        }
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

//! A broker restart under live sockets. Its own test binary: it stops and starts the shared
//! RabbitMQ application, which must not hit tests of other binaries (cargo runs binaries one
//! after another).

mod common;

use std::time::{Duration, Instant};

use common::kazoo::*;
use horizon::ingest::SourceState;
use simd_json::prelude::*;

fn rabbitmqctl(args: &[&str]) {
    let status = std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs (scripts/test.sh checks the broker)");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[test]
fn sockets_survive_a_broker_restart_and_delivery_resumes() {
    let t = Tenants::new();
    let node = Node::start(true, &t.auth_toml(), |_, _| {});
    let queue = node.ingest.queue_name().to_string();
    runtime().block_on(async {
        node.ready().await;
        let mut client = Client::connect(node.addr()).await;
        client
            .subscribe(
                Some(&token(&t.a)),
                r#"{"bindings":["call.CHANNEL_CREATE.*","object.doc_edited.user"]}"#,
            )
            .await;
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        publish_call(&channel, "CHANNEL_CREATE", "before", &t.a).await;
        let got = client
            .next_json(Duration::from_secs(3))
            .await
            .expect("delivery before the restart");
        assert_eq!(
            got.get("data").and_then(|d| d.get_str("call_id")),
            Some("before")
        );
        drop(channel);
        drop(amqp);

        rabbitmqctl(&["stop_app"]);
        for _ in 0..100 {
            if node.ingest.status().state() != SourceState::Consuming {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_ne!(
            node.ingest.status().state(),
            SourceState::Consuming,
            "the loss is noticed"
        );
        // Subscriptions made while the broker is away are counted and bound when it returns.
        let mut late = Client::connect(node.addr()).await;
        let reply = late
            .command(
                "subscribe",
                Some(&token(&t.a)),
                r#"{"binding":"call.CHANNEL_DESTROY.*"}"#,
            )
            .await;
        assert_eq!(reply.get_str("status"), Some("success"), "{reply}");
        rabbitmqctl(&["start_app"]);
        let back = Instant::now();

        // Publish as Kazoo would once it is back, until the socket gets an event.
        let amqp = common::amqp_connect().await;
        let channel = amqp.create_channel().await.unwrap();
        declare_kazoo_exchanges(&channel).await;
        let mut resumed = None;
        for i in 0..100 {
            publish_call(&channel, "CHANNEL_CREATE", &format!("after-{i}"), &t.a).await;
            if let Some(event) = client.next_json(Duration::from_millis(100)).await {
                assert_eq!(event.get_str("action"), Some("event"), "{event}");
                resumed = Some(back.elapsed());
                break;
            }
        }
        let resumed = resumed.expect("delivery resumed after the broker came back");
        eprintln!("delivery resumed {resumed:?} after rabbitmqctl start_app returned");
        assert!(
            resumed < Duration::from_secs(4),
            "resumed only after {resumed:?}"
        );

        // Every live binding is back, the late one included, and works.
        let db = horizon::families::account_db(&t.a);
        let object = format!("doc_edited.{db}.user.*");
        expect_bindings(
            &queue,
            &[
                ("callevt", "call.CHANNEL_CREATE.*"),
                ("callevt", "call.CHANNEL_DESTROY.*"),
                ("configuration", &object),
            ],
        )
        .await;
        publish_call(&channel, "CHANNEL_DESTROY", "late", &t.a).await;
        let got = late
            .next_json(Duration::from_secs(3))
            .await
            .expect("the late subscription delivers");
        assert_eq!(
            got.get("data").and_then(|d| d.get_str("call_id")),
            Some("late")
        );
        publish_doc(&channel, "doc_edited", &t.a, "user", "u9").await;
        // The object binding was re-declared: the document event arrives.
        client.events_until("u9").await;
        // The sockets never noticed: still answering.
        let reply = client.command("ping", None, "{}").await;
        assert_eq!(reply.get_str("status"), Some("success"));
        amqp.close(200, "done".into()).await.unwrap();
    });
    node.stop();
}

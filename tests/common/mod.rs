//! Helpers shared by the integration tests: the broker they need, and names that never collide
//! between concurrent runs.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker every integration test uses; `scripts/test.sh` makes sure it is reachable.
pub fn amqp_url() -> String {
    std::env::var("HORIZON_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Connects to the test broker, or fails the test with a message that says what to do: an
/// integration test never skips because the broker is missing.
pub async fn amqp_connect() -> lapin::Connection {
    let url = amqp_url();
    match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
        Ok(connection) => connection,
        Err(e) => panic!(
            "no RabbitMQ broker at {url}: {e}\n\
             run the suite with scripts/test.sh (it starts or installs one), \
             or point HORIZON_TEST_AMQP_URL at a broker"
        ),
    }
}

/// A name unique to this process and call, for exchanges and queues.
pub fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{what}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub mod kazoo;

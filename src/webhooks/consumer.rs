//! The webhook consumer: one shared, durable queue (`horizon.webhooks`, a quorum queue where
//! the broker has them) that every node consumes from, bound to exactly the exchanges and keys
//! the hooks in force need. Each message is acknowledged once its deliveries are made or saved
//! for a retry; a message whose deliveries could not be saved is returned to the queue. A node
//! that dies leaves its unacknowledged messages to the others: at least once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::Webhooks;

pub(super) async fn run(webhooks: Arc<Webhooks>, url: String) {
    let mut brokers = crate::ingest::brokers::Brokers::new(&url);
    let mut backoff = Duration::from_millis(100);
    loop {
        match brokers.connect().await {
            Ok(connection) => {
                backoff = Duration::from_millis(100);
                let on = format!("{}{}", brokers.current(), brokers.position());
                if let Err(e) = session(&webhooks, connection, &on).await {
                    tracing::warn!("webhooks: broker session on {on} ended ({e}); reconnecting");
                }
                brokers.lost();
            }
            Err(e) => {
                tracing::warn!("webhooks: cannot connect ({e}); retrying");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        let jitter = 0.5 + (crate::ids::random_u64() % 1000) as f64 / 2000.0;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
    }
}

/// Declares the shared queue: a durable quorum queue, or - on a broker that holds it as a
/// classic queue already, or has no quorum queues - a durable classic one.
async fn declare(connection: &Connection, queue: &str) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    if channel
        .queue_declare(queue.into(), durable, quorum)
        .await
        .is_ok()
    {
        return Ok(channel);
    }
    tracing::warn!(
        "webhooks: {queue} is not a quorum queue on this broker (it exists as a classic queue, \
         or the broker has no quorum queues): it is not replicated and dies with its node; \
         delete it while no node runs to let Horizon declare a quorum queue"
    );
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await?;
    Ok(channel)
}

async fn session(webhooks: &Arc<Webhooks>, connection: Connection, on: &str) -> Result<(), String> {
    session_on(webhooks, connection, on)
        .await
        .map_err(|e| e.to_string())?;
    Err("the consumer was cancelled".into())
}

async fn session_on(
    webhooks: &Arc<Webhooks>,
    connection: Connection,
    on: &str,
) -> Result<(), lapin::Error> {
    let queue = webhooks.config.queue.clone();
    for exchange in super::exchanges() {
        crate::ingest::ensure_exchange(&connection, exchange).await?;
    }
    let channel = declare(&connection, &queue).await?;
    channel
        .basic_qos(webhooks.config.prefetch, BasicQosOptions::default())
        .await?;
    let mut bound: BTreeSet<(&'static str, &'static str)> = BTreeSet::new();
    let mut synced = sync(webhooks, &channel, &queue, &mut bound).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("horizon-webhooks-{}", webhooks.config.node)
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        "webhooks: consuming {queue} on {on} ({} bindings)",
        bound.len()
    );
    loop {
        let changed = webhooks.bindings_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // A change announced while the last sync ran is not missed.
        if webhooks
            .wanted_bindings
            .load(std::sync::atomic::Ordering::SeqCst)
            != synced
        {
            synced = sync(webhooks, &channel, &queue, &mut bound).await?;
            continue;
        }
        tokio::select! {
            _ = &mut changed => {
                synced = sync(webhooks, &channel, &queue, &mut bound).await?;
            }
            delivery = consumer.next() => {
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                };
                let received = Instant::now();
                // Waits here while the node has no room: the backlog stays in the broker.
                let admitted = webhooks
                    .admit(delivery.exchange.as_str(), delivery.routing_key.as_str(), &delivery.data)
                    .await;
                let Some(admitted) = admitted else {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    continue;
                };
                let webhooks = webhooks.clone();
                tokio::spawn(async move {
                    match webhooks.deliver(admitted, received, delivery.redelivered).await {
                        Ok(()) => {
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        }
                        Err(super::StoreDown(e)) => {
                            tracing::error!("webhooks: cannot save deliveries ({e}); the message goes back to the queue");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = delivery
                                .acker
                                .nack(BasicNackOptions { requeue: true, ..Default::default() })
                                .await;
                        }
                    }
                });
            }
        }
    }
}

/// Binds what is wanted and not bound, unbinds what is bound and no longer wanted.
async fn sync(
    webhooks: &Webhooks,
    channel: &Channel,
    queue: &str,
    bound: &mut BTreeSet<(&'static str, &'static str)>,
) -> Result<u64, lapin::Error> {
    let (generation, wanted) = webhooks.bindings();
    for (exchange, key) in wanted.difference(bound) {
        channel
            .queue_bind(
                queue.into(),
                (*exchange).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for (exchange, key) in bound.difference(&wanted) {
        channel
            .queue_unbind(
                queue.into(),
                (*exchange).into(),
                (*key).into(),
                FieldTable::default(),
            )
            .await?;
    }
    *bound = wanted;
    webhooks.bound(generation);
    Ok(generation)
}

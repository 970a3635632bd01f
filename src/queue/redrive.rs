//! Redrive: move dead-lettered messages back to their queue for another attempt. The request
//! is reopened first, so it resumes where it stopped (rows already erased stay erased).

use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::{
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::PgPool;

use super::{Brokers, Topology, header_str, publisher::Publisher};
use crate::{
    contract::{ERASE_ROUTING_KEY, RequestId, TASK_ROUTING_KEY},
    retry,
    store::requests,
};

/// Where a dead letter came from: our own header, else the broker's dead-lettering record.
fn origin_routing_key(
    props: &lapin::BasicProperties,
    topology: &Topology,
    data: &[u8],
) -> &'static str {
    let from_queue = |q: &str| {
        if q == topology.tasks_queue() {
            Some(TASK_ROUTING_KEY)
        } else if q == topology.requests_queue() {
            Some(ERASE_ROUTING_KEY)
        } else {
            None
        }
    };
    if let Some(k) = header_str(props, "x-erasure-routing-key") {
        if k == TASK_ROUTING_KEY {
            return TASK_ROUTING_KEY;
        }
        if k == ERASE_ROUTING_KEY {
            return ERASE_ROUTING_KEY;
        }
    }
    if let Some(k) = header_str(props, "x-first-death-queue")
        .as_deref()
        .and_then(from_queue)
    {
        return k;
    }
    // A task message names a bot and a slice; anything else is treated as a request.
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) if v.get("slice").is_some() && v.get("botId").is_some() => TASK_ROUTING_KEY,
        _ => ERASE_ROUTING_KEY,
    }
}

fn request_id_of(props: &lapin::BasicProperties, data: &[u8]) -> Option<RequestId> {
    header_str(props, "x-erasure-request-id")
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(data)
                .ok()
                .and_then(|v| {
                    v.get("requestId")
                        .and_then(|r| r.as_str())
                        .map(str::to_owned)
                })
        })
        .and_then(|s| RequestId::parse(&s))
}

/// Moves up to `limit` dead letters back; returns how many. A lost broker connection is
/// retried on the next node ([`retry::broker`]) with what is left to move; a message in hand
/// when the connection died goes back to `erasure.dead`, or if it was already republished, is
/// moved twice (a duplicate, which the workers absorb).
pub async fn redrive(
    pool: &PgPool,
    brokers: impl Into<Brokers>,
    topology: &Topology,
    limit: usize,
) -> anyhow::Result<usize> {
    let brokers = brokers.into();
    let publisher = Publisher::new(&brokers, "redrive", topology.clone());
    let moved = AtomicUsize::new(0);
    let from = AtomicUsize::new(0);
    let result = retry::broker("redrive", || {
        move_dead_letters(pool, &brokers, &from, &publisher, topology, limit, &moved)
    })
    .await;
    publisher.close().await;
    result.map(|()| moved.into_inner())
}

/// One connection's share of [`redrive`]: moves dead letters until `limit` have been moved in
/// all or the queue is empty.
async fn move_dead_letters(
    pool: &PgPool,
    brokers: &Brokers,
    from: &AtomicUsize,
    publisher: &Publisher,
    topology: &Topology,
    limit: usize,
    moved: &AtomicUsize,
) -> anyhow::Result<()> {
    on_channel(brokers, from, "redrive", topology, async |ch| {
        while moved.load(Ordering::SeqCst) < limit {
            let Some(msg) = ch
                .basic_get(
                    topology.dead_queue().as_str().into(),
                    BasicGetOptions::default(),
                )
                .await?
            else {
                break;
            };
            move_one(pool, publisher, topology, msg, moved).await?;
        }
        Ok(())
    })
    .await
}

/// Connects to the first node that answers from `from` (the next attempt, should this
/// connection be lost, starts with the node after it), declares the topology and runs `work`
/// on a channel; the connection is closed however `work` ends.
async fn on_channel<T>(
    brokers: &Brokers,
    from: &AtomicUsize,
    name: &str,
    topology: &Topology,
    work: impl AsyncFnOnce(&lapin::Channel) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (conn, node) = brokers.connect(from.load(Ordering::SeqCst), name).await?;
    from.store(brokers.after(node), Ordering::SeqCst);
    let result = async {
        topology.ensure(&conn).await?;
        let ch = conn.create_channel().await?;
        work(&ch).await
    }
    .await;
    super::close(&conn, "done").await;
    result
}

/// Reopens the request a dead letter names and republishes it to its queue; acknowledged
/// only once the republish is confirmed.
async fn move_one(
    pool: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
    msg: lapin::message::BasicGetMessage,
    moved: &AtomicUsize,
) -> anyhow::Result<()> {
    let key = origin_routing_key(&msg.delivery.properties, topology, &msg.delivery.data);
    let request_id = request_id_of(&msg.delivery.properties, &msg.delivery.data);
    let step = async {
        if let Some(id) = &request_id {
            requests::reopen(pool, id).await?;
        }
        let mut headers = FieldTable::default();
        headers.insert("x-erasure-redriven".into(), AMQPValue::Boolean(true));
        let message_id = request_id
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "unidentified".into());
        publisher
            .publish(key, &message_id, &msg.delivery.data, headers)
            .await
    }
    .await;
    match step {
        Ok(()) => {
            msg.delivery.acker.ack(BasicAckOptions::default()).await?;
            moved.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        Err(e) => {
            let _ = msg
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
            let n = moved.load(Ordering::SeqCst);
            Err(e.context(format!(
                "redriving message {} (others were moved: {n})",
                n + 1
            )))
        }
    }
}

/// Depth and consumers of every queue, for `erasure queue stats`.
pub async fn stats(
    brokers: impl Into<Brokers>,
    topology: &Topology,
) -> anyhow::Result<Vec<(String, u32, u32)>> {
    let brokers = brokers.into();
    let from = AtomicUsize::new(0);
    retry::broker("queue stats", || stats_once(&brokers, &from, topology)).await
}

async fn stats_once(
    brokers: &Brokers,
    from: &AtomicUsize,
    topology: &Topology,
) -> anyhow::Result<Vec<(String, u32, u32)>> {
    on_channel(brokers, from, "stats", topology, async |ch| {
        let mut out = Vec::new();
        for (queue, _) in topology.queues() {
            let q = ch
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            out.push((queue, q.message_count(), q.consumer_count()));
        }
        Ok(out)
    })
    .await
}

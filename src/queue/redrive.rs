//! Redrive: move dead-lettered messages back to their queue for another attempt. The request
//! is reopened first, so it resumes where it stopped (rows already erased stay erased).

use anyhow::Context;
use lapin::{
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};
use sqlx::PgPool;

use super::{Topology, header_str, publisher::Publisher};
use crate::{
    contract::{ERASE_ROUTING_KEY, RequestId, TASK_ROUTING_KEY},
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

/// Moves up to `limit` dead letters back; returns how many.
pub async fn redrive(
    pool: &PgPool,
    amqp_url: &str,
    topology: &Topology,
    limit: usize,
) -> anyhow::Result<usize> {
    let publisher = Publisher::new(amqp_url, "redrive", topology.clone());
    let conn = super::connect(amqp_url, "redrive")
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
    let mut moved = 0;
    while moved < limit {
        let Some(msg) = ch
            .basic_get(
                topology.dead_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await?
        else {
            break;
        };
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
                moved += 1;
            }
            Err(e) => {
                msg.delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                publisher.close().await;
                return Err(e.context(format!(
                    "redriving message {} (others were moved: {moved})",
                    moved + 1
                )));
            }
        }
    }
    publisher.close().await;
    let _ = conn.close(200, "done".into()).await;
    Ok(moved)
}

/// Depth and consumers of every queue, for `erasure queue stats`.
pub async fn stats(amqp_url: &str, topology: &Topology) -> anyhow::Result<Vec<(String, u32, u32)>> {
    let conn = super::connect(amqp_url, "stats")
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch).await?;
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
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

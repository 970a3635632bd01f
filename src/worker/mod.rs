//! Workers: plan each erase request into per-bot tasks, execute tasks in bounded slices, and
//! dead-letter what cannot succeed, with the reason recorded.

pub mod dead;
pub mod plan;
pub mod task;

use std::sync::Arc;

use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;

use crate::{
    config::Config,
    contract::Limits,
    erase::Throttle,
    queue::{consumer::Outcome, publisher::Publisher},
};

/// What every handler shares.
pub struct Ctx {
    pub pool: PgPool,
    pub config: Config,
    pub limits: Limits,
    pub publisher: Arc<Publisher>,
    pub throttle: Throttle,
}

impl Ctx {
    pub fn new(pool: PgPool, config: Config, publisher: Arc<Publisher>) -> Self {
        Self {
            limits: Limits::from_config(&config),
            throttle: Throttle::new(
                config.worker.max_rows_per_second,
                config.worker.max_rows_per_second_total,
            ),
            pool,
            config,
            publisher,
        }
    }

    /// Deliveries a message has had, counting this one (quorum queues count redeliveries
    /// in `x-delivery-count`).
    pub fn delivery_number(props: &lapin::BasicProperties) -> u64 {
        crate::queue::header_u64(props, "x-delivery-count").unwrap_or(0) + 1
    }

    /// Puts back a message whose handling failed for a transient reason (the database stayed
    /// away longer than the retry budget): republished, confirmed, then the original is
    /// acknowledged, so that waiting out an outage does not count as a delivery. A plain
    /// requeue would count, and a long enough outage would have the broker dead-letter healthy
    /// messages (`x-delivery-limit`) with nothing recorded, their requests `in-progress` for good.
    pub async fn retry_later(&self, routing_key: &str, message_id: &str, data: &[u8]) -> Outcome {
        let mut headers = FieldTable::default();
        headers.insert("x-erasure-retried".into(), AMQPValue::Boolean(true));
        match self
            .publisher
            .publish(routing_key, message_id, data, headers)
            .await
        {
            Ok(()) => Outcome::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "could not put a message back; requeueing it");
                Outcome::Requeue
            }
        }
    }

    /// The message id a delivery carries (ours are request or task ids).
    pub fn message_id(props: &lapin::BasicProperties) -> String {
        props
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_string())
            .unwrap_or_else(|| "unidentified".into())
    }
}

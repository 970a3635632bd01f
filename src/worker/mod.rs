//! Workers: plan each erase request into per-bot tasks, execute tasks in bounded slices, and
//! dead-letter what cannot succeed, with the reason recorded.

pub mod dead;
pub mod plan;
pub mod task;

use std::sync::Arc;

use sqlx::PgPool;

use crate::{config::Config, contract::Limits, erase::Throttle, queue::publisher::Publisher};

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
            throttle: Throttle::new(config.max_rows_per_second, config.max_rows_per_second_total),
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
}

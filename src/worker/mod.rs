//! Workers: plan each erase request into per-bot tasks ([`plan`]), execute tasks in bounded
//! slices ([`task`]), and dead-letter what cannot succeed ([`dead`]). Both are [`job::Job`]s:
//! a parse and an execute step that tests call directly, run by one dispatcher
//! ([`job::Runner`]) that maps their outcome to ack, hand back or dead-letter.

pub mod dead;
pub mod job;
pub mod plan;
pub mod task;

use sqlx::PgPool;

use crate::{config::Config, contract::Limits, erase::Throttle};

/// What the jobs' steps share: no broker (the dispatcher publishes what a step queued).
pub struct Ctx {
    pub pool: PgPool,
    pub config: Config,
    pub limits: Limits,
    pub throttle: Throttle,
}

impl Ctx {
    pub fn new(pool: PgPool, config: Config) -> Self {
        Self {
            limits: Limits::from_config(&config),
            throttle: Throttle::new(
                config.worker.max_rows_per_second,
                config.worker.max_rows_per_second_total,
            ),
            pool,
            config,
        }
    }
}

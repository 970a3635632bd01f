//! Workers: plan each erase request into per-bot tasks ([`plan`]), execute tasks in bounded
//! slices ([`task`]), and dead-letter what cannot succeed ([`dead`]). Both are [`job::Job`]s:
//! a parse and an execute step that tests call directly, run by one dispatcher
//! ([`job::Runner`]) that maps their outcome to ack, hand back or dead-letter.

pub mod dead;
pub mod job;
pub mod plan;
pub mod task;

use std::{collections::BTreeMap, sync::Arc};

use sqlx::PgPool;

use crate::{
    catalog::Catalog,
    config::Config,
    contract::Limits,
    erase::{Targets, Throttle},
};

/// What the jobs' steps share: no broker (the dispatcher publishes what a step queued).
pub struct Ctx {
    /// The service's own database.
    pub pool: PgPool,
    pub config: Config,
    pub limits: Limits,
    pub throttle: Throttle,
    /// What to erase, and where.
    pub targets: Arc<Targets>,
}

impl Ctx {
    pub fn new(config: Config, targets: Arc<Targets>) -> Self {
        Self {
            limits: Limits::from_config(&config),
            throttle: Throttle::new(
                config.worker.max_rows_per_second,
                config.worker.max_rows_per_second_total,
            ),
            pool: targets.main().clone(),
            config,
            targets,
        }
    }

    /// How long a step retries a database that fails transiently.
    pub fn retry_budget(&self) -> std::time::Duration {
        self.config.database.retry_budget
    }

    /// A context erasing the built-in catalog from `pool` (tests).
    pub fn built_in(pool: PgPool, config: Config) -> Self {
        let key = config.keys.pii_hmac_key.bytes.clone();
        let targets = Targets::new(Arc::new(Catalog::built_in()), pool, BTreeMap::new(), &key);
        Self::new(config, Arc::new(targets))
    }
}

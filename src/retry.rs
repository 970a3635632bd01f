//! The one retry helper: exponential backoff with jitter (`backon`) for transient database
//! errors. Everything that talks to PostgreSQL from a worker goes through it.

use std::{future::Future, time::Duration};

use backon::{ExponentialBuilder, Retryable};

use crate::store;

fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(12)
        .with_jitter()
}

/// Every `what` passed to [`db`]: the `operation` label of `erasure_db_retries_total`, exported
/// at zero from the start (a test checks each call names one of these).
pub const OPERATIONS: [&str; 7] = [
    "plan",
    "load_task",
    "recheck_protection",
    "complete_task",
    "continue_task",
    "delete_batch",
    "record_dead_letter",
];

/// Runs `op`, retrying while it fails with a transient error (connection lost, serialization
/// failure, deadlock, timeout); returns the last error otherwise.
pub async fn db<T, F, Fut>(what: &'static str, op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    op.retry(policy())
        .when(store::is_transient)
        .notify(|e, wait| {
            metrics::counter!("erasure_db_retries_total", "operation" => what).increment(1);
            tracing::warn!(operation = what, error = %store::describe(e), retry_in_ms = wait.as_millis() as u64, "transient database error");
        })
        .await
}

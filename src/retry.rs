//! Every retry of the service goes through here: exponential backoff with jitter (`backon`).
//! [`transient`] retries an operation while its error is transient; [`reconnect_delays`]
//! paces the consumer's reconnect loop and the publisher's; [`broker`] retries a command's
//! broker work on another node; [`until_ready`] waits for the database at start.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use crate::store;

/// An error that may go away if the operation is tried again.
pub trait Transient: std::fmt::Debug {
    fn is_transient(&self) -> bool;
    /// A short, non-PII description for logs.
    fn describe(&self) -> String;
}

impl Transient for sqlx::Error {
    fn is_transient(&self) -> bool {
        store::is_transient(self)
    }
    fn describe(&self) -> String {
        store::describe(self)
    }
}

/// Retries for at most `budget` (`ERASURE_DB_RETRY_SECONDS`, a minute by default): long
/// enough to ride out a database failover or restart, short enough that a delivery is handed
/// back (not held) when the outage lasts.
fn policy(budget: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(8))
        .without_max_times()
        .with_total_delay(Some(budget))
        .with_jitter()
}

crate::telemetry::label_values! {
    /// What a retried operation was: the `operation` label of `erasure_db_retries_total`.
    pub enum Operation {
        Plan => "plan",
        LoadTask => "load_task",
        RecheckProtection => "recheck_protection",
        RejectProtected => "reject_protected",
        SyncCounts => "sync_counts",
        CompleteTask => "complete_task",
        ContinueTask => "continue_task",
        DeleteBatch => "delete_batch",
        RecordDeadLetter => "record_dead_letter",
        Verify => "verify",
        RecordProof => "record_proof",
        RedeliveryRuns => "redelivery_runs",
    }
}

/// Runs `op`, retrying while it fails with a transient error (connection lost, serialization
/// failure, deadlock, timeout) for at most `budget`; returns the last error otherwise.
pub async fn transient<T, E, F, Fut>(budget: Duration, what: Operation, op: F) -> Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    op.retry(policy(budget))
        .when(E::is_transient)
        .notify(|e: &E, wait| {
            metrics::counter!("erasure_db_retries_total", "operation" => what.label()).increment(1);
            tracing::warn!(operation = what.label(), error = %e.describe(), retry_in_ms = wait.as_millis() as u64, "transient database error");
        })
        .await
}

/// Delays between a consumer's reconnection attempts: from 200 ms, doubling up to 10 s,
/// jittered so that replicas that lost the broker together do not return together; endless.
pub fn reconnect_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Up to 8 attempts from `first` apart, doubling to at most 5 s, jittered.
fn eight_attempts(first: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(8)
        .with_jitter()
}

/// Runs `op` again (it connects to the next node that answers) while it fails because its
/// broker connection was lost or no node answered: up to 8 attempts over about half a minute,
/// enough for a cluster to elect new leaders or a node to come back. For the commands
/// (`redrive`, `queue stats`); the service's own loops use [`reconnect_delays`].
pub async fn broker<T, F, Fut>(what: &'static str, op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    op.retry(eight_attempts(Duration::from_millis(200)))
        .when(crate::queue::connection_lost)
    .notify(|e, wait| tracing::warn!(operation = what, error = %e, retry_in_ms = wait.as_millis() as u64, "broker connection lost; retrying"))
    .await
}

/// Runs `op` until it succeeds, up to 8 attempts over about half a minute (a process that
/// starts with its dependencies, which may still be starting).
pub async fn until_ready<T, F, Fut>(what: &'static str, op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    op.retry(eight_attempts(Duration::from_secs(1)))
        .notify(|e, wait| tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} not ready"))
    .await
}

/// The delay before retry number `attempt` (from 1) of a callback, per its schedule
/// (`ERASURE_CALLBACK_SCHEDULE`), jittered by up to ±10% so that callbacks that failed
/// together (a receiver down) do not all come back at once; `None` once the schedule is spent.
pub fn callback_delay(schedule: &[Duration], attempt: u32) -> Option<Duration> {
    let base = *schedule.get((attempt as usize).checked_sub(1)?)?;
    Some(base.mul_f64(rand::random_range(0.9..=1.1)))
}

#[cfg(test)]
mod callback_tests {
    use super::*;

    #[test]
    fn a_callback_retries_per_its_schedule_with_jitter_then_stops() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        let first = callback_delay(&schedule, 1).unwrap();
        assert!(first >= Duration::from_millis(4500) && first <= Duration::from_millis(5500));
        let second = callback_delay(&schedule, 2).unwrap();
        assert!(second >= Duration::from_secs(270) && second <= Duration::from_secs(330));
        assert_eq!(callback_delay(&schedule, 3), None);
        assert_eq!(callback_delay(&schedule, 0), None);
    }
}

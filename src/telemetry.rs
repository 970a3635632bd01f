//! Logs (tracing; JSON with `ERASURE_LOG_FORMAT=json`) and the Prometheus recorder.
//! Personal identifiers are never logged: spans carry request and bot ids only.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{config::LogFormat, store::requests::Settled};

/// Installs the global subscriber once; later calls are no-ops. Logs go to stderr.
/// `filter` was validated with the configuration (`ERASURE_LOG`).
pub fn init_logs(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
}

/// The process-wide Prometheus handle (installed on first use).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("non-empty buckets")
                // A request lives from seconds (one small bot) to hours (a user with millions
                // of rows under a rows-per-second ceiling).
                .set_buckets_for_metric(
                    Matcher::Full("erasure_request_duration_seconds".into()),
                    &[
                        0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0,
                        86_400.0,
                    ],
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "erasure_intake_requests_total",
        "Erase calls at the intake by outcome (accepted, replayed, refused) and refusal reason"
    );
    describe_histogram!(
        "erasure_intake_seconds",
        Unit::Seconds,
        "Time to answer an erase call"
    );
    describe_counter!(
        "erasure_requests_finished_total",
        "Requests settled, by final status (completed, rejected, failed)"
    );
    describe_histogram!(
        "erasure_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's creation to its settling, by final status"
    );
    describe_counter!(
        "erasure_tasks_planned_total",
        "Per-bot tasks created by planning"
    );
    describe_counter!(
        "erasure_tasks_started_total",
        "Tasks whose first slice began"
    );
    describe_counter!(
        "erasure_tasks_completed_total",
        "Tasks drained and counted done"
    );
    describe_counter!(
        "erasure_tasks_retried_total",
        "Task deliveries requeued after a transient error"
    );
    describe_counter!(
        "erasure_dead_lettered_total",
        "Messages moved to the dead-letter queue, by kind"
    );
    describe_counter!(
        "erasure_poison_messages_total",
        "Messages that could not be parsed"
    );
    describe_counter!(
        "erasure_rows_deleted_total",
        "Platform rows deleted, by store"
    );
    describe_histogram!(
        "erasure_delete_batch_seconds",
        Unit::Seconds,
        "Duration of one batch delete statement, by store"
    );
    describe_gauge!(
        "erasure_delete_batch_max_seconds",
        Unit::Seconds,
        "Longest single batch delete statement this process has run"
    );
    describe_histogram!(
        "erasure_task_slice_seconds",
        Unit::Seconds,
        "Duration of one task delivery (a slice)"
    );
    describe_gauge!(
        "erasure_outbox_backlog",
        "Messages committed but not yet confirmed by the broker"
    );
    describe_counter!(
        "erasure_outbox_relayed_total",
        "Messages published by the outbox relay (not by the fast path)"
    );
    describe_gauge!(
        "erasure_consumer_up",
        "1 while the consumer of a queue is attached"
    );
    describe_counter!(
        "erasure_consumer_reconnects_total",
        "Consumer reconnections after a lost connection"
    );
    describe_counter!(
        "erasure_db_retries_total",
        "Database operations retried after a transient error"
    );
}

/// An enum whose variants are the values of a metric label: `ALL` (exported at zero from the
/// start) and `label` (what is recorded) both come from the one list written here.
macro_rules! label_values {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}
pub(crate) use label_values;

/// Counts a request that this process just settled and records how long it took, creation to
/// settling (read by the same statement that settled it).
pub fn record_settled(settled: &Settled) {
    metrics::counter!("erasure_requests_finished_total", "status" => settled.status.clone())
        .increment(1);
    metrics::histogram!("erasure_request_duration_seconds", "status" => settled.status.clone())
        .record(settled.seconds.max(0.0));
}

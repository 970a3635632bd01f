//! Logs (tracing; JSON with `ERASURE_LOG_FORMAT=json`) and the Prometheus recorder.
//! Personal identifiers are never logged: spans carry request and bot ids only.
//! Every metric family is declared once, in [`FAMILIES`], with the label values it takes, so
//! that `/metrics` shows each counter and histogram at zero from the first scrape.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{
    catalog::{ANONYMIZE, Catalog, DELETE},
    config::LogFormat,
    domain::RequestStatus,
    intake::error::Outcome,
    retry,
    startup::Consumer,
    worker::job::{JOB_KINDS, Step},
};

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

/// The process-wide Prometheus handle (installed on first use); [`register`] describes the
/// families and registers their known series.
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
            handle
        })
        .clone()
}

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
    Gauge,
}

/// A metric family: its name, kind and help text, and every label set it is known to take.
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// The series exported at zero before anything is recorded, so that `rate()` and
    /// absent-alerts see the family from the first scrape.
    pub series: fn(&Catalog) -> Vec<Labels>,
}

impl Kind {
    /// A family of this kind.
    const fn family(
        self,
        name: &'static str,
        help: &'static str,
        series: fn(&Catalog) -> Vec<Labels>,
    ) -> Family {
        Family {
            name,
            kind: self,
            help,
            series,
        }
    }
}

/// A gauge appears when first set, never before: its zero would be a claim, not the absence
/// of events (`erasure_consumer_up` 0 reads "detached" on an intake that runs no consumer).
const fn gauge(name: &'static str, help: &'static str) -> Family {
    Kind::Gauge.family(name, help, |_| Vec::new())
}

fn unlabelled(_: &Catalog) -> Vec<Labels> {
    vec![Vec::new()]
}

fn each<V: Into<String>>(label: &'static str, values: impl IntoIterator<Item = V>) -> Vec<Labels> {
    values
        .into_iter()
        .map(|v| vec![(label, v.into())])
        .collect()
}

/// The stores of the catalog that `action` erases.
fn stores(catalog: &Catalog, action: &str) -> Vec<Labels> {
    each("store", catalog.names(action))
}

/// The stores erased by their own keys: each batch is one of theirs, children included.
fn roots(catalog: &Catalog) -> Vec<Labels> {
    each("store", catalog.roots().map(|(_, s)| s.name.clone()))
}

fn settled(_: &Catalog) -> Vec<Labels> {
    each(
        "status",
        RequestStatus::ALL
            .iter()
            .filter(|s| s.is_settled())
            .map(|s| s.as_str()),
    )
}

fn kinds(_: &Catalog) -> Vec<Labels> {
    each("kind", JOB_KINDS)
}

/// Every metric family the service records, each with the label values the code draws its
/// labels from. A new metric is one more line here.
pub const FAMILIES: &[Family] = &[
    Kind::Counter.family(
        "erasure_intake_requests_total",
        "Erase calls at the intake by outcome (accepted, replayed, refused) and refusal reason",
        |_| {
            Outcome::all()
                .map(|o| {
                    o.labels()
                        .iter()
                        .map(|(k, v)| (*k, v.to_string()))
                        .collect()
                })
                .collect()
        },
    ),
    Kind::Histogram.family(
        "erasure_intake_seconds",
        "Time to answer an erase call",
        unlabelled,
    ),
    Kind::Counter.family(
        "erasure_requests_finished_total",
        "Requests settled, by final status (completed, rejected, failed, cancelled)",
        settled,
    ),
    Kind::Histogram.family(
        "erasure_request_duration_seconds",
        "Time from a request's creation to its settling, by final status",
        settled,
    ),
    Kind::Counter.family(
        "erasure_callbacks_total",
        "Callback attempts, by outcome (delivered, retry, gone, failed)",
        |_| {
            crate::store::callbacks::Attempt::LABELS
                .iter()
                .map(|o| vec![("outcome", o.to_string())])
                .collect()
        },
    ),
    Kind::Counter.family(
        "erasure_tasks_planned_total",
        "Per-bot tasks created by planning",
        unlabelled,
    ),
    Kind::Counter.family(
        "erasure_tasks_started_total",
        "Tasks whose first slice began",
        unlabelled,
    ),
    Kind::Counter.family(
        "erasure_tasks_completed_total",
        "Tasks drained and counted done",
        unlabelled,
    ),
    Kind::Counter.family(
        "erasure_task_messages_skipped_total",
        "Task messages never published: the delivery that planned their request erased its rows at once",
        unlabelled,
    ),
    Kind::Counter.family(
        "erasure_handed_back_total",
        "Deliveries handed back (republished) after a transient error, by kind (plan, task)",
        kinds,
    ),
    Kind::Counter.family(
        "erasure_redeliveries_total",
        "Deliveries the broker had delivered before (x-delivery-count above 0), by queue: a burst follows a lost connection or node",
        |_| each("queue", Consumer::ALL.iter().map(|c| c.label())),
    ),
    Kind::Counter.family(
        "erasure_job_steps_total",
        "Deliveries handled, by kind (plan, task) and step (planned, settled_at_planning, duplicate, drained, continued, stale)",
        |_| {
            JOB_KINDS
                .into_iter()
                .flat_map(|k| {
                    Step::NAMES.map(|s| vec![("kind", k.to_string()), ("step", s.to_string())])
                })
                .collect()
        },
    ),
    Kind::Histogram.family(
        "erasure_job_group_messages",
        "Messages worked together by one delivery round of a consumer (ERASURE_COALESCE at most), by kind (plan, task)",
        kinds,
    ),
    Kind::Counter.family(
        "erasure_dead_lettered_total",
        "Messages moved to the dead-letter queue, by kind (plan, task)",
        kinds,
    ),
    Kind::Counter.family(
        "erasure_poison_messages_total",
        "Messages that could not be parsed, by kind (plan, task)",
        kinds,
    ),
    Kind::Counter.family(
        "erasure_rows_deleted_total",
        "Platform rows deleted, by store",
        |c| stores(c, DELETE),
    ),
    Kind::Counter.family(
        "erasure_rows_anonymized_total",
        "Platform rows kept but anonymized, by store",
        |c| stores(c, ANONYMIZE),
    ),
    Kind::Counter.family(
        "erasure_late_rows_total",
        "Rows written after a request's last batch, found and erased by its verification, by store",
        |c| each("store", c.stores.iter().map(|s| s.name.clone())),
    ),
    Kind::Histogram.family(
        "erasure_delete_batch_seconds",
        "Duration of one batch delete statement, by store",
        roots,
    ),
    gauge(
        "erasure_delete_batch_max_seconds",
        "Longest single batch delete statement this process has run",
    ),
    Kind::Histogram.family(
        "erasure_task_slice_seconds",
        "Duration of one task slice: a task message's delivery, or the erase at planning of small requests",
        unlabelled,
    ),
    gauge(
        "erasure_outbox_backlog",
        "Messages committed but not yet confirmed by the broker",
    ),
    Kind::Counter.family(
        "erasure_outbox_relayed_total",
        "Messages published by the outbox relay (not by the fast path)",
        unlabelled,
    ),
    gauge(
        "erasure_consumer_up",
        "1 while the consumer of a queue is attached",
    ),
    Kind::Counter.family(
        "erasure_consumer_reconnects_total",
        "Consumer reconnections after a lost connection",
        |_| each("queue", Consumer::ALL.iter().map(|c| c.label())),
    ),
    Kind::Counter.family(
        "erasure_db_retries_total",
        "Database operations retried after a transient error",
        |_| each("operation", retry::Operation::ALL.iter().map(|o| o.label())),
    ),
];

/// Describes every family and registers its known series (the stores' from the target
/// catalog), which the exporter then renders at zero. Called once the catalog is read.
pub fn register(catalog: &Catalog) {
    for family in FAMILIES {
        // Every duration is in seconds, and only durations are.
        let unit = family
            .name
            .ends_with("_seconds")
            .then_some(metrics::Unit::Seconds);
        metrics::with_recorder(|r| {
            let (name, help) = (family.name.into(), family.help.into());
            match family.kind {
                Kind::Counter => r.describe_counter(name, unit, help),
                Kind::Histogram => r.describe_histogram(name, unit, help),
                Kind::Gauge => r.describe_gauge(name, unit, help),
            }
        });
        for labels in (family.series)(catalog) {
            match family.kind {
                Kind::Counter => drop(metrics::counter!(family.name, &labels)),
                Kind::Histogram => drop(metrics::histogram!(family.name, &labels)),
                Kind::Gauge => {}
            }
        }
    }
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
/// settling (read by the statement that settled it). Called by the store's settling arrows.
pub fn record_settled(status: RequestStatus, seconds: f64) {
    metrics::counter!("erasure_requests_finished_total", "status" => status.as_str()).increment(1);
    metrics::histogram!("erasure_request_duration_seconds", "status" => status.as_str())
        .record(seconds.max(0.0));
}

//! Builds the service from a configuration and runs its roles until cancelled. Tests start
//! it in-process; `erasure serve` starts it from `main`.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    callback,
    catalog::CatalogError,
    config::{Config, DbPooler},
    contract::Limits,
    erase::Targets,
    intake::{self, IntakeState, ratelimit::RateLimiter},
    queue::{
        Topology,
        consumer::{self, ConsumerSpec},
        publisher::Publisher,
    },
    receipt, relay, retention, retry, store, telemetry, verify,
    worker::{Ctx, job::Runner, plan::PlanJob, task::TaskJob},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Intake, outbox relay and workers.
    All,
    /// HTTP intake and outbox relay.
    Intake,
    /// Workers and outbox relay; HTTP serves only /healthz, /readyz and /metrics.
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Intake => "intake",
            Role::Worker => "worker",
        }
    }
    fn intake(self) -> bool {
        matches!(self, Role::All | Role::Intake)
    }
    fn worker(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// A running service.
pub struct Running {
    pub http_addr: SocketAddr,
    pub cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops everything gracefully and waits for it.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.wait().await;
    }

    /// Waits until the service has stopped (after `cancel` fired).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

crate::telemetry::label_values! {
    /// The consumers a worker runs, by the `queue` label of their metrics and readiness checks.
    pub enum Consumer {
        Requests => "requests",
        Tasks => "tasks",
    }
}

pub async fn start(config: Config, role: Role) -> anyhow::Result<Running> {
    crate::client::install_tls();
    let metrics = telemetry::metrics();
    let pool = retry::until_ready("database", || {
        store::open(&config.database, config.database.max_connections)
    })
    .await
    .context("connecting to PostgreSQL and applying migrations")?;
    if config.database.pooler == DbPooler::Transaction && config.database.migration_url.is_none() {
        store::check_migrated(&pool).await?;
    }
    let receipts = receipt_keys(&config, role)?;
    warn_about_development_keys(&config);
    let targets = Arc::new(
        Targets::connect(&config, pool.clone())
            .await
            .context("reading the target catalog (ERASURE_TARGETS)")?,
    );
    if role.worker() {
        check_targets(&targets).await?;
    }
    telemetry::register(&targets.catalog);
    let topology = Topology::from_settings(&config.queue);
    let publisher = Arc::new(Publisher::new(
        &config.queue.amqp_url,
        &format!("{}-publisher", role.name()),
        topology.clone(),
    ));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let consumers = if role.worker() {
        let deliverer = callback::Deliverer::new(&config, pool.clone(), targets.catalog.clone())?;
        tracker.spawn(callback::deliver::run(Arc::new(deliverer), cancel.clone()));
        spawn_workers(&config, &targets, &publisher, &topology, &tracker, &cancel).await
    } else {
        Vec::new()
    };
    tracker.spawn(
        publisher
            .clone()
            .publish_in_background(pool.clone(), cancel.clone()),
    );
    tracker.spawn(relay::run(
        pool.clone(),
        publisher.clone(),
        config.queue.outbox_poll,
        cancel.clone(),
    ));
    tracker.spawn(retention::run(pool.clone(), config.clone(), cancel.clone()));

    let state = IntakeState {
        pool: pool.clone(),
        catalog: targets.catalog.clone(),
        config: Arc::new(config.clone()),
        limits: Limits::from_config(&config),
        publisher: publisher.clone(),
        metrics,
        consumers,
        rate: Arc::new(RateLimiter::new(
            config.http.rate_limit_per_app,
            config.http.rate_limit_burst,
        )),
        receipts,
    };
    let app = intake::router(state, role.intake());
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("binding ERASURE_HTTP_ADDR={}", config.http.addr))?;
    let http_addr = listener.local_addr()?;
    let c = cancel.clone();
    tracker.spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { c.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(role = role.name(), http = %http_addr, "erasure started");
    Ok(Running {
        http_addr,
        cancel,
        tracker,
    })
}

fn warn_about_development_keys(config: &Config) {
    if !config.keys.secret_key.configured {
        tracing::warn!(
            "ERASURE_SECRET_KEY is not set: app secrets are sealed with the built-in development key"
        );
    }
    if !config.keys.pii_hmac_key.configured {
        tracing::warn!(
            "ERASURE_PII_HMAC_KEY is not set: identifiers are redacted with the built-in development key"
        );
    }
}

/// The receipt keys of a process that serves the API (an intake); a worker signs nothing, so
/// it needs no key file mounted.
fn receipt_keys(config: &Config, role: Role) -> anyhow::Result<Option<Arc<receipt::Keys>>> {
    if !role.intake() {
        return Ok(None);
    }
    let keys = receipt::Keys::load(&config.proof).context("loading the receipt signing keys")?;
    if config.proof.receipt_key_file.is_none() {
        tracing::warn!(
            "ERASURE_RECEIPT_KEY_FILE is not set: receipts are signed with the built-in development key, which proves nothing"
        );
    }
    Ok(Some(Arc::new(keys)))
}

/// Starts one consumer per worker queue, each running its job; returns their readiness flags.
async fn spawn_workers(
    config: &Config,
    targets: &Arc<Targets>,
    publisher: &Arc<Publisher>,
    topology: &Topology,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Vec<(&'static str, Arc<AtomicBool>)> {
    let warm = (config.worker.concurrency + 1).min(config.database.max_connections as usize);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), crate::erase::warm_up(targets, warm)).await;
    let ctx = Arc::new(Ctx::new(config.clone(), targets.clone()));
    let spec = |name: &'static str, queue: String, prefetch: u16| ConsumerSpec {
        brokers: (&config.queue.amqp_url).into(),
        queue,
        name,
        prefetch,
        concurrency: config.worker.concurrency,
        grace: config.worker.shutdown_grace,
        topology: topology.clone(),
        up: Arc::new(AtomicBool::new(false)),
    };
    let requests = spec(
        Consumer::Requests.label(),
        topology.requests_queue(),
        config.queue.requests_prefetch,
    );
    let tasks = spec(
        Consumer::Tasks.label(),
        topology.tasks_queue(),
        config.queue.prefetch,
    );
    let consumers = vec![
        (requests.name, requests.up.clone()),
        (tasks.name, tasks.up.clone()),
    ];
    let plan = Runner::new(PlanJob, ctx.clone(), publisher.clone());
    tracker.spawn(consumer::run(requests, Arc::new(plan), cancel.clone()));
    tracker.spawn(verify::run(ctx.clone(), cancel.clone()));
    let task = Runner::new(TaskJob, ctx, publisher.clone());
    tracker.spawn(consumer::run(tasks, Arc::new(task), cancel.clone()));
    consumers
}

/// The same check as `erasure targets check`, at every start of a process that erases: a
/// catalog that does not match its databases stops the process, naming the store and field; a
/// store without an index that serves its delete is a warning naming the index to create. A
/// database that is down is only a warning: its tasks wait and retry until it is back.
async fn check_targets(targets: &Targets) -> anyhow::Result<()> {
    let report = targets.check(Duration::from_secs(5)).await?;
    for w in report.unreachable.iter().chain(&report.warnings) {
        match &w.create_index {
            Some(sql) => tracing::warn!(create_index = %sql, "target catalog: {}", w.describe()),
            None => tracing::warn!("target catalog: {}", w.describe()),
        }
    }
    if !report.errors.is_empty() {
        return Err(CatalogError {
            origin: targets.catalog.source.clone(),
            problems: report.errors,
        }
        .into());
    }
    Ok(())
}

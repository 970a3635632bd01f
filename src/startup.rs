//! Builds the service from a configuration and runs its roles until cancelled. Tests start
//! it in-process; `erasure serve` starts it from `main`.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    contract::Limits,
    intake::{self, IntakeState, ratelimit::RateLimiter},
    queue::{
        Topology,
        consumer::{self, ConsumerSpec},
        publisher::Publisher,
    },
    relay, retention, store, telemetry,
    worker::{Ctx, plan::RequestHandler, task::TaskHandler},
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
    let metrics = telemetry::metrics();
    let pool = (|| store::connect_and_migrate(&config.database_url, config.db_max_connections, config.statement_timeout))
        .retry(ExponentialBuilder::default().with_max_times(8).with_max_delay(Duration::from_secs(5)).with_jitter())
        .notify(|e, wait| tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database not ready"))
        .await
        .context("connecting to PostgreSQL and applying migrations")?;
    warn_of_development_keys(&config);
    let topology = Topology::new(&config.queue_prefix, config.max_deliveries);
    let role_name = match role {
        Role::All => "all",
        Role::Intake => "intake",
        Role::Worker => "worker",
    };
    let publisher = Arc::new(Publisher::new(
        &config.amqp_url,
        &format!("{role_name}-publisher"),
        topology.clone(),
    ));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();

    let consumers = if role.worker() {
        spawn_consumers(&tracker, &cancel, &pool, &config, &topology, &publisher).await
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
        config.outbox_poll,
        cancel.clone(),
    ));
    tracker.spawn(retention::run(pool.clone(), config.clone(), cancel.clone()));

    let state = IntakeState {
        pool: pool.clone(),
        config: Arc::new(config.clone()),
        limits: Limits::from_config(&config),
        publisher: publisher.clone(),
        metrics,
        consumers,
        rate: Arc::new(RateLimiter::new(
            config.rate_limit_per_app,
            config.rate_limit_burst,
        )),
    };
    let app = intake::router(state, role.intake());
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding ERASURE_HTTP_ADDR={}", config.http_addr))?;
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
    tracing::info!(role = role_name, http = %http_addr, "erasure started");
    Ok(Running {
        http_addr,
        cancel,
        tracker,
    })
}

fn warn_of_development_keys(config: &Config) {
    if !config.secret_key.configured {
        tracing::warn!(
            "ERASURE_SECRET_KEY is not set: app secrets are sealed with the built-in development key"
        );
    }
    if !config.pii_hmac_key.configured {
        tracing::warn!(
            "ERASURE_PII_HMAC_KEY is not set: identifiers are redacted with the built-in development key"
        );
    }
}

/// Starts a worker's consumers in `tracker`; returns each one's name and attachment flag.
async fn spawn_consumers(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    pool: &sqlx::PgPool,
    config: &Config,
    topology: &Topology,
    publisher: &Arc<Publisher>,
) -> Vec<(&'static str, Arc<AtomicBool>)> {
    let warm = (config.worker_concurrency + 1).min(config.db_max_connections as usize);
    let _ = tokio::time::timeout(Duration::from_secs(5), crate::erase::warm_up(pool, warm)).await;
    let ctx = Arc::new(Ctx::new(pool.clone(), config.clone(), publisher.clone()));
    let mut consumers = Vec::new();
    for &which in Consumer::ALL {
        let up = Arc::new(AtomicBool::new(false));
        consumers.push((which.label(), up.clone()));
        let spec = ConsumerSpec {
            url: config.amqp_url.clone(),
            queue: match which {
                Consumer::Requests => topology.requests_queue(),
                Consumer::Tasks => topology.tasks_queue(),
            },
            name: which.label(),
            prefetch: config.prefetch,
            concurrency: config.worker_concurrency,
            grace: config.shutdown_grace,
            topology: topology.clone(),
            up,
        };
        let c = cancel.clone();
        match which {
            Consumer::Requests => tracker.spawn(consumer::run(
                spec,
                Arc::new(RequestHandler(ctx.clone())),
                c,
            )),
            Consumer::Tasks => {
                tracker.spawn(consumer::run(spec, Arc::new(TaskHandler(ctx.clone())), c))
            }
        };
    }
    consumers
}

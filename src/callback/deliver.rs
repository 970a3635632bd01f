//! The delivery loop: claims due callbacks (leased, `FOR UPDATE SKIP LOCKED`, so replicas
//! share them and a process that dies mid-attempt leaves them due again), POSTs each signed,
//! and records the attempt: `delivered` (2xx), a retry after the schedule's next delay
//! (anything else, a timeout, no connection), `gone` (410), or `failed` (schedule spent, or
//! an address callbacks may not reach).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{
    sign,
    ssrf::{self, AddressRefused, AllowList, GuardedResolver},
};
use crate::{
    catalog::Catalog,
    config::Config,
    domain::UserStatus,
    retry, secrets,
    store::{
        self, apps,
        callbacks::{self, Attempt, Due},
        requests,
    },
};

/// How long one attempt may take (DESIGN.md section 10).
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// A claim's lease: longer than an attempt, so that only a dead process's claims come back.
const LEASE: Duration = Duration::from_secs(20);
/// How often the loop looks for due callbacks, and how many it sends at once.
const POLL: Duration = Duration::from_millis(500);
const BATCH: i64 = 16;

/// What delivering needs: the database, the catalog (the body's `rowsDeleted`), the HTTP
/// client that cannot reach forbidden addresses, the schedule and the key opening secrets.
pub struct Deliverer {
    pool: PgPool,
    catalog: Arc<Catalog>,
    client: reqwest::Client,
    allow: Arc<AllowList>,
    schedule: Vec<Duration>,
    secret_key: Vec<u8>,
}

impl Deliverer {
    pub fn new(config: &Config, pool: PgPool, catalog: Arc<Catalog>) -> anyhow::Result<Self> {
        let allow = Arc::new(AllowList(config.callback.allow_hosts.clone()));
        Ok(Self {
            pool,
            catalog,
            client: client(allow.clone())?,
            allow,
            schedule: config.callback.schedule.clone(),
            secret_key: config.keys.secret_key.bytes.clone(),
        })
    }

    /// One pass: claims the due callbacks and attempts them all at once; how many.
    pub async fn deliver_due(&self) -> Result<usize, sqlx::Error> {
        let due = callbacks::claim_due(&self.pool, BATCH, LEASE).await?;
        let attempts = due.iter().map(|c| self.attempt(c));
        futures_util::future::join_all(attempts).await;
        Ok(due.len())
    }

    /// One attempt of one callback, recorded.
    async fn attempt(&self, c: &Due) {
        let _span =
            tracing::info_span!("callback", request_id = %c.request_id, webhook_id = %c.webhook_id);
        let attempt = match self.send(c).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "callback attempt could not be made");
                self.retry_or_fail(c, None)
            }
        };
        metrics::counter!("erasure_callbacks_total", "outcome" => attempt.label()).increment(1);
        tracing::info!(
            outcome = attempt.label(),
            attempt = c.attempts,
            "callback attempted"
        );
        if let Err(e) = callbacks::record(&self.pool, &c.webhook_id, attempt).await {
            // The lease runs out and the callback is attempted again: at least once.
            tracing::warn!(error = %store::describe(&e), "callback attempt not recorded");
        }
    }

    fn retry_or_fail(&self, c: &Due, status: Option<u16>) -> Attempt {
        match retry::callback_delay(&self.schedule, c.attempts.max(0) as u32) {
            Some(after) => Attempt::Retry { status, after },
            None => Attempt::Failed { status },
        }
    }

    async fn send(&self, c: &Due) -> anyhow::Result<Attempt> {
        let Ok(url) = ssrf::check_url(&c.url, &self.allow) else {
            return Ok(Attempt::Failed { status: None });
        };
        let keys = self.keys(c).await?;
        if keys.is_empty() {
            tracing::warn!("the app has no webhook secret: its callbacks cannot be signed");
            return Ok(Attempt::Failed { status: None });
        }
        let body = match &c.body {
            Some(b) => b.clone(),
            None => callbacks::fix_body(&self.pool, &c.webhook_id, &self.body(c).await?).await?,
        };
        let timestamp = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &c.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign::header(&keys, &c.webhook_id, timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        Ok(match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered {
                status: r.status().as_u16(),
            },
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(r) => self.retry_or_fail(c, Some(r.status().as_u16())),
            Err(e) if refused(&e) => Attempt::Failed { status: None },
            Err(_) => self.retry_or_fail(c, None),
        })
    }

    /// The HMAC keys of the app's webhook secrets that sign now.
    async fn keys(&self, c: &Due) -> anyhow::Result<Vec<Vec<u8>>> {
        let Some(client_id) = &c.client_id else {
            return Ok(Vec::new());
        };
        let sealed = apps::webhook_secrets(&self.pool, client_id).await?;
        Ok(sealed
            .iter()
            .filter_map(|s| secrets::open(&self.secret_key, s))
            .filter_map(|s| sign::key_of(std::str::from_utf8(&s).ok()?))
            .collect())
    }

    /// The event's body: counts only, no identifier of any user.
    async fn body(&self, c: &Due) -> anyhow::Result<Vec<u8>> {
        let doc = requests::status_document(&self.pool, &self.catalog, &c.request_id, None)
            .await?
            .context("the callback's request is gone")?;
        let count = |s: UserStatus| doc.response.iter().filter(|u| u.status == s).count();
        let body = serde_json::json!({
            "type": format!("erasure.request.{}", c.event),
            "timestamp": c.event_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": {
                "requestId": c.request_id,
                "status": c.event,
                "completedOn": doc.completed_on,
                "usersTotal": doc.response.len(),
                "usersErased": count(UserStatus::Success),
                "usersRejected": count(UserStatus::Rejected),
                "usersNotFound": count(UserStatus::NotFound),
                "rowsDeleted": doc.progress.rows_deleted,
            },
        });
        Ok(serde_json::to_vec(&body)?)
    }
}

/// The callbacks' client: no redirects, no proxy (it would connect on the callback's behalf,
/// past the address check), 15 s per attempt, names resolved through the guarded resolver.
fn client(allow: Arc<AllowList>) -> anyhow::Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS of callbacks")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent("erasure-callbacks/1")
        .dns_resolver(Arc::new(GuardedResolver { allow }))
        .tls_backend_preconfigured(tls)
        .build()
        .context("building the callbacks' HTTP client")
}

/// Whether an attempt failed because the host resolves only to forbidden addresses.
fn refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.is::<AddressRefused>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Delivers due callbacks until `cancel`; in every worker process.
pub async fn run(deliverer: Arc<Deliverer>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        loop {
            match deliverer.deliver_due().await {
                Ok(n) if (n as i64) == BATCH && !cancel.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %store::describe(&e), "callback pass failed");
                    break;
                }
            }
        }
    }
}

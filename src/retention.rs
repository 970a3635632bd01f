//! The retention job: once a request has been settled for `ERASURE_PII_RETENTION`, every copy
//! of a caller-given identifier in the service's own tables is replaced by its HMAC (or
//! dropped where no proof needs it). Runs inside every process; replicas skip each other's
//! requests. The redaction itself is a store arrow ([`crate::store::retention`]).
//!
//! Requests that are `failed` keep their identifiers until an operator redrives them and they
//! settle: a redrive must still know whom to erase. Dead-letter payloads are only the
//! operator's copy (the broker holds the message a redrive uses), so they are dropped once
//! older than the window whatever the request's state, including poison messages that named
//! no usable request id.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use crate::store::retention::Redacted;
use crate::{config::Config, secrets, store::retention};

pub async fn run(pool: PgPool, config: Config, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(config.retention.sweep) => {}
        }
        // Single-use tokens past their `exp` are forgotten (DESIGN.md section 10).
        if let Err(e) = crate::store::jtis::forget_expired(&pool).await {
            tracing::warn!(error = %crate::store::describe(&e), "forgetting expired token ids failed");
        }
        // A backlog (say, after downtime) is worked off in consecutive batches.
        while !cancel.is_cancelled() {
            match redact_once(&pool, &config).await {
                Ok(r) => {
                    if r != Redacted::default() {
                        tracing::info!(
                            requests = r.requests,
                            dead_letters = r.dead_letters,
                            "redacted identifiers past retention"
                        );
                    }
                    if r.requests < retention::BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %crate::store::describe(&e), "retention pass failed");
                    break;
                }
            }
        }
    }
}

/// One pass: redacts up to a batch of requests due for it, and every dead-letter payload past
/// the window.
pub async fn redact_once(pool: &PgPool, config: &Config) -> Result<Redacted, sqlx::Error> {
    let key = &config.keys.pii_hmac_key.bytes;
    retention::redact_due(pool, config.retention.pii_retention, |identifier| {
        secrets::pii_ref(key, identifier)
    })
    .await
}

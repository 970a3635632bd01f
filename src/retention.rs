//! The retention job: once a request has been settled for `ERASURE_PII_RETENTION`, every copy
//! of a caller-given identifier in the service's own tables is replaced by its HMAC (or
//! dropped where no proof needs it). Runs inside every process; replicas skip each other's
//! rows.
//!
//! Requests that are `failed` keep their identifiers until an operator redrives them and they
//! settle: a redrive must still know whom to erase. Dead-letter payloads are only the
//! operator's copy (the broker holds the message a redrive uses), so they are dropped once
//! older than the window whatever the request's state, including poison messages that named
//! no usable request id.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, secrets};

/// Requests redacted per transaction.
const BATCH: usize = 100;

pub async fn run(pool: PgPool, config: Config, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(config.retention.sweep) => {}
        }
        // A backlog (say, after downtime) is worked off in consecutive batches.
        while !cancel.is_cancelled() {
            match redact_once(
                &pool,
                &config.keys.pii_hmac_key.bytes,
                config.retention.pii_retention,
            )
            .await
            {
                Ok(r) => {
                    if r != Redacted::default() {
                        tracing::info!(
                            requests = r.requests,
                            dead_letters = r.dead_letters,
                            "redacted identifiers past retention"
                        );
                    }
                    if r.requests < BATCH {
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

/// What one pass redacted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redacted {
    pub requests: usize,
    pub dead_letters: u64,
}

/// Redacts up to [`BATCH`] requests due for it, and every dead-letter payload past the window.
pub async fn redact_once(
    pool: &PgPool,
    key: &[u8],
    retention: Duration,
) -> Result<Redacted, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM erasure.requests
          WHERE status IN ('completed', 'rejected') AND pii_redacted_at IS NULL
            AND completed_at < now() - make_interval(secs => $1::double precision)
          ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(retention.as_secs_f64())
    .bind(BATCH as i64)
    .fetch_all(&mut *tx)
    .await?;
    for id in &due {
        let users: Vec<(i32, String, Vec<String>)> = sqlx::query_as(
            "SELECT position, user_ref, resolved_user_ids FROM erasure.request_users WHERE request_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<serde_json::Value> = users
            .iter()
            .map(|(p, r, resolved)| {
                let r = if r.starts_with("hmac:") {
                    r.clone()
                } else {
                    secrets::pii_ref(key, r)
                };
                let ids: Vec<String> = resolved
                    .iter()
                    .map(|u| {
                        if u.starts_with("hmac:") {
                            u.clone()
                        } else {
                            secrets::pii_ref(key, u)
                        }
                    })
                    .collect();
                serde_json::json!({"position": p, "ref": r, "ids": ids})
            })
            .collect();
        sqlx::query(
            "UPDATE erasure.request_users u
                SET user_ref = o.ref, resolved_user_ids = ARRAY(SELECT jsonb_array_elements_text(o.ids))
               FROM jsonb_to_recordset($2) AS o(position integer, ref text, ids jsonb)
              WHERE u.request_id = $1 AND u.position = o.position",
        )
        .bind(id)
        .bind(serde_json::Value::Array(rows))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE erasure.requests SET erase_user_ids = '{}', pii_redacted_at = now() WHERE request_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE erasure.dead_letters SET payload = NULL WHERE request_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM erasure.outbox WHERE message_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    let dead_letters = sqlx::query(
        "UPDATE erasure.dead_letters SET payload = NULL
          WHERE payload IS NOT NULL
            AND created_at < now() - make_interval(secs => $1::double precision)",
    )
    .bind(retention.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Redacted {
        requests: due.len(),
        dead_letters,
    })
}

//! The redaction arrow of the retention job: a settled request's caller-given identifiers,
//! once past the retention window, are replaced by their HMAC in the service's tables (or
//! dropped where no proof needs them).

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};

use super::sql;
use crate::domain::{PlatformUserId, RequestId, RequestStatus, UserRef};

/// Requests redacted per transaction.
pub const BATCH: usize = 100;

/// What one pass redacted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redacted {
    pub requests: usize,
    pub dead_letters: u64,
}

/// Redacts up to [`BATCH`] settled requests past `retention` (`hmac` maps an identifier to
/// its replacement), and every dead-letter payload past it. Requests that are `failed` keep
/// their identifiers: a redrive must still know whom to erase. So do requests not yet proved
/// (`proved_at`, [`super::proofs`]): verifying needs the users' ids and a receipt's subjects
/// are hashed from the entries as given; the verification is due by the end of the window.
/// Replicas skip each other's requests.
pub async fn redact_due(
    pool: &PgPool,
    retention: Duration,
    hmac: impl Fn(&str) -> String,
) -> Result<Redacted, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    let due: Vec<RequestId> = sql::query_scalar(
        "SELECT request_id FROM erasure.requests
          WHERE status = ANY($3) AND pii_redacted_at IS NULL AND proved_at IS NOT NULL
            AND completed_at < now() - make_interval(secs => $1::double precision)
          ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(retention.as_secs_f64())
    .bind(BATCH as i64)
    .bind([
        RequestStatus::Completed,
        RequestStatus::Rejected,
        RequestStatus::Cancelled,
    ])
    .fetch_all(&mut *tx)
    .await?;
    for id in &due {
        redact_request(&mut tx, id, &hmac).await?;
    }
    let dead_letters = sql::query(
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

const REDACTED_PREFIX: &str = "hmac:";

async fn redact_request(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    hmac: &impl Fn(&str) -> String,
) -> Result<(), sqlx::Error> {
    let users: Vec<(i32, UserRef, Vec<PlatformUserId>)> = sql::query_as(
        "SELECT position, user_ref, resolved_user_ids FROM erasure.request_users WHERE request_id = $1",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    // Idempotent: a value already replaced keeps its HMAC.
    let redact = |v: &str| {
        if v.starts_with(REDACTED_PREFIX) {
            v.to_string()
        } else {
            hmac(v)
        }
    };
    let rows: Vec<serde_json::Value> = users
        .iter()
        .map(|(position, user_ref, resolved)| {
            let ids: Vec<String> = resolved.iter().map(|u| redact(u.as_str())).collect();
            serde_json::json!({"position": position, "ref": redact(user_ref.as_str()), "ids": ids})
        })
        .collect();
    sql::query(
        "UPDATE erasure.request_users u
            SET user_ref = o.ref, resolved_user_ids = ARRAY(SELECT jsonb_array_elements_text(o.ids))
           FROM jsonb_to_recordset($2) AS o(position integer, ref text, ids jsonb)
          WHERE u.request_id = $1 AND u.position = o.position",
    )
    .bind(id)
    .bind(serde_json::Value::Array(rows))
    .execute(&mut **tx)
    .await?;
    sql::query(
        "UPDATE erasure.requests SET erase_user_ids = '{}', pii_redacted_at = now() WHERE request_id = $1",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sql::query("UPDATE erasure.dead_letters SET payload = NULL WHERE request_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    sql::query("DELETE FROM erasure.outbox WHERE message_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

//! The service's record of what it dead-lettered and why.

use sqlx::{Postgres, Transaction};

pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    request_id: Option<&str>,
    routing_key: &str,
    reason: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO erasure.dead_letters (request_id, routing_key, reason, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(request_id)
    .bind(routing_key)
    .bind(reason)
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn mark_redriven(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE erasure.dead_letters SET redriven_at = now() WHERE request_id = $1 AND redriven_at IS NULL")
        .bind(request_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

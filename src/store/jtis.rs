//! Single-use tokens (`erasure.used_jtis`): the `jti`s apps with `--enforce-jti` used, shared
//! by every intake replica, kept until the token's `exp`.

use super::sql;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Records a token's first use: `true` the first time, `false` when the app used this `jti`
/// before and its `exp` has not passed (a replay). One indexed insert; a row of an expired
/// token, not swept yet, is taken over.
pub async fn use_once(
    pool: &PgPool,
    client_id: &str,
    jti: &str,
    expires_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    // A relaxed commit (see `super::begin_relaxed`): when the call it authenticates records
    // anything (an erase), that commit comes after this one and flushes the WAL up to itself,
    // this insert's commit included, before the call is answered; a status read it let through twice after a
    // database crash is harmless. It spares every call of such an app a second disk flush.
    let mut tx = super::begin_relaxed(pool).await?;
    let n = sql::query(
        "INSERT INTO erasure.used_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
          WHERE erasure.used_jtis.expires_at < now()",
    )
    .bind(client_id)
    .bind(jti)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n == 1)
}

/// Forgets the ids of tokens past their `exp` (the retention job); returns how many.
pub async fn forget_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sql::query("DELETE FROM erasure.used_jtis WHERE expires_at < now()")
            .execute(sql::on(pool))
            .await?
            .rows_affected(),
    )
}

//! Per-(request, bot) tasks: the unit of work that replicas share.

use sqlx::{PgPool, Postgres, Transaction};

use crate::contract::RequestId;

pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bot_ids: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO erasure.tasks (request_id, bot_id)
         SELECT $1, b FROM unnest($2::text[]) AS b
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(bot_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a worker needs to run a task.
#[derive(sqlx::FromRow, Debug)]
pub struct TaskRow {
    pub status: String,
    pub slice: i32,
    pub erase_user_ids: Vec<String>,
}

/// Reads the task and stamps its start. A relaxed commit (see [`super::begin_relaxed`]): the
/// stamp is informational, and a lost one is set again by the next delivery.
pub async fn load(
    pool: &PgPool,
    id: &RequestId,
    bot_id: &str,
) -> Result<Option<TaskRow>, sqlx::Error> {
    let mut tx = super::begin_relaxed(pool).await?;
    let row = sqlx::query_as(
        "UPDATE erasure.tasks t SET started_at = COALESCE(t.started_at, now())
           FROM erasure.requests r
          WHERE t.request_id = $1 AND t.bot_id = $2 AND r.request_id = t.request_id
          RETURNING t.status, t.slice, r.erase_user_ids",
    )
    .bind(id)
    .bind(bot_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Marks the task done unless it already is; `true` when this call did it, so that it is
/// counted exactly once.
pub async fn mark_done(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bot_id: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE erasure.tasks SET status = 'done', failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = $1 AND bot_id = $2 AND status <> 'done'",
    )
    .bind(id)
    .bind(bot_id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

/// Advances the task to its next slice if `slice` is still its current one; `false` for a
/// stale or duplicated delivery, which must not publish a continuation of its own.
pub async fn advance_slice(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bot_id: &str,
    slice: i32,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE erasure.tasks SET slice = slice + 1, updated_at = now()
          WHERE request_id = $1 AND bot_id = $2 AND slice = $3 AND status <> 'done'",
    )
    .bind(id)
    .bind(bot_id)
    .bind(slice)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1)
}

pub async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bot_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.tasks SET status = 'failed', failure_reason = $3, updated_at = now()
          WHERE request_id = $1 AND bot_id = $2 AND status <> 'done'",
    )
    .bind(id)
    .bind(bot_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rows deleted per store and bot, for the audit trail.
#[derive(sqlx::FromRow, Debug, serde::Serialize)]
pub struct TaskAudit {
    pub bot_id: String,
    pub status: String,
    pub rows_conversations: i64,
    pub rows_sessions: i64,
    pub rows_analytics: i64,
}

pub async fn audit(pool: &PgPool, id: &RequestId) -> Result<Vec<TaskAudit>, sqlx::Error> {
    sqlx::query_as(
        "SELECT bot_id, status, rows_conversations, rows_sessions, rows_analytics
           FROM erasure.tasks WHERE request_id = $1 ORDER BY bot_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

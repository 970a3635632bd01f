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

/// What a worker needs to run the tasks of a message: the request's users, and each task's
/// state.
#[derive(Debug)]
pub struct TaskGroup {
    pub erase_user_ids: Vec<String>,
    pub tasks: Vec<TaskState>,
}

#[derive(sqlx::FromRow, Debug)]
pub struct TaskState {
    pub bot_id: String,
    pub status: String,
    pub slice: i32,
}

/// Reads the request's users and the tasks of `bots`, and stamps their start. `None` when the
/// request or any of the tasks is unknown. A relaxed commit (see [`super::begin_relaxed`]):
/// the stamp is informational, and a lost one is set again by the next delivery.
pub async fn load(
    pool: &PgPool,
    id: &RequestId,
    bots: &[String],
) -> Result<Option<TaskGroup>, sqlx::Error> {
    let mut tx = super::begin_relaxed(pool).await?;
    let users: Option<Vec<String>> =
        sqlx::query_scalar("SELECT erase_user_ids FROM erasure.requests WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let tasks: Vec<TaskState> = sqlx::query_as(
        "UPDATE erasure.tasks SET started_at = COALESCE(started_at, now())
          WHERE request_id = $1 AND bot_id = ANY($2)
          RETURNING bot_id, status, slice",
    )
    .bind(id)
    .bind(bots)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match users {
        Some(erase_user_ids) if tasks.len() == bots.len() => Some(TaskGroup {
            erase_user_ids,
            tasks,
        }),
        _ => None,
    })
}

/// Marks the tasks of `bots` done where they are not yet; returns how many this call marked,
/// so that each is counted exactly once.
pub async fn mark_done(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bots: &[String],
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE erasure.tasks SET status = 'done', failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND status <> 'done'",
    )
    .bind(id)
    .bind(bots)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Advances to their next slice the tasks of `bots` whose current slice is still `slice`, and
/// returns their bots: the ones this delivery hands over to a continuation. A stale or
/// duplicated delivery gets none, and must not publish a continuation of its own.
pub async fn advance_slice(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bots: &[String],
    slice: i32,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE erasure.tasks SET slice = slice + 1, updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND slice = $3 AND status <> 'done'
          RETURNING bot_id",
    )
    .bind(id)
    .bind(bots)
    .bind(slice)
    .fetch_all(&mut **tx)
    .await
}

pub async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bots: &[String],
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.tasks SET status = 'failed', failure_reason = $3, updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND status <> 'done'",
    )
    .bind(id)
    .bind(bots)
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
           FROM erasure.task_totals WHERE request_id = $1 ORDER BY bot_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

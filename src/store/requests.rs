//! Requests and their users: recording, planning, settling, and the status document.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::contract::{
    self, EraseRequest, Progress, RequestId, RowsDeleted, StatusDocument, UserEntry, UserOutcome,
};

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Http,
    Queue,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Queue => "queue",
        }
    }
}

/// A request about to be recorded.
pub struct NewRequest<'a> {
    pub request_id: &'a RequestId,
    pub account_id: &'a str,
    pub requested_by: &'a str,
    pub source: Source,
    pub client_addr: Option<String>,
    pub request: &'a EraseRequest,
    pub idempotency_key: Option<&'a str>,
    pub body_digest: Option<String>,
    pub requested_at: Option<DateTime<Utc>>,
}

/// The request and its users, inserted together (`r`, `u`), nothing when the id exists.
/// Parameters: $1–$11 the request's columns, $12/$13 the users' refs and kinds.
macro_rules! insert_request_sql {
    () => {
        "WITH r AS (
            INSERT INTO erasure.requests
                 (request_id, account_id, requested_by, source, client_addr, remove_data_from_all_bots,
                  bot_ids, users_total, idempotency_key, body_digest, requested_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (request_id) DO NOTHING
             RETURNING request_id),
          u AS (
            INSERT INTO erasure.request_users (request_id, position, user_ref, kind)
             SELECT r.request_id, t.ord - 1, t.ref, t.kind
               FROM r, unnest($12::text[], $13::text[]) WITH ORDINALITY AS t(ref, kind, ord))"
    };
}

type ScalarQuery<'q, O> = sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// Binds $1–$13 of [`insert_request_sql`].
fn bind_request<'q, O>(
    q: ScalarQuery<'q, O>,
    r: &'q NewRequest<'_>,
    users: &'q UserColumns,
) -> ScalarQuery<'q, O> {
    q.bind(r.request_id)
        .bind(r.account_id)
        .bind(r.requested_by)
        .bind(r.source.as_str())
        .bind(&r.client_addr)
        .bind(r.request.remove_data_from_all_bots)
        .bind(&r.request.bot_ids)
        .bind(r.request.user_ids.len() as i32)
        .bind(r.idempotency_key)
        .bind(&r.body_digest)
        .bind(r.requested_at)
        .bind(&users.0)
        .bind(&users.1)
}

/// Inserts the request and its users in one statement; `false` when a request with this id
/// already exists (then nothing is written).
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    r: &NewRequest<'_>,
) -> Result<bool, sqlx::Error> {
    let users = user_columns(&r.request.user_ids);
    let inserted: i64 = bind_request(
        sqlx::query_scalar(concat!(insert_request_sql!(), " SELECT count(*) FROM r")),
        r,
        &users,
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(inserted == 1)
}

/// Records a new request, its users and its outbox message in ONE statement, hence one
/// round trip and one commit (the intake's hot path). Atomic like a transaction: either all
/// three are recorded or none. `None` when a request with this id already exists (then
/// nothing is written).
pub async fn insert_with_outbox(
    pool: &PgPool,
    r: &NewRequest<'_>,
    routing_key: &str,
    payload: &[u8],
) -> Result<Option<super::outbox::OutboxMessage>, sqlx::Error> {
    let users = user_columns(&r.request.user_ids);
    let id: Option<i64> = bind_request(
        sqlx::query_scalar(concat!(
            insert_request_sql!(),
            ", o AS (
                INSERT INTO erasure.outbox (routing_key, message_id, payload)
                 SELECT $14, r.request_id, $15 FROM r
                 RETURNING id)
             SELECT id FROM o"
        )),
        r,
        &users,
    )
    .bind(routing_key)
    .bind(payload)
    .fetch_optional(pool)
    .await?;
    Ok(id.map(|id| super::outbox::OutboxMessage {
        id,
        routing_key: routing_key.into(),
        message_id: r.request_id.to_string(),
        payload: payload.to_vec(),
    }))
}

/// The `user_ref` and `kind` columns of a request's users, in order.
type UserColumns = (Vec<String>, Vec<&'static str>);

fn user_columns(users: &[UserEntry]) -> UserColumns {
    let refs = users.iter().map(UserEntry::user_ref).collect();
    let kinds = users
        .iter()
        .map(|u| match u {
            UserEntry::Id(_) => "id",
            UserEntry::Channel { .. } => "channel",
        })
        .collect();
    (refs, kinds)
}

/// The first answer to an `Idempotency-Key`: its request id and the digest of its body.
pub async fn find_by_idempotency_key(
    pool: &PgPool,
    requested_by: &str,
    key: &str,
) -> Result<Option<(RequestId, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, body_digest FROM erasure.requests
          WHERE requested_by = $1 AND idempotency_key = $2",
    )
    .bind(requested_by)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// What the planner needs of a request, read under its row lock.
#[derive(sqlx::FromRow, Debug)]
pub struct PlanRow {
    pub account_id: String,
    pub planned: bool,
    pub status: String,
    pub remove_data_from_all_bots: bool,
    pub bot_ids: Vec<String>,
}

pub async fn lock_for_planning(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
) -> Result<Option<PlanRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, planned, status, remove_data_from_all_bots, bot_ids
           FROM erasure.requests WHERE request_id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
}

/// One `userIds` entry with the platform users it resolves to.
#[derive(sqlx::FromRow, Debug)]
pub struct ResolvedEntry {
    pub position: i32,
    pub user_ids: Vec<String>,
}

/// Maps every entry of the request to platform user ids: a string matches a user id, an
/// email (case-insensitively), an enterprise id or a channel user id on any channel; a channel
/// pair matches that channel's identity.
pub async fn resolve_users(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
) -> Result<Vec<ResolvedEntry>, sqlx::Error> {
    sqlx::query_as(
        "WITH e AS (
            SELECT position, kind, user_ref,
                   CASE WHEN kind = 'channel' THEN (user_ref::jsonb) ->> 'channelId' END AS channel_id,
                   CASE WHEN kind = 'channel' THEN (user_ref::jsonb) ->> 'channelUserId' END AS channel_user_id
              FROM erasure.request_users WHERE request_id = $1)
         SELECT e.position,
                COALESCE(array_agg(DISTINCT m.user_id ORDER BY m.user_id)
                         FILTER (WHERE m.user_id IS NOT NULL), '{}') AS user_ids
           FROM e
           LEFT JOIN LATERAL (
                SELECT u.id AS user_id FROM platform.users u WHERE e.kind = 'id' AND u.id = e.user_ref
                UNION SELECT u.id FROM platform.users u WHERE e.kind = 'id' AND lower(u.email) = lower(e.user_ref)
                UNION SELECT u.id FROM platform.users u WHERE e.kind = 'id' AND u.enterprise_id = e.user_ref
                UNION SELECT c.user_id FROM platform.channel_identities c
                       WHERE e.kind = 'id' AND c.channel_user_id = e.user_ref
                UNION SELECT c.user_id FROM platform.channel_identities c
                       WHERE e.kind = 'channel' AND c.channel_id = e.channel_id
                         AND c.channel_user_id = e.channel_user_id
           ) m ON true
          GROUP BY e.position
          ORDER BY e.position",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await
}

/// Why each protected user must not be erased, the strongest reason first.
pub async fn protected_users<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    user_ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (user_id) user_id, reason FROM (
             SELECT user_id, CASE role WHEN 'owner' THEN 'account_owner' ELSE 'account_member' END AS reason,
                    CASE role WHEN 'owner' THEN 1 ELSE 2 END AS rank
               FROM platform.account_members WHERE user_id = ANY($1)
             UNION ALL
             SELECT user_id, CASE role WHEN 'owner' THEN 'bot_owner' ELSE 'bot_co_developer' END,
                    CASE role WHEN 'owner' THEN 3 ELSE 4 END
               FROM platform.bot_collaborators WHERE user_id = ANY($1)
         ) p ORDER BY user_id, rank",
    )
    .bind(user_ids)
    .fetch_all(exec)
    .await
}

/// The strongest of several rejection reasons comes first: owner before member, account
/// before bot.
pub fn rejection_rank(reason: &str) -> u8 {
    match reason {
        "account_owner" => 1,
        "account_member" => 2,
        "bot_owner" => 3,
        _ => 4,
    }
}

/// Re-applies the rules of erasure to the users still to erase: an entry whose user has
/// become protected since planning (joined an account, became a bot's owner or co-developer)
/// is rejected with the reason, and its users leave the request's erase set. Returns the users
/// still to erase. Tasks call it at every slice, so a user protected meanwhile loses nothing
/// more than was already erased.
pub async fn reject_newly_protected(
    pool: &PgPool,
    id: &RequestId,
    erase_user_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    // The common case, nobody newly protected, costs one read and no transaction.
    let protected: HashMap<String, String> = protected_users(pool, erase_user_ids)
        .await?
        .into_iter()
        .collect();
    if protected.is_empty() {
        return Ok(erase_user_ids.to_vec());
    }
    let mut tx = pool.begin().await?;
    // Tasks of the same request agree on one outcome: they take turns on the request's row.
    sqlx::query("SELECT 1 FROM erasure.requests WHERE request_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let hit: Vec<&String> = protected.keys().collect();
    let entries: Vec<(i32, Vec<String>)> = sqlx::query_as(
        "SELECT position, resolved_user_ids FROM erasure.request_users
          WHERE request_id = $1 AND status = 'IN_PROGRESS' AND resolved_user_ids && $2",
    )
    .bind(id)
    .bind(&hit)
    .fetch_all(&mut *tx)
    .await?;
    for (position, users) in &entries {
        let reason = users
            .iter()
            .filter_map(|u| protected.get(u))
            .min_by_key(|r| rejection_rank(r));
        sqlx::query(
            "UPDATE erasure.request_users SET status = 'REJECTED', reason = $3
              WHERE request_id = $1 AND position = $2",
        )
        .bind(id)
        .bind(position)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    let remaining: Vec<String> = sqlx::query_scalar(
        "UPDATE erasure.requests r
            SET erase_user_ids = ARRAY(SELECT DISTINCT unnest(u.resolved_user_ids)
                                         FROM erasure.request_users u
                                        WHERE u.request_id = r.request_id AND u.status = 'IN_PROGRESS'),
                updated_at = now()
          WHERE request_id = $1 RETURNING erase_user_ids",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if !entries.is_empty() {
        tracing::warn!(
            entries = entries.len(),
            "users became protected after planning; they are rejected"
        );
    }
    Ok(remaining)
}

/// Marks the request planned with its users to erase and its number of tasks.
pub async fn mark_planned(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    erase_user_ids: &[String],
    tasks_total: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.requests
            SET planned = true, erase_user_ids = $2, tasks_total = $3, updated_at = now()
          WHERE request_id = $1",
    )
    .bind(id)
    .bind(erase_user_ids)
    .bind(tasks_total)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How a request ended, when a call settled it: its final status and how long it took from
/// creation (for the metrics, which count each request once).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Settled {
    pub status: String,
    pub seconds: f64,
}

/// Counts `tasks` finished tasks; settles the request when they were the last ones. Returns the
/// request's final status when this call settled it.
pub async fn count_tasks_done(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    tasks: u64,
) -> Result<Option<Settled>, sqlx::Error> {
    let (done, total): (i32, i32) = sqlx::query_as(
        "UPDATE erasure.requests SET tasks_done = tasks_done + $2, updated_at = now()
          WHERE request_id = $1 RETURNING tasks_done, tasks_total",
    )
    .bind(id)
    .bind(tasks as i32)
    .fetch_one(&mut **tx)
    .await?;
    if done >= total {
        settle(tx, id).await.map(Some)
    } else {
        Ok(None)
    }
}

/// Settles a request whose every task is done: users still in progress succeeded; the request
/// is `rejected` when every user was rejected, `completed` otherwise.
pub async fn settle(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
) -> Result<Settled, sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.request_users SET status = 'SUCCESS', reason = NULL
          WHERE request_id = $1 AND status IN ('IN_PROGRESS', 'FAILED')",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sqlx::query_as(
        "UPDATE erasure.requests r
            SET status = CASE WHEN NOT EXISTS (SELECT 1 FROM erasure.request_users u
                                                WHERE u.request_id = r.request_id AND u.status <> 'REJECTED')
                              THEN 'rejected' ELSE 'completed' END,
                failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = $1
         RETURNING status, extract(epoch FROM completed_at - created_at)::float8 AS seconds",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
}

/// Marks the request failed with a non-PII reason; users still in progress fail with it.
/// Returns how it ended when this call moved the request from `in-progress` to `failed` (a
/// request already failed only takes the newer reason), so that it is counted once.
pub async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    reason: &str,
) -> Result<Option<Settled>, sqlx::Error> {
    let was: Option<(String, f64)> = sqlx::query_as(
        "WITH prev AS (SELECT status FROM erasure.requests WHERE request_id = $1 FOR UPDATE)
         UPDATE erasure.requests r
            SET status = 'failed', failure_reason = $2, updated_at = now(),
                completed_at = CASE WHEN prev.status = 'failed' THEN r.completed_at ELSE now() END
           FROM prev
          WHERE r.request_id = $1 AND prev.status IN ('in-progress', 'failed')
         RETURNING prev.status, extract(epoch FROM r.completed_at - r.created_at)::float8",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE erasure.request_users SET status = 'FAILED', reason = $2
          WHERE request_id = $1 AND status IN ('IN_PROGRESS', 'FAILED')",
    )
    .bind(id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(was
        .filter(|(prev, _)| prev == "in-progress")
        .map(|(_, seconds)| Settled {
            status: "failed".into(),
            seconds,
        }))
}

/// Whether a refused erase message may fail the request it names: only a request of the
/// same account (when the message names one) that was not planned yet. A malformed duplicate
/// must not fail a request already under way, nor one of another account.
pub async fn refusable_by_message(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    account_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT planned AND ($2::text IS NULL OR account_id = $2)
           FROM erasure.requests WHERE request_id = $1",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(&mut **tx)
    .await
    .map(|v| v.unwrap_or(false))
}

/// Puts a failed request back in progress for a redrive: it resumes where it stopped.
pub async fn reopen(tx: &mut Transaction<'_, Postgres>, id: &RequestId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.requests SET status = 'in-progress', failure_reason = NULL, completed_at = NULL, updated_at = now()
          WHERE request_id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE erasure.request_users SET status = 'IN_PROGRESS', reason = NULL
          WHERE request_id = $1 AND status = 'FAILED'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE erasure.tasks SET status = 'pending', failure_reason = NULL, updated_at = now()
          WHERE request_id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    request_id: String,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    remove_data_from_all_bots: bool,
    tasks_total: i32,
    tasks_done: i32,
    failure_reason: Option<String>,
    conversations: i64,
    sessions: i64,
    analytics: i64,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    user_ref: String,
    kind: String,
    status: String,
    reason: Option<String>,
}

/// The status document of a request, if it belongs to `account_id` (or to any account when
/// `account_id` is `None`, for operators).
pub async fn status_document(
    pool: &PgPool,
    id: &RequestId,
    account_id: Option<&str>,
) -> Result<Option<StatusDocument>, sqlx::Error> {
    let row: Option<StatusRow> = sqlx::query_as(
        "SELECT r.request_id, r.status, r.created_at, r.updated_at, r.completed_at,
                r.remove_data_from_all_bots, r.tasks_total, r.tasks_done, r.failure_reason,
                COALESCE(sum(t.rows_conversations), 0)::bigint AS conversations,
                COALESCE(sum(t.rows_sessions), 0)::bigint AS sessions,
                COALESCE(sum(t.rows_analytics), 0)::bigint AS analytics
           FROM erasure.requests r LEFT JOIN erasure.task_totals t USING (request_id)
          WHERE r.request_id = $1 AND ($2::text IS NULL OR r.account_id = $2)
          GROUP BY r.request_id",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let users: Vec<UserRow> = sqlx::query_as(
        "SELECT user_ref, kind, status, reason FROM erasure.request_users
          WHERE request_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let response = users
        .into_iter()
        .map(|u| UserOutcome {
            user_id: if u.kind == "channel" {
                serde_json::from_str(&u.user_ref).unwrap_or(serde_json::Value::String(u.user_ref))
            } else {
                serde_json::Value::String(u.user_ref)
            },
            status: u.status,
            reason: u.reason,
        })
        .collect();
    Ok(Some(StatusDocument {
        id: r.request_id.clone(),
        request_id: r.request_id,
        status: r.status,
        created_on: contract::format_time(r.created_at),
        last_updated_on: contract::format_time(r.updated_at),
        completed_on: r.completed_at.map(contract::format_time),
        remove_data_from_all_bots: r.remove_data_from_all_bots,
        response,
        progress: Progress {
            tasks_total: r.tasks_total,
            tasks_done: r.tasks_done,
            rows_deleted: RowsDeleted {
                conversations: r.conversations,
                sessions: r.sessions,
                analytics: r.analytics,
            },
        },
        failure_reason: r.failure_reason,
    }))
}

/// A line of `erasure requests list`.
#[derive(sqlx::FromRow, Debug, serde::Serialize)]
pub struct Summary {
    pub request_id: String,
    pub account_id: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub tasks_total: i32,
    pub tasks_done: i32,
    pub rows_deleted: i64,
    pub failure_reason: Option<String>,
}

pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT request_id, account_id, status, created_at, tasks_total, tasks_done, rows_deleted, failure_reason
           FROM erasure.request_status
          WHERE $1::text IS NULL OR status = $1
          ORDER BY created_at DESC LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(pool)
    .await
}

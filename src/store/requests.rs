//! Requests and their users: recording them, the arrows of their diagrams that are not part
//! of planning or of a task (re-check, fail, reopen), and the status document.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::outbox::OutboxMessage;
use super::sql;
use crate::{
    catalog::{ANONYMIZE, Catalog, DELETE},
    contract::{self, EraseRequest, Progress, StatusDocument, StoreRows, UserEntry, UserResponse},
    domain::{
        AccountId, PlatformUserId, RequestId, RequestStatus, UserOutcome, UserRef, UserStatus,
    },
    rules::{self, Protections},
};

/// Where a request came from (`erasure.requests.source`).
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
    pub account_id: &'a AccountId,
    pub requested_by: &'a str,
    pub source: Source,
    pub client_addr: Option<String>,
    pub request: &'a EraseRequest,
    pub idempotency_key: Option<&'a str>,
    pub body_digest: Option<String>,
    pub requested_at: Option<DateTime<Utc>>,
}

/// The request and its users, inserted together (`r`, `u`), nothing when the id exists.
/// Parameters: $1–$11 and $14 the request's columns, $12/$13 the users' refs and kinds.
/// `$prefix` opens the `WITH` (and may add CTEs before `r`); `$source` gives `r` its row.
macro_rules! insert_request_sql {
    () => {
        insert_request_sql!(
            "WITH ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14)"
        )
    };
    ($prefix:literal, $source:literal) => {
        concat!(
            $prefix,
            "r AS (
            INSERT INTO erasure.requests
                 (request_id, account_id, requested_by, source, client_addr, remove_data_from_all_bots,
                  bot_ids, users_total, idempotency_key, body_digest, requested_at, callback_url)
             ",
            $source,
            "
             ON CONFLICT (request_id) DO NOTHING
             RETURNING request_id),
          u AS (
            INSERT INTO erasure.request_users (request_id, position, user_ref, kind)
             SELECT r.request_id, t.ord - 1, t.ref, t.kind
               FROM r, unnest($12::text[], $13::text[]) WITH ORDINALITY AS t(ref, kind, ord))"
        )
    };
}

type ScalarQuery<'q, O> = sqlx::query::QueryScalar<'q, Postgres, O, sqlx::postgres::PgArguments>;

/// Binds $1–$14 of [`insert_request_sql`].
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
        .bind(&r.request.callback_url)
}

/// Inserts the request and its users in one statement; `false` when a request with this id
/// already exists (then nothing is written).
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    r: &NewRequest<'_>,
) -> Result<bool, sqlx::Error> {
    let users = user_columns(&r.request.user_ids);
    let inserted: i64 = bind_request(
        sql::query_scalar(concat!(insert_request_sql!(), " SELECT count(*) FROM r")),
        r,
        &users,
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(inserted == 1)
}

/// A single-use token's id, recorded by the call it authenticates (`erasure.used_jtis`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedJti {
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

/// Records a new request, its users and its outbox message in ONE statement, hence one
/// round trip and one commit (the intake's hot path). Atomic like a transaction: either all
/// three are recorded or none. `None` when a request with this id already exists, or when
/// `jti` (the id of the single-use token of the call, of the app `requested_by`) was used
/// before and has not expired: then nothing is written. The token's id is recorded by the same
/// statement (one indexed insert, no further round trip or commit).
pub async fn insert_with_outbox(
    pool: &PgPool,
    r: &NewRequest<'_>,
    routing_key: &str,
    payload: &[u8],
    jti: Option<&UsedJti>,
) -> Result<Option<OutboxMessage>, sqlx::Error> {
    let users = user_columns(&r.request.user_ids);
    let id: Option<i64> = bind_request(
        sql::query_scalar(concat!(
            insert_request_sql!(
                "WITH j AS (
                    INSERT INTO erasure.used_jtis (client_id, jti, expires_at)
                     SELECT $3, $17, $18 WHERE $17::text IS NOT NULL
                     ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
                      WHERE erasure.used_jtis.expires_at < now()
                     RETURNING 1),
                 ",
                "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $14
                  WHERE $17::text IS NULL OR EXISTS (SELECT 1 FROM j)"
            ),
            ", o AS (
                INSERT INTO erasure.outbox (routing_key, message_id, payload)
                 SELECT $15, r.request_id, $16 FROM r
                 RETURNING id)
             SELECT id FROM o"
        )),
        r,
        &users,
    )
    .bind(routing_key)
    .bind(payload)
    .bind(jti.map(|j| j.jti.as_str()))
    .bind(jti.map(|j| j.expires_at))
    .fetch_optional(sql::on(pool))
    .await?;
    Ok(id.map(|id| OutboxMessage {
        id,
        routing_key: routing_key.into(),
        message_id: r.request_id.to_string(),
        payload: payload.to_vec(),
    }))
}

/// The `user_ref` and `kind` columns of a request's users, in order.
type UserColumns = (Vec<UserRef>, Vec<&'static str>);

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
    sql::query_as(
        "SELECT request_id, body_digest FROM erasure.requests
          WHERE requested_by = $1 AND idempotency_key = $2",
    )
    .bind(requested_by)
    .bind(key)
    .fetch_optional(sql::on(pool))
    .await
}

/// Writes entries' outcomes (and what each resolved to), of one request or several, in one
/// statement: (request, position, outcome, platform users).
pub(super) async fn set_outcomes(
    tx: &mut Transaction<'_, Postgres>,
    outcomes: &[(&RequestId, i32, UserOutcome, &[PlatformUserId])],
) -> Result<(), sqlx::Error> {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(id, position, outcome, ids)| {
            serde_json::json!({"id": id, "position": position, "status": outcome.status(),
                               "reason": outcome.reason(), "ids": ids})
        })
        .collect();
    sql::query(
        "UPDATE erasure.request_users u
            SET status = o.status, reason = o.reason,
                resolved_user_ids = ARRAY(SELECT jsonb_array_elements_text(o.ids))
           FROM jsonb_to_recordset($1) AS o(id text, position integer, status text, reason text, ids jsonb)
          WHERE u.request_id = o.id AND u.position = o.position",
    )
    .bind(serde_json::Value::Array(rows))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The re-check arrow (`IN_PROGRESS → REJECTED`): applies the rules again to the entries still
/// in progress, given who among the request's users is now protected, rejects those the rules
/// reject, and returns the users still to erase. Tasks of one request take turns on its row,
/// so they agree on one outcome.
pub async fn reject_protected(
    pool: &PgPool,
    id: &RequestId,
    protections: &Protections,
) -> Result<Vec<PlatformUserId>, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    sql::query("SELECT 1 FROM erasure.requests WHERE request_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let entries: Vec<(i32, Vec<PlatformUserId>)> = sql::query_as(
        "SELECT position, resolved_user_ids FROM erasure.request_users
          WHERE request_id = $1 AND status = $2 ORDER BY position",
    )
    .bind(id)
    .bind(UserStatus::InProgress)
    .fetch_all(&mut *tx)
    .await?;
    let resolved: Vec<&[PlatformUserId]> = entries.iter().map(|(_, u)| u.as_slice()).collect();
    let decision = rules::decide(&resolved, protections);
    let rejected: Vec<(&RequestId, i32, UserOutcome, &[PlatformUserId])> = entries
        .iter()
        .zip(decision.outcomes)
        .filter(|(_, outcome)| matches!(outcome, UserOutcome::Rejected(_)))
        .map(|((position, users), outcome)| (id, *position, outcome, users.as_slice()))
        .collect();
    if !rejected.is_empty() {
        set_outcomes(&mut tx, &rejected).await?;
        sql::query(
            "UPDATE erasure.requests SET erase_user_ids = $2, updated_at = now()
              WHERE request_id = $1",
        )
        .bind(id)
        .bind(&decision.erase)
        .execute(&mut *tx)
        .await?;
        tracing::warn!(
            entries = rejected.len(),
            "users became protected after planning; they are rejected"
        );
    }
    tx.commit().await?;
    Ok(decision.erase)
}

/// How a request ended, when a call settled it: its final status and how long it took from
/// creation. [`Settled::record`] counts it in the metrics, once.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Settled {
    pub status: RequestStatus,
    pub seconds: f64,
}

impl Settled {
    /// Counts the settling in the metrics; called by the arrow that settled, after its commit.
    pub(super) fn record(&self) {
        crate::telemetry::record_settled(self.status, self.seconds);
    }
}

/// The settle arrow (`in-progress → completed | rejected`) of requests whose every task is
/// done: users still in progress succeeded; `rejected` when every user was rejected. Returns
/// those it settled (a request not in progress is left as it is).
pub(super) async fn settle(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[RequestId],
) -> Result<Vec<(RequestId, Settled)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let settled: Vec<(RequestId, RequestStatus, f64)> = sql::query_as(
        "UPDATE erasure.requests r
            SET status = CASE WHEN NOT EXISTS (SELECT 1 FROM erasure.request_users u
                                                WHERE u.request_id = r.request_id AND u.status <> $2)
                              THEN $3 ELSE $4 END,
                failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = ANY($1) AND status = $5
         RETURNING request_id, status, extract(epoch FROM completed_at - created_at)::float8",
    )
    .bind(ids)
    .bind(UserStatus::Rejected)
    .bind(RequestStatus::Rejected)
    .bind(RequestStatus::Completed)
    .bind(RequestStatus::InProgress)
    .fetch_all(&mut **tx)
    .await?;
    let ids: Vec<&RequestId> = settled.iter().map(|(id, _, _)| id).collect();
    if !ids.is_empty() {
        sql::query(
            "UPDATE erasure.request_users SET status = $2, reason = NULL
              WHERE request_id = ANY($1) AND status = ANY($3)",
        )
        .bind(&ids)
        .bind(UserStatus::Success)
        .bind([UserStatus::InProgress, UserStatus::Failed])
        .execute(&mut **tx)
        .await?;
        super::callbacks::enqueue(tx, &ids).await?;
    }
    Ok(settled
        .into_iter()
        .map(|(id, status, seconds)| (id, Settled { status, seconds }))
        .collect())
}

/// The fail arrow (`in-progress → failed`, or a failed request taking a newer reason) with a
/// non-PII reason; users still in progress fail with it. Returns how it ended when this call
/// moved the request out of `in-progress`, so that it is counted once.
pub(super) async fn fail(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    reason: &str,
) -> Result<Option<Settled>, sqlx::Error> {
    let was: Option<(RequestStatus, f64)> = sql::query_as(
        "WITH prev AS (SELECT status FROM erasure.requests WHERE request_id = $1 FOR UPDATE)
         UPDATE erasure.requests r
            SET status = $3, failure_reason = $2, updated_at = now(),
                completed_at = CASE WHEN prev.status = $3 THEN r.completed_at ELSE now() END
           FROM prev
          WHERE r.request_id = $1 AND prev.status = ANY($4)
         RETURNING prev.status, extract(epoch FROM r.completed_at - r.created_at)::float8",
    )
    .bind(id)
    .bind(reason)
    .bind(RequestStatus::Failed)
    .bind([RequestStatus::InProgress, RequestStatus::Failed])
    .fetch_optional(&mut **tx)
    .await?;
    sql::query(
        "UPDATE erasure.request_users SET status = $3, reason = $2
          WHERE request_id = $1 AND status = ANY($4)",
    )
    .bind(id)
    .bind(reason)
    .bind(UserStatus::Failed)
    .bind([UserStatus::InProgress, UserStatus::Failed])
    .execute(&mut **tx)
    .await?;
    if was
        .as_ref()
        .is_some_and(|(prev, _)| *prev == RequestStatus::InProgress)
    {
        super::callbacks::enqueue(tx, &[id]).await?;
    }
    Ok(was
        .filter(|(prev, _)| *prev == RequestStatus::InProgress)
        .map(|(_, seconds)| Settled {
            status: RequestStatus::Failed,
            seconds,
        }))
}

/// Holds the rows of `ids` `FOR SHARE` in a batch's transaction (on `conn`) while they are
/// in `status` (`in-progress` for a task's batch): `false` when any is not (cancelled, or
/// settled otherwise), and then the batch must delete nothing. The cancel arrow's row lock waits for the batch to commit, and a
/// batch that starts after a cancel commits sees it: no batch starts after a cancel. Locked in
/// the order of their ids, as the complete arrow locks them, so the two never deadlock.
pub async fn hold_while(
    conn: &mut sqlx::PgConnection,
    ids: &[&RequestId],
    status: RequestStatus,
) -> Result<bool, sqlx::Error> {
    let held: Vec<RequestId> = sql::query_scalar(
        "SELECT request_id FROM erasure.requests
          WHERE request_id = ANY($1) AND status = $2
          ORDER BY request_id FOR SHARE",
    )
    .bind(ids)
    .bind(status)
    .fetch_all(conn)
    .await?;
    Ok(ids.iter().all(|id| held.iter().any(|h| h == *id)))
}

/// What a cancel found.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// This call cancelled the request.
    Cancelled(Settled),
    /// An earlier call did.
    AlreadyCancelled,
    /// The request had settled otherwise first.
    AlreadySettled(RequestStatus),
    /// No such request (in this account).
    Unknown,
}

/// The cancel arrow (`in-progress → cancelled`; users `IN_PROGRESS → CANCELLED`; tasks not
/// done `→ cancelled`, so they never run again), with the request's callback queued, in one
/// transaction. Its row lock waits for the batches running on the request (each holds the
/// row `FOR SHARE` while it deletes), and a batch that starts after it commits finds the
/// request no longer in progress and deletes nothing: rows erased before stay counted.
pub async fn cancel(
    pool: &PgPool,
    id: &RequestId,
    account_id: Option<&AccountId>,
) -> Result<Cancel, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    let status: Option<RequestStatus> = sql::query_scalar(
        "SELECT status FROM erasure.requests
          WHERE request_id = $1 AND ($2::text IS NULL OR account_id = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(&mut *tx)
    .await?;
    match status {
        None => return Ok(Cancel::Unknown),
        Some(RequestStatus::Cancelled) => return Ok(Cancel::AlreadyCancelled),
        Some(RequestStatus::InProgress) => {}
        Some(other) => return Ok(Cancel::AlreadySettled(other)),
    }
    let seconds: f64 = sql::query_scalar(
        "UPDATE erasure.requests
            SET status = $2, failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = $1
         RETURNING extract(epoch FROM completed_at - created_at)::float8",
    )
    .bind(id)
    .bind(RequestStatus::Cancelled)
    .fetch_one(&mut *tx)
    .await?;
    sql::query(
        "UPDATE erasure.request_users SET status = $2, reason = NULL
          WHERE request_id = $1 AND status = ANY($3)",
    )
    .bind(id)
    .bind(UserStatus::Cancelled)
    .bind([UserStatus::InProgress, UserStatus::Failed])
    .execute(&mut *tx)
    .await?;
    super::tasks::cancel(&mut tx, id).await?;
    super::callbacks::enqueue(&mut tx, &[id]).await?;
    tx.commit().await?;
    let settled = Settled {
        status: RequestStatus::Cancelled,
        seconds,
    };
    settled.record();
    Ok(Cancel::Cancelled(settled))
}

/// The reopen arrow (`failed → in-progress`, users `FAILED → IN_PROGRESS`, tasks
/// `failed → pending`) for a redrive, which also marks the request's dead letters redriven:
/// the request resumes where it stopped.
pub async fn reopen(pool: &PgPool, id: &RequestId) -> Result<(), sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    sql::query(
        "UPDATE erasure.requests
            SET status = $2, failure_reason = NULL, completed_at = NULL, updated_at = now()
          WHERE request_id = $1 AND status = $3",
    )
    .bind(id)
    .bind(RequestStatus::InProgress)
    .bind(RequestStatus::Failed)
    .execute(&mut *tx)
    .await?;
    sql::query(
        "UPDATE erasure.request_users SET status = $2, reason = NULL
          WHERE request_id = $1 AND status = $3",
    )
    .bind(id)
    .bind(UserStatus::InProgress)
    .bind(UserStatus::Failed)
    .execute(&mut *tx)
    .await?;
    super::tasks::reopen(&mut tx, id).await?;
    super::dead_letters::mark_redriven(&mut tx, id).await?;
    tx.commit().await
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    request_id: RequestId,
    status: RequestStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    remove_data_from_all_bots: bool,
    tasks_total: i32,
    tasks_done: i32,
    failure_reason: Option<String>,
    has_callback: bool,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    user_ref: UserRef,
    kind: String,
    status: UserStatus,
    reason: Option<String>,
}

/// The status document of a request, if it belongs to `account_id` (or to any account when
/// `account_id` is `None`, for operators).
pub async fn status_document(
    pool: &PgPool,
    catalog: &Catalog,
    id: &RequestId,
    account_id: Option<&AccountId>,
) -> Result<Option<StatusDocument>, sqlx::Error> {
    let row: Option<StatusRow> = sql::query_as(
        "SELECT request_id, status, created_at, updated_at, completed_at,
                remove_data_from_all_bots, tasks_total, tasks_done, failure_reason,
                callback_url IS NOT NULL AS has_callback
           FROM erasure.requests
          WHERE request_id = $1 AND ($2::text IS NULL OR account_id = $2)",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(sql::on(pool))
    .await?;
    let Some(r) = row else { return Ok(None) };
    let users: Vec<UserRow> = sql::query_as(
        "SELECT user_ref, kind, status, reason FROM erasure.request_users
          WHERE request_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(sql::on(pool))
    .await?;
    let response = users
        .into_iter()
        .map(|u| UserResponse {
            user_id: UserEntry::shown(&u.user_ref, u.kind == "channel"),
            status: u.status,
            reason: u.reason,
        })
        .collect();
    let progress = progress(pool, catalog, &r).await?;
    let verification = super::proofs::verification(pool, catalog, id).await?;
    let callback = if r.has_callback {
        Some(
            super::callbacks::delivery(pool, id)
                .await?
                .unwrap_or_else(|| super::callbacks::Delivery {
                    state: super::callbacks::PENDING.into(),
                    attempts: 0,
                    last_status: None,
                }),
        )
    } else {
        None
    };
    Ok(Some(StatusDocument {
        id: r.request_id.clone(),
        request_id: r.request_id,
        status: r.status,
        created_on: contract::format_time(r.created_at),
        last_updated_on: contract::format_time(r.updated_at),
        completed_on: r.completed_at.map(contract::format_time),
        remove_data_from_all_bots: r.remove_data_from_all_bots,
        response,
        progress,
        failure_reason: r.failure_reason,
        verification,
        callback,
    }))
}

/// The request's tasks and rows per store: one key per store of the catalog (0 until it
/// erases something), in its order, then any store the request erased that the catalog no
/// longer names.
async fn progress(
    pool: &PgPool,
    catalog: &Catalog,
    r: &StatusRow,
) -> Result<Progress, sqlx::Error> {
    let counted: Vec<(String, String, i64)> = sql::query_as(
        "SELECT store, action, sum(rows)::bigint FROM erasure.task_rows
          WHERE request_id = $1 GROUP BY store, action",
    )
    .bind(&r.request_id)
    .fetch_all(sql::on(pool))
    .await?;
    let of = |action: &str| {
        let mut rows: Vec<(String, i64)> = catalog
            .names(action)
            .into_iter()
            .map(|store| (store.to_string(), 0))
            .collect();
        for (store, _, n) in counted.iter().filter(|(_, a, _)| a == action) {
            match rows.iter_mut().find(|(s, _)| s == store) {
                Some((_, total)) => *total += n,
                None => rows.push((store.clone(), *n)),
            }
        }
        StoreRows(rows)
    };
    let anonymized = of(ANONYMIZE);
    Ok(Progress {
        tasks_total: r.tasks_total,
        tasks_done: r.tasks_done,
        rows_deleted: of(DELETE),
        rows_anonymized: (!anonymized.0.is_empty()).then_some(anonymized),
    })
}

/// A line of `erasure requests list`.
#[derive(sqlx::FromRow, Debug, serde::Serialize)]
pub struct Summary {
    pub request_id: RequestId,
    pub account_id: AccountId,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    pub tasks_total: i32,
    pub tasks_done: i32,
    pub rows_deleted: i64,
    pub failure_reason: Option<String>,
    /// The delivery state of its latest callback (`pending` until settled), if it has one.
    pub callback: Option<String>,
}

pub async fn list(
    pool: &PgPool,
    status: Option<RequestStatus>,
    limit: i64,
) -> Result<Vec<Summary>, sqlx::Error> {
    sql::query_as(
        "SELECT s.request_id, s.account_id, s.status, s.created_at, s.tasks_total, s.tasks_done,
                s.rows_deleted, s.failure_reason,
                CASE WHEN r.callback_url IS NULL THEN NULL
                     ELSE COALESCE((SELECT c.state FROM erasure.callbacks c
                                     WHERE c.request_id = s.request_id
                                     ORDER BY c.event_at DESC, c.webhook_id LIMIT 1), 'pending')
                END AS callback
           FROM erasure.request_status s JOIN erasure.requests r USING (request_id)
          WHERE $1::text IS NULL OR s.status = $1
          ORDER BY s.created_at DESC LIMIT $2",
    )
    .bind(status)
    .bind(limit)
    .fetch_all(sql::on(pool))
    .await
}

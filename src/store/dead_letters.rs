//! The service's record of what it dead-lettered and why, and the fail arrows that go with
//! it: whatever a dead letter names fails in the same transaction that records it.

use sqlx::{PgPool, Postgres, Transaction};

use super::sql;
use super::{requests, tasks};
use crate::domain::{AccountId, BotId, RequestId, RequestStatus};

/// What a dead-lettered message names, and so what fails with it.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// An erase request message (possibly unparseable, possibly without a usable id).
    Request {
        request_id: Option<&'a RequestId>,
        account_id: Option<&'a AccountId>,
    },
    /// The tasks of a request that one task message works.
    Task {
        request_id: &'a RequestId,
        bots: &'a [BotId],
    },
}

impl Subject<'_> {
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::Request { request_id, .. } => *request_id,
            Self::Task { request_id, .. } => Some(request_id),
        }
    }
}

/// Records a dead letter (`reason` short and non-PII) and fails what it names, in one
/// transaction:
/// - a request message with a request id unknown here: the request is created `failed`, so
///   a producer finds it failed, not missing;
/// - a request message naming a request of the same account that was not planned yet: the
///   fail arrow (a malformed duplicate never fails a request already under way, nor another
///   account's);
/// - a task message: its tasks and their request fail.
///
/// Returns how the request ended when this call settled it (counted in the metrics here).
pub async fn record(
    pool: &PgPool,
    subject: Subject<'_>,
    routing_key: &str,
    reason: &str,
    payload: &[u8],
) -> Result<Option<requests::Settled>, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    sql::query(
        "INSERT INTO erasure.dead_letters (request_id, routing_key, reason, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(subject.request_id())
    .bind(routing_key)
    .bind(reason)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    let settled = match subject {
        Subject::Request {
            request_id: Some(id),
            account_id,
        } => {
            if insert_failed(&mut tx, id, account_id, reason).await? {
                // Created failed: it ended the moment it began.
                Some(requests::Settled {
                    status: RequestStatus::Failed,
                    seconds: 0.0,
                })
            } else if refusable(&mut tx, id, account_id).await? {
                requests::fail(&mut tx, id, reason).await?
            } else {
                None
            }
        }
        Subject::Request {
            request_id: None, ..
        } => None,
        Subject::Task { request_id, bots } => {
            tasks::fail(&mut tx, request_id, bots, reason).await?;
            requests::fail(&mut tx, request_id, reason).await?
        }
    };
    tx.commit().await?;
    if let Some(s) = &settled {
        s.record();
    }
    Ok(settled)
}

/// Creates a `failed` request for an id unknown here; `true` when it did.
async fn insert_failed(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    account_id: Option<&AccountId>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    sql::query(
        "INSERT INTO erasure.requests (request_id, account_id, requested_by, source, status, failure_reason, completed_at)
         VALUES ($1, COALESCE($2, ''), '', 'queue', $3, $4, now())
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(id)
    .bind(account_id)
    .bind(RequestStatus::Failed)
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Whether a refused erase message may fail the request it names: only a request of the
/// same account (when the message names one) that was not planned yet.
async fn refusable(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    account_id: Option<&AccountId>,
) -> Result<bool, sqlx::Error> {
    sql::query_scalar(
        "SELECT NOT planned AND ($2::text IS NULL OR account_id = $2)
           FROM erasure.requests WHERE request_id = $1",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(&mut **tx)
    .await
    .map(|v| v.unwrap_or(false))
}

/// Marks a request's dead letters redriven (part of the reopen arrow).
pub(super) async fn mark_redriven(
    tx: &mut Transaction<'_, Postgres>,
    request_id: &RequestId,
) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE erasure.dead_letters SET redriven_at = now()
          WHERE request_id = $1 AND redriven_at IS NULL",
    )
    .bind(request_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

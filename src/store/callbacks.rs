//! Callbacks to deliver (`erasure.callbacks`), a transactional outbox of its own: the arrow
//! that settles a request queues its callback in its own transaction ([`enqueue`]), and the
//! delivery loop ([`crate::callback`]) claims due rows, leased, and records each attempt.

use super::sql;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::domain::{RequestId, RequestStatus};

/// A callback's delivery state (`erasure.callbacks.state`).
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";
pub const GONE: &str = "gone";

/// Queues the callback of each of `ids` that has a callback URL and is settled, one event
/// per call (part of every settle arrow: the same transaction). `webhook_id` is new per event
/// and stays the same on every retry.
pub(super) async fn enqueue(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[&RequestId],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sql::query(
        "INSERT INTO erasure.callbacks (webhook_id, request_id, client_id, url, event)
         SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), r.request_id,
                r.requested_by, r.callback_url, r.status
           FROM erasure.requests r
          WHERE r.request_id = ANY($1) AND r.callback_url IS NOT NULL AND r.status <> $2",
    )
    .bind(ids)
    .bind(RequestStatus::InProgress)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A callback claimed for one attempt.
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct Due {
    pub webhook_id: String,
    pub request_id: RequestId,
    pub client_id: Option<String>,
    pub url: String,
    pub event: RequestStatus,
    pub event_at: DateTime<Utc>,
    pub body: Option<Vec<u8>>,
    /// This attempt's number, from 1.
    pub attempts: i32,
}

/// Claims up to `limit` pending callbacks that are due, skipping those another process holds,
/// and leases them for `lease` (a process that dies mid-attempt leaves them due again after
/// it); counts the attempt.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Due>, sqlx::Error> {
    sql::query_as(
        "WITH due AS (SELECT webhook_id FROM erasure.callbacks
                       WHERE state = $1 AND next_at <= now()
                       ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         UPDATE erasure.callbacks c
            SET attempts = c.attempts + 1, updated_at = now(),
                next_at = now() + make_interval(secs => $3::double precision)
           FROM due WHERE c.webhook_id = due.webhook_id
         RETURNING c.webhook_id, c.request_id, c.client_id, c.url, c.event, c.event_at, c.body, c.attempts",
    )
    .bind(PENDING)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(sql::on(pool))
    .await
}

/// Fixes a callback's body at its first attempt; returns the body every attempt sends (an
/// earlier attempt's, if one fixed it first).
pub async fn fix_body(
    pool: &PgPool,
    webhook_id: &str,
    body: &[u8],
) -> Result<Vec<u8>, sqlx::Error> {
    sql::query_scalar(
        "UPDATE erasure.callbacks SET body = COALESCE(body, $2) WHERE webhook_id = $1 RETURNING body",
    )
    .bind(webhook_id)
    .bind(body)
    .fetch_one(sql::on(pool))
    .await
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered { status: u16 },
    /// Another answer, a timeout or no connection: try again after `after`.
    Retry {
        status: Option<u16>,
        after: Duration,
    },
    /// 410: the receiver wants no more.
    Gone,
    /// The schedule is spent, or the address is refused.
    Failed { status: Option<u16> },
}

impl Attempt {
    /// The `outcome` label of `erasure_callbacks_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered { .. } => "delivered",
            Self::Retry { .. } => "retry",
            Self::Gone => "gone",
            Self::Failed { .. } => "failed",
        }
    }
    pub const LABELS: [&'static str; 4] = ["delivered", "retry", "gone", "failed"];
}

/// Records an attempt of a callback this process holds (guarded: only a pending callback
/// moves).
pub async fn record(pool: &PgPool, webhook_id: &str, attempt: Attempt) -> Result<(), sqlx::Error> {
    let (state, status, after) = match attempt {
        Attempt::Delivered { status } => (DELIVERED, Some(status), Duration::ZERO),
        Attempt::Retry { status, after } => (PENDING, status, after),
        Attempt::Gone => (GONE, Some(410), Duration::ZERO),
        Attempt::Failed { status } => (FAILED, status, Duration::ZERO),
    };
    sql::query(
        "UPDATE erasure.callbacks
            SET state = $2, last_status = $3, updated_at = now(),
                next_at = now() + make_interval(secs => $4::double precision)
          WHERE webhook_id = $1 AND state = $5",
    )
    .bind(webhook_id)
    .bind(state)
    .bind(status.map(i32::from))
    .bind(after.as_secs_f64())
    .bind(PENDING)
    .execute(sql::on(pool))
    .await?;
    Ok(())
}

/// The `callback` object of the status document: the latest event's delivery.
#[derive(sqlx::FromRow, Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub state: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
}

/// The delivery of a request's latest callback, if it has one queued.
pub async fn delivery(pool: &PgPool, id: &RequestId) -> Result<Option<Delivery>, sqlx::Error> {
    sql::query_as(
        "SELECT state, attempts, last_status FROM erasure.callbacks
          WHERE request_id = $1 ORDER BY event_at DESC, webhook_id LIMIT 1",
    )
    .bind(id)
    .fetch_optional(sql::on(pool))
    .await
}

//! Dead-lettering: record the failure and its reason in the database first (the operator's
//! truth), then move the message to `erasure.dead` with the reason in its headers.

use lapin::types::{AMQPValue, FieldTable};

use super::Ctx;
use crate::{
    contract::{DEAD_ROUTING_KEY, RequestId},
    queue::consumer::Outcome,
    retry,
    store::{self, dead_letters, requests, tasks},
};

/// What failed.
pub enum Subject<'a> {
    /// An erase request message (possibly unparseable, possibly without a usable id).
    Request {
        request_id: Option<&'a RequestId>,
        account_id: Option<&'a str>,
    },
    /// The tasks of a request that one task message works.
    Task {
        request_id: &'a RequestId,
        bots: &'a [String],
    },
}

/// Dead-letters a message for `reason` (short, non-PII). When the failure cannot be recorded
/// (the database is unreachable) the message is put back for later rather than sit in the
/// dead-letter queue unseen.
pub async fn dead_letter(
    ctx: &Ctx,
    routing_key: &str,
    subject: Subject<'_>,
    reason: &str,
    payload: &[u8],
) -> Outcome {
    let request_id = match &subject {
        Subject::Request { request_id, .. } => request_id.map(|r| r.as_str().to_string()),
        Subject::Task { request_id, .. } => Some(request_id.as_str().to_string()),
    };
    // Whether this call settled the request as failed (counted once in the metrics).
    let recorded = retry::db("record_dead_letter", || async {
        let mut tx = ctx.pool.begin().await?;
        dead_letters::record(&mut tx, request_id.as_deref(), routing_key, reason, payload).await?;
        let settled = match &subject {
            Subject::Request {
                request_id: Some(id),
                account_id,
            } => {
                if insert_failed_request(&mut tx, id, account_id.unwrap_or(""), reason).await? {
                    // Created failed: it ended the moment it began.
                    Some(requests::Settled {
                        status: "failed".into(),
                        seconds: 0.0,
                    })
                } else if requests::refusable_by_message(&mut tx, id, *account_id).await? {
                    requests::mark_failed(&mut tx, id, reason).await?
                } else {
                    None
                }
            }
            Subject::Request {
                request_id: None, ..
            } => None,
            Subject::Task { request_id, bots } => {
                tasks::mark_failed(&mut tx, request_id, bots, reason).await?;
                requests::mark_failed(&mut tx, request_id, reason).await?
            }
        };
        tx.commit().await?;
        Ok(settled)
    })
    .await;
    let message_id = request_id.clone().unwrap_or_else(|| "unidentified".into());
    let settled = match recorded {
        Ok(settled) => settled,
        Err(e) => {
            tracing::error!(error = %store::describe(&e), "could not record a dead letter; retrying later");
            return ctx.retry_later(routing_key, &message_id, payload).await;
        }
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "x-erasure-reason".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-erasure-routing-key".into(),
        AMQPValue::LongString(routing_key.into()),
    );
    if let Some(id) = &request_id {
        headers.insert(
            "x-erasure-request-id".into(),
            AMQPValue::LongString(id.as_str().into()),
        );
    }
    if let Err(e) = ctx
        .publisher
        .publish(DEAD_ROUTING_KEY, &message_id, payload, headers)
        .await
    {
        tracing::error!(error = %e, "could not publish a dead letter; requeueing it");
        return Outcome::Requeue;
    }
    let kind = crate::telemetry::dead_letter_kind(routing_key);
    metrics::counter!("erasure_dead_lettered_total", "kind" => kind).increment(1);
    if let Some(settled) = &settled {
        crate::telemetry::record_settled(settled);
    }
    tracing::warn!(
        request_id = request_id.as_deref().unwrap_or("-"),
        reason,
        "dead-lettered"
    );
    Outcome::Ack
}

/// A producer's message that names a request id unknown here still leaves a visible record;
/// `true` when this call created it (the request is then settled as failed).
async fn insert_failed_request(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &RequestId,
    account_id: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO erasure.requests (request_id, account_id, requested_by, source, status, failure_reason, completed_at)
         VALUES ($1, $2, '', 'queue', 'failed', $3, now())
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(id)
    .bind(account_id)
    .bind(reason)
    .execute(&mut **tx)
    .await
    .map(|r| r.rows_affected() == 1)
}

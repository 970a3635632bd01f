//! Dead-lettering: record the failure and its reason in the database first (the operator's
//! truth; what the message names fails with it), then move the message to `erasure.dead` with
//! the reason in its headers.

use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;

use crate::{
    contract::DEAD_ROUTING_KEY,
    queue::publisher::Publisher,
    retry,
    store::dead_letters::{self, Subject},
};

/// How far dead-lettering got.
#[derive(Debug, PartialEq, Eq)]
pub enum Filed {
    /// Recorded and published to `erasure.dead`.
    Yes,
    /// The database could not record it (unreachable past the retry budget): the message is
    /// to be handed back for later, rather than sit in the dead-letter queue unseen.
    NotRecorded,
    /// Recorded, but the broker did not confirm the dead letter: the message is to be
    /// requeued (recording again is harmless).
    NotPublished,
}

/// Dead-letters a message arrived with `routing_key` for `reason` (short, non-PII).
pub async fn dead_letter(
    budget: std::time::Duration,
    pool: &PgPool,
    publisher: &Publisher,
    routing_key: &str,
    subject: Subject<'_>,
    reason: &str,
    payload: &[u8],
) -> Filed {
    let recorded = retry::transient(budget, retry::Operation::RecordDeadLetter, || {
        dead_letters::record(pool, subject, routing_key, reason, payload)
    })
    .await;
    if let Err(e) = recorded {
        tracing::error!(error = %crate::store::describe(&e), "could not record a dead letter; retrying later");
        return Filed::NotRecorded;
    }
    let request_id = subject.request_id();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-erasure-reason".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-erasure-routing-key".into(),
        AMQPValue::LongString(routing_key.into()),
    );
    if let Some(id) = request_id {
        headers.insert(
            "x-erasure-request-id".into(),
            AMQPValue::LongString(id.as_str().into()),
        );
    }
    let message_id = request_id.map_or_else(|| "unidentified".into(), |r| r.to_string());
    if let Err(e) = publisher
        .publish(DEAD_ROUTING_KEY, &message_id, payload, headers)
        .await
    {
        tracing::error!(error = %e, "could not publish a dead letter; requeueing it");
        return Filed::NotPublished;
    }
    tracing::warn!(
        request_id = request_id.map_or("-", |r| r.as_str()),
        reason,
        "dead-lettered"
    );
    Filed::Yes
}

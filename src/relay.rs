//! The outbox relay: publishes what was committed but not confirmed (the process crashed or
//! the broker was away between commit and publish), then deletes it.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::sql;
use crate::{
    queue::publisher::{CONFIRM_TIMEOUT, Publisher},
    store::outbox,
};

/// Messages younger than this are left to the code that wrote them: it may wait that long for
/// the broker's confirm (a node dying mid-publish, a loaded disk), and a relay that did not
/// wait as long would publish the same message beside it. Age counts from the start of the
/// transaction that wrote the message.
const MIN_AGE_MS: i64 = CONFIRM_TIMEOUT.as_millis() as i64 + 2_000;
const BATCH: i64 = 200;

pub async fn run(
    pool: PgPool,
    publisher: Arc<Publisher>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match relay_once(&pool, &publisher).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(published = n, "outbox relay published pending messages"),
            Err(e) => tracing::warn!(error = %e, "outbox relay pass failed"),
        }
        if let Ok(n) = outbox::backlog(&pool).await {
            metrics::gauge!("erasure_outbox_backlog").set(n as f64);
        }
    }
}

/// One pass: claim stale messages, publish them with confirms, delete the confirmed ones.
pub async fn relay_once(pool: &PgPool, publisher: &Publisher) -> anyhow::Result<usize> {
    let mut published = 0;
    loop {
        let mut tx = sql::begin(pool).await?;
        let claimed = outbox::claim_stale(&mut tx, MIN_AGE_MS, BATCH).await?;
        if claimed.is_empty() {
            return Ok(published);
        }
        // Confirms pipelined, as on the fast path: one broker round trip per batch, not per message.
        let mut done = Vec::with_capacity(claimed.len());
        let mut failure = None;
        for (m, result) in claimed.iter().zip(publisher.publish_many(&claimed).await) {
            match result {
                Ok(()) => done.push(m.id),
                Err(e) => failure = Some(e),
            }
        }
        outbox::delete_in(&mut tx, &done).await?;
        tx.commit().await?;
        published += done.len();
        metrics::counter!("erasure_outbox_relayed_total").increment(done.len() as u64);
        if let Some(e) = failure {
            return Err(e);
        }
        if (claimed.len() as i64) < BATCH {
            return Ok(published);
        }
    }
}

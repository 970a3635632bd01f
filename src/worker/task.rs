//! Executing a task: delete the request's users' rows in one bot, batch by batch, for at most
//! one slice per delivery. A drained task is marked done (once); an unfinished one commits its
//! continuation to the outbox, publishes it, and only then acknowledges its delivery.

use std::{sync::Arc, time::Instant};

use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Ctx,
    dead::{Subject, dead_letter},
};
use crate::{
    contract::{TASK_ROUTING_KEY, TaskMessage},
    erase::{self, Store},
    queue::consumer::{Handler, Outcome},
    retry,
    store::{self, outbox, requests, tasks},
};

/// Consumes `erasure.tasks`.
pub struct TaskHandler(pub Arc<Ctx>);

/// How one delivery of a task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Every row is gone and the task is done (now or before).
    Done,
    /// The slice is used up (or shutdown began); a continuation is queued.
    Continued,
    /// A stale duplicate of an earlier slice: nothing to do.
    Stale,
}

impl Handler for TaskHandler {
    async fn handle(
        &self,
        data: Vec<u8>,
        props: BasicProperties,
        stop: CancellationToken,
    ) -> Outcome {
        let ctx = &*self.0;
        let msg: TaskMessage = match serde_json::from_slice(&data) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("erasure_poison_messages_total").increment(1);
                let reason = format!("task message is malformed: {}", e.classify_text());
                return dead_letter(
                    ctx,
                    TASK_ROUTING_KEY,
                    Subject::Request {
                        request_id: None,
                        account_id: None,
                    },
                    &reason,
                    &data,
                )
                .await;
            }
        };
        let span = tracing::info_span!("task", request_id = %msg.request_id, bot_id = %msg.bot_id, slice = msg.slice);
        async {
            let subject = || Subject::Task {
                request_id: &msg.request_id,
                bot_id: &msg.bot_id,
            };
            let delivery = Ctx::delivery_number(&props);
            if delivery > u64::from(ctx.config.max_deliveries) {
                let reason = format!("delivered {delivery} times without being settled");
                return dead_letter(ctx, TASK_ROUTING_KEY, subject(), &reason, &data).await;
            }
            let started = Instant::now();
            match run(ctx, &msg, &stop).await {
                Ok(step) => {
                    metrics::histogram!("erasure_task_slice_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::debug!(?step, "task slice finished");
                    Outcome::Ack
                }
                Err(TaskError::Unknown) => {
                    dead_letter(
                        ctx,
                        TASK_ROUTING_KEY,
                        subject(),
                        "task is unknown (its request was never planned)",
                        &data,
                    )
                    .await
                }
                Err(TaskError::Db(e)) if store::is_transient(&e) => {
                    metrics::counter!("erasure_tasks_retried_total").increment(1);
                    tracing::warn!(error = %store::describe(&e), "task interrupted; retrying later");
                    ctx.retry_later(TASK_ROUTING_KEY, &Ctx::message_id(&props), &data)
                        .await
                }
                Err(TaskError::Db(e)) => {
                    dead_letter(
                        ctx,
                        TASK_ROUTING_KEY,
                        subject(),
                        &store::describe(&e),
                        &data,
                    )
                    .await
                }
            }
        }
        .instrument(span)
        .await
    }
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "not valid JSON"
            }
            _ => "missing or unexpected fields",
        }
    }
}

pub enum TaskError {
    Unknown,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for TaskError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// Works one slice of the task.
pub async fn run(
    ctx: &Ctx,
    msg: &TaskMessage,
    stop: &CancellationToken,
) -> Result<Step, TaskError> {
    let task = retry::db("load_task", || {
        tasks::load(&ctx.pool, &msg.request_id, &msg.bot_id)
    })
    .await?
    .ok_or(TaskError::Unknown)?;
    if task.status == "done" {
        return Ok(Step::Done);
    }
    if msg.slice < task.slice {
        return Ok(Step::Stale);
    }
    if task.slice == 0 && msg.slice == 0 {
        metrics::counter!("erasure_tasks_started_total").increment(1);
    }
    // The rules are applied again: a user may have become protected since planning.
    let users = &retry::db("recheck_protection", || {
        requests::reject_newly_protected(&ctx.pool, &msg.request_id, &task.erase_user_ids)
    })
    .await?;
    let limit = ctx.config.batch_size;
    let mut budget = ctx.config.batches_per_slice;
    let mut deleted = 0;
    // Rounds of one statement deleting a batch from every store not yet drained, until each
    // store has had a batch that saw fewer candidates than its limit: that batch proved it
    // drained, so no further check is needed.
    let mut drained_stores = [false; 3];
    let drained = loop {
        if drained_stores.iter().all(|d| *d) {
            break true;
        }
        if budget == 0 || stop.is_cancelled() {
            break false;
        }
        budget -= 1;
        // The batch size bounds the statement: it is shared among the stores still to drain
        // (a store that drains early leaves the next rounds to the others). So a statement
        // never deletes more than one batch, and under a ceiling what a round reserves is
        // one batch, as it was with one statement per store.
        let active = drained_stores.iter().filter(|d| !**d).count() as i64;
        let store_limit = (limit + active - 1) / active;
        let limits = drained_stores.map(|d| if d { 0 } else { store_limit });
        let reserved: i64 = limits.iter().sum();
        if !ctx
            .throttle
            .reserve(&ctx.pool, reserved as u64, stop)
            .await?
        {
            break false;
        }
        let started = Instant::now();
        let batches = retry::db("delete_batch", || {
            erase::delete_batches(&ctx.pool, &msg.request_id, &msg.bot_id, users, limits)
        })
        .await?;
        let took = started.elapsed().as_secs_f64();
        let mut round = 0;
        for (((store, batch), done), store_limit) in Store::ALL
            .iter()
            .zip(batches)
            .zip(&mut drained_stores)
            .zip(limits)
        {
            if store_limit > 0 {
                // The statement's duration is each of its batches' lock time.
                metrics::histogram!("erasure_delete_batch_seconds", "store" => store.name())
                    .record(took);
            }
            metrics::counter!("erasure_rows_deleted_total", "store" => store.name())
                .increment(batch.deleted);
            round += batch.deleted;
            *done |= batch.drained;
        }
        ctx.throttle
            .refund(&ctx.pool, (reserved as u64).saturating_sub(round))
            .await?;
        deleted += round;
    };
    // Which delivery deleted what: evidence when a task ran in two places at once.
    tracing::debug!(rows = deleted, drained, "slice worked");
    if drained {
        let settled = retry::db("complete_task", || async {
            let mut tx = ctx.pool.begin().await?;
            let mut settled = None;
            if tasks::mark_done(&mut tx, &msg.request_id, &msg.bot_id).await? {
                settled = Some(requests::count_task_done(&mut tx, &msg.request_id).await?);
            }
            tx.commit().await?;
            Ok(settled)
        })
        .await?;
        if let Some(done) = settled {
            metrics::counter!("erasure_tasks_completed_total").increment(1);
            if let Some(settled) = done {
                crate::telemetry::record_settled(&settled);
                tracing::info!(status = settled.status, "request settled");
            }
        }
        return Ok(Step::Done);
    }
    let next = TaskMessage {
        slice: msg.slice + 1,
        ..msg.clone()
    };
    let queued = retry::db("continue_task", || async {
        let mut tx = ctx.pool.begin().await?;
        let mut queued = None;
        if tasks::advance_slice(&mut tx, &msg.request_id, &msg.bot_id, msg.slice).await? {
            let id = format!("{}/{}/{}", msg.request_id, msg.bot_id, next.slice);
            queued = Some(outbox::insert(&mut tx, TASK_ROUTING_KEY, &id, &next.to_json()).await?);
        }
        tx.commit().await?;
        Ok(queued)
    })
    .await?;
    match queued {
        Some(m) => {
            ctx.publisher
                .publish_outbox(&ctx.pool, std::slice::from_ref(&m))
                .await;
            Ok(Step::Continued)
        }
        None => Ok(Step::Stale),
    }
}

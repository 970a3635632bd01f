//! Executing tasks: delete the request's users' rows in the bots a task message names, batch by
//! batch, for at most one slice per delivery. Drained tasks are marked done (once each); an
//! unfinished message commits its continuation to the outbox (split in two when it works
//! several bots, so that other replicas can take half), publishes it, and only then
//! acknowledges its delivery.

use std::{sync::Arc, time::Instant};

use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Ctx,
    dead::{Subject, dead_letter},
};
use crate::{
    contract::{RequestId, TASK_ROUTING_KEY, TaskMessage},
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
        let bots = msg.bots();
        let span = tracing::info_span!("task", request_id = %msg.request_id, bot_id = %msg.bot_id, slice = msg.slice);
        async {
            let subject = || Subject::Task {
                request_id: &msg.request_id,
                bots: &bots,
            };
            let delivery = Ctx::delivery_number(&props);
            if delivery > u64::from(ctx.config.queue.max_deliveries) {
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

/// Works one slice of the message's tasks.
pub async fn run(
    ctx: &Ctx,
    msg: &TaskMessage,
    stop: &CancellationToken,
) -> Result<Step, TaskError> {
    let bots = msg.bots();
    let group = retry::db("load_task", || {
        tasks::load(&ctx.pool, &msg.request_id, &bots)
    })
    .await?
    .ok_or(TaskError::Unknown)?;
    // The tasks this delivery works: not done, and not already handed over to a later slice
    // (by a duplicate of this message that got further, or by a message of their own).
    let bots: Vec<String> = group
        .tasks
        .iter()
        .filter(|t| t.status != "done" && t.slice <= msg.slice)
        .map(|t| t.bot_id.clone())
        .collect();
    if bots.is_empty() {
        return Ok(if group.tasks.iter().all(|t| t.status == "done") {
            Step::Done
        } else {
            Step::Stale
        });
    }
    if msg.slice == 0 {
        metrics::counter!("erasure_tasks_started_total").increment(bots.len() as u64);
    }
    // The rules are applied again: a user may have become protected since planning.
    let users = &retry::db("recheck_protection", || {
        requests::reject_newly_protected(&ctx.pool, &msg.request_id, &group.erase_user_ids)
    })
    .await?;
    // The three stores at once, each on its own connection: they are separate tables, so
    // their statements share no pages and no locks, and the database works them on as many
    // cores as it has. Each store runs batches until one proves it drained.
    let target = erase::Target {
        request: &msg.request_id,
        bots: &bots,
        users,
    };
    let stores = Store::ALL.map(|store| drain(ctx, &target, store, stop));
    let mut deleted = 0;
    let mut drained = true;
    for outcome in futures_util::future::join_all(stores).await {
        let (rows, store_drained) = outcome?;
        deleted += rows;
        drained &= store_drained;
    }
    // Which delivery deleted what: evidence when a task ran in two places at once.
    tracing::debug!(
        rows = deleted,
        drained,
        bots = bots.join(","),
        "slice worked"
    );
    if drained {
        let settled = retry::db("complete_task", || async {
            let mut tx = ctx.pool.begin().await?;
            let done = tasks::mark_done(&mut tx, &msg.request_id, &bots).await?;
            let mut settled = None;
            if done > 0 {
                settled = requests::count_tasks_done(&mut tx, &msg.request_id, done).await?;
            }
            tx.commit().await?;
            Ok((done, settled))
        })
        .await?;
        let (done, settled) = settled;
        metrics::counter!("erasure_tasks_completed_total").increment(done);
        if let Some(settled) = settled {
            crate::telemetry::record_settled(&settled);
            tracing::info!(status = settled.status, "request settled");
        }
        return Ok(Step::Done);
    }
    let queued = retry::db("continue_task", || async {
        let mut tx = ctx.pool.begin().await?;
        let advanced = tasks::advance_slice(&mut tx, &msg.request_id, &bots, msg.slice).await?;
        let next: Vec<(String, Vec<u8>)> = continuations(&msg.request_id, &advanced, msg.slice + 1)
            .iter()
            .map(TaskMessage::outbox_entry)
            .collect();
        let queued = if next.is_empty() {
            Vec::new()
        } else {
            outbox::insert_many(&mut tx, TASK_ROUTING_KEY, &next).await?
        };
        tx.commit().await?;
        Ok(queued)
    })
    .await?;
    if queued.is_empty() {
        return Ok(Step::Stale);
    }
    ctx.publisher.publish_outbox(&ctx.pool, &queued).await;
    Ok(Step::Continued)
}

/// Deletes the target's rows from one store, batch by batch, until a batch proves the store
/// drained (`true`) or the slice's budget is spent or shutdown begins (`false`). Returns the
/// rows deleted.
async fn drain(
    ctx: &Ctx,
    target: &erase::Target<'_>,
    store: Store,
    stop: &CancellationToken,
) -> Result<(u64, bool), TaskError> {
    let limit = ctx.throttle.batch(ctx.config.worker.batch_size);
    let mut deleted = 0;
    for round in 0..ctx.config.worker.batches_per_slice {
        if stop.is_cancelled() || !ctx.throttle.reserve(&ctx.pool, limit as u64, stop).await? {
            break;
        }
        let started = Instant::now();
        let batch = retry::db("delete_batch", || {
            erase::delete_batch(&ctx.pool, store, target, limit, round == 0)
        })
        .await?;
        let took = started.elapsed().as_secs_f64();
        metrics::histogram!("erasure_delete_batch_seconds", "store" => store.name()).record(took);
        tracing::trace!(
            store = store.name(),
            rows = batch.deleted,
            drained = batch.drained,
            seconds = took,
            "batch"
        );
        metrics::counter!("erasure_rows_deleted_total", "store" => store.name())
            .increment(batch.deleted);
        ctx.throttle
            .refund(&ctx.pool, (limit as u64).saturating_sub(batch.deleted))
            .await?;
        deleted += batch.deleted;
        if batch.drained {
            return Ok((deleted, true));
        }
    }
    Ok((deleted, false))
}

/// The messages that continue `bots` at `slice`: two halves when there are several, so that
/// a request too long for one slice spreads over the replicas (halving again at each slice),
/// while a short one stays in the one message whose shared statements suit it best.
fn continuations(request: &RequestId, bots: &[String], slice: i32) -> Vec<TaskMessage> {
    TaskMessage::for_bots(request, bots, bots.len().div_ceil(2), slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bots(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("b-{i}")).collect()
    }

    #[test]
    fn a_continuation_splits_its_bots_in_two_halves() {
        let id = RequestId::parse("eud-1").unwrap();
        let next = continuations(&id, &bots(5), 2);
        let parts: Vec<Vec<String>> = next.iter().map(TaskMessage::bots).collect();
        assert_eq!(parts, [bots(5)[..3].to_vec(), bots(5)[3..].to_vec()]);
        assert!(next.iter().all(|m| m.slice == 2));
        let ids: Vec<String> = next.iter().map(TaskMessage::message_id).collect();
        assert_eq!(ids, ["eud-1/b-1/2", "eud-1/b-4/2"], "distinct message ids");

        let single = continuations(&id, &bots(1), 7);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].bots(), bots(1));
        assert!(
            continuations(&id, &[], 1).is_empty(),
            "nothing advanced, nothing continues"
        );
    }
}

//! Executing tasks: delete the request's users' rows in the bots a task message names, batch by
//! batch, for at most one slice per delivery. Drained tasks are marked done (once each); an
//! unfinished message commits its continuation to the outbox (split in two when it works
//! several bots, so that other replicas can take half), which is published before the delivery
//! is acknowledged.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{
    Ctx,
    job::{Job, JobError, Poison, Step},
};
use crate::{
    catalog::Action,
    contract::{RequestId, TASK_ROUTING_KEY, TaskMessage},
    domain::{BotId, PlatformUserId, TaskStatus},
    erase, retry,
    store::{self, dead_letters::Subject, requests, tasks},
};

/// Consumes `erasure.tasks`.
pub struct TaskJob;

/// A task message with the bots it works.
#[derive(Debug)]
pub struct TaskDelivery {
    pub message: TaskMessage,
    pub bots: Vec<BotId>,
}

impl Job for TaskJob {
    type Message = TaskDelivery;
    const NAME: &'static str = "task";
    const ROUTING_KEY: &'static str = TASK_ROUTING_KEY;

    fn parse(&self, _ctx: &Ctx, data: &[u8]) -> Result<TaskDelivery, Poison> {
        let message: TaskMessage = serde_json::from_slice(data).map_err(|e| Poison {
            request_id: None,
            account_id: None,
            reason: format!("task message is malformed: {}", malformed(&e)),
        })?;
        let bots = message.bots();
        Ok(TaskDelivery { message, bots })
    }

    fn subject<'m>(&self, msg: &'m TaskDelivery) -> Subject<'m> {
        Subject::Task {
            request_id: &msg.message.request_id,
            bots: &msg.bots,
        }
    }

    fn span(&self, msg: &TaskDelivery) -> tracing::Span {
        let m = &msg.message;
        tracing::info_span!("task", request_id = %m.request_id, bot_id = %m.bot_id, slice = m.slice)
    }

    async fn execute(
        &self,
        ctx: &Ctx,
        msg: &TaskDelivery,
        stop: &CancellationToken,
    ) -> Result<Step, JobError> {
        let started = Instant::now();
        let step = run(ctx, &msg.message, stop).await;
        metrics::histogram!("erasure_task_slice_seconds").record(started.elapsed().as_secs_f64());
        step
    }
}

fn malformed(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
        _ => "missing or unexpected fields",
    }
}

/// Works one slice of the message's tasks.
pub async fn run(ctx: &Ctx, msg: &TaskMessage, stop: &CancellationToken) -> Result<Step, JobError> {
    let bots = msg.bots();
    let group = retry::transient(ctx.retry_budget(), retry::Operation::LoadTask, || {
        tasks::load(&ctx.pool, &msg.request_id, &bots)
    })
    .await?
    .ok_or(JobError::UnknownTask)?;
    // The tasks this delivery works: not done, and not already handed over to a later slice
    // (by a duplicate of this message that got further, or by a message of their own).
    let bots: Vec<BotId> = group
        .tasks
        .iter()
        .filter(|t| t.status != TaskStatus::Done && t.slice <= msg.slice)
        .map(|t| t.bot_id.clone())
        .collect();
    if bots.is_empty() {
        return Ok(
            if group.tasks.iter().all(|t| t.status == TaskStatus::Done) {
                Step::Drained
            } else {
                Step::Stale
            },
        );
    }
    if msg.slice == 0 {
        metrics::counter!("erasure_tasks_started_total").increment(bots.len() as u64);
    }
    let users = recheck(ctx, &msg.request_id, &group.erase_user_ids).await?;
    let target = erase::Target {
        request: &msg.request_id,
        bots: &bots,
        users: &users,
    };
    let (deleted, drained) = erase_slice(ctx, &target, stop).await?;
    // Which delivery deleted what: evidence when a task ran in two places at once.
    tracing::debug!(
        rows = deleted,
        drained,
        bots = bots.iter().map(BotId::as_str).collect::<Vec<_>>().join(","),
        "slice worked"
    );
    if drained {
        // A count left in another database's ledger by a crash is brought in first: the
        // request settles with every row counted.
        retry::transient(ctx.retry_budget(), retry::Operation::SyncCounts, || {
            ctx.targets.sync_counts(&msg.request_id, &bots)
        })
        .await?;
        let completed =
            retry::transient(ctx.retry_budget(), retry::Operation::CompleteTask, || {
                tasks::complete(&ctx.pool, &msg.request_id, &bots)
            })
            .await?;
        metrics::counter!("erasure_tasks_completed_total").increment(completed.tasks);
        if let Some(settled) = completed.settled {
            tracing::info!(status = %settled.status, "request settled");
        }
        return Ok(Step::Drained);
    }
    let next_slice = msg.slice + 1;
    let messages = retry::transient(ctx.retry_budget(), retry::Operation::ContinueTask, || {
        tasks::advance(&ctx.pool, &msg.request_id, &bots, msg.slice, |advanced| {
            continuations(&msg.request_id, advanced, next_slice)
                .iter()
                .map(TaskMessage::outbox_entry)
                .collect()
        })
    })
    .await?;
    Ok(if messages.is_empty() {
        Step::Stale
    } else {
        Step::Continued { messages }
    })
}

/// Applies the rules again before the slice: a user may have become protected since planning.
/// Returns the users still to erase. The common case, nobody newly protected, costs one read.
async fn recheck(
    ctx: &Ctx,
    id: &RequestId,
    users: &[PlatformUserId],
) -> Result<Vec<PlatformUserId>, JobError> {
    let protections = retry::transient(
        ctx.retry_budget(),
        retry::Operation::RecheckProtection,
        || store::platform::protections(&ctx.pool, users),
    )
    .await?;
    if protections.is_empty() {
        return Ok(users.to_vec());
    }
    Ok(retry::transient(
        ctx.retry_budget(),
        retry::Operation::RejectProtected,
        || requests::reject_protected(&ctx.pool, id, &protections),
    )
    .await?)
}

/// Runs the root stores at once, each on its own connection: they are separate tables, so
/// their statements share no pages and no locks, and the database works them on as many
/// cores as it has. Returns the rows erased and whether every store drained.
async fn erase_slice(
    ctx: &Ctx,
    target: &erase::Target<'_>,
    stop: &CancellationToken,
) -> Result<(u64, bool), JobError> {
    let roots = ctx
        .targets
        .roots()
        .map(|root| drain(ctx, target, root, stop));
    let mut erased = 0;
    let mut drained = true;
    for outcome in futures_util::future::join_all(roots).await {
        let (rows, store_drained) = outcome?;
        erased += rows;
        drained &= store_drained;
    }
    Ok((erased, drained))
}

/// Erases the target's rows from one root store (and its children), batch by batch, until a
/// batch proves the store drained (`true`) or the slice's budget is spent or shutdown begins
/// (`false`). Returns the rows erased.
async fn drain(
    ctx: &Ctx,
    target: &erase::Target<'_>,
    root: usize,
    stop: &CancellationToken,
) -> Result<(u64, bool), JobError> {
    let name = ctx.targets.catalog.stores[root].name.clone();
    let limit = ctx.throttle.batch(ctx.config.worker.batch_size);
    let mut erased = 0;
    for round in 0..ctx.config.worker.batches_per_slice {
        if stop.is_cancelled() || !ctx.throttle.reserve(&ctx.pool, limit as u64, stop).await? {
            break;
        }
        let started = Instant::now();
        let batch = retry::transient(ctx.retry_budget(), retry::Operation::DeleteBatch, || {
            ctx.targets.batch(root, target, limit, round == 0)
        })
        .await?;
        let took = started.elapsed().as_secs_f64();
        metrics::histogram!("erasure_delete_batch_seconds", "store" => name.clone()).record(took);
        let rows = record_rows(ctx, &batch);
        tracing::trace!(store = %name, rows, drained = batch.drained, seconds = took, "batch");
        ctx.throttle.settle(&ctx.pool, limit as u64, rows).await?;
        erased += rows;
        if batch.drained {
            return Ok((erased, true));
        }
    }
    Ok((erased, false))
}

/// Counts a batch's rows in the metrics, per store and action; returns their sum.
fn record_rows(ctx: &Ctx, batch: &erase::Batch) -> u64 {
    let mut sum = 0;
    for s in &batch.stores {
        let store = &ctx.targets.catalog.stores[s.store];
        let label = store.name.clone();
        match store.action {
            Action::Delete => metrics::counter!("erasure_rows_deleted_total", "store" => label),
            Action::Anonymize(_) => {
                metrics::counter!("erasure_rows_anonymized_total", "store" => label)
            }
        }
        .increment(s.total());
        sum += s.total();
    }
    sum
}

/// The messages that continue `bots` at `slice`: two halves when there are several, so that
/// a request too long for one slice spreads over the replicas (halving again at each slice),
/// while a short one stays in the one message whose shared statements suit it best.
fn continuations(request: &RequestId, bots: &[BotId], slice: i32) -> Vec<TaskMessage> {
    TaskMessage::for_bots(request, bots, bots.len().div_ceil(2), slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bots(n: usize) -> Vec<BotId> {
        (1..=n).map(|i| BotId::new(format!("b-{i}"))).collect()
    }

    #[test]
    fn a_continuation_splits_its_bots_in_two_halves() {
        let id = RequestId::parse("eud-1").unwrap();
        let next = continuations(&id, &bots(5), 2);
        let parts: Vec<Vec<BotId>> = next.iter().map(TaskMessage::bots).collect();
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

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
    domain::{BotId, PlatformUserId},
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
        self.execute_many(ctx, &[msg], stop).await.remove(0)
    }

    async fn execute_many(
        &self,
        ctx: &Ctx,
        msgs: &[&TaskDelivery],
        stop: &CancellationToken,
    ) -> Vec<Result<Step, JobError>> {
        let started = Instant::now();
        let messages: Vec<&TaskMessage> = msgs.iter().map(|m| &m.message).collect();
        let steps = run_group(ctx, &messages, stop).await;
        metrics::histogram!("erasure_task_slice_seconds").record(started.elapsed().as_secs_f64());
        steps
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
    run_group(ctx, &[msg], stop).await.remove(0)
}

/// One message's share of a group: its tasks still to work, whose rows, and how it ends.
struct Work<'a> {
    msg: &'a TaskMessage,
    /// When this delivery began: the tasks' start, unless an earlier slice stamped one.
    started: chrono::DateTime<chrono::Utc>,
    bots: Vec<BotId>,
    users: Vec<PlatformUserId>,
    /// Rows erased by this slice, and whether every store drained.
    erased: u64,
    drained: bool,
    /// Set once the message's outcome is known.
    step: Option<Result<Step, JobError>>,
}

impl<'a> Work<'a> {
    /// A message's share before its tasks are loaded: its bots, nothing erased yet.
    fn new(msg: &'a TaskMessage) -> Self {
        Work {
            msg,
            started: chrono::Utc::now(),
            bots: msg.bots(),
            users: Vec::new(),
            erased: 0,
            drained: true,
            step: None,
        }
    }

    fn target(&self) -> erase::Target<'_> {
        erase::Target {
            while_status: crate::domain::RequestStatus::InProgress,
            request: &self.msg.request_id,
            bots: &self.bots,
            users: &self.users,
        }
    }

    fn active(&self) -> bool {
        self.step.is_none()
    }

    /// The message's span (as [`TaskJob::span`]), for what is logged of it in a group.
    fn span(&self) -> tracing::Span {
        let m = self.msg;
        tracing::info_span!("task", request_id = %m.request_id, bot_id = %m.bot_id, slice = m.slice)
    }
}

/// Works one slice of several task messages that were ready together: one load, one
/// re-check and one completion for all, and where their rows fit one batch of a store, one
/// count and one delete for all of them; what does not fit is erased message by message.
pub async fn run_group(
    ctx: &Ctx,
    msgs: &[&TaskMessage],
    stop: &CancellationToken,
) -> Vec<Result<Step, JobError>> {
    let mut works: Vec<Work<'_>> = msgs.iter().map(|msg| Work::new(msg)).collect();
    if let Err(e) = work_slice(ctx, &mut works, stop).await {
        for w in works.iter_mut().filter(|w| w.active()) {
            w.step = Some(Err(e.clone()));
        }
    }
    works
        .into_iter()
        .map(|w| w.step.expect("every message has its outcome"))
        .collect()
}

/// Works, in the delivery that planned them, the tasks of messages just planned whose rows
/// fit one shared statement per store: no task message, no load (the plan just wrote what it
/// would read), no re-check (the plan just applied the rules). Returns, per message, whether
/// its tasks are done; a message whose are not (rows beyond one batch, a store with children
/// or anonymized, shutdown, any error) is left to its task message, which the caller
/// publishes: what was erased here is counted already, and that delivery erases the rest
/// (and counts its tasks started, so they are counted here only when done).
pub async fn at_planning(
    ctx: &Ctx,
    planned: &[(&TaskMessage, &[PlatformUserId])],
    stop: &CancellationToken,
) -> Vec<bool> {
    let mut works: Vec<Work<'_>> = planned
        .iter()
        .map(|(msg, users)| Work {
            users: users.to_vec(),
            ..Work::new(msg)
        })
        .collect();
    let started = Instant::now();
    if let Err(e) = erase_slice(ctx, &mut works, Budget::AtOnce, stop).await {
        tracing::info!(error = %e, "erasing at planning stopped; the task messages take over");
    }
    metrics::histogram!("erasure_task_slice_seconds").record(started.elapsed().as_secs_f64());
    let done: Vec<bool> = works
        .iter()
        .map(|w| matches!(w.step, Some(Ok(Step::Drained))))
        .collect();
    metrics::counter!("erasure_tasks_started_total").increment(
        works
            .iter()
            .zip(&done)
            .filter(|(_, d)| **d)
            .map(|(w, _)| w.bots.len() as u64)
            .sum(),
    );
    done
}

/// How much of its tasks a delivery works.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Budget {
    /// Batch after batch until the stores drain or `ERASURE_BATCHES_PER_SLICE` is spent.
    Slice,
    /// Only rows that fit one shared statement per store (see [`at_planning`]).
    AtOnce,
}

async fn work_slice(
    ctx: &Ctx,
    works: &mut [Work<'_>],
    stop: &CancellationToken,
) -> Result<(), JobError> {
    load(ctx, works).await?;
    recheck(ctx, works).await?;
    erase_slice(ctx, works, Budget::Slice, stop).await?;
    for w in works.iter_mut().filter(|w| w.active()) {
        w.step = Some(advance(ctx, w).await);
    }
    Ok(())
}

/// Erases the active works' rows within `budget`, from every root store at once, and
/// completes the works whose stores all drained.
async fn erase_slice(
    ctx: &Ctx,
    works: &mut [Work<'_>],
    budget: Budget,
    stop: &CancellationToken,
) -> Result<(), JobError> {
    let active: Vec<usize> = (0..works.len()).filter(|&i| works[i].active()).collect();
    let roots = ctx
        .targets
        .roots()
        .map(|root| erase_root(ctx, root, works, &active, budget, stop));
    // Every store's slice runs to its end even when another's fails, rather than be dropped
    // mid-statement: what they erased is committed with its count either way, and the
    // failure is reported once they are all done.
    let per_root = futures_util::future::join_all(roots)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    for erased in per_root {
        for (&i, (rows, drained)) in active.iter().zip(erased) {
            works[i].erased += rows;
            works[i].drained &= drained;
        }
    }
    for &i in &active {
        let w = &works[i];
        let _span = w.span().entered();
        // Which delivery deleted what: evidence when a task ran in two places at once.
        tracing::debug!(
            rows = w.erased,
            drained = w.drained,
            bots = w
                .bots
                .iter()
                .map(BotId::as_str)
                .collect::<Vec<_>>()
                .join(","),
            "slice worked"
        );
    }
    complete(ctx, works).await
}

/// Loads the group's tasks. A message whose tasks are unknown, all done, or handed over to a
/// later slice (by a duplicate that got further, or by a message of their own) ends here.
async fn load(ctx: &Ctx, works: &mut [Work<'_>]) -> Result<(), JobError> {
    let keys: Vec<(&RequestId, &[BotId])> = works
        .iter()
        .map(|w| (&w.msg.request_id, w.bots.as_slice()))
        .collect();
    let loaded = retry::transient(ctx.retry_budget(), retry::Operation::LoadTask, || {
        tasks::load(&ctx.pool, &keys)
    })
    .await?;
    for (w, group) in works.iter_mut().zip(loaded) {
        let Some(group) = group else {
            w.step = Some(Err(JobError::UnknownTask));
            continue;
        };
        // In the message's order (the tasks come in whatever order the join produced), so
        // that messages of the same bots are grouped together.
        let open = |b: &BotId| {
            group
                .tasks
                .iter()
                .any(|t| t.bot_id == *b && t.status.is_open() && t.slice <= w.msg.slice)
        };
        w.bots.retain(open);
        w.users = group.erase_user_ids;
        if w.bots.is_empty() {
            let done = group.tasks.iter().all(|t| !t.status.is_open());
            w.step = Some(Ok(if done { Step::Drained } else { Step::Stale }));
        } else if w.msg.slice == 0 {
            metrics::counter!("erasure_tasks_started_total").increment(w.bots.len() as u64);
        }
    }
    Ok(())
}

/// Applies the rules again before the slice: a user may have become protected since planning.
/// The common case, nobody newly protected, costs one read for the whole group.
async fn recheck(ctx: &Ctx, works: &mut [Work<'_>]) -> Result<(), JobError> {
    let mut users: Vec<PlatformUserId> = works
        .iter()
        .filter(|w| w.active())
        .flat_map(|w| w.users.iter().cloned())
        .collect();
    users.sort();
    users.dedup();
    let protections = retry::transient(
        ctx.retry_budget(),
        retry::Operation::RecheckProtection,
        || store::platform::protections(store::sql::on(&ctx.pool), &users),
    )
    .await?;
    if protections.is_empty() {
        return Ok(());
    }
    for w in works.iter_mut().filter(|w| w.active()) {
        if w.users.iter().any(|u| protections.of(u).is_some()) {
            w.users = retry::transient(
                ctx.retry_budget(),
                retry::Operation::RejectProtected,
                || requests::reject_protected(&ctx.pool, &w.msg.request_id, &protections),
            )
            .await?;
        }
    }
    Ok(())
}

/// Erases the active works' rows from one root store (and its children): works that share
/// their bots together in one batch where their rows fit it, the others one by one (within a
/// [`Budget::Slice`]; within [`Budget::AtOnce`] the group is halved until its parts fit, and
/// a work too big alone is left as it is). Returns, per active work, the rows erased and
/// whether the store drained for it.
async fn erase_root(
    ctx: &Ctx,
    root: usize,
    works: &[Work<'_>],
    active: &[usize],
    budget: Budget,
    stop: &CancellationToken,
) -> Result<Vec<(u64, bool)>, JobError> {
    let mut out = vec![(0, false); active.len()];
    let mut alone: Vec<usize> = Vec::new();
    // A stack, in order: a halved group's first half comes next.
    let mut groups = by_bots(works, active);
    groups.reverse();
    let mut halvings = MOST_HALVINGS_AT_PLANNING;
    while let Some(group) = groups.pop() {
        if group.len() == 1 && budget == Budget::Slice {
            alone.push(group[0]);
            continue;
        }
        let targets: Vec<erase::Target<'_>> =
            group.iter().map(|&k| works[active[k]].target()).collect();
        match together(ctx, root, &targets, stop).await? {
            Some(rows) => {
                for (&k, n) in group.iter().zip(rows) {
                    out[k] = (n, true);
                }
            }
            None if budget == Budget::Slice => alone.extend(group),
            // At planning, a group whose rows are too many for one statement is halved until
            // its parts fit (a burst of requests makes large groups): only a request too big
            // on its own is left to its task message.
            None if group.len() > 1 && halvings > 0 && !stop.is_cancelled() => {
                halvings -= 1;
                let (first, second) = group.split_at(group.len() / 2);
                groups.push(second.to_vec());
                groups.push(first.to_vec());
            }
            None => {}
        }
    }
    for k in alone {
        out[k] = drain(ctx, &works[active[k]].target(), root, stop).await?;
    }
    Ok(out)
}

/// Most groups halved per store at planning. Each try that does not fit costs a count of up
/// to a batch's rows: were every request of a large group too big on its own, halving down to
/// single requests would count the batch's rows twice per request; past this many halvings
/// the parts left are left to their task messages.
const MOST_HALVINGS_AT_PLANNING: usize = 7;

/// The active works grouped by their bots, in whatever order they list them (indices into
/// `active`), each group in order.
fn by_bots(works: &[Work<'_>], active: &[usize]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Vec<&BotId>, Vec<usize>)> = Vec::new();
    for (k, &i) in active.iter().enumerate() {
        let mut bots: Vec<&BotId> = works[i].bots.iter().collect();
        bots.sort_unstable();
        match groups.iter_mut().find(|(b, _)| *b == bots) {
            Some((_, members)) => members.push(k),
            None => groups.push((bots, vec![k])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// One batch for several targets sharing their bots, when their rows fit it: rows per target.
async fn together(
    ctx: &Ctx,
    root: usize,
    targets: &[erase::Target<'_>],
    stop: &CancellationToken,
) -> Result<Option<Vec<u64>>, JobError> {
    let limit = ctx.throttle.batch(ctx.config.worker.batch_size);
    if stop.is_cancelled() || !ctx.throttle.reserve(&ctx.pool, limit as u64, stop).await? {
        return Ok(None);
    }
    let refs: Vec<&erase::Target<'_>> = targets.iter().collect();
    let started = Instant::now();
    let erased = retry::transient(ctx.retry_budget(), retry::Operation::DeleteBatch, || {
        ctx.targets.together(root, &refs, limit)
    })
    .await?;
    let rows: Option<Vec<u64>> = erased.map(|each| {
        let batch = erase::Batch {
            stores: each,
            drained: true,
        };
        observe(ctx, root, &batch, started);
        batch.stores.iter().map(erase::StoreRows::total).collect()
    });
    let used = rows.as_ref().map_or(0, |r| r.iter().sum());
    ctx.throttle.settle(&ctx.pool, limit as u64, used).await?;
    Ok(rows)
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
        let rows = observe(ctx, root, &batch, started);
        ctx.throttle.settle(&ctx.pool, limit as u64, rows).await?;
        erased += rows;
        if batch.drained {
            return Ok((erased, true));
        }
    }
    Ok((erased, false))
}

/// Records a batch in the metrics (its duration, its rows per store and action) and the
/// trace log; returns its rows.
fn observe(ctx: &Ctx, root: usize, batch: &erase::Batch, started: Instant) -> u64 {
    let took = started.elapsed().as_secs_f64();
    let name = ctx.targets.catalog.stores[root].name.clone();
    metrics::histogram!("erasure_delete_batch_seconds", "store" => name.clone()).record(took);
    let mut rows = 0;
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
        rows += s.total();
    }
    tracing::trace!(store = %name, rows, drained = batch.drained, seconds = took, "batch");
    rows
}

/// Marks done, in one transaction, the tasks of every work whose stores all drained (a count
/// left in another database's ledger by a crash is brought in first: the request settles
/// with every row counted).
async fn complete(ctx: &Ctx, works: &mut [Work<'_>]) -> Result<(), JobError> {
    let drained: Vec<usize> = (0..works.len())
        .filter(|&i| works[i].active() && works[i].drained)
        .collect();
    if drained.is_empty() {
        return Ok(());
    }
    if !ctx.targets.others().is_empty() {
        for &i in &drained {
            let w = &works[i];
            retry::transient(ctx.retry_budget(), retry::Operation::SyncCounts, || {
                ctx.targets.sync_counts(&w.msg.request_id, &w.bots)
            })
            .await?;
        }
    }
    let keys: Vec<(&RequestId, &[BotId])> = drained
        .iter()
        .map(|&i| (&works[i].msg.request_id, works[i].bots.as_slice()))
        .collect();
    let completed = retry::transient(ctx.retry_budget(), retry::Operation::CompleteTask, || {
        tasks::complete(&ctx.pool, &keys, works[drained[0]].started)
    })
    .await?;
    for (&i, done) in drained.iter().zip(completed) {
        metrics::counter!("erasure_tasks_completed_total").increment(done.tasks);
        if let Some(settled) = done.settled {
            let _span = works[i].span().entered();
            tracing::info!(status = %settled.status, "request settled");
        }
        works[i].step = Some(Ok(Step::Drained));
    }
    Ok(())
}

/// Hands a work whose slice is used up over to its continuation messages.
async fn advance(ctx: &Ctx, w: &Work<'_>) -> Result<Step, JobError> {
    let next_slice = w.msg.slice + 1;
    let messages = retry::transient(ctx.retry_budget(), retry::Operation::ContinueTask, || {
        tasks::advance(
            &ctx.pool,
            &w.msg.request_id,
            &w.bots,
            w.msg.slice,
            w.started,
            |advanced| {
                continuations(&w.msg.request_id, advanced, next_slice)
                    .iter()
                    .map(TaskMessage::outbox_entry)
                    .collect()
            },
        )
    })
    .await?;
    Ok(if messages.is_empty() {
        Step::Stale
    } else {
        Step::Continued { messages }
    })
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
    fn messages_of_the_same_bots_in_another_order_are_worked_together() {
        let id = RequestId::parse("eud-1").unwrap();
        let mut reversed = bots(3);
        reversed.reverse();
        let messages = [
            TaskMessage::for_bots(&id, &bots(3), 3, 0).remove(0),
            TaskMessage::for_bots(&id, &bots(2), 3, 0).remove(0),
            TaskMessage::for_bots(&id, &reversed, 3, 0).remove(0),
        ];
        let works: Vec<Work<'_>> = messages.iter().map(Work::new).collect();
        assert_eq!(by_bots(&works, &[0, 1, 2]), [vec![0, 2], vec![1]]);
        assert_eq!(
            by_bots(&works, &[1, 2]),
            [vec![0], vec![1]],
            "indices into active"
        );
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

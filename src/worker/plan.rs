//! Planning: turn erase requests into per-bot tasks. Resolves identities, applies the rules
//! of erasure, and commits the users' outcomes, the tasks and their messages (outbox) in one
//! transaction, under the requests' row locks so that a duplicate delivery plans nothing.
//! Requests ready together are planned together, in one transaction of a dozen statements
//! whatever their number.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;

use super::{
    Ctx,
    job::{Job, JobError, Poison, Step},
    task,
};
use crate::{
    contract::{ERASE_ROUTING_KEY, EraseMessage, TaskMessage},
    domain::{AccountId, BotId, PlatformUserId, RequestId},
    queue::consumer::Linger,
    retry, rules,
    store::{
        dead_letters::Subject,
        outbox,
        planning::{Plan, PlanRow, Planned, Planning},
        platform::ResolvedEntry,
        requests::{NewRequest, Source},
    },
};

/// Consumes `erasure.requests`.
pub struct PlanJob;

impl Job for PlanJob {
    type Message = EraseMessage;
    const NAME: &'static str = "plan";
    const ROUTING_KEY: &'static str = ERASE_ROUTING_KEY;

    fn parse(&self, ctx: &Ctx, data: &[u8]) -> Result<EraseMessage, Poison> {
        EraseMessage::parse(data, ctx.config.http.max_body_bytes, &ctx.limits).map_err(|e| Poison {
            request_id: e.request_id,
            account_id: e.account_id,
            reason: e.reason,
        })
    }

    fn subject<'m>(&self, msg: &'m EraseMessage) -> Subject<'m> {
        Subject::Request {
            request_id: Some(&msg.request_id),
            account_id: Some(&msg.account_id),
        }
    }

    fn span(&self, msg: &EraseMessage) -> tracing::Span {
        tracing::info_span!("plan", request_id = %msg.request_id)
    }

    /// A burst of requests (a platform offboarding its users one message each) is planned
    /// and erased in groups as large as it allows: each group's statements visit the pages
    /// its users' rows share once, where groups of a few users would each visit them again.
    fn linger(&self, ctx: &Ctx) -> Option<Linger> {
        let w = &ctx.config.worker;
        (!w.coalesce_wait.is_zero()).then_some(Linger {
            most: w.coalesce_wait,
            pause: w.coalesce_pause,
        })
    }

    async fn execute(
        &self,
        ctx: &Ctx,
        msg: &EraseMessage,
        stop: &CancellationToken,
    ) -> Result<Step, JobError> {
        self.execute_many(ctx, &[msg], stop).await.remove(0)
    }

    /// Plans the requests (together when they can be), then erases at once what the small
    /// ones' plans queued, where it fits ([`erase_at_once`]).
    async fn execute_many(
        &self,
        ctx: &Ctx,
        msgs: &[&EraseMessage],
        stop: &CancellationToken,
    ) -> Vec<Result<Step, JobError>> {
        let together = if msgs.len() > 1 {
            retry::transient(ctx.retry_budget(), retry::Operation::Plan, || {
                plan_group(ctx, msgs)
            })
            .await
        } else {
            Ok(None)
        };
        let mut plans: Vec<Result<Outcome, JobError>> = match together {
            Ok(Some(planned)) => planned.into_iter().map(Ok).collect(),
            Err(e) => return msgs.iter().map(|_| Err(e.clone())).collect(),
            // One message, or something in the group needs a request of its own: each alone.
            Ok(None) => {
                let mut plans = Vec::with_capacity(msgs.len());
                for msg in msgs {
                    plans.push(plan_one(ctx, msg).await);
                }
                plans
            }
        };
        erase_at_once(ctx, &mut plans, stop).await;
        plans.into_iter().map(|p| p.map(|o| o.step)).collect()
    }
}

/// A request's plan as its transaction committed it: the step, and the task messages it
/// queued with the users they erase.
struct Outcome {
    step: Step,
    tasks: Vec<TaskMessage>,
    users: Vec<PlatformUserId>,
}

impl Outcome {
    fn of(step: Step) -> Self {
        Self {
            step,
            tasks: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// Erases, in the delivery that planned them, the tasks of requests of at most
/// `ERASURE_ERASE_AT_PLANNING_USERS` users whose rows fit one shared statement per store (a
/// platform's one-user requests): their task messages, committed to the outbox with the
/// plan, are then cleared unpublished. The rest are published as planned, and so is a message
/// whose tasks this did not finish; were the worker to die here, the outbox relay publishes
/// them all. That saves each small request a message through the broker, a delivery, and
/// the task's load and re-check.
async fn erase_at_once(
    ctx: &Ctx,
    plans: &mut [Result<Outcome, JobError>],
    stop: &CancellationToken,
) {
    let most = ctx.config.worker.erase_at_planning_users;
    let small: Vec<(&TaskMessage, &[PlatformUserId])> = plans
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .filter(|o| matches!(o.step, Step::Planned { .. }) && o.users.len() <= most)
        .flat_map(|o| o.tasks.iter().map(|t| (t, o.users.as_slice())))
        .collect();
    if small.is_empty() || stop.is_cancelled() {
        return;
    }
    let done: HashSet<String> = task::at_planning(ctx, &small, stop)
        .await
        .into_iter()
        .zip(&small)
        .filter(|(done, _)| *done)
        .map(|(_, (t, _))| t.message_id())
        .collect();
    let mut cleared = Vec::new();
    for outcome in plans.iter_mut().filter_map(|p| p.as_mut().ok()) {
        if let Step::Planned { messages } = &mut outcome.step {
            cleared.extend(
                messages
                    .extract_if(.., |m| done.contains(&m.message_id))
                    .map(|m| m.id),
            );
        }
    }
    if cleared.is_empty() {
        return;
    }
    metrics::counter!("erasure_task_messages_skipped_total").increment(cleared.len() as u64);
    // Left behind, the relay publishes them later, and their deliveries find the tasks done.
    if let Err(e) = outbox::delete(&ctx.pool, &cleared).await {
        tracing::warn!(error = %crate::store::describe(&e), "could not clear the outbox rows of tasks done at planning");
    }
}

/// Plans one request (retried whole on a transient error), without erasing anything.
pub async fn plan(ctx: &Ctx, msg: &EraseMessage) -> Result<Step, JobError> {
    plan_one(ctx, msg).await.map(|o| o.step)
}

async fn plan_one(ctx: &Ctx, msg: &EraseMessage) -> Result<Outcome, JobError> {
    retry::transient(ctx.retry_budget(), retry::Operation::Plan, || async {
        let mut planning = Planning::begin(&ctx.pool, &[new_request(msg)]).await?;
        match judge(&mut planning, &[msg]).await?.remove(0) {
            Verdict::Refused(reason) => Err(JobError::Refused(reason)),
            Verdict::NotDue => {
                planning.skip().await?;
                Ok(Outcome::of(Step::Duplicate))
            }
            Verdict::Due(bots) => Ok(commit(ctx, planning, &[msg], &[bots]).await?.remove(0)),
        }
    })
    .await
}

/// Plans several requests in one transaction; `None` (nothing written) when any of them is
/// refused or not due, to be planned on its own.
async fn plan_group(ctx: &Ctx, msgs: &[&EraseMessage]) -> Result<Option<Vec<Outcome>>, JobError> {
    let mut ids: Vec<&RequestId> = msgs.iter().map(|m| &m.request_id).collect();
    ids.sort();
    ids.dedup();
    if ids.len() < msgs.len() {
        // A request twice in one group (a redelivery beside the original): one at a time.
        return Ok(None);
    }
    let news: Vec<NewRequest<'_>> = msgs.iter().map(|m| new_request(m)).collect();
    let mut planning = Planning::begin(&ctx.pool, &news).await?;
    let verdicts = judge(&mut planning, msgs).await?;
    if verdicts.len() < msgs.len() {
        return Ok(None);
    }
    let mut bots = Vec::with_capacity(msgs.len());
    for verdict in verdicts {
        match verdict {
            Verdict::Due(b) => bots.push(b),
            Verdict::NotDue | Verdict::Refused(_) => return Ok(None),
        }
    }
    Ok(Some(commit(ctx, planning, msgs, &bots).await?))
}

fn new_request(msg: &EraseMessage) -> NewRequest<'_> {
    NewRequest {
        request_id: &msg.request_id,
        account_id: &msg.account_id,
        requested_by: &msg.requested_by,
        source: Source::Queue,
        client_addr: None,
        request: &msg.request,
        idempotency_key: None,
        body_digest: None,
        requested_at: msg.requested_at,
    }
}

/// What a request's plan can be.
enum Verdict {
    /// To plan, erasing from these bots.
    Due(Vec<BotId>),
    /// A duplicate delivery, or a request already settled: nothing to do.
    NotDue,
    /// It breaks a rule: it can never succeed as sent.
    Refused(String),
}

/// Judges each request (in the order of `msgs`) with one read per kind for all of them.
async fn judge(planning: &mut Planning, msgs: &[&EraseMessage]) -> Result<Vec<Verdict>, JobError> {
    let known = planning.known_accounts().await?;
    let account_bots = planning.account_bots().await?;
    let bot_accounts = planning.bot_accounts().await?;
    Ok(msgs
        .iter()
        .zip(&planning.requests)
        .map(|(msg, row)| verdict(msg, row, &known, &account_bots, &bot_accounts))
        .collect())
}

fn verdict(
    msg: &EraseMessage,
    row: &PlanRow,
    known: &HashSet<AccountId>,
    account_bots: &HashMap<AccountId, Vec<BotId>>,
    bot_accounts: &HashMap<BotId, AccountId>,
) -> Verdict {
    if row.account_id != msg.account_id {
        return Verdict::Refused("request id already used by another account".into());
    }
    if !row.is_due() {
        return Verdict::NotDue;
    }
    if !known.contains(&row.account_id) {
        return Verdict::Refused("account is unknown to the platform".into());
    }
    if row.remove_data_from_all_bots {
        return Verdict::Due(
            account_bots
                .get(&row.account_id)
                .cloned()
                .unwrap_or_default(),
        );
    }
    for bot in &row.bot_ids {
        match bot_accounts.get(bot) {
            None => return Verdict::Refused(format!("bot {bot} is unknown to the platform")),
            Some(a) if *a != row.account_id => {
                return Verdict::Refused(format!(
                    "bot {bot} is not a bot of the request's account"
                ));
            }
            Some(_) => {}
        }
    }
    Verdict::Due(row.bot_ids.clone())
}

/// Resolves everyone of the requests, applies the rules to each, and commits their plans.
async fn commit(
    ctx: &Ctx,
    mut planning: Planning,
    msgs: &[&EraseMessage],
    bots: &[Vec<BotId>],
) -> Result<Vec<Outcome>, JobError> {
    let entries = planning.resolve_users().await?;
    let mut everyone: Vec<PlatformUserId> =
        entries.iter().flat_map(|e| e.user_ids.clone()).collect();
    everyone.sort();
    everyone.dedup();
    let protections = planning.protections(&everyone).await?;
    let per_request: Vec<Vec<&ResolvedEntry>> = msgs
        .iter()
        .map(|m| {
            entries
                .iter()
                .filter(|e| e.request_id == m.request_id)
                .collect()
        })
        .collect();
    let decisions: Vec<rules::Decision> = per_request
        .iter()
        .map(|e| rules::decide(e, &protections))
        .collect();
    // One message per group of bots: a group's tasks share their delete statements, which
    // visit each heap page once for all of its bots rather than once per bot.
    let tasks: Vec<Vec<TaskMessage>> = msgs
        .iter()
        .zip(bots)
        .map(|(m, b)| {
            TaskMessage::for_bots(&m.request_id, b, ctx.config.worker.bots_per_message, 0)
        })
        .collect();
    let messages: Vec<Vec<(String, Vec<u8>)>> = tasks
        .iter()
        .map(|t| t.iter().map(TaskMessage::outbox_entry).collect())
        .collect();
    let plans: Vec<Plan<'_>> = (0..msgs.len())
        .map(|i| Plan {
            request_id: &msgs[i].request_id,
            entries: &per_request[i],
            decision: &decisions[i],
            bots: &bots[i],
            messages: &messages[i],
        })
        .collect();
    let planned = planning.commit(&plans).await?;
    Ok(msgs
        .iter()
        .zip(planned)
        .zip(tasks.into_iter().zip(decisions))
        .map(|((msg, planned), (tasks, decision))| Outcome {
            step: step(msg, planned),
            tasks,
            users: decision.erase,
        })
        .collect())
}

fn step(msg: &EraseMessage, planned: Planned) -> Step {
    let _span = tracing::info_span!("plan", request_id = %msg.request_id).entered();
    match planned {
        Planned::Tasks { tasks, messages } => {
            metrics::counter!("erasure_tasks_planned_total").increment(tasks as u64);
            tracing::info!(tasks, users = msg.request.user_ids.len(), "request planned");
            Step::Planned { messages }
        }
        Planned::Settled(settled) => {
            tracing::info!(
                status = %settled.status,
                "request settled at planning: nothing to erase"
            );
            Step::SettledAtPlanning
        }
    }
}

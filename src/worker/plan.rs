//! Planning: turn an erase request into per-bot tasks. Resolves identities, applies the rules
//! of erasure, and commits the users' outcomes, the tasks and their messages (outbox) in one
//! transaction, under the request's row lock so that a duplicate delivery plans nothing.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use super::{
    Ctx,
    job::{Job, JobError, Poison, Step},
};
use crate::{
    contract::{ERASE_ROUTING_KEY, EraseMessage, TaskMessage},
    domain::{AccountId, BotId, PlatformUserId},
    retry, rules,
    store::{
        dead_letters::Subject,
        planning::{Planned, Planning},
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

    async fn execute(
        &self,
        ctx: &Ctx,
        msg: &EraseMessage,
        _stop: &CancellationToken,
    ) -> Result<Step, JobError> {
        retry::transient(ctx.retry_budget(), retry::Operation::Plan, || {
            plan(ctx, msg)
        })
        .await
    }
}

/// Plans one request in one transaction (retried whole on a transient error).
pub async fn plan(ctx: &Ctx, msg: &EraseMessage) -> Result<Step, JobError> {
    let new = NewRequest {
        request_id: &msg.request_id,
        account_id: &msg.account_id,
        requested_by: &msg.requested_by,
        source: Source::Queue,
        client_addr: None,
        request: &msg.request,
        idempotency_key: None,
        body_digest: None,
        requested_at: msg.requested_at,
    };
    let mut planning = Planning::begin(&ctx.pool, &new).await?;
    if planning.request.account_id != msg.account_id {
        return Err(JobError::Refused(
            "request id already used by another account".into(),
        ));
    }
    if !planning.is_due() {
        planning.skip().await?;
        return Ok(Step::Duplicate);
    }
    if !planning.account_exists().await? {
        return Err(JobError::Refused(
            "account is unknown to the platform".into(),
        ));
    }
    let bots = target_bots(&mut planning).await?;
    let entries = planning.resolve_users().await?;
    let mut everyone: Vec<PlatformUserId> =
        entries.iter().flat_map(|e| e.user_ids.clone()).collect();
    everyone.sort();
    everyone.dedup();
    let protections = planning.protections(&everyone).await?;
    let decision = rules::decide(&entries, &protections);
    // One message per group of bots: a group's tasks share their delete statements, which
    // visit each heap page once for all of its bots rather than once per bot.
    let messages: Vec<(String, Vec<u8>)> = TaskMessage::for_bots(
        &msg.request_id,
        &bots,
        ctx.config.worker.bots_per_message,
        0,
    )
    .iter()
    .map(TaskMessage::outbox_entry)
    .collect();
    match planning
        .commit(&entries, &decision, &bots, &messages)
        .await?
    {
        Planned::Tasks { tasks, messages } => {
            metrics::counter!("erasure_tasks_planned_total").increment(tasks as u64);
            tracing::info!(tasks, users = entries.len(), "request planned");
            Ok(Step::Planned { messages })
        }
        Planned::Settled(settled) => {
            tracing::info!(
                status = %settled.status,
                "request settled at planning: nothing to erase"
            );
            Ok(Step::SettledAtPlanning)
        }
        Planned::NotDue => Ok(Step::Duplicate),
    }
}

/// The bots to erase from: every bot of the account, or the bots named, each of which must
/// be the account's.
async fn target_bots(planning: &mut Planning) -> Result<Vec<BotId>, JobError> {
    if planning.request.remove_data_from_all_bots {
        return Ok(planning.account_bots().await?);
    }
    let owners: HashMap<BotId, AccountId> = planning.bot_accounts().await?.into_iter().collect();
    for bot in &planning.request.bot_ids {
        match owners.get(bot) {
            None => {
                return Err(JobError::Refused(format!(
                    "bot {bot} is unknown to the platform"
                )));
            }
            Some(a) if *a != planning.request.account_id => {
                return Err(JobError::Refused(format!(
                    "bot {bot} is not a bot of the request's account"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(planning.request.bot_ids.clone())
}

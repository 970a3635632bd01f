//! Planning: turn an erase request into per-bot tasks. Resolves identities, applies the
//! rules of erasure, and commits the users' outcomes, the tasks and their messages (outbox)
//! in one transaction, under the request's row lock so that a duplicate delivery plans nothing.

use std::{collections::HashMap, sync::Arc};

use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Ctx,
    dead::{Subject, dead_letter},
};
use crate::{
    contract::{ERASE_ROUTING_KEY, EraseMessage, TASK_ROUTING_KEY, TaskMessage},
    queue::consumer::{Handler, Outcome},
    retry,
    store::{
        self, apps,
        outbox::{self, OutboxMessage},
        requests::{self, NewRequest, Source},
        tasks,
    },
};

/// Consumes `erasure.requests`.
pub struct RequestHandler(pub Arc<Ctx>);

enum PlanError {
    Db(sqlx::Error),
    /// The request breaks a rule: it can never succeed as sent.
    Refused(String),
}

impl From<sqlx::Error> for PlanError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl Handler for RequestHandler {
    async fn handle(
        &self,
        data: Vec<u8>,
        props: BasicProperties,
        _stop: CancellationToken,
    ) -> Outcome {
        let ctx = &*self.0;
        let msg = match EraseMessage::parse(&data, ctx.config.http.max_body_bytes, &ctx.limits) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("erasure_poison_messages_total").increment(1);
                let subject = Subject::Request {
                    request_id: e.request_id.as_ref(),
                    account_id: e.account_id.as_deref(),
                };
                return dead_letter(ctx, ERASE_ROUTING_KEY, subject, &e.reason, &data).await;
            }
        };
        let span = tracing::info_span!("plan", request_id = %msg.request_id);
        async {
            let delivery = Ctx::delivery_number(&props);
            if delivery > u64::from(ctx.config.queue.max_deliveries) {
                let reason = format!("delivered {delivery} times without being settled");
                let subject = Subject::Request {
                    request_id: Some(&msg.request_id),
                    account_id: Some(&msg.account_id),
                };
                return dead_letter(ctx, ERASE_ROUTING_KEY, subject, &reason, &data).await;
            }
            let planned = retry::db("plan", || async {
                match plan(ctx, &msg).await {
                    Ok(v) => Ok(Ok(v)),
                    Err(PlanError::Db(e)) => Err(e),
                    Err(PlanError::Refused(r)) => Ok(Err(r)),
                }
            })
            .await;
            match planned {
                Ok(Ok(messages)) => {
                    ctx.publisher.publish_outbox(&ctx.pool, &messages).await;
                    Outcome::Ack
                }
                Ok(Err(reason)) => {
                    let subject = Subject::Request {
                        request_id: Some(&msg.request_id),
                        account_id: Some(&msg.account_id),
                    };
                    dead_letter(ctx, ERASE_ROUTING_KEY, subject, &reason, &data).await
                }
                Err(e) if store::is_transient(&e) => {
                    tracing::warn!(error = %store::describe(&e), "planning failed; retrying later");
                    ctx.retry_later(ERASE_ROUTING_KEY, &Ctx::message_id(&props), &data)
                        .await
                }
                Err(e) => {
                    let reason = store::describe(&e);
                    let subject = Subject::Request {
                        request_id: Some(&msg.request_id),
                        account_id: Some(&msg.account_id),
                    };
                    dead_letter(ctx, ERASE_ROUTING_KEY, subject, &reason, &data).await
                }
            }
        }
        .instrument(span)
        .await
    }
}

async fn plan(ctx: &Ctx, msg: &EraseMessage) -> Result<Vec<OutboxMessage>, PlanError> {
    let mut tx = ctx.pool.begin().await?;
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
    requests::insert(&mut tx, &new).await?;
    let row = requests::lock_for_planning(&mut tx, &msg.request_id)
        .await?
        .expect("the request was just ensured");
    if row.account_id != msg.account_id {
        return Err(PlanError::Refused(
            "request id already used by another account".into(),
        ));
    }
    if row.planned || row.status != "in-progress" {
        // A duplicate delivery, or a request already settled: nothing to do.
        tx.commit().await?;
        return Ok(Vec::new());
    }
    if !account_exists(&mut tx, &row.account_id).await? {
        return Err(PlanError::Refused(
            "account is unknown to the platform".into(),
        ));
    }
    let bots = if row.remove_data_from_all_bots {
        apps::account_bots(&mut *tx, &row.account_id).await?
    } else {
        let owners: HashMap<String, String> = apps::bot_accounts(&mut *tx, &row.bot_ids)
            .await?
            .into_iter()
            .collect();
        for bot in &row.bot_ids {
            match owners.get(bot) {
                None => {
                    return Err(PlanError::Refused(format!(
                        "bot {bot} is unknown to the platform"
                    )));
                }
                Some(a) if *a != row.account_id => {
                    return Err(PlanError::Refused(format!(
                        "bot {bot} is not a bot of the request's account"
                    )));
                }
                Some(_) => {}
            }
        }
        row.bot_ids.clone()
    };

    let entries = requests::resolve_users(&mut tx, &msg.request_id).await?;
    let mut all: Vec<String> = entries
        .iter()
        .flat_map(|e| e.user_ids.iter().cloned())
        .collect();
    all.sort();
    all.dedup();
    let protected: HashMap<String, String> = requests::protected_users(&mut *tx, &all)
        .await?
        .into_iter()
        .collect();

    let mut outcomes = Vec::with_capacity(entries.len());
    let mut erase: Vec<String> = Vec::new();
    for e in &entries {
        if e.user_ids.is_empty() {
            outcomes.push((e.position, "NOT_FOUND", None, e.user_ids.clone()));
            continue;
        }
        // An entry that resolves to several users is rejected as a whole if any of them is
        // protected: erasing less than asked is safe, erasing a protected user is not.
        let reason = e
            .user_ids
            .iter()
            .filter_map(|u| protected.get(u))
            .min_by_key(|r| requests::rejection_rank(r))
            .cloned();
        match reason {
            Some(r) => outcomes.push((e.position, "REJECTED", Some(r), e.user_ids.clone())),
            None => {
                erase.extend(e.user_ids.iter().cloned());
                outcomes.push((e.position, "IN_PROGRESS", None, e.user_ids.clone()));
            }
        }
    }
    erase.sort();
    erase.dedup();
    set_outcomes(&mut tx, &msg.request_id, &outcomes).await?;

    if erase.is_empty() || bots.is_empty() {
        requests::mark_planned(&mut tx, &msg.request_id, &[], 0).await?;
        let settled = requests::settle(&mut tx, &msg.request_id).await?;
        tx.commit().await?;
        crate::telemetry::record_settled(&settled);
        tracing::info!(
            status = settled.status,
            "request settled at planning: nothing to erase"
        );
        return Ok(Vec::new());
    }
    tasks::insert(&mut tx, &msg.request_id, &bots).await?;
    // One message per group of bots: a group's tasks share their delete statements, which
    // visit each heap page once for all of its bots rather than once per bot.
    let queued: Vec<(String, Vec<u8>)> = TaskMessage::for_bots(
        &msg.request_id,
        &bots,
        ctx.config.worker.bots_per_message,
        0,
    )
    .iter()
    .map(TaskMessage::outbox_entry)
    .collect();
    let messages = outbox::insert_many(&mut tx, TASK_ROUTING_KEY, &queued).await?;
    requests::mark_planned(&mut tx, &msg.request_id, &erase, bots.len() as i32).await?;
    tx.commit().await?;
    metrics::counter!("erasure_tasks_planned_total").increment(bots.len() as u64);
    tracing::info!(tasks = bots.len(), users = entries.len(), "request planned");
    Ok(messages)
}

async fn account_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    account_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM platform.accounts WHERE id = $1)")
        .bind(account_id)
        .fetch_one(&mut **tx)
        .await
}

type EntryOutcome = (i32, &'static str, Option<String>, Vec<String>);

/// Writes every entry's outcome in one statement.
async fn set_outcomes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: &crate::contract::RequestId,
    outcomes: &[EntryOutcome],
) -> Result<(), sqlx::Error> {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(p, s, r, ids)| serde_json::json!({"position": p, "status": s, "reason": r, "ids": ids}))
        .collect();
    sqlx::query(
        "UPDATE erasure.request_users u
            SET status = o.status, reason = o.reason,
                resolved_user_ids = ARRAY(SELECT jsonb_array_elements_text(o.ids))
           FROM jsonb_to_recordset($2) AS o(position integer, status text, reason text, ids jsonb)
          WHERE u.request_id = $1 AND u.position = o.position",
    )
    .bind(id)
    .bind(serde_json::Value::Array(rows))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

//! The plan arrow, as one transaction for one or several requests planned together: record a
//! request a producer's message is the first sight of, lock the requests (a duplicate
//! delivery waits, then finds its request planned), read what the rules need, and commit
//! every user's outcome, the tasks and their messages together, or settle a request at once
//! when it has nothing to erase. Each step is one statement for all the requests, so planning
//! many costs about what planning one does.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Postgres, Transaction};

use super::sql;
use super::{
    outbox::{self, OutboxMessage},
    platform::{self, ResolvedEntry},
    requests::{self, NewRequest, Settled},
};
use crate::{
    contract::TASK_ROUTING_KEY,
    domain::{AccountId, BotId, PlatformUserId, RequestId, RequestStatus, UserOutcome},
    rules::{Decision, Protections},
};

/// What planning needs of a request, read under its row lock.
#[derive(sqlx::FromRow, Debug)]
pub struct PlanRow {
    pub request_id: RequestId,
    pub account_id: AccountId,
    pub planned: bool,
    pub status: RequestStatus,
    pub remove_data_from_all_bots: bool,
    pub bot_ids: Vec<BotId>,
}

impl PlanRow {
    /// Whether the request still waits for its plan (not a duplicate, not settled).
    pub fn is_due(&self) -> bool {
        !self.planned && self.status == RequestStatus::InProgress
    }
}

/// Requests being planned: their transaction and their locked rows, in the order asked.
/// Dropped without [`Planning::commit`] or [`Planning::skip`], nothing it did is kept.
pub struct Planning {
    tx: Transaction<'static, Postgres>,
    pub requests: Vec<PlanRow>,
}

/// One request's plan: what the rules decided for its entries (in the order of `entries`),
/// its bots, and its task messages (id, payload).
pub struct Plan<'a> {
    pub request_id: &'a RequestId,
    pub entries: &'a [&'a ResolvedEntry],
    pub decision: &'a Decision,
    pub bots: &'a [BotId],
    pub messages: &'a [(String, Vec<u8>)],
}

/// How a request's plan ended.
#[derive(Debug)]
pub enum Planned {
    /// Tasks were created; their messages are committed to the outbox, to publish.
    Tasks {
        tasks: usize,
        messages: Vec<OutboxMessage>,
    },
    /// Nothing to erase (every entry unknown or rejected, or an account without bots): the
    /// request settled at once.
    Settled(Settled),
}

impl Planning {
    /// Records the requests that do not exist yet, and locks them all, in the order of their
    /// ids (so that groups that overlap wait for each other rather than deadlock).
    pub async fn begin(pool: &PgPool, news: &[NewRequest<'_>]) -> Result<Self, sqlx::Error> {
        let ids: Vec<&RequestId> = news.iter().map(|n| n.request_id).collect();
        let mut tx = sql::begin(pool).await?;
        // Requests from the intake exist already: only a producer's message is recorded here.
        let known: HashSet<RequestId> =
            sql::query_scalar("SELECT request_id FROM erasure.requests WHERE request_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        for new in news.iter().filter(|n| !known.contains(n.request_id)) {
            requests::insert(&mut tx, new).await?;
        }
        let mut rows: Vec<PlanRow> = sql::query_as(
            "SELECT request_id, account_id, planned, status, remove_data_from_all_bots, bot_ids
               FROM erasure.requests WHERE request_id = ANY($1)
              ORDER BY request_id FOR UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let requests = ids
            .iter()
            .filter_map(|id| {
                let at = rows.iter().position(|r| r.request_id == **id)?;
                Some(rows.swap_remove(at))
            })
            .collect();
        Ok(Self { tx, requests })
    }

    /// Which of the requests' accounts the platform knows.
    pub async fn known_accounts(&mut self) -> Result<HashSet<AccountId>, sqlx::Error> {
        let accounts: Vec<&AccountId> = self.requests.iter().map(|r| &r.account_id).collect();
        Ok(platform::known_accounts(&mut *self.tx, &accounts)
            .await?
            .into_iter()
            .collect())
    }

    /// Every bot of each account erasing from all its bots.
    pub async fn account_bots(&mut self) -> Result<HashMap<AccountId, Vec<BotId>>, sqlx::Error> {
        let accounts: Vec<&AccountId> = self
            .requests
            .iter()
            .filter(|r| r.remove_data_from_all_bots)
            .map(|r| &r.account_id)
            .collect();
        let mut bots: HashMap<AccountId, Vec<BotId>> = HashMap::new();
        if accounts.is_empty() {
            return Ok(bots);
        }
        for (account, bot) in platform::account_bots(&mut *self.tx, &accounts).await? {
            bots.entry(account).or_default().push(bot);
        }
        Ok(bots)
    }

    /// The account of each bot the requests name (bots unknown to the platform are absent).
    pub async fn bot_accounts(&mut self) -> Result<HashMap<BotId, AccountId>, sqlx::Error> {
        let bots: Vec<BotId> = self
            .requests
            .iter()
            .filter(|r| !r.remove_data_from_all_bots)
            .flat_map(|r| r.bot_ids.iter().cloned())
            .collect();
        Ok(platform::bot_accounts(&mut *self.tx, &bots)
            .await?
            .into_iter()
            .collect())
    }

    /// Every entry of every request, with the platform users it resolves to.
    pub async fn resolve_users(&mut self) -> Result<Vec<ResolvedEntry>, sqlx::Error> {
        let ids: Vec<&RequestId> = self.requests.iter().map(|r| &r.request_id).collect();
        platform::resolve_users(&mut *self.tx, &ids).await
    }

    pub async fn protections(
        &mut self,
        users: &[PlatformUserId],
    ) -> Result<Protections, sqlx::Error> {
        platform::protections(&mut *self.tx, users).await
    }

    /// Leaves the requests as they are.
    pub async fn skip(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// The plan arrow for every request of `plans` (each must be due): writes every entry's
    /// outcome; creates one task per bot with the task messages in the outbox, or, with
    /// nothing to erase, settles the request. One statement per step for all of them.
    pub async fn commit(mut self, plans: &[Plan<'_>]) -> Result<Vec<Planned>, sqlx::Error> {
        let outcomes: Vec<(&RequestId, i32, UserOutcome, &[PlatformUserId])> = plans
            .iter()
            .flat_map(|p| {
                p.entries
                    .iter()
                    .zip(&p.decision.outcomes)
                    .map(|(e, o)| (p.request_id, e.position, o.clone(), e.user_ids.as_slice()))
            })
            .collect();
        requests::set_outcomes(&mut self.tx, &outcomes).await?;
        let erasing = |p: &&Plan<'_>| !p.decision.erase.is_empty() && !p.bots.is_empty();
        let tasks: Vec<(&RequestId, &BotId)> = plans
            .iter()
            .filter(erasing)
            .flat_map(|p| p.bots.iter().map(move |b| (p.request_id, b)))
            .collect();
        super::tasks::insert(&mut self.tx, &tasks).await?;
        let messages: Vec<(String, Vec<u8>)> = plans
            .iter()
            .filter(erasing)
            .flat_map(|p| p.messages.iter().cloned())
            .collect();
        let mut queued = outbox::insert_many(&mut self.tx, TASK_ROUTING_KEY, &messages).await?;
        self.mark_planned(plans, erasing).await?;
        let nothing: Vec<RequestId> = plans
            .iter()
            .filter(|p| !erasing(p))
            .map(|p| p.request_id.clone())
            .collect();
        let settled = requests::settle(&mut self.tx, &nothing).await?;
        self.tx.commit().await?;
        for (_, s) in &settled {
            s.record();
        }
        Ok(plans
            .iter()
            .map(
                |p| match settled.iter().find(|(id, _)| id == p.request_id) {
                    Some((_, s)) => Planned::Settled(s.clone()),
                    None => Planned::Tasks {
                        tasks: p.bots.len(),
                        messages: queued
                            .extract_if(.., |m| {
                                p.messages.iter().any(|(id, _)| *id == m.message_id)
                            })
                            .collect(),
                    },
                },
            )
            .collect())
    }

    /// Marks the requests planned: with their users to erase and number of tasks, or with none.
    async fn mark_planned(
        &mut self,
        plans: &[Plan<'_>],
        erasing: impl Fn(&&Plan<'_>) -> bool,
    ) -> Result<(), sqlx::Error> {
        let rows: Vec<serde_json::Value> = plans
            .iter()
            .map(|p| {
                let (erase, tasks): (&[PlatformUserId], usize) = if erasing(&p) {
                    (&p.decision.erase, p.bots.len())
                } else {
                    (&[], 0)
                };
                serde_json::json!({"id": p.request_id, "erase": erase, "tasks": tasks})
            })
            .collect();
        sql::query(
            "UPDATE erasure.requests r
                SET planned = true, erase_user_ids = ARRAY(SELECT jsonb_array_elements_text(p.erase)),
                    tasks_total = p.tasks, updated_at = now()
               FROM jsonb_to_recordset($1) AS p(id text, erase jsonb, tasks integer)
              WHERE r.request_id = p.id",
        )
        .bind(serde_json::Value::Array(rows))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

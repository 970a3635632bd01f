//! The plan arrow of a request, as one transaction: record the request if a producer's
//! message is its first sight, lock it (a duplicate delivery waits, then finds it planned),
//! read what the rules need, and commit every user's outcome, the tasks and their messages
//! together, or settle the request at once when there is nothing to erase.

use sqlx::{PgPool, Postgres, Transaction};

use super::{
    outbox::{self, OutboxMessage},
    platform::{self, ResolvedEntry},
    requests::{self, NewRequest, Settled},
    tasks,
};
use crate::{
    contract::TASK_ROUTING_KEY,
    domain::{AccountId, BotId, PlatformUserId, RequestStatus},
    rules::{Decision, Protections},
};

/// What planning needs of a request, read under its row lock.
#[derive(sqlx::FromRow, Debug)]
pub struct PlanRow {
    pub account_id: AccountId,
    pub planned: bool,
    pub status: RequestStatus,
    pub remove_data_from_all_bots: bool,
    pub bot_ids: Vec<BotId>,
}

/// A request being planned: its transaction and its locked row. Dropped without
/// [`Planning::commit`] or [`Planning::skip`], nothing it did is kept.
pub struct Planning {
    tx: Transaction<'static, Postgres>,
    pub request: PlanRow,
    request_id: crate::domain::RequestId,
}

/// How a plan ended.
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
    /// The request was not due for a plan (see [`Planning::is_due`]): nothing was written.
    NotDue,
}

impl Planning {
    /// Records the request unless it exists, and locks its row.
    pub async fn begin(pool: &PgPool, new: &NewRequest<'_>) -> Result<Self, sqlx::Error> {
        let mut tx = pool.begin().await?;
        requests::insert(&mut tx, new).await?;
        let request: PlanRow = sqlx::query_as(
            "SELECT account_id, planned, status, remove_data_from_all_bots, bot_ids
               FROM erasure.requests WHERE request_id = $1 FOR UPDATE",
        )
        .bind(new.request_id)
        .fetch_one(&mut *tx)
        .await?;
        Ok(Self {
            tx,
            request,
            request_id: new.request_id.clone(),
        })
    }

    /// Whether the request still waits for its plan (not a duplicate, not settled).
    pub fn is_due(&self) -> bool {
        !self.request.planned && self.request.status == RequestStatus::InProgress
    }

    pub async fn account_exists(&mut self) -> Result<bool, sqlx::Error> {
        platform::account_exists(&mut *self.tx, &self.request.account_id).await
    }

    pub async fn account_bots(&mut self) -> Result<Vec<BotId>, sqlx::Error> {
        platform::account_bots(&mut *self.tx, &self.request.account_id).await
    }

    pub async fn bot_accounts(&mut self) -> Result<Vec<(BotId, AccountId)>, sqlx::Error> {
        platform::bot_accounts(&mut *self.tx, &self.request.bot_ids).await
    }

    pub async fn resolve_users(&mut self) -> Result<Vec<ResolvedEntry>, sqlx::Error> {
        platform::resolve_users(&mut *self.tx, &self.request_id).await
    }

    pub async fn protections(
        &mut self,
        users: &[PlatformUserId],
    ) -> Result<Protections, sqlx::Error> {
        platform::protections(&mut *self.tx, users).await
    }

    /// Leaves the request as it is: a duplicate delivery, or a request already settled.
    pub async fn skip(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// The plan arrow: writes every entry's outcome (`decision`, in the order of `entries`),
    /// then either creates one task per bot with the task messages `messages` (id, payload)
    /// in the outbox, or, with nothing to erase, settles the request.
    pub async fn commit(
        mut self,
        entries: &[ResolvedEntry],
        decision: &Decision,
        bots: &[BotId],
        messages: &[(String, Vec<u8>)],
    ) -> Result<Planned, sqlx::Error> {
        if !self.is_due() {
            self.skip().await?;
            return Ok(Planned::NotDue);
        }
        let id = self.request_id.clone();
        let outcomes: Vec<_> = entries
            .iter()
            .zip(&decision.outcomes)
            .map(|(e, o)| (e.position, o.clone(), e.user_ids.as_slice()))
            .collect();
        requests::set_outcomes(&mut self.tx, &id, &outcomes).await?;
        if decision.erase.is_empty() || bots.is_empty() {
            self.mark_planned(&[], 0).await?;
            // In progress and locked (is_due), so the settle arrow applies.
            let settled = requests::settle(&mut self.tx, &id)
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            self.tx.commit().await?;
            settled.record();
            return Ok(Planned::Settled(settled));
        }
        tasks::insert(&mut self.tx, &id, bots).await?;
        let queued = outbox::insert_many(&mut self.tx, TASK_ROUTING_KEY, messages).await?;
        self.mark_planned(&decision.erase, bots.len()).await?;
        self.tx.commit().await?;
        Ok(Planned::Tasks {
            tasks: bots.len(),
            messages: queued,
        })
    }

    async fn mark_planned(
        &mut self,
        erase: &[PlatformUserId],
        tasks: usize,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE erasure.requests
                SET planned = true, erase_user_ids = $2, tasks_total = $3, updated_at = now()
              WHERE request_id = $1",
        )
        .bind(&self.request_id)
        .bind(erase)
        .bind(tasks as i32)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

//! Per-(request, bot) tasks, the unit of work that replicas share, and the rows each deleted
//! per store: the task arrows of the diagram (`crate::domain`), one function each.

use sqlx::{PgPool, Postgres, Transaction};

use super::{
    outbox::{self, OutboxMessage},
    requests::{self, Settled},
};
use crate::{
    contract::TASK_ROUTING_KEY,
    domain::{BotId, PlatformUserId, RequestId, TaskStatus},
};

/// Creates one pending task per bot (part of the plan arrow).
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bot_ids: &[BotId],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO erasure.tasks (request_id, bot_id)
         SELECT $1, b FROM unnest($2::text[]) AS b
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(bot_ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What a worker needs to run the tasks of a message: the request's users, and each task's
/// state.
#[derive(Debug)]
pub struct TaskGroup {
    pub erase_user_ids: Vec<PlatformUserId>,
    pub tasks: Vec<TaskState>,
}

#[derive(sqlx::FromRow, Debug)]
pub struct TaskState {
    pub bot_id: BotId,
    pub status: TaskStatus,
    pub slice: i32,
}

/// Reads the request's users and the tasks of `bots`, and stamps their start. `None` when the
/// request or any of the tasks is unknown. A relaxed commit (see [`super::begin_relaxed`]):
/// the stamp is informational, and a lost one is set again by the next delivery.
pub async fn load(
    pool: &PgPool,
    id: &RequestId,
    bots: &[BotId],
) -> Result<Option<TaskGroup>, sqlx::Error> {
    let mut tx = super::begin_relaxed(pool).await?;
    let users: Option<Vec<PlatformUserId>> =
        sqlx::query_scalar("SELECT erase_user_ids FROM erasure.requests WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let tasks: Vec<TaskState> = sqlx::query_as(
        "UPDATE erasure.tasks SET started_at = COALESCE(started_at, now())
          WHERE request_id = $1 AND bot_id = ANY($2)
          RETURNING bot_id, status, slice",
    )
    .bind(id)
    .bind(bots)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match users {
        Some(erase_user_ids) if tasks.len() == bots.len() => Some(TaskGroup {
            erase_user_ids,
            tasks,
        }),
        _ => None,
    })
}

/// Rows one batch erased from one store, per bot (`bots` and `rows` in the same order).
#[derive(Clone, Copy, Debug)]
pub struct Counted<'a> {
    pub store: &'a str,
    /// `delete` or `anonymize`.
    pub action: &'a str,
    pub bots: &'a [BotId],
    pub rows: &'a [i64],
}

/// Adds a batch's counts to the request's tasks, in the transaction that erased the rows, so
/// that they are exact.
pub async fn count_rows(
    tx: &mut Transaction<'_, Postgres>,
    request: &RequestId,
    counted: &[Counted<'_>],
) -> Result<(), sqlx::Error> {
    let mut stores = Vec::new();
    let mut actions = Vec::new();
    let mut bots = Vec::new();
    let mut rows = Vec::new();
    for c in counted {
        for (bot, n) in c.bots.iter().zip(c.rows) {
            stores.push(c.store);
            actions.push(c.action);
            bots.push(bot.as_str());
            rows.push(*n);
        }
    }
    if stores.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO erasure.task_rows AS t (request_id, store, action, bot_id, rows)
         SELECT $1, c.store, c.action, c.bot, c.rows
           FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) AS c(store, action, bot, rows)
         ON CONFLICT (request_id, bot_id, store) DO UPDATE SET rows = t.rows + excluded.rows",
    )
    .bind(request)
    .bind(&stores)
    .bind(&actions)
    .bind(&bots)
    .bind(&rows)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One batch's count of one store and bot in another database's ledger.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerEntry {
    pub batch_id: uuid::Uuid,
    pub request_id: RequestId,
    pub store: String,
    pub action: String,
    pub bot_id: BotId,
    pub rows: i64,
}

/// The ledger's columns, for binding as arrays.
pub fn ledger_columns(entries: &[LedgerEntry]) -> (Vec<&str>, Vec<&str>, Vec<&str>, Vec<i64>) {
    let stores = entries.iter().map(|e| e.store.as_str()).collect();
    let actions = entries.iter().map(|e| e.action.as_str()).collect();
    let bots = entries.iter().map(|e| e.bot_id.as_str()).collect();
    let rows = entries.iter().map(|e| e.rows).collect();
    (stores, actions, bots, rows)
}

/// Adds counts forwarded from another database's ledger, each batch once: a batch id already
/// taken (by an earlier forward, or a concurrent one that commits first) adds nothing.
pub async fn count_forwarded(
    pool: &PgPool,
    database: &str,
    entries: &[LedgerEntry],
) -> Result<(), sqlx::Error> {
    let batches: Vec<uuid::Uuid> = entries.iter().map(|e| e.batch_id).collect();
    let requests: Vec<&str> = entries.iter().map(|e| e.request_id.as_str()).collect();
    let (stores, actions, bots, rows) = ledger_columns(entries);
    sqlx::query(
        "WITH e AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
                            AS e(batch_id, request_id, store, action, bot_id, rows)),
              new AS (INSERT INTO erasure.forwarded_batches (batch_id, database)
                      SELECT DISTINCT batch_id, $1 FROM e
                      ON CONFLICT DO NOTHING RETURNING batch_id)
         INSERT INTO erasure.task_rows AS t (request_id, bot_id, store, action, rows)
         SELECT e.request_id, e.bot_id, e.store, e.action, sum(e.rows)
           FROM e JOIN new USING (batch_id)
          GROUP BY e.request_id, e.bot_id, e.store, e.action
         ON CONFLICT (request_id, bot_id, store) DO UPDATE SET rows = t.rows + excluded.rows",
    )
    .bind(database)
    .bind(&batches)
    .bind(&requests)
    .bind(&stores)
    .bind(&actions)
    .bind(&bots)
    .bind(&rows)
    .execute(pool)
    .await?;
    Ok(())
}

/// What the complete arrow did.
#[derive(Debug, PartialEq)]
pub struct Completed {
    /// Tasks this call moved to `done` (a duplicate delivery moves none).
    pub tasks: u64,
    /// How the request ended, when these were its last tasks.
    pub settled: Option<Settled>,
}

/// The complete arrow (`pending → done`) for the tasks of `bots` that are not done yet, counted
/// on the request in the same transaction, so that each is counted once; the request settles
/// with its last task.
pub async fn complete(
    pool: &PgPool,
    id: &RequestId,
    bots: &[BotId],
) -> Result<Completed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE erasure.tasks SET status = $3, failure_reason = NULL, completed_at = now(), updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND status <> $3",
    )
    .bind(id)
    .bind(bots)
    .bind(TaskStatus::Done)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut settled = None;
    if done > 0 {
        let (all_done,): (bool,) = sqlx::query_as(
            "UPDATE erasure.requests SET tasks_done = tasks_done + $2, updated_at = now()
              WHERE request_id = $1 RETURNING tasks_done >= tasks_total",
        )
        .bind(id)
        .bind(done as i32)
        .fetch_one(&mut *tx)
        .await?;
        if all_done {
            settled = requests::settle(&mut tx, id).await?;
        }
    }
    tx.commit().await?;
    if let Some(s) = &settled {
        s.record();
    }
    Ok(Completed {
        tasks: done,
        settled,
    })
}

/// The advance arrow: moves to their next slice the tasks of `bots` whose current slice is
/// still `slice`, and commits the messages that continue them, built by `continuations` from
/// the bots that advanced (id, payload). A stale or duplicated delivery advances none and
/// queues nothing. Returns the queued messages, to publish.
pub async fn advance(
    pool: &PgPool,
    id: &RequestId,
    bots: &[BotId],
    slice: i32,
    continuations: impl Fn(&[BotId]) -> Vec<(String, Vec<u8>)>,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let advanced: Vec<BotId> = sqlx::query_scalar(
        "UPDATE erasure.tasks SET slice = slice + 1, updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND slice = $3 AND status <> $4
          RETURNING bot_id",
    )
    .bind(id)
    .bind(bots)
    .bind(slice)
    .bind(TaskStatus::Done)
    .fetch_all(&mut *tx)
    .await?;
    let next = continuations(&advanced);
    let queued = if next.is_empty() {
        Vec::new()
    } else {
        outbox::insert_many(&mut tx, TASK_ROUTING_KEY, &next).await?
    };
    tx.commit().await?;
    Ok(queued)
}

/// The fail arrow of tasks (`pending → failed`), part of dead-lettering their message.
pub(super) async fn fail(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    bots: &[BotId],
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.tasks SET status = $4, failure_reason = $3, updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND status <> $5",
    )
    .bind(id)
    .bind(bots)
    .bind(reason)
    .bind(TaskStatus::Failed)
    .bind(TaskStatus::Done)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The reopen arrow of tasks (`failed → pending`), part of a redrive.
pub(super) async fn reopen(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE erasure.tasks SET status = $2, failure_reason = NULL, updated_at = now()
          WHERE request_id = $1 AND status = $3",
    )
    .bind(id)
    .bind(TaskStatus::Pending)
    .bind(TaskStatus::Failed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

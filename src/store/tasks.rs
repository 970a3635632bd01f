//! Per-(request, bot) tasks, the unit of work that replicas share, and the rows each deleted
//! per store: the task arrows of the diagram (`crate::domain`), one function each.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::sql;
use super::{
    outbox::{self, OutboxMessage},
    requests::{self, Settled},
};
use crate::{
    contract::TASK_ROUTING_KEY,
    domain::{BotId, PlatformUserId, RequestId, TaskStatus},
};

/// Creates a pending task per (request, bot) (part of the plan arrow).
pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    tasks: &[(&RequestId, &BotId)],
) -> Result<(), sqlx::Error> {
    if tasks.is_empty() {
        return Ok(());
    }
    let (requests, bots): (Vec<&RequestId>, Vec<&BotId>) = tasks.iter().copied().unzip();
    sql::query(
        "INSERT INTO erasure.tasks (request_id, bot_id)
         SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&requests)
    .bind(&bots)
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

/// The tasks a message works: its request and bots.
pub type Work<'a> = (&'a RequestId, &'a [BotId]);

/// Reads, for each of `works` (messages worked together), the request's users and the tasks
/// of its bots: `None` for a message whose request or any of whose tasks is unknown. Two reads
/// for all; when the work started is stamped by the arrow that ends its slice
/// ([`complete`], [`advance`]), so loading writes nothing.
pub async fn load(
    pool: &PgPool,
    works: &[Work<'_>],
) -> Result<Vec<Option<TaskGroup>>, sqlx::Error> {
    let (requests, bots) = pairs(works);
    let users: Vec<(RequestId, Vec<PlatformUserId>)> = sql::query_as(
        "SELECT request_id, erase_user_ids FROM erasure.requests WHERE request_id = ANY($1)",
    )
    .bind(&requests)
    .fetch_all(sql::on(pool))
    .await?;
    let tasks: Vec<(RequestId, BotId, TaskStatus, i32)> = sql::query_as(
        "SELECT t.request_id, t.bot_id, t.status, t.slice FROM erasure.tasks t
           JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) AS w(request_id, bot_id)) w
             ON t.request_id = w.request_id AND t.bot_id = w.bot_id",
    )
    .bind(&requests)
    .bind(&bots)
    .fetch_all(sql::on(pool))
    .await?;
    Ok(works
        .iter()
        .map(|(id, bots)| {
            let erase_user_ids = users.iter().find(|(r, _)| r == *id)?.1.clone();
            let tasks: Vec<TaskState> = tasks
                .iter()
                .filter(|(r, b, _, _)| r == *id && bots.contains(b))
                .map(|(_, bot_id, status, slice)| TaskState {
                    bot_id: bot_id.clone(),
                    status: *status,
                    slice: *slice,
                })
                .collect();
            (tasks.len() == bots.len()).then_some(TaskGroup {
                erase_user_ids,
                tasks,
            })
        })
        .collect())
}

/// The (request, bot) pairs of `works`, as two columns.
fn pairs<'a>(works: &[Work<'a>]) -> (Vec<&'a str>, Vec<&'a str>) {
    works
        .iter()
        .flat_map(|(id, bots)| bots.iter().map(move |b| (id.as_str(), b.as_str())))
        .unzip()
}

/// Rows one batch erased for one request from one store, per bot (`bots` and `rows` in the
/// same order).
#[derive(Clone, Copy, Debug)]
pub struct Counted<'a> {
    pub request: &'a RequestId,
    pub store: &'a str,
    /// `delete` or `anonymize`.
    pub action: &'a str,
    pub bots: &'a [BotId],
    pub rows: &'a [i64],
}

/// Records a batch's counts (of one request or several, each store once), in the transaction
/// that erased the rows, so that they are exact: one row per request and store.
pub async fn count_rows(
    tx: &mut Transaction<'_, Postgres>,
    counted: &[Counted<'_>],
) -> Result<(), sqlx::Error> {
    let rows: Vec<serde_json::Value> = counted
        .iter()
        .filter(|c| !c.bots.is_empty())
        .map(|c| {
            serde_json::json!({"request_id": c.request, "store": c.store, "action": c.action,
                               "bots": c.bots, "rows": c.rows})
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sql::query(
        "INSERT INTO erasure.batch_rows (request_id, store, action, bot_ids, rows)
         SELECT c.request_id, c.store, c.action,
                ARRAY(SELECT jsonb_array_elements_text(c.bots)),
                ARRAY(SELECT jsonb_array_elements_text(c.rows)::bigint)
           FROM jsonb_to_recordset($1) AS c(request_id text, store text, action text, bots jsonb, rows jsonb)",
    )
    .bind(serde_json::Value::Array(rows))
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
    sql::query(
        "WITH e AS (SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
                            AS e(batch_id, request_id, store, action, bot_id, rows)),
              new AS (INSERT INTO erasure.forwarded_batches (batch_id, database)
                      SELECT DISTINCT batch_id, $1 FROM e
                      ON CONFLICT DO NOTHING RETURNING batch_id)
         INSERT INTO erasure.batch_rows (request_id, store, action, bot_ids, rows)
         SELECT e.request_id, e.store, e.action, array_agg(e.bot_id), array_agg(e.rows)
           FROM e JOIN new USING (batch_id)
          GROUP BY e.batch_id, e.request_id, e.store, e.action",
    )
    .bind(database)
    .bind(&batches)
    .bind(&requests)
    .bind(&stores)
    .bind(&actions)
    .bind(&bots)
    .bind(&rows)
    .execute(sql::on(pool))
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

/// The complete arrow (`pending → done`) for the tasks of `works` that are not done yet,
/// counted on their requests in the same transaction, so that each is counted once; a
/// request settles with its last task. One transaction for all, taking its locks in one order
/// (tasks, then requests, by id), so that groups that overlap wait rather than deadlock.
/// Returns what it did per work, in order.
/// `started`: when the slice that completes them began (the tasks' start, unless an earlier
/// slice stamped one).
pub async fn complete(
    pool: &PgPool,
    works: &[Work<'_>],
    started: DateTime<Utc>,
) -> Result<Vec<Completed>, sqlx::Error> {
    let (requests, bots) = pairs(works);
    let mut tx = sql::begin(pool).await?;
    let done: Vec<(RequestId, BotId)> = sql::query_as(
        "WITH w AS (SELECT t.request_id, t.bot_id FROM erasure.tasks t
                      JOIN unnest($1::text[], $2::text[]) AS w(request_id, bot_id)
                        ON t.request_id = w.request_id AND t.bot_id = w.bot_id
                     WHERE t.status <> $3 AND t.status <> $5
                     ORDER BY t.request_id, t.bot_id FOR UPDATE OF t)
         UPDATE erasure.tasks t
            SET status = $3, failure_reason = NULL, started_at = COALESCE(t.started_at, $4),
                completed_at = now(), updated_at = now()
           FROM w WHERE t.request_id = w.request_id AND t.bot_id = w.bot_id
         RETURNING t.request_id, t.bot_id",
    )
    .bind(&requests)
    .bind(&bots)
    .bind(TaskStatus::Done)
    .bind(started)
    .bind(TaskStatus::Cancelled)
    .fetch_all(&mut *tx)
    .await?;
    let mut counts: Vec<(&RequestId, i32)> = Vec::new();
    for (request, _) in &done {
        match counts.iter_mut().find(|(r, _)| *r == request) {
            Some((_, n)) => *n += 1,
            None => counts.push((request, 1)),
        }
    }
    counts.sort();
    let (ids, ns): (Vec<&RequestId>, Vec<i32>) = counts.iter().copied().unzip();
    let counted: Vec<(RequestId, bool)> = sql::query_as(
        "WITH d AS (SELECT * FROM unnest($1::text[], $2::int[]) AS d(request_id, n)),
              locked AS (SELECT r.request_id FROM erasure.requests r JOIN d USING (request_id)
                          ORDER BY r.request_id FOR UPDATE OF r)
         UPDATE erasure.requests r SET tasks_done = r.tasks_done + d.n, updated_at = now()
           FROM d JOIN locked USING (request_id)
          WHERE r.request_id = d.request_id
         RETURNING r.request_id, r.tasks_done >= r.tasks_total",
    )
    .bind(&ids)
    .bind(&ns)
    .fetch_all(&mut *tx)
    .await?;
    let finished: Vec<RequestId> = counted
        .into_iter()
        .filter_map(|(id, finished)| finished.then_some(id))
        .collect();
    let settled = requests::settle(&mut tx, &finished).await?;
    tx.commit().await?;
    for (_, s) in &settled {
        s.record();
    }
    // Each task done is the first work's that names it (a duplicate in the same group gets
    // none), and a settled request is reported by one work.
    let mut unclaimed: Vec<Option<&(RequestId, BotId)>> = done.iter().map(Some).collect();
    let mut settled: Vec<Option<(RequestId, Settled)>> = settled.into_iter().map(Some).collect();
    Ok(works
        .iter()
        .map(|(id, bots)| {
            let mut tasks = 0;
            for slot in unclaimed.iter_mut() {
                if slot.is_some_and(|(r, b)| r == *id && bots.contains(b)) {
                    *slot = None;
                    tasks += 1;
                }
            }
            let settled = settled
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|(r, _)| r == *id))
                .and_then(Option::take)
                .map(|(_, s)| s);
            Completed { tasks, settled }
        })
        .collect())
}

/// The advance arrow: moves to their next slice the tasks of `bots` whose current slice is
/// still `slice` (stamping `started` as their start unless an earlier slice did), and commits the messages that continue them, built by `continuations` from
/// the bots that advanced (id, payload). A stale or duplicated delivery advances none and
/// queues nothing. Returns the queued messages, to publish.
pub async fn advance(
    pool: &PgPool,
    id: &RequestId,
    bots: &[BotId],
    slice: i32,
    started: DateTime<Utc>,
    continuations: impl Fn(&[BotId]) -> Vec<(String, Vec<u8>)>,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    let advanced: Vec<BotId> = sql::query_scalar(
        "UPDATE erasure.tasks
            SET slice = slice + 1, started_at = COALESCE(started_at, $5), updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND slice = $3 AND status <> ALL($4)
          RETURNING bot_id",
    )
    .bind(id)
    .bind(bots)
    .bind(slice)
    .bind([TaskStatus::Done, TaskStatus::Cancelled])
    .bind(started)
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
    sql::query(
        "UPDATE erasure.tasks SET status = $4, failure_reason = $3, updated_at = now()
          WHERE request_id = $1 AND bot_id = ANY($2) AND status <> ALL($5)",
    )
    .bind(id)
    .bind(bots)
    .bind(reason)
    .bind(TaskStatus::Failed)
    .bind([TaskStatus::Done, TaskStatus::Cancelled])
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The cancel arrow of tasks (every task not done `→ cancelled`), part of cancelling their
/// request: they never run again.
pub(super) async fn cancel(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE erasure.tasks SET status = $2, updated_at = now()
          WHERE request_id = $1 AND status <> $3",
    )
    .bind(id)
    .bind(TaskStatus::Cancelled)
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
    sql::query(
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

//! The three stores erased per (bot, user), and their bounded, idempotent batch deletes.
//!
//! Each batch is one short transaction: it deletes at most `limit` rows of the given users in
//! the given bots from one store and adds the counts to each bot's task in the same
//! transaction, so the counts are exact even when two workers run the same task at once.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{BotId, PlatformUserId, RequestId},
    store::{pace, tasks},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Conversations,
    Sessions,
    Analytics,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Conversations, Store::Sessions, Store::Analytics];

    pub fn name(self) -> &'static str {
        match self {
            Self::Conversations => "conversations",
            Self::Sessions => "sessions",
            Self::Analytics => "analytics",
        }
    }

    fn sql(self) -> &'static Statements {
        match self {
            Self::Conversations => &CONVERSATIONS,
            Self::Sessions => &SESSIONS,
            Self::Analytics => &ANALYTICS,
        }
    }
}

/// A store's statements. Each takes the users ($1) and the bots ($2), and where it has a
/// limit, the limit ($3).
struct Statements {
    /// Deletes at most $3 of the rows and returns the rows deleted per bot and whether the
    /// store is now drained.
    ///
    /// `c` picks up to the limit of row addresses through the (user_id, bot_id) index, and
    /// the DELETE fetches them by address (a TID scan, no second index pass) re-checking the
    /// keys, so a row that moved or changed meanwhile is never deleted by mistake. Fewer
    /// candidates than the limit proves the store drained (even if a concurrent run of the
    /// same task deleted some of them first: they were among the candidates), so no separate
    /// "anything left?" query, a second walk over an index full of dead entries, is needed.
    /// The rows per bot are grouped by hashing: PostgreSQL expects one row from a DELETE by
    /// address and would otherwise sort them all (16-22 ms of 150 for 60,000 rows, on disk
    /// past `work_mem`).
    ///
    /// One statement for all the bots of a message rather than one per bot: the rows of a
    /// user are scattered through the tables, so each bot's statement visited most of the
    /// heap pages the others visited; for 500 users over 20 bots that was 2-3x the database
    /// work of one statement for all of them.
    batch: &'static str,
    /// The rows per bot, counted up to one more than $3 through the (user_id, bot_id) index
    /// (an index-only scan where the visibility map allows).
    count: &'static str,
    /// Every row: plain SQL's one pass.
    delete_all: &'static str,
}

macro_rules! statements {
    ($table:literal) => {
        Statements {
            batch: concat!(
                "WITH c AS (SELECT ARRAY(SELECT ctid FROM ", $table, "
                                          WHERE user_id = ANY($1) AND bot_id = ANY($2) LIMIT $3) AS ids),
                      d AS (DELETE FROM ", $table, "
                             WHERE ctid = ANY((SELECT ids FROM c)::tid[]) AND user_id = ANY($1) AND bot_id = ANY($2)
                            RETURNING bot_id),
                      per_bot AS (SELECT bot_id, count(*) AS n FROM d GROUP BY bot_id)
                 SELECT ARRAY(SELECT bot_id FROM per_bot), ARRAY(SELECT n FROM per_bot),
                        COALESCE(cardinality((SELECT ids FROM c)), 0) < $3"
            ),
            count: concat!(
                "SELECT bot_id, count(*) FROM (SELECT bot_id FROM ", $table, "
                                                WHERE user_id = ANY($1) AND bot_id = ANY($2) LIMIT $3 + 1) x
                  GROUP BY bot_id"
            ),
            delete_all: concat!(
                "DELETE FROM ", $table, " WHERE user_id = ANY($1) AND bot_id = ANY($2)"
            ),
        }
    };
}

static CONVERSATIONS: Statements = statements!("platform.conversations");
static SESSIONS: Statements = statements!("platform.sessions");
static ANALYTICS: Statements = statements!("platform.analytics_events");

/// Whose rows a task message deletes.
pub struct Target<'a> {
    pub request: &'a RequestId,
    pub bots: &'a [BotId],
    pub users: &'a [PlatformUserId],
}

/// Deletes one batch of at most `limit` of the target's rows from `store`, and counts them per
/// bot in the same transaction.
///
/// `first` (the delivery's first batch of this store) tries plain SQL's way first: it counts
/// the rows per bot through the index, and when they fit in the batch deletes them with one
/// plain `DELETE`, in one pass of a bitmap scan, without `RETURNING`: the count, taken in the
/// same REPEATABLE READ snapshot as the DELETE, is exact for what the DELETE removes (a
/// concurrent change to one of those rows makes it fail with a serialization error, which is
/// retried, rather than skip the row). Measured on 60,000 scattered conversations: 120 ms,
/// where the batch statement's two passes over the heap (pick the addresses, then delete by
/// address) and its `RETURNING` took 150-180. When the rows do not fit, or on every later
/// batch, it runs the store's batch statement.
pub async fn delete_batch(
    pool: &PgPool,
    store: Store,
    target: &Target<'_>,
    limit: i64,
    first: bool,
) -> Result<Batch, sqlx::Error> {
    if first && let Some(batch) = delete_all(pool, store, target, limit).await? {
        return Ok(batch);
    }
    let started = Instant::now();
    // A relaxed commit: the task's completion or continuation, committed durably after the
    // last batch, makes every batch before it durable too (see `begin_relaxed`).
    let mut tx = crate::store::begin_relaxed(pool).await?;
    // Not a prepared statement: planned with its values each time, the user list becomes a
    // constant, and PostgreSQL re-checks each deleted row's user against a hash of it instead
    // of a linear scan of up to 1,000 ids (a generic plan of a cached statement does the
    // latter: measured 1.5x the CPU of the whole statement for 500 users).
    let (bots, rows, drained): (Vec<BotId>, Vec<i64>, bool) = sqlx::query_as(store.sql().batch)
        .persistent(false)
        .bind(target.users)
        .bind(target.bots)
        .bind(limit)
        .fetch_one(&mut *tx)
        .await?;
    let deleted = tasks::count_rows(&mut tx, target.request, store.name(), &bots, &rows).await?;
    tx.commit().await?;
    record_longest(started.elapsed());
    Ok(Batch { deleted, drained })
}

/// Plain SQL's way, when every row fits in one batch (`None` when they do not).
async fn delete_all(
    pool: &PgPool,
    store: Store,
    target: &Target<'_>,
    limit: i64,
) -> Result<Option<Batch>, sqlx::Error> {
    let started = Instant::now();
    let mut tx = crate::store::begin_relaxed_snapshot(pool).await?;
    let counts: Vec<(BotId, i64)> = sqlx::query_as(store.sql().count)
        .persistent(false)
        .bind(target.users)
        .bind(target.bots)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    if total > limit {
        tx.rollback().await?;
        return Ok(None);
    }
    let deleted = if total == 0 {
        0
    } else {
        sqlx::query(store.sql().delete_all)
            .persistent(false)
            .bind(target.users)
            .bind(target.bots)
            .execute(&mut *tx)
            .await?
            .rows_affected()
    };
    if deleted != total as u64 {
        // Not expected (one snapshot for both); counting by `RETURNING` is exact regardless.
        tracing::warn!(
            counted = total,
            deleted,
            "delete and count disagree; batching instead"
        );
        tx.rollback().await?;
        return Ok(None);
    }
    let (bots, rows): (Vec<BotId>, Vec<i64>) = counts.into_iter().unzip();
    tasks::count_rows(&mut tx, target.request, store.name(), &bots, &rows).await?;
    tx.commit().await?;
    record_longest(started.elapsed());
    Ok(Some(Batch {
        deleted,
        drained: true,
    }))
}

/// Opens `connections` connections and runs each store's batch and count statements once on
/// each, with no users (they match and change nothing), so that they exist and have the
/// tables, indexes and catalog entries the deletes need cached before the first task arrives.
/// A fresh PostgreSQL connection pays for both on first use, measured at 10–20 ms of database
/// CPU per connection: for a worker that has just started (a new replica, or one of several
/// started together) that lands on its first tasks, which is the moment they are measured and
/// the moment the platform least needs it. Errors are ignored: a cold connection still works.
pub async fn warm_up(pool: &PgPool, connections: usize) {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        match pool.acquire().await {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    // No user or bot has an empty id, so the statements find nothing, but they are planned
    // and run through the same indexes as real batches.
    let none = vec![String::new()];
    let runs = held.iter_mut().map(|conn| async {
        for store in Store::ALL {
            for sql in [store.sql().batch, store.sql().count] {
                let _ = sqlx::query(sql)
                    .persistent(false)
                    .bind(&none)
                    .bind(&none)
                    .bind(1_i64)
                    .execute(&mut **conn)
                    .await;
            }
        }
    });
    futures_util::future::join_all(runs).await;
}

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub deleted: u64,
    /// No row of the users in the bots is left in this store (as of the statement's snapshot).
    pub drained: bool,
}

/// Keeps the gauge `erasure_delete_batch_max_seconds`: the longest single delete statement
/// this process has run, the figure that says whether batches stay short enough to be gentle
/// (the histogram's buckets only bound it).
fn record_longest(took: Duration) {
    static LONGEST_NANOS: AtomicU64 = AtomicU64::new(0);
    let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
    let longest = LONGEST_NANOS.fetch_max(nanos, Ordering::Relaxed).max(nanos);
    metrics::gauge!("erasure_delete_batch_max_seconds").set(longest as f64 / 1e9);
}

/// Paces deletes to two ceilings of rows per second (0: none): one per worker process, kept in
/// memory, and one for all workers together, kept in the database row `erasure.delete_pace` so
/// that it holds whatever the number of replicas.
///
/// A batch reserves its full size before it runs, and runs when the time that size takes at
/// the ceiling has passed (the end of its slot, not the start), then hands back what it did
/// not use. So the rows deleted never exceed the ceiling times the time since the first
/// reservation, however short the run (a worker never deletes first and waits after; with
/// slots' starts, a run measured from its first batch came out 3-5 % over), and statements
/// stay bounded by the batch size however low the ceiling.
pub struct Throttle {
    local: Option<Pace>,
    total_rows_per_second: u64,
}

struct Pace {
    rows_per_second: u64,
    next: Mutex<Instant>,
}

impl Pace {
    fn secs(&self, rows: u64) -> Duration {
        Duration::from_secs_f64(rows as f64 / self.rows_per_second as f64)
    }
}

impl Throttle {
    pub fn new(per_worker: u64, total: u64) -> Self {
        Self {
            local: (per_worker > 0).then(|| Pace {
                rows_per_second: per_worker,
                next: Mutex::new(Instant::now()),
            }),
            total_rows_per_second: total,
        }
    }

    /// The rows one statement may take: `batch_size`, or under a ceiling at most a quarter
    /// second of it, so that paced deletes come as several short statements a second rather
    /// than one large statement and a long pause.
    pub fn batch(&self, batch_size: i64) -> i64 {
        let lowest = [
            self.local.as_ref().map(|p| p.rows_per_second),
            (self.total_rows_per_second > 0).then_some(self.total_rows_per_second),
        ]
        .into_iter()
        .flatten()
        .min();
        match lowest {
            Some(ceiling) => batch_size.min((ceiling / 4).max(1) as i64),
            None => batch_size,
        }
    }

    /// Waits until `rows` may be deleted under both ceilings and reserves them. `false` when
    /// `stop` fired first; the reservation is then handed back.
    pub async fn reserve(
        &self,
        pool: &PgPool,
        rows: u64,
        stop: &CancellationToken,
    ) -> Result<bool, sqlx::Error> {
        let mut wait = Duration::ZERO;
        if let Some(pace) = &self.local {
            let mut next = pace.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + pace.secs(rows);
            wait = *next - now;
        }
        if self.total_rows_per_second > 0 {
            let shared =
                pace::reserve(pool, rows as f64 / self.total_rows_per_second as f64).await?;
            wait = wait.max(shared);
        }
        if wait.is_zero() {
            return Ok(true);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(true),
            _ = stop.cancelled() => {
                self.refund(pool, rows).await?;
                Ok(false)
            }
        }
    }

    /// Hands back `rows` of a reservation that a batch did not use.
    pub async fn refund(&self, pool: &PgPool, rows: u64) -> Result<(), sqlx::Error> {
        if rows == 0 {
            return Ok(());
        }
        if let Some(pace) = &self.local {
            let mut next = pace.next.lock().await;
            let now = Instant::now();
            *next = next.checked_sub(pace.secs(rows)).unwrap_or(now).max(now);
        }
        if self.total_rows_per_second > 0 {
            pace::refund(pool, rows as f64 / self.total_rows_per_second as f64).await?;
        }
        Ok(())
    }
}

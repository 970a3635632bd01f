//! The three stores erased per (bot, user), and their bounded, idempotent batch deletes.
//!
//! Each batch is one statement, hence one short transaction: it deletes at most `limit` rows
//! of the given users in the given bot and adds the count to the task's progress in the same
//! statement, so the count is exact even when two workers run the same task at once.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::contract::RequestId;

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

    /// The platform table of this store.
    pub fn table(self) -> &'static str {
        match self {
            Self::Conversations => "platform.conversations",
            Self::Sessions => "platform.sessions",
            Self::Analytics => "platform.analytics_events",
        }
    }

    // The inner SELECT finds up to $3 rows through the (user_id, bot_id) index; the DELETE
    // fetches them by physical address and re-checks the keys, so a row that moved or changed
    // meanwhile is never deleted by mistake.
    fn delete_batch_sql(self) -> &'static str {
        match self {
            Self::Conversations => {
                "WITH d AS (
                    DELETE FROM platform.conversations
                     WHERE ctid = ANY(ARRAY(SELECT ctid FROM platform.conversations
                                             WHERE user_id = ANY($1) AND bot_id = $2 LIMIT $3))
                       AND user_id = ANY($1) AND bot_id = $2
                    RETURNING 1),
                 n AS (SELECT count(*) AS n FROM d)
                 UPDATE erasure.tasks SET rows_conversations = rows_conversations + n.n, updated_at = now()
                   FROM n WHERE request_id = $4 AND bot_id = $2
                 RETURNING n.n"
            }
            Self::Sessions => {
                "WITH d AS (
                    DELETE FROM platform.sessions
                     WHERE ctid = ANY(ARRAY(SELECT ctid FROM platform.sessions
                                             WHERE user_id = ANY($1) AND bot_id = $2 LIMIT $3))
                       AND user_id = ANY($1) AND bot_id = $2
                    RETURNING 1),
                 n AS (SELECT count(*) AS n FROM d)
                 UPDATE erasure.tasks SET rows_sessions = rows_sessions + n.n, updated_at = now()
                   FROM n WHERE request_id = $4 AND bot_id = $2
                 RETURNING n.n"
            }
            Self::Analytics => {
                "WITH d AS (
                    DELETE FROM platform.analytics_events
                     WHERE ctid = ANY(ARRAY(SELECT ctid FROM platform.analytics_events
                                             WHERE user_id = ANY($1) AND bot_id = $2 LIMIT $3))
                       AND user_id = ANY($1) AND bot_id = $2
                    RETURNING 1),
                 n AS (SELECT count(*) AS n FROM d)
                 UPDATE erasure.tasks SET rows_analytics = rows_analytics + n.n, updated_at = now()
                   FROM n WHERE request_id = $4 AND bot_id = $2
                 RETURNING n.n"
            }
        }
    }

    fn any_left_sql(self) -> &'static str {
        match self {
            Self::Conversations => {
                "SELECT EXISTS (SELECT 1 FROM platform.conversations WHERE user_id = ANY($1) AND bot_id = $2)"
            }
            Self::Sessions => {
                "SELECT EXISTS (SELECT 1 FROM platform.sessions WHERE user_id = ANY($1) AND bot_id = $2)"
            }
            Self::Analytics => {
                "SELECT EXISTS (SELECT 1 FROM platform.analytics_events WHERE user_id = ANY($1) AND bot_id = $2)"
            }
        }
    }

    /// Deletes one batch of the users' rows in the bot and counts them on the task.
    pub async fn delete_batch(
        self,
        pool: &PgPool,
        request: &RequestId,
        bot_id: &str,
        users: &[String],
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        let started = Instant::now();
        let n: Option<i64> = sqlx::query_scalar(self.delete_batch_sql())
            .bind(users)
            .bind(bot_id)
            .bind(limit)
            .bind(request)
            .fetch_optional(pool)
            .await?;
        record_longest(started.elapsed());
        // The caller loaded the task row, so the UPDATE matches it and returns the count.
        Ok(n.unwrap_or(0) as u64)
    }

    /// Whether any row of the users in the bot remains.
    pub async fn any_left(
        self,
        pool: &PgPool,
        bot_id: &str,
        users: &[String],
    ) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(self.any_left_sql())
            .bind(users)
            .bind(bot_id)
            .fetch_one(pool)
            .await
    }
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

/// Paces deletes to a ceiling of rows per second (0: no ceiling), shared by every task of a
/// worker process.
pub struct Throttle {
    rows_per_second: u64,
    next: Mutex<Instant>,
}

impl Throttle {
    pub fn new(rows_per_second: u64) -> Self {
        Self {
            rows_per_second,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Accounts for `rows` just deleted and waits until the ceiling allows more.
    pub async fn consumed(&self, rows: u64) {
        if self.rows_per_second == 0 || rows == 0 {
            return;
        }
        let wait = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(rows as f64 / self.rows_per_second as f64);
            next.saturating_duration_since(now)
        };
        tokio::time::sleep(wait).await;
    }
}

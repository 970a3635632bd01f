//! The rows-per-second ceilings: one per worker process, kept in memory, and one for all
//! workers together, kept in the database.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::store::pace;

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
        let wait = self.book(pool, rows).await?;
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

    /// Settles a reservation of `reserved` rows of which a batch erased `used`: hands back
    /// what it did not use, or books what it erased beyond (a parent's children come with it,
    /// however many), so that the next batch waits for them.
    pub async fn settle(&self, pool: &PgPool, reserved: u64, used: u64) -> Result<(), sqlx::Error> {
        if used > reserved {
            self.book(pool, used - reserved).await.map(drop)
        } else {
            self.refund(pool, reserved - used).await
        }
    }

    /// Books `rows` under both ceilings; returns how long until they may be erased.
    async fn book(&self, pool: &PgPool, rows: u64) -> Result<Duration, sqlx::Error> {
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
        Ok(wait)
    }

    /// Hands back `rows` of a reservation that a batch did not use.
    async fn refund(&self, pool: &PgPool, rows: u64) -> Result<(), sqlx::Error> {
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

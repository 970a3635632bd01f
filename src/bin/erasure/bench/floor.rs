//! The floor: what PostgreSQL itself needs to delete the bulk users' rows, measured with one
//! plain set-based `DELETE` per store on an identical copy of the stores; and the footing
//! both sides are measured from.

use std::time::Instant;

use sqlx::PgPool;

use super::prepare::{STORE_TABLES, sql};

pub const FLOOR_SCHEMA: &str = "bench_floor";

/// An identical copy of the three stores (same rows, same physical order, same indexes).
pub async fn copy(pool: &PgPool) -> anyhow::Result<()> {
    sql(pool, &format!("CREATE SCHEMA {FLOOR_SCHEMA}")).await?;
    for t in STORE_TABLES {
        sql(
            pool,
            &format!(
                "CREATE TABLE {FLOOR_SCHEMA}.{t} (LIKE platform.{t} INCLUDING ALL);
                 INSERT INTO {FLOOR_SCHEMA}.{t} OVERRIDING SYSTEM VALUE
                 SELECT * FROM platform.{t} ORDER BY id"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Puts every measured run on the same footing: a `VACUUM` of the stores (so that a run does
/// not find the dead rows and cleared visibility-map bits an earlier run left on the pages it
/// shares with it, the rows being scattered: the floor's copy has none, and without it the
/// later replica runs erased on pages the first run had already paid to modify, and ran up
/// to 1.7x faster than bulk for that reason alone), a checkpoint (so that each pays the same
/// full-page writes on first touching a page, rather than whichever side a pending checkpoint
/// happens to fall on), then one read of the users' rows and index entries (so that neither
/// pays for cold caches the other does not).
pub async fn settle(pool: &PgPool, schema: &str, users: &[String]) -> anyhow::Result<()> {
    for t in STORE_TABLES {
        sql(pool, &format!("VACUUM {schema}.{t}")).await?;
    }
    sql(pool, "CHECKPOINT").await?;
    prewarm(pool, schema, users).await
}

async fn prewarm(pool: &PgPool, schema: &str, users: &[String]) -> anyhow::Result<()> {
    for t in STORE_TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT * FROM {schema}.{t} WHERE user_id = ANY($1) OFFSET 0) x"
        )))
        .bind(users)
        .fetch_one(pool)
        .await?;
    }
    Ok(())
}

/// The floor: one plain `DELETE … WHERE user_id = ANY(…)` per store on the copy; the rows
/// deleted and the seconds it took.
pub async fn delete(pool: &PgPool, users: &[String]) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut rows = 0;
    for t in STORE_TABLES {
        rows += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {FLOOR_SCHEMA}.{t} WHERE user_id = ANY($1)"
        )))
        .bind(users)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

//! The bench's platform: the bulk platform, the small-request users and the big user, each in
//! an account of its own, seeded only for the scenarios that run, then vacuumed.

use anyhow::Context;
use erasure::seed::{self, SeedSpec};
use sqlx::PgPool;

use super::{Options, Scenario, floor, step};

pub const BULK_ACCOUNT: &str = "acct-bench";
pub const SMALL_ACCOUNT: &str = "acct-bench-small";
pub const BIG_ACCOUNT: &str = "acct-bench-big";
pub const STORE_TABLES: [&str; 3] = ["conversations", "sessions", "analytics_events"];

/// Seeds what the selected scenarios erase (the bulk platform for `sets` sets of bulk
/// users), copies the stores for the floor when bulk runs, and vacuums.
pub async fn platform(opts: &Options, pool: &PgPool, sets: i64) -> anyhow::Result<()> {
    let has = |s| opts.scenarios.contains(&s);
    if sets > 0 {
        step("seeding the bulk platform");
        seed::seed(
            pool,
            &spec(BULK_ACCOUNT, "b", opts.users, opts.bots, opts.rows),
        )
        .await?;
    }
    if has(Scenario::Small) || has(Scenario::Jti) {
        step("seeding the small-request users");
        // Two phases of distinct users, about 30 rows each over 2 bots; 1 to 4 are protected.
        let users = 4 + 2 * opts.small_requests;
        seed::seed(pool, &spec(SMALL_ACCOUNT, "s", users, 2, users * 30)).await?;
    }
    if has(Scenario::Big) {
        step("seeding the big user");
        seed::seed(pool, &spec(BIG_ACCOUNT, "g", 1, 1, opts.big_rows)).await?;
    }
    if has(Scenario::Child) {
        step("seeding the chat platform of the child scenario");
        super::scenarios::child::seed(pool, opts).await?;
    }
    if has(Scenario::Bulk) || has(Scenario::Many) {
        step("copying the rows for the plain-SQL floor");
        floor::copy(pool).await?;
    }
    step("vacuuming");
    for t in STORE_TABLES {
        sql(pool, &format!("VACUUM ANALYZE platform.{t}")).await?;
        if has(Scenario::Bulk) || has(Scenario::Many) {
            sql(pool, &format!("VACUUM ANALYZE {}.{t}", floor::FLOOR_SCHEMA)).await?;
        }
    }
    Ok(())
}

fn spec(account: &str, prefix: &str, users: i64, bots: i64, rows: i64) -> SeedSpec {
    SeedSpec {
        account: account.into(),
        prefix: prefix.into(),
        users,
        bots,
        rows,
        progress: true,
    }
}

/// Runs one statement of the bench's own (DDL, maintenance), naming it when it fails.
pub async fn sql(pool: &PgPool, statement: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(pool)
        .await
        .with_context(|| format!("running {statement}"))?;
    Ok(())
}

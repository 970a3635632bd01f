//! Runs of redelivered messages (`erasure.redelivery_runs`): started, kept fresh and ended by
//! the worker that runs one; counted, alive or not, by the job runner that receives the
//! message again (`queue::redelivery` says why).

use std::time::Duration;

use super::sql;
use sqlx::PgPool;
use uuid::Uuid;

/// Records a run of the message `key` as started; returns its id. Runs left behind for more
/// than a week are forgotten in the same statement: no message waits that long unsettled.
pub async fn start(pool: &PgPool, key: &str) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sql::query(
        "WITH forgotten AS (
             DELETE FROM erasure.redelivery_runs WHERE seen_at < now() - interval '7 days'
         )
         INSERT INTO erasure.redelivery_runs (run_id, message_key) VALUES ($1, $2)",
    )
    .bind(id)
    .bind(key)
    .execute(sql::on(pool))
    .await?;
    Ok(id)
}

/// The run is still going: its worker is alive.
pub async fn touch(pool: &PgPool, run: Uuid) -> Result<(), sqlx::Error> {
    sql::query("UPDATE erasure.redelivery_runs SET seen_at = now() WHERE run_id = $1")
        .bind(run)
        .execute(sql::on(pool))
        .await?;
    Ok(())
}

/// The run ended with its worker alive.
pub async fn end(pool: &PgPool, run: Uuid) -> Result<(), sqlx::Error> {
    sql::query("DELETE FROM erasure.redelivery_runs WHERE run_id = $1")
        .bind(run)
        .execute(sql::on(pool))
        .await?;
    Ok(())
}

/// The message is settled for good (done or dead-lettered): its runs no longer matter.
pub async fn forget(pool: &PgPool, key: &str) -> Result<(), sqlx::Error> {
    sql::query("DELETE FROM erasure.redelivery_runs WHERE message_key = $1")
        .bind(key)
        .execute(sql::on(pool))
        .await?;
    Ok(())
}

/// The message's runs not ended: (alive, dead), dead being those not refreshed for `stale`
/// (on the database's clock).
pub async fn count(pool: &PgPool, key: &str, stale: Duration) -> Result<(u64, u64), sqlx::Error> {
    let (alive, dead): (i64, i64) = sql::query_as(
        "SELECT count(*) FILTER (WHERE seen_at >= now() - make_interval(secs => $2)),
                count(*) FILTER (WHERE seen_at < now() - make_interval(secs => $2))
           FROM erasure.redelivery_runs WHERE message_key = $1",
    )
    .bind(key)
    .bind(stale.as_secs_f64())
    .fetch_one(sql::on(pool))
    .await?;
    Ok((alive.max(0) as u64, dead.max(0) as u64))
}

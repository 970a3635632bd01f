//! The shared pace of `ERASURE_MAX_ROWS_PER_SECOND_TOTAL`: one row, `erasure.delete_pace`,
//! holds the earliest moment the next batch of any worker may start, on the database's clock.

use std::time::Duration;

use super::sql;
use sqlx::PgPool;

/// Reserves `secs` of the shared budget: pushes the next start forward by that much and
/// returns how long the caller must wait for its reservation to end.
pub async fn reserve(pool: &PgPool, secs: f64) -> Result<Duration, sqlx::Error> {
    let wait: f64 = sql::query_scalar(
        "UPDATE erasure.delete_pace
            SET next_at = GREATEST(next_at, clock_timestamp()) + make_interval(secs => $1)
         RETURNING GREATEST(extract(epoch FROM next_at - clock_timestamp())::float8, 0)",
    )
    .bind(secs)
    .fetch_one(sql::on(pool))
    .await?;
    Ok(Duration::from_secs_f64(wait))
}

/// Hands back `secs` of a reservation that was not used.
pub async fn refund(pool: &PgPool, secs: f64) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE erasure.delete_pace
            SET next_at = GREATEST(next_at - make_interval(secs => $1), clock_timestamp())",
    )
    .bind(secs)
    .execute(sql::on(pool))
    .await?;
    Ok(())
}

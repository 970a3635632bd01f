//! bulk: one request erasing the first set of bulk users from all bots through the service,
//! against the floor on the copy of the same rows.

use super::{
    BULK_ACCOUNT, Bench, Figures, Workers, app_token, erase_and_wait, floor, step, warm_up,
};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let opts = bench.opts;
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let users = bench.bulk_set(0);
    step("bulk: plain-SQL floor");
    floor::settle(&bench.pool, floor::FLOOR_SCHEMA, &users).await?;
    let (floor_rows, floor_secs) = floor::delete(&bench.pool, &users).await?;
    let workers = Workers::spawn(opts, opts.workers, &[]).await?;
    step("bulk: through the service");
    warm_up(bench, &token, opts.workers).await?;
    floor::settle(&bench.pool, "platform", &users).await?;
    let run = erase_and_wait(bench, &token, &users, None).await?;
    workers.stop().await;
    let floor_rps = floor_rows as f64 / floor_secs;
    figures.set("bulk_users", users.len() as f64);
    figures.set("bulk_rows_floor", floor_rows as f64);
    figures.set("bulk_seconds_floor", floor_secs);
    figures.set("bulk_rows_per_s_floor", floor_rps);
    figures.set("bulk_rows_service", run.rows as f64);
    figures.set("bulk_seconds_service", run.seconds);
    figures.set("bulk_rows_per_s_service", run.rows_per_s());
    figures.set("bulk_ratio", run.rows_per_s() / floor_rps);
    Ok(())
}

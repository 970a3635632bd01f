//! replicas: one bulk request per entry of `--replicas`, each for another set of bulk users,
//! worked by that many worker processes; and whether any of them failed or retried.

use erasure::domain::TaskStatus;

use super::{BULK_ACCOUNT, Bench, Figures, Scenario, Workers, app_token, erase_and_wait};
use super::{floor, metric_sum, step, warm_up};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let opts = bench.opts;
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let mut retries = 0.0;
    for (i, &n) in opts.replicas.iter().enumerate() {
        let k = i64::from(bench.has(Scenario::Bulk)) + i as i64;
        let users = bench.bulk_set(k);
        let workers = Workers::spawn(opts, n, &[]).await?;
        step(&format!("replicas: {n} worker process(es)"));
        warm_up(bench, &token, n).await?;
        floor::settle(&bench.pool, "platform", &users).await?;
        let run = erase_and_wait(bench, &token, &users, None).await?;
        for w in &workers.0 {
            let m = w.metrics().await?;
            retries += metric_sum(&m, "erasure_db_retries_total", "")
                + metric_sum(&m, "erasure_handed_back_total", "");
        }
        workers.stop().await;
        figures.set(format!("replicas_{n}_rows"), run.rows as f64);
        figures.set(format!("replicas_{n}_rows_per_s"), run.rows_per_s());
        if let Some(floor) = figures.get("bulk_rows_per_s_floor") {
            figures.set(format!("replicas_{n}_ratio"), run.rows_per_s() / floor);
        }
    }
    let failed: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM erasure.tasks WHERE status = $1)
              + (SELECT count(*) FROM erasure.dead_letters)",
    )
    .bind(TaskStatus::Failed)
    .fetch_one(&bench.pool)
    .await?;
    figures.set("replicas_failed_tasks", failed as f64);
    figures.set("replicas_transient_retries", retries);
    Ok(())
}

//! big: one user with `--big-rows` rows in one bot, erased by one worker process; how long
//! its delete statements ran and how much memory the worker needed.

use super::{BIG_ACCOUNT, Bench, Figures, Workers, app_token, erase_and_wait, metric_sum, step};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let token = app_token(bench, BIG_ACCOUNT).await?;
    let workers = Workers::spawn(bench.opts, 1, &[]).await?;
    step("big user");
    let users = vec!["u-g-1".to_string()];
    let run = erase_and_wait(bench, &token, &users, Some("st-g-1")).await?;
    let metrics = workers.0[0].metrics().await?;
    let rss = workers.0[0].peak_rss_kib()?;
    workers.stop().await;
    figures.set("big_rows", run.rows as f64);
    figures.set("big_seconds", run.seconds);
    figures.set("big_rows_per_s", run.rows_per_s());
    figures.set(
        "big_longest_delete_ms",
        metric_sum(&metrics, "erasure_delete_batch_max_seconds", "") * 1000.0,
    );
    let total = metric_sum(&metrics, "erasure_delete_batch_seconds_count", "");
    let fast = metric_sum(
        &metrics,
        "erasure_delete_batch_seconds_bucket",
        "le=\"0.25\"",
    );
    figures.set("big_delete_statements", total);
    figures.set("big_deletes_over_250ms", total - fast);
    figures.set("big_worker_peak_rss_mib", rss as f64 / 1024.0);
    Ok(())
}

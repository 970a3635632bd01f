//! ceiling: the last set of bulk users erased by 2 worker processes under
//! `ERASURE_MAX_ROWS_PER_SECOND_TOTAL`; the rate they achieved against the limit.

use super::{BULK_ACCOUNT, Bench, Figures, Workers, app_token, erase_and_wait, step};

pub async fn run(bench: &Bench<'_>, ceiling: u64, figures: &mut Figures) -> anyhow::Result<()> {
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let users = bench.bulk_set(bench.sets - 1);
    let env = [(
        "ERASURE_MAX_ROWS_PER_SECOND_TOTAL".to_string(),
        ceiling.to_string(),
    )];
    let workers = Workers::spawn(bench.opts, 2, &env).await?;
    step(&format!("ceiling: {ceiling} rows/s over 2 workers"));
    let run = erase_and_wait(bench, &token, &users, None).await?;
    workers.stop().await;
    figures.set("ceiling_rows_per_s_limit", ceiling as f64);
    figures.set("ceiling_rows", run.rows as f64);
    figures.set("ceiling_rows_per_s_achieved", run.rows_per_s());
    figures.set("ceiling_rows_per_s_deleting", run.deleting_rows_per_s);
    Ok(())
}

//! bulk: one request erasing the first set of bulk users from all bots through the service,
//! against the floor on the copy of the same rows. With `--profile`, what each kind of
//! statement of the bench database cost while the request ran (see the many scenario).

use super::{
    super::profile, BULK_ACCOUNT, Bench, Figures, app_token, erase_and_wait, floor_then_service,
};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let users = bench.bulk_set(0);
    let ((floor_rows, floor_secs), _, workers) =
        floor_then_service(bench, &token, "bulk", &users).await?;
    let profiling =
        profile::Statements::start_if(bench.opts.profile, &bench.pool, &bench.opts.database_url)
            .await?;
    let run = erase_and_wait(bench, &token, &users, None).await?;
    if let Some(statements) = profiling {
        let report = statements.finish(1)?;
        println!("bulk, one request of {} users:\n{report}", users.len());
        figures.set("bulk_db_cpu_ms", report.per_request_cpu_ms());
    }
    workers.stop().await;
    run.against_floor(figures, "bulk", users.len(), (floor_rows, floor_secs));
    Ok(())
}

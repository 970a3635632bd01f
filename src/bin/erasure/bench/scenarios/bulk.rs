//! bulk: one request erasing the first set of bulk users from all bots through the service,
//! against the floor on the copy of the same rows.

use super::{BULK_ACCOUNT, Bench, Figures, app_token, erase_and_wait, floor_then_service};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let users = bench.bulk_set(0);
    let ((floor_rows, floor_secs), workers) =
        floor_then_service(bench, &token, "bulk", &users).await?;
    let run = erase_and_wait(bench, &token, &users, None).await?;
    workers.stop().await;
    run.against_floor(figures, "bulk", users.len(), (floor_rows, floor_secs));
    Ok(())
}

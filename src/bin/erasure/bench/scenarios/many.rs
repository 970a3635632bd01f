//! many: one set of bulk users erased the way platforms send them — one request per user,
//! every bot of the account, `--many-concurrency` calls in flight — against plain SQL
//! deleting the same users' rows with one statement per store on the copy; and where the CPU
//! went, in the service's processes and in PostgreSQL's backends, per request.
//!
//! With `--profile`, PostgreSQL logs every statement of the bench database during the run
//! (`log_min_duration_statement = 0`, set on the database only) and the scenario prints, from
//! the server's log, what each kind of statement cost per request.

use serde_json::json;

use super::{
    super::profile::{self, Cpu, Wal},
    small,
};
use super::{BULK_ACCOUNT, Bench, Figures, Scenario, app_token, floor_then_service, metric_sum};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let opts = bench.opts;
    let token = app_token(bench, BULK_ACCOUNT).await?;
    let users = bench.bulk_set(many_set(bench));
    let ((floor_rows, floor_secs), floor_wal, workers) =
        floor_then_service(bench, &token, "many", &users).await?;
    let profiling =
        profile::Statements::start_if(opts.profile, &bench.pool, &opts.database_url).await?;
    let mut pids: Vec<u32> = workers.0.iter().filter_map(|w| w.pid()).collect();
    pids.extend(bench.intake_pid);
    let cpu = Cpu::start(&bench.pool, &pids).await?;
    let intake_before = intake_seconds(bench).await?;
    let wal = Wal::read(&bench.pool).await?;
    let perf = profile::Perf::start_if(opts.perf.as_deref()).await?;
    let started = chrono::Utc::now();
    let bodies = users
        .iter()
        .map(|u| json!({"userIds": [u], "RemoveDataFromAllBots": true}))
        .collect();
    let accepted = small::submit(
        bench,
        std::slice::from_ref(&token),
        bodies,
        None,
        opts.many_concurrency,
    )
    .await?;
    let settled = small::settle(bench, &accepted.ids).await?;
    if let Some(perf) = perf {
        perf.finish()?;
    }
    // To the last completion, on the database's clock (this host's, as the start's): not to
    // the poll that saw it, up to 100 ms later.
    let wall = (settled.last_completed_at - started)
        .to_std()
        .map_err(|_| anyhow::anyhow!("the last request completed before the first call"))?
        .as_secs_f64();
    let (service_cpu, postgres_cpu) = cpu.finish(&bench.pool).await?;
    let intake_after = intake_seconds(bench).await?;
    let wal = Wal::read(&bench.pool).await?.mb_since(wal);
    let mut groups = [(0.0, 0.0); 2];
    for w in &workers.0 {
        let m = w.metrics().await?;
        for (k, kind) in ["kind=\"plan\"", "kind=\"task\""].iter().enumerate() {
            groups[k].0 += metric_sum(&m, "erasure_job_group_messages_sum", kind);
            groups[k].1 += metric_sum(&m, "erasure_job_group_messages_count", kind);
        }
    }
    if let Some(statements) = profiling {
        let report = statements.finish(accepted.ids.len())?;
        println!("{report}");
        figures.set("many_statements_per_request", report.per_request_count());
        figures.set("many_db_ms_per_request", report.per_request_ms());
        figures.set("many_db_cpu_ms_per_request", report.per_request_cpu_ms());
    }
    workers.stop().await;

    let n = accepted.ids.len() as f64;
    let floor_rps = floor_rows as f64 / floor_secs;
    figures.set("many_requests", n);
    figures.set("many_concurrency", opts.many_concurrency as f64);
    figures.set("many_refused", accepted.refused as f64);
    figures.set("many_rows_floor", floor_rows as f64);
    figures.set("many_seconds_floor", floor_secs);
    figures.set("many_rows_service", settled.rows as f64);
    figures.set("many_seconds_service", wall);
    figures.set("many_rows_per_s_service", settled.rows as f64 / wall);
    figures.set("many_ratio", (settled.rows as f64 / wall) / floor_rps);
    figures.set("many_completed_per_s", n / wall);
    figures.set("many_accepted_per_s", accepted.per_s);
    figures.set("many_mean_plan_group", groups[0].0 / groups[0].1.max(1.0));
    figures.set("many_mean_task_group", groups[1].0 / groups[1].1.max(1.0));
    figures.set(
        "many_intake_ms_mean",
        (intake_after.0 - intake_before.0) * 1000.0 / (intake_after.1 - intake_before.1).max(1.0),
    );
    figures.set("many_wal_mb_floor", floor_wal);
    figures.set("many_wal_mb_service", wal);
    figures.set("many_p50_ms", settled.p50_ms);
    figures.set("many_p99_ms", settled.p99_ms);
    figures.set("many_cpu_ms_per_request_service", service_cpu * 1000.0 / n);
    figures.set(
        "many_cpu_ms_per_request_postgres",
        postgres_cpu * 1000.0 / n,
    );
    Ok(())
}

/// The set of bulk users of this scenario: after bulk's and the replicas', before ceiling's
/// (the last).
fn many_set(bench: &Bench<'_>) -> i64 {
    let mut k = i64::from(bench.has(Scenario::Bulk));
    if bench.has(Scenario::Replicas) {
        k += bench.opts.replicas.len() as i64;
    }
    k
}

/// The intake's time answering erase calls, in all (seconds) and their number, from its
/// metrics: with the calls' count in flight, what bounds the accepted rate.
async fn intake_seconds(bench: &Bench<'_>) -> anyhow::Result<(f64, f64)> {
    let text = reqwest::get(format!("{}/metrics", bench.intake.base()))
        .await?
        .text()
        .await?;
    Ok((
        metric_sum(&text, "erasure_intake_seconds_sum", ""),
        metric_sum(&text, "erasure_intake_seconds_count", ""),
    ))
}

//! small: one request per user (1 user × 2 bots), first at a fixed rate, then as fast as
//! `--small-concurrency` calls in flight allow; how many the intake accepted per second, and
//! the intake-to-completed latency the database recorded.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use erasure::domain::RequestStatus;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{Bench, Figures, SMALL_ACCOUNT, Workers, app_token, bar, percentile, step};

pub async fn run(bench: &Bench<'_>, figures: &mut Figures) -> anyhow::Result<()> {
    let opts = bench.opts;
    let token = app_token(bench, SMALL_ACCOUNT).await?;
    let workers = Workers::spawn(opts, opts.workers, &[]).await?;
    let n = opts.small_requests;
    let fixed: Vec<i64> = (0..n).map(|i| 5 + i).collect();
    let fast: Vec<i64> = (0..n).map(|i| 5 + n + i).collect();
    let phases = [("fixed", Some(opts.small_rate), fixed), ("max", None, fast)];
    for (name, rate, users) in phases {
        step(&format!("small: {name} rate"));
        let bodies = users
            .iter()
            .map(|u| json!({"userIds": [format!("u-s-{u}")], "botIds": ["st-s-1", "st-s-2"]}))
            .collect();
        let accepted = submit(
            bench,
            std::slice::from_ref(&token),
            bodies,
            rate,
            opts.small_concurrency,
        )
        .await?;
        let settled = settle(bench, &accepted.ids).await?;
        figures.set(format!("small_{name}_offered_per_s"), rate.unwrap_or(0.0));
        figures.set(format!("small_{name}_accepted_per_s"), accepted.per_s);
        figures.set(format!("small_{name}_refused"), accepted.refused as f64);
        figures.set(format!("small_{name}_completed_per_s"), settled.per_s);
        figures.set(format!("small_{name}_p50_ms"), settled.p50_ms);
        figures.set(format!("small_{name}_p99_ms"), settled.p99_ms);
        figures.set(format!("small_{name}_rows"), settled.rows as f64);
    }
    workers.stop().await;
    Ok(())
}

pub struct Accepted {
    pub ids: Vec<String>,
    /// Accepted requests over the time from the first call to the last acceptance.
    pub per_s: f64,
    pub refused: u64,
}

/// Submits one request per body, at `rate` per second or as fast as `concurrency` calls in
/// flight allow; call `i` with `tokens[i]`, or the one token when there is one.
pub async fn submit(
    bench: &Bench<'_>,
    tokens: &[String],
    bodies: Vec<serde_json::Value>,
    rate: Option<f64>,
    concurrency: usize,
) -> anyhow::Result<Accepted> {
    let bar = bar(bodies.len() as u64, "accepted");
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tick = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let started = Instant::now();
    let mut calls = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let token = &tokens[if tokens.len() == 1 { 0 } else { i }];
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let (intake, token, bar) = (bench.intake.clone(), token.to_string(), bar.clone());
        calls.push(tokio::spawn(async move {
            let r = intake.erase(&token, &body).send().await;
            drop(permit);
            bar.inc(1);
            r.map(|a| (a.request_id.as_str().to_owned(), Instant::now()))
        }));
    }
    let mut ids = Vec::with_capacity(calls.len());
    let mut last = started;
    let mut refused = 0;
    for c in calls {
        match c.await? {
            Ok((id, at)) => {
                last = last.max(at);
                ids.push(id);
            }
            Err(e) => {
                refused += 1;
                tracing::warn!(error = %e, "bench request refused");
            }
        }
    }
    bar.finish_and_clear();
    let per_s = ids.len() as f64 / (last - started).as_secs_f64().max(1e-9);
    Ok(Accepted {
        ids,
        per_s,
        refused,
    })
}

pub struct Settled {
    /// Settled requests over the time from the first one's creation to the last one's end.
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rows: i64,
    /// When the last of them completed, on the database's clock (this host's).
    pub last_completed_at: chrono::DateTime<chrono::Utc>,
}

/// Waits for every request to settle, then reads their figures.
pub async fn settle(bench: &Bench<'_>, ids: &[String]) -> anyhow::Result<Settled> {
    let bar = bar(ids.len() as u64, "completed");
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM erasure.requests WHERE request_id = ANY($1) AND status = $2",
        )
        .bind(ids)
        .bind(RequestStatus::InProgress)
        .fetch_one(&bench.pool)
        .await?;
        bar.set_position((ids.len() as i64 - open).max(0) as u64);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
    // Intake-to-completed from the database's own clock: created_at is written by the intake,
    // completed_at by the worker that settles the request.
    let mut lat: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM completed_at - created_at)::float8 * 1000
           FROM erasure.requests WHERE request_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&bench.pool)
    .await?;
    lat.sort_by(f64::total_cmp);
    let (span, rows, last_completed_at): (f64, i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT COALESCE(extract(epoch FROM max(completed_at) - min(created_at))::float8, 0),
                COALESCE(sum(rows_deleted), 0)::bigint, COALESCE(max(completed_at), now())
           FROM erasure.request_status WHERE request_id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(&bench.pool)
        .await?;
    Ok(Settled {
        per_s: ids.len() as f64 / span.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        rows,
        last_completed_at,
    })
}

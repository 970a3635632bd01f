//! The scenarios, one file each, and what they share: an app of the account they erase in,
//! and one request timed from the HTTP call until the request is seen settled.

pub mod big;
pub mod bulk;
pub mod ceiling;
pub mod child;
pub mod jti;
pub mod many;
pub mod replicas;
pub mod small;

use std::time::{Duration, Instant};

use anyhow::bail;
use erasure::{
    domain::{AccountId, RequestStatus},
    intake::auth,
    secrets,
    store::apps,
};
use serde_json::json;

// The scenarios' shared vocabulary, reached from each as `super::…`.
use super::{
    Bench, Scenario, bar,
    figures::{Figures, metric_sum, percentile},
    floor,
    prepare::{BIG_ACCOUNT, BULK_ACCOUNT, SMALL_ACCOUNT, STORE_TABLES},
    profile,
    service::Workers,
    step,
};

/// Registers an HS256 app of `account` (single-use tokens if `enforce_jti`): (client id,
/// secret).
async fn register_app(
    bench: &Bench<'_>,
    account: &str,
    enforce_jti: bool,
) -> anyhow::Result<(String, String)> {
    let client_id = format!("cs-bench-{}", uuid::Uuid::new_v4());
    let secret = secrets::new_client_secret();
    let sealed = secrets::seal(&bench.opts.config.keys.secret_key.bytes, secret.as_bytes());
    apps::insert(
        &bench.pool,
        &apps::NewApp {
            client_id: &client_id,
            account_id: &AccountId::from(account),
            scopes: &[auth::SCOPE.to_string()],
            algorithm: "HS256",
            secret_sealed: Some(&sealed),
            public_key_pem: None,
            webhook_secret_sealed: None,
            callback_url: None,
            enforce_jti,
        },
    )
    .await?;
    Ok((client_id, secret))
}

/// Registers an HS256 app of `account` and mints a day-long token for it.
async fn app_token(bench: &Bench<'_>, account: &str) -> anyhow::Result<String> {
    let (client_id, secret) = register_app(bench, account, false).await?;
    auth::mint_hs256(&client_id, &secret, Some(86_400))
}

struct Erased {
    rows: i64,
    seconds: f64,
    /// Rows over the window from the first task's start to the last task's end.
    deleting_rows_per_s: f64,
}

impl Erased {
    fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.seconds
    }

    /// Sets `{name}_…` figures: the users, the floor's and the service's rows, seconds and
    /// rows/s, and the ratio of the two rates.
    fn against_floor(&self, figures: &mut Figures, name: &str, users: usize, floor: (u64, f64)) {
        let (floor_rows, floor_secs) = floor;
        let floor_rps = floor_rows as f64 / floor_secs;
        for (figure, value) in [
            ("users", users as f64),
            ("rows_floor", floor_rows as f64),
            ("seconds_floor", floor_secs),
            ("rows_per_s_floor", floor_rps),
            ("rows_service", self.rows as f64),
            ("seconds_service", self.seconds),
            ("rows_per_s_service", self.rows_per_s()),
            ("ratio", self.rows_per_s() / floor_rps),
        ] {
            figures.set(format!("{name}_{figure}"), value);
        }
    }
}

/// The plain-SQL floor on the floor schema's copy of `users`' rows, then the service's
/// workers started and warmed up, and the service's copy settled as the floor's was: the
/// floor's (rows, seconds) and the workers.
async fn floor_then_service(
    bench: &Bench<'_>,
    token: &str,
    name: &str,
    users: &[String],
) -> anyhow::Result<((u64, f64), f64, Workers)> {
    let opts = bench.opts;
    step(&format!("{name}: plain-SQL floor"));
    floor::settle(&bench.pool, floor::FLOOR_SCHEMA, users).await?;
    let wal = profile::Wal::read(&bench.pool).await?;
    let floor = floor::delete(&bench.pool, users).await?;
    let wal = profile::Wal::read(&bench.pool).await?.mb_since(wal);
    let workers = Workers::spawn(opts, opts.workers, &[]).await?;
    step(&format!("{name}: through the service"));
    warm_up(bench, token, opts.workers).await?;
    floor::settle(&bench.pool, "platform", users).await?;
    Ok((floor, wal, workers))
}

/// Puts the service where a long-running deployment is before a measured request: one
/// request per worker process for a user who does not exist (settled at planning, deleting
/// nothing), so that the first measured request does not pay for the intake's and the
/// planners' first use of their connections (catalog caches, plans), which the floor, run on
/// the bench's warm connection, does not pay either.
async fn warm_up(bench: &Bench<'_>, token: &str, workers: usize) -> anyhow::Result<()> {
    let nobody = vec!["u-warm-up-nobody".to_string()];
    for _ in 0..workers.max(1) {
        erase_and_wait(bench, token, &nobody, None).await?;
    }
    Ok(())
}

/// One request for `users` (from all bots, or from `bot`), timed from the call to the moment
/// the request is seen settled.
async fn erase_and_wait(
    bench: &Bench<'_>,
    token: &str,
    users: &[String],
    bot: Option<&str>,
) -> anyhow::Result<Erased> {
    let pool = &bench.pool;
    let expected: i64 = {
        let mut n = 0;
        for t in STORE_TABLES {
            let c: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM platform.{t} WHERE user_id = ANY($1) AND ($2::text IS NULL OR bot_id = $2)"
            )))
            .bind(users)
            .bind(bot)
            .fetch_one(pool)
            .await?;
            n += c;
        }
        n
    };
    let bar = bar(expected.max(1) as u64, "rows");
    let body = match bot {
        Some(b) => json!({"userIds": users, "botIds": [b]}),
        None => json!({"userIds": users, "RemoveDataFromAllBots": true}),
    };
    let started = Instant::now();
    let id = bench.intake.erase(token, &body).send().await?.request_id;
    let (status, rows) = loop {
        let (status, rows): (RequestStatus, i64) = sqlx::query_as(
            "SELECT status, rows_deleted FROM erasure.request_status WHERE request_id = $1",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?
        .unwrap_or((RequestStatus::InProgress, 0));
        bar.set_position(rows.max(0) as u64);
        if status.is_settled() {
            break (status, rows);
        }
        // Often enough not to add more than a few milliseconds to a run of a few hundred
        // (each poll is one indexed read).
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if status != RequestStatus::Completed {
        bail!("request {id} ended {status}");
    }
    let window: f64 = sqlx::query_scalar(
        "SELECT COALESCE(extract(epoch FROM max(completed_at) - min(started_at))::float8, 0)
           FROM erasure.tasks WHERE request_id = $1",
    )
    .bind(&id)
    .fetch_one(pool)
    .await?;
    Ok(Erased {
        rows,
        seconds,
        deleting_rows_per_s: if window > 0.0 {
            rows as f64 / window
        } else {
            0.0
        },
    })
}

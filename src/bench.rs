//! `erasure bench` (DESIGN.md section 7): seeds a platform in the bench's own database, erases
//! through the full path (HTTP intake → RabbitMQ → worker processes → PostgreSQL) and measures
//! it against the floor: the same rows, copied, deleted with one plain set-based `DELETE` per
//! store. The intake and the workers run as child processes of the same binary, so that the
//! `replicas` scenario runs real processes and a worker's peak memory is its own.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::PgPool;
use tokio::{process::Child, sync::Semaphore};

use crate::{
    config::Config,
    intake::auth,
    queue::Topology,
    secrets,
    seed::{self, SeedSpec},
    store::{self, apps},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Bulk,
    Small,
    Big,
    Replicas,
    Ceiling,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Users of the bulk platform.
    #[arg(long, default_value_t = 10_000)]
    pub users: i64,
    /// Bots of the bulk platform.
    #[arg(long, default_value_t = 20)]
    pub bots: i64,
    /// Rows of the bulk platform, scattered over users and bots.
    #[arg(long, default_value_t = 2_000_000)]
    pub rows: i64,
    /// Users erased from all bots by one bulk request (each replicas and ceiling run erases
    /// another set of this size).
    #[arg(long, default_value_t = 500)]
    pub bulk_users: i64,
    /// Requests of the small scenario, per phase (fixed rate, then as fast as possible).
    #[arg(long, default_value_t = 2_000)]
    pub small_requests: i64,
    /// Requests per second offered in the small scenario's fixed-rate phase.
    #[arg(long, default_value_t = 100.0)]
    pub small_rate: f64,
    /// Requests in flight in the small scenario's as-fast-as-possible phase.
    #[arg(long, default_value_t = 64)]
    pub small_concurrency: usize,
    /// Rows of the one big user, in one bot.
    #[arg(long, default_value_t = 1_000_000)]
    pub big_rows: i64,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,small,big,replicas"
    )]
    pub scenarios: Vec<Scenario>,
    /// Worker processes of the bulk, small and big scenarios.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Worker processes of each replicas run.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub replicas: Vec<usize>,
    /// Runs the ceiling scenario: a bulk erasure by 2 workers under
    /// ERASURE_MAX_ROWS_PER_SECOND_TOTAL set to this many rows per second.
    #[arg(long)]
    pub ceiling: Option<u64>,
    /// Writes the figures as JSON, one key per figure.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keeps the bench database after the run.
    #[arg(long)]
    pub keep: bool,
    /// Name of the bench's own database (on the server of DATABASE_URL); dropped first if it
    /// exists.
    #[arg(long, default_value = "erasure_bench")]
    pub database: String,
}

/// Everything a run needs; the CLI builds it from `BenchArgs`, tests build it directly.
#[derive(Clone, Debug)]
pub struct Options {
    pub args: BenchArgs,
    /// Base configuration (AMQP URL, secret key); the database and prefix are the bench's.
    pub config: Config,
    pub database_url: String,
    pub queue_prefix: String,
    /// True: the bench creates the database (dropping a leftover first) and drops it at the
    /// end unless `keep`. False: the caller owns it.
    pub own_database: bool,
    /// The `erasure` binary started as intake and worker processes.
    pub exe: PathBuf,
    pub progress: bool,
}

/// The figures of a run, one key per figure, units in the key.
#[derive(Debug, Default, Clone)]
pub struct Figures(pub BTreeMap<String, f64>);

impl Figures {
    fn set(&mut self, key: impl Into<String>, value: f64) {
        self.0.insert(key.into(), value);
    }
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }
    pub fn table(&self) -> String {
        let mut out = format!("{:<40} {:>16}\n", "figure", "value");
        for (k, v) in &self.0 {
            let v = if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{v:.0}")
            } else {
                format!("{v:.3}")
            };
            out.push_str(&format!("{k:<40} {v:>16}\n"));
        }
        out
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
    }
}

/// `erasure bench`: derives the bench database and prefix, runs, prints, writes JSON.
pub async fn main(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    if args.database.is_empty()
        || !args
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("--database must be letters, digits and '_'");
    }
    let mut url = reqwest::Url::parse(&config.database.url).context("DATABASE_URL")?;
    url.set_path(&format!("/{}", args.database));
    let id = uuid::Uuid::new_v4().simple().to_string();
    let opts = Options {
        config: config.clone(),
        database_url: url.to_string(),
        queue_prefix: format!("bench{}.", &id[..8]),
        own_database: true,
        exe: std::env::current_exe().context("locating the erasure binary")?,
        progress: true,
        args,
    };
    let figures = run(&opts).await?;
    println!("{}", figures.table());
    if let Some(path) = &opts.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&figures.to_json())? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

impl std::ops::Deref for Options {
    type Target = BenchArgs;
    fn deref(&self) -> &BenchArgs {
        &self.args
    }
}

const BULK_ACCOUNT: &str = "acct-bench";
const SMALL_ACCOUNT: &str = "acct-bench-small";
const BIG_ACCOUNT: &str = "acct-bench-big";
const FLOOR_SCHEMA: &str = "bench_floor";
const STORE_TABLES: [&str; 3] = ["conversations", "sessions", "analytics_events"];

/// Runs the selected scenarios and returns their figures. Cleans up (processes, queues, and
/// the database when it owns it) whether or not the run succeeds.
pub async fn run(opts: &Options) -> anyhow::Result<Figures> {
    validate(opts)?;
    if opts.own_database {
        store::drop_database(&opts.database_url).await.ok();
    }
    let result = run_inner(opts).await;
    cleanup(opts).await;
    result
}

fn validate(opts: &Options) -> anyhow::Result<()> {
    let has = |s| opts.scenarios.contains(&s);
    if opts.scenarios.is_empty() {
        bail!("--scenarios names no scenario");
    }
    if has(Scenario::Ceiling) && opts.ceiling.is_none() {
        bail!("the ceiling scenario needs --ceiling ROWS_PER_SECOND");
    }
    if opts.workers == 0 || opts.replicas.contains(&0) {
        bail!("--workers and --replicas count at least one worker process");
    }
    if opts.bulk_users < 1 || opts.bulk_users > 1000 {
        bail!("--bulk-users must be between 1 and 1000 (one request)");
    }
    let sets = bulk_sets(opts);
    if sets > 0 && opts.users < 4 + opts.bulk_users * sets {
        bail!(
            "--users must be at least {} for {sets} set(s) of --bulk-users {} (users 1 to 4 are protected)",
            4 + opts.bulk_users * sets,
            opts.bulk_users
        );
    }
    if sets > 0 && (opts.bots < 1 || opts.rows < 1) {
        bail!("--bots and --rows must be at least 1");
    }
    if has(Scenario::Small) && (opts.small_requests < 1 || opts.small_rate <= 0.0) {
        bail!("--small-requests and --small-rate must be positive");
    }
    if has(Scenario::Small) && opts.small_concurrency == 0 {
        bail!("--small-concurrency must be at least 1");
    }
    if has(Scenario::Big) && opts.big_rows < 1 {
        bail!("--big-rows must be at least 1");
    }
    Ok(())
}

/// Disjoint sets of bulk users: bulk, one per replicas run, ceiling.
fn bulk_sets(opts: &Options) -> i64 {
    let mut n = 0;
    if opts.scenarios.contains(&Scenario::Bulk) {
        n += 1;
    }
    if opts.scenarios.contains(&Scenario::Replicas) {
        n += opts.replicas.len() as i64;
    }
    if opts.scenarios.contains(&Scenario::Ceiling) {
        n += 1;
    }
    n
}

/// Users of set `k` of `sets`, interleaved so every set spreads over the whole user range.
fn bulk_set(opts: &Options, sets: i64, k: i64) -> Vec<String> {
    (0..opts.bulk_users)
        .map(|j| format!("u-b-{}", 5 + j * sets + k))
        .collect()
}

async fn run_inner(opts: &Options) -> anyhow::Result<Figures> {
    let pool = store::connect_and_migrate(&opts.database_url, 8, Duration::from_secs(600))
        .await
        .context("preparing the bench database")?;
    let has = |s| opts.scenarios.contains(&s);
    let mut figures = Figures::default();
    let sets = bulk_sets(opts);

    let started = Instant::now();
    if sets > 0 {
        step(opts, "seeding the bulk platform");
        seed::seed(
            &pool,
            &spec(opts, BULK_ACCOUNT, "b", opts.users, opts.bots, opts.rows),
        )
        .await?;
    }
    if has(Scenario::Small) {
        step(opts, "seeding the small-request users");
        // Two phases of distinct users, about 30 rows each over 2 bots; 1 to 4 are protected.
        let users = 4 + 2 * opts.small_requests;
        seed::seed(&pool, &spec(opts, SMALL_ACCOUNT, "s", users, 2, users * 30)).await?;
    }
    if has(Scenario::Big) {
        step(opts, "seeding the big user");
        seed::seed(&pool, &spec(opts, BIG_ACCOUNT, "g", 1, 1, opts.big_rows)).await?;
    }
    if has(Scenario::Bulk) {
        step(opts, "copying the rows for the plain-SQL floor");
        copy_floor(&pool).await?;
    }
    step(opts, "vacuuming");
    for t in STORE_TABLES {
        sql(&pool, &format!("VACUUM ANALYZE platform.{t}")).await?;
        if has(Scenario::Bulk) {
            sql(&pool, &format!("VACUUM ANALYZE {FLOOR_SCHEMA}.{t}")).await?;
        }
    }
    figures.set("seed_seconds", started.elapsed().as_secs_f64());

    let intake = Service::spawn(opts, "intake", 0, &[]).await?;
    let api = Api {
        base: format!("http://{}", intake.addr),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(opts.small_concurrency.max(8))
            .build()?,
    };

    if has(Scenario::Bulk) {
        let token = app_token(opts, &pool, BULK_ACCOUNT).await?;
        let users = bulk_set(opts, sets, 0);
        step(opts, "bulk: plain-SQL floor");
        settle(&pool, FLOOR_SCHEMA, &users).await?;
        let (floor_rows, floor_secs) = floor_delete(&pool, &users).await?;
        let workers = Workers::spawn(opts, opts.workers, &[]).await?;
        step(opts, "bulk: through the service");
        warm_up(opts, &api, &pool, &token, opts.workers).await?;
        settle(&pool, "platform", &users).await?;
        let run = erase_and_wait(opts, &api, &pool, &token, &users, None).await?;
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
    }

    if has(Scenario::Small) {
        let token = app_token(opts, &pool, SMALL_ACCOUNT).await?;
        let workers = Workers::spawn(opts, opts.workers, &[]).await?;
        let n = opts.small_requests;
        let fixed: Vec<i64> = (0..n).map(|i| 5 + i).collect();
        let fast: Vec<i64> = (0..n).map(|i| 5 + n + i).collect();
        let phases = [("fixed", Some(opts.small_rate), fixed), ("max", None, fast)];
        for (name, rate, users) in phases {
            step(opts, &format!("small: {name} rate"));
            let r = small_phase(opts, &api, &pool, &token, &users, rate).await?;
            figures.set(format!("small_{name}_offered_per_s"), rate.unwrap_or(0.0));
            figures.set(format!("small_{name}_accepted_per_s"), r.accepted_per_s);
            figures.set(format!("small_{name}_refused"), r.refused as f64);
            figures.set(format!("small_{name}_completed_per_s"), r.completed_per_s);
            figures.set(format!("small_{name}_p50_ms"), r.p50_ms);
            figures.set(format!("small_{name}_p99_ms"), r.p99_ms);
            figures.set(format!("small_{name}_rows"), r.rows as f64);
        }
        workers.stop().await;
    }

    if has(Scenario::Big) {
        let token = app_token(opts, &pool, BIG_ACCOUNT).await?;
        let workers = Workers::spawn(opts, 1, &[]).await?;
        step(opts, "big user");
        let users = vec!["u-g-1".to_string()];
        let run = erase_and_wait(opts, &api, &pool, &token, &users, Some("st-g-1")).await?;
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
    }

    if has(Scenario::Replicas) {
        let token = app_token(opts, &pool, BULK_ACCOUNT).await?;
        let mut retries = 0.0;
        for (i, &n) in opts.replicas.iter().enumerate() {
            let k = i64::from(has(Scenario::Bulk)) + i as i64;
            let users = bulk_set(opts, sets, k);
            let workers = Workers::spawn(opts, n, &[]).await?;
            step(opts, &format!("replicas: {n} worker process(es)"));
            warm_up(opts, &api, &pool, &token, n).await?;
            settle(&pool, "platform", &users).await?;
            let run = erase_and_wait(opts, &api, &pool, &token, &users, None).await?;
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
            "SELECT (SELECT count(*) FROM erasure.tasks WHERE status = 'failed')
                  + (SELECT count(*) FROM erasure.dead_letters)",
        )
        .fetch_one(&pool)
        .await?;
        figures.set("replicas_failed_tasks", failed as f64);
        figures.set("replicas_transient_retries", retries);
    }

    if let (true, Some(ceiling)) = (has(Scenario::Ceiling), opts.ceiling) {
        let token = app_token(opts, &pool, BULK_ACCOUNT).await?;
        let users = bulk_set(opts, sets, sets - 1);
        let env = [(
            "ERASURE_MAX_ROWS_PER_SECOND_TOTAL".to_string(),
            ceiling.to_string(),
        )];
        let workers = Workers::spawn(opts, 2, &env).await?;
        step(opts, &format!("ceiling: {ceiling} rows/s over 2 workers"));
        let run = erase_and_wait(opts, &api, &pool, &token, &users, None).await?;
        workers.stop().await;
        figures.set("ceiling_rows_per_s_limit", ceiling as f64);
        figures.set("ceiling_rows", run.rows as f64);
        figures.set("ceiling_rows_per_s_achieved", run.rows_per_s());
        figures.set("ceiling_rows_per_s_deleting", run.deleting_rows_per_s);
    }

    intake.stop().await;
    pool.close().await;
    Ok(figures)
}

fn spec(opts: &Options, account: &str, prefix: &str, users: i64, bots: i64, rows: i64) -> SeedSpec {
    SeedSpec {
        account: account.into(),
        prefix: prefix.into(),
        users,
        bots,
        rows,
        progress: opts.progress,
    }
}

fn step(opts: &Options, what: &str) {
    if opts.progress {
        eprintln!("• {what}");
    }
}

async fn sql(pool: &PgPool, statement: &str) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(pool)
        .await
        .with_context(|| format!("running {statement}"))?;
    Ok(())
}

/// An identical copy of the three stores (same rows, same physical order, same indexes).
async fn copy_floor(pool: &PgPool) -> anyhow::Result<()> {
    sql(pool, &format!("CREATE SCHEMA {FLOOR_SCHEMA}")).await?;
    for t in STORE_TABLES {
        sql(
            pool,
            &format!(
                "CREATE TABLE {FLOOR_SCHEMA}.{t} (LIKE platform.{t} INCLUDING ALL);
                 INSERT INTO {FLOOR_SCHEMA}.{t} OVERRIDING SYSTEM VALUE
                 SELECT * FROM platform.{t} ORDER BY id"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Puts every measured run on the same footing: a `VACUUM` of the stores (so that a run does
/// not find the dead rows and cleared visibility-map bits an earlier run left on the pages it
/// shares with it, the rows being scattered: the floor's copy has none, and without it the
/// later replica runs erased on pages the first run had already paid to modify, and ran up
/// to 1.7x faster than bulk for that reason alone), a checkpoint (so that each pays the same
/// full-page writes on first touching a page, rather than whichever side a pending checkpoint
/// happens to fall on), then one read of the users' rows and index entries (so that neither
/// pays for cold caches the other does not).
async fn settle(pool: &PgPool, schema: &str, users: &[String]) -> anyhow::Result<()> {
    for t in STORE_TABLES {
        sql(pool, &format!("VACUUM {schema}.{t}")).await?;
    }
    sql(pool, "CHECKPOINT").await?;
    prewarm(pool, schema, users).await
}

async fn prewarm(pool: &PgPool, schema: &str, users: &[String]) -> anyhow::Result<()> {
    for t in STORE_TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT * FROM {schema}.{t} WHERE user_id = ANY($1) OFFSET 0) x"
        )))
        .bind(users)
        .fetch_one(pool)
        .await?;
    }
    Ok(())
}

/// The floor: one plain `DELETE … WHERE user_id = ANY(…)` per store on the copy.
async fn floor_delete(pool: &PgPool, users: &[String]) -> anyhow::Result<(u64, f64)> {
    let started = Instant::now();
    let mut rows = 0;
    for t in STORE_TABLES {
        rows += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {FLOOR_SCHEMA}.{t} WHERE user_id = ANY($1)"
        )))
        .bind(users)
        .execute(pool)
        .await?
        .rows_affected();
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

async fn app_token(opts: &Options, pool: &PgPool, account: &str) -> anyhow::Result<String> {
    let client_id = format!("cs-bench-{}", uuid::Uuid::new_v4());
    let secret = secrets::new_client_secret();
    let sealed = secrets::seal(&opts.config.keys.secret_key.bytes, secret.as_bytes());
    apps::insert(
        pool,
        &client_id,
        &crate::domain::AccountId::from(account),
        &[auth::SCOPE.to_string()],
        "HS256",
        Some(&sealed),
        None,
    )
    .await?;
    auth::mint_hs256(&client_id, &secret, Some(86_400))
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// Submits an erase request; the request id on 202.
    async fn erase(&self, token: &str, body: &serde_json::Value) -> anyhow::Result<String> {
        let resp = self
            .http
            .delete(format!("{}{}", self.base, crate::intake::ERASE_PATH))
            .header("auth", token)
            .json(body)
            .send()
            .await
            .context("calling the intake")?;
        let code = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if code.as_u16() != 202 {
            bail!("the intake answered {code}: {v}");
        }
        v["requestId"]
            .as_str()
            .map(str::to_owned)
            .context("202 without a requestId")
    }
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
}

/// Puts the service where a long-running deployment is before a measured request: one
/// request per worker process for a user who does not exist (settled at planning, deleting
/// nothing), so that the first measured request does not pay for the intake's and the
/// planners' first use of their connections (catalog caches, plans), which the floor, run on
/// the bench's warm connection, does not pay either.
async fn warm_up(
    opts: &Options,
    api: &Api,
    pool: &PgPool,
    token: &str,
    workers: usize,
) -> anyhow::Result<()> {
    let nobody = vec!["u-warm-up-nobody".to_string()];
    for _ in 0..workers.max(1) {
        erase_and_wait(opts, api, pool, token, &nobody, None).await?;
    }
    Ok(())
}

/// One request for `users` (from all bots, or from `bot`), timed from the call to the moment
/// the request is seen settled.
async fn erase_and_wait(
    opts: &Options,
    api: &Api,
    pool: &PgPool,
    token: &str,
    users: &[String],
    bot: Option<&str>,
) -> anyhow::Result<Erased> {
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
    let bar = bar(opts, expected.max(1) as u64, "rows");
    let body = match bot {
        Some(b) => json!({"userIds": users, "botIds": [b]}),
        None => json!({"userIds": users, "RemoveDataFromAllBots": true}),
    };
    let started = Instant::now();
    let id = api.erase(token, &body).await?;
    let (status, rows) = loop {
        let (status, rows): (String, i64) = sqlx::query_as(
            "SELECT status, rows_deleted FROM erasure.request_status WHERE request_id = $1",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?
        .unwrap_or(("in-progress".into(), 0));
        bar.set_position(rows.max(0) as u64);
        if status != "in-progress" {
            break (status, rows);
        }
        // Often enough not to add more than a few milliseconds to a run of a few hundred
        // (each poll is one indexed read).
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if status != "completed" {
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

struct SmallRun {
    accepted_per_s: f64,
    refused: u64,
    completed_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rows: i64,
}

/// Submits one request per user (1 user × 2 bots), at `rate` per second or as fast as
/// `small_concurrency` calls in flight allow; waits for all to settle.
async fn small_phase(
    opts: &Options,
    api: &Api,
    pool: &PgPool,
    token: &str,
    users: &[i64],
    rate: Option<f64>,
) -> anyhow::Result<SmallRun> {
    let api = Arc::new(Api {
        base: api.base.clone(),
        http: api.http.clone(),
    });
    let bar = bar(opts, users.len() as u64, "accepted");
    let gate = Arc::new(Semaphore::new(opts.small_concurrency));
    let mut tick = rate.map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let started = Instant::now();
    let mut calls = Vec::with_capacity(users.len());
    for &u in users {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let (api, token, bar) = (api.clone(), token.to_string(), bar.clone());
        calls.push(tokio::spawn(async move {
            let body = json!({"userIds": [format!("u-s-{u}")], "botIds": ["st-s-1", "st-s-2"]});
            let r = api.erase(&token, &body).await;
            drop(permit);
            bar.inc(1);
            r.map(|id| (id, Instant::now()))
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
    let accepted_per_s = ids.len() as f64 / (last - started).as_secs_f64().max(1e-9);

    let bar = self::bar(opts, ids.len() as u64, "completed");
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM erasure.requests WHERE request_id = ANY($1) AND status = 'in-progress'",
        )
        .bind(&ids)
        .fetch_one(pool)
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
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    lat.sort_by(f64::total_cmp);
    let (span, rows): (f64, i64) = sqlx::query_as(
        "SELECT COALESCE(extract(epoch FROM max(completed_at) - min(created_at))::float8, 0),
                COALESCE(sum(rows_deleted), 0)::bigint
           FROM erasure.request_status WHERE request_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(pool)
    .await?;
    Ok(SmallRun {
        accepted_per_s,
        refused,
        completed_per_s: ids.len() as f64 / span.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        rows,
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sum of the samples of one Prometheus metric whose labels contain `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn bar(opts: &Options, len: u64, unit: &str) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "  [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{elapsed}})"
    )) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

/// A child process of this binary running `serve --role ROLE`.
struct Service {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Service {
    async fn spawn(
        opts: &Options,
        role: &str,
        n: usize,
        extra: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log = std::env::temp_dir().join(format!(
            "erasure-{}{role}-{n}.log",
            opts.queue_prefix.replace('.', "-")
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&opts.exe);
        cmd.args(["serve", "--role", role])
            .env("DATABASE_URL", &opts.database_url)
            .env("AMQP_URL", opts.config.queue.amqp_url.primary())
            .env("ERASURE_QUEUE_PREFIX", &opts.queue_prefix)
            .env("ERASURE_HTTP_ADDR", addr.to_string())
            .env("ERASURE_RATE_LIMIT_PER_APP", "0")
            .env("ERASURE_LOG_FORMAT", "text")
            // Quiet unless the bench's own environment asks for more.
            .env(
                "ERASURE_LOG",
                std::env::var("ERASURE_LOG").unwrap_or_else(|_| "warn,sqlx=warn,lapin=warn".into()),
            )
            .env("ERASURE_MAX_ROWS_PER_SECOND_TOTAL", "0")
            // The PostgreSQL server is shared: keep each process's pool modest.
            .env(
                "ERASURE_DB_MAX_CONNECTIONS",
                if role == "intake" { "16" } else { "8" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        if opts.config.keys.secret_key.configured {
            cmd.env(
                "ERASURE_SECRET_KEY",
                hex::encode(&opts.config.keys.secret_key.bytes),
            );
        } else {
            cmd.env_remove("ERASURE_SECRET_KEY");
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", opts.exe.display()))?;
        let mut svc = Self { child, addr, log };
        svc.wait_ready().await?;
        Ok(svc)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{status}: see {}", self.log.display());
            }
            let ready = http
                .get(format!("http://{}/readyz", self.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not ready within 60 s: see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.addr))
            .await?
            .text()
            .await?)
    }

    /// Peak resident memory of the process (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        peak_rss_kib(pid)
    }

    /// SIGTERM, then waits for the graceful exit (SIGKILL after 30 s).
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading /proc/<pid>/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")
}

struct Workers(Vec<Service>);

impl Workers {
    async fn spawn(opts: &Options, n: usize, extra: &[(String, String)]) -> anyhow::Result<Self> {
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            all.push(Service::spawn(opts, "worker", i, extra).await?);
        }
        Ok(Self(all))
    }

    async fn stop(self) {
        futures_util::future::join_all(self.0.into_iter().map(Service::stop)).await;
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn cleanup(opts: &Options) {
    let topology = Topology::new(&opts.queue_prefix, opts.config.queue.max_deliveries);
    if let Ok(conn) =
        crate::queue::connect(opts.config.queue.amqp_url.primary(), "bench-cleanup").await
    {
        if let Ok(ch) = conn.create_channel().await {
            for (q, _) in topology.queues() {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(topology.exchange().as_str().into(), Default::default())
                .await;
            // Closed before the connection: a channel dropped on a closing connection makes
            // lapin log an error.
            let _ = ch.close(200, "bye".into()).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    if opts.own_database
        && !opts.keep
        && let Err(e) = store::drop_database(&opts.database_url).await
    {
        tracing::warn!(error = %e, "could not drop the bench database");
    }
}

//! `erasure bench` (DESIGN.md section 7): seeds a platform in the bench's own database, erases
//! through the full path (HTTP intake → RabbitMQ → worker processes → PostgreSQL) and measures
//! it against the floor: the same rows, copied, deleted with one plain set-based `DELETE` per
//! store. The intake and the workers run as child processes of the same binary, so that the
//! `replicas` scenario runs real processes and a worker's peak memory is its own.
//!
//! Here: the flags and the run. `prepare` seeds, `floor` is plain SQL, `service` runs the
//! child processes, `scenarios` drive them, `figures` holds what they measure.

mod figures;
mod floor;
mod prepare;
mod profile;
mod scenarios;
mod service;

use std::{path::PathBuf, time::Duration, time::Instant};

use anyhow::{Context, bail};
use clap::Args;
use erasure::{client::Client, config::Config, queue::Topology, store};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use figures::Figures;
use service::Service;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Bulk,
    Small,
    Big,
    Replicas,
    Ceiling,
    Child,
    Many,
    /// Accepted calls/s at the intake, single-use tokens (`--enforce-jti`) or not.
    Jti,
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
    /// Calls in flight in the many scenario (one request per user of a set of --bulk-users).
    #[arg(long, default_value_t = 8)]
    pub many_concurrency: usize,
    /// Logs every statement of the bench database and prints, from PostgreSQL's log, what
    /// each kind cost per request of the many scenario and for the bulk scenario's request
    /// (run it with --scenarios many, bulk or both; the log is
    /// /var/log/postgresql/postgresql-<major>-main.log, or ERASURE_BENCH_PG_LOG).
    #[arg(long)]
    pub profile: bool,
    /// Records the many scenario's service side with `perf record -a -g` (every process on
    /// the host, call graphs) into this file, for `perf report --comm postgres` or
    /// `--comm erasure`: where the CPU of PostgreSQL's backends and of the service went.
    #[arg(long)]
    pub perf: Option<PathBuf>,
    /// Users erased by the child scenario's request (from all its bots).
    #[arg(long, default_value_t = 500)]
    pub child_users: i64,
    /// Users of the child scenario's platform who are not erased.
    #[arg(long, default_value_t = 1_500)]
    pub child_others: i64,
    /// Bots of the child scenario's account.
    #[arg(long, default_value_t = 5)]
    pub child_bots: i64,
    /// Conversations per user and bot in the child scenario, each with 3 messages of 2
    /// attachments: 10 rows (12 × 5 bots × 500 users: 300,000 rows erased).
    #[arg(long, default_value_t = 12)]
    pub child_conversations: i64,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bulk,small,big,replicas,child,many"
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

/// Everything a run needs, derived once from the flags and the environment.
#[derive(Clone, Debug)]
struct Options {
    args: BenchArgs,
    /// Base configuration (AMQP URL, secret key); the database and prefix are the bench's.
    config: Config,
    database_url: String,
    queue_prefix: String,
    /// The `erasure` binary started as intake and worker processes.
    exe: PathBuf,
}

impl std::ops::Deref for Options {
    type Target = BenchArgs;
    fn deref(&self) -> &BenchArgs {
        &self.args
    }
}

/// `erasure bench`: derives the bench database and prefix, runs, prints, writes JSON.
pub async fn main(args: BenchArgs) -> anyhow::Result<()> {
    let config = erasure::cli::configure()?;
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
        config,
        database_url: url.to_string(),
        queue_prefix: format!("bench{}.", &id[..8]),
        exe: std::env::current_exe().context("locating the erasure binary")?,
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

/// Runs the selected scenarios and returns their figures. Cleans up (processes, queues, the
/// database) whether or not the run succeeds.
async fn run(opts: &Options) -> anyhow::Result<Figures> {
    validate(opts)?;
    store::drop_database(&opts.database_url).await.ok();
    let result = run_scenarios(opts).await;
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
    if (has(Scenario::Small) || has(Scenario::Jti))
        && (opts.small_requests < 1 || opts.small_rate <= 0.0)
    {
        bail!("--small-requests and --small-rate must be positive");
    }
    if has(Scenario::Many) && opts.many_concurrency == 0 {
        bail!("--many-concurrency must be at least 1");
    }
    if opts.perf.is_some() && !has(Scenario::Many) {
        bail!("--perf records the many scenario: add it to --scenarios");
    }
    if opts.profile && !has(Scenario::Many) && !has(Scenario::Bulk) {
        bail!("--profile profiles the many and bulk scenarios: add one to --scenarios");
    }
    if (has(Scenario::Small) || has(Scenario::Jti)) && opts.small_concurrency == 0 {
        bail!("--small-concurrency must be at least 1");
    }
    if has(Scenario::Big) && opts.big_rows < 1 {
        bail!("--big-rows must be at least 1");
    }
    if has(Scenario::Child)
        && (opts.child_users < 1 || opts.child_users > 1000 || opts.child_bots < 1)
    {
        bail!("--child-users must be between 1 and 1000 (one request), --child-bots at least 1");
    }
    if has(Scenario::Child) && (opts.child_others < 0 || opts.child_conversations < 1) {
        bail!("--child-others must be at least 0, --child-conversations at least 1");
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
    if opts.scenarios.contains(&Scenario::Many) {
        n += 1;
    }
    n
}

/// What every scenario works with: the options, the bench database, the running intake.
struct Bench<'a> {
    opts: &'a Options,
    pool: PgPool,
    intake: Client,
    /// The intake process, whose CPU the many scenario counts.
    intake_pid: Option<u32>,
    /// How many disjoint sets of bulk users the platform was seeded for.
    sets: i64,
}

impl Bench<'_> {
    fn has(&self, scenario: Scenario) -> bool {
        self.opts.scenarios.contains(&scenario)
    }

    /// Users of bulk set `k`, interleaved with the other sets so that every set spreads over
    /// the whole user range.
    fn bulk_set(&self, k: i64) -> Vec<String> {
        (0..self.opts.bulk_users)
            .map(|j| format!("u-b-{}", 5 + j * self.sets + k))
            .collect()
    }
}

async fn run_scenarios(opts: &Options) -> anyhow::Result<Figures> {
    let pool = store::connect_and_migrate(&opts.database_url, 8, Duration::from_secs(600))
        .await
        .context("preparing the bench database")?;
    if opts.profile {
        profile::log_every_statement(&pool).await?;
    }
    let mut figures = Figures::default();
    let started = Instant::now();
    prepare::platform(opts, &pool, bulk_sets(opts)).await?;
    figures.set("seed_seconds", started.elapsed().as_secs_f64());

    let intake = Service::spawn(opts, "intake", 0, &[]).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.small_concurrency.max(8))
        .build()?;
    let bench = Bench {
        opts,
        pool,
        intake: Client::with_http(&intake.base_url(), http),
        intake_pid: intake.pid(),
        sets: bulk_sets(opts),
    };
    if bench.has(Scenario::Bulk) {
        scenarios::bulk::run(&bench, &mut figures).await?;
    }
    if bench.has(Scenario::Small) {
        scenarios::small::run(&bench, &mut figures).await?;
    }
    if bench.has(Scenario::Big) {
        scenarios::big::run(&bench, &mut figures).await?;
    }
    if bench.has(Scenario::Replicas) {
        scenarios::replicas::run(&bench, &mut figures).await?;
    }
    if let (true, Some(ceiling)) = (bench.has(Scenario::Ceiling), opts.ceiling) {
        scenarios::ceiling::run(&bench, ceiling, &mut figures).await?;
    }
    if bench.has(Scenario::Child) {
        scenarios::child::run(&bench, &mut figures).await?;
    }
    if bench.has(Scenario::Many) {
        scenarios::many::run(&bench, &mut figures).await?;
    }
    if bench.has(Scenario::Jti) {
        scenarios::jti::run(&bench, &mut figures).await?;
    }
    intake.stop().await;
    bench.pool.close().await;
    Ok(figures)
}

fn step(what: &str) {
    eprintln!("• {what}");
}

fn bar(len: u64, unit: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "  [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, {{elapsed}})"
    )) {
        b.set_style(style.progress_chars("=> "));
    }
    b
}

async fn cleanup(opts: &Options) {
    let topology = Topology::new(&opts.queue_prefix, opts.config.queue.max_deliveries);
    let brokers = erasure::queue::Brokers::from(&opts.config.queue.amqp_url);
    if let Ok((conn, _)) = brokers.connect(0, "bench-cleanup").await {
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
    if !opts.keep
        && let Err(e) = store::drop_database(&opts.database_url).await
    {
        tracing::warn!(error = %e, "could not drop the bench database");
    }
}

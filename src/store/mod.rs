//! The service's own state in PostgreSQL (schema `erasure`): requests, their users, per-bot
//! tasks, the outbox, dead letters and the shared delete pace; plus the reads of the
//! platform's identity model and its API apps. This module is the only writer of `erasure.*`:
//! each arrow of the state diagrams in [`crate::domain`] is one function here, one guarded
//! statement or transaction, and the arrows that settle a request count it in the metrics.

pub mod apps;
pub mod callbacks;
pub mod dead_letters;
pub mod jtis;
pub mod outbox;
pub mod pace;
pub mod planning;
pub mod platform;
pub mod proofs;
pub mod redelivery_runs;
pub mod requests;
pub mod retention;
pub mod sql;
pub mod tasks;

use std::{str::FromStr, time::Duration};

use anyhow::Context;

use crate::config::{DatabaseSettings, DbPooler};
use sqlx::{
    ConnectOptions, Connection, PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to the database, creating it first if it does not exist, and applies migrations.
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> anyhow::Result<PgPool> {
    create_database_if_missing(url).await?;
    let pool = connect(url, max_connections, statement_timeout).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// A pool whose sessions carry the service's statement timeout, with JIT compilation off. The
/// service's statements are short and many; PostgreSQL compiles any whose estimated cost
/// passes `jit_above_cost` (100,000), which a planner's guess reaches on ordinary tables: the
/// users' lookup of a plan group, estimated at 43,000 rows when it finds 12, took 15-45 ms of
/// CPU to compile and 0.2 ms to run, and was the costliest statement per request of the many
/// scenario (1.7 ms of 6.8) once the platform had 14,000 users. Connections are opened
/// lazily, so a process starts while the database is down and recovers when it returns.
/// Behind a pooler in transaction mode ([`sql::use_transaction_pooler`]) the connections send
/// no startup parameter PgBouncer refuses (`extra_float_digits`, `options`): the timeout is
/// then set by each transaction.
pub async fn connect(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("erasure");
    let opts = if sql::pooled() {
        opts.extra_float_digits(None)
    } else {
        opts.options([
            (
                "statement_timeout",
                statement_timeout.as_millis().to_string(),
            ),
            ("jit", "off".to_string()),
        ])
    };
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts))
}

/// A transaction whose commit does not wait for its WAL to reach the disk
/// (`synchronous_commit = off` for this transaction only): a commit costs no fsync, which on
/// this class of disk is 2–5 ms, more than the statement itself.
///
/// Only for writes whose loss in a database crash is harmless because something durable that
/// comes later depends on them and redoes them: a batch of deletes (the task is marked done, or
/// its continuation queued, by a synchronous commit afterwards; that commit flushes the WAL up
/// to itself, so every earlier relaxed commit with it; a crash before it leaves the task
/// unfinished and its delivery unacknowledged, so the batch runs again), or the deletion of
/// published outbox rows (lost, they are published once more: a duplicate consumers absorb).
/// Nothing acknowledged to a caller or to the broker rests on a relaxed commit alone.
pub async fn begin_relaxed(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    sql::begin_relaxed(pool).await
}

/// [`begin_relaxed`] at REPEATABLE READ: every statement of the transaction sees one snapshot.
pub async fn begin_relaxed_snapshot(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    sql::begin_relaxed_snapshot(pool).await
}

/// The service's pool as `erasure serve` (and every command that writes) opens it, with its
/// migrations applied: over ERASURE_MIGRATION_DATABASE_URL when it is set, else over
/// DATABASE_URL, except behind a pooler in transaction mode, where nothing is migrated (sqlx's
/// migrator holds a session-level advisory lock) and [`check_migrated`] stops the process if a
/// migration is missing.
pub async fn open(db: &DatabaseSettings, max_connections: u32) -> anyhow::Result<PgPool> {
    if db.pooler == DbPooler::Transaction {
        sql::use_transaction_pooler(db.statement_timeout);
    }
    match (db.pooler, db.migration_url.as_deref()) {
        (DbPooler::None, None) => {
            connect_and_migrate(&db.url, max_connections, db.statement_timeout).await
        }
        (_, Some(direct)) => {
            migrate_directly(direct, db.statement_timeout).await?;
            connect(&db.url, max_connections, db.statement_timeout).await
        }
        (DbPooler::Transaction, None) => {
            let pool = connect(&db.url, max_connections, db.statement_timeout).await?;
            sql::query("SELECT 1").execute(sql::on(&pool)).await?;
            Ok(pool)
        }
    }
}

/// `erasure migrate`: creates the database if missing and applies the migrations over
/// ERASURE_MIGRATION_DATABASE_URL, else DATABASE_URL unless that names a pooler in
/// transaction mode.
pub async fn migrate_only(db: &DatabaseSettings) -> anyhow::Result<()> {
    match (db.pooler, db.migration_url.as_deref()) {
        (_, Some(direct)) => migrate_directly(direct, db.statement_timeout).await,
        (DbPooler::None, None) => migrate_directly(&db.url, db.statement_timeout).await,
        (DbPooler::Transaction, None) => anyhow::bail!(
            "ERASURE_DB_POOLER=transaction: DATABASE_URL names a pooler in transaction mode, \
             which cannot run migrations (they hold a session-level lock); set \
             ERASURE_MIGRATION_DATABASE_URL to PostgreSQL itself"
        ),
    }
}

/// Migrates over a URL naming PostgreSQL itself, on a pool of its own closed afterwards.
async fn migrate_directly(url: &str, statement_timeout: Duration) -> anyhow::Result<()> {
    create_database_if_missing(url).await?;
    let opts = PgConnectOptions::from_str(url)
        .context("ERASURE_MIGRATION_DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("erasure-migrate")
        .options([(
            "statement_timeout",
            statement_timeout.as_millis().to_string(),
        )]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .context("connecting to PostgreSQL to apply migrations")?;
    let applied = migrate(&pool).await;
    pool.close().await;
    applied
}

/// The versions of the embedded migrations the database has not applied (all of them when it
/// has no `_sqlx_migrations`); read through whatever DATABASE_URL names, a pooler included.
pub async fn pending_migrations(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    let applied: Vec<i64> =
        match sql::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(sql::on(pool))
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e).context("reading the applied migrations"),
        };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}

/// Stops the process, naming the way out, when a migration is missing: behind a pooler in
/// transaction mode `erasure serve` never applies them itself without a direct URL.
pub async fn check_migrated(pool: &PgPool) -> anyhow::Result<()> {
    let pending = pending_migrations(pool).await?;
    if pending.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "the database lacks {} migration(s) (versions {pending:?}), and through a pooler in \
         transaction mode (ERASURE_DB_POOLER=transaction) the service does not migrate: run \
         `erasure migrate` with ERASURE_MIGRATION_DATABASE_URL naming PostgreSQL itself (the \
         migrate Job, deploy/k8s/migrate-job.yaml), or set ERASURE_MIGRATION_DATABASE_URL for \
         `erasure serve` to apply them at start",
        pending.len()
    )
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // Concurrent replicas starting together serialize on sqlx's advisory lock.
    MIGRATOR.run(pool).await.context("applying migrations")?;
    Ok(())
}

/// Creates the database named in `url` if it does not exist, via the server's `postgres`
/// database.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let opts =
        PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let name = opts.get_database().unwrap_or("postgres").to_string();
    if opts.clone().connect().await.is_ok() {
        return Ok(());
    }
    let mut admin: PgConnection = opts.clone().database("postgres").connect().await.context(
        "connecting to PostgreSQL (database `postgres`) to create the service's database",
    )?;
    let exists: bool =
        sql::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sql::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut admin)
            .await
        {
            // Another replica may have won the race.
            if !is_unique_violation(&e) && !e.to_string().contains("already exists") {
                return Err(e).context("creating the database");
            }
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Drops a database (tests and benchmarks clean up after themselves with it).
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let opts = PgConnectOptions::from_str(url)?;
    let name = opts.get_database().unwrap_or_default().to_string();
    let mut admin: PgConnection = opts.database("postgres").connect().await?;
    let statement = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sql::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut admin)
        .await?;
    Ok(())
}

pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// Errors worth retrying: the connection or the server went away, or the database asked us
/// to try again (serialization failure, deadlock, lock or statement timeout, shutdown).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or("");
            matches!(
                code,
                "40001"
                    | "40P01"
                    | "55P03"
                    | "57014"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "53300"
                    | "53400"
            ) || code.starts_with("08")
        }
        _ => false,
    }
}

/// A short, non-PII description of a database error: its SQLSTATE or kind.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            format!("database error {}", d.code().as_deref().unwrap_or("?"))
        }
        sqlx::Error::Io(_) => "database connection lost".into(),
        sqlx::Error::PoolTimedOut => "database unreachable (pool timed out)".into(),
        sqlx::Error::RowNotFound => "row not found".into(),
        other => format!("database error ({})", kind_name(other)),
    }
}

fn kind_name(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "configuration",
        sqlx::Error::Tls(_) => "tls",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
        sqlx::Error::PoolClosed => "pool closed",
        _ => "other",
    }
}

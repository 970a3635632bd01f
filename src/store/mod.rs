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
pub mod tasks;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
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

/// A pool whose sessions carry the service's statement timeout. Connections are opened
/// lazily, so a process starts while the database is down and recovers when it returns.
pub async fn connect(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("erasure")
        .options([(
            "statement_timeout",
            statement_timeout.as_millis().to_string(),
        )]);
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
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await
}

/// [`begin_relaxed`] at REPEATABLE READ: every statement of the transaction sees one snapshot.
pub async fn begin_relaxed_snapshot(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL synchronous_commit = off")
        .await
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
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
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
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
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

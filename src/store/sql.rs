//! The one door to PostgreSQL: every statement the service runs is built here ([`query`],
//! [`query_as`], [`query_scalar`], [`raw_sql`]), every transaction opened here ([`begin`] and
//! its kin), and every statement run on a pool rather than in a transaction goes through
//! [`on`]. A test (`tests/it/pgbouncer.rs`) scans `src/` and fails when a statement bypasses
//! this module.
//!
//! Why: behind a pooler in transaction mode (PgBouncer `pool_mode = transaction`,
//! `ERASURE_DB_POOLER=transaction`) a client connection gets a server connection for one
//! transaction only. Named prepared statements (sqlx's default) then reach servers that do not
//! have them, or that have another client's statement of the same name; an unnamed statement
//! outside a transaction is two round trips (Parse+Describe, then Bind+Execute) that may land on
//! two servers; session settings do not follow the client. So in that mode, and only then:
//! - every statement is unnamed (`persistent(false)`);
//! - a statement run on a pool runs in a transaction of its own ([`on`]);
//! - every transaction sets its `statement_timeout` (and turns JIT off, see
//!   [`super::connect`]) with `SET LOCAL` when it opens.
//!
//! Directly on PostgreSQL (the default) nothing changes: statements are named and cached per
//! connection, [`on`] hands the statement to the pool, transactions open as before. The mode
//! is the process's, chosen once at start ([`use_transaction_pooler`]), before any pool exists.

use std::{sync::OnceLock, time::Duration};

use futures_util::{FutureExt, StreamExt, TryStreamExt, future::BoxFuture, stream::BoxStream};
use sqlx::{
    Database, Either, Execute, Executor, PgPool, Postgres, SqlSafeStr, SqlStr, Transaction,
    error::BoxDynError,
    postgres::{PgArguments, PgQueryResult, PgRow, PgStatement, PgTypeInfo},
    query::{Query, QueryAs, QueryScalar},
};

/// The `BEGIN` statements of a process behind a pooler in transaction mode, each with the
/// statement timeout of the process.
struct Pooled {
    begin: String,
    relaxed: String,
    relaxed_snapshot: String,
    snapshot: String,
}

static POOLED: OnceLock<Pooled> = OnceLock::new();

/// Puts the process in pooler mode (see the module): from now on every statement is unnamed,
/// every statement on a pool runs in a transaction of its own, every transaction sets
/// `statement_timeout`, and [`super::connect`] sends no startup parameter a pooler refuses.
/// Once set, for the life of the process (the first timeout wins).
pub fn use_transaction_pooler(statement_timeout: Duration) {
    POOLED.get_or_init(|| {
        // A whole number of milliseconds from the validated setting, not text from outside:
        // SET takes no bound parameter, and a `set_config($1)` would cost a round trip per
        // transaction.
        let timeout = format!(
            "SET LOCAL statement_timeout = {}; SET LOCAL jit = off",
            statement_timeout.as_millis()
        );
        let relaxed = "SET LOCAL synchronous_commit = off";
        Pooled {
            begin: format!("BEGIN; {timeout}"),
            relaxed: format!("BEGIN; {relaxed}; {timeout}"),
            relaxed_snapshot: format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; {relaxed}; {timeout}"
            ),
            snapshot: format!("BEGIN ISOLATION LEVEL REPEATABLE READ; {timeout}"),
        }
    });
}

/// Whether the process runs behind a pooler in transaction mode.
#[inline]
pub fn pooled() -> bool {
    POOLED.get().is_some()
}

/// `sqlx::query`, named and cached per connection directly on PostgreSQL, unnamed behind a
/// pooler.
#[inline]
pub fn query<'q>(sql: impl SqlSafeStr) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql).persistent(!pooled())
}

/// `sqlx::query_as`, as [`query`].
#[inline]
pub fn query_as<'q, O>(sql: impl SqlSafeStr) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(!pooled())
}

/// `sqlx::query_scalar`, as [`query`].
#[inline]
pub fn query_scalar<'q, O>(sql: impl SqlSafeStr) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> sqlx::FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(!pooled())
}

/// `sqlx::raw_sql`: the simple protocol, one round trip, never a prepared statement; inside a
/// transaction behind a pooler like every other statement.
#[inline]
pub fn raw_sql(sql: impl SqlSafeStr) -> sqlx::RawSql {
    sqlx::raw_sql(sql)
}

/// A transaction (behind a pooler, with the process's statement timeout).
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match POOLED.get() {
        None => pool.begin().await,
        Some(p) => pool.begin_with(p.begin.as_str()).await,
    }
}

/// A transaction at REPEATABLE READ.
pub async fn begin_snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match POOLED.get() {
        None => {
            pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
        }
        Some(p) => pool.begin_with(p.snapshot.as_str()).await,
    }
}

/// A transaction whose commit does not wait for the disk (see [`super::begin_relaxed`]).
pub async fn begin_relaxed(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match POOLED.get() {
        None => {
            pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off")
                .await
        }
        Some(p) => pool.begin_with(p.relaxed.as_str()).await,
    }
}

/// [`begin_relaxed`] at REPEATABLE READ.
pub async fn begin_relaxed_snapshot(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    match POOLED.get() {
        None => {
            pool.begin_with(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL synchronous_commit = off",
            )
            .await
        }
        Some(p) => pool.begin_with(p.relaxed_snapshot.as_str()).await,
    }
}

/// The executor for a statement run on a pool, not in a transaction: `.fetch_all(on(pool))`.
/// Directly on PostgreSQL it is the pool itself; behind a pooler the statement runs, unnamed,
/// in a transaction of its own (its rows are collected before the commit).
pub fn on(pool: &PgPool) -> OnPool<'_> {
    OnPool(pool)
}

/// See [`on`].
#[derive(Debug, Clone, Copy)]
pub struct OnPool<'p>(&'p PgPool);

impl<'p> Executor<'p> for OnPool<'p> {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !pooled() {
            return self.0.fetch_many(query);
        }
        let pool = self.0;
        futures_util::stream::once(async move {
            let mut tx = begin(pool).await?;
            let all: Vec<_> = tx.fetch_many(Unnamed(query)).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures_util::stream::iter(all.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !pooled() {
            return self.0.fetch_optional(query);
        }
        let pool = self.0;
        async move {
            let mut tx = begin(pool).await?;
            let row = tx.fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        }
        .boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        self.0.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.0.describe(sql)
    }
}

/// A statement forced unnamed, whatever it was built with.
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&<Postgres as Database>::Statement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

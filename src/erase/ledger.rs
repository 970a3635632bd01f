//! Exact counts for stores in another database. A batch there cannot count its rows in the
//! service's database in the same transaction, so it writes them to that database's ledger
//! (`erasure.ledger`) in its own transaction, each batch under a fresh id; the entries are then
//! forwarded to the service's database, where each batch id is taken once
//! (`erasure.forwarded_batches`). A crash between the two leaves the entry in the ledger, and
//! [`super::Targets::sync_counts`] forwards it later: counted once, never lost.

use sqlx::{PgPool, Postgres, Transaction};

use crate::store::sql;
pub use crate::store::tasks::LedgerEntry as Entry;
use crate::{
    domain::{BotId, RequestId},
    store::tasks::{self, Counted},
};

/// The ledger's schema in another database, created at start (idempotent; an advisory lock
/// keeps replicas starting together from racing on it).
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(hashtext('erasure.ledger'));
    CREATE SCHEMA IF NOT EXISTS erasure;
    CREATE TABLE IF NOT EXISTS erasure.ledger (
        batch_id   uuid        NOT NULL,
        request_id text        NOT NULL,
        store      text        NOT NULL,
        action     text        NOT NULL,
        bot_id     text        NOT NULL,
        rows       bigint      NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (batch_id, store, bot_id)
    );
    CREATE INDEX IF NOT EXISTS ledger_request_idx ON erasure.ledger (request_id, bot_id);";

/// Creates the ledger in another database if it is missing.
pub async fn ensure(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    sql::raw_sql(SCHEMA).execute(&mut *tx).await?;
    tx.commit().await
}

/// Writes a batch's counts to the ledger, in the batch's transaction; returns them to forward.
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    counted: &[Counted<'_>],
) -> Result<Vec<Entry>, sqlx::Error> {
    let batch_id = uuid::Uuid::new_v4();
    let entries: Vec<Entry> = counted
        .iter()
        .flat_map(|c| {
            c.bots.iter().zip(c.rows).map(|(bot, rows)| Entry {
                batch_id,
                request_id: c.request.clone(),
                store: c.store.to_string(),
                action: c.action.to_string(),
                bot_id: bot.clone(),
                rows: *rows,
            })
        })
        .collect();
    if entries.is_empty() {
        return Ok(entries);
    }
    let requests: Vec<&RequestId> = entries.iter().map(|e| &e.request_id).collect();
    let (stores, actions, bots, rows) = tasks::ledger_columns(&entries);
    sql::query(
        "INSERT INTO erasure.ledger (batch_id, request_id, store, action, bot_id, rows)
         SELECT $1, e.request_id, e.store, e.action, e.bot, e.rows
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
                AS e(request_id, store, action, bot, rows)",
    )
    .bind(batch_id)
    .bind(&requests)
    .bind(&stores)
    .bind(&actions)
    .bind(&bots)
    .bind(&rows)
    .execute(&mut **tx)
    .await?;
    Ok(entries)
}

/// Every ledger entry of `bots` of `request`.
pub async fn entries(
    pool: &PgPool,
    request: &RequestId,
    bots: &[BotId],
) -> Result<Vec<Entry>, sqlx::Error> {
    sql::query_as(
        "SELECT batch_id, request_id, store, action, bot_id, rows FROM erasure.ledger
          WHERE request_id = $1 AND bot_id = ANY($2)",
    )
    .bind(request)
    .bind(bots)
    .fetch_all(sql::on(pool))
    .await
}

/// Adds ledger entries of `database` to the tasks' counts in the service's database, each
/// batch once.
pub async fn forward(main: &PgPool, database: &str, entries: &[Entry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    tasks::count_forwarded(main, database, entries).await
}

//! The transactional outbox: a message is inserted in the same transaction as the state change
//! that needs it, and deleted once the broker has confirmed it.

use super::sql;
use sqlx::{PgPool, Postgres, Transaction};

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct OutboxMessage {
    pub id: i64,
    pub routing_key: String,
    pub message_id: String,
    pub payload: Vec<u8>,
}

/// Inserts several messages of one routing key in one statement (one round trip, not one per
/// message: planning a request inserts one per group of bots).
pub async fn insert_many(
    tx: &mut Transaction<'_, Postgres>,
    routing_key: &str,
    messages: &[(String, Vec<u8>)],
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|(_, p)| p.as_slice()).collect();
    sql::query_as(
        "INSERT INTO erasure.outbox (routing_key, message_id, payload)
         SELECT $1, m.id, m.payload FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS m(id, payload, ord)
          ORDER BY m.ord
         RETURNING id, routing_key, message_id, payload",
    )
    .bind(routing_key)
    .bind(&ids)
    .bind(&payloads)
    .fetch_all(&mut **tx)
    .await
}

/// Deletes published messages. A relaxed commit (see [`super::begin_relaxed`]): lost in a
/// crash, the rows are published again by the relay, a duplicate that consumers absorb.
pub async fn delete(pool: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    let mut tx = super::begin_relaxed(pool).await?;
    sql::query("DELETE FROM erasure.outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Claims messages older than `min_age_ms` (younger ones are still being published by the
/// code that wrote them), locked so that concurrent relays skip each other's.
pub async fn claim_stale(
    tx: &mut Transaction<'_, Postgres>,
    min_age_ms: i64,
    limit: i64,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    sql::query_as(
        "SELECT id, routing_key, message_id, payload FROM erasure.outbox
          WHERE created_at < now() - make_interval(secs => $1::double precision / 1000)
          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(min_age_ms)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

pub async fn delete_in(tx: &mut Transaction<'_, Postgres>, ids: &[i64]) -> Result<(), sqlx::Error> {
    sql::query("DELETE FROM erasure.outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Messages waiting to be published (a metric and an alert: it should stay near zero).
pub async fn backlog(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sql::query_scalar("SELECT count(*) FROM erasure.outbox")
        .fetch_one(sql::on(pool))
        .await
}

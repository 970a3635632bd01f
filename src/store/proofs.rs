//! Proofs of erasure (DESIGN.md section 12): a settled request's verification and the fixed
//! part of its receipt, the arrows of their diagram, one function each.
//!
//! ```text
//!   completed ──claim (due: a lease)──▶ verifying ──record (nothing left)──▶ proved
//!                   ▲                      │ baseline (once: the rows counted so far)
//!                   └──────────────────────┘ lease runs out (the verifier died) or is released
//!   rejected ──────seal (at once)──────────────────────────────────────────▶ proved
//! ```
//!
//! Which states are verified first and which are sealed at once is decided in one place,
//! [`crate::receipt::Proof::of`]. A request is proved once (`erasure.requests.proved_at`, set
//! under the request's row lock), and the retention job redacts it only after that.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::sql;
use crate::{
    catalog::Catalog,
    contract::{self, StoreRows, Verification},
    domain::{AccountId, BotId, PlatformUserId, RequestId, RequestStatus, UserRef, UserStatus},
};

/// Rows per store, as the `jsonb` columns of `erasure.proofs` hold them.
type PerStore = sqlx::types::Json<BTreeMap<String, i64>>;

/// A settled request claimed by one verifier until its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Claim {
    pub request_id: RequestId,
    pub status: RequestStatus,
    pub lease_id: uuid::Uuid,
    /// Claims so far, this one included: above 1, an earlier verifier did not finish.
    pub attempts: i32,
}

/// Which settled states are proved, and how.
#[derive(Debug, Clone, Copy)]
pub struct Due<'a> {
    /// Verified first, this long after they completed.
    pub verified: &'a [RequestStatus],
    pub after: Duration,
    /// Sealed at once.
    pub at_once: &'a [RequestStatus],
}

/// The claim arrow: takes the settled request that is due first and not proved, whose lease
/// (if any) has run out, under a lease of `lease`. Replicas skip each other's candidates.
pub async fn claim(
    pool: &PgPool,
    due: Due<'_>,
    lease: Duration,
) -> Result<Option<Claim>, sqlx::Error> {
    sql::query_as(
        "WITH due AS (
             SELECT r.request_id, r.status FROM erasure.requests r
              WHERE r.proved_at IS NULL AND r.completed_at IS NOT NULL AND r.pii_redacted_at IS NULL
                AND ((r.status = ANY($1) AND r.completed_at <= now() - make_interval(secs => $2))
                     OR r.status = ANY($3))
                AND NOT EXISTS (SELECT 1 FROM erasure.proofs p
                                 WHERE p.request_id = r.request_id AND p.leased_until > now())
              ORDER BY r.completed_at
              LIMIT 1
              FOR UPDATE OF r SKIP LOCKED),
         claimed AS (
             INSERT INTO erasure.proofs AS p (request_id, lease_id, leased_until, attempts)
             SELECT request_id, $4, now() + make_interval(secs => $5), 1 FROM due
             ON CONFLICT (request_id) DO UPDATE
                SET lease_id = excluded.lease_id, leased_until = excluded.leased_until,
                    attempts = p.attempts + 1
              WHERE p.leased_until IS NULL OR p.leased_until <= now()
             RETURNING p.request_id, p.lease_id, p.attempts)
         SELECT c.request_id, d.status, c.lease_id, c.attempts FROM claimed c JOIN due d USING (request_id)",
    )
    .bind(due.verified)
    .bind(due.after.as_secs_f64())
    .bind(due.at_once)
    .bind(uuid::Uuid::new_v4())
    .bind(lease.as_secs_f64())
    .fetch_optional(sql::on(pool))
    .await
}

/// Extends a claim's lease; `false` when another verifier has taken it over.
pub async fn renew(pool: &PgPool, claim: &Claim, lease: Duration) -> Result<bool, sqlx::Error> {
    let renewed = sql::query(
        "UPDATE erasure.proofs SET leased_until = now() + make_interval(secs => $3)
          WHERE request_id = $1 AND lease_id = $2 AND verified_at IS NULL",
    )
    .bind(&claim.request_id)
    .bind(claim.lease_id)
    .bind(lease.as_secs_f64())
    .execute(sql::on(pool))
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Hands a claim back, to be taken again `after` from now (at once on shutdown, later when
/// rows keep arriving).
pub async fn release(pool: &PgPool, claim: &Claim, after: Duration) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE erasure.proofs SET leased_until = now() + make_interval(secs => $3)
          WHERE request_id = $1 AND lease_id = $2",
    )
    .bind(&claim.request_id)
    .bind(claim.lease_id)
    .bind(after.as_secs_f64())
    .execute(sql::on(pool))
    .await?;
    Ok(())
}

/// Whose rows a verification looks for: the request's erase set and the bots of its tasks.
pub async fn target(
    pool: &PgPool,
    id: &RequestId,
) -> Result<(Vec<PlatformUserId>, Vec<BotId>), sqlx::Error> {
    sql::query_as(
        "SELECT r.erase_user_ids,
                ARRAY(SELECT t.bot_id FROM erasure.tasks t WHERE t.request_id = r.request_id ORDER BY t.bot_id)
           FROM erasure.requests r WHERE r.request_id = $1",
    )
    .bind(id)
    .fetch_one(sql::on(pool))
    .await
}

/// The baseline arrow: records the rows counted so far per store, unless an earlier claim
/// did. Taken before the verification erases anything, so what it adds is late.
pub async fn take_baseline(pool: &PgPool, claim: &Claim) -> Result<(), sqlx::Error> {
    sql::query(
        "UPDATE erasure.proofs
            SET baseline = (SELECT COALESCE(jsonb_object_agg(store, rows), '{}')
                              FROM (SELECT store, sum(rows) AS rows FROM erasure.task_rows
                                     WHERE request_id = $1 GROUP BY store) s)
          WHERE request_id = $1 AND lease_id = $2 AND baseline IS NULL",
    )
    .bind(&claim.request_id)
    .bind(claim.lease_id)
    .execute(sql::on(pool))
    .await?;
    Ok(())
}

/// The receipt's fixed part: a random salt, how each entry as given becomes its hash under
/// it, and the digest of the catalog the request was proved under.
pub struct Seal {
    pub salt: String,
    pub hash: fn(&str, &UserRef) -> String,
    pub catalog_digest: String,
}

/// The record arrow (`verifying → proved`): the verification found nothing left; the rows it
/// erased are late (what `erasure.task_rows` gained since the baseline), counted per store of
/// `catalog`. Seals the receipt in the same transaction. `None` when the claim is no longer
/// this verifier's (nothing is written then).
pub async fn record_verified(
    pool: &PgPool,
    claim: &Claim,
    catalog: &Catalog,
    seal: &Seal,
) -> Result<Option<StoreRows>, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    let id = &claim.request_id;
    let baseline: Option<PerStore> = sql::query_scalar(
        "SELECT baseline FROM erasure.proofs
          WHERE request_id = $1 AND lease_id = $2 AND verified_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .bind(claim.lease_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(baseline) = baseline else {
        return Ok(None);
    };
    let now: Vec<(String, i64)> = sql::query_as(
        "SELECT store, sum(rows)::bigint FROM erasure.task_rows WHERE request_id = $1 GROUP BY store",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let late: BTreeMap<String, i64> = now
        .into_iter()
        .map(|(store, n)| {
            let before = baseline.get(&store).copied().unwrap_or(0);
            (store, n - before)
        })
        .collect();
    sql::query(
        "UPDATE erasure.proofs SET verified_at = now(), late_rows = $2, remaining_rows = 0
          WHERE request_id = $1",
    )
    .bind(id)
    .bind(sqlx::types::Json(&late))
    .execute(&mut *tx)
    .await?;
    if !seal_in(&mut tx, id, &[claim.status], seal).await? {
        return Ok(None);
    }
    tx.commit().await?;
    let late = in_catalog_order(catalog, late);
    for (store, n) in late.0.iter().filter(|(_, n)| *n > 0) {
        metrics::counter!("erasure_late_rows_total", "store" => store.clone()).increment(*n as u64);
    }
    Ok(Some(late))
}

/// The seal arrow of a request whose receipt needs no verification (`statuses`): `false` when
/// it is not in one of them, already proved, or redacted.
pub async fn seal(
    pool: &PgPool,
    id: &RequestId,
    statuses: &[RequestStatus],
    seal: &Seal,
) -> Result<bool, sqlx::Error> {
    let mut tx = sql::begin(pool).await?;
    let sealed = seal_in(&mut tx, id, statuses, seal).await?;
    if sealed {
        tx.commit().await?;
    }
    Ok(sealed)
}

/// Hashes the entries and marks the request proved, under its row lock, if it is in one of
/// `statuses`, not proved and not redacted.
async fn seal_in(
    tx: &mut Transaction<'_, Postgres>,
    id: &RequestId,
    statuses: &[RequestStatus],
    seal: &Seal,
) -> Result<bool, sqlx::Error> {
    let open: Option<bool> = sql::query_scalar(
        "SELECT true FROM erasure.requests
          WHERE request_id = $1 AND status = ANY($2) AND proved_at IS NULL AND pii_redacted_at IS NULL
          FOR UPDATE",
    )
    .bind(id)
    .bind(statuses)
    .fetch_optional(&mut **tx)
    .await?;
    if open.is_none() {
        return Ok(false);
    }
    let users: Vec<(UserRef, UserStatus)> = sql::query_as(
        "SELECT user_ref, status FROM erasure.request_users WHERE request_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let subjects: Vec<serde_json::Value> = users
        .iter()
        .map(|(entry, outcome)| serde_json::json!({"hash": (seal.hash)(&seal.salt, entry), "outcome": outcome}))
        .collect();
    sql::query(
        "WITH sealed AS (
             INSERT INTO erasure.proofs AS p (request_id, salt, subjects, catalog_digest)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (request_id) DO UPDATE
                SET salt = excluded.salt, subjects = excluded.subjects,
                    catalog_digest = excluded.catalog_digest)
         UPDATE erasure.requests SET proved_at = now() WHERE request_id = $1",
    )
    .bind(id)
    .bind(&seal.salt)
    .bind(serde_json::Value::Array(subjects))
    .bind(&seal.catalog_digest)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Rows per store in the catalog's order (every store of it, 0 where none), then any store
/// the catalog no longer names.
fn in_catalog_order(catalog: &Catalog, mut rows: BTreeMap<String, i64>) -> StoreRows {
    let mut ordered: Vec<(String, i64)> = catalog
        .stores
        .iter()
        .map(|s| (s.name.clone(), rows.remove(&s.name).unwrap_or(0)))
        .collect();
    ordered.extend(rows);
    StoreRows(ordered)
}

/// The `verification` of a status document: `None` until the request is verified.
pub async fn verification(
    pool: &PgPool,
    catalog: &Catalog,
    id: &RequestId,
) -> Result<Option<Verification>, sqlx::Error> {
    let row: Option<(DateTime<Utc>, PerStore, i64)> = sql::query_as(
        "SELECT verified_at, late_rows, remaining_rows FROM erasure.proofs
              WHERE request_id = $1 AND verified_at IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(sql::on(pool))
    .await?;
    Ok(row.map(|(at, late, remaining)| Verification {
        verified_on: contract::format_time(at),
        late_rows: in_catalog_order(catalog, late.0),
        remaining_rows: remaining,
    }))
}

/// What a receipt states of a request, as recorded.
#[derive(Debug, sqlx::FromRow)]
pub struct ReceiptFacts {
    pub request_id: RequestId,
    pub account_id: AccountId,
    pub status: RequestStatus,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub proved_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
    /// The bots of its tasks, or the bots it named when it has none.
    pub bots: Vec<BotId>,
    pub salt: Option<String>,
    pub subjects: Option<serde_json::Value>,
    pub catalog_digest: Option<String>,
    /// Rows per (store, bot, action).
    #[sqlx(skip)]
    pub rows: Vec<(String, BotId, String, i64)>,
}

/// The facts of `id` if it belongs to `account_id`.
pub async fn receipt_facts(
    pool: &PgPool,
    id: &RequestId,
    account_id: &AccountId,
) -> Result<Option<ReceiptFacts>, sqlx::Error> {
    let facts: Option<ReceiptFacts> = sql::query_as(
        "SELECT r.request_id, r.account_id, r.status, r.created_at, r.completed_at, r.proved_at,
                p.verified_at, p.salt, p.subjects, p.catalog_digest,
                COALESCE(NULLIF(ARRAY(SELECT t.bot_id FROM erasure.tasks t
                                       WHERE t.request_id = r.request_id ORDER BY t.bot_id), '{}'),
                         r.bot_ids) AS bots
           FROM erasure.requests r LEFT JOIN erasure.proofs p USING (request_id)
          WHERE r.request_id = $1 AND r.account_id = $2",
    )
    .bind(id)
    .bind(account_id)
    .fetch_optional(sql::on(pool))
    .await?;
    let Some(mut facts) = facts else {
        return Ok(None);
    };
    facts.rows = sql::query_as(
        "SELECT store, bot_id, action, rows FROM erasure.task_rows
          WHERE request_id = $1 AND rows <> 0 ORDER BY store, bot_id",
    )
    .bind(id)
    .fetch_all(sql::on(pool))
    .await?;
    Ok(Some(facts))
}

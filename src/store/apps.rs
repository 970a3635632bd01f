//! Registered API apps (`platform.api_apps`).

use sqlx::PgPool;

use super::sql;
use crate::domain::AccountId;

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub account_id: AccountId,
    pub scopes: Vec<String>,
    pub algorithm: String,
    pub secret_sealed: Option<Vec<u8>>,
    pub public_key_pem: Option<String>,
    pub enabled: bool,
    /// The app's default callback URL (DESIGN.md section 10).
    pub callback_url: Option<String>,
    /// Whether the app has a webhook secret to sign callbacks with.
    pub has_webhook_secret: bool,
    /// Tokens are single-use (`--enforce-jti`).
    pub enforce_jti: bool,
}

pub async fn find(pool: &PgPool, client_id: &str) -> Result<Option<App>, sqlx::Error> {
    sql::query_as(
        "SELECT client_id, account_id, scopes, algorithm, secret_sealed, public_key_pem, enabled,
                callback_url, webhook_secret_sealed IS NOT NULL AS has_webhook_secret, enforce_jti
           FROM platform.api_apps WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(sql::on(pool))
    .await
}

/// An app about to be registered.
pub struct NewApp<'a> {
    pub client_id: &'a str,
    pub account_id: &'a AccountId,
    pub scopes: &'a [String],
    pub algorithm: &'a str,
    pub secret_sealed: Option<&'a [u8]>,
    pub public_key_pem: Option<&'a str>,
    pub webhook_secret_sealed: Option<&'a [u8]>,
    pub callback_url: Option<&'a str>,
    pub enforce_jti: bool,
}

pub async fn insert(pool: &PgPool, app: &NewApp<'_>) -> Result<(), sqlx::Error> {
    sql::query(
        "INSERT INTO platform.api_apps (client_id, account_id, scopes, algorithm, secret_sealed,
                                        public_key_pem, webhook_secret_sealed, callback_url, enforce_jti)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(app.client_id)
    .bind(app.account_id)
    .bind(app.scopes)
    .bind(app.algorithm)
    .bind(app.secret_sealed)
    .bind(app.public_key_pem)
    .bind(app.webhook_secret_sealed)
    .bind(app.callback_url)
    .bind(app.enforce_jti)
    .execute(sql::on(pool))
    .await?;
    Ok(())
}

/// How long the previous webhook secret keeps signing after a rotation.
pub const WEBHOOK_OVERLAP_HOURS: i32 = 24;

/// Replaces an app's webhook secret; the one it replaces keeps signing for
/// [`WEBHOOK_OVERLAP_HOURS`]. `false` when there is no such app.
pub async fn rotate_webhook_secret(
    pool: &PgPool,
    client_id: &str,
    sealed: &[u8],
) -> Result<bool, sqlx::Error> {
    let n = sql::query(
        "UPDATE platform.api_apps
            SET webhook_previous_sealed = webhook_secret_sealed,
                webhook_previous_until = CASE WHEN webhook_secret_sealed IS NULL THEN NULL
                                              ELSE now() + make_interval(hours => $3) END,
                webhook_secret_sealed = $2
          WHERE client_id = $1",
    )
    .bind(client_id)
    .bind(sealed)
    .bind(WEBHOOK_OVERLAP_HOURS)
    .execute(sql::on(pool))
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The sealed webhook secrets that sign an app's callbacks now: the current one first, then
/// the previous one while its overlap lasts.
pub async fn webhook_secrets(pool: &PgPool, client_id: &str) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    type Sealed = Option<Vec<u8>>;
    let row: Option<(Sealed, Sealed)> = sql::query_as(
        "SELECT webhook_secret_sealed,
                CASE WHEN webhook_previous_until > now() THEN webhook_previous_sealed END
           FROM platform.api_apps WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(sql::on(pool))
    .await?;
    Ok(row
        .map(|(current, previous)| current.into_iter().chain(previous).collect())
        .unwrap_or_default())
}

/// Disables an app: its tokens are refused from then on. `false` when there is no such app.
pub async fn disable(pool: &PgPool, client_id: &str) -> Result<bool, sqlx::Error> {
    let n = sql::query("UPDATE platform.api_apps SET enabled = false WHERE client_id = $1")
        .bind(client_id)
        .execute(sql::on(pool))
        .await?
        .rows_affected();
    Ok(n == 1)
}

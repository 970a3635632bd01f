//! Registered API apps (`platform.api_apps`) and the bots of an account.

use sqlx::PgPool;

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct App {
    pub client_id: String,
    pub account_id: String,
    pub scopes: Vec<String>,
    pub algorithm: String,
    pub secret_sealed: Option<Vec<u8>>,
    pub public_key_pem: Option<String>,
    pub enabled: bool,
}

pub async fn find(pool: &PgPool, client_id: &str) -> Result<Option<App>, sqlx::Error> {
    sqlx::query_as(
        "SELECT client_id, account_id, scopes, algorithm, secret_sealed, public_key_pem, enabled
           FROM platform.api_apps WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(pool)
    .await
}

pub async fn account_exists(pool: &PgPool, account_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM platform.accounts WHERE id = $1)")
        .bind(account_id)
        .fetch_one(pool)
        .await
}

pub async fn insert(
    pool: &PgPool,
    client_id: &str,
    account_id: &str,
    scopes: &[String],
    algorithm: &str,
    secret_sealed: Option<&[u8]>,
    public_key_pem: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO platform.api_apps (client_id, account_id, scopes, algorithm, secret_sealed, public_key_pem)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(client_id)
    .bind(account_id)
    .bind(scopes)
    .bind(algorithm)
    .bind(secret_sealed)
    .bind(public_key_pem)
    .execute(pool)
    .await?;
    Ok(())
}

/// The account each of `bot_ids` belongs to (bots unknown to the platform are absent).
pub async fn bot_accounts<'e, E>(
    exec: E,
    bot_ids: &[String],
) -> Result<Vec<(String, String)>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_as("SELECT id, account_id FROM platform.bots WHERE id = ANY($1)")
        .bind(bot_ids)
        .fetch_all(exec)
        .await
}

/// Every bot of an account.
pub async fn account_bots<'e, E>(exec: E, account_id: &str) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    sqlx::query_scalar("SELECT id FROM platform.bots WHERE account_id = $1 ORDER BY id")
        .bind(account_id)
        .fetch_all(exec)
        .await
}

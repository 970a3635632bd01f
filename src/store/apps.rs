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
}

pub async fn find(pool: &PgPool, client_id: &str) -> Result<Option<App>, sqlx::Error> {
    sql::query_as(
        "SELECT client_id, account_id, scopes, algorithm, secret_sealed, public_key_pem, enabled
           FROM platform.api_apps WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(sql::on(pool))
    .await
}

pub async fn insert(
    pool: &PgPool,
    client_id: &str,
    account_id: &AccountId,
    scopes: &[String],
    algorithm: &str,
    secret_sealed: Option<&[u8]>,
    public_key_pem: Option<&str>,
) -> Result<(), sqlx::Error> {
    sql::query(
        "INSERT INTO platform.api_apps (client_id, account_id, scopes, algorithm, secret_sealed, public_key_pem)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(client_id)
    .bind(account_id)
    .bind(scopes)
    .bind(algorithm)
    .bind(secret_sealed)
    .bind(public_key_pem)
    .execute(sql::on(pool))
    .await?;
    Ok(())
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

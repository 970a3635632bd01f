//! Authentication of API apps: a JWT in `auth: <jwt>` or `Authorization: Bearer <jwt>`,
//! signed by a registered app (HS256 with its client secret, or RS256 with its public key).

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sqlx::PgPool;

use crate::{
    secrets,
    store::{
        self,
        apps::{self, App},
        requests::UsedJti,
    },
};

/// Longest token accepted; real ones are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The scope erasure needs (the admin console's "Delete Users Data").
pub const SCOPE: &str = "delete_users_data";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token: send it in the `auth` header or as `Authorization: Bearer`")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm is not accepted (HS256 or RS256 only)")]
    Algorithm,
    #[error("token has no appId claim")]
    NoAppId,
    #[error("token names an unknown or disabled app")]
    UnknownApp,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the app lacks the scope delete_users_data")]
    Scope,
    #[error("this app's tokens must carry jti, iat and exp")]
    JtiRequired,
    #[error("this token was already used")]
    Replayed,
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "appId")]
    app_id: Option<String>,
}

/// Extracts the raw token from the request headers.
pub fn token_from_headers(headers: &HeaderMap) -> Result<&str, AuthError> {
    let raw = if let Some(v) = headers.get("auth") {
        v.to_str().map_err(|_| AuthError::Malformed)?.trim()
    } else if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Malformed)?.trim();
        let (scheme, rest) = v.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        rest.trim()
    } else {
        return Err(AuthError::Missing);
    };
    if raw.is_empty() {
        return Err(AuthError::Missing);
    }
    if raw.len() > MAX_TOKEN_BYTES || raw.split('.').count() != 3 {
        return Err(AuthError::Malformed);
    }
    Ok(raw)
}

/// Verifies the token and returns its app, which holds the scope; a single-use token's id is
/// recorded (refused when used before).
pub async fn authenticate(pool: &PgPool, secret_key: &[u8], token: &str) -> Result<App, AuthError> {
    let (app, jti) = verify(pool, secret_key, token).await?;
    if let Some(jti) = jti {
        use_once(pool, &app.client_id, &jti).await?;
    }
    Ok(app)
}

/// Verifies the token and returns its app, which holds the scope, and for an app with
/// single-use tokens the token's id, which the caller must record ([`use_once`], or in the
/// erase call's own statement).
pub async fn verify(
    pool: &PgPool,
    secret_key: &[u8],
    token: &str,
) -> Result<(App, Option<UsedJti>), AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Algorithm)?;
    if !matches!(header.alg, Algorithm::HS256 | Algorithm::RS256) {
        return Err(AuthError::Algorithm);
    }
    // The app id is read before the signature is checked only to find the key to check it with.
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode(token)
        .map_err(|_| AuthError::Malformed)?
        .claims;
    let app_id = claims
        .app_id
        .filter(|a| !a.is_empty() && a.len() <= 256)
        .ok_or(AuthError::NoAppId)?;
    let app = apps::find(pool, &app_id)
        .await
        .map_err(|e| AuthError::Unavailable(store::describe(&e)))?
        .filter(|a| a.enabled)
        .ok_or(AuthError::UnknownApp)?;
    // The algorithm is the app's, never the token's: an RS256 app's public key can't be used
    // as an HMAC secret (algorithm confusion).
    let (alg, key) = match app.algorithm.as_str() {
        "HS256" => {
            let sealed = app.secret_sealed.as_deref().ok_or(AuthError::UnknownApp)?;
            let secret = secrets::open(secret_key, sealed).ok_or_else(|| {
                AuthError::Unavailable("app secret cannot be opened with ERASURE_SECRET_KEY".into())
            })?;
            (
                Algorithm::HS256,
                DecodingKey::from_secret(&secret).map_err(|_| AuthError::UnknownApp)?,
            )
        }
        "RS256" => {
            let pem = app.public_key_pem.as_deref().ok_or(AuthError::UnknownApp)?;
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| AuthError::UnknownApp)?,
            )
        }
        _ => return Err(AuthError::Algorithm),
    };
    if header.alg != alg {
        return Err(AuthError::Algorithm);
    }
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.leeway = 30;
    let verified =
        jsonwebtoken::decode::<SingleUse>(token, &key, &validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Signature,
                _ => AuthError::Malformed,
            }
        })?;
    if !app.scopes.iter().any(|s| s == SCOPE) {
        return Err(AuthError::Scope);
    }
    let jti = if app.enforce_jti {
        Some(single_use(&verified.claims)?)
    } else {
        None
    };
    Ok((app, jti))
}

/// Longest `jti` of a single-use token, in bytes.
pub const MAX_JTI_BYTES: usize = 128;
/// Longest life (`exp - iat`) of a single-use token, in seconds.
pub const MAX_SINGLE_USE_SECONDS: i64 = 3600;

/// The claims that make a token single-use (DESIGN.md section 10).
#[derive(Deserialize)]
struct SingleUse {
    jti: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
}

/// The id of a single-use token of an app with `--enforce-jti`: refused without a usable
/// `jti`, `iat` and `exp` at most [`MAX_SINGLE_USE_SECONDS`] apart (`JtiRequired`).
fn single_use(claims: &SingleUse) -> Result<UsedJti, AuthError> {
    let jti = match &claims.jti {
        Some(serde_json::Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => j,
        _ => return Err(AuthError::JtiRequired),
    };
    let (Some(iat), Some(exp)) = (
        claims.iat.as_ref().and_then(serde_json::Value::as_i64),
        claims.exp.as_ref().and_then(serde_json::Value::as_i64),
    ) else {
        return Err(AuthError::JtiRequired);
    };
    if exp < iat || exp - iat > MAX_SINGLE_USE_SECONDS {
        return Err(AuthError::JtiRequired);
    }
    let expires_at = chrono::DateTime::from_timestamp(exp, 0).ok_or(AuthError::JtiRequired)?;
    Ok(UsedJti {
        jti: jti.clone(),
        expires_at,
    })
}

/// Records the first use of a single-use token (one indexed insert, shared by every intake
/// replica): `Replayed` when the app used this id before and its `exp` has not passed.
pub async fn use_once(pool: &PgPool, client_id: &str, jti: &UsedJti) -> Result<(), AuthError> {
    match store::jtis::use_once(pool, client_id, &jti.jti, jti.expires_at).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(AuthError::Replayed),
        Err(e) => Err(AuthError::Unavailable(store::describe(&e))),
    }
}

/// Mints a token for an app (the `erasure token` command and tests).
pub fn mint_hs256(
    client_id: &str,
    secret: &str,
    ttl_seconds: Option<i64>,
) -> anyhow::Result<String> {
    let mut claims = serde_json::json!({"appId": client_id, "sub": client_id, "iat": chrono::Utc::now().timestamp()});
    if let Some(ttl) = ttl_seconds {
        claims["exp"] = (chrono::Utc::now().timestamp() + ttl).into();
    }
    sign_hs256(&claims, secret)
}

/// Mints a single-use token: a fresh `jti`, `iat` now and `exp` after `ttl_seconds` (for apps
/// with `--enforce-jti`; `erasure token --jti`).
pub fn mint_single_use(client_id: &str, secret: &str, ttl_seconds: i64) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({"appId": client_id, "sub": client_id, "iat": now,
                                    "exp": now + ttl_seconds, "jti": uuid::Uuid::new_v4().to_string()});
    sign_hs256(&claims, secret)
}

/// Signs any claims with HS256 and the app's secret.
pub fn sign_hs256(claims: &serde_json::Value, secret: &str) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?,
    )?)
}

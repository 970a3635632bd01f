//! What the intake's handlers extract from a call's headers: the caller's app (authentication
//! and the per-app rate limit) and the `Idempotency-Key`.

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{IntakeState, auth, error::IntakeError};
use crate::store::{apps::App, requests::UsedJti};

/// The app whose token signed the call, within its rate limit.
pub struct Authenticated(pub App);

impl FromRequestParts<IntakeState> for Authenticated {
    type Rejection = IntakeError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &IntakeState,
    ) -> Result<Self, IntakeError> {
        let token = auth::token_from_headers(&parts.headers)?;
        let app =
            auth::authenticate(&state.pool, &state.config.keys.secret_key.bytes, token).await?;
        within_rate(state, &app)?;
        Ok(Self(app))
    }
}

/// Refuses the call once its app is over its rate limit.
fn within_rate(state: &IntakeState, app: &App) -> Result<(), IntakeError> {
    state
        .rate
        .check(&app.client_id)
        .map_err(|retry_after| IntakeError::RateLimited { retry_after })
}

/// The app whose token signed an erase call, within its rate limit, and the id of its
/// single-use token, which the erase records in its own statement (no further round trip).
pub struct AuthenticatedOnce(pub App, pub Option<UsedJti>);

impl FromRequestParts<IntakeState> for AuthenticatedOnce {
    type Rejection = IntakeError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &IntakeState,
    ) -> Result<Self, IntakeError> {
        let token = auth::token_from_headers(&parts.headers)?;
        let (app, jti) =
            auth::verify(&state.pool, &state.config.keys.secret_key.bytes, token).await?;
        within_rate(state, &app)?;
        Ok(Self(app, jti))
    }
}

/// The `Idempotency-Key` header when sent: 1 to 256 visible ASCII characters.
pub struct IdempotencyKey(pub Option<String>);

/// Longest key accepted.
const MAX_KEY_BYTES: usize = 256;

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = IntakeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, IntakeError> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(Self(None));
        };
        match value.to_str() {
            Ok(k)
                if (1..=MAX_KEY_BYTES).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(Self(Some(k.to_string())))
            }
            _ => Err(IntakeError::InvalidIdempotencyKey),
        }
    }
}

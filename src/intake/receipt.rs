//! `GET …/{requestId}/receipt`: a settled request's signed receipt, for the caller's account
//! only (another account's is a 404); `GET /.well-known/jwks.json`: the keys that verify
//! receipts, for anyone.

use axum::{
    Json,
    extract::{Path, State},
    http::header,
    response::{IntoResponse, Response},
};

use super::{
    IntakeState,
    error::{IntakeError, Stage},
    extract::Authenticated,
};
use crate::{
    contract::RequestId,
    receipt::{self, Claims, Proof},
    store::{self, proofs},
};

/// The media type of a compact JWS (RFC 7515).
pub const JOSE: &str = "application/jose";

pub(super) async fn receipt(
    State(state): State<IntakeState>,
    Path(request_id): Path<String>,
    Authenticated(app): Authenticated,
) -> Result<Response, IntakeError> {
    let keys = state
        .receipts
        .as_deref()
        .ok_or(IntakeError::NoSuchEndpoint)?;
    let id = RequestId::parse(&request_id).ok_or(IntakeError::NoSuchRequest)?;
    let unavailable = |e: sqlx::Error| IntakeError::Unavailable {
        stage: Stage::Receipt,
        cause: store::describe(&e),
    };
    let read = || proofs::receipt_facts(&state.pool, &id, &app.account_id);
    let mut facts = read()
        .await
        .map_err(unavailable)?
        .ok_or(IntakeError::NoSuchRequest)?;
    let proof = Proof::of(facts.status);
    if proof == Proof::AtOnce && facts.proved_at.is_none() {
        // The verification job seals these within a sweep; the caller need not wait for it.
        let seal = receipt::seal(&state.catalog.digest);
        proofs::seal(&state.pool, &id, &Proof::AtOnce.statuses(), &seal)
            .await
            .map_err(unavailable)?;
        facts = read()
            .await
            .map_err(unavailable)?
            .ok_or(IntakeError::NoSuchRequest)?;
    }
    let claims = Claims::of(&state.config.proof.receipt_issuer, &facts)
        .filter(|_| proof != Proof::Unsettled)
        .ok_or(IntakeError::NotVerified)?;
    let jws = keys.sign(&claims).map_err(|e| IntakeError::Unavailable {
        stage: Stage::Receipt,
        cause: e.to_string(),
    })?;
    Ok(([(header::CONTENT_TYPE, JOSE)], jws).into_response())
}

/// The published keys: the current one and earlier ones (anyone may verify a receipt).
pub(super) async fn jwks(
    State(state): State<IntakeState>,
) -> Result<Json<serde_json::Value>, IntakeError> {
    let keys = state
        .receipts
        .as_deref()
        .ok_or(IntakeError::NoSuchEndpoint)?;
    Ok(Json(keys.jwks()))
}

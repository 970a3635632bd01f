//! `GET …/status/{requestId}`: a request's status document, for the caller's account only.

use axum::{
    Json,
    extract::{Path, State},
};

use super::{
    IntakeState,
    error::{IntakeError, Stage},
    extract::Authenticated,
};
use crate::{
    contract::{RequestId, StatusDocument},
    store::{self, requests},
};

/// Another account's request answers 404 exactly like an unknown one.
pub(super) async fn status(
    State(state): State<IntakeState>,
    Path(request_id): Path<String>,
    Authenticated(app): Authenticated,
) -> Result<Json<StatusDocument>, IntakeError> {
    let id = RequestId::parse(&request_id).ok_or(IntakeError::NoSuchRequest)?;
    requests::status_document(&state.pool, &state.catalog, &id, Some(&app.account_id))
        .await
        .map_err(|e| IntakeError::Unavailable {
            stage: Stage::Status,
            cause: store::describe(&e),
        })?
        .map(Json)
        .ok_or(IntakeError::NoSuchRequest)
}

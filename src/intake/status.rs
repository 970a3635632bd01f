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
    store::{
        self,
        requests::{self, Cancel},
    },
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

/// `POST …/{requestId}/cancel`: a request in progress becomes `cancelled` (200 and its status
/// document; cancelling again answers the same); a request settled otherwise is 409
/// `already_settled`; another account's is 404 like an unknown one.
pub(super) async fn cancel(
    State(state): State<IntakeState>,
    Path(request_id): Path<String>,
    Authenticated(app): Authenticated,
) -> Result<Json<StatusDocument>, IntakeError> {
    let id = RequestId::parse(&request_id).ok_or(IntakeError::NoSuchRequest)?;
    let unavailable = |e: sqlx::Error| IntakeError::Unavailable {
        stage: Stage::Status,
        cause: store::describe(&e),
    };
    match requests::cancel(&state.pool, &id, Some(&app.account_id))
        .await
        .map_err(unavailable)?
    {
        Cancel::Unknown => return Err(IntakeError::NoSuchRequest),
        Cancel::AlreadySettled(_) => return Err(IntakeError::AlreadySettled),
        Cancel::Cancelled(_) => tracing::info!(request_id = %id, "request cancelled"),
        Cancel::AlreadyCancelled => {}
    }
    requests::status_document(&state.pool, &state.catalog, &id, Some(&app.account_id))
        .await
        .map_err(unavailable)?
        .map(Json)
        .ok_or(IntakeError::NoSuchRequest)
}

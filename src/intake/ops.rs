//! The operations endpoints: liveness, readiness and metrics.

use std::sync::atomic::Ordering;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{IntakeState, error::IntakeError};
use crate::store::sql;

pub(super) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

pub(super) async fn readyz(State(state): State<IntakeState>) -> Response {
    let db = sql::query_scalar::<i32>("SELECT 1")
        .fetch_one(sql::on(&state.pool))
        .await
        .is_ok();
    let broker = state.publisher.check().await;
    let mut checks = serde_json::json!({"database": db, "broker": broker});
    let mut ready = db && broker;
    for (name, up) in &state.consumers {
        let up = up.load(Ordering::SeqCst);
        checks[format!("consumer_{name}")] = up.into();
        ready &= up;
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The names of the failing checks, so a probe's log line says what is down.
    let failing: Vec<&String> = checks
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, ok)| *ok == &serde_json::Value::Bool(false))
        .map(|(name, _)| name)
        .collect();
    (
        status,
        Json(serde_json::json!({"ready": ready, "checks": checks, "failing": failing})),
    )
        .into_response()
}

pub(super) async fn metrics_text(State(state): State<IntakeState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

pub(super) async fn not_found() -> IntakeError {
    IntakeError::NoSuchEndpoint
}

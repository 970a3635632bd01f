//! The HTTP intake: authenticates, validates, records the request with its outbox message in
//! one transaction, answers 202, and publishes. Also the status API and operations endpoints.

pub mod auth;
pub mod ratelimit;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Json, Router,
    body::Body,
    extract::{ConnectInfo, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tracing::Instrument;

use crate::{
    config::Config,
    contract::{
        self, Accepted, ERASE_ROUTING_KEY, EraseMessage, ErrorBody, FieldError, Limits, RequestId,
    },
    queue::publisher::Publisher,
    secrets,
    store::{
        self, apps,
        apps::App,
        requests::{self, NewRequest, Source},
    },
};
use auth::AuthError;

pub const ERASE_PATH: &str = "/api/public/bot/eraseUsersData";
pub const STATUS_PATH: &str = "/api/public/bot/eraseUsersData/status/{request_id}";

#[derive(Clone)]
pub struct IntakeState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub limits: Limits,
    pub publisher: Arc<Publisher>,
    pub metrics: PrometheusHandle,
    /// Consumers this process runs; readiness requires each to be attached.
    pub consumers: Vec<(&'static str, Arc<AtomicBool>)>,
    pub rate: Arc<ratelimit::RateLimiter>,
}

/// The HTTP routes; `api` false serves only the operations endpoints (worker role).
pub fn router(state: IntakeState, api: bool) -> Router {
    let mut r = Router::new();
    if api {
        r = r
            .route(ERASE_PATH, axum::routing::delete(erase).post(erase))
            .route(STATUS_PATH, get(status));
    }
    r.route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
}

/// A JSON error answer.
pub fn error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    field: Option<String>,
) -> Response {
    errors(status, vec![FieldError::new(code, message, field)])
}

fn errors(status: StatusCode, errors: Vec<FieldError>) -> Response {
    (status, Json(ErrorBody { errors })).into_response()
}

fn refused(reason: &'static str) {
    metrics::counter!("erasure_intake_requests_total", "outcome" => "refused", "reason" => reason)
        .increment(1);
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AuthError::Scope => (StatusCode::FORBIDDEN, "forbidden"),
            AuthError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
        };
        refused(code);
        if let AuthError::Unavailable(why) = &self {
            tracing::error!(error = %why, "authentication unavailable");
            return error(
                status,
                code,
                "authentication is temporarily unavailable",
                None,
            );
        }
        error(status, code, self.to_string(), None)
    }
}

async fn authenticate(state: &IntakeState, headers: &HeaderMap) -> Result<App, Response> {
    let token = auth::token_from_headers(headers).map_err(IntoResponse::into_response)?;
    let app = auth::authenticate(&state.pool, &state.config.secret_key.bytes, token)
        .await
        .map_err(IntoResponse::into_response)?;
    if let Err(retry_after) = state.rate.check(&app.client_id) {
        refused("rate_limited");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this app; retry later",
            None,
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(retry_after.as_secs().max(1)),
        );
        return Err(r);
    }
    Ok(app)
}

fn unavailable(e: &sqlx::Error) -> Response {
    tracing::error!(error = %store::describe(e), "database unavailable at the intake");
    refused("unavailable");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the request could not be recorded; retry later",
        None,
    )
}

async fn erase(
    State(state): State<IntakeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // The request id is known only once the call is valid; it is recorded then.
    let span = tracing::info_span!("erase", request_id = tracing::field::Empty);
    let response = erase_inner(&state, peer, &headers, body)
        .instrument(span)
        .await;
    metrics::histogram!("erasure_intake_seconds").record(started.elapsed().as_secs_f64());
    response
}

async fn erase_inner(
    state: &IntakeState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let app = match authenticate(state, headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let max = state.config.max_body_bytes;
    let too_large = || {
        refused("too_large");
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body must be at most {max} bytes"),
            None,
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > max)
    {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return too_large();
    };
    let request = match contract::parse_erase_body(&bytes, &state.limits) {
        Ok(r) => r,
        Err(e) => {
            refused("invalid");
            return errors(StatusCode::BAD_REQUEST, e);
        }
    };
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_string())
            }
            _ => {
                refused("invalid");
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 256 visible ASCII characters",
                    Some("Idempotency-Key".into()),
                );
            }
        },
    };
    let digest = secrets::body_digest(&bytes);
    if let Some(key) = &idempotency_key {
        match replay(state, &app, key, &digest).await {
            Ok(Some(r)) => return r,
            Ok(None) => {}
            Err(e) => return unavailable(&e),
        }
    }
    // Every named bot must be one of the app's account's.
    if !request.remove_data_from_all_bots {
        let owners: HashMap<String, String> =
            match apps::bot_accounts(&state.pool, &request.bot_ids).await {
                Ok(v) => v.into_iter().collect(),
                Err(e) => return unavailable(&e),
            };
        let mut unknown = Vec::new();
        let mut foreign = Vec::new();
        for (i, bot) in request.bot_ids.iter().enumerate() {
            match owners.get(bot) {
                None => unknown.push(FieldError::new(
                    "unknown_bot",
                    format!("bot {bot} does not exist"),
                    Some(format!("botIds[{i}]")),
                )),
                Some(a) if *a != app.account_id => foreign.push(FieldError::new(
                    "forbidden_bot",
                    format!("bot {bot} is not a bot of this app's account"),
                    Some(format!("botIds[{i}]")),
                )),
                Some(_) => {}
            }
        }
        if !foreign.is_empty() {
            refused("forbidden_bot");
            return errors(StatusCode::FORBIDDEN, foreign);
        }
        if !unknown.is_empty() {
            refused("unknown_bot");
            return errors(StatusCode::BAD_REQUEST, unknown);
        }
    }

    let request_id = RequestId::generate();
    tracing::Span::current().record("request_id", tracing::field::display(&request_id));
    let now = chrono::Utc::now();
    let message = EraseMessage {
        request_id: request_id.clone(),
        account_id: app.account_id.clone(),
        request,
        requested_by: app.client_id.clone(),
        requested_at: Some(now),
    };
    let new = NewRequest {
        request_id: &request_id,
        account_id: &app.account_id,
        requested_by: &app.client_id,
        source: Source::Http,
        client_addr: Some(peer.ip().to_string()),
        request: &message.request,
        idempotency_key: idempotency_key.as_deref(),
        body_digest: Some(digest.clone()),
        requested_at: Some(now),
    };
    let recorded =
        requests::insert_with_outbox(&state.pool, &new, ERASE_ROUTING_KEY, &message.to_json())
            .await;
    let queued = match recorded {
        Ok(Some(m)) => m,
        // A fresh random id cannot collide unless the generator is broken; never answer 202
        // for a request that was not recorded.
        Ok(None) => return unavailable(&sqlx::Error::RowNotFound),
        Err(e) if store::is_unique_violation(&e) && idempotency_key.is_some() => {
            // A concurrent call with the same key won the race: answer as it did.
            let key = idempotency_key.as_deref().unwrap_or_default();
            return match replay(state, &app, key, &digest).await {
                Ok(Some(r)) => r,
                Ok(None) => unavailable(&e),
                Err(e) => unavailable(&e),
            };
        }
        Err(e) => return unavailable(&e),
    };
    // Committed: the request will be processed whatever happens next. Publish now for
    // latency; the relay publishes it later if this fails or the process dies.
    state.publisher.publish_soon(queued);
    metrics::counter!("erasure_intake_requests_total", "outcome" => "accepted", "reason" => "")
        .increment(1);
    tracing::info!(request_id = %request_id, app = %app.client_id, "erase request accepted");
    accepted(&request_id)
}

fn accepted(id: &RequestId) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            request_id: id.to_string(),
            status: "in-progress".into(),
        }),
    )
        .into_response()
}

/// The first answer to a retried call with the same `Idempotency-Key`, or 422 when the key
/// was used with a different body.
async fn replay(
    state: &IntakeState,
    app: &App,
    key: &str,
    digest: &str,
) -> Result<Option<Response>, sqlx::Error> {
    let Some((id, first_digest)) =
        requests::find_by_idempotency_key(&state.pool, &app.client_id, key).await?
    else {
        return Ok(None);
    };
    if first_digest.as_deref() == Some(digest) {
        metrics::counter!("erasure_intake_requests_total", "outcome" => "replayed", "reason" => "")
            .increment(1);
        Ok(Some(accepted(&id)))
    } else {
        refused("idempotency_conflict");
        Ok(Some(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            Some("Idempotency-Key".into()),
        )))
    }
}

async fn status(
    State(state): State<IntakeState>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match authenticate(&state, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such request", None);
    let Some(id) = RequestId::parse(&request_id) else {
        return not_found();
    };
    match requests::status_document(&state.pool, &id, Some(&app.account_id)).await {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(error = %store::describe(&e), "database unavailable for a status query");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "status is temporarily unavailable",
                None,
            )
        }
    }
}

async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<IntakeState>) -> Response {
    let db = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
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

async fn metrics_text(State(state): State<IntakeState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None)
}

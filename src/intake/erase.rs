//! `DELETE`/`POST …/eraseUsersData`: the checks in the contract's order (authentication, body
//! size, body, `Idempotency-Key`, replay, bot ownership), then one transaction records the
//! request with its outbox message, 202 answers the commit, and the message is published.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::Instrument;

use super::{
    IntakeState, auth,
    error::{IntakeError, Outcome, Stage},
    extract::{AuthenticatedOnce, IdempotencyKey},
};
use crate::{
    callback::ssrf,
    contract::{self, ERASE_ROUTING_KEY, EraseMessage, EraseRequest, FieldError, RequestId},
    domain::{AccountId, BotId, RequestStatus},
    secrets,
    store::{
        self,
        apps::App,
        platform,
        requests::{self, NewRequest, Source, UsedJti},
    },
};

/// Times every erase call, refused ones included, and gives its logs the `erase` span, whose
/// request id is filled in once the call is valid.
pub(super) async fn timed(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!("erase", request_id = tracing::field::Empty);
    let response = next.run(request).instrument(span).await;
    metrics::histogram!("erasure_intake_seconds").record(started.elapsed().as_secs_f64());
    response
}

pub(super) async fn erase(
    State(state): State<IntakeState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    // Before the body is read: an unauthenticated call learns nothing of it (401, never 413).
    AuthenticatedOnce(app, jti): AuthenticatedOnce,
    // Checked after the body: a bad body is answered as such whatever the key.
    key: Result<IdempotencyKey, IntakeError>,
    request: Request,
) -> Result<Accepted, IntakeError> {
    let body = read_body(request, state.config.http.max_body_bytes).await?;
    let mut erase =
        contract::parse_erase_body(&body, &state.limits).map_err(IntakeError::Invalid)?;
    check_callback(&state, &app, &mut erase)?;
    let IdempotencyKey(key) = key?;
    let digest = secrets::body_digest(&body);
    if let Some(key) = &key
        && let Some(first) = replay(&state, &app, key, &digest).await?
    {
        // A single-use token is used by the retry too (it records nothing else).
        if let Some(jti) = &jti {
            auth::use_once(&state.pool, &app.client_id, jti).await?;
        }
        return Ok(first);
    }
    check_bots(&state, &app, &erase).await?;
    record(&state, &app, peer, erase, key, digest, jti.as_ref()).await
}

/// The request's callback URL, the body's or else the app's default, checked against the SSRF
/// rules (DESIGN.md section 10); the app must have a webhook secret to sign it with.
fn check_callback(
    state: &IntakeState,
    app: &App,
    erase: &mut EraseRequest,
) -> Result<(), IntakeError> {
    if erase.callback_url.is_none() {
        erase.callback_url = app.callback_url.clone();
    }
    let Some(url) = &erase.callback_url else {
        return Ok(());
    };
    let allow = ssrf::AllowList(state.config.callback.allow_hosts.clone());
    ssrf::check_url(url, &allow).map_err(|e| IntakeError::InvalidCallbackUrl(e.to_string()))?;
    if !app.has_webhook_secret {
        return Err(IntakeError::InvalidCallbackUrl(
            "this app has no webhook secret to sign callbacks with (erasure app rotate-webhook-secret)".into(),
        ));
    }
    Ok(())
}

/// The 202 answer: a request just recorded, or the first answer to a retried call.
pub(super) enum Accepted {
    Recorded(RequestId),
    Replayed(RequestId),
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let (outcome, id) = match self {
            Accepted::Recorded(id) => (Outcome::Accepted, id),
            Accepted::Replayed(id) => (Outcome::Replayed, id),
        };
        outcome.record();
        let body = contract::Accepted {
            request_id: id.clone(),
            status: RequestStatus::InProgress,
        };
        (StatusCode::ACCEPTED, Json(body)).into_response()
    }
}

/// The body, refused with 413 beyond `max` bytes: before reading it when `Content-Length` says so.
async fn read_body(request: Request, max: usize) -> Result<Bytes, IntakeError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(IntakeError::TooLarge { max });
    }
    axum::body::to_bytes(request.into_body(), max)
        .await
        .map_err(|_| IntakeError::TooLarge { max })
}

/// The first answer to a call retried with the same `Idempotency-Key`, or 422 when the key
/// came with another body.
async fn replay(
    state: &IntakeState,
    app: &App,
    key: &str,
    digest: &str,
) -> Result<Option<Accepted>, IntakeError> {
    let first = requests::find_by_idempotency_key(&state.pool, &app.client_id, key)
        .await
        .map_err(|e| IntakeError::not_recorded(&e))?;
    match first {
        None => Ok(None),
        Some((id, first_digest)) if first_digest.as_deref() == Some(digest) => {
            Ok(Some(Accepted::Replayed(id)))
        }
        Some(_) => Err(IntakeError::IdempotencyKeyReused),
    }
}

/// Every named bot must be one of the app's account's: bots of another account are refused
/// first (403), then bots unknown to the platform (400), each list naming them.
async fn check_bots(
    state: &IntakeState,
    app: &App,
    request: &EraseRequest,
) -> Result<(), IntakeError> {
    if request.remove_data_from_all_bots {
        return Ok(());
    }
    let owners: HashMap<BotId, AccountId> =
        platform::bot_accounts(store::sql::on(&state.pool), &request.bot_ids)
            .await
            .map_err(|e| IntakeError::not_recorded(&e))?
            .into_iter()
            .collect();
    let mut unknown = Vec::new();
    let mut foreign = Vec::new();
    for (i, bot) in request.bot_ids.iter().enumerate() {
        let field = || Some(format!("botIds[{i}]"));
        match owners.get(bot) {
            None => unknown.push(FieldError::new(
                "unknown_bot",
                format!("bot {bot} does not exist"),
                field(),
            )),
            Some(account) if *account != app.account_id => foreign.push(FieldError::new(
                "forbidden_bot",
                format!("bot {bot} is not a bot of this app's account"),
                field(),
            )),
            Some(_) => {}
        }
    }
    if !foreign.is_empty() {
        return Err(IntakeError::ForeignBots(foreign));
    }
    if !unknown.is_empty() {
        return Err(IntakeError::UnknownBots(unknown));
    }
    Ok(())
}

/// Inserts the request, its users and its outbox message in one transaction, then queues the
/// message for publishing: 202 only once committed.
async fn record(
    state: &IntakeState,
    app: &App,
    peer: SocketAddr,
    request: EraseRequest,
    key: Option<String>,
    digest: String,
    jti: Option<&UsedJti>,
) -> Result<Accepted, IntakeError> {
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
        idempotency_key: key.as_deref(),
        body_digest: Some(digest.clone()),
        requested_at: Some(now),
    };
    let queued = match requests::insert_with_outbox(
        &state.pool,
        &new,
        ERASE_ROUTING_KEY,
        &message.to_json(),
        jti,
    )
    .await
    {
        Ok(Some(queued)) => queued,
        // Nothing recorded because the single-use token was used before.
        Ok(None) if jti.is_some() => return Err(IntakeError::TokenReplayed),
        // A fresh random id cannot exist already unless the generator is broken; never
        // answer 202 for a request that was not recorded.
        Ok(None) => {
            return Err(IntakeError::Unavailable {
                stage: Stage::Recording,
                cause: "a freshly generated request id already exists".into(),
            });
        }
        Err(e) => return lost_race(state, app, key.as_deref(), &digest, &e).await,
    };
    // Committed: the request will be processed whatever happens next. Publish now for
    // latency; the relay publishes it later if this fails or the process dies.
    state.publisher.publish_soon(queued);
    tracing::info!(request_id = %request_id, app = %app.client_id, "erase request accepted");
    Ok(Accepted::Recorded(request_id))
}

/// A failed insert: when a concurrent call with the same key committed first, the answer is
/// that call's (202, or 422 for another body); otherwise 503.
async fn lost_race(
    state: &IntakeState,
    app: &App,
    key: Option<&str>,
    digest: &str,
    e: &sqlx::Error,
) -> Result<Accepted, IntakeError> {
    match key {
        Some(key) if store::is_unique_violation(e) => replay(state, app, key, digest)
            .await?
            .ok_or_else(|| IntakeError::not_recorded(e)),
        _ => Err(IntakeError::not_recorded(e)),
    }
}

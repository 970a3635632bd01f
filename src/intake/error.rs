//! Every error answer of the intake, one variant each, and the one place that counts erase calls
//! by outcome (`erasure_intake_requests_total`): refusals when an error becomes its answer.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::auth::AuthError;
use crate::{
    contract::{ErrorBody, FieldError},
    store,
};

crate::telemetry::label_values! {
    /// Why a call was refused: the `reason` label of `erasure_intake_requests_total`.
    pub enum Refusal {
        Invalid => "invalid",
        UnknownBot => "unknown_bot",
        Unauthorized => "unauthorized",
        Forbidden => "forbidden",
        ForbiddenBot => "forbidden_bot",
        TooLarge => "too_large",
        IdempotencyConflict => "idempotency_conflict",
        RateLimited => "rate_limited",
        TokenReplayed => "token_replayed",
        Unavailable => "unavailable",
    }
}

/// How an erase call ended: the labels of `erasure_intake_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// An `Idempotency-Key` retry answered with the first call's answer.
    Replayed,
    Refused(Refusal),
}

impl Outcome {
    /// Every outcome (the metric's series, exported at zero from the start).
    pub fn all() -> impl Iterator<Item = Outcome> {
        [Outcome::Accepted, Outcome::Replayed]
            .into_iter()
            .chain(Refusal::ALL.iter().map(|&r| Outcome::Refused(r)))
    }

    pub fn labels(self) -> [(&'static str, &'static str); 2] {
        let (outcome, reason) = match self {
            Outcome::Accepted => ("accepted", ""),
            Outcome::Replayed => ("replayed", ""),
            Outcome::Refused(r) => ("refused", r.label()),
        };
        [("outcome", outcome), ("reason", reason)]
    }

    pub fn record(self) {
        metrics::counter!("erasure_intake_requests_total", &self.labels()).increment(1);
    }
}

/// What the intake could not do for want of its database (or of the key that opens an app's
/// secret): it words the 503 and its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Authentication,
    Recording,
    Status,
    Receipt,
}

impl Stage {
    fn answer(self) -> &'static str {
        match self {
            Stage::Authentication => "authentication is temporarily unavailable",
            Stage::Recording => "the request could not be recorded; retry later",
            Stage::Status => "status is temporarily unavailable",
            Stage::Receipt => "the receipt is temporarily unavailable",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// 400: the body is not a valid erase request; every problem found, by field.
    #[error("the body is not a valid erase request")]
    Invalid(Vec<FieldError>),
    /// 400.
    #[error("Idempotency-Key must be 1 to 256 visible ASCII characters")]
    InvalidIdempotencyKey,
    /// 400: bots the platform does not know, by field.
    #[error("unknown bots")]
    UnknownBots(Vec<FieldError>),
    /// 401: no usable token; the message says why, never quoting the token.
    #[error(transparent)]
    Unauthorized(AuthError),
    /// 403: the app lacks the scope.
    #[error(transparent)]
    Forbidden(AuthError),
    /// 403: bots of another account, by field.
    #[error("bots of another account")]
    ForeignBots(Vec<FieldError>),
    /// 404, also for another account's request.
    #[error("no such request")]
    NoSuchRequest,
    /// 404.
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// 409: a cancel of a request that settled otherwise first.
    #[error("the request has already settled; it can no longer be cancelled")]
    AlreadySettled,
    /// 401: an app with single-use tokens got a token without `jti`, `iat` or `exp`, or
    /// living longer than an hour.
    #[error(
        "this app's tokens must carry jti (at most 128 bytes), iat and exp, with exp - iat at most 3600 s"
    )]
    JtiRequired,
    /// 401: a single-use token used before.
    #[error("this token was already used")]
    TokenReplayed,
    /// 400: the callback URL breaks the rules of DESIGN.md section 10.
    #[error("{0}")]
    InvalidCallbackUrl(String),
    /// 409: no receipt yet: the request is not settled and verified (DESIGN.md section 12).
    #[error("the request has no receipt yet: it is not settled and verified")]
    NotVerified,
    /// 413.
    #[error("body must be at most {max} bytes")]
    TooLarge { max: usize },
    /// 422.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    /// 429, with `Retry-After`.
    #[error("too many requests for this app; retry later")]
    RateLimited { retry_after: Duration },
    /// 503. `cause` is logged, never answered; it names no person (`store::describe`).
    #[error("{}", .stage.answer())]
    Unavailable { stage: Stage, cause: String },
}

impl IntakeError {
    /// 503 for a database error while recording an erase call.
    pub fn not_recorded(e: &sqlx::Error) -> Self {
        Self::Unavailable {
            stage: Stage::Recording,
            cause: store::describe(e),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_)
            | Self::InvalidIdempotencyKey
            | Self::UnknownBots(_)
            | Self::InvalidCallbackUrl(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) | Self::JtiRequired | Self::TokenReplayed => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) | Self::ForeignBots(_) => StatusCode::FORBIDDEN,
            Self::NoSuchRequest | Self::NoSuchEndpoint => StatusCode::NOT_FOUND,
            Self::NotVerified | Self::AlreadySettled => StatusCode::CONFLICT,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` this answer counts under; `None` for answers that are not refusals of a
    /// call (404s, and a status query the database could not serve).
    fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            Self::Invalid(_) | Self::InvalidIdempotencyKey | Self::InvalidCallbackUrl(_) => {
                Refusal::Invalid
            }
            Self::JtiRequired => Refusal::Unauthorized,
            Self::TokenReplayed => Refusal::TokenReplayed,
            Self::UnknownBots(_) => Refusal::UnknownBot,
            Self::Unauthorized(_) => Refusal::Unauthorized,
            Self::Forbidden(_) => Refusal::Forbidden,
            Self::ForeignBots(_) => Refusal::ForbiddenBot,
            Self::TooLarge { .. } => Refusal::TooLarge,
            Self::IdempotencyKeyReused => Refusal::IdempotencyConflict,
            Self::RateLimited { .. } => Refusal::RateLimited,
            Self::Unavailable {
                stage: Stage::Authentication | Stage::Recording,
                ..
            } => Refusal::Unavailable,
            Self::Unavailable { .. }
            | Self::NoSuchRequest
            | Self::NoSuchEndpoint
            | Self::NotVerified
            | Self::AlreadySettled => return None,
        })
    }

    /// The `errors` of the answer's body.
    fn into_errors(self) -> Vec<FieldError> {
        let (code, field) = match self {
            Self::Invalid(errors) | Self::UnknownBots(errors) | Self::ForeignBots(errors) => {
                return errors;
            }
            Self::InvalidIdempotencyKey => ("invalid_idempotency_key", Some("Idempotency-Key")),
            Self::Unauthorized(_) => ("unauthorized", None),
            Self::Forbidden(_) => ("forbidden", None),
            Self::NoSuchRequest | Self::NoSuchEndpoint => ("not_found", None),
            Self::NotVerified => ("not_verified", None),
            Self::AlreadySettled => ("already_settled", None),
            Self::JtiRequired => ("jti_required", None),
            Self::TokenReplayed => ("token_replayed", None),
            Self::InvalidCallbackUrl(_) => ("invalid_callback_url", Some("callbackUrl")),
            Self::TooLarge { .. } => ("too_large", None),
            Self::IdempotencyKeyReused => ("idempotency_key_reused", Some("Idempotency-Key")),
            Self::RateLimited { .. } => ("rate_limited", None),
            Self::Unavailable { .. } => ("unavailable", None),
        };
        vec![FieldError::new(
            code,
            self.to_string(),
            field.map(String::from),
        )]
    }
}

impl From<AuthError> for IntakeError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Scope => Self::Forbidden(e),
            AuthError::JtiRequired => Self::JtiRequired,
            AuthError::Replayed => Self::TokenReplayed,
            AuthError::Unavailable(cause) => Self::Unavailable {
                stage: Stage::Authentication,
                cause,
            },
            e => Self::Unauthorized(e),
        }
    }
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        if let Some(refusal) = self.refusal() {
            Outcome::Refused(refusal).record();
        }
        if let Self::Unavailable { stage, cause } = &self {
            match stage {
                Stage::Authentication => {
                    tracing::error!(error = %cause, "authentication unavailable")
                }
                Stage::Recording => {
                    tracing::error!(error = %cause, "database unavailable at the intake")
                }
                Stage::Status => {
                    tracing::error!(error = %cause, "database unavailable for a status query")
                }
                Stage::Receipt => {
                    tracing::error!(error = %cause, "a receipt could not be made")
                }
            }
        }
        let retry_after = match &self {
            Self::RateLimited { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let status = self.status();
        let body = Json(ErrorBody {
            errors: self.into_errors(),
        });
        let mut response = (status, body).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

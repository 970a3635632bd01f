//! The HTTP intake: authenticates, validates, records the request with its outbox message in
//! one transaction, answers 202, and publishes. Also the status API and operations endpoints.
//! One file a concern: the routes here, `erase`, `status`, `receipt` (and the JWKS), `ops`;
//! `extract` (authentication, `Idempotency-Key`), `error` (every error answer), `auth` (JWT),
//! `ratelimit`.

pub mod auth;
mod erase;
pub mod error;
mod extract;
mod ops;
pub mod ratelimit;
pub mod receipt;
mod status;

use std::sync::{Arc, atomic::AtomicBool};

use axum::{
    Router, middleware,
    routing::{delete, get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::{
    catalog::Catalog, config::Config, contract::Limits, queue::publisher::Publisher, receipt::Keys,
};

pub const ERASE_PATH: &str = "/api/public/bot/eraseUsersData";
pub const STATUS_PATH: &str = "/api/public/bot/eraseUsersData/status/{request_id}";
pub const RECEIPT_PATH: &str = "/api/public/bot/eraseUsersData/{request_id}/receipt";
pub const CANCEL_PATH: &str = "/api/public/bot/eraseUsersData/{request_id}/cancel";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

#[derive(Clone)]
pub struct IntakeState {
    pub pool: PgPool,
    /// The target catalog: its stores are the keys of a status document's counts.
    pub catalog: Arc<Catalog>,
    pub config: Arc<Config>,
    pub limits: Limits,
    pub publisher: Arc<Publisher>,
    pub metrics: PrometheusHandle,
    /// Consumers this process runs; readiness requires each to be attached.
    pub consumers: Vec<(&'static str, Arc<AtomicBool>)>,
    pub rate: Arc<ratelimit::RateLimiter>,
    /// The key that signs receipts and the keys published to verify them (`None` where the
    /// API is not served).
    pub receipts: Option<Arc<Keys>>,
}

/// The HTTP routes; `api` false serves only the operations endpoints (worker role).
pub fn router(state: IntakeState, api: bool) -> Router {
    let mut r = Router::new();
    if api {
        r = r
            .route(
                ERASE_PATH,
                delete(erase::erase)
                    .post(erase::erase)
                    .route_layer(middleware::from_fn(erase::timed)),
            )
            .route(STATUS_PATH, get(status::status))
            .route(RECEIPT_PATH, get(receipt::receipt))
            .route(CANCEL_PATH, post(status::cancel))
            .route(JWKS_PATH, get(receipt::jwks));
    }
    r.route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics_text))
        .fallback(ops::not_found)
        .with_state(state)
}

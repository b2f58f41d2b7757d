//! The keyserver HTTP API.
//!
//! `app(state)` builds the router; tests drive it without a socket, and `influxion
//! serve` binds it on a listener. Errors become RFC 9457 problem documents in exactly
//! one place ([`problem`]).

mod auth;
pub mod problem;
mod routes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use influxion_auth::Validator;
use influxion_core::KeyBackend;
use influxion_store::Store;
use tower_http::trace::TraceLayer;

pub use auth::Authenticated;
pub use problem::ApiError;

/// Largest request body accepted anywhere in the API. Signing requests carry a digest,
/// never the file, so a few KiB is plenty.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Who may do what, until subjects and grants arrive.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// App role (in `roles`) that allows creating and disabling keys and reading the audit log.
    pub admin_role: String,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub backend: Arc<dyn KeyBackend>,
    pub validator: Arc<Validator>,
    pub policy: Arc<AccessPolicy>,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(routes::openapi))
        .route("/v1/me", get(routes::me))
        .route(
            "/v1/keys",
            get(routes::keys::list).post(routes::keys::create),
        )
        .route("/v1/keys/{name}", get(routes::keys::show))
        .route("/v1/keys/{name}/public", get(routes::keys::public))
        .route("/v1/keys/{name}/disable", post(routes::keys::disable))
        .route("/v1/keys/{name}/sign", post(routes::sign::sign))
        .route("/v1/keys/{name}/verify", post(routes::sign::verify))
        .route("/v1/audit", get(routes::audit))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

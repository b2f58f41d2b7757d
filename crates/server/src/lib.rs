//! The keyserver HTTP API.
//!
//! `app(state)` builds the router; tests drive it without a socket, and `influxion
//! serve` binds it on a listener. Errors become RFC 9457 problem documents in exactly
//! one place ([`problem`]).

mod auth;
mod extract;
pub mod metrics;
pub mod problem;
mod rate_limit;
mod refusals;
mod routes;
pub mod service;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use influxion_auth::Validator;
use influxion_core::Backends;
use influxion_store::Store;
use tower_http::trace::TraceLayer;

pub use auth::{Authenticated, Caller};
pub use metrics::Metrics;
pub use problem::ApiError;
pub use rate_limit::{PerMinute, RateLimits, SubjectLimiter};
pub use routes::pki::{ensure_dev_ca, ensure_dev_code_signing, PkiCache};
pub use service::pki::PkiSettings;

/// Largest request body accepted anywhere in the API. Signing requests carry a digest,
/// never the file, so a few KiB is plenty.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// What every handler reads, shared: axum clones the state for each request, and a
/// clone of the fields themselves (a dozen reference counts, written from both cores)
/// showed up in the sign path's profile.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

#[derive(Clone)]
pub struct Services {
    pub store: Store,
    /// The configured key backends; each key is signed by the one its record names.
    pub backends: Backends,
    pub validator: Arc<Validator>,
    pub refusals: Arc<RefusalLimiter>,
    pub pki: Arc<PkiSettings>,
    pub pki_cache: Arc<PkiCache>,
    /// Export readers of the audit log and the waits in progress.
    pub feed: Arc<AuditFeed>,
    /// The Prometheus metric families (served on their own listener, [`metrics::router`]).
    pub metrics: Metrics,
    /// Signatures and certificates per minute, per subject.
    pub rate_limits: Arc<SubjectLimiter>,
}

pub use refusals::{Admitted, RefusalLimiter};
pub use routes::audit::AuditFeed;

pub fn app(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let reads = state.clone();
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/openapi.json", get(routes::openapi))
        .route("/v1/me", get(routes::me))
        .route(
            "/v1/keys",
            get(routes::keys::list).post(routes::keys::create),
        )
        .route("/v1/keys/{name}", get(routes::keys::show))
        .route("/v1/keys/{name}/public", get(routes::keys::public))
        .route("/v1/keys/{name}/disable", post(routes::keys::disable))
        .route("/v1/keys/{name}/import", post(routes::keys::import))
        .route("/v1/keys/{name}/rotate", post(routes::keys::rotate))
        .route(
            "/v1/keys/{name}/certificate",
            get(routes::keys::certificate).put(routes::keys::set_certificate),
        )
        .route("/v1/keys/{name}/certify", post(routes::keys::certify))
        .route("/v1/keys/{name}/sign", post(routes::sign::sign))
        .route("/v1/keys/{name}/verify", post(routes::sign::verify))
        .route(
            "/v1/keys/{name}/policy",
            axum::routing::put(routes::keys::set_policy),
        )
        .route("/v1/audit", get(routes::audit::list))
        .route("/v1/audit/{seq}", get(routes::audit::show))
        .route(
            "/v1/subjects",
            get(routes::subjects::list).post(routes::subjects::create),
        )
        .route(
            "/v1/subjects/{name}",
            get(routes::subjects::show)
                .put(routes::subjects::update)
                .delete(routes::subjects::delete),
        )
        .route(
            "/v1/subjects/{name}/grants",
            post(routes::subjects::add_grant),
        )
        .route(
            "/v1/subjects/{name}/grants/{id}",
            axum::routing::delete(routes::subjects::remove_grant),
        )
        .route("/v1/policy-changes", get(routes::policy_changes::list))
        .route("/v1/policy-changes/{id}", get(routes::policy_changes::show))
        .route(
            "/v1/policy-changes/{id}/approve",
            post(routes::policy_changes::approve),
        )
        .route(
            "/v1/policy-changes/{id}/reject",
            post(routes::policy_changes::reject),
        )
        .route("/v1/signing-requests", get(routes::requests::list))
        .route("/v1/signing-requests/{id}", get(routes::requests::show))
        .route(
            "/v1/signing-requests/{id}/approve",
            post(routes::requests::approve),
        )
        .route(
            "/v1/signing-requests/{id}/reject",
            post(routes::requests::reject),
        )
        .route(
            "/v1/signing-requests/{id}/cancel",
            post(routes::requests::cancel),
        )
        .route(
            "/v1/cas",
            get(routes::pki::cas::list).post(routes::pki::cas::create),
        )
        .route("/v1/cas/{name}", get(routes::pki::cas::show))
        .route(
            "/v1/cas/{name}/certificate",
            axum::routing::put(routes::pki::cas::import_certificate),
        )
        .route("/v1/cas/{name}/chain", get(routes::pki::cas::chain))
        .route("/v1/cas/{name}/crl", post(routes::pki::crl::refresh))
        .route("/v1/cas/{name}/disable", post(routes::pki::cas::disable))
        .route("/v1/cas/{name}/revoke", post(routes::pki::cas::revoke))
        .route("/crl/{file}", get(routes::pki::crl::crl))
        .route("/v1/profiles", get(routes::pki::profiles::list))
        .route(
            "/v1/profiles/{name}",
            get(routes::pki::profiles::show)
                .put(routes::pki::profiles::put)
                .delete(routes::pki::profiles::delete),
        )
        .route(
            "/v1/profiles/{name}/certificates",
            post(routes::pki::issuance::from_csr),
        )
        .route(
            "/v1/profiles/{name}/keys",
            post(routes::pki::issuance::with_new_key),
        )
        .route("/v1/certificates", get(routes::pki::certificates::search))
        .route(
            "/v1/certificates/{serial}",
            get(routes::pki::certificates::show),
        )
        .route(
            "/v1/certificates/{serial}/revoke",
            post(routes::pki::certificates::revoke),
        )
        .route("/.well-known/est/cacerts", get(routes::pki::est::cacerts))
        .route(
            "/.well-known/est/simpleenroll",
            post(routes::pki::est::simpleenroll),
        )
        .route(
            "/.well-known/est/{label}/cacerts",
            get(routes::pki::est::cacerts_label),
        )
        .route(
            "/.well-known/est/{label}/simpleenroll",
            post(routes::pki::est::simpleenroll_label),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(reads, durable_reads))
        .layer(axum::middleware::from_fn(problem::framework_rejections))
        // Outside the problem layer, so it counts the status the client gets.
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A read waits until every commit it may see is durable (`Store::durable`): on SQLite
/// a batch is visible a moment before its fsync is done, and what a read hands out (a
/// signing request's signature, a certificate) must not be taken back by a power cut.
/// Writes are answered only after their own sync already.
async fn durable_reads(
    axum::extract::State(st): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        if let Err(e) = st.store.durable().await {
            return problem::ApiError::from(e).into_response();
        }
    }
    next.run(req).await
}

//! Loopback stand-ins for the Azure identity endpoints Influxion calls, shaped after
//! Microsoft's documented contracts (not after what Influxion's client sends), for
//! tests only:
//!
//! - the Microsoft identity platform token endpoint, `POST {authority}/{tenant}/oauth2/
//!   v2.0/token`, client credentials with a client secret or a federated assertion
//!   (`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`);
//!   answers `{"token_type","expires_in" (number),"ext_expires_in","access_token"}` and
//!   errors `{"error","error_description","error_codes",…}` (AADSTS codes);
//! - the App Service / Functions managed identity endpoint (`IDENTITY_ENDPOINT`,
//!   api-version 2019-08-01, header `X-IDENTITY-HEADER`), answering `expires_on` as a
//!   string of seconds;
//! - the instance metadata service, `GET /metadata/identity/oauth2/token?api-version=
//!   2018-02-01&resource=…[&client_id=…]` with `Metadata: true`, answering
//!   `expires_in`/`expires_on` as strings.
//!
//! Every request is recorded (path, query, selected headers, form) so tests assert what
//! was sent; faults (status codes with an optional `Retry-After`) can be queued per
//! endpoint.

pub mod vault;

pub use vault::{CertificateKey, SecretFormat, VaultRequest, VaultStandIn};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// Which stand-in endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The identity platform's token endpoint.
    Token,
    /// App Service / Functions managed identity.
    AppService,
    /// The instance metadata service (VM / VMSS managed identity).
    Imds,
}

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub endpoint: Endpoint,
    pub path: String,
    pub query: HashMap<String, String>,
    /// Lower-case header names: `metadata`, `x-identity-header`, `content-type`.
    pub headers: HashMap<String, String>,
    pub form: HashMap<String, String>,
}

/// A fault to answer instead of a token.
#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub retry_after: Option<u64>,
}

#[derive(Default)]
struct Inner {
    /// client_id → client secret.
    secrets: HashMap<String, String>,
    /// client_id → the federated assertion it accepts.
    assertions: HashMap<String, String>,
    /// User-assigned identities' client ids known to the managed identity endpoints.
    user_assigned: Vec<String>,
    identity_header: String,
    lifetime_secs: i64,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    seen: Vec<Seen>,
    issued: u64,
}

/// The running stand-in.
#[derive(Clone)]
pub struct IdentityStandIn {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl IdentityStandIn {
    /// Listen on 127.0.0.1 (a free port). Tokens live an hour unless
    /// [`IdentityStandIn::set_lifetime`] says otherwise.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner {
            identity_header: "standin-identity-header".into(),
            lifetime_secs: 3600,
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/msi/token", get(app_service))
            .route("/metadata/identity/oauth2/token", get(imds))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut lock(&self.inner))
    }

    /// `http://127.0.0.1:port`: the authority host and the instance metadata endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The App Service `IDENTITY_ENDPOINT`.
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }

    /// The App Service `IDENTITY_HEADER` it expects.
    pub fn identity_header(&self) -> String {
        self.with(|i| i.identity_header.clone())
    }

    pub fn register_secret(&self, client_id: &str, secret: &str) {
        self.with(|i| i.secrets.insert(client_id.into(), secret.into()));
    }

    pub fn register_assertion(&self, client_id: &str, assertion: &str) {
        self.with(|i| i.assertions.insert(client_id.into(), assertion.into()));
    }

    pub fn register_user_assigned(&self, client_id: &str) {
        self.with(|i| i.user_assigned.push(client_id.into()));
    }

    /// Seconds until the tokens it issues expire.
    pub fn set_lifetime(&self, secs: i64) {
        self.with(|i| i.lifetime_secs = secs);
    }

    /// Answer the next requests to `endpoint` with these faults, in order.
    pub fn fail_next(&self, endpoint: Endpoint, faults: &[Fault]) {
        self.with(|i| {
            i.faults
                .entry(endpoint)
                .or_default()
                .extend(faults.iter().cloned())
        });
    }

    /// Every request so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.with(|i| i.seen.clone())
    }

    /// Requests to `endpoint` so far.
    pub fn count(&self, endpoint: Endpoint) -> usize {
        self.with(|i| i.seen.iter().filter(|s| s.endpoint == endpoint).count())
    }

    /// How many tokens it has issued.
    pub fn issued(&self) -> u64 {
        self.with(|i| i.issued)
    }
}

/// A poisoned lock still holds usable test state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn headers_of(h: &HeaderMap) -> HashMap<String, String> {
    [
        "metadata",
        "x-identity-header",
        "content-type",
        "authorization",
    ]
    .iter()
    .filter_map(|n| {
        h.get(*n)
            .and_then(|v| v.to_str().ok())
            .map(|v| ((*n).to_owned(), v.to_owned()))
    })
    .collect()
}

/// Record the request; a queued fault, if any, is the answer.
fn arrive(inner: &Mutex<Inner>, seen: Seen) -> Result<(), Box<Response>> {
    let mut g = lock(inner);
    let endpoint = seen.endpoint;
    g.seen.push(seen);
    let Some(f) = g.faults.get_mut(&endpoint).and_then(VecDeque::pop_front) else {
        return Ok(());
    };
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match endpoint {
        Endpoint::Token => {
            json!({"error": "temporarily_unavailable", "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop."})
        }
        Endpoint::AppService => {
            json!({"statusCode": f.status, "message": "An unexpected error occured while fetching the AAD Token."})
        }
        Endpoint::Imds => {
            json!({"error": "unknown_error", "error_description": "Throttled or unavailable"})
        }
    };
    let mut r = (status, Json(body)).into_response();
    if let Some(s) = f
        .retry_after
        .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
    {
        r.headers_mut().insert("retry-after", s);
    }
    Err(Box::new(r))
}

fn issue(inner: &Mutex<Inner>, kind: &str) -> (String, i64) {
    let mut g = lock(inner);
    g.issued += 1;
    (
        format!("standin-{kind}-token-{}", g.issued),
        g.lifetime_secs,
    )
}

fn aad_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code],
            "timestamp": "2026-12-02 10:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        })),
    )
        .into_response()
}

async fn token(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = arrive(
        &inner,
        Seen {
            endpoint: Endpoint::Token,
            path: format!("/{tenant}/oauth2/v2.0/token"),
            query: HashMap::new(),
            headers: headers_of(&headers),
            form: form.clone(),
        },
    ) {
        return *r;
    }
    let field = |k: &str| form.get(k).map(String::as_str);
    if field("grant_type") != Some("client_credentials") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    match field("scope") {
        Some(s) if s.ends_with("/.default") => {}
        _ => {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
            )
        }
    }
    let Some(client_id) = field("client_id") else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let (secret, assertion) = {
        let g = lock(&inner);
        (
            g.secrets.get(client_id).cloned(),
            g.assertions.get(client_id).cloned(),
        )
    };
    let ok = match (field("client_secret"), field("client_assertion_type"), field("client_assertion")) {
        (Some(given), None, None) => match secret {
            Some(s) if s == given => true,
            Some(_) => {
                return aad_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                )
            }
            None => false,
        },
        (None, Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), Some(given)) => {
            match assertion {
                Some(a) if a == given => true,
                Some(_) => {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_client",
                        70021,
                        "No matching federated identity record found for presented assertion.",
                    )
                }
                None => false,
            }
        }
        _ => {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        }
    };
    if !ok {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
        );
    }
    let (access_token, lifetime) = issue(&inner, "aad");
    Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    }))
    .into_response()
}

async fn app_service(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = arrive(
        &inner,
        Seen {
            endpoint: Endpoint::AppService,
            path: "/msi/token".into(),
            query: q.clone(),
            headers: headers_of(&headers),
            form: HashMap::new(),
        },
    ) {
        return *r;
    }
    let bad = |message: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"statusCode": 400, "message": message})),
        )
            .into_response()
    };
    let (expected, known) = {
        let g = lock(&inner);
        (g.identity_header.clone(), g.user_assigned.clone())
    };
    if headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return bad("The X-IDENTITY-HEADER is missing or does not match.");
    }
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return bad("The api-version is missing or not supported.");
    }
    let Some(resource) = q.get("resource") else {
        return bad("The resource parameter is required.");
    };
    if let Some(c) = q.get("client_id") {
        if !known.contains(c) {
            return bad("No user-assigned identity with that client_id is assigned to this app.");
        }
    }
    let (access_token, lifetime) = issue(&inner, "appservice");
    Json(json!({
        "access_token": access_token,
        "expires_on": (now() + lifetime).to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": q.get("client_id").cloned().unwrap_or_else(|| "system-assigned-client-id".into()),
    }))
    .into_response()
}

async fn imds(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = arrive(
        &inner,
        Seen {
            endpoint: Endpoint::Imds,
            path: "/metadata/identity/oauth2/token".into(),
            query: q.clone(),
            headers: headers_of(&headers),
            form: HashMap::new(),
        },
    ) {
        return *r;
    }
    let bad = |status: StatusCode, error: &str, description: &str| -> Response {
        (
            status,
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response()
    };
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if headers.contains_key("x-forwarded-for") {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Requests through a proxy are not accepted",
        );
    }
    if !q.contains_key("api-version") {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = q.get("resource") else {
        return bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let known = {
        let g = lock(&inner);
        g.user_assigned.clone()
    };
    if let Some(c) = q.get("client_id") {
        if !known.contains(c) {
            return bad(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            );
        }
    }
    let (access_token, lifetime) = issue(&inner, "imds");
    let n = now();
    Json(json!({
        "access_token": access_token,
        "refresh_token": "",
        "expires_in": lifetime.to_string(),
        "expires_on": (n + lifetime).to_string(),
        "not_before": n.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

//! The keyclient: Influxion's backend-for-frontend.
//!
//! It signs people in with the OpenID Connect Authorization Code flow (PKCE, state and
//! nonce, with the client secret), keeps their ID, access and refresh tokens on the
//! server, gives the browser one opaque `__Host-` session cookie, serves the approval
//! and administration web app, and proxies `/api/*` to the keyserver with the user's
//! access token. The browser never holds a token or the client secret.

mod error;
mod oidc;
mod proxy;
mod session;
mod signin;
mod web;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use url::Url;
use zeroize::Zeroizing;

pub use error::{KcError, PROBLEM_BASE};
pub use oidc::OidcSettings;
pub use session::{supported_database_url, Timeouts};
use session::{SessionData, SessionStore, UserData};

/// The one cookie: `__Host-` pins it to this origin, path `/`, Secure.
pub const COOKIE: &str = "__Host-influxion";
/// The header the web app sets on every state-changing request (CSRF defence, with the
/// Origin check): a cross-site form or fetch cannot set it without a CORS preflight,
/// which the keyclient never grants.
pub const CSRF_HEADER: &str = "x-influxion-csrf";
/// The default callback path, as the Entra ID set-up guide registers it.
pub const DEFAULT_CALLBACK_PATH: &str = "/login/oauth2/code/keyserver-client";

const MAX_CONCURRENT_REQUESTS: usize = 512;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Refresh an access token this long before it expires.
const REFRESH_MARGIN_SECS: i64 = 60;
/// A refresh lease outlives any refresh (the provider call times out after 15 s).
const REFRESH_LEASE_SECS: i64 = 30;

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct KeyclientConfig {
    pub listen: SocketAddr,
    /// The origin browsers use, e.g. `https://keys.example.com`.
    pub public_url: Url,
    /// Base URL of the keyserver API.
    pub keyserver_url: Url,
    pub oidc: OidcSettings,
    /// URL of the session database: `sqlite:` (one host) or `postgres:` /
    /// `postgresql:` (replicas on several hosts sharing sessions).
    pub database_url: String,
    /// AES-256-GCM key sealing sessions at rest (shared by all replicas).
    pub session_key: Zeroizing<[u8; 32]>,
    pub timeouts: Timeouts,
    pub tls: Option<TlsFiles>,
    /// Header, body and idle timeouts and the connection cap.
    pub limits: influxion_edge::Limits,
}

/// The scopes the keyclient requests: OpenID Connect's, a refresh token, and the API's.
pub fn scopes(api_scope: &str) -> Vec<String> {
    ["profile", "email", "offline_access", api_scope]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

impl KeyclientConfig {
    /// The default redirect URI for a public URL.
    pub fn default_redirect_uri(public_url: &Url) -> Result<Url, url::ParseError> {
        public_url.join(DEFAULT_CALLBACK_PATH)
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    origin: String,
    keyserver: Url,
    oidc: oidc::Oidc,
    sessions: SessionStore,
    /// Seals sign-ins in progress into their cookie.
    signins: signin::Sealer,
    http: reqwest::Client,
    /// One lock per session being refreshed, so two requests of one session never
    /// spend its refresh token twice, and a slow provider stalls only that session.
    refreshing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Build the keyclient: discover the provider, open the session store, make the router.
pub async fn build(cfg: &KeyclientConfig) -> Result<Router, KcError> {
    let callback_path = cfg.oidc.redirect_uri.path().to_owned();
    let oidc = oidc::Oidc::discover(OidcSettings {
        metadata_url: cfg.oidc.metadata_url.clone(),
        client_id: cfg.oidc.client_id.clone(),
        client_secret: cfg.oidc.client_secret.clone(),
        redirect_uri: cfg.oidc.redirect_uri.clone(),
        post_logout_redirect_uri: cfg.oidc.post_logout_redirect_uri.clone(),
        scopes: cfg.oidc.scopes.clone(),
    })
    .await?;
    let sessions = SessionStore::open(&cfg.database_url, &cfg.session_key, cfg.timeouts).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| KcError::Internal(e.to_string()))?;
    let mut keyserver = cfg.keyserver_url.clone();
    if !keyserver.path().ends_with('/') {
        keyserver.set_path(&format!("{}/", keyserver.path()));
    }
    let state = AppState(Arc::new(Inner {
        origin: cfg.public_url.origin().ascii_serialization(),
        keyserver,
        oidc,
        sessions: sessions.clone(),
        signins: signin::Sealer::new(&cfg.session_key, cfg.timeouts.login)?,
        http,
        refreshing: std::sync::Mutex::new(HashMap::new()),
    }));
    tokio::spawn(purge_loop(sessions));
    Ok(router(state, &callback_path, cfg.tls.is_some()))
}

fn router(state: AppState, callback_path: &str, tls: bool) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/app.css", get(web::app_css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/session", get(session_info))
        .route("/login", get(login))
        .route(callback_path, get(callback))
        .route("/logout", post(logout))
        .route("/api/{*path}", any(proxy::api))
        .fallback(|| async { KcError::NotFound })
        .method_not_allowed_fallback(|| async { KcError::MethodNotAllowed })
        .with_state(state)
        // Bounded work: at most this many requests at once, none longer than this.
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            web::Tls(tls),
            web::security_headers,
        ))
        .layer(
            // Paths only: query strings of the callback carry the code and state.
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |r: &axum::http::Request<axum::body::Body>| {
                    tracing::info_span!("request", method = %r.method(), path = %r.uri().path())
                },
            ),
        )
        // Outermost: every request has its id before anything logs; the proxy
        // forwards it to the keyserver.
        .layer(axum::middleware::from_fn(influxion_edge::request_id))
}

async fn purge_loop(sessions: SessionStore) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tick.tick().await;
        match sessions.purge().await {
            Ok(n) if n > 0 => tracing::debug!(sessions = n, "purged expired sessions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not purge expired sessions"),
        }
    }
}

/// Serve on `listener` until `shutdown` resolves; TLS with rustls when configured. The
/// connection limits and timeouts are the keyserver's ([`influxion_edge`]).
pub async fn serve(
    app: Router,
    listener: std::net::TcpListener,
    tls: Option<&TlsFiles>,
    limits: influxion_edge::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let tls = match tls {
        Some(files) => Some(influxion_edge::tls_config(&files.cert, &files.key)?),
        None => None,
    };
    influxion_edge::serve(listener, app, limits, tls, shutdown).await
}

// ------------------------------------------------------------------ cookies

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(value: &str) -> Result<HeaderValue, KcError> {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax"
    ))
    .map_err(|e| KcError::Internal(e.to_string()))
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("__Host-influxion=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

// ------------------------------------------------------------------ sessions

impl Inner {
    /// CSRF defence for state-changing requests: the custom header, and an Origin
    /// (and, where the browser sends it, Sec-Fetch-Site) of this very site.
    fn check_csrf(&self, headers: &HeaderMap) -> Result<(), KcError> {
        if headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) != Some(b"1") {
            return Err(KcError::Csrf(
                "state-changing requests need the X-Influxion-CSRF header",
            ));
        }
        match headers.get(header::ORIGIN) {
            Some(o) if o.as_bytes() == self.origin.as_bytes() => {}
            Some(_) => return Err(KcError::Csrf("the request comes from another origin")),
            None => {
                return Err(KcError::Csrf(
                    "state-changing requests need an Origin header",
                ))
            }
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            if site.as_bytes() != b"same-origin" {
                return Err(KcError::Csrf("the request comes from another site"));
            }
        }
        Ok(())
    }

    async fn user(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(String, session::Session)>, KcError> {
        let Some(id) = cookie_value(headers) else {
            return Ok(None);
        };
        match self.sessions.load(&id).await? {
            Some(s) => {
                self.sessions.touch(&s).await?;
                Ok(Some((id, s)))
            }
            None => Ok(None),
        }
    }

    /// The signed-in user's access token, refreshed when it is about to expire.
    async fn access_token(&self, headers: &HeaderMap) -> Result<Zeroizing<String>, KcError> {
        let (id, s) = self.user(headers).await?.ok_or(KcError::NotSignedIn)?;
        match usable(&s) {
            Usable::Yes(t) => return Ok(t),
            Usable::Expired => {
                self.sessions.delete(&id).await?;
                return Err(KcError::NotSignedIn);
            }
            Usable::Refresh => {}
        }
        let lock = self.refresh_lock(&s.id_hash);
        let result = {
            let _guard = lock.lock().await;
            self.refresh(&id).await
        };
        drop(lock);
        self.forget_lock(&s.id_hash);
        result
    }

    async fn refresh(&self, id: &str) -> Result<Zeroizing<String>, KcError> {
        // Another request (or replica) may have refreshed meanwhile; a replica holding
        // the lease is given a few seconds to finish.
        let mut waited = 0;
        let s = loop {
            let s = self.sessions.load(id).await?.ok_or(KcError::NotSignedIn)?;
            match usable(&s) {
                Usable::Yes(t) => return Ok(t),
                Usable::Expired => {
                    self.sessions.delete(id).await?;
                    return Err(KcError::NotSignedIn);
                }
                Usable::Refresh => {}
            }
            if self
                .sessions
                .take_refresh_lease(&s.id_hash, REFRESH_LEASE_SECS)
                .await?
            {
                // Read again under the lease: another replica may have refreshed (and
                // released) between the read above and taking the lease, and its
                // refresh token is spent; using the one read before would be a reuse,
                // which the provider answers by revoking the whole grant.
                let fresh = match self.sessions.load(id).await {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        let _ = self.sessions.release_refresh_lease(&s.id_hash).await;
                        return Err(KcError::NotSignedIn);
                    }
                    Err(e) => {
                        let _ = self.sessions.release_refresh_lease(&s.id_hash).await;
                        return Err(e);
                    }
                };
                match usable(&fresh) {
                    Usable::Refresh => break fresh,
                    other => {
                        if let Err(e) = self.sessions.release_refresh_lease(&s.id_hash).await {
                            tracing::warn!(error = %e, "could not release a refresh lease");
                        }
                        return match other {
                            Usable::Yes(t) => Ok(t),
                            _ => {
                                self.sessions.delete(id).await?;
                                Err(KcError::NotSignedIn)
                            }
                        };
                    }
                }
            }
            waited += 1;
            if waited > 50 {
                return Err(KcError::Provider(
                    "another keyclient is still refreshing this session".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let result = self.refresh_held(id, &s).await;
        // Also after a failure: the next request may try again.
        if let Err(e) = self.sessions.release_refresh_lease(&s.id_hash).await {
            tracing::warn!(error = %e, "could not release a refresh lease");
        }
        result
    }

    /// Refresh with the lease held.
    async fn refresh_held(
        &self,
        id: &str,
        s: &session::Session,
    ) -> Result<Zeroizing<String>, KcError> {
        let SessionData::User(u) = &s.data;
        let rt = u.refresh_token.as_deref().unwrap_or_default();
        match self.oidc.refresh(rt, u.granted_scopes.as_deref()).await {
            Ok(t) => {
                let mut fresh: UserData = u.clone();
                fresh.access_token = t.access_token.clone();
                fresh.access_expires_at = t.access_expires_at;
                fresh.refresh_token = t.refresh_token.clone();
                if t.granted_scopes.is_some() {
                    fresh.granted_scopes = t.granted_scopes.clone();
                }
                self.sessions
                    .update(&s.id_hash, &SessionData::User(fresh))
                    .await?;
                tracing::info!(user = %u.username, "refreshed the access token");
                Ok(Zeroizing::new(t.access_token.clone()))
            }
            Err(oidc::RefreshError::Refused(why)) => {
                tracing::info!(reason = %why, "the provider refused the refresh; the session ends");
                self.sessions.delete(id).await?;
                Err(KcError::NotSignedIn)
            }
            // The provider is unreachable: the session stays; this request fails.
            Err(oidc::RefreshError::Unavailable(why)) => Err(KcError::Provider(why)),
        }
    }

    fn refresh_lock(&self, id_hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(id_hash.to_owned()).or_default().clone()
    }

    fn forget_lock(&self, id_hash: &str) {
        let mut map = self
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(id_hash).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(id_hash);
        }
    }
}

enum Usable {
    Yes(Zeroizing<String>),
    Refresh,
    Expired,
}

/// Whether the session's access token can be used as it is. Without a refresh token it
/// is used until it expires; with one, it is refreshed shortly before.
fn usable(s: &session::Session) -> Usable {
    let SessionData::User(u) = &s.data;
    let left = u.access_expires_at - session::now();
    match (&u.refresh_token, left) {
        (Some(_), l) if l > REFRESH_MARGIN_SECS => {
            Usable::Yes(Zeroizing::new(u.access_token.clone()))
        }
        (Some(_), _) => Usable::Refresh,
        (None, l) if l > 5 => Usable::Yes(Zeroizing::new(u.access_token.clone())),
        (None, _) => Usable::Expired,
    }
}

async fn session_info(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, KcError> {
    let body = match st.user(&headers).await? {
        Some((_, s)) => match &s.data {
            SessionData::User(u) => serde_json::json!({
                "authenticated": true,
                "user": {"name": u.name, "username": u.username},
                "expires_at": s.expires_at,
            }),
        },
        None => serde_json::json!({"authenticated": false}),
    };
    Ok(Json(body).into_response())
}

// ------------------------------------------------------------------ sign-in

#[derive(Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
}

/// Only paths of this site: `/`, then anything but a second `/` or `\` (which browsers
/// read as another host), no control characters or spaces, bounded length.
fn valid_return_to(r: &str) -> bool {
    let b = r.as_bytes();
    r.len() <= 512
        && b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
        && b.iter().all(|c| c.is_ascii_graphic() && *c != b'\\')
}

async fn login(
    State(st): State<AppState>,
    uri: axum::http::Uri,
    q: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, KcError> {
    if uri.query().is_some_and(|q| q.len() > proxy::MAX_QUERY) {
        return Err(KcError::InvalidRequest(format!(
            "the query string is longer than {} bytes",
            proxy::MAX_QUERY
        )));
    }
    let Query(q) = q.map_err(|e| KcError::InvalidRequest(e.body_text()))?;
    let return_to = q.return_to.unwrap_or_else(|| "/".into());
    if !valid_return_to(&return_to) {
        return Err(KcError::InvalidReturnTo);
    }
    // `/login` needs no authentication, so it stores nothing: the sign-in travels
    // sealed in its own cookie. The browser's session, if any, is left alone until a
    // new sign-in completes (a link to /login signs nobody out).
    let (url, login) = st.oidc.start(return_to).await;
    let sealed = st.signins.seal(login)?;
    let mut r = Redirect::to(url.as_str()).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, st.signins.set_cookie(&sealed)?);
    Ok(r)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    iss: Option<String>,
}

async fn callback(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    match finish_login(&st, &headers, q).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(reason = e.slug(), "sign-in refused");
            let mut r = if wants_html {
                web::error_page(e.status(), "Sign-in failed", &e.to_string())
            } else {
                e.into_response()
            };
            // Only the sign-in ends: a failed callback (a forged link, say) leaves the
            // browser's session as it was.
            r.headers_mut()
                .insert(header::SET_COOKIE, signin::clear_cookie());
            r
        }
    }
}

async fn finish_login(
    st: &AppState,
    headers: &HeaderMap,
    q: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, KcError> {
    let Query(q) = q.map_err(|e| KcError::InvalidRequest(e.body_text()))?;
    let signin = cookie_named(headers, signin::LOGIN_COOKIE)
        .and_then(|v| st.signins.open(&v))
        .ok_or(KcError::InvalidState)?;
    let login = &signin.login;
    let state = q.state.as_deref().unwrap_or_default();
    if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
        return Err(KcError::InvalidState);
    }
    // A callback works once.
    if st.sessions.login_completed(&signin.id).await? {
        return Err(KcError::InvalidState);
    }
    if let Some(err) = q.error.as_deref() {
        let desc = q.error_description.as_deref().unwrap_or_default();
        let text: String = format!("{err} {desc}").chars().take(300).collect();
        return Err(KcError::LoginRefused(text.trim().to_owned()));
    }
    // RFC 9207: a response naming another issuer is a mix-up attack.
    if let Some(iss) = q.iss.as_deref() {
        if iss != st.oidc.issuer() {
            return Err(KcError::LoginRefused(
                "the response names another issuer".into(),
            ));
        }
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
        .ok_or_else(|| KcError::InvalidRequest("the callback carries no code".into()))?;
    let user = st.oidc.finish(code, login).await?;
    // Recorded only now, after the provider completed it: unauthenticated callers
    // cannot add rows. Two racing callbacks: the second is refused here.
    if !st
        .sessions
        .complete_login(&signin.id, signin.expires_at)
        .await?
    {
        return Err(KcError::InvalidState);
    }
    tracing::info!(user = %user.username, "signed in");
    // The session this browser had ends now that the new one begins, with a new id:
    // whatever id the browser had before is worthless.
    if let Some(old) = cookie_value(headers) {
        st.sessions.delete(&old).await?;
    }
    let new_id = st.sessions.create(&SessionData::User(user)).await?;
    let mut r = Redirect::to(&login.return_to).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    let h = r.headers_mut();
    h.insert(header::SET_COOKIE, set_cookie(&new_id)?);
    h.append(header::SET_COOKIE, signin::clear_cookie());
    Ok(r)
}

async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, KcError> {
    st.check_csrf(&headers)?;
    if let Some(id) = cookie_value(&headers) {
        st.sessions.delete(&id).await?;
    }
    let url = st
        .oidc
        .logout_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_else(|| "/".into());
    let mut r = Json(serde_json::json!({ "logout_url": url })).into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn return_to_stays_on_this_site() {
        for ok in ["/", "/#/approvals", "/?x=1#/keys"] {
            assert!(valid_return_to(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil",
            "javascript:alert(1)",
            "/ x",
            "/\nx",
            "",
            "evil.example",
        ] {
            assert!(!valid_return_to(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever is accepted as return_to, a browser resolving it against this site
        /// stays on this site.
        #[test]
        fn accepted_return_to_never_leaves_the_site(r in "\\PC{0,40}", tail in "[/\\\\a-z.:@%#?]{0,12}") {
            for candidate in [r.clone(), format!("/{r}"), format!("/{tail}{r}"), format!("{tail}{r}")] {
                if valid_return_to(&candidate) {
                    let base = Url::parse("https://keys.example.com/app/").unwrap();
                    let target = base.join(&candidate).unwrap();
                    proptest::prop_assert_eq!(target.origin(), base.origin(), "{}", candidate);
                }
            }
        }
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; __Host-influxion=abc; c=d"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("influxion=abc"));
        assert_eq!(cookie_value(&h), None);
    }
}

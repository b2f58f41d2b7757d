//! `/api/*` → the keyserver's `/v1/*`, with the session's access token.
//!
//! Forwards only what the web app needs: the routes it calls (an allowlist of method
//! and path), the query, a JSON body, `Accept` and the request id; back come the status,
//! `Content-Type`, `Content-Disposition` and the body, each with a size limit. Signing,
//! key creation, policy changes and server-side key generation are not reachable from
//! the browser at all: those belong to the CLI and pipelines, with their own tokens.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::{AppState, KcError};

/// Largest request body forwarded (JSON bodies of the API are small).
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response body passed back (certificate searches, audit pages).
pub(crate) const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
const MAX_PATH: usize = 512;
/// Longest query string forwarded (and accepted by `/login`).
pub(crate) const MAX_QUERY: usize = 2048;

/// The keyserver routes the web app uses; `*` is one path segment.
const ROUTES: &[(Method, &str)] = &[
    (Method::GET, "v1/me"),
    (Method::GET, "v1/keys"),
    (Method::GET, "v1/keys/*"),
    (Method::GET, "v1/keys/*/public"),
    (Method::GET, "v1/signing-requests"),
    (Method::GET, "v1/signing-requests/*"),
    (Method::POST, "v1/signing-requests/*/approve"),
    (Method::POST, "v1/signing-requests/*/reject"),
    (Method::POST, "v1/signing-requests/*/cancel"),
    (Method::GET, "v1/cas"),
    (Method::GET, "v1/cas/*"),
    (Method::GET, "v1/cas/*/chain"),
    (Method::GET, "v1/profiles"),
    (Method::GET, "v1/profiles/*"),
    (Method::GET, "v1/certificates"),
    (Method::GET, "v1/certificates/*"),
    (Method::POST, "v1/certificates/*/revoke"),
    (Method::GET, "v1/subjects"),
    (Method::GET, "v1/subjects/*"),
    (Method::POST, "v1/subjects/*/grants"),
    (Method::DELETE, "v1/subjects/*/grants/*"),
    (Method::GET, "v1/audit"),
];

fn allowed(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTES.iter().any(|(m, pattern)| {
        m == method && {
            let (mut a, mut b) = (pattern.split('/'), path.split('/'));
            loop {
                match (a.next(), b.next()) {
                    (None, None) => break true,
                    (Some("*"), Some(_)) => {}
                    (Some(x), Some(y)) if x == y => {}
                    _ => break false,
                }
            }
        }
    })
}

/// Keyserver API paths are names, ids and serials: refuse anything that could step out
/// of `/v1/` or be read differently by the keyserver.
fn valid_path(p: &str) -> bool {
    p.len() <= MAX_PATH
        && p.starts_with("v1/")
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
}

pub(crate) async fn api(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KcError> {
    let changes_state = match method {
        Method::GET | Method::HEAD => false,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH => true,
        _ => return Err(KcError::MethodNotAllowed),
    };
    if changes_state {
        st.check_csrf(&headers)?;
    }
    // The path as sent, not percent-decoded: `%2f` or `%6d` is refused by
    // valid_path, never decoded into a path the allowlist would accept.
    let path = uri.path().strip_prefix("/api/").ok_or(KcError::NotFound)?;
    if !valid_path(path) || !allowed(&method, path) {
        return Err(KcError::NotFound);
    }
    let query = query.unwrap_or_default();
    if query.len() > MAX_QUERY {
        return Err(KcError::InvalidRequest(format!(
            "the query string is longer than {MAX_QUERY} bytes"
        )));
    }
    let token = st.access_token(&headers).await?;

    let body = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| KcError::BodyTooLarge(MAX_REQUEST_BYTES))?;
    let mut url = st.keyserver.join(path).map_err(|_| KcError::NotFound)?;
    if !query.is_empty() {
        url.set_query(Some(&query));
    }
    // The web app asks for JSON, or PEM for public keys; nothing else is passed on.
    let accept = match headers.get(header::ACCEPT).map(|v| v.as_bytes()) {
        Some(b"application/x-pem-file") => "application/x-pem-file",
        _ => "application/json",
    };
    let mut req = st
        .http
        .request(method, url)
        .bearer_auth(token.as_str())
        .header(header::ACCEPT, accept);
    // The id the edge gave this request (checked there), so the keyserver logs the same.
    if let Some(id) = headers.get(&influxion_edge::REQUEST_ID) {
        req = req.header(influxion_edge::REQUEST_ID, id.clone());
    }
    if !body.is_empty() {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(KcError::InvalidRequest(
                "request bodies must be JSON (Content-Type: application/json)".into(),
            ));
        }
        req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let upstream = req.send().await.map_err(|e| {
        tracing::warn!(error = %e, "keyserver request failed");
        KcError::Upstream
    })?;

    let status = upstream.status();
    let mut out = Response::builder().status(status);
    for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
        if let Some(v) = upstream.headers().get(&name) {
            out = out.header(name, v.clone());
        }
    }
    if upstream
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(KcError::Upstream);
    }
    let mut buf = Vec::new();
    let mut stream = upstream.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| KcError::Upstream)?;
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(KcError::Upstream);
        }
        buf.extend_from_slice(&chunk);
    }
    out.header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(buf))
        .map_err(|e| KcError::Internal(e.to_string()))
        .map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{allowed, valid_path};
    use axum::http::Method;

    proptest::proptest! {
        /// Any path the proxy accepts resolves under the keyserver's /v1/, on its host.
        #[test]
        fn accepted_paths_stay_under_v1(p in "(v1/)?[a-z0-9./%~_\\\\:@?#-]{0,40}") {
            if valid_path(&p) {
                let base = url::Url::parse("https://ks.example.com/base/").unwrap();
                let u = base.join(&p).unwrap();
                proptest::prop_assert_eq!(u.origin(), base.origin());
                proptest::prop_assert!(u.path().starts_with("/base/v1/"), "{} -> {}", p, u);
                proptest::prop_assert!(u.query().is_none() && u.fragment().is_none());
            }
        }
    }

    #[test]
    fn only_the_routes_of_the_web_app() {
        for (m, p) in [
            (Method::GET, "v1/me"),
            (Method::HEAD, "v1/keys"),
            (Method::GET, "v1/keys/rel-prod/public"),
            (Method::POST, "v1/signing-requests/abc/approve"),
            (Method::DELETE, "v1/subjects/alice/grants/g1"),
        ] {
            assert!(allowed(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::POST, "v1/keys"),
            (Method::POST, "v1/keys/rel-prod/sign"),
            (Method::PUT, "v1/keys/rel-prod/policy"),
            (Method::POST, "v1/keys/rel-prod/disable"),
            (Method::POST, "v1/profiles/device/keys"),
            (Method::POST, "v1/cas"),
            (Method::POST, "v1/subjects"),
            (Method::DELETE, "v1/subjects/alice"),
            (Method::GET, "v1/signing-requests/abc/approve"),
            (Method::GET, "v1/me/x"),
        ] {
            assert!(!allowed(&m, p), "{m} {p}");
        }
    }

    #[test]
    fn paths() {
        for ok in [
            "v1/me",
            "v1/keys/rel-prod/public",
            "v1/signing-requests/0b9c-11/approve",
        ] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "me",
            "v1/../healthz",
            "v1/keys/..",
            "v1//me",
            "v1/keys/a%2f..",
            "v1/keys/a\\b",
            "v2/x",
            "v1/keys/",
            "openapi.json",
        ] {
            assert!(!valid_path(bad), "{bad}");
        }
    }
}

//! `/api/*` → the keyserver's `/v1/*`, with the session's access token.
//!
//! Forwards only what the web app needs: the method, a checked path, the query, a
//! JSON body and `Accept`; back come the status, `Content-Type`,
//! `Content-Disposition` and the body, each with a size limit.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::{AppState, KcError};

/// Largest request body forwarded (JSON bodies of the API are small).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response body passed back (certificate searches, audit pages).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
const MAX_PATH: usize = 512;
const MAX_QUERY: usize = 2048;

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

pub async fn api(
    State(st): State<AppState>,
    method: Method,
    Path(path): Path<String>,
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
    if !valid_path(&path) {
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
    let mut url = st.keyserver.join(&path).map_err(|_| KcError::NotFound)?;
    if !query.is_empty() {
        url.set_query(Some(&query));
    }
    let mut req = st
        .http
        .request(method, url)
        .bearer_auth(token.as_str())
        .header(header::ACCEPT, "application/json");
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
    use super::valid_path;

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

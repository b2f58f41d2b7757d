//! A request id for every request both servers answer: the caller's `X-Request-Id`
//! when it is a plain token (a load balancer or the keyclient's proxy sets one), else
//! a new UUID. It is on the request the handlers see, on the span every log line of
//! the request carries, and on the response, so one id follows a request from the
//! browser through the keyclient to the keyserver's audit-time logs.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// `X-Request-Id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a caller's id may be taken as it is: 1 to 64 of `A-Z a-z 0-9 . _ -`, so it
/// cannot forge log fields or carry anything secret-sized.
pub fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Middleware: see the module's documentation.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // Valid ids and UUIDs are visible ASCII, which every header value may hold.
    let value = HeaderValue::from_str(&id).ok();
    if let Some(v) = &value {
        req.headers_mut().insert(REQUEST_ID, v.clone());
    }
    // The path only: query strings may carry what logs must not (codes, states).
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut resp = next.run(req).instrument(span).await;
    if let Some(v) = value {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_ids_are_taken() {
        for ok in ["abc", "0f8e-1", "lb.req_42", &"a".repeat(64)] {
            assert!(valid_request_id(ok), "{ok}");
        }
        for bad in ["", "a b", "x\"y", "{\"a\":1}", "é", &"a".repeat(65), "a\nb"] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }
}

//! Request bodies with a deadline, and response bodies that mark their request done.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use crate::InFlight;

/// Same problem namespace as both servers; the slug is in docs/problems.md.
pub(crate) const PROBLEM_BASE: &str = "https://influxion.dev/problems/";

/// The error a request body yields once its deadline has passed.
#[derive(Debug)]
pub(crate) struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// Every request body must be complete `limit` after its headers: a total deadline, so a
/// body that trickles in a byte at a time is cut off as surely as one that stalls.
pub(crate) fn with_deadline(app: Router, limit: Duration) -> Router {
    app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| deadline(limit, req, next),
    ))
}

async fn deadline(limit: Duration, req: Request, next: Next) -> Response {
    let fired = Arc::new(AtomicBool::new(false));
    let (parts, inner) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner,
        sleep: Box::pin(tokio::time::sleep(limit)),
        fired: fired.clone(),
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    // Whatever the handler made of the failed read, the client gets the one answer
    // (and the connection, with a body half read, is closed).
    if fired.load(Ordering::Acquire) {
        tracing::info!("request body timed out");
        return request_timeout();
    }
    resp
}

/// 408 as a problem document, closing the connection.
pub(crate) fn request_timeout() -> Response {
    let body = serde_json::json!({
        "type": format!("{PROBLEM_BASE}request-timeout"),
        "title": "Request timeout",
        "status": 408,
        "detail": "the request body did not arrive in time",
    });
    let mut r = (StatusCode::REQUEST_TIMEOUT, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    fired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // The deadline first: a body that never stops arriving must not outrun it.
        if this.sleep.as_mut().poll(cx).is_ready() {
            this.fired.store(true, Ordering::Release);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
pub(crate) struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl Guarded {
    pub(crate) fn new(inner: Body, guard: InFlight) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Request bodies whose rejection is the problem document.
//!
//! Handlers take `Result<JsonBody<T>, ApiError>` and apply `?` where the body matters:
//! a body is judged after the caller's permission and inside the refusal audit, so a
//! malformed body from a caller who may not act is still a 403, and a refused body is
//! audited like any other refusal.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON request body (`Content-Type: application/json`, at most
/// [`crate::MAX_BODY_BYTES`]).
pub(crate) struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::BodyTooLarge(crate::MAX_BODY_BYTES)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        r => ApiError::InvalidRequest(r.body_text()),
    }
}

/// A raw request body (EST), refused with the same problems as [`JsonBody`].
pub(crate) struct RawBody(pub Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(bytes_rejection)
    }
}

fn bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge(crate::MAX_BODY_BYTES)
    } else {
        ApiError::InvalidRequest(r.body_text())
    }
}

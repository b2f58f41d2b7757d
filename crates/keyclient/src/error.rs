//! Errors of the keyclient and their RFC 9457 problem responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Same problem namespace as the keyserver; each slug is in `docs/problems.md`.
pub const PROBLEM_BASE: &str = "https://influxion.dev/problems/";

#[derive(Debug, thiserror::Error)]
pub enum KcError {
    #[error("you are not signed in, or your session has ended; sign in again")]
    NotSignedIn,
    #[error("{0}")]
    Csrf(&'static str),
    #[error(
        "the sign-in response does not belong to a sign-in started in this browser; start again"
    )]
    InvalidState,
    #[error("the identity provider refused the sign-in: {0}")]
    LoginRefused(String),
    #[error("the ID token is not acceptable: {0}")]
    InvalidIdToken(String),
    #[error("return_to must be a path on this site, like /#/approvals")]
    InvalidReturnTo,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    Provider(String),
    #[error("the keyserver could not be reached or answered wrongly")]
    Upstream,
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    /// The session store's database cannot be reached (down, restarting, no connection
    /// in time): answered at once with 503, never after a hang.
    #[error("the session database is unavailable; retry shortly")]
    SessionStoreUnavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl KcError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotSignedIn | Self::InvalidIdToken(_) => StatusCode::UNAUTHORIZED,
            Self::Csrf(_) => StatusCode::FORBIDDEN,
            Self::InvalidState
            | Self::LoginRefused(_)
            | Self::InvalidReturnTo
            | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Provider(_) | Self::Upstream => StatusCode::BAD_GATEWAY,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SessionStoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn slug(&self) -> &'static str {
        match self {
            Self::NotSignedIn => "not-signed-in",
            Self::Csrf(_) => "csrf",
            Self::InvalidState => "invalid-state",
            Self::LoginRefused(_) => "login-refused",
            Self::InvalidIdToken(_) => "invalid-id-token",
            Self::InvalidReturnTo => "invalid-return-to",
            Self::InvalidRequest(_) => "invalid-request",
            Self::BodyTooLarge(_) => "body-too-large",
            Self::Provider(_) => "provider-error",
            Self::Upstream => "keyserver-unavailable",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::SessionStoreUnavailable(_) => "session-store-unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::NotSignedIn => "Not signed in",
            Self::Csrf(_) => "Cross-site request refused",
            Self::InvalidState => "Sign-in response refused",
            Self::LoginRefused(_) => "Sign-in refused",
            Self::InvalidIdToken(_) => "Sign-in refused",
            Self::InvalidReturnTo => "Invalid return address",
            Self::InvalidRequest(_) => "Invalid request",
            Self::BodyTooLarge(_) => "Request too large",
            Self::Provider(_) => "Identity provider error",
            Self::Upstream => "Keyserver unavailable",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::SessionStoreUnavailable(_) => "Temporarily unavailable",
            Self::Internal(_) => "Internal error",
        }
    }
}

impl KcError {
    /// What the browser is told instead of the text of a failure that stays in the log.
    fn public_detail(&self) -> &'static str {
        match self {
            Self::Provider(_) => {
                "the identity provider could not be reached or answered wrongly; see the keyclient log"
            }
            Self::InvalidIdToken(_) => {
                "the ID token from the identity provider is not acceptable; see the keyclient log"
            }
            Self::SessionStoreUnavailable(_) => {
                "the session database cannot be reached; retry shortly"
            }
            _ => "see the keyclient log",
        }
    }
}

impl From<sqlx::Error> for KcError {
    fn from(e: sqlx::Error) -> Self {
        let unreachable = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // SQLSTATE 08xxx: connection exceptions; 57P01-57P03: shutting down,
            // terminated by an administrator, starting up.
            sqlx::Error::Database(d) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        };
        if unreachable {
            Self::SessionStoreUnavailable(format!("session store: {e}"))
        } else {
            Self::Internal(format!("session store: {e}"))
        }
    }
}

impl IntoResponse for KcError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Internal, provider and ID-token failures carry text from the database, the
        // provider or the OIDC library (URLs, addresses, library internals): it goes to
        // the log, and the browser gets a generic detail, as the keyserver does.
        let detail = match &self {
            Self::Internal(detail)
            | Self::Provider(detail)
            | Self::SessionStoreUnavailable(detail) => {
                tracing::error!(slug = self.slug(), %detail, "request failed");
                self.public_detail().to_owned()
            }
            Self::InvalidIdToken(detail) => {
                tracing::warn!(slug = self.slug(), %detail, "ID token refused");
                self.public_detail().to_owned()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": detail,
        });
        let mut r = (status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, Self::SessionStoreUnavailable(_)) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http_body_util::BodyExt as _;

    use super::*;

    /// The text a provider, the OIDC library or the database put in an error never
    /// reaches the browser; the status and the problem type stay.
    #[tokio::test]
    async fn provider_and_internal_text_stays_in_the_log() {
        let secret = "discovery at https://idp.internal.example/: connect 10.0.0.7:443 refused";
        for (e, status, slug) in [
            (KcError::Provider(secret.into()), 502, "provider-error"),
            (
                KcError::InvalidIdToken(secret.into()),
                401,
                "invalid-id-token",
            ),
            (KcError::Internal(secret.into()), 500, "internal"),
        ] {
            let r = e.into_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().get(header::CONTENT_TYPE).unwrap(),
                "application/problem+json"
            );
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(!text.contains("idp.internal.example"), "{text}");
            assert!(!text.contains("10.0.0.7"), "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], format!("{PROBLEM_BASE}{slug}"));
            assert_eq!(v["status"], status);
            assert!(
                v["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{text}"
            );
        }
    }

    /// Errors whose text the keyclient wrote itself are still shown as they are.
    #[tokio::test]
    async fn own_messages_are_shown() {
        let r = KcError::InvalidReturnTo.into_response();
        assert_eq!(r.status().as_u16(), 400);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["detail"], KcError::InvalidReturnTo.to_string());
    }
}

//! RFC 9457 problem documents: the one place errors become HTTP responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use influxion_auth::AuthError;
use influxion_core::{BackendError, ParseError};
use influxion_store::StoreError;
use serde::Serialize;

/// Base of every problem `type`; each slug is described in `docs/problems.md`.
pub const PROBLEM_BASE: &str = "https://influxion.dev/problems/";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("requests must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("no key named {0}")]
    UnknownKey(String),
    #[error("key {0} is disabled")]
    KeyDisabled(String),
    #[error("key {key} ({key_type}) cannot sign with {algorithm}")]
    AlgorithmNotAllowed {
        key: String,
        key_type: String,
        algorithm: String,
    },
    #[error("a key named {0} already exists")]
    KeyExists(String),
    #[error("the {backend} key backend has no {key_type} keys; create it in the software keystore or on an HSM (pkcs11)")]
    UnsupportedKeyType { backend: String, key_type: String },
    #[error("the policy of key {0} changed meanwhile; read it again and retry")]
    PolicyChanged(String),
    #[error("key {0} was rotated by someone else meanwhile; read it again and retry")]
    KeyChanged(String),
    #[error("key {0} has no certificate")]
    NoCertificate(String),
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed on this resource")]
    MethodNotAllowed,
    #[error("no signing request {0}")]
    UnknownRequest(String),
    #[error("no audit record {0}")]
    UnknownAuditRecord(i64),
    #[error("the signing request is {0}; it can no longer change")]
    RequestClosed(String),
    #[error("the signing request has expired")]
    RequestExpired,
    #[error("the requester cannot approve or reject their own request")]
    SelfApproval,
    #[error("you have already decided on this request; one approver counts once")]
    AlreadyDecided,
    #[error("only the requester can cancel a request")]
    NotRequester,
    #[error("no subject {0}")]
    UnknownSubject(String),
    #[error("a subject named {0} already exists")]
    SubjectExists(String),
    #[error("{0}")]
    GrantConflict(String),
    #[error("this would remove the last admin grant; add another admin first")]
    LastAdmin,
    #[error(transparent)]
    Csr(#[from] influxion_pki::CsrError),
    #[error(transparent)]
    Policy(#[from] influxion_pki::PolicyError),
    #[error("{0}")]
    DeviceQuota(String),
    #[error("{0}")]
    BadPassword(String),
    #[error("{0}")]
    InvalidProfile(String),
    #[error("{0}")]
    BadCaCertificate(String),
    /// A chain given to a signing key that does not fit it.
    #[error("{0}")]
    BadKeyCertificate(String),
    #[error("no CA named {0}")]
    UnknownCa(String),
    #[error("no profile named {0}")]
    UnknownProfile(String),
    #[error("no certificate with serial {0}")]
    UnknownCertificate(String),
    #[error("a CA named {0} already exists")]
    CaExists(String),
    #[error("a profile named {0} already exists")]
    ProfileExists(String),
    #[error("{0}")]
    CaNotActive(String),
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("CA {0} is already revoked")]
    CaAlreadyRevoked(String),
    #[error("CA {0} was not issued by a CA held here (it is a root or signed externally), so no CRL of this keyserver can list it; revoke it at its issuer, or disable it")]
    CaWithoutParent(String),
    #[error("{0}")]
    RequestKeyConflict(String),
    #[error("profile {0} has issued certificates; it cannot be deleted (replace it instead)")]
    ProfileInUse(String),
    #[error("key {0} belongs to a certificate authority and signs only its certificates and CRLs")]
    CaKey(String),
    /// A per-subject rate limit: come back after `retry_after_secs`.
    #[error("subject {subject} may make {per_minute} {counted} per minute; retry in {retry_after_secs} s")]
    RateLimited {
        subject: String,
        counted: &'static str,
        per_minute: u32,
        retry_after_secs: u64,
    },
    /// The database cannot be reached (down, restarting, no connection in time):
    /// nothing was done; retry shortly.
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable,
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateKey(k) => ApiError::KeyExists(k),
            StoreError::NoSuchKey(k) => ApiError::UnknownKey(k),
            StoreError::PolicyChanged(k) => ApiError::PolicyChanged(k),
            StoreError::KeyChanged(k) => ApiError::KeyChanged(k),
            StoreError::NoSuchRequest(r) => ApiError::UnknownRequest(r),
            StoreError::RequestExpired => ApiError::RequestExpired,
            StoreError::RequestClosed { status } => ApiError::RequestClosed(status),
            StoreError::SelfApproval => ApiError::SelfApproval,
            StoreError::AlreadyDecided => ApiError::AlreadyDecided,
            StoreError::NotRequester => ApiError::NotRequester,
            StoreError::NoSuchSubject(s) => ApiError::UnknownSubject(s),
            StoreError::DuplicateSubject(s) => ApiError::SubjectExists(s),
            StoreError::DuplicateGrant { role, pattern } => {
                ApiError::GrantConflict(format!("the subject already has {role} on {pattern}"))
            }
            StoreError::NoSuchGrant(g) => {
                ApiError::GrantConflict(format!("no grant {g} on this subject"))
            }
            StoreError::KeyNotActive(k) => ApiError::KeyDisabled(k),
            StoreError::DuplicateCa(n) => ApiError::CaExists(n),
            // One problem for every CA state refusal; the detail says which.
            e @ (StoreError::CaNotPending { .. }
            | StoreError::CaNotIssued { .. }
            | StoreError::CaNotActive { .. }
            | StoreError::CaKeyNotActive { .. }
            | StoreError::CrlOutdated { .. }) => ApiError::CaNotActive(e.to_string()),
            StoreError::DuplicateProfile(n) => ApiError::ProfileExists(n),
            StoreError::NoSuchProfile(n) => ApiError::UnknownProfile(n),
            e @ StoreError::DeviceQuota { .. } => ApiError::DeviceQuota(e.to_string()),
            StoreError::AlreadyRevoked(s) => ApiError::AlreadyRevoked(s),
            StoreError::NoSuchCertificate(s) => ApiError::UnknownCertificate(s),
            StoreError::ProfileInUse(s) => ApiError::ProfileInUse(s),
            StoreError::NoSuchCa(s) => ApiError::UnknownCa(s),
            StoreError::CaAlreadyRevoked(s) => ApiError::CaAlreadyRevoked(s),
            StoreError::CaWithoutParent(s) => ApiError::CaWithoutParent(s),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::DatabaseUnavailable
            }
            e => ApiError::Store(e),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Auth(AuthError::InsufficientScope(_)) => StatusCode::FORBIDDEN,
            ApiError::Auth(AuthError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            ApiError::Auth(AuthError::Unavailable | AuthError::Config(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PolicyChanged(_) => StatusCode::CONFLICT,
            ApiError::KeyChanged(_) => StatusCode::CONFLICT,
            ApiError::NoCertificate(_) => StatusCode::NOT_FOUND,
            ApiError::Parse(_)
            | ApiError::InvalidRequest(_)
            | ApiError::AlgorithmNotAllowed { .. } => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnknownKey(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnknownRequest(_)
            | ApiError::UnknownSubject(_)
            | ApiError::UnknownAuditRecord(_) => StatusCode::NOT_FOUND,
            ApiError::SelfApproval | ApiError::NotRequester => StatusCode::FORBIDDEN,
            ApiError::RequestClosed(_)
            | ApiError::RequestExpired
            | ApiError::AlreadyDecided
            | ApiError::SubjectExists(_)
            | ApiError::GrantConflict(_)
            | ApiError::LastAdmin => StatusCode::CONFLICT,
            ApiError::KeyDisabled(_) | ApiError::KeyExists(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedKeyType { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Csr(influxion_pki::CsrError::TooLarge) => StatusCode::BAD_REQUEST,
            ApiError::Csr(_)
            | ApiError::Policy(_)
            | ApiError::DeviceQuota(_)
            | ApiError::BadPassword(_)
            | ApiError::InvalidProfile(_)
            | ApiError::BadCaCertificate(_) => StatusCode::BAD_REQUEST,
            ApiError::BadKeyCertificate(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnknownCa(_)
            | ApiError::UnknownProfile(_)
            | ApiError::UnknownCertificate(_) => StatusCode::NOT_FOUND,
            ApiError::CaExists(_)
            | ApiError::ProfileExists(_)
            | ApiError::CaNotActive(_)
            | ApiError::AlreadyRevoked(_)
            | ApiError::CaAlreadyRevoked(_)
            | ApiError::CaWithoutParent(_)
            | ApiError::RequestKeyConflict(_)
            | ApiError::ProfileInUse(_)
            | ApiError::CaKey(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Backend(BackendError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Backend(BackendError::Refused(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Backend(BackendError::Unfit(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable name of the problem (the last part of its `type`).
    pub fn slug(&self) -> &'static str {
        match self {
            ApiError::Auth(e) => e.slug(),
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Parse(ParseError::DigestLength { .. }) => "digest-length",
            ApiError::Parse(ParseError::DigestEncoding) => "digest-encoding",
            ApiError::Parse(ParseError::Algorithm(_)) => "unsupported-algorithm",
            ApiError::Parse(ParseError::KeyName) => "invalid-key-name",
            ApiError::Parse(_) => "invalid-request",
            ApiError::InvalidRequest(_) => "invalid-request",
            ApiError::BodyTooLarge(_) => "body-too-large",
            ApiError::UnsupportedMediaType => "unsupported-media-type",
            ApiError::UnknownKey(_) => "unknown-key",
            ApiError::KeyDisabled(_) => "key-disabled",
            ApiError::AlgorithmNotAllowed { .. } => "algorithm-not-allowed",
            ApiError::KeyExists(_) => "key-exists",
            ApiError::UnsupportedKeyType { .. } => "unsupported-key-type",
            ApiError::PolicyChanged(_) => "policy-changed",
            ApiError::KeyChanged(_) => "key-changed",
            ApiError::NoCertificate(_) => "no-certificate",
            ApiError::NotFound => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::UnknownRequest(_) => "unknown-request",
            ApiError::UnknownAuditRecord(_) => "unknown-audit-record",
            ApiError::RequestClosed(_) => "request-closed",
            ApiError::RequestExpired => "request-expired",
            ApiError::SelfApproval => "self-approval",
            ApiError::AlreadyDecided => "already-decided",
            ApiError::NotRequester => "not-requester",
            ApiError::UnknownSubject(_) => "unknown-subject",
            ApiError::SubjectExists(_) => "subject-exists",
            ApiError::GrantConflict(_) => "grant-conflict",
            ApiError::LastAdmin => "last-admin",
            ApiError::Csr(influxion_pki::CsrError::TooLarge) => "csr-too-large",
            ApiError::Csr(influxion_pki::CsrError::Malformed(_)) => "csr-malformed",
            ApiError::Csr(influxion_pki::CsrError::BadSignature(_)) => "csr-bad-signature",
            ApiError::Csr(influxion_pki::CsrError::KeyNotAllowed(_)) => "csr-key-not-allowed",
            ApiError::Policy(e) => match e.rule() {
                influxion_pki::PolicyRule::DeviceId => "invalid-device-id",
                influxion_pki::PolicyRule::KeyType => "csr-key-not-allowed",
                influxion_pki::PolicyRule::Extension => "csr-extension-forbidden",
                influxion_pki::PolicyRule::Subject => "csr-subject-not-allowed",
            },
            ApiError::DeviceQuota(_) => "device-quota-exceeded",
            ApiError::BadPassword(_) => "bad-password",
            ApiError::InvalidProfile(_) => "invalid-profile",
            ApiError::BadCaCertificate(_) => "bad-ca-certificate",
            ApiError::BadKeyCertificate(_) => "bad-key-certificate",
            ApiError::UnknownCa(_) => "unknown-ca",
            ApiError::UnknownProfile(_) => "unknown-profile",
            ApiError::UnknownCertificate(_) => "unknown-certificate",
            ApiError::CaExists(_) => "ca-exists",
            ApiError::ProfileExists(_) => "profile-exists",
            ApiError::CaNotActive(_) => "ca-not-active",
            ApiError::AlreadyRevoked(_) | ApiError::CaAlreadyRevoked(_) => "already-revoked",
            ApiError::CaWithoutParent(_) => "ca-no-parent",
            ApiError::RequestKeyConflict(_) => "request-key-conflict",
            ApiError::ProfileInUse(_) => "profile-in-use",
            ApiError::CaKey(_) => "ca-key",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::Backend(BackendError::Unavailable(_)) => "backend-unavailable",
            ApiError::DatabaseUnavailable => "database-unavailable",
            ApiError::Backend(BackendError::Refused(_)) => "backend-refused",
            ApiError::Backend(BackendError::Unfit(_)) => "unfit-key",
            ApiError::Store(_) | ApiError::Backend(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "Invalid bearer token",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::PAYLOAD_TOO_LARGE => "Request body too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::SERVICE_UNAVAILABLE => "Temporarily unavailable",
            StatusCode::BAD_GATEWAY => "Refused by the key backend",
            StatusCode::UNPROCESSABLE_ENTITY => "Cannot be processed",
            StatusCode::TOO_MANY_REQUESTS => "Too many requests",
            _ => "Internal error",
        }
    }

    fn detail(&self) -> String {
        match self {
            // What the operator must fix, without secrets: the backend's own words.
            ApiError::Backend(
                e @ (BackendError::Refused(_)
                | BackendError::Unavailable(_)
                | BackendError::Unfit(_)),
            ) => e.to_string(),
            // Database and crypto error text stays in the log.
            ApiError::Store(_) | ApiError::Backend(_) => {
                "the keyserver could not complete the operation".into()
            }
            e => e.to_string(),
        }
    }

    /// RFC 6750 section 3: the challenge sent with 400, 401 and 403 for bearer tokens.
    fn challenge(&self) -> Option<String> {
        match self {
            ApiError::Auth(AuthError::InsufficientScope(_)) => Some(
                r#"Bearer realm="influxion", error="insufficient_scope", error_description="the token lacks the required scope or app role""#
                    .into(),
            ),
            ApiError::Auth(AuthError::Unavailable | AuthError::Config(_)) => None,
            ApiError::Auth(AuthError::InvalidRequest(why)) => Some(format!(
                r#"Bearer realm="influxion", error="invalid_request", error_description="{why}""#
            )),
            ApiError::Auth(e) => Some(format!(
                r#"Bearer realm="influxion", error="invalid_token", error_description="{}""#,
                e.slug()
            )),
            _ => None,
        }
    }
}

fn problem_response(status: StatusCode, slug: &str, title: &str, detail: String) -> Response {
    let body = Problem {
        kind: format!("{PROBLEM_BASE}{slug}"),
        title,
        status: status.as_u16(),
        detail,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = (status, json).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// Rejections the framework produces by itself (an extractor's plain-text 400 or 413,
/// say) become problem documents too, so that every error the keyserver answers is one.
pub async fn framework_rejections(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if is_problem || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let known = match status {
        StatusCode::PAYLOAD_TOO_LARGE => Some(ApiError::BodyTooLarge(crate::MAX_BODY_BYTES)),
        StatusCode::NOT_FOUND => Some(ApiError::NotFound),
        StatusCode::METHOD_NOT_ALLOWED => Some(ApiError::MethodNotAllowed),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Some(ApiError::UnsupportedMediaType),
        _ => None,
    };
    if let Some(e) = known {
        return e.into_response();
    }
    let reason = status.canonical_reason().unwrap_or("refused");
    if status.is_client_error() {
        problem_response(
            status,
            "invalid-request",
            "Bad request",
            format!("the request was refused: {reason}"),
        )
    } else {
        tracing::error!(%status, "a framework error reached the client");
        problem_response(
            status,
            "internal",
            "Internal error",
            "the keyserver could not complete the operation".into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = problem_response(status, self.slug(), self.title(), self.detail());
        let h = resp.headers_mut();
        if let Some(c) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            h.insert(header::WWW_AUTHENTICATE, c);
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if matches!(self, ApiError::DatabaseUnavailable) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
        }
        resp
    }
}

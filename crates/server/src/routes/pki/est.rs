//! EST (RFC 7030): cacerts and simpleenroll, base64 bodies, bearer authentication.
//! Without a label, the profile is the configured EST profile.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use influxion_core::Role;
use influxion_pki::encode;

use super::cache::issuance_context;
use crate::extract::RawBody;
use crate::rate_limit::Operation;
use crate::routes::{audited, rate_limit, require};
use crate::service::pki::{chain_ders, corrupt, issue_certificate, lookup_ca, lookup_profile};
use crate::{ApiError, AppState, Caller};

fn est_profile(st: &AppState, label: Option<String>) -> Result<String, ApiError> {
    label
        .or_else(|| st.pki.est_profile.clone())
        .ok_or(ApiError::NotFound)
}

fn est_body(bytes: Vec<u8>) -> Response {
    let mut b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    // RFC 2045 line length keeps strict MIME readers happy.
    let mut wrapped = String::with_capacity(b64.len() + b64.len() / 64 + 2);
    while !b64.is_empty() {
        let rest = b64.split_off(b64.len().min(64));
        wrapped.push_str(&b64);
        wrapped.push_str("\r\n");
        b64 = rest;
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "application/pkcs7-mime; smime-type=certs-only",
            ),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                "base64",
            ),
        ],
        wrapped,
    )
        .into_response()
}

async fn cacerts_for(st: &AppState, profile: &str) -> Result<Response, ApiError> {
    let (_, spec) = lookup_profile(st, profile).await?;
    let ca = lookup_ca(st, &spec.ca).await?;
    let chain = chain_ders(&ca)?;
    Ok(est_body(
        encode::pkcs7_certs_only(&chain).map_err(|e| corrupt(&e.to_string()))?,
    ))
}

pub(crate) async fn cacerts(State(st): State<AppState>) -> Result<Response, ApiError> {
    let profile = est_profile(&st, None)?;
    cacerts_for(&st, &profile).await
}

pub(crate) async fn cacerts_label(
    State(st): State<AppState>,
    Path(label): Path<String>,
) -> Result<Response, ApiError> {
    cacerts_for(&st, &label).await
}

async fn enroll_for(
    st: &AppState,
    c: &Caller,
    profile: &str,
    headers: &HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    require(st, c, Role::Provisioner, profile, "cert.issue").await?;
    audited(st, &c.actor, "cert.issue", profile, async {
        let RawBody(body) = body?;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/pkcs10") {
            return Err(ApiError::InvalidRequest(
                "EST enrolment bodies are application/pkcs10 (base64 DER)".into(),
            ));
        }
        // Base64 of an 8 KiB DER CSR, with line breaks.
        if body.len() > influxion_pki::MAX_CSR_BYTES * 4 / 3 + 512 {
            return Err(influxion_pki::CsrError::TooLarge.into());
        }
        let compact: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .map_err(|_| influxion_pki::CsrError::Malformed("the body is not base64".into()))?;
        let ctx = issuance_context(st, profile).await?;
        let csr = influxion_pki::csr::parse(&der)?;
        let cert = ctx.spec.enforce(&csr, None)?;
        rate_limit(st, c, Operation::Certificate, Role::Provisioner, profile).await?;
        let (record, _) = issue_certificate(st, &c.actor, profile, &ctx, cert, None, false).await?;
        Ok(est_body(
            encode::pkcs7_certs_only(&[record.der]).map_err(|e| corrupt(&e.to_string()))?,
        ))
    })
    .await
}

pub(crate) async fn simpleenroll(
    State(st): State<AppState>,
    c: Caller,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    let profile = est_profile(&st, None)?;
    enroll_for(&st, &c, &profile, &headers, body).await
}

pub(crate) async fn simpleenroll_label(
    State(st): State<AppState>,
    c: Caller,
    Path(label): Path<String>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    enroll_for(&st, &c, &label, &headers, body).await
}

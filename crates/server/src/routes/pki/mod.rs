//! The device certificate authority over HTTP, one module per resource: CAs,
//! profiles, issuance (from CSRs and with server-side keys), certificate records and
//! revocation, CRLs and EST (RFC 7030). The operations that build records and audit
//! events live in [`crate::service::pki`].

pub(crate) mod cache;
pub(crate) mod cas;
pub(crate) mod certificates;
pub(crate) mod crl;
mod dev;
pub(crate) mod est;
pub(crate) mod issuance;
pub(crate) mod profiles;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use influxion_pki::encode;
use influxion_store::pki::CertRecord;
use serde::{Deserialize, Serialize};

pub use cache::PkiCache;
pub use dev::{ensure_dev_ca, ensure_dev_code_signing};

use crate::service::pki::{corrupt, pem_all};
use crate::ApiError;

/// A certificate with its chain, as the JSON answers show it.
#[derive(Serialize)]
pub(crate) struct IssuedView {
    #[serde(flatten)]
    record: CertRecord,
    certificate_pem: String,
    /// Issuing CA first, up to the root.
    chain_pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_key_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs12_base64: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct FormatQuery {
    format: Option<String>,
}

/// Certificates in `format`: `pem` (all), `pkcs7` (certs-only) or `der` (the first).
fn render_chain(chain: &[Vec<u8>], format: &str) -> Result<Response, ApiError> {
    match format {
        "pem" => Ok((
            [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
            pem_all(chain),
        )
            .into_response()),
        "pkcs7" => Ok((
            [(
                header::CONTENT_TYPE,
                "application/pkcs7-mime; smime-type=certs-only",
            )],
            encode::pkcs7_certs_only(chain).map_err(|e| corrupt(&e.to_string()))?,
        )
            .into_response()),
        "der" => Ok((
            [(header::CONTENT_TYPE, "application/pkix-cert")],
            chain.first().cloned().unwrap_or_default(),
        )
            .into_response()),
        other => Err(ApiError::InvalidRequest(format!(
            "format must be json, pem, der or pkcs7, not {other:?}"
        ))),
    }
}

/// A certificate and the chain above it, as JSON or in one of [`render_chain`]'s
/// formats (with its serial in `x-certificate-serial`).
fn issued_response(
    record: CertRecord,
    chain: Vec<Vec<u8>>,
    format: &str,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if format == "json" {
        let view = IssuedView {
            certificate_pem: encode::cert_pem(&record.der),
            chain_pem: pem_all(&chain),
            record,
            private_key_pem: None,
            pkcs12_base64: None,
        };
        return Ok((status, Json(view)).into_response());
    }
    let mut all = vec![record.der.clone()];
    all.extend(chain);
    let mut resp = render_chain(&all, format)?;
    *resp.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&record.serial) {
        resp.headers_mut().insert("x-certificate-serial", v);
    }
    Ok(resp)
}

/// The body of a revocation, of a certificate or of an intermediate CA.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    #[serde(default = "unspecified")]
    reason: String,
}

fn unspecified() -> String {
    "unspecified".into()
}

fn parse_reason(s: &str) -> Result<influxion_pki::Reason, ApiError> {
    influxion_pki::Reason::parse(s).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "reason must be one of unspecified, key_compromise, ca_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn; not {s:?}"
        ))
    })
}

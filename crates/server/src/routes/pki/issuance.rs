//! Issuing device certificates under a profile: from a CSR, or with a key generated
//! here and handed back once (PKCS#12 or PEM).

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use influxion_core::Role;
use influxion_pki::{build, encode, CertSpec};
use influxion_store::pki::CertRecord;
use serde::Deserialize;

use super::cache::issuance_context;
use super::{issued_response, FormatQuery, IssuedView};
use crate::extract::JsonBody;
use crate::rate_limit::Operation;
use crate::routes::{audited, rate_limit, require};
use crate::service::pki::{chain_ders, corrupt, issue_certificate, lookup_ca, pem_all};
use crate::{ApiError, AppState, Caller};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueRequest {
    /// PKCS#10 request, PEM.
    csr: String,
    /// Defaults to the CSR's common name.
    device_id: Option<String>,
    /// Idempotency key: repeating a request with the same key returns the certificate
    /// issued the first time instead of a new one.
    request_key: Option<String>,
}

fn check_request_key(k: &Option<String>) -> Result<(), ApiError> {
    match k {
        Some(k)
            if k.is_empty()
                || k.len() > 128
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) =>
        {
            Err(ApiError::InvalidRequest(
                "request_key is 1 to 128 characters of letters, digits, '-', '_', '.', ':'".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// Answer a repeated request key with the certificate issued the first time, if the
/// request is the same one (same device and public key); anything else is a conflict.
async fn replay(
    st: &AppState,
    existing: CertRecord,
    asked: &CertSpec,
    format: &str,
) -> Result<Response, ApiError> {
    let facts = build::facts(&existing.der).map_err(|_| corrupt("certificate"))?;
    if existing.device_id != asked.device_id || facts.spki_der != asked.spki_der {
        return Err(ApiError::RequestKeyConflict(format!(
            "request_key was used for another device or key (certificate {})",
            existing.serial
        )));
    }
    let ca = lookup_ca(st, &existing.ca).await?;
    issued_response(existing, chain_ders(&ca)?, format, StatusCode::OK)
}

/// `POST /v1/profiles/{name}/certificates?format=json|pem|der|pkcs7`
pub(crate) async fn from_csr(
    State(st): State<AppState>,
    c: Caller,
    Path(profile): Path<String>,
    Query(q): Query<FormatQuery>,
    body: Result<JsonBody<IssueRequest>, ApiError>,
) -> Result<Response, ApiError> {
    require(&st, &c, Role::Provisioner, &profile, "cert.issue").await?;
    audited(&st, &c.actor, "cert.issue", &profile, async {
        let format = q.format.as_deref().unwrap_or("json");
        if !matches!(format, "json" | "pem" | "der" | "pkcs7") {
            return Err(ApiError::InvalidRequest(format!(
                "format must be json, pem, der or pkcs7, not {format:?}"
            )));
        }
        let JsonBody(req) = body?;
        check_request_key(&req.request_key)?;
        let ctx = issuance_context(&st, &profile).await?;
        let spec = &ctx.spec;
        let csr = influxion_pki::csr::parse(req.csr.as_bytes())?;
        let cert = spec.enforce(&csr, req.device_id.as_deref())?;
        if let Some(k) = &req.request_key {
            if let Some(existing) = st.store.certificate_by_request_key(&profile, k).await? {
                return replay(&st, existing, &cert, format).await;
            }
        }
        rate_limit(&st, &c, Operation::Certificate, Role::Provisioner, &profile).await?;
        let (record, chain) = match issue_certificate(
            &st,
            &c.actor,
            &profile,
            &ctx,
            cert.clone(),
            req.request_key.clone(),
            false,
        )
        .await
        {
            // The same request key raced with itself: hand back the winner.
            Err(ApiError::Store(influxion_store::StoreError::DuplicateCertificate(_)))
                if req.request_key.is_some() =>
            {
                let k = req.request_key.as_deref().unwrap_or_default();
                let existing = st
                    .store
                    .certificate_by_request_key(&profile, k)
                    .await?
                    .ok_or_else(|| corrupt("request key"))?;
                return replay(&st, existing, &cert, format).await;
            }
            r => r?,
        };
        issued_response(record, chain, format, StatusCode::CREATED)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeygenRequest {
    device_id: String,
    /// Defaults to the profile's first key type.
    key_type: Option<String>,
    /// `pkcs12` (default) or `pem`.
    format: Option<String>,
    /// Protects the PKCS#12 file; required for `pkcs12`.
    password: Option<String>,
}

/// `POST /v1/profiles/{name}/keys`: generate the device key here, issue its
/// certificate, return both, and keep no copy of the private key.
pub(crate) async fn with_new_key(
    State(st): State<AppState>,
    c: Caller,
    Path(profile): Path<String>,
    body: Result<JsonBody<KeygenRequest>, ApiError>,
) -> Result<Response, ApiError> {
    require(&st, &c, Role::Provisioner, &profile, "cert.keygen").await?;
    audited(&st, &c.actor, "cert.keygen", &profile, async {
        let JsonBody(req) = body?;
        let ctx = issuance_context(&st, &profile).await?;
        let spec = &ctx.spec;
        if !spec.allow_server_keygen {
            return Err(ApiError::Forbidden(format!(
                "profile {profile} does not allow server-side key generation"
            )));
        }
        let key_type = match &req.key_type {
            Some(k) => influxion_pki::DeviceKeyType::parse(k)
                .ok_or_else(|| ApiError::InvalidRequest(format!("unknown key type {k:?}")))?,
            None => *spec
                .key_types
                .first()
                .ok_or_else(|| corrupt("profile key types"))?,
        };
        if !spec.key_types.contains(&key_type) {
            return Err(influxion_pki::PolicyError::KeyType {
                key_type,
                allowed: spec.allowed_key_types(),
            }
            .into());
        }
        let format = req.format.as_deref().unwrap_or("pkcs12");
        let password = match (format, &req.password) {
            ("pkcs12", Some(pw)) => {
                encode::check_password(pw).map_err(|e| ApiError::BadPassword(e.to_string()))?;
                Some(zeroize::Zeroizing::new(pw.clone()))
            }
            ("pkcs12", None) => {
                return Err(ApiError::BadPassword(
                    "invalid password: a password is required for PKCS#12".into(),
                ))
            }
            ("pem", None) => None,
            ("pem", Some(_)) => {
                return Err(ApiError::InvalidRequest(
                    "password applies only to format pkcs12".into(),
                ))
            }
            (other, _) => {
                return Err(ApiError::InvalidRequest(format!(
                    "format must be pkcs12 or pem, not {other:?}"
                )))
            }
        };
        // Check the device id and quota-independent policy before spending a key.
        let probe = spec.spec_for(&req.device_id, Vec::new())?;
        drop(probe);
        rate_limit(&st, &c, Operation::Certificate, Role::Provisioner, &profile).await?;
        // RSA key generation takes up to seconds of CPU: at most two at a time.
        static KEYGEN: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let _permit = KEYGEN
            .acquire()
            .await
            .map_err(|_| corrupt("key generation limiter closed"))?;
        let device_key = tokio::task::spawn_blocking(move || encode::generate_device_key(key_type))
            .await
            .map_err(|e| corrupt(&e.to_string()))?
            .map_err(|e| corrupt(&e.to_string()))?;
        let cert = spec.spec_for(&req.device_id, device_key.spki_der.clone())?;
        let (record, chain) =
            issue_certificate(&st, &c.actor, &profile, &ctx, cert, None, true).await?;
        let mut full = vec![record.der.clone()];
        full.extend(chain.iter().cloned());
        let (private_key_pem, pkcs12_base64) = match password {
            Some(pw) => {
                let alias = record.device_id.clone();
                let p12 = tokio::task::spawn_blocking(move || {
                    encode::pkcs12(&device_key, &full, &alias, &pw)
                })
                .await
                .map_err(|e| corrupt(&e.to_string()))?
                .map_err(|e| corrupt(&e.to_string()))?;
                (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(p12)),
                )
            }
            None => (Some(device_key.pkcs8_pem().to_string()), None),
        };
        let view = IssuedView {
            certificate_pem: encode::cert_pem(&record.der),
            chain_pem: pem_all(&chain),
            record,
            private_key_pem,
            pkcs12_base64,
        };
        Ok((
            StatusCode::CREATED,
            [(header::CACHE_CONTROL, "no-store")],
            Json(view),
        )
            .into_response())
    })
    .await
}

//! Signing and verification of digests.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
pub(crate) use influxion_api::PendingResponse;
use influxion_api::{SignRequest, SignResponse, VerifyRequest, VerifyResponse};
use influxion_core::{Digest, KeyStatus, Role, SignAlgorithm};
use influxion_store::{AuditEvent, KeyRecord, Outcome};
use influxion_verify as public;

use super::keys::lookup_shared;
use super::{audited, rate_limit, require_any};
use crate::extract::JsonBody;
use crate::rate_limit::Operation;
use crate::{ApiError, AppState, Caller};

pub(crate) enum SignOutcome {
    Signed(SignResponse),
    Pending(PendingResponse),
}

impl IntoResponse for SignOutcome {
    fn into_response(self) -> Response {
        match self {
            SignOutcome::Signed(r) => Json(r).into_response(),
            SignOutcome::Pending(r) => {
                let loc = r.location.clone();
                (StatusCode::ACCEPTED, [(header::LOCATION, loc)], Json(r)).into_response()
            }
        }
    }
}

fn parse_digest(
    key: &KeyRecord,
    algorithm: Option<&str>,
    hex_digest: &str,
) -> Result<Digest, ApiError> {
    let alg = match algorithm {
        Some(a) => a.parse::<SignAlgorithm>()?,
        None => key.key_type.default_algorithm(),
    };
    if !key.key_type.allows(alg) {
        return Err(ApiError::AlgorithmNotAllowed {
            key: key.name.to_string(),
            key_type: key.key_type.to_string(),
            algorithm: alg.to_string(),
        });
    }
    if hex_digest.len() > 256 {
        return Err(influxion_core::ParseError::DigestEncoding.into());
    }
    let bytes = hex::decode(hex_digest).map_err(|_| influxion_core::ParseError::DigestEncoding)?;
    Ok(Digest::new(alg, bytes)?)
}

/// Metadata is shown to approvers: keep it small and flat.
fn check_metadata(m: &serde_json::Map<String, serde_json::Value>) -> Result<(), ApiError> {
    if m.len() > 16 {
        return Err(ApiError::InvalidRequest(
            "metadata has at most 16 fields".into(),
        ));
    }
    for (k, v) in m {
        let flat = matches!(
            v,
            serde_json::Value::String(_)
                | serde_json::Value::Number(_)
                | serde_json::Value::Bool(_)
        );
        if k.len() > 64 || !flat || v.to_string().len() > 512 {
            return Err(ApiError::InvalidRequest(format!(
                "metadata field {k:?} must be a short string, number or boolean"
            )));
        }
    }
    Ok(())
}

/// The signature format a sign request names (default `raw`).
fn signature_format(format: Option<&str>) -> Result<&'static str, ApiError> {
    match format {
        None => Ok("raw"),
        Some(f) => influxion_api::SIGNATURE_FORMATS
            .into_iter()
            .find(|known| *known == f)
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "format must be one of {}",
                    influxion_api::SIGNATURE_FORMATS.join(", ")
                ))
            }),
    }
}

#[tracing::instrument(skip_all, fields(key = %name))]
pub(crate) async fn sign(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<SignRequest>, ApiError>,
) -> Result<SignOutcome, ApiError> {
    audited(&st, &c.actor, "sign", &name, async {
        if !c.perms.allows(Role::Signer, &name) {
            return Err(super::forbidden(
                &c.perms,
                &format!("signing with {name} needs the signer role"),
            ));
        }
        let JsonBody(req) = body?;
        let key = lookup_shared(&st, &name).await?;
        if key.status != KeyStatus::Active {
            return Err(ApiError::KeyDisabled(key.name.to_string()));
        }
        if key.purpose != influxion_store::KeyPurpose::Sign {
            return Err(ApiError::CaKey(key.name.to_string()));
        }
        let digest = parse_digest(&key, req.algorithm.as_deref(), &req.digest)?;
        let mut metadata = req.metadata.unwrap_or_default();
        check_metadata(&metadata)?;
        let format = signature_format(req.format.as_deref())?;
        let reason = req.reason.unwrap_or_default();
        if reason.len() > 1000 {
            return Err(ApiError::InvalidRequest(
                "reason is at most 1000 characters".into(),
            ));
        }
        if key.policy.approvals_required > 0 && reason.trim().is_empty() {
            return Err(ApiError::InvalidRequest(format!(
                "key {} needs approval: give a reason for the approvers",
                key.name
            )));
        }
        // A signing request counts as a signature: each may become one.
        rate_limit(&st, &c, Operation::Sign, Role::Signer, &name).await?;
        if key.policy.approvals_required > 0 {
            // Approvers see the format beside the file's facts; the quorum's sign
            // record carries it.
            metadata.insert("format".into(), format.into());
            return super::requests::create(&st, &c, &key, &digest, reason, metadata)
                .await
                .map(SignOutcome::Pending);
        }
        let started = std::time::Instant::now();
        let signed = sign_and_record(&st, &c, &key, &digest, format, reason).await;
        st.metrics.sign(signed.is_ok(), started.elapsed());
        let (signature, audit_seq) = signed?;
        Ok(SignOutcome::Signed(SignResponse {
            key: key.name.to_string(),
            algorithm: digest.algorithm(),
            digest: digest.to_hex(),
            signature: B64.encode(signature),
            audit_seq,
        }))
    })
    .await
}

/// The key's signature and its audit record: the sign operation whose latency is
/// measured. The signature is returned only after its record is durable.
async fn sign_and_record(
    st: &AppState,
    c: &Caller,
    key: &KeyRecord,
    digest: &Digest,
    format: &str,
    reason: String,
) -> Result<(Vec<u8>, u64), ApiError> {
    let signature = st.backends.sign(key, digest).await?;
    let mut detail = serde_json::json!({
        "algorithm": digest.algorithm().as_str(),
        "digest": digest.to_hex(),
        "app_id": c.principal.app_id,
        "format": format,
    });
    // Where the key lives (backend, vault, key, version): part of the record.
    for (k, v) in st.backends.describe(key) {
        detail[k] = v;
    }
    if !reason.is_empty() {
        detail["reason"] = reason.into();
    }
    let event = AuditEvent::new(c.actor.clone(), "sign", Outcome::Ok)
        .target(key.name.to_string())
        .detail(detail);
    match st.store.audit_key_use(key, event).await {
        Ok(seq) => Ok((signature, seq)),
        // Disabled while we signed: the signature is dropped, never returned.
        Err(influxion_store::StoreError::KeyNotActive(_)) => {
            Err(ApiError::KeyDisabled(key.name.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn verify(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<VerifyRequest>, ApiError>,
) -> Result<Json<VerifyResponse>, ApiError> {
    require_any(&c)?;
    let JsonBody(req) = body?;
    let key = lookup_shared(&st, &name).await?;
    let digest = parse_digest(&key, req.algorithm.as_deref(), &req.digest)?;
    let sig = B64
        .decode(req.signature.as_bytes())
        .map_err(|_| ApiError::InvalidRequest("signature must be base64".into()))?;
    let valid = public::verify(key.key_type, &key.public_key, &digest, &sig)
        .map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    Ok(Json(VerifyResponse {
        key: key.name.to_string(),
        algorithm: digest.algorithm(),
        valid,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_requests_name_a_known_format() {
        assert_eq!(signature_format(None).unwrap(), "raw");
        assert_eq!(signature_format(Some("mcuboot")).unwrap(), "mcuboot");
        for bad in ["", "RAW", "pkcs7", "uboot-fit", &"x".repeat(5000)] {
            assert!(
                matches!(signature_format(Some(bad)), Err(ApiError::InvalidRequest(m)) if m.contains("raw, cms, mcuboot, authenticode")),
                "{bad:?}"
            );
        }
    }
}

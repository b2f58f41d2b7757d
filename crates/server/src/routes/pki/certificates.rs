//! Issued certificates: search, show, revoke. A certificate the caller may not see
//! reads as missing.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use influxion_core::Role;
use influxion_store::pki::{CertQuery, CertRecord};
use influxion_store::{AuditEvent, Outcome};
use serde::{Deserialize, Serialize};

use super::{issued_response, parse_reason, FormatQuery, RevokeRequest};
use crate::extract::JsonBody;
use crate::routes::{audited, forbidden};
use crate::service::pki::{chain_ders, lookup_ca, regenerate_crl};
use crate::{ApiError, AppState, Caller};

fn may_see(c: &Caller, profile: &str) -> bool {
    c.perms.has_role(Role::Auditor)
        || c.perms.allows(Role::Provisioner, profile)
        || c.perms.allows(Role::KeyAdmin, profile)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SearchQuery {
    device_id: Option<String>,
    serial: Option<String>,
    subject: Option<String>,
    profile: Option<String>,
    ca: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct CertList {
    certificates: Vec<CertRecord>,
}

pub(crate) async fn search(
    State(st): State<AppState>,
    c: Caller,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CertList>, ApiError> {
    if !(c.perms.has_role(Role::Auditor)
        || c.perms.has_role(Role::Provisioner)
        || c.perms.has_role(Role::KeyAdmin))
    {
        return Err(forbidden(
            &c.perms,
            "searching certificates needs the auditor, provisioner or key-admin role",
        ));
    }
    let Query(q) = q.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    for v in [
        &q.device_id,
        &q.serial,
        &q.subject,
        &q.profile,
        &q.ca,
        &q.status,
    ]
    .into_iter()
    .flatten()
    {
        if v.len() > 256 {
            return Err(ApiError::InvalidRequest(
                "search values are at most 256 characters".into(),
            ));
        }
    }
    let query = CertQuery {
        device_id: q.device_id,
        serial: q.serial.map(|s| s.to_ascii_lowercase().replace(':', "")),
        subject: q.subject,
        profile: q.profile,
        ca: q.ca,
        status: q.status,
        limit: q.limit.unwrap_or(100),
        visible: (!c.perms.has_role(Role::Auditor)).then(|| {
            c.perms
                .grants
                .iter()
                .filter(|g| matches!(g.role, Role::Admin | Role::KeyAdmin | Role::Provisioner))
                .map(|g| g.pattern.clone())
                .collect()
        }),
    };
    let certificates = st
        .store
        .search_certificates(&query)
        .await?
        .into_iter()
        .filter(|r| may_see(&c, &r.profile))
        .collect();
    Ok(Json(CertList { certificates }))
}

async fn lookup_cert(st: &AppState, c: &Caller, serial: &str) -> Result<CertRecord, ApiError> {
    let serial = serial.to_ascii_lowercase().replace(':', "");
    let r = st
        .store
        .get_certificate(&serial)
        .await?
        .ok_or_else(|| ApiError::UnknownCertificate(serial.clone()))?;
    // Not visible reads as not there, so serials cannot be probed.
    if !may_see(c, &r.profile) {
        return Err(ApiError::UnknownCertificate(serial));
    }
    Ok(r)
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(serial): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    let r = lookup_cert(&st, &c, &serial).await?;
    let ca = lookup_ca(&st, &r.ca).await?;
    issued_response(
        r,
        chain_ders(&ca)?,
        q.format.as_deref().unwrap_or("json"),
        StatusCode::OK,
    )
}

pub(crate) async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(serial): Path<String>,
    body: Result<JsonBody<RevokeRequest>, ApiError>,
) -> Result<Response, ApiError> {
    audited(&st, &c.actor, "cert.revoke", &serial, async {
        let JsonBody(req) = body?;
        let reason = parse_reason(&req.reason)?;
        let r = lookup_cert(&st, &c, &serial).await?;
        if !(c.perms.allows(Role::KeyAdmin, &r.profile)
            || c.perms.allows(Role::Provisioner, &r.profile))
        {
            return Err(forbidden(
                &c.perms,
                &format!(
                    "revoking certificates of profile {} needs the key-admin or provisioner role",
                    r.profile
                ),
            ));
        }
        let at = influxion_store::now_rfc3339();
        let event = AuditEvent::new(c.actor.clone(), "cert.revoke", Outcome::Ok)
            .target(r.serial.clone())
            .detail(serde_json::json!({
                "reason": reason.as_str(),
                "ca": r.ca,
                "profile": r.profile,
                "device_id": r.device_id,
            }));
        st.store
            .revoke_certificate(&r.serial, &at, reason.as_str(), event)
            .await?;
        // The revocation stands either way; a CRL that could not be made now is made
        // on the next fetch of the CRL URL, which sees the newer revocation.
        if let Err(e) = regenerate_crl(&st, &r.ca, &c.actor).await {
            tracing::error!(ca = %r.ca, error = %e, "CRL regeneration after revocation failed");
        }
        let r = lookup_cert(&st, &c, &r.serial).await?;
        let ca = lookup_ca(&st, &r.ca).await?;
        issued_response(r, chain_ders(&ca)?, "json", StatusCode::OK)
    })
    .await
}

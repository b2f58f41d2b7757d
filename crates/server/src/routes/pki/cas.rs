//! Certificate authorities: list, show, create (root, intermediate, or a CSR for an
//! external root), import an externally signed certificate, disable, revoke, chain.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use influxion_core::{KeyName, KeyType, Role};
use influxion_pki::{build, encode, CaSubject};
use influxion_store::pki::{CaRecord, CaStatus};
use influxion_store::{AuditEvent, Outcome};
use serde::{Deserialize, Serialize};

use super::{parse_reason, render_chain, RevokeRequest};
use crate::extract::JsonBody;
use crate::routes::{audited, forbidden, require, require_any};
use crate::service::pki::{
    build_err, ca_key_record, chain_ders, corrupt, lookup_ca, pem_all, regenerate_crl, rfc3339,
    NewCa,
};
use crate::{ApiError, AppState, Caller};

#[derive(Serialize)]
pub(crate) struct CaView {
    name: String,
    status: String,
    subject: serde_json::Value,
    key: String,
    key_type: KeyType,
    parent: Option<String>,
    /// Serial of this CA's certificate, when a CA held here (`parent`) issued it.
    #[serde(skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revocation_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    csr_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_pem: Option<String>,
    /// This CA's certificate followed by its issuers.
    chain_pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
    crl_number: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    crl_next_update: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crl_url: Option<String>,
    counters: influxion_store::pki::CaCounters,
    created_at: String,
    created_by: influxion_core::Actor,
}

pub(super) async fn ca_view(st: &AppState, ca: &CaRecord) -> Result<CaView, ApiError> {
    let key = ca_key_record(st, ca).await?;
    let facts = ca
        .certificate
        .as_deref()
        .map(build::facts)
        .transpose()
        .map_err(|_| corrupt("CA certificate"))?;
    // A revoked CA is disabled in the store; the view says why.
    let status = match &ca.revoked_at {
        Some(_) => "revoked",
        None => ca.status.as_str(),
    };
    Ok(CaView {
        name: ca.name.clone(),
        status: status.to_owned(),
        subject: serde_json::from_str(&ca.subject).unwrap_or(serde_json::Value::Null),
        key: key.name.to_string(),
        key_type: key.key_type,
        parent: ca.parent.clone(),
        serial: ca.serial.clone(),
        revoked_at: ca.revoked_at.clone(),
        revocation_reason: ca.revocation_reason.clone(),
        csr_pem: ca
            .csr_pem
            .clone()
            .filter(|_| ca.status == CaStatus::Pending),
        certificate_pem: ca.certificate.as_deref().map(encode::cert_pem),
        chain_pem: pem_all(&chain_ders(ca)?),
        not_before: facts.as_ref().map(|f| rfc3339(f.not_before)),
        not_after: facts.as_ref().map(|f| rfc3339(f.not_after)),
        crl_number: ca.crl_number,
        crl_next_update: ca.crl_next_update.clone(),
        crl_url: st.pki.crl_url(&ca.name),
        counters: st.store.ca_counters(&ca.name).await?,
        created_at: ca.created_at.clone(),
        created_by: ca.created_by.clone(),
    })
}

/// The current state of CA `name`, as answered after a change.
pub(super) async fn current_view(st: &AppState, name: &str) -> Result<Json<CaView>, ApiError> {
    Ok(Json(ca_view(st, &lookup_ca(st, name).await?).await?))
}

#[derive(Serialize)]
pub(crate) struct CaList {
    cas: Vec<CaView>,
}

pub(crate) async fn list(State(st): State<AppState>, c: Caller) -> Result<Json<CaList>, ApiError> {
    require_any(&c)?;
    let mut cas = Vec::new();
    for ca in st.store.list_cas().await? {
        cas.push(ca_view(&st, &ca).await?);
    }
    Ok(Json(CaList { cas }))
}

pub(crate) async fn show(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require_any(&c)?;
    current_view(&st, &name).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateCa {
    name: String,
    #[serde(default = "default_ca_key")]
    key_type: String,
    subject: CaSubject,
    validity_days: Option<u32>,
    /// Sign the new CA with this CA held here (an intermediate).
    parent: Option<String>,
    /// Create an intermediate whose CSR an external (offline) root signs; import the
    /// certificate with `PUT /v1/cas/{name}/certificate`.
    #[serde(default)]
    external: bool,
    /// The key backend of the CA key (default: the keyserver's).
    backend: Option<String>,
}

fn default_ca_key() -> String {
    "ec-p384".into()
}

pub(crate) async fn create(
    State(st): State<AppState>,
    c: Caller,
    body: Result<JsonBody<CreateCa>, ApiError>,
) -> Result<(StatusCode, Json<CaView>), ApiError> {
    audited(&st, &c.actor, "ca.create", "cas", async {
        let JsonBody(req) = body?;
        let name: KeyName = req.name.parse()?;
        if !c.perms.allows(Role::Admin, name.as_str()) {
            return Err(forbidden(
                &c.perms,
                &format!("creating CA {name} needs the admin role"),
            ));
        }
        let new = NewCa {
            name,
            key_type: req.key_type.parse()?,
            subject: req.subject,
            validity_days: req.validity_days,
            parent: req.parent,
            external: req.external,
            backend: req.backend,
        };
        let ca = crate::service::pki::create_ca(&st, &c.actor, new).await?;
        Ok((StatusCode::CREATED, Json(ca_view(&st, &ca).await?)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportCert {
    /// The CA's certificate, PEM.
    certificate: String,
    /// The issuer's certificate and any above it up to the root, PEM, nearest first.
    chain: String,
}

/// `PUT /v1/cas/{name}/certificate`: the certificate an external root issued for a
/// pending CA's CSR; the CA becomes active.
pub(crate) async fn import_certificate(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<ImportCert>, ApiError>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.import").await?;
    audited(&st, &c.actor, "ca.import", &name, async {
        let JsonBody(req) = body?;
        let ca = lookup_ca(&st, &name).await?;
        if ca.status != CaStatus::Pending {
            return Err(ApiError::CaNotActive(format!(
                "CA {name} is {}, not waiting for a certificate",
                ca.status.as_str()
            )));
        }
        let key = ca_key_record(&st, &ca).await?;
        let bad = |e: encode::EncodeError| ApiError::BadCaCertificate(e.to_string());
        let cert = encode::certs_from_pem_or_der(req.certificate.as_bytes()).map_err(bad)?;
        let [cert] = <[Vec<u8>; 1]>::try_from(cert).map_err(|_| {
            ApiError::BadCaCertificate("certificate must hold exactly one certificate".into())
        })?;
        let chain = encode::certs_from_pem_or_der(req.chain.as_bytes()).map_err(bad)?;
        let facts = build::check_imported(&cert, &key.public_key, &chain).map_err(build_err)?;
        let event = AuditEvent::new(c.actor.clone(), "ca.import", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({
                "subject": facts.subject,
                "issuer": facts.issuer,
                "serial": facts.serial_hex,
                "not_after": rfc3339(facts.not_after),
            }));
        st.store
            .activate_ca(
                &name,
                cert,
                pem_all(&chain),
                rfc3339(facts.not_after),
                event,
            )
            .await?;
        regenerate_crl(&st, &name, &c.actor).await?;
        current_view(&st, &name).await
    })
    .await
}

/// `POST /v1/cas/{name}/disable`: the CA issues nothing more (it still publishes its
/// CRL). There is no re-enable: create a new CA.
pub(crate) async fn disable(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.disable").await?;
    audited(&st, &c.actor, "ca.disable", &name, async {
        let event =
            AuditEvent::new(c.actor.clone(), "ca.disable", Outcome::Ok).target(name.clone());
        st.store
            .set_ca_status(&name, CaStatus::Disabled, event)
            .await?;
        current_view(&st, &name).await
    })
    .await
}

/// `POST /v1/cas/{name}/revoke`: the parent revokes this intermediate's certificate,
/// which its CRL lists from now on; the CA is disabled in the same transaction.
pub(crate) async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<RevokeRequest>, ApiError>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.revoke").await?;
    audited(&st, &c.actor, "ca.revoke", &name, async {
        let JsonBody(req) = body?;
        let reason = parse_reason(&req.reason)?;
        let ca = lookup_ca(&st, &name).await?;
        let parent = ca
            .parent
            .clone()
            .ok_or_else(|| ApiError::CaWithoutParent(name.clone()))?;
        if ca.revoked_at.is_some() {
            return Err(ApiError::CaAlreadyRevoked(name.clone()));
        }
        // The parent's key signs the CRL that carries the revocation.
        if !c.perms.allows(Role::Admin, &parent) {
            return Err(forbidden(
                &c.perms,
                &format!("revoking CA {name} needs the admin role on its parent {parent} too"),
            ));
        }
        let cert = ca
            .certificate
            .as_deref()
            .ok_or_else(|| corrupt("intermediate CA without a certificate"))?;
        let serial = build::facts(cert)
            .map_err(|_| corrupt("CA certificate"))?
            .serial_hex;
        let at = influxion_store::now_rfc3339();
        let event = AuditEvent::new(c.actor.clone(), "ca.revoke", Outcome::Ok)
            .target(name.clone())
            .detail(serde_json::json!({
                "serial": serial,
                "parent": parent,
                "reason": reason.as_str(),
            }));
        st.store
            .revoke_ca(&name, &serial, &at, reason.as_str(), event)
            .await?;
        // As for certificates: the revocation stands, and a CRL that cannot be made now
        // is made on the next fetch of the parent's CRL URL.
        if let Err(e) = regenerate_crl(&st, &parent, &c.actor).await {
            tracing::error!(ca = %parent, error = %e, "CRL regeneration after CA revocation failed");
        }
        current_view(&st, &name).await
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ChainQuery {
    format: Option<String>,
}

/// `GET /v1/cas/{name}/chain?format=pem|pkcs7`.
pub(crate) async fn chain(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    Query(q): Query<ChainQuery>,
) -> Result<Response, ApiError> {
    require_any(&c)?;
    let ca = lookup_ca(&st, &name).await?;
    let chain = chain_ders(&ca)?;
    if chain.is_empty() {
        return Err(ApiError::CaNotActive(format!(
            "CA {name} has no certificate yet"
        )));
    }
    render_chain(&chain, q.format.as_deref().unwrap_or("pem"))
}

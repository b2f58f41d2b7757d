//! The device certificate authority over HTTP: CAs, profiles, issuance from CSRs and
//! with server-side keys, search, revocation, CRLs and EST (RFC 7030).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use influxion_core::{Digest, KeyName, KeyStatus, KeyType, Principal, Role, SignAlgorithm};
use influxion_pki::{build, encode, CaKey, CaKeyAlg, CaSubject, CertSpec, ProfileSpec};
use influxion_store::pki::{CaRecord, CaStatus, CertQuery, CertRecord, ProfileRecord};
use influxion_store::{AuditEvent, KeyPurpose, KeyRecord, Outcome};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{audited, forbidden, require, require_any};
use crate::extract::{JsonBody, RawBody};
use crate::{ApiError, AppState, Caller};

/// How long a CRL is valid; it is regenerated on every revocation and when a request
/// finds it within a day of its nextUpdate.
const CRL_VALIDITY_DAYS: i64 = 7;
const DEFAULT_ROOT_DAYS: u32 = 7300;
const DEFAULT_INTERMEDIATE_DAYS: u32 = 3650;

/// Settings of the certificate authority that come from configuration.
#[derive(Debug, Clone, Default)]
pub struct PkiSettings {
    /// Public base URL of the keyserver (for CRL distribution points), without a
    /// trailing slash, e.g. `https://keys.example.com`.
    pub public_url: Option<String>,
    /// Profile used by EST requests without a label (`/.well-known/est/simpleenroll`).
    pub est_profile: Option<String>,
}

impl PkiSettings {
    fn crl_url(&self, ca: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}/crl/{ca}.crl"))
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn corrupt(what: &str) -> ApiError {
    ApiError::Store(influxion_store::StoreError::Corrupt(what.to_owned()))
}

fn build_err(e: build::BuildError) -> ApiError {
    match e {
        build::BuildError::BadCaCertificate(m) => ApiError::BadCaCertificate(m),
        build::BuildError::Name(m) => ApiError::InvalidRequest(m),
        build::BuildError::UnsupportedCaKey(m) => ApiError::InvalidRequest(format!(
            "CA keys must be ec-p256, ec-p384, rsa-3072 or rsa-4096 ({m})"
        )),
        e => ApiError::Backend(influxion_core::BackendError::Crypto(e.to_string())),
    }
}

fn ca_alg(kt: KeyType) -> Option<(CaKeyAlg, SignAlgorithm)> {
    match kt {
        KeyType::EcP256 => Some((CaKeyAlg::EcdsaP256Sha256, SignAlgorithm::Es256)),
        KeyType::EcP384 => Some((CaKeyAlg::EcdsaP384Sha384, SignAlgorithm::Es384)),
        KeyType::Rsa3072 | KeyType::Rsa4096 => {
            Some((CaKeyAlg::RsaPkcs1Sha256, SignAlgorithm::Rs256))
        }
        KeyType::Ed25519 => None,
    }
}

/// Run `f` with the CA key on a blocking thread; the key's signatures go through the
/// key backend, so the private key never leaves it.
async fn with_ca_key<T: Send + 'static>(
    st: &AppState,
    key: &KeyRecord,
    f: impl FnOnce(&CaKey<'_>) -> Result<T, build::BuildError> + Send + 'static,
) -> Result<T, ApiError> {
    let (alg, sign_alg) = ca_alg(key.key_type).ok_or_else(|| {
        ApiError::InvalidRequest(format!("{} keys cannot be CA keys", key.key_type))
    })?;
    let backend = st.backend.clone();
    let key = key.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let signer = |digest: &[u8]| {
            let d = Digest::new(sign_alg, digest.to_vec()).map_err(|e| e.to_string())?;
            rt.block_on(backend.sign(&key.id, key.key_type, &key.handle, &d))
                .map_err(|e| e.to_string())
        };
        let ca_key = CaKey::new(alg, &key.public_key, signer)?;
        f(&ca_key)
    })
    .await
    .map_err(|e| corrupt(&format!("signing task: {e}")))?
    .map_err(build_err)
}

async fn ca_key_record(st: &AppState, ca: &CaRecord) -> Result<KeyRecord, ApiError> {
    st.store
        .get_key_by_id(&ca.key_id)
        .await?
        .ok_or_else(|| corrupt("CA key missing"))
}

/// What issuing under a profile needs, read once per change of CA/profile/key data
/// (the store's PKI generation). The writer re-checks that the CA and its key are
/// active when the certificate commits, so a stale entry cannot issue under a
/// disabled CA.
pub(crate) struct IssuanceContext {
    spec: ProfileSpec,
    ca: CaRecord,
    ca_cert: Vec<u8>,
    key: KeyRecord,
    chain: Vec<Vec<u8>>,
}

/// Per-process cache of [`IssuanceContext`] by profile name.
#[derive(Default)]
pub struct PkiCache {
    entries:
        std::sync::Mutex<std::collections::HashMap<String, (u64, std::sync::Arc<IssuanceContext>)>>,
}

async fn issuance_context(
    st: &AppState,
    profile: &str,
) -> Result<std::sync::Arc<IssuanceContext>, ApiError> {
    let generation = st.store.pki_generation();
    if let Ok(m) = st.pki_cache.entries.lock() {
        if let Some((g, ctx)) = m.get(profile) {
            if *g == generation {
                return Ok(ctx.clone());
            }
        }
    }
    let (_, spec) = lookup_profile(st, profile).await?;
    let (ca, ca_cert, key) = active_ca(st, &spec.ca).await?;
    let chain = chain_ders(&ca)?;
    let ctx = std::sync::Arc::new(IssuanceContext {
        spec,
        ca,
        ca_cert,
        key,
        chain,
    });
    if let Ok(mut m) = st.pki_cache.entries.lock() {
        // Bounded by the number of profiles; cleared wholesale if names are abused.
        if m.len() > 1024 {
            m.clear();
        }
        m.insert(profile.to_owned(), (generation, ctx.clone()));
    }
    Ok(ctx)
}

async fn lookup_ca(st: &AppState, name: &str) -> Result<CaRecord, ApiError> {
    st.store
        .get_ca(name)
        .await?
        .ok_or_else(|| ApiError::UnknownCa(name.to_owned()))
}

/// An active CA with its certificate and key.
async fn active_ca(st: &AppState, name: &str) -> Result<(CaRecord, Vec<u8>, KeyRecord), ApiError> {
    let ca = lookup_ca(st, name).await?;
    let cert = match (&ca.status, &ca.certificate) {
        (CaStatus::Active, Some(c)) => c.clone(),
        _ => {
            return Err(ApiError::CaNotActive(format!(
                "CA {name} is {}",
                ca.status.as_str()
            )))
        }
    };
    let key = ca_key_record(st, &ca).await?;
    if key.status != KeyStatus::Active {
        return Err(ApiError::CaNotActive(format!(
            "the key of CA {name} is disabled"
        )));
    }
    let not_after = build::facts(&cert).map_err(build_err)?.not_after;
    if not_after <= OffsetDateTime::now_utc() {
        return Err(ApiError::CaNotActive(format!(
            "CA {name} expired on {}",
            rfc3339(not_after)
        )));
    }
    Ok((ca, cert, key))
}

/// A CA that can sign CRLs: it has a certificate (active or disabled; a disabled or
/// expired CA still publishes revocations).
async fn crl_ca(st: &AppState, name: &str) -> Result<(CaRecord, Vec<u8>, KeyRecord), ApiError> {
    let ca = lookup_ca(st, name).await?;
    let cert = ca
        .certificate
        .clone()
        .ok_or_else(|| ApiError::CaNotActive(format!("CA {name} has no certificate yet")))?;
    let key = ca_key_record(st, &ca).await?;
    Ok((ca, cert, key))
}

/// DER certificates of the CA and the issuers above it, nearest first.
fn chain_ders(ca: &CaRecord) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    if let Some(c) = &ca.certificate {
        out.push(c.clone());
    }
    if !ca.chain_pem.trim().is_empty() {
        out.extend(
            encode::certs_from_pem_or_der(ca.chain_pem.as_bytes())
                .map_err(|_| corrupt("CA chain"))?,
        );
    }
    Ok(out)
}

fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| encode::cert_pem(d)).collect()
}

// ---------------------------------------------------------------------------------
// CAs

#[derive(Serialize)]
pub struct CaView {
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
    created_by: String,
}

async fn ca_view(st: &AppState, ca: &CaRecord) -> Result<CaView, ApiError> {
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

#[derive(Serialize)]
pub struct CaList {
    cas: Vec<CaView>,
}

pub async fn list_cas(State(st): State<AppState>, c: Caller) -> Result<Json<CaList>, ApiError> {
    require_any(&c)?;
    let mut cas = Vec::new();
    for ca in st.store.list_cas().await? {
        cas.push(ca_view(&st, &ca).await?);
    }
    Ok(Json(CaList { cas }))
}

pub async fn show_ca(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require_any(&c)?;
    let ca = lookup_ca(&st, &name).await?;
    Ok(Json(ca_view(&st, &ca).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCa {
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
}

fn default_ca_key() -> String {
    "ec-p384".into()
}

pub async fn create_ca(
    State(st): State<AppState>,
    c: Caller,
    body: Result<JsonBody<CreateCa>, ApiError>,
) -> Result<(StatusCode, Json<CaView>), ApiError> {
    let p = &c.principal;
    audited(&st, p, "ca.create", "cas", async {
        let JsonBody(req) = body?;
        let name: KeyName = req.name.parse()?;
        if !c.perms.allows(Role::Admin, name.as_str()) {
            return Err(forbidden(
                &c.perms,
                &format!("creating CA {name} needs the admin role"),
            ));
        }
        let name = create_ca_record(&st, &p.audit_id(), req).await?;
        let ca = lookup_ca(&st, &name).await?;
        Ok((StatusCode::CREATED, Json(ca_view(&st, &ca).await?)))
    })
    .await
}

/// Create a CA as `actor` (the handler has checked permissions); returns its name.
async fn create_ca_record(st: &AppState, actor: &str, req: CreateCa) -> Result<String, ApiError> {
    {
        let st = st.clone();
        // CA names appear in URLs and key names: the key-name rules apply.
        let name: KeyName = req.name.parse()?;
        let key_type: KeyType = req.key_type.parse()?;
        if ca_alg(key_type).is_none() {
            return Err(ApiError::InvalidRequest(format!(
                "{key_type} keys cannot be CA keys (use ec-p256, ec-p384, rsa-3072 or rsa-4096)"
            )));
        }
        req.subject.validate().map_err(build_err)?;
        if req.parent.is_some() && req.external {
            return Err(ApiError::InvalidRequest(
                "give either parent or external, not both".into(),
            ));
        }
        let max = influxion_pki::profile::MAX_VALIDITY_DAYS * 2;
        let validity = req
            .validity_days
            .unwrap_or(if req.parent.is_some() || req.external {
                DEFAULT_INTERMEDIATE_DAYS
            } else {
                DEFAULT_ROOT_DAYS
            });
        if validity == 0 || validity > max {
            return Err(ApiError::InvalidRequest(format!(
                "validity_days must be 1 to {max}"
            )));
        }
        if st.store.get_ca(name.as_str()).await?.is_some() {
            return Err(ApiError::CaExists(name.to_string()));
        }
        let key_name: KeyName = format!("ca.{name}").parse()?;
        if st.store.get_key(&key_name).await?.is_some() {
            return Err(ApiError::KeyExists(key_name.to_string()));
        }
        let parent = match &req.parent {
            Some(parent) => Some(active_ca(&st, parent).await?),
            None => None,
        };

        let key = super::keys::generate(&st, key_name, key_type, actor, KeyPurpose::Ca).await?;
        let id = key.id.clone();
        let subject = req.subject.clone();
        let (status, certificate, chain_pem, csr_pem, mode) = if req.external {
            let s = subject.clone();
            let csr = with_ca_key(&st, &key, move |k| build::intermediate_csr(&s, k)).await?;
            (
                CaStatus::Pending,
                None,
                String::new(),
                Some(csr),
                "external",
            )
        } else if let Some((pca, pcert, pkey)) = &parent {
            let s = subject.clone();
            let spki = key.public_key.clone();
            let pc = pcert.clone();
            let cert = with_ca_key(&st, pkey, move |k| {
                build::intermediate_certificate(&s, validity, &spki, &pc, k)
            })
            .await?;
            (
                CaStatus::Active,
                Some(cert),
                pem_all(&chain_ders(pca)?),
                None,
                "intermediate",
            )
        } else {
            let s = subject.clone();
            let cert =
                with_ca_key(&st, &key, move |k| build::root_certificate(&s, validity, k)).await?;
            (CaStatus::Active, Some(cert), String::new(), None, "root")
        };
        let facts = certificate
            .as_deref()
            .map(build::facts)
            .transpose()
            .map_err(build_err)?;
        let not_after = facts.as_ref().map(|f| rfc3339(f.not_after));
        // A certificate a CA held here issued is recorded under that parent, whose CRL
        // can then revoke it. Roots and externally signed CAs have no such parent.
        let serial = req
            .parent
            .as_ref()
            .and(facts.as_ref())
            .map(|f| f.serial_hex.clone());
        let record = CaRecord {
            name: name.to_string(),
            key_id: id,
            status,
            subject: serde_json::to_string(&subject).map_err(|_| corrupt("subject"))?,
            parent: req.parent.clone(),
            csr_pem,
            certificate,
            chain_pem,
            not_after,
            crl_number: 0,
            crl: None,
            crl_next_update: None,
            created_at: influxion_store::now_rfc3339(),
            created_by: actor.to_owned(),
            serial: serial.clone(),
            revoked_at: None,
            revocation_reason: None,
        };
        let event = AuditEvent::new(actor.to_owned(), "ca.create", Outcome::Ok)
            .target(name.to_string())
            .detail(serde_json::json!({
                "mode": mode,
                "key_type": key_type.as_str(),
                "backend": key.backend,
                "parent": req.parent,
                "serial": serial,
                "subject": subject,
            }));
        st.store.create_ca(key, record.clone(), event).await?;
        if record.status == CaStatus::Active {
            regenerate_crl(&st, name.as_str(), actor).await?;
        }
        Ok(name.to_string())
    }
}

/// Development mode: a root CA `dev-device-ca` and a profile `device` for it, once.
pub async fn ensure_dev_ca(st: &AppState) -> Result<(), ApiError> {
    let actor = "system:dev";
    if st.store.get_ca("dev-device-ca").await?.is_none() {
        let req = CreateCa {
            name: "dev-device-ca".into(),
            key_type: "ec-p256".into(),
            subject: CaSubject {
                common_name: "Influxion Development Device CA".into(),
                organization: Some("Influxion development".into()),
                organizational_unit: None,
                country: None,
            },
            validity_days: Some(3650),
            parent: None,
            external: false,
        };
        create_ca_record(st, actor, req).await?;
    }
    if st.store.get_profile("device").await?.is_none() {
        let spec: ProfileSpec = serde_json::from_value(serde_json::json!({
            "ca": "dev-device-ca",
            "validity_days": 365,
            "key_types": ["ec-p256", "ec-p384", "ed25519"],
            "subject": {"common_name": "{device_id}", "organization": "Influxion development"},
            "san_dns": ["{device_id}.devices.influxion.test"],
            "max_per_device": 0,
        }))
        .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
        let now = influxion_store::now_rfc3339();
        let record = ProfileRecord {
            name: "device".into(),
            ca: spec.ca.clone(),
            spec: serde_json::to_string(&spec).map_err(|_| corrupt("profile"))?,
            created_at: now.clone(),
            updated_at: now,
        };
        let event = AuditEvent::new(actor, "profile.create", Outcome::Ok)
            .target("device")
            .detail(serde_json::to_value(&spec).unwrap_or_default());
        st.store.put_profile(record, true, event).await?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportCert {
    /// The CA's certificate, PEM.
    certificate: String,
    /// The issuer's certificate and any above it up to the root, PEM, nearest first.
    chain: String,
}

pub async fn import_ca_certificate(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<ImportCert>, ApiError>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.import").await?;
    let p = &c.principal;
    audited(&st, p, "ca.import", &name, async {
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
        let event = AuditEvent::new(p.audit_id(), "ca.import", Outcome::Ok)
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
        regenerate_crl(&st, &name, &p.audit_id()).await?;
        Ok(Json(ca_view(&st, &lookup_ca(&st, &name).await?).await?))
    })
    .await
}

/// Build and store a new CRL for `ca` from the revocations on record.
pub(crate) async fn regenerate_crl(
    st: &AppState,
    ca_name: &str,
    actor: &str,
) -> Result<(), ApiError> {
    // Two regenerations can race; the store keeps CRL numbers increasing, so the loser
    // rebuilds from a fresh view.
    for _ in 0..3 {
        let (ca, cert, key) = crl_ca(st, ca_name).await?;
        let revoked = st.store.revoked_for_ca(ca_name).await?;
        let mut entries = Vec::with_capacity(revoked.len());
        for r in &revoked {
            entries.push(influxion_pki::RevokedEntry {
                serial: hex::decode(&r.serial).map_err(|_| corrupt("serial"))?,
                revoked_at: OffsetDateTime::parse(&r.revoked_at, &Rfc3339)
                    .map_err(|_| corrupt("revocation time"))?,
                reason: influxion_pki::Reason::parse(&r.reason)
                    .unwrap_or(influxion_pki::Reason::Unspecified),
            });
        }
        let number = ca.crl_number + 1;
        let validity = time::Duration::days(CRL_VALIDITY_DAYS);
        let der = with_ca_key(st, &key, move |k| {
            build::crl(&cert, k, number as u64, &entries, validity)
        })
        .await?;
        let next_update = rfc3339(OffsetDateTime::now_utc() + validity);
        let event = AuditEvent::new(actor.to_owned(), "crl.issue", Outcome::Ok)
            .target(ca_name.to_owned())
            .detail(serde_json::json!({"crl_number": number, "revoked": revoked.len()}));
        match st
            .store
            .store_crl(ca_name, number, der, next_update, event)
            .await
        {
            Ok(_) => return Ok(()),
            Err(influxion_store::StoreError::CaState(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(corrupt("CRL generation kept losing races"))
}

/// `GET /crl/{ca}.crl`: the CA's current CRL (DER), public like any CRL.
pub async fn crl(
    State(st): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let name = file.strip_suffix(".crl").unwrap_or(&file).to_owned();
    let mut ca = lookup_ca(&st, &name).await?;
    let next_update = ca
        .crl_next_update
        .as_deref()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let this_update = next_update.map(|t| t - time::Duration::days(CRL_VALIDITY_DAYS));
    // Reissue when close to nextUpdate, or when a revocation is newer than the CRL
    // (its regeneration at revocation time failed).
    let newest = st.store.latest_revocation(&name).await?;
    let stale = next_update.is_none_or(|t| t - OffsetDateTime::now_utc() < time::Duration::days(1))
        || newest
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .zip(this_update)
            .is_some_and(|(r, t)| r > t);
    if stale && ca.certificate.is_some() {
        match regenerate_crl(&st, &name, "influxion").await {
            Ok(()) => ca = lookup_ca(&st, &name).await?,
            // Serve the CRL we have while it is still valid.
            Err(e) => tracing::error!(ca = %name, error = %e, "CRL regeneration failed"),
        }
    }
    let der = ca.crl.ok_or(ApiError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        der,
    )
        .into_response())
}

/// `POST /v1/cas/{name}/disable`: the CA issues nothing more (it still publishes its
/// CRL). There is no re-enable: create a new CA.
pub async fn disable_ca(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.disable").await?;
    let p = &c.principal;
    audited(&st, p, "ca.disable", &name, async {
        let event = AuditEvent::new(p.audit_id(), "ca.disable", Outcome::Ok).target(name.clone());
        st.store
            .set_ca_status(&name, CaStatus::Disabled, event)
            .await?;
        Ok(Json(ca_view(&st, &lookup_ca(&st, &name).await?).await?))
    })
    .await
}

/// `POST /v1/cas/{name}/revoke`: the parent revokes this intermediate's certificate,
/// which its CRL lists from now on; the CA is disabled in the same transaction.
pub async fn revoke_ca(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<RevokeRequest>, ApiError>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::Admin, &name, "ca.revoke").await?;
    let p = &c.principal;
    audited(&st, p, "ca.revoke", &name, async {
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
        let event = AuditEvent::new(p.audit_id(), "ca.revoke", Outcome::Ok)
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
        if let Err(e) = regenerate_crl(&st, &parent, &p.audit_id()).await {
            tracing::error!(ca = %parent, error = %e, "CRL regeneration after CA revocation failed");
        }
        Ok(Json(ca_view(&st, &lookup_ca(&st, &name).await?).await?))
    })
    .await
}

/// `POST /v1/cas/{name}/crl`: issue a fresh CRL now.
pub async fn refresh_crl(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<CaView>, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "crl.issue").await?;
    let p = &c.principal;
    audited(&st, p, "crl.issue", &name, async {
        regenerate_crl(&st, &name, &p.audit_id()).await?;
        Ok(Json(ca_view(&st, &lookup_ca(&st, &name).await?).await?))
    })
    .await
}

#[derive(Deserialize)]
pub struct ChainQuery {
    format: Option<String>,
}

/// `GET /v1/cas/{name}/chain?format=pem|pkcs7`.
pub async fn ca_chain(
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

// ---------------------------------------------------------------------------------
// Profiles

#[derive(Serialize)]
pub struct ProfileView {
    name: String,
    #[serde(flatten)]
    spec: ProfileSpec,
    created_at: String,
    updated_at: String,
}

fn profile_view(r: &ProfileRecord) -> Result<ProfileView, ApiError> {
    Ok(ProfileView {
        name: r.name.clone(),
        spec: serde_json::from_str(&r.spec).map_err(|_| corrupt("profile"))?,
        created_at: r.created_at.clone(),
        updated_at: r.updated_at.clone(),
    })
}

async fn lookup_profile(
    st: &AppState,
    name: &str,
) -> Result<(ProfileRecord, ProfileSpec), ApiError> {
    let r = st
        .store
        .get_profile(name)
        .await?
        .ok_or_else(|| ApiError::UnknownProfile(name.to_owned()))?;
    let spec = serde_json::from_str(&r.spec).map_err(|_| corrupt("profile"))?;
    Ok((r, spec))
}

#[derive(Serialize)]
pub struct ProfileList {
    profiles: Vec<ProfileView>,
}

pub async fn list_profiles(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<ProfileList>, ApiError> {
    require_any(&c)?;
    let profiles = st
        .store
        .list_profiles()
        .await?
        .iter()
        .map(profile_view)
        .collect::<Result<_, _>>()?;
    Ok(Json(ProfileList { profiles }))
}

pub async fn show_profile(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>, ApiError> {
    require_any(&c)?;
    Ok(Json(profile_view(&lookup_profile(&st, &name).await?.0)?))
}

/// `PUT /v1/profiles/{name}`: create (201) or replace (200) a profile.
pub async fn put_profile(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    body: Result<JsonBody<ProfileSpec>, ApiError>,
) -> Result<(StatusCode, Json<ProfileView>), ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "profile.put").await?;
    let p = &c.principal;
    audited(&st, p, "profile.put", &name, async {
        let name: KeyName = name.parse()?;
        let JsonBody(spec) = body?;
        spec.validate()
            .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
        let ca = lookup_ca(&st, &spec.ca).await.map_err(|_| {
            ApiError::InvalidProfile(format!("invalid profile: no CA named {}", spec.ca))
        })?;
        // Binding a profile to a CA lets provisioners issue under it: the caller must
        // administer that CA's name as well as the profile's.
        if !c.perms.allows(Role::KeyAdmin, &ca.name) {
            return Err(forbidden(
                &c.perms,
                &format!("binding a profile to CA {} needs the key-admin role on it", ca.name),
            ));
        }
        if let Some(old) = st.store.get_profile(name.as_str()).await? {
            if old.ca != ca.name && !c.perms.allows(Role::KeyAdmin, &old.ca) {
                return Err(forbidden(
                    &c.perms,
                    &format!("moving a profile away from CA {} needs the key-admin role on it", old.ca),
                ));
            }
        }
        if spec.crl_distribution_point && st.pki.public_url.is_none() {
            return Err(ApiError::InvalidProfile(
                "invalid profile: crl_distribution_point needs the keyserver's public URL (INFLUXION_PUBLIC_URL); set it or set crl_distribution_point to false".into(),
            ));
        }
        let existing = st.store.get_profile(name.as_str()).await?;
        let now = influxion_store::now_rfc3339();
        let record = ProfileRecord {
            name: name.to_string(),
            ca: ca.name.clone(),
            spec: serde_json::to_string(&spec).map_err(|_| corrupt("profile"))?,
            created_at: existing
                .as_ref()
                .map(|e| e.created_at.clone())
                .unwrap_or_else(|| now.clone()),
            updated_at: now,
        };
        let create = existing.is_none();
        let action = if create {
            "profile.create"
        } else {
            "profile.update"
        };
        let event = AuditEvent::new(p.audit_id(), action, Outcome::Ok)
            .target(name.to_string())
            .detail(serde_json::to_value(&spec).unwrap_or_default());
        st.store.put_profile(record.clone(), create, event).await?;
        let status = if create {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(profile_view(&record)?)))
    })
    .await
}

pub async fn delete_profile(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require(&st, &c, Role::KeyAdmin, &name, "profile.delete").await?;
    let p = &c.principal;
    audited(&st, p, "profile.delete", &name, async {
        let event =
            AuditEvent::new(p.audit_id(), "profile.delete", Outcome::Ok).target(name.clone());
        st.store.delete_profile(&name, event).await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

// ---------------------------------------------------------------------------------
// Issuance

#[derive(Serialize)]
pub struct IssuedView {
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

/// Sign `spec` with the profile's CA and record it. Returns the record and the chain
/// above the certificate.
async fn issue(
    st: &AppState,
    p: &Principal,
    profile: &str,
    ctx: &IssuanceContext,
    cert: CertSpec,
    request_key: Option<String>,
    key_generated: bool,
) -> Result<(CertRecord, Vec<Vec<u8>>), ApiError> {
    let (ca, key, spec) = (&ctx.ca, &ctx.key, &ctx.spec);
    let ca_cert = &ctx.ca_cert;
    let serial = build::random_serial();
    let crl_url = st.pki.crl_url(&ca.name);
    let subject = cert.subject_line();
    let device_id = cert.device_id.clone();
    let ca_cert2 = ca_cert.clone();
    let (der, facts) = with_ca_key(st, key, move |k| {
        build::device_certificate(&cert, &serial, &ca_cert2, k, crl_url.as_deref())
    })
    .await?;
    let record = CertRecord {
        serial: facts.serial_hex.clone(),
        ca: ca.name.clone(),
        profile: profile.to_owned(),
        device_id: device_id.clone(),
        subject: subject.clone(),
        not_before: rfc3339(facts.not_before),
        not_after: rfc3339(facts.not_after),
        der,
        requested_by: p.audit_id(),
        issued_at: influxion_store::now_rfc3339(),
        key_generated,
        request_key,
        status: "valid".into(),
        revoked_at: None,
        revocation_reason: None,
    };
    let event = AuditEvent::new(p.audit_id(), "cert.issue", Outcome::Ok)
        .target(profile.to_owned())
        .detail(serde_json::json!({
            "serial": record.serial,
            "ca": ca.name,
            "device_id": device_id,
            "subject": subject,
            "key_generated": key_generated,
        }));
    if let Err(e) = st
        .store
        .record_certificate(record.clone(), &key.id, spec.max_per_device, event)
        .await
    {
        // The CA key has signed a certificate that is now thrown away (quota reached,
        // CA disabled or request key taken meanwhile): that use of the key is recorded
        // too, with the serial that will never be seen.
        let e = ApiError::from(e);
        let discarded = AuditEvent::new(p.audit_id(), "cert.discard", Outcome::Refused)
            .target(profile.to_owned())
            .detail(serde_json::json!({
                "serial": record.serial,
                "ca": ca.name,
                "device_id": record.device_id,
                "reason": e.slug(),
            }));
        if let Err(ae) = st.store.audit(discarded).await {
            tracing::error!(error = %ae, "could not audit a discarded certificate");
        }
        return Err(e);
    }
    Ok((record, ctx.chain.clone()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// PKCS#10 request, PEM.
    csr: String,
    /// Defaults to the CSR's common name.
    device_id: Option<String>,
    /// Idempotency key: repeating a request with the same key returns the certificate
    /// issued the first time instead of a new one.
    request_key: Option<String>,
}

#[derive(Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
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
pub async fn issue_from_csr(
    State(st): State<AppState>,
    c: Caller,
    Path(profile): Path<String>,
    Query(q): Query<FormatQuery>,
    body: Result<JsonBody<IssueRequest>, ApiError>,
) -> Result<Response, ApiError> {
    require(&st, &c, Role::Provisioner, &profile, "cert.issue").await?;
    let p = &c.principal;
    audited(&st, p, "cert.issue", &profile, async {
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
        let (record, chain) = match issue(
            &st,
            p,
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
pub struct KeygenRequest {
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
pub async fn issue_with_new_key(
    State(st): State<AppState>,
    c: Caller,
    Path(profile): Path<String>,
    body: Result<JsonBody<KeygenRequest>, ApiError>,
) -> Result<Response, ApiError> {
    require(&st, &c, Role::Provisioner, &profile, "cert.keygen").await?;
    let p = &c.principal;
    audited(&st, p, "cert.keygen", &profile, async {
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
            return Err(
                influxion_pki::PolicyError::KeyType(key_type, spec.allowed_key_types()).into(),
            );
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
        let (record, chain) = issue(&st, p, &profile, &ctx, cert, None, true).await?;
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

// ---------------------------------------------------------------------------------
// Records and revocation

fn may_see(c: &Caller, profile: &str) -> bool {
    c.perms.has_role(Role::Auditor)
        || c.perms.allows(Role::Provisioner, profile)
        || c.perms.allows(Role::KeyAdmin, profile)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    device_id: Option<String>,
    serial: Option<String>,
    subject: Option<String>,
    profile: Option<String>,
    ca: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
pub struct CertList {
    certificates: Vec<CertRecord>,
}

pub async fn search(
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

pub async fn show_certificate(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
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

pub async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(serial): Path<String>,
    body: Result<JsonBody<RevokeRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let p = &c.principal;
    audited(&st, p, "cert.revoke", &serial, async {
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
        let event = AuditEvent::new(p.audit_id(), "cert.revoke", Outcome::Ok)
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
        if let Err(e) = regenerate_crl(&st, &r.ca, &p.audit_id()).await {
            tracing::error!(ca = %r.ca, error = %e, "CRL regeneration after revocation failed");
        }
        let r = lookup_cert(&st, &c, &r.serial).await?;
        let ca = lookup_ca(&st, &r.ca).await?;
        issued_response(r, chain_ders(&ca)?, "json", StatusCode::OK)
    })
    .await
}

// ---------------------------------------------------------------------------------
// EST (RFC 7030): cacerts and simpleenroll, base64 bodies, bearer authentication.

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

async fn est_cacerts_for(st: &AppState, profile: &str) -> Result<Response, ApiError> {
    let (_, spec) = lookup_profile(st, profile).await?;
    let ca = lookup_ca(st, &spec.ca).await?;
    let chain = chain_ders(&ca)?;
    Ok(est_body(
        encode::pkcs7_certs_only(&chain).map_err(|e| corrupt(&e.to_string()))?,
    ))
}

pub async fn est_cacerts(State(st): State<AppState>) -> Result<Response, ApiError> {
    let profile = est_profile(&st, None)?;
    est_cacerts_for(&st, &profile).await
}

pub async fn est_cacerts_label(
    State(st): State<AppState>,
    Path(label): Path<String>,
) -> Result<Response, ApiError> {
    est_cacerts_for(&st, &label).await
}

async fn est_enroll_for(
    st: &AppState,
    c: &Caller,
    profile: &str,
    headers: &HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    require(st, c, Role::Provisioner, profile, "cert.issue").await?;
    let p = &c.principal;
    audited(st, p, "cert.issue", profile, async {
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
        let (record, _) = issue(st, p, profile, &ctx, cert, None, false).await?;
        Ok(est_body(
            encode::pkcs7_certs_only(&[record.der]).map_err(|e| corrupt(&e.to_string()))?,
        ))
    })
    .await
}

pub async fn est_simpleenroll(
    State(st): State<AppState>,
    c: Caller,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    let profile = est_profile(&st, None)?;
    est_enroll_for(&st, &c, &profile, &headers, body).await
}

pub async fn est_simpleenroll_label(
    State(st): State<AppState>,
    c: Caller,
    Path(label): Path<String>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, ApiError> {
    est_enroll_for(&st, &c, &label, &headers, body).await
}

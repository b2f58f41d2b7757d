//! The device CA's operations: create a CA, issue a certificate, issue a CRL. Each
//! builds its records and audit events in one function; the HTTP handlers, EST and the
//! development seeding call them after checking permissions.

use influxion_core::{Actor, Digest, KeyName, KeyStatus, KeyType, SignAlgorithm};
use influxion_pki::{build, encode, CaKey, CaKeyAlg, CaSubject, CertSpec, ProfileSpec};
use influxion_store::pki::{CaRecord, CaStatus, CertRecord, ProfileRecord};
use influxion_store::{AuditEvent, KeyPurpose, KeyRecord, Outcome};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{ApiError, AppState};

/// How long a CRL is valid; it is regenerated on every revocation and when a request
/// finds it within a day of its nextUpdate.
pub(crate) const CRL_VALIDITY_DAYS: i64 = 7;
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
    pub(crate) fn crl_url(&self, ca: &str) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}/crl/{ca}.crl"))
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn corrupt(what: &str) -> ApiError {
    ApiError::Store(influxion_store::StoreError::Corrupt(what.to_owned()))
}

pub(crate) fn build_err(e: build::BuildError) -> ApiError {
    match e {
        build::BuildError::BadCaCertificate(m) => ApiError::BadCaCertificate(m),
        build::BuildError::BadKeyCertificate(m) => ApiError::BadKeyCertificate(m),
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
        // A CA outlives its certificates: no 112-bit RSA-2048 CA keys.
        KeyType::Rsa2048 | KeyType::Ed25519 => None,
    }
}

/// How much work `f` does around the CA key's one signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// One certificate: a few microseconds of encoding, so it runs on the request's own
    /// thread when the backend signs the key inline (a software EC key), as a
    /// signature does on the signing route, instead of through a blocking thread.
    OneCertificate,
    /// Unbounded (a CRL lists every revoked serial) or rare (a CA's own certificate):
    /// always on a blocking thread.
    Blocking,
}

/// Run `f` with the CA key; the key's signatures go through the key backend, so the
/// private key never leaves it. The one place a CA key signs.
pub(crate) async fn with_ca_key<T: Send + 'static>(
    st: &AppState,
    key: &KeyRecord,
    work: Work,
    f: impl FnOnce(&CaKey<'_>) -> Result<T, build::BuildError> + Send + 'static,
) -> Result<T, ApiError> {
    let (alg, sign_alg) = ca_alg(key.key_type).ok_or_else(|| {
        ApiError::InvalidRequest(format!("{} keys cannot be CA keys", key.key_type))
    })?;
    // Resolved once, before the blocking task: an unconfigured backend is a 503 here.
    let backend = st.backends.for_key(key)?.clone();
    if work == Work::OneCertificate && backend.signs_inline(key.key_type) {
        let signer = |digest: &[u8]| {
            let d = Digest::new(sign_alg, digest.to_vec()).map_err(|e| e.to_string())?;
            backend
                .sign_inline(&key.id, key.key_type, &key.handle, &d)
                .map_err(|e| e.to_string())
        };
        let ca_key = CaKey::new(alg, &key.public_key, signer).map_err(build_err)?;
        return f(&ca_key).map_err(build_err);
    }
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

// ---------------------------------------------------------------------------------
// Reading CAs and profiles

pub(crate) async fn ca_key_record(st: &AppState, ca: &CaRecord) -> Result<KeyRecord, ApiError> {
    st.store
        .get_key_by_id(&ca.key_id)
        .await?
        .ok_or_else(|| corrupt("CA key missing"))
}

pub(crate) async fn lookup_ca(st: &AppState, name: &str) -> Result<CaRecord, ApiError> {
    st.store
        .get_ca(name)
        .await?
        .ok_or_else(|| ApiError::UnknownCa(name.to_owned()))
}

/// An active CA with its certificate and key.
pub(crate) async fn active_ca(
    st: &AppState,
    name: &str,
) -> Result<(CaRecord, Vec<u8>, KeyRecord), ApiError> {
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
pub(crate) fn chain_ders(ca: &CaRecord) -> Result<Vec<Vec<u8>>, ApiError> {
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

pub(crate) fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| encode::cert_pem(d)).collect()
}

pub(crate) async fn lookup_profile(
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

// ---------------------------------------------------------------------------------
// Create a CA

/// A CA to create: a root, an intermediate under a CA held here (`parent`), or an
/// intermediate whose CSR an external root signs (`external`).
pub(crate) struct NewCa {
    /// CA names appear in URLs and key names: the key-name rules apply.
    pub name: KeyName,
    pub key_type: KeyType,
    pub subject: CaSubject,
    pub validity_days: Option<u32>,
    pub parent: Option<String>,
    pub external: bool,
    /// Where the CA key is made (`azure-keyvault`); None: the default backend.
    pub backend: Option<String>,
}

/// Create a CA as `actor` (the caller has checked permissions): its key, its
/// certificate or CSR, the CA record and its audit event, and a first CRL.
pub(crate) async fn create_ca(
    st: &AppState,
    actor: &Actor,
    req: NewCa,
) -> Result<CaRecord, ApiError> {
    let NewCa {
        name,
        key_type,
        subject,
        validity_days,
        parent,
        external,
        backend,
    } = req;
    if ca_alg(key_type).is_none() {
        return Err(ApiError::InvalidRequest(format!(
            "{key_type} keys cannot be CA keys (use ec-p256, ec-p384, rsa-3072 or rsa-4096)"
        )));
    }
    subject.validate().map_err(build_err)?;
    if parent.is_some() && external {
        return Err(ApiError::InvalidRequest(
            "give either parent or external, not both".into(),
        ));
    }
    let max = influxion_pki::profile::MAX_VALIDITY_DAYS * 2;
    let validity = validity_days.unwrap_or(if parent.is_some() || external {
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
    let parent_ca = match &parent {
        Some(parent) => Some(active_ca(st, parent).await?),
        None => None,
    };

    let key = super::keys::generate(
        &st.backends,
        backend.as_deref(),
        key_name,
        key_type,
        actor,
        KeyPurpose::Ca,
    )
    .await?;
    let (status, certificate, chain_pem, csr_pem, mode) = if external {
        let s = subject.clone();
        let csr = with_ca_key(st, &key, Work::Blocking, move |k| {
            build::intermediate_csr(&s, k)
        })
        .await?;
        (
            CaStatus::Pending,
            None,
            String::new(),
            Some(csr),
            "external",
        )
    } else if let Some((pca, pcert, pkey)) = &parent_ca {
        let s = subject.clone();
        let spki = key.public_key.clone();
        let pc = pcert.clone();
        let cert = with_ca_key(st, pkey, Work::Blocking, move |k| {
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
        let cert = with_ca_key(st, &key, Work::Blocking, move |k| {
            build::root_certificate(&s, validity, k)
        })
        .await?;
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
    let serial = parent
        .as_ref()
        .and(facts.as_ref())
        .map(|f| f.serial_hex.clone());
    let record = CaRecord {
        name: name.to_string(),
        key_id: key.id.clone(),
        status,
        subject: serde_json::to_string(&subject).map_err(|_| corrupt("subject"))?,
        parent: parent.clone(),
        csr_pem,
        certificate,
        chain_pem,
        not_after,
        crl_number: 0,
        crl: None,
        crl_next_update: None,
        created_at: influxion_store::now_rfc3339(),
        created_by: actor.clone(),
        serial: serial.clone(),
        revoked_at: None,
        revocation_reason: None,
    };
    // Where the CA key lives (backend, token and object id, vault key) beside the rest.
    let mut detail = st.backends.describe(&key);
    for (k, v) in [
        ("mode", serde_json::json!(mode)),
        ("key_type", key_type.as_str().into()),
        ("parent", serde_json::json!(parent)),
        ("serial", serde_json::json!(serial)),
        ("subject", serde_json::json!(subject)),
    ] {
        detail.insert(k.into(), v);
    }
    let event = AuditEvent::new(actor.clone(), "ca.create", Outcome::Ok)
        .target(name.to_string())
        .detail(serde_json::Value::Object(detail));
    st.store.create_ca(key, record.clone(), event).await?;
    if record.status == CaStatus::Active {
        regenerate_crl(st, name.as_str(), actor).await?;
    }
    lookup_ca(st, name.as_str()).await
}

// ---------------------------------------------------------------------------------
// Issue a certificate

/// What issuing under a profile needs: the profile, its active CA with certificate and
/// key, and the chain above the certificates it issues.
pub(crate) struct IssuanceContext {
    pub spec: ProfileSpec,
    pub ca: CaRecord,
    pub ca_cert: Vec<u8>,
    pub key: KeyRecord,
    pub chain: Vec<Vec<u8>>,
}

impl IssuanceContext {
    /// Read the profile `profile` and its CA, which must be active.
    pub(crate) async fn load(st: &AppState, profile: &str) -> Result<Self, ApiError> {
        let (_, spec) = lookup_profile(st, profile).await?;
        let (ca, ca_cert, key) = active_ca(st, &spec.ca).await?;
        let chain = chain_ders(&ca)?;
        Ok(Self {
            spec,
            ca,
            ca_cert,
            key,
            chain,
        })
    }
}

/// Sign `cert` with the profile's CA and record it with its audit event (the store
/// re-checks the CA, its key and the device quota when it commits). Returns the record
/// and the chain above the certificate. A certificate signed but then refused by the
/// store is audited as discarded.
pub(crate) async fn issue_certificate(
    st: &AppState,
    actor: &Actor,
    profile: &str,
    ctx: &IssuanceContext,
    cert: CertSpec,
    request_key: Option<String>,
    key_generated: bool,
) -> Result<(CertRecord, Vec<Vec<u8>>), ApiError> {
    let started = std::time::Instant::now();
    let issued = sign_and_record(st, actor, profile, ctx, cert, request_key, key_generated).await;
    st.metrics.issue(issued.is_ok(), started.elapsed());
    issued
}

/// The CA key's signature and the certificate's record (the issuance latency).
async fn sign_and_record(
    st: &AppState,
    actor: &Actor,
    profile: &str,
    ctx: &IssuanceContext,
    cert: CertSpec,
    request_key: Option<String>,
    key_generated: bool,
) -> Result<(CertRecord, Vec<Vec<u8>>), ApiError> {
    let (ca, key, spec) = (&ctx.ca, &ctx.key, &ctx.spec);
    let serial = build::random_serial();
    let crl_url = st.pki.crl_url(&ca.name);
    let subject = cert.subject_line();
    let device_id = cert.device_id.clone();
    let ca_cert = ctx.ca_cert.clone();
    let (der, facts) = with_ca_key(st, key, Work::OneCertificate, move |k| {
        build::device_certificate(&cert, &serial, &ca_cert, k, crl_url.as_deref())
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
        requested_by: actor.clone(),
        issued_at: influxion_store::now_rfc3339(),
        key_generated,
        request_key,
        status: "valid".into(),
        revoked_at: None,
        revocation_reason: None,
    };
    let mut detail = serde_json::json!({
        "serial": record.serial,
        "ca": ca.name,
        "device_id": device_id,
        "subject": subject,
        "key_generated": key_generated,
    });
    // Where the CA key signed (backend, vault, key, version).
    for (k, v) in st.backends.describe(key) {
        detail[k] = v;
    }
    let event = AuditEvent::new(actor.clone(), "cert.issue", Outcome::Ok)
        .target(profile.to_owned())
        .detail(detail);
    if let Err(e) = st
        .store
        .record_certificate(record.clone(), &key.id, spec.max_per_device, event)
        .await
    {
        // The CA key has signed a certificate that is now thrown away (quota reached,
        // CA disabled or request key taken meanwhile): that use of the key is recorded
        // too, with the serial that will never be seen.
        let e = ApiError::from(e);
        let discarded = AuditEvent::new(actor.clone(), "cert.discard", Outcome::Refused)
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

/// Issue a code-signing certificate for signing key `key` under `profile` (its CA
/// signs; the profile must give extendedKeyUsage codeSigning and allow the key's type)
/// and give it to the key with the CA's chain. The key never leaves its backend and
/// the keyserver holds it, so no CSR proves possession. Two records: `cert.issue`
/// with the certificate, `key.certificate` with the key.
pub(crate) async fn certify_key(
    st: &AppState,
    actor: &Actor,
    key: KeyRecord,
    profile: &str,
) -> Result<KeyRecord, ApiError> {
    if key.purpose == KeyPurpose::Ca {
        return Err(ApiError::CaKey(key.name.to_string()));
    }
    if key.status != KeyStatus::Active {
        return Err(ApiError::KeyDisabled(key.name.to_string()));
    }
    let ctx = IssuanceContext::load(st, profile).await?;
    if !ctx
        .spec
        .extended_key_usage
        .contains(&influxion_pki::profile::ExtKeyUsage::CodeSigning)
    {
        return Err(ApiError::InvalidProfile(format!(
            "profile {profile} does not give extendedKeyUsage codeSigning, which a signing key's certificate needs"
        )));
    }
    if !ctx
        .spec
        .key_types
        .iter()
        .any(|t| t.as_str() == key.key_type.as_str())
    {
        return Err(ApiError::InvalidProfile(format!(
            "profile {profile} issues for {}, not {}",
            ctx.spec.allowed_key_types(),
            key.key_type
        )));
    }
    // Key names may hold '.', which device ids (and DNS labels) may not.
    let device_id = key.name.as_str().replace('.', "-");
    let spec = ctx.spec.spec_for(&device_id, key.public_key.clone())?;
    let (record, chain) = issue_certificate(st, actor, profile, &ctx, spec, None, false).await?;
    let mut full = vec![record.der.clone()];
    full.extend(chain);
    crate::service::keys::set_certificate(
        &st.store,
        actor,
        key,
        full,
        serde_json::json!({"profile": profile, "ca": ctx.ca.name, "serial": record.serial}),
    )
    .await
}

// ---------------------------------------------------------------------------------
// Issue a CRL

/// Build and store a new CRL for `ca` from the revocations on record.
pub(crate) async fn regenerate_crl(
    st: &AppState,
    ca_name: &str,
    actor: &Actor,
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
        let crl_number = u64::try_from(number).map_err(|_| corrupt("CRL number"))?;
        let validity = time::Duration::days(CRL_VALIDITY_DAYS);
        let der = with_ca_key(st, &key, Work::Blocking, move |k| {
            build::crl(&cert, k, crl_number, &entries, validity)
        })
        .await?;
        let next_update = rfc3339(OffsetDateTime::now_utc() + validity);
        let event = AuditEvent::new(actor.clone(), "crl.issue", Outcome::Ok)
            .target(ca_name.to_owned())
            .detail(serde_json::json!({"crl_number": number, "revoked": revoked.len()}));
        match st
            .store
            .store_crl(ca_name, number, der, next_update, event)
            .await
        {
            Ok(_) => return Ok(()),
            Err(influxion_store::StoreError::CrlOutdated { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(corrupt("CRL generation kept losing races"))
}

/// Create or replace profile `name` and record `profile.create` or `profile.update`
/// for `actor`. Returns the stored record and whether it was created. Who may bind a
/// profile to its CA is the caller's check; what makes a profile valid is here.
pub async fn put_profile(
    st: &AppState,
    actor: &Actor,
    name: &KeyName,
    spec: ProfileSpec,
) -> Result<(ProfileRecord, bool), ApiError> {
    spec.validate()
        .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
    let ca = lookup_ca(st, &spec.ca).await.map_err(|_| {
        ApiError::InvalidProfile(format!("invalid profile: no CA named {}", spec.ca))
    })?;
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
    let event = AuditEvent::new(actor.clone(), action, Outcome::Ok)
        .target(name.to_string())
        .detail(serde_json::to_value(&spec).unwrap_or_default());
    st.store.put_profile(record.clone(), create, event).await?;
    Ok((record, create))
}

//! Keys: creation on a backend, and policy changes that take effect at once.

use influxion_core::{
    Actor, BackendError, Backends, ExistingKey, KeyName, KeyPolicy, KeyStatus, KeyType,
};
use influxion_store::{AuditEvent, KeyPurpose, KeyRecord, Outcome, Rebind, Store};

use crate::ApiError;

/// The backend a caller named (`None`: the default one).
fn backend_named<'a>(
    backends: &'a Backends,
    name: Option<&str>,
) -> Result<&'a std::sync::Arc<dyn influxion_core::KeyBackend>, ApiError> {
    match name {
        // Naming a backend this keyserver lacks is the caller's mistake, not an outage.
        // A kind (`pkcs11`) stands for its only configured backend; with several
        // tokens the caller names one (`pkcs11:line-1`).
        Some(b) => backends.resolve(b).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "no single key backend {b:?} is configured here (configured: {})",
                backends.names().collect::<Vec<_>>().join(", ")
            ))
        }),
        None => Ok(backends.default_backend()),
    }
}

/// A DER certificate chain as PEM, leaf first; `None` for no chain.
fn chain_pem(chain: &[Vec<u8>]) -> Option<String> {
    (!chain.is_empty()).then(|| {
        chain
            .iter()
            .map(|c| influxion_pki::encode::cert_pem(c))
            .collect()
    })
}

/// Bind a key that exists in `backend` as a new signing key `name`, and record
/// `key.import` (with where the key lives) in the same transaction.
pub async fn import(
    store: &Store,
    backends: &Backends,
    actor: &Actor,
    name: KeyName,
    backend: &str,
    existing: ExistingKey,
) -> Result<KeyRecord, ApiError> {
    if store.get_key(&name).await?.is_some() {
        return Err(ApiError::KeyExists(name.to_string()));
    }
    let b = backend_named(backends, Some(backend))?;
    let id = uuid::Uuid::new_v4().to_string();
    let bound = b.bind(&id, &existing).await?;
    let record = KeyRecord {
        id,
        name,
        key_type: bound.key_type,
        backend: b.name().to_owned(),
        status: KeyStatus::Active,
        public_key: bound.public_key_der,
        handle: bound.handle,
        created_at: influxion_store::now_rfc3339(),
        created_by: actor.clone(),
        policy: KeyPolicy::default(),
        purpose: KeyPurpose::Sign,
        certificate_pem: chain_pem(&bound.certificate_chain),
    };
    let mut detail = backends.describe(&record);
    detail.insert("key_type".into(), record.key_type.as_str().into());
    detail.insert("certificates".into(), bound.certificate_chain.len().into());
    if let ExistingKey::TokenKey {
        allow_extractable: true,
        ..
    } = existing
    {
        detail.insert("allow_extractable".into(), true.into());
    }
    let event = AuditEvent::new(actor.clone(), "key.import", Outcome::Ok)
        .target(record.name.to_string())
        .detail(serde_json::Value::Object(detail));
    store.insert_key(record.clone(), event).await?;
    Ok(record)
}

/// Bind `key` to another version of its backend key (`version`, or the newest), and
/// record `key.rotate` with both versions in the same transaction. The public key
/// changes: verifiers that pinned the old one must fetch the new one.
pub async fn rotate(
    store: &Store,
    backends: &Backends,
    actor: &Actor,
    key: KeyRecord,
    version: Option<&str>,
) -> Result<KeyRecord, ApiError> {
    if key.purpose == KeyPurpose::Ca {
        // A CA's certificate certifies this public key; a new key needs a new CA.
        return Err(ApiError::CaKey(key.name.to_string()));
    }
    let bound = backends.rotate(&key, version).await?;
    if bound.handle == key.handle {
        return Err(BackendError::Unfit(format!(
            "key {} is already bound to that version; nothing to rotate",
            key.name
        ))
        .into());
    }
    let rotated = KeyRecord {
        public_key: bound.public_key_der,
        handle: bound.handle,
        certificate_pem: chain_pem(&bound.certificate_chain),
        ..key.clone()
    };
    let event = AuditEvent::new(actor.clone(), "key.rotate", Outcome::Ok)
        .target(key.name.to_string())
        .detail(serde_json::json!({
            "from": backends.describe(&key),
            "to": backends.describe(&rotated),
            "public_key_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&rotated.public_key)),
        }));
    store
        .rebind_key(
            Rebind {
                key_id: key.id.clone(),
                expected_handle: key.handle,
                handle: rotated.handle.clone(),
                public_key: rotated.public_key.clone(),
                certificate_pem: rotated.certificate_pem.clone(),
            },
            event,
        )
        .await?;
    Ok(rotated)
}

/// A new key made by a backend, as the store will keep it (not yet stored: a CA key
/// is stored in the same transaction as its CA). `backend` names a configured backend;
/// `None` is the default one.
pub async fn generate(
    backends: &Backends,
    backend: Option<&str>,
    name: KeyName,
    key_type: KeyType,
    created_by: &Actor,
    purpose: KeyPurpose,
) -> Result<KeyRecord, ApiError> {
    let backend = backend_named(backends, backend)?;
    let id = uuid::Uuid::new_v4().to_string();
    let generated = backend.generate(&id, key_type).await.map_err(|e| match e {
        influxion_core::BackendError::Unsupported(kt) => ApiError::UnsupportedKeyType {
            backend: backend.name().to_owned(),
            key_type: kt.as_str().to_owned(),
        },
        other => other.into(),
    })?;
    Ok(KeyRecord {
        id,
        name,
        key_type,
        backend: backend.name().to_owned(),
        status: KeyStatus::Active,
        public_key: generated.public_key_der,
        handle: generated.handle,
        created_at: influxion_store::now_rfc3339(),
        created_by: created_by.clone(),
        policy: KeyPolicy::default(),
        purpose,
        certificate_pem: None,
    })
}

/// Create a signing key and record `key.create` for `actor`.
pub async fn create(
    store: &Store,
    backends: &Backends,
    actor: &Actor,
    name: KeyName,
    key_type: KeyType,
    backend: Option<&str>,
) -> Result<KeyRecord, ApiError> {
    if store.get_key(&name).await?.is_some() {
        return Err(ApiError::KeyExists(name.to_string()));
    }
    let record = generate(backends, backend, name, key_type, actor, KeyPurpose::Sign).await?;
    let event = AuditEvent::new(actor.clone(), "key.create", Outcome::Ok)
        .target(record.name.to_string())
        .detail(serde_json::json!({"key_type": key_type.as_str(), "backend": record.backend}));
    store.insert_key(record.clone(), event).await?;
    Ok(record)
}

/// Replace `key`'s policy now and record `key.policy` with what changed. Whether the
/// change may take effect at once (it does not weaken, or the caller may act alone)
/// is the caller's decision; a weakening otherwise goes through a policy change.
pub async fn set_policy(
    store: &Store,
    actor: &Actor,
    key: KeyRecord,
    policy: KeyPolicy,
) -> Result<KeyRecord, ApiError> {
    let event = AuditEvent::new(actor.clone(), "key.policy", Outcome::Ok)
        .target(key.name.to_string())
        .detail(serde_json::json!({
            "before": key.policy,
            "after": policy,
            "weakens": key.policy.weakenings(&policy),
        }));
    store
        .set_key_policy(&key.id, &key.policy, policy.clone(), event)
        .await?;
    Ok(KeyRecord { policy, ..key })
}

/// Give signing key `key` the certificate chain `chain` (DER, leaf first), checked
/// against the key (see [`influxion_pki::build::check_signer_chain`]), and record
/// `key.certificate` in the same transaction. Formats that carry a signer's chain
/// (CMS, Authenticode) use it; `GET /v1/keys/{name}/certificate` serves it.
pub async fn set_certificate(
    store: &Store,
    actor: &Actor,
    key: KeyRecord,
    chain: Vec<Vec<u8>>,
    source: serde_json::Value,
) -> Result<KeyRecord, ApiError> {
    if key.purpose == KeyPurpose::Ca {
        return Err(ApiError::CaKey(key.name.to_string()));
    }
    let leaf = influxion_pki::build::check_signer_chain(&chain, &key.public_key)
        .map_err(crate::service::pki::build_err)?;
    let certified = KeyRecord {
        certificate_pem: chain_pem(&chain),
        ..key.clone()
    };
    let event = AuditEvent::new(actor.clone(), "key.certificate", Outcome::Ok)
        .target(key.name.to_string())
        .detail(serde_json::json!({
            "subject": leaf.subject,
            "issuer": leaf.issuer,
            "serial": leaf.serial_hex,
            "not_after": crate::service::pki::rfc3339(leaf.not_after),
            "certificates": chain.len(),
            "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&chain[0])),
            "source": source,
        }));
    store
        .rebind_key(
            Rebind {
                key_id: key.id.clone(),
                expected_handle: key.handle.clone(),
                handle: key.handle.clone(),
                public_key: key.public_key.clone(),
                certificate_pem: certified.certificate_pem.clone(),
            },
            event,
        )
        .await?;
    Ok(certified)
}

//! Keys: creation on a backend, and policy changes that take effect at once.

use influxion_core::{Actor, Backends, KeyName, KeyPolicy, KeyStatus, KeyType};
use influxion_store::{AuditEvent, KeyPurpose, KeyRecord, Outcome, Store};

use crate::ApiError;

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
    let backend = match backend {
        // Naming a backend this keyserver lacks is the caller's mistake, not an outage.
        Some(b) => backends.get(b).map_err(|_| {
            ApiError::InvalidRequest(format!(
                "no key backend {b:?} is configured here (configured: {})",
                backends.names().collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => backends.default_backend(),
    };
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

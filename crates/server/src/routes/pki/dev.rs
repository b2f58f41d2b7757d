//! Development seeding (`influxion dev`): a root CA, a device profile and a
//! code-signing profile for it, and code-signing certificates for the demo keys.

use influxion_core::{Actor, KeyName, KeyType};
use influxion_pki::{CaSubject, ProfileSpec};

use crate::service::pki::{create_ca, put_profile, NewCa};
use crate::{ApiError, AppState};

const DEV_CA: &str = "dev-device-ca";

/// Development mode: a root CA `dev-device-ca` and a profile `device` for it, once.
pub async fn ensure_dev_ca(st: &AppState) -> Result<(), ApiError> {
    let actor = &Actor::id_only("system:dev");
    if st.store.get_ca(DEV_CA).await?.is_none() {
        let name: KeyName = DEV_CA.parse()?;
        let req = NewCa {
            name,
            key_type: KeyType::EcP256,
            subject: CaSubject {
                common_name: "Influxion Development Device CA".into(),
                organization: Some("Influxion development".into()),
                organizational_unit: None,
                country: None,
            },
            validity_days: Some(3650),
            parent: None,
            external: false,
            backend: None,
        };
        create_ca(st, actor, req).await?;
    }
    if st.store.get_profile("device").await?.is_none() {
        let spec: ProfileSpec = serde_json::from_value(serde_json::json!({
            "ca": DEV_CA,
            "validity_days": 365,
            "key_types": ["ec-p256", "ec-p384", "ed25519"],
            "subject": {"common_name": "{device_id}", "organization": "Influxion development"},
            "san_dns": ["{device_id}.devices.influxion.test"],
            "max_per_device": 0,
        }))
        .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
        put_profile(st, actor, &"device".parse()?, spec).await?;
    }
    if st.store.get_profile(CODE_SIGNING).await?.is_none() {
        let spec: ProfileSpec = serde_json::from_value(serde_json::json!({
            "ca": DEV_CA,
            "validity_days": 365,
            "key_types": ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"],
            "extended_key_usage": ["code_signing"],
            "subject": {"common_name": "{device_id}", "organization": "Influxion development code signing"},
            "max_per_device": 0,
            "allow_server_keygen": false,
        }))
        .map_err(|e| ApiError::InvalidProfile(e.to_string()))?;
        put_profile(st, actor, &CODE_SIGNING.parse()?, spec).await?;
    }
    Ok(())
}

const CODE_SIGNING: &str = "code-signing";

/// Development mode: each of `keys` without a certificate gets one from the
/// `code-signing` profile, so every signature format works from the quick start.
pub async fn ensure_dev_code_signing(st: &AppState, keys: &[&str]) -> Result<(), ApiError> {
    let actor = &Actor::id_only("system:dev");
    for name in keys {
        let Some(key) = st.store.get_key(&name.parse()?).await? else {
            continue;
        };
        if key.certificate_pem.is_none() {
            crate::service::pki::certify_key(st, actor, key, CODE_SIGNING).await?;
        }
    }
    Ok(())
}

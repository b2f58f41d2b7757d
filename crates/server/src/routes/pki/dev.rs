//! Development seeding (`influxion dev`): a root CA and a device profile for it.

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
    Ok(())
}

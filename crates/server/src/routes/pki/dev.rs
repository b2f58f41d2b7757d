//! Development seeding (`influxion dev`): a root CA and a device profile for it.

use influxion_core::{KeyName, KeyType};
use influxion_pki::{CaSubject, ProfileSpec};
use influxion_store::pki::ProfileRecord;
use influxion_store::{AuditEvent, Outcome};

use crate::service::pki::{corrupt, create_ca, NewCa};
use crate::{ApiError, AppState};

const DEV_CA: &str = "dev-device-ca";

/// Development mode: a root CA `dev-device-ca` and a profile `device` for it, once.
pub async fn ensure_dev_ca(st: &AppState) -> Result<(), ApiError> {
    let actor = "system:dev";
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

//! Keys as the store keeps them.

use influxion_core::{KeyName, KeyPolicy, KeyStatus, KeyType};

/// A key as the store keeps it.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub name: KeyName,
    pub key_type: KeyType,
    pub backend: String,
    pub status: KeyStatus,
    pub public_key: Vec<u8>,
    pub handle: Vec<u8>,
    pub created_at: String,
    /// Who made it: identity and label at the time.
    pub created_by: influxion_core::Actor,
    pub policy: KeyPolicy,
    /// `Sign` keys sign digests over the API; `Ca` keys only their CA's certificates.
    pub purpose: KeyPurpose,
    /// The key's certificate chain, PEM, leaf first, when it has one.
    pub certificate_pem: Option<String>,
}

/// A key bound again: another version of the same backend key (rotation). Applied only
/// if the key still has `expected_handle`, so two rotations never silently race.
#[derive(Debug, Clone)]
pub struct Rebind {
    pub key_id: String,
    pub expected_handle: Vec<u8>,
    pub handle: Vec<u8>,
    pub public_key: Vec<u8>,
    pub certificate_pem: Option<String>,
}

/// The registry finds a key's backend by the name recorded with it.
impl influxion_core::BackendKey for KeyRecord {
    fn backend_name(&self) -> &str {
        &self.backend
    }
    fn key_id(&self) -> &str {
        &self.id
    }
    fn key_type(&self) -> KeyType {
        self.key_type
    }
    fn handle(&self) -> &[u8] {
        &self.handle
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPurpose {
    #[default]
    Sign,
    Ca,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPurpose::Sign => "sign",
            KeyPurpose::Ca => "ca",
        }
    }
}

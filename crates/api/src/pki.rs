//! The device CA: `/v1/cas`, `/v1/profiles`, `/v1/certificates`.
//!
//! The server still builds these views from its store and PKI types (`routes/pki.rs`,
//! being split); these types describe the same JSON, and the server's tests check
//! that each answer reads back into them unchanged.

use influxion_core::KeyType;
use serde::{Deserialize, Serialize};

/// Usage counters of a CA.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CaCounters {
    pub issued: i64,
    pub revoked: i64,
}

/// A CA as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaView {
    pub name: String,
    /// pending, active, disabled or revoked.
    pub status: String,
    pub subject: serde_json::Value,
    pub key: String,
    pub key_type: KeyType,
    pub parent: Option<String>,
    /// Serial of this CA's certificate, when a CA held here (`parent`) issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// This CA's certificate followed by its issuers.
    pub chain_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    pub crl_number: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_next_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_url: Option<String>,
    pub counters: CaCounters,
    pub created_at: String,
    /// Who made it: `id` is `kind:tenant/object`; `label` is what to show.
    pub created_by: influxion_core::Actor,
}

/// `GET /v1/cas`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaList {
    pub cas: Vec<CaView>,
}

/// A certificate profile as the API shows it: its name, the specification (see
/// docs/pki.md) and when it was set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileView {
    pub name: String,
    pub ca: String,
    pub validity_days: u32,
    pub key_types: Vec<String>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub subject: serde_json::Value,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
    pub allow_subject_override: bool,
    /// Valid certificates per device id (0: no limit).
    pub max_per_device: u32,
    pub crl_distribution_point: bool,
    pub allow_server_keygen: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/profiles`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileList {
    pub profiles: Vec<ProfileView>,
}

/// An issued certificate's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertView {
    pub serial: String,
    pub ca: String,
    pub profile: String,
    pub device_id: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    /// Who had it issued: `id` is `kind:tenant/object`; `label` is what to show.
    pub requested_by: influxion_core::Actor,
    pub issued_at: String,
    pub key_generated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    /// valid or revoked.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// `GET /v1/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertList {
    pub certificates: Vec<CertView>,
}

/// A certificate with its chain (`?format=json` of issuance, show and revoke), and the
/// private key when the keyserver generated it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedView {
    #[serde(flatten)]
    pub record: CertView,
    pub certificate_pem: String,
    /// Issuing CA first, up to the root.
    pub chain_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12_base64: Option<String>,
}

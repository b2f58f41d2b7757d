//! Records of the device certificate authority: CAs, profiles, issued certificates and
//! CRLs. Writes go through the single writer with their audit record; the rules
//! (unique serials, per-device quotas, CA active at commit, monotonic CRL numbers) are
//! in `rules.rs` and checked inside that transaction.

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaStatus {
    Pending,
    Active,
    Disabled,
}

impl CaStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CaStatus::Pending => "pending",
            CaStatus::Active => "active",
            CaStatus::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaRecord {
    pub name: String,
    pub key_id: String,
    pub status: CaStatus,
    /// JSON of the CA subject as requested.
    pub subject: String,
    pub parent: Option<String>,
    pub csr_pem: Option<String>,
    pub certificate: Option<Vec<u8>>,
    pub chain_pem: String,
    pub not_after: Option<String>,
    pub crl_number: i64,
    pub crl: Option<Vec<u8>>,
    pub crl_next_update: Option<String>,
    pub created_at: String,
    /// Who made it: identity and label at the time.
    pub created_by: influxion_core::Actor,
    /// Hex serial of this CA's own certificate, recorded under its parent.
    pub serial: Option<String>,
    /// Set when the parent revoked this CA's certificate (the CA is then disabled).
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProfileRecord {
    pub name: String,
    pub ca: String,
    /// JSON of the profile.
    pub spec: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CertRecord {
    pub serial: String,
    pub ca: String,
    pub profile: String,
    pub device_id: String,
    pub subject: String,
    pub not_before: String,
    pub not_after: String,
    #[serde(skip)]
    pub der: Vec<u8>,
    /// Who asked for it (audit identity `kind:tenant/object`) and their label.
    pub requested_by: influxion_core::Actor,
    pub issued_at: String,
    pub key_generated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_key: Option<String>,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
}

/// Search filter for issued certificates; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    pub device_id: Option<String>,
    pub serial: Option<String>,
    /// Substring of the subject line.
    pub subject: Option<String>,
    pub profile: Option<String>,
    pub ca: Option<String>,
    pub status: Option<String>,
    pub limit: u32,
    /// Profile-name patterns (`*` globs over `[a-z0-9._-]`) the caller may see; `None`
    /// means every profile. Applied in SQL, before the limit.
    pub visible: Option<Vec<String>>,
}

/// Revoked entries of one CA, for its CRL.
#[derive(Debug, Clone)]
pub struct RevokedRow {
    pub serial: String,
    pub revoked_at: String,
    pub reason: String,
}

/// Usage counters of a CA.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CaCounters {
    pub issued: i64,
    pub revoked: i64,
}

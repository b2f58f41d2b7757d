//! `/v1/keys`: keys and their approval policies.

use influxion_core::{KeyPolicy, KeyStatus, KeyType, SignAlgorithm};
use serde::{Deserialize, Serialize};

/// A key as the API shows it: `GET /v1/keys/{name}` and the answer of every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    pub key_type: KeyType,
    pub algorithms: Vec<SignAlgorithm>,
    pub default_algorithm: SignAlgorithm,
    pub backend: String,
    pub status: KeyStatus,
    /// `sign` (signs digests over the API) or `ca` (signs its CA's certificates only).
    pub purpose: String,
    pub created_at: String,
    /// Who made it: `id` is `kind:tenant/object`; `label` is what to show.
    pub created_by: influxion_core::Actor,
    pub policy: KeyPolicy,
    pub public_key_pem: String,
    pub public_key_jwk: serde_json::Value,
    /// The key has a certificate chain (`GET /v1/keys/{name}/certificate`).
    #[serde(default)]
    pub has_certificate: bool,
    /// Where the key lives in its backend: vault, vault key and version; empty for the
    /// software keystore.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub location: serde_json::Map<String, serde_json::Value>,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// `POST /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub key_type: String,
    /// The key backend to create it in (`software`, `azure-keyvault`, `pkcs11` or
    /// `pkcs11:TOKEN` with several tokens); default: the keyserver's default backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// `POST /v1/keys/{name}/import`: bind a key that already exists in a backend. Exactly
/// one of `vault_key` and `vault_certificate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// A Key Vault key, `NAME` (its newest version, pinned now) or `NAME/VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_key: Option<String>,
    /// A Key Vault certificate: its key signs, its chain is served with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_certificate: Option<String>,
    /// With `vault_certificate`: read the private key from the certificate's secret
    /// (for vaults that grant only secrets/get) and hold it in memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_secret: bool,
    /// A private key on the PKCS#11 token, by its `CKA_LABEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_label: Option<String>,
    /// A private key on the PKCS#11 token, by its `CKA_ID`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_id: Option<String>,
    /// Accept a token key that the token would let out (extractable or not
    /// sensitive); the import's audit record says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_extractable: bool,
    /// The backend the key is in, when several of its kind are configured
    /// (`pkcs11:line-1`); default: the only one of the source's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// `POST /v1/keys/{name}/rotate`: bind another version of the key's backend key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The version to bind; default: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `PUT /v1/keys/{name}/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Approvals needed (M); 0 turns approval off.
    pub approvals_required: u32,
    /// Seconds a request waits before it expires (default 1 day, at most 30 days).
    pub approval_ttl_secs: Option<u32>,
    /// Subjects allowed to approve; empty = any subject with the approver role on the key.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Why; shown to approvers when the change weakens the policy and waits for them.
    pub reason: Option<String>,
}

/// `PUT /v1/keys/{name}/certificate`: the key's certificate chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCertificate {
    /// PEM certificates, leaf first; the leaf carries the key's public key.
    pub chain: String,
}

/// `POST /v1/keys/{name}/certify`: a code-signing certificate from a profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyKey {
    /// A certificate profile with extendedKeyUsage codeSigning.
    pub profile: String,
}

//! Certificate profiles: what a certificate issued for a device may contain, and the
//! check of a CSR against it. The result, [`CertSpec`], is built only from the profile
//! and vetted values; CSR extensions are never copied.

use serde::{Deserialize, Serialize};

use crate::csr::{Csr, DeviceKeyType};

/// Longest validity a profile may give, in days (devices live long; 30 years).
pub const MAX_VALIDITY_DAYS: u32 = 10_950;
/// Upper bound of X.520 name attributes (RFC 5280 ub-common-name and friends).
const MAX_ATTR_LEN: usize = 64;
const DEVICE_ID_PLACEHOLDER: &str = "{device_id}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsage {
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
}

impl KeyUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DigitalSignature => "digital_signature",
            Self::ContentCommitment => "content_commitment",
            Self::KeyEncipherment => "key_encipherment",
            Self::DataEncipherment => "data_encipherment",
            Self::KeyAgreement => "key_agreement",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtKeyUsage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
}

impl ExtKeyUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerAuth => "server_auth",
            Self::ClientAuth => "client_auth",
            Self::CodeSigning => "code_signing",
            Self::EmailProtection => "email_protection",
            Self::TimeStamping => "time_stamping",
        }
    }
}

/// The subject of issued certificates. Values may contain `{device_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTemplate {
    #[serde(default = "default_cn")]
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// ISO 3166 two-letter code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

fn default_cn() -> String {
    DEVICE_ID_PLACEHOLDER.to_owned()
}

impl Default for SubjectTemplate {
    fn default() -> Self {
        Self {
            common_name: default_cn(),
            serial_number: None,
            organizational_unit: None,
            organization: None,
            locality: None,
            state: None,
            country: None,
        }
    }
}

impl SubjectTemplate {
    /// `(short name, template)` pairs in the order they appear in the name (C first).
    fn attrs(&self) -> Vec<(&'static str, &str)> {
        let mut v = Vec::new();
        for (name, value) in [
            ("C", &self.country),
            ("ST", &self.state),
            ("L", &self.locality),
            ("O", &self.organization),
            ("OU", &self.organizational_unit),
        ] {
            if let Some(value) = value {
                v.push((name, value.as_str()));
            }
        }
        v.push(("CN", self.common_name.as_str()));
        if let Some(sn) = &self.serial_number {
            v.push(("serialNumber", sn.as_str()));
        }
        v
    }
}

/// A certificate profile as stored and as sent over the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Name of the issuing CA.
    pub ca: String,
    #[serde(default = "default_validity")]
    pub validity_days: u32,
    #[serde(default = "default_key_types")]
    pub key_types: Vec<DeviceKeyType>,
    #[serde(default = "default_key_usage")]
    pub key_usage: Vec<KeyUsage>,
    #[serde(default = "default_eku")]
    pub extended_key_usage: Vec<ExtKeyUsage>,
    #[serde(default)]
    pub subject: SubjectTemplate,
    /// DNS subjectAltName templates, e.g. `{device_id}.devices.example.com`.
    #[serde(default)]
    pub san_dns: Vec<String>,
    /// URI subjectAltName templates, e.g. `urn:example:device:{device_id}`.
    #[serde(default)]
    pub san_uri: Vec<String>,
    /// Whether the CSR's subject may replace the template's values (attribute by
    /// attribute, for the attributes the template names).
    #[serde(default)]
    pub allow_subject_override: bool,
    /// Certificates per device id that are not revoked; 0 means no limit.
    #[serde(default)]
    pub max_per_device: u32,
    /// Put the CA's CRL URL into issued certificates.
    #[serde(default = "yes")]
    pub crl_distribution_point: bool,
    /// Allow server-side key generation (PKCS#12 / PEM pair) with this profile.
    #[serde(default = "yes")]
    pub allow_server_keygen: bool,
}

fn default_validity() -> u32 {
    365
}
fn default_key_types() -> Vec<DeviceKeyType> {
    vec![DeviceKeyType::EcP256]
}
fn default_key_usage() -> Vec<KeyUsage> {
    vec![KeyUsage::DigitalSignature]
}
fn default_eku() -> Vec<ExtKeyUsage> {
    vec![ExtKeyUsage::ClientAuth]
}
fn yes() -> bool {
    true
}

/// Why a profile is not coherent: one variant per rule, so callers and tests name
/// the rule, not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid profile: validity_days must be 1 to {MAX_VALIDITY_DAYS}")]
    ValidityDays,
    #[error("invalid profile: key_types must name at least one key type")]
    NoKeyTypes,
    #[error("invalid profile: key_usage must name at least one usage")]
    NoKeyUsage,
    #[error("invalid profile: key_encipherment and data_encipherment need RSA-only key_types")]
    EnciphermentNeedsRsa,
    #[error("invalid profile: key_agreement needs EC-only key_types")]
    KeyAgreementNeedsEc,
    #[error("invalid profile: subject.country must be two upper-case letters")]
    Country,
    #[error("invalid profile: subject.serial_number must be PrintableString characters")]
    SerialNumberCharacters,
    #[error("invalid profile: subject {attribute}: the only placeholder is {{device_id}}")]
    UnknownPlaceholder { attribute: String },
    #[error("invalid profile: subject {attribute} must be 1 to 64 printable characters")]
    SubjectValue { attribute: String },
    #[error("invalid profile: san_dns {template:?} is not a DNS name template")]
    DnsTemplate { template: String },
    #[error("invalid profile: san_uri {template:?} is not a URI template")]
    UriTemplate { template: String },
    #[error("invalid profile: at most 16 subjectAltName templates")]
    TooManySans,
}

/// The four kinds of [`PolicyError`], which the HTTP layer maps to its problem types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRule {
    DeviceId,
    KeyType,
    Extension,
    Subject,
}

/// Why a CSR or device id does not fit a profile: one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid device id: must be 1 to 64 characters")]
    DeviceIdLength,
    #[error(
        "invalid device id: use letters, digits, '_' and '-', starting with a letter or digit"
    )]
    DeviceIdCharacters,
    #[error("invalid device id: no device id given and the CSR has no common name")]
    NoDeviceId,
    #[error("invalid device id: {attribute} would be too long")]
    RenderedTooLong { attribute: String },
    #[error("invalid device id: serialNumber {value:?} must be a PrintableString")]
    SerialNumberNotPrintable { value: String },
    #[error("invalid device id: {name:?} is not a valid DNS name for this profile")]
    RenderedDnsName { name: String },
    #[error("invalid device id: {uri:?} is not a valid URI for this profile")]
    RenderedUri { uri: String },
    #[error("key type {key_type} is not allowed by this profile (allowed: {allowed})")]
    KeyType {
        key_type: DeviceKeyType,
        allowed: String,
    },
    #[error("the CSR requests an extension this profile forbids: basicConstraints with cA=TRUE")]
    CaRequested,
    #[error("the CSR requests an extension this profile forbids: {extension}")]
    UnknownExtension { extension: String },
    #[error("the CSR requests an extension this profile forbids: keyUsage {usage}")]
    KeyUsage { usage: String },
    #[error("the CSR requests an extension this profile forbids: extendedKeyUsage {usage}")]
    ExtendedKeyUsage { usage: String },
    #[error("the CSR requests an extension this profile forbids: subjectAltName DNS {name:?}")]
    DnsName { name: String },
    #[error("the CSR requests an extension this profile forbids: subjectAltName URI {uri:?}")]
    Uri { uri: String },
    #[error("the CSR subject is not allowed by this profile: multi-valued RDNs are not accepted")]
    MultiValuedRdn,
    #[error("the CSR subject is not allowed by this profile: {attribute} appears twice")]
    RepeatedAttribute { attribute: String },
    #[error("the CSR subject is not allowed by this profile: attribute {attribute} is not part of the profile's subject")]
    AttributeNotInProfile { attribute: String },
    #[error("the CSR subject is not allowed by this profile: {attribute}={requested:?} differs from the profile's {expected:?}")]
    NoOverride {
        attribute: String,
        expected: String,
        requested: String,
    },
    #[error("the CSR subject is not allowed by this profile: {attribute} has an invalid value")]
    AttributeValue { attribute: String },
    /// An attribute the profile derives from `{device_id}` names someone else: one
    /// device's request must not yield a certificate naming another device.
    #[error("the CSR subject names another device: {attribute}={requested:?}, but this profile derives {attribute} from the device id ({expected:?}); it may not be overridden")]
    NotTheDevice {
        attribute: String,
        expected: String,
        requested: String,
    },
}

impl PolicyError {
    /// Which kind of rule was broken.
    pub fn rule(&self) -> PolicyRule {
        use PolicyError::*;
        match self {
            DeviceIdLength
            | DeviceIdCharacters
            | NoDeviceId
            | RenderedTooLong { .. }
            | SerialNumberNotPrintable { .. }
            | RenderedDnsName { .. }
            | RenderedUri { .. } => PolicyRule::DeviceId,
            KeyType { .. } => PolicyRule::KeyType,
            CaRequested
            | UnknownExtension { .. }
            | KeyUsage { .. }
            | ExtendedKeyUsage { .. }
            | DnsName { .. }
            | Uri { .. } => PolicyRule::Extension,
            MultiValuedRdn
            | RepeatedAttribute { .. }
            | AttributeNotInProfile { .. }
            | NoOverride { .. }
            | AttributeValue { .. }
            | NotTheDevice { .. } => PolicyRule::Subject,
        }
    }
}

/// Everything an issued certificate carries besides issuer, serial and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub device_id: String,
    /// `(short name, value)` in order.
    pub subject: Vec<(String, String)>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub key_usage: Vec<KeyUsage>,
    pub extended_key_usage: Vec<ExtKeyUsage>,
    pub validity_days: u32,
    pub crl_distribution_point: bool,
    pub spki_der: Vec<u8>,
}

impl CertSpec {
    /// The subject as one line, `C=DE, O=Acme, CN=1234`, for records and search.
    pub fn subject_line(&self) -> String {
        self.subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Device ids become part of names and DNS labels: letters, digits, `_`, `-`, 1–64
/// characters, starting with a letter or digit. No `.`: one device's id must not put
/// its DNS names under another's (`x.dev-7.devices.example`).
pub fn validate_device_id(id: &str) -> Result<(), PolicyError> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if id.is_empty() || id.len() > MAX_ATTR_LEN {
        return Err(PolicyError::DeviceIdLength);
    }
    if !ok_chars || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(PolicyError::DeviceIdCharacters);
    }
    Ok(())
}

fn render(template: &str, device_id: &str) -> String {
    template.replace(DEVICE_ID_PLACEHOLDER, device_id)
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    !rest.is_empty()
        && uri.len() <= 512
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && uri.chars().all(|c| c.is_ascii_graphic())
}

fn valid_attr_value(v: &str) -> bool {
    !v.is_empty() && v.chars().count() <= MAX_ATTR_LEN && !v.chars().any(char::is_control)
}

impl ProfileSpec {
    /// Check the profile is coherent; run before storing it.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.validity_days == 0 || self.validity_days > MAX_VALIDITY_DAYS {
            return Err(ProfileError::ValidityDays);
        }
        if self.key_types.is_empty() {
            return Err(ProfileError::NoKeyTypes);
        }
        if self.key_usage.is_empty() {
            return Err(ProfileError::NoKeyUsage);
        }
        let enc = self
            .key_usage
            .iter()
            .any(|u| matches!(u, KeyUsage::KeyEncipherment | KeyUsage::DataEncipherment));
        if enc && !self.key_types.iter().all(|k| k.is_rsa()) {
            return Err(ProfileError::EnciphermentNeedsRsa);
        }
        let agree = self.key_usage.contains(&KeyUsage::KeyAgreement);
        if agree
            && !self
                .key_types
                .iter()
                .all(|k| matches!(k, DeviceKeyType::EcP256 | DeviceKeyType::EcP384))
        {
            return Err(ProfileError::KeyAgreementNeedsEc);
        }
        // Render every template with a long sample id to check sizes and syntax.
        let sample = "a".repeat(MAX_ATTR_LEN);
        for (name, t) in self.subject.attrs() {
            if name == "C" {
                if t.len() != 2 || !t.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(ProfileError::Country);
                }
                continue;
            }
            if name == "serialNumber"
                && !render(t, "x")
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
            {
                return Err(ProfileError::SerialNumberCharacters);
            }
            if t.contains('{') && !t.contains(DEVICE_ID_PLACEHOLDER) {
                return Err(ProfileError::UnknownPlaceholder {
                    attribute: name.to_owned(),
                });
            }
            if !valid_attr_value(&render(t, "x")) {
                return Err(ProfileError::SubjectValue {
                    attribute: name.to_owned(),
                });
            }
        }
        for t in &self.san_dns {
            if !valid_dns_name(&render(t, "x")) || render(t, &sample).len() > 253 {
                return Err(ProfileError::DnsTemplate {
                    template: t.clone(),
                });
            }
        }
        for t in &self.san_uri {
            if !valid_uri(&render(t, "x")) {
                return Err(ProfileError::UriTemplate {
                    template: t.clone(),
                });
            }
        }
        if self.san_dns.len() + self.san_uri.len() > 16 {
            return Err(ProfileError::TooManySans);
        }
        Ok(())
    }

    /// Whether the subject attribute `name` (short name) comes from `{device_id}`.
    fn derives_from_device_id(&self, name: &str) -> bool {
        self.subject
            .attrs()
            .iter()
            .any(|(n, t)| *n == name && t.contains(DEVICE_ID_PLACEHOLDER))
    }

    /// Subject attributes rendered for a device.
    fn rendered_subject(&self, device_id: &str) -> Vec<(String, String)> {
        self.subject
            .attrs()
            .into_iter()
            .map(|(n, t)| (n.to_owned(), render(t, device_id)))
            .collect()
    }

    /// Check `csr` against the profile for `device_id`; the device id defaults to the
    /// CSR's common name.
    pub fn enforce(&self, csr: &Csr, device_id: Option<&str>) -> Result<CertSpec, PolicyError> {
        let device_id = match device_id {
            Some(d) => d,
            None => csr.common_name().ok_or(PolicyError::NoDeviceId)?,
        };
        validate_device_id(device_id)?;
        if !self.key_types.contains(&csr.key_type) {
            return Err(PolicyError::KeyType {
                key_type: csr.key_type,
                allowed: self.allowed_key_types(),
            });
        }
        let spec = self.spec_for(device_id, csr.spki_der.clone())?;

        let req = &csr.requested;
        if req.ca {
            return Err(PolicyError::CaRequested);
        }
        if let Some(other) = req.other.first() {
            return Err(PolicyError::UnknownExtension {
                extension: other.clone(),
            });
        }
        for ku in &req.key_usage {
            if !self.key_usage.iter().any(|k| k.as_str() == ku) {
                return Err(PolicyError::KeyUsage { usage: ku.clone() });
            }
        }
        for eku in &req.extended_key_usage {
            if !self.extended_key_usage.iter().any(|k| k.as_str() == eku) {
                return Err(PolicyError::ExtendedKeyUsage { usage: eku.clone() });
            }
        }
        for dns in &req.dns_names {
            if !spec.dns_names.iter().any(|d| d.eq_ignore_ascii_case(dns)) {
                return Err(PolicyError::DnsName { name: dns.clone() });
            }
        }
        for uri in &req.uris {
            if !spec.uris.contains(uri) {
                return Err(PolicyError::Uri { uri: uri.clone() });
            }
        }

        if csr.multi_valued_rdn {
            return Err(PolicyError::MultiValuedRdn);
        }
        let mut subject = spec.subject.clone();
        let mut seen = Vec::new();
        for attr in &csr.subject {
            if seen.contains(&attr.name) {
                return Err(PolicyError::RepeatedAttribute {
                    attribute: attr.name.clone(),
                });
            }
            seen.push(attr.name.clone());
            let Some(slot) = subject.iter_mut().find(|(n, _)| *n == attr.name) else {
                return Err(PolicyError::AttributeNotInProfile {
                    attribute: attr.name.clone(),
                });
            };
            if slot.1 == attr.value {
                continue;
            }
            // Attributes rendered from {device_id} identify the device: an override
            // (allowed or not) may not replace them with another name.
            if self.derives_from_device_id(&attr.name) {
                return Err(PolicyError::NotTheDevice {
                    attribute: attr.name.clone(),
                    expected: slot.1.clone(),
                    requested: short(&attr.value),
                });
            }
            if !self.allow_subject_override {
                return Err(PolicyError::NoOverride {
                    attribute: attr.name.clone(),
                    expected: slot.1.clone(),
                    requested: short(&attr.value),
                });
            }
            let country_ok = attr.name != "C"
                || (attr.value.len() == 2 && attr.value.chars().all(|c| c.is_ascii_uppercase()));
            if !valid_attr_value(&attr.value) || !country_ok {
                return Err(PolicyError::AttributeValue {
                    attribute: attr.name.clone(),
                });
            }
            slot.1 = attr.value.clone();
        }
        Ok(CertSpec { subject, ..spec })
    }

    /// The certificate content for `device_id` without a CSR (server-side keys).
    pub fn spec_for(&self, device_id: &str, spki_der: Vec<u8>) -> Result<CertSpec, PolicyError> {
        validate_device_id(device_id)?;
        let subject = self.rendered_subject(device_id);
        for (name, value) in &subject {
            if !valid_attr_value(value) {
                return Err(PolicyError::RenderedTooLong {
                    attribute: name.clone(),
                });
            }
        }
        if let Some((_, sn)) = subject.iter().find(|(n, _)| n == "serialNumber") {
            // serialNumber is a PrintableString: no '_' among others.
            let printable = sn
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c));
            if !printable {
                return Err(PolicyError::SerialNumberNotPrintable { value: sn.clone() });
            }
        }
        let dns_names: Vec<String> = self.san_dns.iter().map(|t| render(t, device_id)).collect();
        if let Some(bad) = dns_names.iter().find(|d| !valid_dns_name(d)) {
            return Err(PolicyError::RenderedDnsName { name: bad.clone() });
        }
        let uris: Vec<String> = self.san_uri.iter().map(|t| render(t, device_id)).collect();
        if let Some(bad) = uris.iter().find(|u| !valid_uri(u)) {
            return Err(PolicyError::RenderedUri { uri: bad.clone() });
        }
        Ok(CertSpec {
            device_id: device_id.to_owned(),
            subject,
            dns_names,
            uris,
            key_usage: self.key_usage.clone(),
            extended_key_usage: self.extended_key_usage.clone(),
            validity_days: self.validity_days,
            crl_distribution_point: self.crl_distribution_point,
            spki_der,
        })
    }

    pub fn allowed_key_types(&self) -> String {
        self.key_types
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::csr::{Requested, SubjectAttr};

    fn profile() -> ProfileSpec {
        serde_json::from_value(serde_json::json!({
            "ca": "devices",
            "subject": {"common_name": "{device_id}", "organization": "Acme", "country": "DE"},
            "san_dns": ["{device_id}.devices.acme.test"],
        }))
        .unwrap()
    }

    fn csr(subject: &[(&str, &str)], requested: Requested) -> Csr {
        Csr {
            spki_der: vec![1, 2, 3],
            key_type: DeviceKeyType::EcP256,
            subject: subject
                .iter()
                .map(|(n, v)| SubjectAttr {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            multi_valued_rdn: false,
            requested,
        }
    }

    #[test]
    fn defaults_validate() {
        profile().validate().unwrap();
    }

    #[test]
    fn rendered_subject_and_san() {
        let spec = profile()
            .enforce(&csr(&[("CN", "dev-7")], Requested::default()), None)
            .unwrap();
        assert_eq!(spec.subject_line(), "C=DE, O=Acme, CN=dev-7");
        assert_eq!(spec.dns_names, vec!["dev-7.devices.acme.test"]);
    }

    #[test]
    fn injected_attribute_is_refused() {
        let err = profile()
            .enforce(
                &csr(&[("CN", "dev-7"), ("O", "Evil")], Requested::default()),
                None,
            )
            .unwrap_err();
        assert_eq!(
            err,
            PolicyError::NoOverride {
                attribute: "O".into(),
                expected: "Acme".into(),
                requested: "Evil".into()
            }
        );
        let err = profile()
            .enforce(
                &csr(&[("CN", "dev-7"), ("2.5.4.12", "x")], Requested::default()),
                None,
            )
            .unwrap_err();
        assert_eq!(
            err,
            PolicyError::AttributeNotInProfile {
                attribute: "2.5.4.12".into()
            }
        );
        assert_eq!(err.rule(), PolicyRule::Subject);
    }

    #[test]
    fn cn_mismatching_device_id_is_refused() {
        let err = profile()
            .enforce(
                &csr(&[("CN", "other")], Requested::default()),
                Some("dev-7"),
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::NotTheDevice { .. }), "{err:?}");
    }

    #[test]
    fn device_id_with_separator_is_refused() {
        for id in ["a,O=x", "a/b", "-a", "a b", "x.dev-7"] {
            assert_eq!(
                validate_device_id(id),
                Err(PolicyError::DeviceIdCharacters),
                "{id}"
            );
        }
        for id in ["", &"x".repeat(65)] {
            assert_eq!(
                validate_device_id(id),
                Err(PolicyError::DeviceIdLength),
                "{id}"
            );
        }
    }

    #[test]
    fn extensions_outside_profile_are_refused() {
        let cases = [
            (
                Requested {
                    ca: true,
                    ..Default::default()
                },
                PolicyError::CaRequested,
            ),
            (
                Requested {
                    other: vec!["1.2.3.4".into()],
                    ..Default::default()
                },
                PolicyError::UnknownExtension {
                    extension: "1.2.3.4".into(),
                },
            ),
            (
                Requested {
                    key_usage: vec!["key_cert_sign".into()],
                    ..Default::default()
                },
                PolicyError::KeyUsage {
                    usage: "key_cert_sign".into(),
                },
            ),
            (
                Requested {
                    extended_key_usage: vec!["server_auth".into()],
                    ..Default::default()
                },
                PolicyError::ExtendedKeyUsage {
                    usage: "server_auth".into(),
                },
            ),
            (
                Requested {
                    dns_names: vec!["evil.example".into()],
                    ..Default::default()
                },
                PolicyError::DnsName {
                    name: "evil.example".into(),
                },
            ),
        ];
        for (r, want) in cases {
            let err = profile()
                .enforce(&csr(&[], r.clone()), Some("d1"))
                .unwrap_err();
            assert_eq!(err, want, "{r:?}");
            assert_eq!(err.rule(), PolicyRule::Extension);
        }
        let ok = Requested {
            dns_names: vec!["d1.devices.acme.test".into()],
            key_usage: vec!["digital_signature".into()],
            ..Default::default()
        };
        profile().enforce(&csr(&[], ok), Some("d1")).unwrap();
    }

    #[test]
    fn override_allowed_replaces_values() {
        let mut p = profile();
        p.allow_subject_override = true;
        let spec = p
            .enforce(
                &csr(&[("CN", "d1"), ("O", "Acme Sub")], Requested::default()),
                Some("d1"),
            )
            .unwrap();
        assert_eq!(spec.subject_line(), "C=DE, O=Acme Sub, CN=d1");
    }

    #[test]
    fn override_cannot_name_another_device() {
        let mut p = profile();
        p.allow_subject_override = true;
        p.subject.serial_number = Some("SN-{device_id}".into());
        for (attr, value, expected) in [
            ("CN", "victim", "d1"),
            ("serialNumber", "SN-victim", "SN-d1"),
        ] {
            let err = p
                .enforce(&csr(&[(attr, value)], Requested::default()), Some("d1"))
                .unwrap_err();
            assert_eq!(
                err,
                PolicyError::NotTheDevice {
                    attribute: attr.into(),
                    expected: expected.into(),
                    requested: value.into(),
                }
            );
        }
        // A CN that is not derived from the device id may still be overridden.
        p.subject.common_name = "Acme device".into();
        p.san_dns.clear();
        let spec = p
            .enforce(
                &csr(&[("CN", "Acme sensor")], Requested::default()),
                Some("d1"),
            )
            .unwrap();
        assert_eq!(
            spec.subject_line(),
            "C=DE, O=Acme, CN=Acme sensor, serialNumber=SN-d1"
        );
    }

    #[test]
    fn incoherent_profiles_are_refused() {
        let mut p = profile();
        p.key_usage = vec![KeyUsage::KeyEncipherment];
        assert!(p.validate().is_err());
        let mut p = profile();
        p.subject.country = Some("Germany".into());
        assert!(p.validate().is_err());
        let mut p = profile();
        p.san_dns = vec!["{device_id}..x".into()];
        assert!(p.validate().is_err());
        let mut p = profile();
        p.validity_days = 0;
        assert!(p.validate().is_err());
    }
}

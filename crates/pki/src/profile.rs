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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid profile: {0}")]
    Invalid(String),
}

/// Why a CSR or device id does not fit a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid device id: {0}")]
    DeviceId(String),
    #[error("key type {0} is not allowed by this profile (allowed: {1})")]
    KeyType(DeviceKeyType, String),
    #[error("the CSR requests an extension this profile forbids: {0}")]
    Extension(String),
    #[error("the CSR subject is not allowed by this profile: {0}")]
    Subject(String),
    /// An attribute the profile derives from `{device_id}` names someone else: one
    /// device's request must not yield a certificate naming another device.
    #[error("the CSR subject names another device: {attribute}={requested:?}, but this profile derives {attribute} from the device id ({expected:?}); it may not be overridden")]
    NotTheDevice {
        attribute: String,
        expected: String,
        requested: String,
    },
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
        return Err(PolicyError::DeviceId("must be 1 to 64 characters".into()));
    }
    if !ok_chars || !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(PolicyError::DeviceId(
            "use letters, digits, '_' and '-', starting with a letter or digit".into(),
        ));
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
        let bad = |m: String| Err(ProfileError::Invalid(m));
        if self.validity_days == 0 || self.validity_days > MAX_VALIDITY_DAYS {
            return bad(format!("validity_days must be 1 to {MAX_VALIDITY_DAYS}"));
        }
        if self.key_types.is_empty() {
            return bad("key_types must name at least one key type".into());
        }
        if self.key_usage.is_empty() {
            return bad("key_usage must name at least one usage".into());
        }
        let enc = self
            .key_usage
            .iter()
            .any(|u| matches!(u, KeyUsage::KeyEncipherment | KeyUsage::DataEncipherment));
        if enc && !self.key_types.iter().all(|k| k.is_rsa()) {
            return bad("key_encipherment and data_encipherment need RSA-only key_types".into());
        }
        let agree = self.key_usage.contains(&KeyUsage::KeyAgreement);
        if agree
            && !self
                .key_types
                .iter()
                .all(|k| matches!(k, DeviceKeyType::EcP256 | DeviceKeyType::EcP384))
        {
            return bad("key_agreement needs EC-only key_types".into());
        }
        // Render every template with a long sample id to check sizes and syntax.
        let sample = "a".repeat(MAX_ATTR_LEN);
        for (name, t) in self.subject.attrs() {
            if name == "C" {
                if t.len() != 2 || !t.chars().all(|c| c.is_ascii_uppercase()) {
                    return bad("subject.country must be two upper-case letters".into());
                }
                continue;
            }
            if name == "serialNumber"
                && !render(t, "x")
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c))
            {
                return bad("subject.serial_number must be PrintableString characters".into());
            }
            if t.contains('{') && !t.contains(DEVICE_ID_PLACEHOLDER) {
                return bad(format!(
                    "subject {name}: the only placeholder is {{device_id}}"
                ));
            }
            if !valid_attr_value(&render(t, "x")) {
                return bad(format!(
                    "subject {name} must be 1 to 64 printable characters"
                ));
            }
        }
        for t in &self.san_dns {
            if !valid_dns_name(&render(t, "x")) || render(t, &sample).len() > 253 {
                return bad(format!("san_dns {t:?} is not a DNS name template"));
            }
        }
        for t in &self.san_uri {
            if !valid_uri(&render(t, "x")) {
                return bad(format!("san_uri {t:?} is not a URI template"));
            }
        }
        if self.san_dns.len() + self.san_uri.len() > 16 {
            return bad("at most 16 subjectAltName templates".into());
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
            None => csr.common_name().ok_or_else(|| {
                PolicyError::DeviceId("no device id given and the CSR has no common name".into())
            })?,
        };
        validate_device_id(device_id)?;
        if !self.key_types.contains(&csr.key_type) {
            return Err(PolicyError::KeyType(csr.key_type, self.allowed_key_types()));
        }
        let spec = self.spec_for(device_id, csr.spki_der.clone())?;

        let req = &csr.requested;
        if req.ca {
            return Err(PolicyError::Extension(
                "basicConstraints with cA=TRUE".into(),
            ));
        }
        if let Some(other) = req.other.first() {
            return Err(PolicyError::Extension(other.clone()));
        }
        for ku in &req.key_usage {
            if !self.key_usage.iter().any(|k| k.as_str() == ku) {
                return Err(PolicyError::Extension(format!("keyUsage {ku}")));
            }
        }
        for eku in &req.extended_key_usage {
            if !self.extended_key_usage.iter().any(|k| k.as_str() == eku) {
                return Err(PolicyError::Extension(format!("extendedKeyUsage {eku}")));
            }
        }
        for dns in &req.dns_names {
            if !spec.dns_names.iter().any(|d| d.eq_ignore_ascii_case(dns)) {
                return Err(PolicyError::Extension(format!(
                    "subjectAltName DNS {dns:?}"
                )));
            }
        }
        for uri in &req.uris {
            if !spec.uris.contains(uri) {
                return Err(PolicyError::Extension(format!(
                    "subjectAltName URI {uri:?}"
                )));
            }
        }

        if csr.multi_valued_rdn {
            return Err(PolicyError::Subject(
                "multi-valued RDNs are not accepted".into(),
            ));
        }
        let mut subject = spec.subject.clone();
        let mut seen = Vec::new();
        for attr in &csr.subject {
            if seen.contains(&attr.name) {
                return Err(PolicyError::Subject(format!("{} appears twice", attr.name)));
            }
            seen.push(attr.name.clone());
            let Some(slot) = subject.iter_mut().find(|(n, _)| *n == attr.name) else {
                return Err(PolicyError::Subject(format!(
                    "attribute {} is not part of the profile's subject",
                    attr.name
                )));
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
                return Err(PolicyError::Subject(format!(
                    "{}={:?} differs from the profile's {:?}",
                    attr.name,
                    short(&attr.value),
                    slot.1
                )));
            }
            let country_ok = attr.name != "C"
                || (attr.value.len() == 2 && attr.value.chars().all(|c| c.is_ascii_uppercase()));
            if !valid_attr_value(&attr.value) || !country_ok {
                return Err(PolicyError::Subject(format!(
                    "{} has an invalid value",
                    attr.name
                )));
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
                return Err(PolicyError::DeviceId(format!("{name} would be too long")));
            }
        }
        if let Some((_, sn)) = subject.iter().find(|(n, _)| n == "serialNumber") {
            // serialNumber is a PrintableString: no '_' among others.
            let printable = sn
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c));
            if !printable {
                return Err(PolicyError::DeviceId(format!(
                    "serialNumber {sn:?} must be a PrintableString"
                )));
            }
        }
        let dns_names: Vec<String> = self.san_dns.iter().map(|t| render(t, device_id)).collect();
        if let Some(bad) = dns_names.iter().find(|d| !valid_dns_name(d)) {
            return Err(PolicyError::DeviceId(format!(
                "{bad:?} is not a valid DNS name for this profile"
            )));
        }
        let uris: Vec<String> = self.san_uri.iter().map(|t| render(t, device_id)).collect();
        if let Some(bad) = uris.iter().find(|u| !valid_uri(u)) {
            return Err(PolicyError::DeviceId(format!(
                "{bad:?} is not a valid URI for this profile"
            )));
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
        assert!(matches!(err, PolicyError::Subject(_)));
        let err = profile()
            .enforce(
                &csr(&[("CN", "dev-7"), ("2.5.4.12", "x")], Requested::default()),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, PolicyError::Subject(_)));
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
        for id in ["a,O=x", "a/b", "", "-a", "a b", "x.dev-7", &"x".repeat(65)] {
            assert!(validate_device_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn extensions_outside_profile_are_refused() {
        let cases = [
            Requested {
                ca: true,
                ..Default::default()
            },
            Requested {
                other: vec!["1.2.3.4".into()],
                ..Default::default()
            },
            Requested {
                key_usage: vec!["key_cert_sign".into()],
                ..Default::default()
            },
            Requested {
                extended_key_usage: vec!["server_auth".into()],
                ..Default::default()
            },
            Requested {
                dns_names: vec!["evil.example".into()],
                ..Default::default()
            },
        ];
        for r in cases {
            let err = profile()
                .enforce(&csr(&[], r.clone()), Some("d1"))
                .unwrap_err();
            assert!(matches!(err, PolicyError::Extension(_)), "{r:?}");
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

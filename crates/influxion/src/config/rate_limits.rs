//! `[rate_limits]`: signatures and certificates per minute, per subject. Only in the
//! configuration file (not the database, not the environment): a limit is part of a
//! deployment, reviewed with it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use influxion_server::{PerMinute, RateLimits};
use serde::{Deserialize, Serialize};

use super::{err, ConfigError};

/// The defaults for every subject, and `[rate_limits.subjects."<id or name>"]` entries.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileRateLimits {
    pub signatures_per_minute: Option<u32>,
    pub certificates_per_minute: Option<u32>,
    #[serde(default)]
    pub subjects: BTreeMap<String, FileSubjectLimits>,
}

/// One subject's limits; a missing one is the default's.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSubjectLimits {
    pub signatures_per_minute: Option<u32>,
    pub certificates_per_minute: Option<u32>,
}

/// A limit of 0 is refused: it would deny everything, which is what removing the
/// subject's grant says; no limit at all is the setting left out.
fn per_minute(
    v: Option<u32>,
    setting: &'static str,
    whose: &str,
) -> Result<Option<NonZeroU32>, ConfigError> {
    v.map(|n| {
        NonZeroU32::new(n).ok_or_else(|| {
            err(
                setting,
                format!(
                    "{whose}: 0 is not a limit; leave it out for no limit, or revoke the grant"
                ),
            )
        })
    })
    .transpose()
}

/// Subject ids and names alike: 1 to 64 of a-z, 0-9, '.', '_' and '-'.
fn subject_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

pub(crate) fn rate_limits(file: &FileRateLimits) -> Result<RateLimits, ConfigError> {
    let default = PerMinute {
        signatures: per_minute(
            file.signatures_per_minute,
            "rate_limits.signatures_per_minute",
            "the default",
        )?,
        certificates: per_minute(
            file.certificates_per_minute,
            "rate_limits.certificates_per_minute",
            "the default",
        )?,
    };
    let mut subjects = BTreeMap::new();
    for (k, s) in &file.subjects {
        if !subject_key(k) {
            return Err(err(
                "rate_limits.subjects.<subject>",
                format!("{k:?} is not a subject id or name (1 to 64 of a-z, 0-9, '.', '_', '-')"),
            ));
        }
        let whose = format!("subject {k}");
        let p = PerMinute {
            signatures: per_minute(
                s.signatures_per_minute,
                "rate_limits.subjects.<subject>.signatures_per_minute",
                &whose,
            )?,
            certificates: per_minute(
                s.certificates_per_minute,
                "rate_limits.subjects.<subject>.certificates_per_minute",
                &whose,
            )?,
        };
        subjects.insert(k.clone(), p);
    }
    Ok(RateLimits { default, subjects })
}

/// The `[rate_limits]` part of `config check`.
pub(crate) fn describe(r: &RateLimits) -> String {
    let n = |v: Option<NonZeroU32>| v.map_or_else(|| "\"unlimited\"".to_owned(), |n| n.to_string());
    let mut out = format!(
        "[rate_limits]\nsignatures_per_minute = {}\ncertificates_per_minute = {}\n",
        n(r.default.signatures),
        n(r.default.certificates)
    );
    // A subject's missing limit is the default's: shown as such.
    for (k, p) in &r.subjects {
        out.push_str(&format!(
            "\n[rate_limits.subjects.{k:?}]\nsignatures_per_minute = {}\ncertificates_per_minute = {}\n",
            n(p.signatures.or(r.default.signatures)),
            n(p.certificates.or(r.default.certificates))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn parse(toml: &str) -> Result<RateLimits, ConfigError> {
        let file: FileConfig = toml::from_str(toml).map_err(|e| err("--config", e.to_string()))?;
        rate_limits(&file.rate_limits)
    }

    #[test]
    fn absent_is_unlimited() {
        assert_eq!(parse("").unwrap(), RateLimits::default());
        assert_eq!(parse("[rate_limits]\n").unwrap(), RateLimits::default());
    }

    #[test]
    fn defaults_and_subject_entries() {
        let r = parse(
            "[rate_limits]\nsignatures_per_minute = 600\ncertificates_per_minute = 300\n\
             [rate_limits.subjects.\"line-3\"]\nsignatures_per_minute = 10\n\
             [rate_limits.subjects.0b8c3a52-1111-4000-8000-000000000001]\ncertificates_per_minute = 5\n",
        )
        .unwrap();
        assert_eq!(r.default.signatures, NonZeroU32::new(600));
        assert_eq!(r.default.certificates, NonZeroU32::new(300));
        let line = r.subjects["line-3"];
        assert_eq!(line.signatures, NonZeroU32::new(10));
        assert_eq!(line.certificates, None);
        let by_id = r.subjects["0b8c3a52-1111-4000-8000-000000000001"];
        assert_eq!(by_id.certificates, NonZeroU32::new(5));
        let text = describe(&r);
        assert!(
            text.contains("[rate_limits.subjects.\"line-3\"]\nsignatures_per_minute = 10\ncertificates_per_minute = 300\n"),
            "{text}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        for bad in [
            "[rate_limits]\nsignature_per_minute = 5\n",
            "[rate_limits]\nburst = 5\n",
            "[rate_limits.subjects.ci]\nsignatures_per_hour = 5\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_and_negative_are_refused() {
        let e = parse("[rate_limits]\nsignatures_per_minute = 0\n").unwrap_err();
        assert_eq!(e.setting, "rate_limits.signatures_per_minute");
        let e = parse("[rate_limits.subjects.ci]\ncertificates_per_minute = 0\n").unwrap_err();
        assert_eq!(
            e.setting,
            "rate_limits.subjects.<subject>.certificates_per_minute"
        );
        assert!(e.message.contains("subject ci"), "{}", e.message);
        assert!(parse("[rate_limits]\nsignatures_per_minute = -1\n").is_err());
        assert!(parse("[rate_limits]\nsignatures_per_minute = \"10\"\n").is_err());
    }

    #[test]
    fn subject_keys_are_ids_or_names() {
        let e = parse("[rate_limits.subjects.\"CI Pipeline\"]\nsignatures_per_minute = 1\n")
            .unwrap_err();
        assert_eq!(e.setting, "rate_limits.subjects.<subject>");
        assert!(parse("[rate_limits.subjects.\"\"]\nsignatures_per_minute = 1\n").is_err());
    }
}

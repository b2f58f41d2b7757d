//! Subjects, roles and grants: who may do what, decided from the validated token.
//!
//! Pure functions over domain types; the store persists them and the HTTP layer asks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CallerKind, Principal};

/// What a grant allows, on keys (or profiles) whose name matches the grant's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including subjects and grants.
    Admin,
    /// Create and disable keys and set their policies.
    KeyAdmin,
    /// Sign with keys.
    Signer,
    /// Approve or reject signing requests for keys.
    Approver,
    /// Issue device certificates from profiles.
    Provisioner,
    /// Read the audit log and all records.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::KeyAdmin,
        Role::Signer,
        Role::Approver,
        Role::Provisioner,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::KeyAdmin => "key-admin",
            Role::Signer => "signer",
            Role::Approver => "approver",
            Role::Provisioner => "provisioner",
            Role::Auditor => "auditor",
        }
    }
}

impl FromStr for Role {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccessError::Role(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "unknown role {0:?}; roles are admin, key-admin, signer, approver, provisioner, auditor"
    )]
    Role(String),
    #[error("a pattern is 1-64 characters of a-z, 0-9, '.', '_', '-' and '*'")]
    Pattern,
    #[error("a subject needs at least one of object_id, app_id, app_role or group_id")]
    NoIdentityRule,
    #[error("subject name must be 1-64 characters of a-z, 0-9, '.', '_' or '-'")]
    SubjectName,
    #[error("{0} is longer than 256 characters")]
    TooLong(&'static str),
    #[error("unknown caller rule {0:?}; it is app, user or any")]
    Caller(String),
}

/// Which kind of caller a subject matches, by how the token was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerRule {
    /// App-only tokens (client credentials, workload identity).
    App,
    /// Delegated tokens: a person, through some application.
    User,
    Any,
}

impl CallerRule {
    pub fn as_str(self) -> &'static str {
        match self {
            CallerRule::App => "app",
            CallerRule::User => "user",
            CallerRule::Any => "any",
        }
    }

    pub fn admits(self, kind: CallerKind) -> bool {
        match self {
            CallerRule::Any => true,
            CallerRule::App => kind == CallerKind::App,
            CallerRule::User => kind == CallerKind::User,
        }
    }
}

impl FromStr for CallerRule {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [CallerRule::App, CallerRule::User, CallerRule::Any]
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| AccessError::Caller(s.to_owned()))
    }
}

/// Rules a principal must meet to be this subject: every rule that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `oid` of a person or service principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// `azp`/`appid` of the application that obtained the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// An app role in `roles` (client credentials and workload identity callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// App-only tokens, delegated tokens or both; unset means [`Self::caller_rule`]'s default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerRule>,
}

impl SubjectRules {
    /// Refuse rule sets that would match too broadly (issuer or tenant alone).
    pub fn validate(&self) -> Result<(), AccessError> {
        let fields = [
            (&self.issuer, "issuer"),
            (&self.tenant_id, "tenant_id"),
            (&self.object_id, "object_id"),
            (&self.app_id, "app_id"),
            (&self.app_role, "app_role"),
            (&self.group_id, "group_id"),
        ];
        for (v, name) in fields {
            if v.as_ref().is_some_and(|s| s.len() > 256) {
                return Err(AccessError::TooLong(name));
            }
        }
        let identity = [
            &self.object_id,
            &self.app_id,
            &self.app_role,
            &self.group_id,
        ];
        if identity
            .iter()
            .all(|v| v.as_deref().is_none_or(str::is_empty))
        {
            return Err(AccessError::NoIdentityRule);
        }
        Ok(())
    }

    /// The caller rule in force. Unset, a subject whose only identity rules are
    /// `app_id`/`app_role` matches apps alone: a person's delegated token carries the
    /// app it came through in `azp`, and users may be assigned app roles, so without
    /// this a subject written for a CI application would also match people.
    pub fn caller_rule(&self) -> CallerRule {
        if let Some(c) = self.caller {
            return c;
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if !set(&self.object_id)
            && !set(&self.group_id)
            && (set(&self.app_id) || set(&self.app_role))
        {
            CallerRule::App
        } else {
            CallerRule::Any
        }
    }

    /// The same rules with the caller rule written out, as they are stored.
    pub fn explicit(mut self) -> Self {
        self.caller = Some(self.caller_rule());
        self
    }

    pub fn matches(&self, p: &Principal) -> bool {
        fn rule(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
            }
        }
        self.caller_rule().admits(p.kind)
            && rule(&self.issuer, Some(&p.issuer))
            && rule(&self.tenant_id, p.tenant_id.as_deref())
            && rule(&self.object_id, Some(&p.object_id))
            && rule(&self.app_id, p.app_id.as_deref())
            && self.app_role.as_ref().is_none_or(|r| p.has_role(r))
            && self
                .group_id
                .as_ref()
                .is_none_or(|g| p.groups.iter().any(|x| x == g))
    }
}

/// Check a subject name (same alphabet as key names).
pub fn validate_subject_name(s: &str) -> Result<(), AccessError> {
    crate::KeyName::from_str(s)
        .map(|_| ())
        .map_err(|_| AccessError::SubjectName)
}

/// Check a grant pattern: a name with `*` wildcards.
pub fn validate_pattern(p: &str) -> Result<(), AccessError> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '*')
        });
    if ok {
        Ok(())
    } else {
        Err(AccessError::Pattern)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
///
/// Written here rather than with a glob crate: names are a small ASCII alphabet with no
/// path separators, classes or escapes, so a dozen lines are the whole job.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A role on a pattern, as held by a matched subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub role: Role,
    pub pattern: String,
}

/// What a caller may do: the grants of every subject it matched, added up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Permissions {
    pub subjects: Vec<String>,
    pub grants: Vec<Grant>,
}

impl Permissions {
    /// `role` on the object called `name` (admin implies every role).
    pub fn allows(&self, role: Role, name: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.role == Role::Admin || (g.role == role && pattern_matches(&g.pattern, name)))
    }

    /// `role` on anything at all.
    pub fn has_role(&self, role: Role) -> bool {
        self.grants
            .iter()
            .any(|g| g.role == Role::Admin || g.role == role)
    }

    /// A grant of exactly `role` on `name`, not the one admin implies. An admin may do
    /// anything; this asks whether the caller was also made, say, a signer of the key.
    pub fn holds_explicitly(&self, role: Role, name: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.role == role && pattern_matches(&g.pattern, name))
    }

    pub fn is_admin(&self) -> bool {
        self.grants.iter().any(|g| g.role == Role::Admin)
    }

    /// Matched at least one subject holding at least one grant.
    pub fn any(&self) -> bool {
        !self.grants.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("fw-*", "fw-prod"));
        assert!(!pattern_matches("fw-*", "xfw-prod"));
        assert!(pattern_matches("*-prod", "fw-prod"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "aXXcYYb"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exact2"));
        assert!(!pattern_matches("ab*ba", "aba"));
        assert!(validate_pattern("fw-*").is_ok());
        assert!(validate_pattern("FW").is_err());
        assert!(validate_pattern("").is_err());
    }

    fn principal() -> Principal {
        Principal {
            issuer: "https://iss".into(),
            tenant_id: Some("T1".into()),
            object_id: "o1".into(),
            app_id: Some("app1".into()),
            kind: CallerKind::App,
            scopes: vec![],
            roles: vec!["Influxion.Sign".into()],
            groups: vec!["g1".into()],
            name: None,
            username: None,
        }
    }

    #[test]
    fn rules_and_together() {
        let p = principal();
        let r = SubjectRules {
            tenant_id: Some("t1".into()),
            app_role: Some("Influxion.Sign".into()),
            ..Default::default()
        };
        assert!(r.matches(&p));
        let other_tenant = SubjectRules {
            tenant_id: Some("T2".into()),
            ..r.clone()
        };
        assert!(!other_tenant.matches(&p));
        assert!(SubjectRules {
            group_id: Some("g1".into()),
            ..Default::default()
        }
        .matches(&p));
        assert!(!SubjectRules {
            group_id: Some("g2".into()),
            ..Default::default()
        }
        .matches(&p));
        assert!(SubjectRules {
            issuer: Some("https://iss".into()),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn app_rules_match_apps_unless_told_otherwise() {
        let app = principal();
        let user = Principal {
            kind: CallerKind::User,
            ..principal()
        };
        let by_app = SubjectRules {
            app_id: Some("app1".into()),
            ..Default::default()
        };
        let by_role = SubjectRules {
            app_role: Some("Influxion.Sign".into()),
            ..Default::default()
        };
        for r in [&by_app, &by_role] {
            assert_eq!(r.caller_rule(), CallerRule::App);
            assert!(r.matches(&app));
            assert!(!r.matches(&user));
            let any = SubjectRules {
                caller: Some(CallerRule::Any),
                ..r.clone()
            };
            assert!(any.matches(&app) && any.matches(&user));
            let people = SubjectRules {
                caller: Some(CallerRule::User),
                ..r.clone()
            };
            assert!(!people.matches(&app) && people.matches(&user));
        }
        // A person or group rule keeps the old default: anyone the rules name.
        let person = SubjectRules {
            object_id: Some("o1".into()),
            app_id: Some("app1".into()),
            ..Default::default()
        };
        assert_eq!(person.caller_rule(), CallerRule::Any);
        assert!(person.matches(&user));
        assert_eq!(by_app.explicit().caller, Some(CallerRule::App));
        assert_eq!("user".parse::<CallerRule>(), Ok(CallerRule::User));
        assert!("people".parse::<CallerRule>().is_err());
    }

    #[test]
    fn admin_implies_everything() {
        let perms = Permissions {
            subjects: vec!["a".into()],
            grants: vec![Grant {
                id: "1".into(),
                role: Role::Admin,
                pattern: "x".into(),
            }],
        };
        for r in Role::ALL {
            assert!(perms.allows(r, "anything"));
        }
        let signer = Permissions {
            subjects: vec![],
            grants: vec![Grant {
                id: "1".into(),
                role: Role::Signer,
                pattern: "fw-*".into(),
            }],
        };
        assert!(signer.allows(Role::Signer, "fw-1"));
        assert!(!signer.allows(Role::Signer, "prod"));
        assert!(!signer.allows(Role::Approver, "fw-1"));
    }
}

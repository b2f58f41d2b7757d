//! The claims we read from a validated token, and their mapping to a `Principal`.

use influxion_core::{CallerKind, Principal};
use serde::Deserialize;

use crate::AuthError;

#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: Option<i64>,
    pub sub: Option<String>,
    pub tid: Option<String>,
    pub oid: Option<String>,
    pub azp: Option<String>,
    pub appid: Option<String>,
    /// RFC 9068: the client the token was issued to.
    pub client_id: Option<String>,
    pub idtyp: Option<String>,
    pub ver: Option<String>,
    /// Entra: space-separated delegated scopes.
    pub scp: Option<String>,
    /// RFC 9068: space-separated scopes, for providers other than Entra.
    pub scope: Option<String>,
    pub roles: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub name: Option<String>,
    pub preferred_username: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Claims {
    pub fn audiences(&self) -> Vec<&str> {
        match &self.aud {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    pub fn to_principal(&self) -> Result<Principal, AuthError> {
        let scopes: Vec<String> = self
            .scp
            .as_deref()
            .or(self.scope.as_deref())
            .map(|s| {
                s.split(' ')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // Entra marks app-only tokens with `idtyp: app` when the optional claim is on;
        // otherwise an Entra app-only token is one without `scp`. For RFC 9068 providers
        // (`scope` claim), a client-credentials token has the client as its subject.
        let client = self.client_id.as_deref().or(self.azp.as_deref());
        let kind = match self.idtyp.as_deref() {
            Some("app") => CallerKind::App,
            Some("user") => CallerKind::User,
            _ if self.scp.is_some() => CallerKind::User,
            _ if self.scope.is_some() && (self.sub.is_none() || self.sub.as_deref() != client) => {
                CallerKind::User
            }
            _ => CallerKind::App,
        };
        let object_id = self
            .oid
            .clone()
            .or_else(|| self.sub.clone())
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Malformed("the token names no subject (oid/sub)"))?;
        Ok(Principal {
            issuer: self.iss.clone(),
            tenant_id: self.tid.clone(),
            object_id,
            app_id: self
                .azp
                .clone()
                .or_else(|| self.appid.clone())
                .or_else(|| self.client_id.clone()),
            kind,
            scopes: if kind == CallerKind::User {
                scopes
            } else {
                Vec::new()
            },
            roles: self.roles.clone().unwrap_or_default(),
            groups: self.groups.clone().unwrap_or_default(),
            display_name: self
                .name
                .clone()
                .or_else(|| self.preferred_username.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: serde_json::Value) -> Claims {
        let mut base = serde_json::json!({"iss": "i", "aud": "a", "exp": 1, "sub": "s"});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn caller_kind() {
        // Entra app-only: no scp.
        assert_eq!(
            claims(serde_json::json!({"roles": ["r"]}))
                .to_principal()
                .unwrap()
                .kind,
            CallerKind::App
        );
        // Entra delegated.
        assert_eq!(
            claims(serde_json::json!({"scp": "x"}))
                .to_principal()
                .unwrap()
                .kind,
            CallerKind::User
        );
        // idtyp wins.
        assert_eq!(
            claims(serde_json::json!({"scp": "x", "idtyp": "app"}))
                .to_principal()
                .unwrap()
                .kind,
            CallerKind::App
        );
        // RFC 9068 client credentials: scope, and the client is the subject.
        let c = claims(serde_json::json!({"scope": "x", "sub": "ci", "client_id": "ci"}));
        assert_eq!(c.to_principal().unwrap().kind, CallerKind::App);
        // RFC 9068 delegated: the subject is a person.
        let c = claims(serde_json::json!({"scope": "x", "sub": "alice", "client_id": "ci"}));
        assert_eq!(c.to_principal().unwrap().kind, CallerKind::User);
    }

    #[test]
    fn no_subject_is_malformed() {
        let c: Claims =
            serde_json::from_value(serde_json::json!({"iss": "i", "aud": "a", "exp": 1})).unwrap();
        assert!(matches!(c.to_principal(), Err(AuthError::Malformed(_))));
    }
}

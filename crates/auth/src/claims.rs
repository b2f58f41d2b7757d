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
        // otherwise an app-only token is one without any delegated scope.
        let kind = match self.idtyp.as_deref() {
            Some("app") => CallerKind::App,
            Some("user") => CallerKind::User,
            _ if self.scp.is_some() || self.scope.is_some() => CallerKind::User,
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
            app_id: self.azp.clone().or_else(|| self.appid.clone()),
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

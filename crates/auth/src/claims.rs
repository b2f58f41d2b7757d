//! The claims we read from a validated token, and their mapping to a `Principal`.

use influxion_core::{display_text, CallerKind, Principal};
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
    /// Display claims: any JSON type is accepted and only a string is used, so that a
    /// provider's odd profile data never makes a valid token fail.
    #[serde(default, deserialize_with = "lenient_text")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub preferred_username: Option<String>,
    /// Entra v1 tokens name a person by `upn` (and `unique_name`).
    #[serde(default, deserialize_with = "lenient_text")]
    pub upn: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    pub email: Option<String>,
    /// ID-token-only claims (OpenID Connect Core 2, 3.1.3.6, 3.3.2.11). Their presence
    /// marks a token that was issued to a client to learn who signed in, not to call us.
    /// Kept as raw JSON so that any type, even a wrong one, still counts as present.
    pub nonce: Option<serde_json::Value>,
    pub at_hash: Option<serde_json::Value>,
    pub c_hash: Option<serde_json::Value>,
}

fn lenient_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Claims {
    /// The one audience this token is for. Entra never issues an array; a token meant
    /// for several audiences is replayable by each of them, so only a string (or an
    /// array of exactly one) names an audience at all.
    pub(crate) fn single_audience(&self) -> Option<&str> {
        match &self.aud {
            Audience::One(a) => Some(a.as_str()),
            Audience::Many(v) if v.len() == 1 => v.first().map(String::as_str),
            Audience::Many(_) => None,
        }
    }

    /// Why this is not an access token, if it is not one: an ID token (it carries
    /// `nonce`, `at_hash` or `c_hash`), or a token without the client claim every
    /// access token of its kind carries: `azp` in Entra v2, `appid` in Entra v1,
    /// `client_id` (RFC 9068 section 2.2) or `azp` for other providers. An Entra ID
    /// token's `aud` is the client it was issued to; when the web client and the API
    /// are one app registration, that is the API's own client id, so the audience
    /// check alone cannot tell the two apart.
    pub(crate) fn id_token_only_claims(&self) -> Option<&'static str> {
        (self.nonce.is_some() || self.at_hash.is_some() || self.c_hash.is_some())
            .then_some("an ID token (nonce, at_hash or c_hash) is not an access token")
    }

    /// See [`Claims::id_token_only_claims`]: the client claim this kind of access token
    /// always carries, if it is missing.
    pub(crate) fn missing_client_claim(&self) -> Option<&'static str> {
        let present = |c: &Option<String>| c.as_deref().is_some_and(|v| !v.is_empty());
        match self.ver.as_deref() {
            Some("2.0") if !present(&self.azp) => {
                Some("a v2.0 access token names its client in azp; this token does not")
            }
            Some("1.0") if !present(&self.appid) => {
                Some("a v1.0 access token names its client in appid; this token does not")
            }
            Some("2.0") | Some("1.0") => None,
            _ if !present(&self.client_id) && !present(&self.azp) => {
                Some("an access token names its client (client_id or azp); this token does not")
            }
            _ => None,
        }
    }

    pub(crate) fn to_principal(&self) -> Result<Principal, AuthError> {
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
            name: self.name.as_deref().and_then(display_text),
            username: [&self.preferred_username, &self.upn, &self.email]
                .into_iter()
                .find_map(|c| c.as_deref().and_then(display_text)),
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
    fn id_tokens_and_tokens_without_a_client_are_not_access_tokens() {
        let v2 = serde_json::json!({"ver": "2.0", "azp": "c"});
        assert!(claims(v2.clone()).id_token_only_claims().is_none());
        assert!(claims(v2).missing_client_claim().is_none());
        for c in ["nonce", "at_hash", "c_hash"] {
            let mut v = serde_json::json!({"ver": "2.0", "azp": "c"});
            // Any value counts, even one of the wrong type.
            v[c] = serde_json::json!(0);
            assert!(claims(v).id_token_only_claims().is_some(), "{c}");
        }
        let missing = |v| claims(v).missing_client_claim().is_some();
        assert!(missing(serde_json::json!({"ver": "2.0"})));
        assert!(missing(serde_json::json!({"ver": "2.0", "azp": ""})));
        assert!(missing(serde_json::json!({"ver": "2.0", "appid": "c"})));
        assert!(missing(serde_json::json!({"ver": "1.0", "azp": "c"})));
        assert!(!missing(serde_json::json!({"ver": "1.0", "appid": "c"})));
        assert!(missing(serde_json::json!({})));
        assert!(!missing(serde_json::json!({"client_id": "c"})));
    }

    #[test]
    fn only_one_audience_counts() {
        let aud = |v| {
            claims(serde_json::json!({ "aud": v }))
                .single_audience()
                .map(str::to_owned)
        };
        assert_eq!(aud(serde_json::json!("a")), Some("a".into()));
        assert_eq!(aud(serde_json::json!(["a"])), Some("a".into()));
        assert_eq!(aud(serde_json::json!(["a", "b"])), None);
        assert_eq!(aud(serde_json::json!([])), None);
    }

    #[test]
    fn display_claims_are_cleaned_and_never_fatal() {
        let p = claims(serde_json::json!({
            "name": "  Bob\u{1b}[2J <b>Approver</b>\n",
            "preferred_username": 42,
            "upn": "bob@contoso.com",
        }))
        .to_principal()
        .unwrap();
        assert_eq!(p.name.as_deref(), Some("Bob[2J <b>Approver</b>"));
        assert_eq!(p.username.as_deref(), Some("bob@contoso.com"));
        let p = claims(serde_json::json!({"name": {"x": 1}, "preferred_username": "  "}))
            .to_principal()
            .unwrap();
        assert_eq!((p.name, p.username), (None, None));
        let p = claims(serde_json::json!({"name": "x".repeat(10_000)}))
            .to_principal()
            .unwrap();
        assert_eq!(
            p.name.map(|n| n.chars().count()),
            Some(influxion_core::actor::MAX_DISPLAY_CHARS)
        );
    }

    #[test]
    fn no_subject_is_malformed() {
        let c: Claims =
            serde_json::from_value(serde_json::json!({"iss": "i", "aud": "a", "exp": 1})).unwrap();
        assert!(matches!(c.to_principal(), Err(AuthError::Malformed(_))));
    }
}

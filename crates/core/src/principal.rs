//! Who is calling, as established by a validated access token.

use serde::{Deserialize, Serialize};

/// Whether the token was issued to a person (delegated) or to an application (app-only,
/// including client credentials and workload identity federation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    User,
    App,
}

/// A caller whose token has been validated. Only the token validator constructs one;
/// nothing downstream reads raw claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub issuer: String,
    pub tenant_id: Option<String>,
    /// `oid` for Entra, otherwise `sub`: stable for a person or service principal.
    pub object_id: String,
    /// `azp` (v2) or `appid` (v1): the application that obtained the token.
    pub app_id: Option<String>,
    pub kind: CallerKind,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// The `name` claim, cleaned for display (see [`crate::actor`]): never for decisions.
    pub name: Option<String>,
    /// `preferred_username`, `upn` or `email`, cleaned for display: never for decisions.
    pub username: Option<String>,
}

impl Principal {
    /// Who this is, independent of how the token was obtained: `tenant/object`. Used
    /// for "is this the requester?" so the same identity cannot approve its own
    /// request by presenting a token of another kind.
    pub fn identity(&self) -> String {
        match &self.tenant_id {
            Some(t) => format!("{}/{}", t.to_ascii_lowercase(), self.object_id),
            None => self.object_id.clone(),
        }
    }

    /// A short, stable identifier for audit records: `kind:tenant/object`.
    pub fn audit_id(&self) -> String {
        let kind = match self.kind {
            CallerKind::User => "user",
            CallerKind::App => "app",
        };
        match &self.tenant_id {
            Some(t) => format!("{kind}:{t}/{}", self.object_id),
            None => format!("{kind}:{}", self.object_id),
        }
    }

    /// This caller as an audit record names it (see [`crate::Actor`]), with the
    /// subjects it matched.
    pub fn audit_actor(&self, subjects: &[String]) -> crate::Actor {
        crate::Actor::of(self, self.audit_id(), subjects)
    }

    /// This caller as signing requests and approvals name it ([`Principal::identity`]).
    pub fn actor(&self, subjects: &[String]) -> crate::Actor {
        crate::Actor::of(self, self.identity(), subjects)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

//! The client credentials grant (RFC 6749 4.4), for pipelines: with a secret or a
//! client assertion (private_key_jwt or a federated token).

use anyhow::Result;
use zeroize::Zeroizing;

use super::{auth_failure, token_request, AuthFailure, JWT_BEARER};

/// How a confidential client proves itself at the token endpoint.
pub enum ClientAuth<'a> {
    Secret(&'a str),
    /// A client assertion: a private_key_jwt or a federated token (RFC 7523).
    Assertion(&'a str),
}

/// The client credentials grant (RFC 6749 4.4), with a secret or an assertion.
pub async fn client_credentials(
    http: &reqwest::Client,
    token_endpoint: &str,
    client_id: &str,
    scope: &str,
    auth: ClientAuth<'_>,
) -> Result<Zeroizing<String>> {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
    ];
    match auth {
        ClientAuth::Secret(s) => form.push(("client_secret", s)),
        ClientAuth::Assertion(a) => {
            form.push(("client_assertion_type", JWT_BEARER));
            form.push(("client_assertion", a));
        }
    }
    let t = token_request(http, token_endpoint, &form)
        .await
        .map_err(|e| match e.downcast_ref::<AuthFailure>() {
            Some(_) => auth_failure(format!(
                "the identity provider refused the client credentials: {e:#}"
            )),
            // Not a refusal (network, parse): not an authentication failure either.
            None => e,
        })?;
    Ok(Zeroizing::new(t.access_token.clone()))
}

//! The OpenID Connect relying party: discovery, the Authorization Code flow with PKCE
//! and nonce, ID token validation, refresh and RP-initiated logout, all through the
//! `openidconnect` crate.

use influxion_core::display_text;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJwsSigningAlgorithm, CoreTokenResponse,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, EndSessionUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims, IssuerUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use tokio::sync::RwLock;
use url::Url;
use zeroize::Zeroizing;

use crate::session::{now, UserData};
use crate::signin::LoginData;
use crate::KcError;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

struct Provider {
    client: Client,
    end_session: Option<EndSessionUrl>,
    fetched: Instant,
}

/// Where the metadata document lives and who we are at the provider.
pub struct OidcSettings {
    pub metadata_url: Url,
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub redirect_uri: Url,
    pub post_logout_redirect_uri: Url,
    pub scopes: Vec<String>,
}

pub(crate) struct Oidc {
    settings: OidcSettings,
    issuer: IssuerUrl,
    http: reqwest::Client,
    provider: RwLock<Arc<Provider>>,
}

/// Signing algorithms accepted on ID tokens: asymmetric only, so the client secret can
/// never be used to forge one.
const ALGORITHMS: [CoreJwsSigningAlgorithm; 6] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Discovery again after a signature failure (key rotation), at most this often.
const REDISCOVER_AFTER: Duration = Duration::from_secs(60);

const SUFFIX: &str = "/.well-known/openid-configuration";

/// Why a refresh failed: the provider refused the refresh token (the session is over),
/// or it could not be asked (the session stays; try again later).
pub(crate) enum RefreshError {
    Refused(String),
    Unavailable(String),
}

/// Tokens from a code exchange or a refresh.
pub(crate) struct Tokens {
    pub access_token: String,
    pub access_expires_at: i64,
    pub refresh_token: Option<String>,
    pub granted_scopes: Option<String>,
}

impl Oidc {
    pub(crate) async fn discover(settings: OidcSettings) -> Result<Self, KcError> {
        let text = settings.metadata_url.as_str();
        let issuer = text.strip_suffix(SUFFIX).ok_or_else(|| {
            KcError::Provider(format!(
                "the OpenID Connect metadata URL must end in {SUFFIX}: {text}"
            ))
        })?;
        let issuer =
            IssuerUrl::new(issuer.to_owned()).map_err(|e| KcError::Provider(e.to_string()))?;
        let http = reqwest::Client::builder()
            // Never follow redirects: a token request must reach exactly the endpoint
            // the metadata names (SSRF and credential forwarding).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| KcError::Internal(e.to_string()))?;
        let provider = fetch(&settings, &issuer, &http).await?;
        Ok(Self {
            settings,
            issuer,
            http,
            provider: RwLock::new(Arc::new(provider)),
        })
    }

    /// The authorization URL and what the callback must check.
    pub(crate) async fn start(&self, return_to: String) -> (Url, LoginData) {
        let p = self.provider.read().await.clone();
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = p.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.settings.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let login = LoginData {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            return_to,
        };
        (url, login)
    }

    /// Exchange the code (with the client secret and PKCE verifier) and validate the ID
    /// token: signature, issuer, audience, expiry and nonce.
    pub(crate) async fn finish(&self, code: &str, login: &LoginData) -> Result<UserData, KcError> {
        let p = self.provider.read().await.clone();
        let response: CoreTokenResponse = p
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| KcError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| KcError::LoginRefused(token_error(&e)))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| KcError::InvalidIdToken("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(login.nonce.clone());
        let verified = match verify(&p, id_token, &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(_))
                if p.fetched.elapsed() > REDISCOVER_AFTER =>
            {
                // The provider may have rotated its keys since discovery.
                let fresh = Arc::new(fetch(&self.settings, &self.issuer, &self.http).await?);
                *self.provider.write().await = fresh.clone();
                verify(&fresh, id_token, &nonce)
            }
            other => other,
        };
        let claims = verified.map_err(|e| KcError::InvalidIdToken(e.to_string()))?;
        // Profile claims are the provider's text, shown on pages and written to logs:
        // cleaned of control and bidirectional characters and capped, like the API's.
        let username = claims
            .preferred_username()
            .and_then(|u| display_text(u.as_str()))
            .or_else(|| claims.email().and_then(|e| display_text(e.as_str())))
            .unwrap_or_default();
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .and_then(|n| display_text(n.as_str()))
            .unwrap_or_else(|| username.clone());
        let subject = claims.subject().as_str().to_owned();
        let t = tokens(&response, None);
        Ok(UserData {
            subject,
            name,
            username,
            id_token: Some(id_token.to_string()),
            access_token: t.access_token.clone(),
            access_expires_at: t.access_expires_at,
            refresh_token: t.refresh_token.clone(),
            granted_scopes: t.granted_scopes.clone(),
        })
    }

    /// A new access token from the refresh token.
    pub(crate) async fn refresh(
        &self,
        refresh_token: &str,
        granted_scopes: Option<&str>,
    ) -> Result<Tokens, RefreshError> {
        let p = self.provider.read().await.clone();
        let rt = RefreshToken::new(refresh_token.to_owned());
        let mut req = p
            .client
            .exchange_refresh_token(&rt)
            .map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        // Entra ID wants the scopes again on a refresh, or it may answer for another
        // resource; others refuse any scope the grant lacks. So: exactly what was
        // granted, or (when the provider did not say) what was asked for.
        let scopes: Vec<String> = match granted_scopes {
            Some(g) => g.split_whitespace().map(str::to_owned).collect(),
            None => self.settings.scopes.clone(),
        };
        for s in scopes {
            req = req.add_scope(Scope::new(s));
        }
        let response: CoreTokenResponse =
            req.request_async(&self.http).await.map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(_) => {
                    RefreshError::Refused(token_error(&e))
                }
                other => RefreshError::Unavailable(token_error(&other)),
            })?;
        Ok(tokens(&response, Some(refresh_token)))
    }

    /// The issuer, exactly as discovered (for the RFC 9207 `iss` check).
    pub(crate) fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// RP-initiated logout at the provider, when it offers an end-session endpoint. No
    /// ID token hint: the browser never sees a token, so it cannot carry one.
    pub(crate) async fn logout_url(&self) -> Option<Url> {
        let p = self.provider.read().await.clone();
        let end = p.end_session.clone()?;
        let redirect =
            PostLogoutRedirectUrl::new(self.settings.post_logout_redirect_uri.to_string()).ok()?;
        Some(
            LogoutRequest::from(end)
                .set_client_id(ClientId::new(self.settings.client_id.clone()))
                .set_post_logout_redirect_uri(redirect)
                .http_get_url(),
        )
    }
}

fn verify<'a>(
    p: &Provider,
    id_token: &'a openidconnect::core::CoreIdToken,
    nonce: &Nonce,
) -> Result<
    &'a IdTokenClaims<openidconnect::EmptyAdditionalClaims, CoreGenderClaim>,
    ClaimsVerificationError,
> {
    let verifier = p
        .client
        .id_token_verifier()
        .set_allowed_algs(ALGORITHMS)
        .require_issuer_match(true);
    id_token.claims(&verifier, nonce)
}

fn tokens(r: &CoreTokenResponse, previous_refresh: Option<&str>) -> Tokens {
    // Providers that do not rotate refresh tokens send none on refresh: keep the old.
    let refresh_token = r
        .refresh_token()
        .map(|t| t.secret().clone())
        .or_else(|| previous_refresh.map(str::to_owned));
    let granted_scopes = r
        .scopes()
        .map(|v| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
    let lifetime = r
        .expires_in()
        .map(|d| d.as_secs() as i64)
        .unwrap_or(300)
        .clamp(0, 24 * 3600);
    Tokens {
        access_token: r.access_token().secret().clone(),
        access_expires_at: now() + lifetime,
        refresh_token,
        granted_scopes,
    }
}

/// A token endpoint error without anything secret in it.
fn token_error<E: std::error::Error>(
    e: &openidconnect::RequestTokenError<
        E,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => {
            let mut s = r.error().to_string();
            if let Some(d) = r.error_description() {
                s.push_str(": ");
                s.push_str(&d.chars().take(200).collect::<String>());
            }
            s
        }
        other => other.to_string(),
    }
}

async fn fetch(
    settings: &OidcSettings,
    issuer: &IssuerUrl,
    http: &reqwest::Client,
) -> Result<Provider, KcError> {
    let metadata = ProviderMetadataWithLogout::discover_async(issuer.clone(), http)
        .await
        .map_err(|e| KcError::Provider(format!("discovery at {issuer}: {e}")))?;
    let end_session = metadata.additional_metadata().end_session_endpoint.clone();
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(settings.client_id.clone()),
        Some(ClientSecret::new(settings.client_secret.to_string())),
    )
    // Client secret in the request body (client_secret_post): Entra ID documents it, and
    // HTTP Basic would need the secret form-encoded, which not every provider decodes.
    .set_auth_type(openidconnect::AuthType::RequestBody)
    .set_redirect_uri(
        RedirectUrl::new(settings.redirect_uri.to_string())
            .map_err(|e| KcError::Provider(e.to_string()))?,
    );
    Ok(Provider {
        client,
        end_session,
        fetched: Instant::now(),
    })
}

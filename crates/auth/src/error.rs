use influxion_core::CallerKind;

/// Why a token was refused. Each maps to one stable problem type at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    Missing,
    /// RFC 6750 `invalid_request`: the request itself is ambiguous (e.g. two
    /// `Authorization` headers), whatever the token.
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("the token is larger than allowed")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token is signed by a key the issuer does not publish")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not trusted")]
    Issuer,
    #[error("the token's tenant is not allowed")]
    Tenant,
    #[error("the token is not for this API")]
    Audience,
    #[error("the token is not an access token: {0}")]
    NotAccessToken(&'static str),
    #[error("the token version is not accepted")]
    Version,
    #[error("the token lacks the required scope or app role")]
    InsufficientScope(CallerKind),
    #[error("the identity provider's signing keys are not available")]
    Unavailable,
    #[error("configuration error: {0}")]
    Config(String),
}

impl AuthError {
    pub(crate) fn from_jwt(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidSignature => AuthError::Signature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::Algorithm,
            K::InvalidIssuer => AuthError::Issuer,
            K::InvalidAudience => AuthError::Audience,
            K::MissingRequiredClaim(_) => AuthError::Malformed("a required claim is missing"),
            K::Json(_) => AuthError::Malformed("claims are not valid JSON of the expected shape"),
            K::Base64(_) | K::Utf8(_) => AuthError::Malformed("bad base64url encoding"),
            _ => AuthError::Signature,
        }
    }

    /// A short machine-readable slug, used for the problem `type` and in audit records.
    pub fn slug(&self) -> &'static str {
        match self {
            AuthError::Missing => "token-missing",
            AuthError::InvalidRequest(_) => "invalid-request",
            AuthError::TooLarge => "token-too-large",
            AuthError::Malformed(_) => "token-malformed",
            AuthError::Algorithm => "token-algorithm",
            AuthError::UnknownKey => "token-unknown-key",
            AuthError::Signature => "token-signature",
            AuthError::Expired => "token-expired",
            AuthError::NotYetValid => "token-not-yet-valid",
            AuthError::Issuer => "token-issuer",
            AuthError::Tenant => "token-tenant",
            AuthError::Audience => "token-audience",
            AuthError::NotAccessToken(_) => "token-not-access-token",
            AuthError::Version => "token-version",
            AuthError::InsufficientScope(_) => "insufficient-scope",
            AuthError::Unavailable => "token-validation-unavailable",
            AuthError::Config(_) => "token-validation-unavailable",
        }
    }
}

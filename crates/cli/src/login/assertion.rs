//! private_key_jwt (RFC 7523): a client assertion signed with a certificate's key,
//! for pipelines registered with a certificate instead of a secret.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{now, B64URL};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A private_key_jwt client assertion (RFC 7523): signed with the key of a PEM file that
/// also holds the certificate registered with the provider (Entra ID identifies it by
/// the `x5t#S256`/`x5t` thumbprints).
pub fn client_assertion(pem_text: &str, client_id: &str, token_endpoint: &str) -> Result<String> {
    let blocks = pem::parse_many(pem_text).context("the certificate file is not PEM")?;
    let key = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .context("the certificate file holds no private key")?;
    let cert = blocks.iter().find(|b| b.tag() == "CERTIFICATE");
    let key_pem = Zeroizing::new(pem::encode(key));
    let (alg, enc) = if let Ok(k) = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()) {
        (jsonwebtoken::Algorithm::RS256, k)
    } else if let Ok(k) = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()) {
        (jsonwebtoken::Algorithm::ES256, k)
    } else {
        bail!("the private key is neither RSA nor EC P-256 (PKCS#8 PEM)");
    };
    let mut header = jsonwebtoken::Header::new(alg);
    if let Some(c) = cert {
        header.x5t_s256 = Some(B64URL.encode(Sha256::digest(c.contents())));
        header.x5t = Some(B64URL.encode(sha1_digest(c.contents())));
    }
    let iat = now();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
    });
    jsonwebtoken::encode(&header, &claims, &enc).context("signing the client assertion")
}

fn sha1_digest(b: &[u8]) -> Vec<u8> {
    use sha1::Digest as _;
    sha1::Sha1::digest(b).to_vec()
}

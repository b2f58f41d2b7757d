//! The first look at a token, before any key is chosen: structure, size, header.
//!
//! Written by hand rather than via `jsonwebtoken::decode_header` because we must see
//! header members that crate does not model (`nonce`, `crit`) to refuse them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::AuthError;

/// A token whose structure is sound and whose header names an allowed algorithm and a
/// key id. Its signature and claims have not been checked; it cannot become a
/// `Principal` by itself.
#[derive(Debug)]
pub struct UnverifiedToken {
    alg: Algorithm,
    kid: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    nonce: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

const MAX_HEADER_BYTES: usize = 2048;

impl UnverifiedToken {
    pub fn parse(token: &str, allowed: &[Algorithm]) -> Result<Self, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("a JWT has three dot-separated parts"));
        };
        if h.is_empty() || p.is_empty() {
            return Err(AuthError::Malformed("empty header or payload"));
        }
        if h.len() > MAX_HEADER_BYTES {
            return Err(AuthError::Malformed("header too large"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| AuthError::Malformed("bad base64url encoding"))?;
        let header: RawHeader = serde_json::from_slice(&bytes)
            .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
        // Microsoft Graph tokens carry a `nonce` header and are not meant to be
        // validated by anyone but Graph.
        if header.nonce.is_some() {
            return Err(AuthError::Audience);
        }
        // We implement no header extensions, so any critical one must be refused (RFC 7515 4.1.11).
        if header.crit.is_some() {
            return Err(AuthError::Malformed("unsupported critical header"));
        }
        if let Some(typ) = &header.typ {
            let t = typ.to_ascii_lowercase();
            if !matches!(t.as_str(), "jwt" | "at+jwt" | "application/at+jwt") {
                return Err(AuthError::Malformed("typ is not a JWT access token"));
            }
        }
        // `jku`, `x5u`, `jwk` and `x5c` are ignored on purpose: keys come only from the
        // issuer's published JWKS.
        let alg: Algorithm = header.alg.parse().map_err(|_| AuthError::Algorithm)?;
        if !allowed.contains(&alg) {
            return Err(AuthError::Algorithm);
        }
        // A stripped signature is refused before any key is looked up.
        if s.is_empty() {
            return Err(AuthError::Signature);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(AuthError::Malformed("header has no key id"))?;
        Ok(Self { alg, kid })
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALLOWED: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn header_rules() {
        let tok = |h: &str| format!("{}.{}.c2ln", enc(h), enc("{}"));
        assert!(UnverifiedToken::parse(&tok(r#"{"alg":"RS256","kid":"k"}"#), &ALLOWED).is_ok());
        assert_eq!(
            UnverifiedToken::parse(&tok(r#"{"alg":"none","kid":"k"}"#), &ALLOWED).unwrap_err(),
            AuthError::Algorithm
        );
        assert_eq!(
            UnverifiedToken::parse(&tok(r#"{"alg":"HS256","kid":"k"}"#), &ALLOWED).unwrap_err(),
            AuthError::Algorithm
        );
        assert_eq!(
            UnverifiedToken::parse(&tok(r#"{"alg":"RS256"}"#), &ALLOWED).unwrap_err(),
            AuthError::Malformed("header has no key id")
        );
        assert_eq!(
            UnverifiedToken::parse(&tok(r#"{"alg":"RS256","kid":"k","nonce":"x"}"#), &ALLOWED)
                .unwrap_err(),
            AuthError::Audience
        );
        assert!(matches!(
            UnverifiedToken::parse(
                &tok(r#"{"alg":"RS256","kid":"k","crit":["b64"]}"#),
                &ALLOWED
            ),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            UnverifiedToken::parse("a.b", &ALLOWED),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            UnverifiedToken::parse("a.b.c.d", &ALLOWED),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            UnverifiedToken::parse("!!.b.c", &ALLOWED),
            Err(AuthError::Malformed(_))
        ));
    }

    proptest! {
        // The parser sees attacker input first: it must never panic, and must accept
        // only three-part tokens.
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let r = UnverifiedToken::parse(&s, &ALLOWED);
            if r.is_ok() {
                prop_assert_eq!(s.split('.').count(), 3);
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(h in proptest::collection::vec(any::<u8>(), 0..300), p in "[A-Za-z0-9_-]{0,40}") {
            let tok = format!("{}.{}.sig", URL_SAFE_NO_PAD.encode(&h), p);
            let _ = UnverifiedToken::parse(&tok, &ALLOWED);
        }

        #[test]
        fn json_headers_with_random_alg(alg in "[A-Za-z0-9]{0,8}", kid in "[a-z0-9]{0,10}") {
            let h = serde_json::json!({"alg": alg, "kid": kid}).to_string();
            let tok = format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(h));
            if let Ok(t) = UnverifiedToken::parse(&tok, &ALLOWED) {
                prop_assert!(ALLOWED.contains(&t.alg()));
            }
        }
    }
}

//! Authorization Code with PKCE (S256) and `state`, on a loopback redirect (RFC 8252):
//! for people at provisioning PCs and production equipment with a browser.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{auth_failure, cached, discover, random, token_request, LoginParams, B64URL};
use crate::profiles::CachedToken;

/// Authorization Code + PKCE (S256) with `state`, on a loopback listener that accepts
/// exactly one valid callback and then closes.
pub async fn login_pkce(http: &reqwest::Client, p: &LoginParams<'_>) -> Result<CachedToken> {
    let md = discover(http, p.metadata_url).await?;
    let authorize = md
        .authorization_endpoint
        .clone()
        .context("the provider's metadata has no authorization_endpoint")?;
    let mut redirect = url::Url::parse(p.redirect_uri)
        .with_context(|| format!("redirect URI {:?}", p.redirect_uri))?;
    let loopback = matches!(
        redirect.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]")
    );
    if redirect.scheme() != "http" || !loopback {
        bail!("the redirect URI must be http://127.0.0.1[:port]/path (RFC 8252 loopback)");
    }
    let ip: std::net::IpAddr = if redirect.host_str() == Some("[::1]") {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let listener = tokio::net::TcpListener::bind((ip, redirect.port().unwrap_or(0)))
        .await
        .context("binding the loopback redirect listener")?;
    let port = listener.local_addr()?.port();
    redirect
        .set_port(Some(port))
        .map_err(|_| anyhow!("cannot set the redirect port"))?;
    let redirect_uri = redirect.to_string();

    let verifier = Zeroizing::new(random(32));
    let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    let state = random(16);
    let mut url = url::Url::parse(&authorize).context("authorization_endpoint")?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", p.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", p.scope)
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");

    let (tx, rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    let slot = Arc::new(Mutex::new(Some(tx)));
    let expected = Arc::new(state);
    let path = redirect.path().to_owned();
    let app = axum::Router::new().route(
        &path,
        axum::routing::get(
            move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                let slot = slot.clone();
                let expected = expected.clone();
                async move { callback(&q.0, &expected, &slot) }
            },
        ),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    eprintln!("Sign in at:\n  {url}");
    if p.open_browser {
        // Best effort: with no browser, the person opens the URL printed above.
        let _ = std::process::Command::new("xdg-open")
            .arg(url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    eprintln!("Waiting for the sign-in to come back to {redirect_uri} …");
    let outcome = tokio::time::timeout(p.timeout, rx).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let code = match outcome {
        Err(_) => return Err(auth_failure("the sign-in did not come back in time")),
        Ok(Err(_)) => return Err(auth_failure("the loopback listener stopped")),
        Ok(Ok(Err(e))) => {
            return Err(auth_failure(format!(
                "the provider refused the sign-in: {e}"
            )))
        }
        Ok(Ok(Ok(code))) => Zeroizing::new(code),
    };
    let t = token_request(
        http,
        &md.token_endpoint,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("client_id", p.client_id),
            ("code_verifier", &verifier),
        ],
    )
    .await?;
    Ok(cached(&md, p, t))
}

type Slot = Mutex<Option<tokio::sync::oneshot::Sender<Result<String, String>>>>;

/// One callback request. A wrong `state` is refused and the listener keeps waiting (it
/// may be someone else's request); the first valid one ends the wait; later ones are
/// refused.
fn callback(
    q: &std::collections::HashMap<String, String>,
    expected: &str,
    slot: &Slot,
) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    let state_ok = q
        .get("state")
        .is_some_and(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if !state_ok {
        return (
            StatusCode::BAD_REQUEST,
            "Refused: this sign-in response does not match the sign-in started by influxion login.\n",
        );
    }
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(tx) = slot.take() else {
        return (
            StatusCode::BAD_REQUEST,
            "Refused: this sign-in has already completed.\n",
        );
    };
    let result = match (q.get("code"), q.get("error")) {
        (_, Some(e)) => Err(format!(
            "{e} {}",
            q.get("error_description").map(String::as_str).unwrap_or("")
        )),
        (Some(c), None) if !c.is_empty() && c.len() <= 4096 => Ok(c.clone()),
        _ => Err("the response carries no code".into()),
    };
    let ok = result.is_ok();
    let _ = tx.send(result);
    if ok {
        (
            StatusCode::OK,
            "Signed in to Influxion. You can close this tab.\n",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "The sign-in failed; see the terminal.\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn one_valid_callback_only() {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let slot = Mutex::new(Some(tx));
        let (s, _) = callback(&q(&[("code", "c"), ("state", "wrong")]), "st", &slot);
        assert_eq!(s, 400);
        let (s, _) = callback(&q(&[("code", "c")]), "st", &slot);
        assert_eq!(s, 400);
        assert!(rx.try_recv().is_err(), "a refused callback ends nothing");
        let (s, _) = callback(&q(&[("code", "c"), ("state", "st")]), "st", &slot);
        assert_eq!(s, 200);
        assert_eq!(rx.try_recv().ok(), Some(Ok("c".to_owned())));
        let (s, _) = callback(&q(&[("code", "c2"), ("state", "st")]), "st", &slot);
        assert_eq!(s, 400);
    }
}

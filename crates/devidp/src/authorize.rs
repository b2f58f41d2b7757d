//! The authorization endpoint and its login page: a sign-in request is checked, kept
//! as an interaction, and turned into a single-use code when the user picks an account.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use url::Url;

use crate::discovery::supported_scopes;
use crate::grants::{
    insert_bounded, key_of, random_token, valid_code_challenge, AuthCode, Interaction,
};
use crate::pages::{error_page, html_escape, html_page, see_other};
use crate::params::Params;
use crate::{now, DevWebClient, Issuer};

/// How long a user has to pick an account on the login page.
const INTERACTION_TTL_SECS: u64 = 600;
/// How long an authorization code may wait before being redeemed.
const CODE_TTL_SECS: u64 = 60;
/// Longest accepted `state`, `nonce` or `scope`, to bound what is kept in memory.
const MAX_PARAM_LEN: usize = 1024;

/// An error sent back to the client's (registered) redirect URI, RFC 6749 §4.1.2.1.
fn redirect_error(
    i: &Issuer,
    redirect: &Url,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut url = redirect.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error)
            .append_pair("error_description", description);
        if let Some(s) = state {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &i.issuer);
    }
    see_other(&url)
}

pub(crate) async fn authorize(
    State(i): State<Arc<Issuer>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params::new(pairs);
    // Until the client and its redirect URI are known good, errors are shown here:
    // never redirect anywhere that is not registered.
    let Some(client) = p.get("client_id").and_then(|id| i.web_client(id)) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown or missing client_id: no such web client is registered.",
        );
    };
    let Some(redirect_uri) = p
        .get("redirect_uri")
        .filter(|r| client.redirect_uris.iter().any(|x| x == r))
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is missing or not registered for this client.",
        );
    };
    let redirect = match Url::parse(redirect_uri) {
        Ok(u) if u.fragment().is_none() => u,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The registered redirect_uri is not a valid absolute URL without a fragment.",
            )
        }
    };
    let state = p.get("state").filter(|s| s.len() <= MAX_PARAM_LEN);
    let fail =
        |error: &str, description: &str| redirect_error(&i, &redirect, error, description, state);

    if let Some(name) = p.repeated() {
        return fail(
            "invalid_request",
            &format!("{name} is given more than once"),
        );
    }
    match p.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
        None => return fail("invalid_request", "response_type is required"),
    }
    if p.get("response_mode").is_some_and(|m| m != "query") {
        return fail("invalid_request", "only response_mode=query is supported");
    }
    let Some(state) = state else {
        return fail(
            "invalid_request",
            "state is required (at most 1024 characters)",
        );
    };
    let Some(nonce) = p.get("nonce").filter(|n| n.len() <= MAX_PARAM_LEN) else {
        return fail(
            "invalid_request",
            "nonce is required (at most 1024 characters)",
        );
    };
    let Some(code_challenge) = p.get("code_challenge") else {
        return fail("invalid_request", "code_challenge is required (PKCE)");
    };
    if !valid_code_challenge(code_challenge) {
        return fail(
            "invalid_request",
            "code_challenge must be 43 to 128 base64url characters",
        );
    }
    match p.get("code_challenge_method") {
        Some("S256") => {}
        _ => return fail("invalid_request", "code_challenge_method=S256 is required"),
    }
    let requested = p.get("scope").unwrap_or_default();
    if requested.len() > MAX_PARAM_LEN || !requested.split(' ').any(|s| s == "openid") {
        return fail("invalid_scope", "scope must include openid");
    }
    if p.get("prompt")
        .is_some_and(|v| v.split(' ').any(|x| x == "none"))
    {
        // There is no session to reuse: every sign-in shows the picker.
        return fail("login_required", "the development issuer always asks");
    }
    // Unknown scope values are ignored (OpenID Connect Core §3.1.2.1).
    let supported = supported_scopes(&i);
    let mut granted: Vec<&str> = Vec::new();
    for s in requested.split(' ') {
        if supported.iter().any(|x| x == s) && !granted.contains(&s) {
            granted.push(s);
        }
    }

    let now = now();
    let (interaction, key) = random_token();
    {
        let mut g = i.grants();
        insert_bounded(
            &mut g.interactions,
            key,
            Interaction {
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                scope: granted.join(" "),
                state: state.to_owned(),
                nonce: nonce.to_owned(),
                code_challenge: code_challenge.to_owned(),
                expires_at: now + INTERACTION_TTL_SECS,
            },
            now,
        );
    }
    login_page(&i, client, &redirect, &interaction, &granted.join(" "))
}

fn login_page(
    i: &Issuer,
    client: &DevWebClient,
    redirect: &Url,
    interaction: &str,
    scope: &str,
) -> Response {
    let mut body = format!(
        "<p><strong>DEVELOPMENT ONLY.</strong> This issuer was started by \
         <code>influxion dev</code>. It has no passwords: anyone who can reach it can \
         sign in as anyone. Never use it for anything real.</p>\n\
         <p>Sign in to <code>{}</code> (scopes: <code>{}</code>) as:</p>\n",
        html_escape(&client.client_id),
        html_escape(scope),
    );
    if i.state.users.is_empty() {
        body.push_str("<p>No development users are configured.</p>\n");
    } else {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/authorize/login\">\n\
             <input type=\"hidden\" name=\"interaction\" value=\"{}\">\n",
            html_escape(interaction)
        ));
        for u in &i.state.users {
            let roles = if u.roles.is_empty() {
                "no roles".to_owned()
            } else {
                format!("roles: {}", u.roles.join(", "))
            };
            body.push_str(&format!(
                "<p><button type=\"submit\" name=\"username\" value=\"{}\">{} ({}) — {}</button></p>\n",
                html_escape(&u.username),
                html_escape(&u.name),
                html_escape(&u.username),
                html_escape(&roles),
            ));
        }
        body.push_str("</form>\n");
    }
    // The form posts here and is then redirected to the client: allow both.
    let origin = redirect.origin();
    let form_action = if origin.is_tuple() {
        format!("'self' {}", origin.ascii_serialization())
    } else {
        "'self'".to_owned()
    };
    html_page(
        StatusCode::OK,
        "Influxion development sign-in",
        &body,
        Some(&form_action),
    )
}

pub(crate) async fn login(
    State(i): State<Arc<Issuer>>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let p = Params::new(pairs);
    let (Some(interaction), Some(username)) = (p.get("interaction"), p.get("username")) else {
        return error_page(StatusCode::BAD_REQUEST, "Missing interaction or username.");
    };
    let now = now();
    let key = key_of(interaction);
    let pending = {
        let mut g = i.grants();
        if g.interactions.get(&key).is_none_or(|x| x.expires_at <= now) {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown or has expired. Start again from the application.",
            );
        }
        if i.user(username).is_none() {
            return error_page(StatusCode::BAD_REQUEST, "Unknown development user.");
        }
        g.interactions.remove(&key)
    };
    let Some(pending) = pending else {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in has expired.");
    };
    let Ok(mut url) = Url::parse(&pending.redirect_uri) else {
        return error_page(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
    };
    let (code, code_key) = random_token();
    {
        let mut g = i.grants();
        insert_bounded(
            &mut g.codes,
            code_key,
            AuthCode {
                client_id: pending.client_id,
                redirect_uri: pending.redirect_uri,
                code_challenge: pending.code_challenge,
                nonce: pending.nonce,
                scope: pending.scope,
                username: username.to_owned(),
                auth_time: now,
                expires_at: now + CODE_TTL_SECS,
            },
            now,
        );
    }
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &pending.state)
        .append_pair("iss", &i.issuer);
    see_other(&url)
}

//! RP-initiated logout. The issuer keeps no browser session, so logout only redirects
//! to a registered `post_logout_redirect_uri`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use url::Url;

use crate::pages::{html_page, see_other};
use crate::params::Params;
use crate::Issuer;

pub(crate) async fn logout_get(
    State(i): State<Arc<Issuer>>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    logout(&i, &Params::new(pairs))
}

pub(crate) async fn logout_post(
    State(i): State<Arc<Issuer>>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    logout(&i, &Params::new(pairs))
}

fn logout(i: &Issuer, p: &Params) -> Response {
    // The client is named by `client_id`, or by the audience of an ID token we issued.
    let hinted = p.get("id_token_hint").and_then(|t| id_token_audience(i, t));
    let client_id = match (p.get("client_id"), hinted.as_deref()) {
        (Some(c), Some(h)) if c != h => None,
        (Some(c), _) => Some(c),
        (None, h) => h,
    };
    let target = client_id
        .and_then(|c| i.web_client(c))
        .zip(p.get("post_logout_redirect_uri"))
        .filter(|(c, u)| c.post_logout_redirect_uris.iter().any(|x| x == u))
        .and_then(|(_, u)| Url::parse(u).ok());
    if let Some(mut url) = target {
        if let Some(state) = p.get("state") {
            url.query_pairs_mut().append_pair("state", state);
        }
        return see_other(&url);
    }
    html_page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out of the development issuer.</p>\n\
         <p>This is the DEVELOPMENT-ONLY issuer started by <code>influxion dev</code>; \
         it keeps no sign-in session of its own.</p>\n",
        None,
    )
}

/// The `aud` of an ID token this issuer signed (expired ones included, as the spec
/// allows for `id_token_hint`).
fn id_token_audience(i: &Issuer, token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Aud {
        aud: String,
    }
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims::<&str>(&[]);
    v.set_issuer(&[&i.issuer]);
    jsonwebtoken::decode::<Aud>(token, &i.decoding, &v)
        .ok()
        .map(|d| d.claims.aud)
}

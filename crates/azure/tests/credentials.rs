//! The credential chain against loopback stand-ins of the identity platform's token
//! endpoint, the App Service identity endpoint and the instance metadata service:
//! what each request carries, caching, single flight, refresh, retries and refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use influxion_azure::{http_client, Credential, CredentialError, Retry, Settings, Source};
use influxion_azure_standin::{Endpoint, Fault, IdentityStandIn};

const VAULT: &str = "https://vault.azure.net";

fn fast() -> Retry {
    Retry {
        attempts: 4,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    }
}

fn credential(pairs: &[(&str, String)]) -> Credential {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let settings = Settings::from_vars(|k| m.get(k).cloned()).unwrap();
    let source = Source::select(&settings).unwrap();
    Credential::with_retry(source, http_client(None).unwrap(), fast())
}

#[tokio::test]
async fn client_secret_asks_the_tenants_token_endpoint_for_the_vault_scope() {
    let idp = IdentityStandIn::start().await.unwrap();
    idp.register_secret("app-1", "s3cret");
    let c = credential(&[
        ("AZURE_AUTHORITY_HOST", idp.url()),
        ("INFLUXION_AZURE_CLIENT_ID", "app-1".into()),
        ("INFLUXION_AZURE_TENANT_ID", "tenant-1".into()),
        ("INFLUXION_AZURE_CLIENT_SECRET", "s3cret".into()),
    ]);
    assert_eq!(c.source().name(), "client secret");
    let t = c.token(VAULT).await.unwrap();
    assert!(t.token.starts_with("standin-aad-token-"));
    let seen = idp.seen();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.path, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.form["grant_type"], "client_credentials");
    assert_eq!(r.form["client_id"], "app-1");
    assert_eq!(r.form["client_secret"], "s3cret");
    assert_eq!(r.form["scope"], "https://vault.azure.net/.default");
    // Cached: no second request.
    let again = c.token(VAULT).await.unwrap();
    assert_eq!(*again.token, *t.token);
    assert_eq!(idp.count(Endpoint::Token), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_with_the_identity_platforms_error() {
    let idp = IdentityStandIn::start().await.unwrap();
    idp.register_secret("app-1", "right");
    let c = credential(&[
        ("AZURE_AUTHORITY_HOST", idp.url()),
        ("INFLUXION_AZURE_CLIENT_ID", "app-1".into()),
        ("INFLUXION_AZURE_TENANT_ID", "t".into()),
        ("INFLUXION_AZURE_CLIENT_SECRET", "wrong".into()),
    ]);
    let e = c.token(VAULT).await.unwrap_err();
    match &e {
        CredentialError::Refused {
            source_name,
            status,
            error,
            description,
        } => {
            assert_eq!(*source_name, "client secret");
            assert_eq!(*status, 401);
            assert_eq!(error, "invalid_client");
            assert!(description.as_deref().unwrap().starts_with("AADSTS7000215"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !e.to_string().contains("wrong"),
        "the secret is never shown"
    );
    // Refusals are not retried.
    assert_eq!(idp.count(Endpoint::Token), 1);
}

#[tokio::test]
async fn the_token_endpoint_is_retried_when_throttled_or_failing() {
    let idp = IdentityStandIn::start().await.unwrap();
    idp.register_secret("app-1", "s");
    let c = credential(&[
        ("AZURE_AUTHORITY_HOST", idp.url()),
        ("INFLUXION_AZURE_CLIENT_ID", "app-1".into()),
        ("INFLUXION_AZURE_TENANT_ID", "t".into()),
        ("INFLUXION_AZURE_CLIENT_SECRET", "s".into()),
    ]);
    idp.fail_next(
        Endpoint::Token,
        &[
            Fault {
                status: 429,
                retry_after: Some(0),
            },
            Fault {
                status: 503,
                retry_after: None,
            },
        ],
    );
    c.token(VAULT).await.unwrap();
    assert_eq!(idp.count(Endpoint::Token), 3);
}

#[tokio::test]
async fn workload_identity_rereads_the_rotating_token_file() {
    let idp = IdentityStandIn::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "federated-1\n").unwrap();
    idp.register_assertion("wl-app", "federated-1");
    idp.set_lifetime(10); // inside the refresh margin: every call exchanges again
    let c = credential(&[
        ("AZURE_AUTHORITY_HOST", idp.url()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
        ("AZURE_CLIENT_ID", "wl-app".into()),
        ("AZURE_TENANT_ID", "wl-tenant".into()),
    ]);
    assert_eq!(c.source().name(), "workload identity");
    c.token(VAULT).await.unwrap();
    let r = &idp.seen()[0];
    assert_eq!(r.path, "/wl-tenant/oauth2/v2.0/token");
    assert_eq!(
        r.form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(r.form["client_assertion"], "federated-1");
    assert!(!r.form.contains_key("client_secret"));
    // The kubelet rotates the file; the next exchange sends the new token.
    std::fs::write(&file, "federated-2").unwrap();
    idp.register_assertion("wl-app", "federated-2");
    c.token(VAULT).await.unwrap();
    assert_eq!(idp.seen()[1].form["client_assertion"], "federated-2");
    // A file that disappears is named.
    std::fs::remove_file(&file).unwrap();
    idp.set_lifetime(1);
    let c2 = credential(&[
        ("AZURE_AUTHORITY_HOST", idp.url()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
        ("AZURE_CLIENT_ID", "wl-app".into()),
        ("AZURE_TENANT_ID", "wl-tenant".into()),
    ]);
    let e = c2.token(VAULT).await.unwrap_err();
    assert!(matches!(e, CredentialError::FederatedToken { .. }), "{e}");
}

#[tokio::test]
async fn app_service_sends_its_header_api_version_and_resource() {
    let idp = IdentityStandIn::start().await.unwrap();
    idp.register_user_assigned("ua-1");
    let system = credential(&[
        ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
        ("IDENTITY_HEADER", idp.identity_header()),
    ]);
    assert_eq!(system.source().name(), "App Service managed identity");
    let t = system.token(VAULT).await.unwrap();
    assert!(t.token.starts_with("standin-appservice-token-"));
    assert!(t.expires_on > 0);
    let r = &idp.seen()[0];
    assert_eq!(r.query["api-version"], "2019-08-01");
    assert_eq!(r.query["resource"], VAULT);
    assert!(!r.query.contains_key("client_id"), "system-assigned");
    assert_eq!(r.headers["x-identity-header"], idp.identity_header());
    // A user-assigned identity is selected with client_id.
    let user = credential(&[
        ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
        ("IDENTITY_HEADER", idp.identity_header()),
        ("INFLUXION_AZURE_CLIENT_ID", "ua-1".into()),
    ]);
    user.token(VAULT).await.unwrap();
    assert_eq!(idp.seen()[1].query["client_id"], "ua-1");
    // A wrong header is refused with App Service's error shape, not retried.
    let wrong = credential(&[
        ("IDENTITY_ENDPOINT", idp.identity_endpoint()),
        ("IDENTITY_HEADER", "not-the-header".into()),
    ]);
    let e = wrong.token(VAULT).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Refused { status: 400, description: Some(d), .. } if d.contains("X-IDENTITY-HEADER")),
        "{e}"
    );
    assert_eq!(idp.count(Endpoint::AppService), 3);
}

#[tokio::test]
async fn the_instance_metadata_service_is_asked_as_documented() {
    let idp = IdentityStandIn::start().await.unwrap();
    idp.register_user_assigned("ua-2");
    let c = credential(&[("INFLUXION_IMDS_ENDPOINT", idp.url())]);
    assert_eq!(c.source().name(), "instance metadata managed identity");
    let t = c.token(VAULT).await.unwrap();
    assert!(t.token.starts_with("standin-imds-token-"));
    let r = &idp.seen()[0];
    assert_eq!(r.path, "/metadata/identity/oauth2/token");
    assert_eq!(r.query["api-version"], "2018-02-01");
    assert_eq!(r.query["resource"], VAULT);
    assert_eq!(r.headers["metadata"], "true");
    assert!(!r.query.contains_key("client_id"));
    let user = credential(&[
        ("INFLUXION_IMDS_ENDPOINT", idp.url()),
        ("INFLUXION_AZURE_CLIENT_ID", "ua-2".into()),
    ]);
    user.token(VAULT).await.unwrap();
    assert_eq!(idp.seen()[1].query["client_id"], "ua-2");
    // An identity the machine does not have: refused at once.
    let unknown = credential(&[
        ("INFLUXION_IMDS_ENDPOINT", idp.url()),
        ("INFLUXION_AZURE_CLIENT_ID", "nobody".into()),
    ]);
    let e = unknown.token(VAULT).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Refused { status: 400, error, .. } if error == "invalid_request"),
        "{e}"
    );
    assert_eq!(idp.count(Endpoint::Imds), 3);
}

#[tokio::test]
async fn the_metadata_service_is_retried_on_404_410_429_and_5xx() {
    let idp = IdentityStandIn::start().await.unwrap();
    let c = credential(&[("INFLUXION_IMDS_ENDPOINT", idp.url())]);
    idp.fail_next(
        Endpoint::Imds,
        &[
            Fault {
                status: 410,
                retry_after: None,
            },
            Fault {
                status: 429,
                retry_after: Some(0),
            },
            Fault {
                status: 503,
                retry_after: None,
            },
        ],
    );
    c.token(VAULT).await.unwrap();
    assert_eq!(idp.count(Endpoint::Imds), 4);
    // Past the attempts: unavailable, and the last answer says why.
    let idp = IdentityStandIn::start().await.unwrap();
    let c = credential(&[("INFLUXION_IMDS_ENDPOINT", idp.url())]);
    let f = Fault {
        status: 500,
        retry_after: None,
    };
    idp.fail_next(Endpoint::Imds, &[f.clone(), f.clone(), f.clone(), f]);
    let e = c.token(VAULT).await.unwrap_err();
    assert!(matches!(e, CredentialError::Unavailable { .. }), "{e}");
    assert_eq!(idp.count(Endpoint::Imds), 4, "fast() allows four attempts");
}

#[tokio::test]
async fn concurrent_callers_share_one_request_and_tokens_refresh_before_expiry() {
    let idp = IdentityStandIn::start().await.unwrap();
    let c = Arc::new(credential(&[("INFLUXION_IMDS_ENDPOINT", idp.url())]));
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.token(VAULT).await.map(|t| t.token.to_string()) })
        })
        .collect();
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap().unwrap());
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(idp.count(Endpoint::Imds), 1, "single flight");
    // Per resource: another audience is another token.
    c.token("https://ossrdbms-aad.database.windows.net")
        .await
        .unwrap();
    assert_eq!(idp.count(Endpoint::Imds), 2);

    // A token within five minutes of expiry is refreshed; if the refresh fails while
    // it is still valid, it is used.
    let idp = IdentityStandIn::start().await.unwrap();
    idp.set_lifetime(200);
    let c = credential(&[("INFLUXION_IMDS_ENDPOINT", idp.url())]);
    let first = c.token(VAULT).await.unwrap();
    let second = c.token(VAULT).await.unwrap();
    assert_ne!(*first.token, *second.token);
    assert_eq!(idp.count(Endpoint::Imds), 2);
    let f = Fault {
        status: 503,
        retry_after: None,
    };
    idp.fail_next(Endpoint::Imds, &[f.clone(), f.clone(), f.clone(), f]);
    let third = c.token(VAULT).await.unwrap();
    assert_eq!(*third.token, *second.token, "the still-valid token");
}

#[tokio::test]
async fn extra_trust_roots_must_be_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let e = http_client(Some(&bad)).unwrap_err();
    assert!(
        matches!(
            &e,
            CredentialError::Config {
                setting: "INFLUXION_VAULT_CA_FILE",
                ..
            }
        ),
        "{e}"
    );
    let missing = dir.path().join("none.pem");
    assert!(http_client(Some(&missing)).is_err());
}

//! `influxion serve` and `influxion dev`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use influxion_auth::Validator;
use influxion_core::{Backends, KeyName, KeyType, Role, SubjectRules};
use influxion_devidp::{DevClient, DevIdpState, DevUser, DevWebClient};
use influxion_keystore::{Kek, SoftwareKeystore};
use influxion_server::service::keys;
use influxion_server::service::subjects::grant;
use influxion_server::AppState;
use influxion_store::{KeyPolicy, Store};
use tokio::net::TcpListener;

use crate::config::{ServerConfig, DEV_AUDIENCE};

/// Open the store, keystore and validator described by `cfg`.
pub(crate) async fn build_state(cfg: &ServerConfig, kek: Kek) -> Result<AppState> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let store = Store::open_with(
        &cfg.database_url,
        influxion_store::AuditKey::new(kek.audit_mac_key()),
        crate::database::password_source(&cfg.database_auth)?,
    )
    .await
    .with_context(|| format!("opening {}", crate::config::redact_url(&cfg.database_url)))?;
    // One registration line per key backend; keys name theirs, the first is where new
    // keys go.
    let mut backends = Backends::new(Arc::new(SoftwareKeystore::new(kek)));
    if let Some(vault) = &cfg.vault {
        backends = backends.with(Arc::new(key_vault(vault)?));
    }
    let mut tokens: Vec<(String, String)> = Vec::new();
    for p in &cfg.pkcs11 {
        let token = influxion_pkcs11::Pkcs11Backend::open(p.clone()).with_context(|| {
            format!("opening {} (backend {}) with {}", p.token, p.name, p.module)
        })?;
        // Two backends on one token would share its login: the second PIN would never
        // be checked, and keys would have two names.
        let serial = token.token_serial().to_owned();
        if let Some((other, _)) = tokens.iter().find(|(_, s)| *s == serial) {
            anyhow::bail!(
                "backends {other} and {} name the same PKCS#11 token (serial {serial}); configure it once",
                p.name
            );
        }
        tokens.push((p.name.clone(), serial));
        backends = backends.with(Arc::new(token));
    }
    check_backends(&store, &backends).await?;
    if let Some(rules) = &cfg.bootstrap_admin {
        bootstrap_admin(&store, rules.clone()).await?;
    }
    let validator = Validator::new(cfg.auth.clone())?;
    validator.start_background_refresh();
    let rate_limits = influxion_server::SubjectLimiter::new(cfg.rate_limits.clone());
    for k in rate_limits.unmatched(&store.subjects().await?) {
        tracing::warn!(
            subject = k,
            "[rate_limits.subjects] names no subject (by id or name) yet: it applies once one is created with it"
        );
    }
    // The writer's batches feed the audit append and batch size histograms.
    let metrics = influxion_server::Metrics::new();
    store.observe_commits(Arc::new(metrics.clone()));
    Ok(AppState::new(influxion_server::Services {
        store,
        backends,
        validator,
        refusals: Default::default(),
        pki: Arc::new(influxion_server::PkiSettings {
            public_url: cfg.public_url.clone(),
            est_profile: cfg.est_profile.clone(),
        }),
        pki_cache: Default::default(),
        feed: Default::default(),
        metrics,
        rate_limits: Arc::new(rate_limits),
    }))
}

/// The Azure Key Vault backend of `vault.url`, reached with the configured credential.
fn key_vault(v: &crate::config::VaultConfig) -> Result<influxion_keyvault::KeyVaultBackend> {
    let http =
        influxion_azure::http_client(v.ca_file.as_deref()).context("INFLUXION_VAULT_CA_FILE")?;
    let credential = influxion_azure::Credential::new(v.credential.clone(), http.clone());
    Ok(influxion_keyvault::KeyVaultBackend::new(
        v.url.clone(),
        http,
        Arc::new(credential),
        influxion_azure::KEY_VAULT_RESOURCE,
    )
    .hsm(v.hsm))
}

/// Prove at start that each configured backend can use a key it holds: a wrong
/// key-encryption key (or, later, a missing token or refused credential) fails here,
/// naming the setting, instead of on the first signature. Keys of a backend that is not
/// configured are reported; they answer 503 `backend-unavailable` until it is.
async fn check_backends(store: &Store, backends: &Backends) -> Result<()> {
    let keys = store.list_keys().await?;
    let mut checked = Vec::new();
    for name in backends.names() {
        if let Some(k) = keys.iter().find(|k| k.backend == name) {
            checked.push(k.id.as_str());
            backends.check(k).await.with_context(|| match name {
                "software" => format!(
                    "the key-encryption key does not open stored key {} (wrong INFLUXION_KEK / keystore.kek_file?)",
                    k.name
                ),
                _ => format!("the {name} key backend cannot use stored key {}", k.name),
            })?;
        }
    }
    // The other keys of remote backends are checked too, so what they need in memory
    // (a certificate's secret key) is read now; a key that fails is reported and
    // answers with a problem, the others keep working.
    for k in keys
        .iter()
        .filter(|k| k.backend != "software" && backends.get(&k.backend).is_ok())
        .filter(|k| !checked.contains(&k.id.as_str()))
    {
        if let Err(e) = backends.check(k).await {
            tracing::warn!(key = %k.name, backend = %k.backend, error = %e, "stored key not usable");
        }
    }
    for k in keys.iter().filter(|k| backends.get(&k.backend).is_err()) {
        tracing::warn!(key = %k.name, backend = %k.backend, "key backend not configured: the key cannot sign");
    }
    Ok(())
}

/// Create the first admin subject from configuration, once: only while there are no
/// subjects at all, so a deployment is usable and later changes go through the API.
async fn bootstrap_admin(store: &Store, rules: influxion_core::SubjectRules) -> Result<()> {
    if !store.subjects().await?.is_empty() {
        return Ok(());
    }
    match influxion_server::service::subjects::create(
        store,
        &influxion_core::Actor::id_only("system:bootstrap"),
        "bootstrap-admin",
        "first admin, from configuration",
        rules,
        vec![grant(Role::Admin, "*")],
    )
    .await
    {
        Ok(_) => tracing::info!("created the bootstrap admin subject"),
        // Replicas starting together on one database: another one made it first.
        Err(influxion_server::ApiError::SubjectExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// `/metrics` on its own listener, when `metrics_listen` is set. Plain HTTP, no token:
/// Prometheus on a private network. It ends with the process.
async fn serve_metrics(cfg: &ServerConfig, state: &influxion_server::AppState) -> Result<()> {
    let Some(addr) = cfg.metrics_listen else {
        return Ok(());
    };
    let metrics = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (metrics_listen / INFLUXION_METRICS_LISTEN)"))?;
    let router = influxion_server::metrics::router(state.clone());
    let limits = cfg.http;
    tracing::info!(listen = %addr, "metrics listening (unauthenticated: keep it private)");
    tokio::spawn(async move {
        if let Err(e) =
            influxion_edge::serve(metrics, router, limits, None, std::future::pending()).await
        {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

pub(crate) async fn serve(cfg: ServerConfig) -> Result<()> {
    let kek = cfg.kek.load()?;
    let state = build_state(&cfg, kek).await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let tls = match &cfg.tls {
        Some((cert, key)) => {
            let certs = influxion_edge::ReloadingCert::new(cert, key)
                .context("tls.cert_file / INFLUXION_TLS_CERT_FILE")?;
            tokio::spawn(reload_on_sighup(certs.clone()));
            Some(certs.server_config())
        }
        None => None,
    };
    serve_metrics(&cfg, &state).await?;
    tracing::info!(listen = %cfg.listen, tls = tls.is_some(), metadata = %cfg.auth.metadata_url, "keyserver listening");
    influxion_edge::serve(
        listener,
        influxion_server::app(state).layer(axum::middleware::from_fn(influxion_edge::request_id)),
        cfg.http,
        tls,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Read the TLS certificate and key again on each SIGHUP (a renewed certificate); a
/// pair that does not load is logged and the one in use stays.
async fn reload_on_sighup(certs: std::sync::Arc<influxion_edge::ReloadingCert>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the TLS certificate is not reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays")
            }
        }
    }
}

/// Write a file readable only by its owner, unless it exists.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `influxion keyclient`: the backend-for-frontend as its own process.
pub(crate) async fn keyclient(cfg: influxion_keyclient::KeyclientConfig) -> Result<()> {
    let app = influxion_keyclient::build(&cfg).await?;
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding the keyclient on {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, public_url = %cfg.public_url, "keyclient ready");
    influxion_keyclient::serve(
        app,
        listener,
        cfg.tls.as_ref(),
        cfg.limits,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

pub(crate) const DEV_CLIENT_ID: &str = "influxion-dev-ci";

pub(crate) async fn dev(data_dir: &Path, port: u16) -> Result<()> {
    // Only the environment (INFLUXION_HTTP_*): dev mode reads no configuration file.
    let limits = crate::config::http_limits(&Default::default())?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let kek_path = data_dir.join("kek");
    if !kek_path.exists() {
        write_private(&kek_path, Kek::generate().to_base64().as_bytes())?;
    }
    let idp_path = data_dir.join("dev-oidc.json");
    if !idp_path.exists() {
        let client = |id: &str| DevClient {
            client_id: id.into(),
            client_secret: random_secret(),
            roles: vec!["Influxion.Sign".into()],
        };
        let mut clients = vec![client(DEV_CLIENT_ID)];
        clients.extend(DEV_APPROVERS.iter().map(|a| client(a)));
        let state = DevIdpState::generate(DEV_AUDIENCE, clients)?;
        write_private(&idp_path, &serde_json::to_vec_pretty(&state)?)?;
    }
    let mut idp: DevIdpState = serde_json::from_slice(&std::fs::read(&idp_path)?)
        .with_context(|| format!("reading {}", idp_path.display()))?;

    let issuer_port = port.checked_add(1).context("--port too large")?;
    let web_port = port.checked_add(2).context("--port too large")?;
    let issuer = format!("http://127.0.0.1:{issuer_port}");
    let web_url = format!("http://127.0.0.1:{web_port}/");
    // The keyclient's registration and the people who sign in at the web app (added to
    // data directories made before the keyclient existed, too).
    let redirect = format!(
        "http://127.0.0.1:{web_port}{}",
        influxion_keyclient::DEFAULT_CALLBACK_PATH
    );
    if let Some(c) = idp
        .web_clients
        .iter_mut()
        .find(|c| c.client_id == DEV_KEYCLIENT_ID && c.redirect_uris != [redirect.clone()])
    {
        // Another --port than last time: the keyclient moved with it.
        c.redirect_uris = vec![redirect.clone()];
        c.post_logout_redirect_uris = vec![web_url.clone()];
        std::fs::remove_file(&idp_path)?;
        write_private(&idp_path, &serde_json::to_vec_pretty(&idp)?)?;
    }
    if idp.web_clients.is_empty() {
        idp.web_clients.push(DevWebClient {
            client_id: DEV_KEYCLIENT_ID.into(),
            client_secret: random_secret(),
            redirect_uris: vec![format!(
                "http://127.0.0.1:{web_port}{}",
                influxion_keyclient::DEFAULT_CALLBACK_PATH
            )],
            post_logout_redirect_uris: vec![web_url.clone()],
        });
        idp.users = DEV_USERS
            .iter()
            .map(|(username, name, _)| DevUser {
                username: (*username).into(),
                name: (*name).into(),
                roles: vec![],
            })
            .collect();
        std::fs::remove_file(&idp_path)?;
        write_private(&idp_path, &serde_json::to_vec_pretty(&idp)?)?;
    }
    let keyclient_secret = idp
        .web_clients
        .iter()
        .find(|c| c.client_id == DEV_KEYCLIENT_ID)
        .map(|c| c.client_secret.clone())
        .context("the development issuer has no keyclient registration")?;
    let idp_listener = TcpListener::bind(("127.0.0.1", issuer_port))
        .await
        .with_context(|| format!("binding the development issuer on 127.0.0.1:{issuer_port}"))?;
    let api_listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the keyserver on 127.0.0.1:{port}"))?;
    let secret_of = |id: &str| {
        idp.clients
            .iter()
            .find(|c| c.client_id == id)
            .map(|c| c.client_secret.clone())
            .unwrap_or_default()
    };
    let secret = secret_of(DEV_CLIENT_ID);
    let approver_secrets: Vec<String> = DEV_APPROVERS.iter().map(|a| secret_of(a)).collect();
    let idp_router = influxion_devidp::router(&issuer, idp)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(idp_listener, idp_router).await {
            tracing::error!(error = %e, "development issuer stopped");
        }
    });

    let cfg = ServerConfig {
        listen: ([127, 0, 0, 1], port).into(),
        data_dir: data_dir.to_path_buf(),
        database_auth: crate::config::DatabaseAuth::Url,
        database_url: format!("sqlite://{}/influxion.db", data_dir.display()),
        auth: influxion_devidp::validator_config(&issuer, DEV_AUDIENCE),
        admin_role: "Influxion.Admin".into(),
        sign_role: "Influxion.Sign".into(),
        kek: crate::config::KekSource::File(kek_path),
        vault_url: None,
        vault_credential: None,
        // A vault for development keys too (`keys create --backend azure-keyvault`),
        // with the same settings as `serve`; none by default.
        vault: std::env::var("INFLUXION_VAULT_URL")
            .ok()
            .map(|u| crate::config::vault_config(&u))
            .transpose()?,
        pkcs11: crate::config::pkcs11_config(&Default::default())?,
        public_url: Some(format!("http://127.0.0.1:{port}")),
        est_profile: Some("device".into()),
        bootstrap_admin: None,
        http: limits,
        tls: None,
        // As for `serve` (the benchmark reads the writer's batch sizes there).
        metrics_listen: crate::config::metrics_listen(
            &Default::default(),
            ([127, 0, 0, 1], port).into(),
        )?,
        rate_limits: Default::default(),
    };
    let state = build_state(&cfg, cfg.kek.load()?).await?;
    serve_metrics(&cfg, &state).await?;
    ensure_dev_subjects(&state.store).await?;
    ensure_key(&state, "demo", 0).await?;
    ensure_key(&state, "demo-release", 2).await?;
    influxion_server::ensure_dev_ca(&state).await?;
    influxion_server::ensure_dev_code_signing(&state, &["demo", "demo-release"]).await?;

    let session_key_path = data_dir.join("keyclient-session-key");
    if !session_key_path.exists() {
        use base64::Engine as _;
        use rand::RngCore;
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        let text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(k));
        write_private(&session_key_path, text.as_bytes())?;
    }
    let kc = influxion_keyclient::KeyclientConfig {
        listen: ([127, 0, 0, 1], web_port).into(),
        public_url: web_url.parse()?,
        keyserver_url: format!("http://127.0.0.1:{port}/").parse()?,
        oidc: influxion_keyclient::OidcSettings {
            metadata_url: format!("{issuer}/.well-known/openid-configuration").parse()?,
            client_id: DEV_KEYCLIENT_ID.into(),
            client_secret: zeroize::Zeroizing::new(keyclient_secret),
            redirect_uri: format!(
                "http://127.0.0.1:{web_port}{}",
                influxion_keyclient::DEFAULT_CALLBACK_PATH
            )
            .parse()?,
            post_logout_redirect_uri: web_url.parse()?,
            scopes: influxion_keyclient::scopes(&format!("{DEV_AUDIENCE}/access_as_user")),
        },
        database_url: format!("sqlite://{}/keyclient.db", data_dir.display()),
        session_key: crate::config::session_key(&std::fs::read_to_string(&session_key_path)?)?,
        timeouts: Default::default(),
        tls: None,
        limits,
    };
    let web_listener = std::net::TcpListener::bind(kc.listen)
        .with_context(|| format!("binding the keyclient on {}", kc.listen))?;
    let web_app = influxion_keyclient::build(&kc).await?;
    tokio::spawn(async move {
        if let Err(e) =
            influxion_keyclient::serve(web_app, web_listener, None, limits, std::future::pending())
                .await
        {
            tracing::error!(error = %e, "keyclient stopped");
        }
    });

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "influxion".into());
    let env_path = data_dir.join("dev.env");
    let exports = format!(
        "export INFLUXION_SERVER=http://127.0.0.1:{port}\n\
         export INFLUXION_OIDC_METADATA_URL={issuer}/.well-known/openid-configuration\n\
         export INFLUXION_AZURE_CLIENT_ID={DEV_CLIENT_ID}\n\
         export INFLUXION_AZURE_CLIENT_SECRET={secret}\n\
         export INFLUXION_AZURE_DEFAULT_SCOPE={DEV_AUDIENCE}/.default\n"
    );
    let _ = std::fs::remove_file(&env_path);
    write_private(&env_path, exports.as_bytes())?;
    for (i, (a, s)) in DEV_APPROVERS.iter().zip(&approver_secrets).enumerate() {
        let p = data_dir.join(format!("approver{}.env", i + 1));
        let text = exports
            .replace(
                &format!("CLIENT_ID={DEV_CLIENT_ID}"),
                &format!("CLIENT_ID={a}"),
            )
            .replace(
                &format!("CLIENT_SECRET={secret}"),
                &format!("CLIENT_SECRET={s}"),
            );
        let _ = std::fs::remove_file(&p);
        write_private(&p, text.as_bytes())?;
    }
    println!(
        "\nInfluxion development mode — loopback only, NOT for production.\n\n  \
         web app         {web_url}   sign in as alice (admin), bob or carol (approvers, auditors)\n  \
         keyserver API   http://127.0.0.1:{port}   (OpenAPI: http://127.0.0.1:{port}/openapi.json)\n  \
         dev OIDC issuer {issuer}   DEVELOPMENT-ONLY token issuer\n  \
         data directory  {dir}   (SQLite, software keystore, key-encryption key)\n  \
         keys            demo (ECDSA P-256), demo-release (needs 2 approvals)\n  \
         device CA       dev-device-ca, profile device (EST: http://127.0.0.1:{port}/.well-known/est/)\n\n\
         Try, in another shell (the client credentials are in {env}):\n\n  \
         source {env}\n  \
         head -c 64M /dev/urandom > firmware.bin\n  \
         {exe} sign --key demo firmware.bin -o firmware.sig\n  \
         {exe} verify --key demo firmware.bin --signature firmware.sig\n  \
         {exe} keys public demo -o pub.pem\n  \
         openssl dgst -sha256 -verify pub.pem -signature firmware.sig firmware.bin\n  \
         {exe} keys create release --type rsa-3072\n  \
         {exe} audit verify --data-dir {dir}\n\n\
         Four-eyes signing (demo-release needs two approvers):\n\n  \
         {exe} sign --key demo-release firmware.bin --reason \"release 2.1\" -o release.sig   # waits\n  \
         (source {dir}/approver1.env; {exe} approvals list; {exe} approvals approve <request-id> --comment ok)\n  \
         (source {dir}/approver2.env; {exe} approvals approve <request-id> --comment ok)\n\n\
         Device certificates:\n\n  \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key -subj /CN=device-0001 -out dev.csr\n  \
         {exe} cert issue --profile device --csr dev.csr -o dev.pem\n  \
         {exe} ca chain dev-device-ca -o ca.pem && openssl verify -CAfile ca.pem dev.pem\n\n\
         Press Ctrl-C to stop.\n",
        dir = data_dir.display(),
        env = env_path.display(),
    );
    influxion_edge::serve(
        api_listener,
        influxion_server::app(state).layer(axum::middleware::from_fn(influxion_edge::request_id)),
        limits,
        None,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

pub(crate) const DEV_KEYCLIENT_ID: &str = "influxion-dev-keyclient";

/// People of the development issuer: login, display name, role on every name.
const DEV_USERS: [(&str, &str, Role); 3] = [
    ("alice", "Alice Admin", Role::Admin),
    ("bob", "Bob Approver", Role::Approver),
    ("carol", "Carol Approver", Role::Approver),
];

pub(crate) const DEV_APPROVERS: [&str; 2] =
    ["influxion-dev-approver-1", "influxion-dev-approver-2"];

/// The development subjects: the CI client is admin; two approver clients.
async fn ensure_dev_subjects(store: &Store) -> Result<()> {
    let existing: Vec<String> = store
        .subjects()
        .await?
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let app = |id: &str| SubjectRules {
        app_id: Some(id.into()),
        ..Default::default()
    };
    let person = |login: &str| SubjectRules {
        object_id: Some(influxion_devidp::user_object_id(login)),
        ..Default::default()
    };
    let mut subjects = vec![
        ("dev-ci".to_owned(), app(DEV_CLIENT_ID), vec![Role::Admin]),
        (
            "dev-approver-1".into(),
            app(DEV_APPROVERS[0]),
            vec![Role::Approver],
        ),
        (
            "dev-approver-2".into(),
            app(DEV_APPROVERS[1]),
            vec![Role::Approver],
        ),
    ];
    for (login, _, role) in DEV_USERS {
        let roles = if role == Role::Admin {
            vec![role]
        } else {
            vec![role, Role::Auditor]
        };
        subjects.push((format!("dev-user-{login}"), person(login), roles));
    }
    for (name, rules, roles) in subjects {
        if existing.contains(&name) {
            continue;
        }
        let grants = roles.into_iter().map(|role| grant(role, "*")).collect();
        influxion_server::service::subjects::create(
            store,
            &influxion_core::Actor::id_only("system:dev"),
            &name,
            "development mode",
            rules,
            grants,
        )
        .await?;
    }
    Ok(())
}

async fn ensure_key(state: &AppState, name: &str, approvals: u32) -> Result<()> {
    let key_name: KeyName = name.parse()?;
    if state.store.get_key(&key_name).await?.is_some() {
        return Ok(());
    }
    let actor = &influxion_core::Actor::id_only("system:dev");
    let key = keys::create(
        &state.store,
        &state.backends,
        actor,
        key_name,
        KeyType::EcP256,
        None,
    )
    .await?;
    if approvals > 0 {
        let policy = KeyPolicy {
            approvals_required: approvals,
            ..Default::default()
        };
        keys::set_policy(&state.store, actor, key, policy).await?;
    }
    Ok(())
}

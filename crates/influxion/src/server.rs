//! `influxion serve` and `influxion dev`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use influxion_auth::{AuthConfig, Validator};
use influxion_core::{KeyName, KeyStatus, KeyType};
use influxion_devidp::{DevClient, DevIdpState};
use influxion_keystore::{Kek, SoftwareKeystore};
use influxion_server::{AccessPolicy, AppState};
use influxion_store::{AuditEvent, KeyRecord, Outcome, Store};
use tokio::net::TcpListener;

use crate::config::{ServerConfig, DEV_AUDIENCE};

/// Open the store, keystore and validator described by `cfg`.
pub async fn build_state(cfg: &ServerConfig, kek: Kek) -> Result<AppState> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let store = Store::open(&cfg.database_url)
        .await
        .with_context(|| format!("opening {}", cfg.database_url))?;
    let keystore = SoftwareKeystore::new(kek);
    if let Some(k) = store
        .list_keys()
        .await?
        .iter()
        .find(|k| k.backend == "software")
    {
        keystore.check(&k.id, k.key_type, &k.handle).with_context(|| {
            format!(
                "the key-encryption key does not open stored key {} (wrong INFLUXION_KEK / keystore.kek_file?)",
                k.name
            )
        })?;
    }
    let validator = Validator::new(cfg.auth.clone())?;
    validator.start_background_refresh();
    Ok(AppState {
        store,
        backend: Arc::new(keystore),
        validator,
        policy: Arc::new(AccessPolicy {
            admin_role: cfg.admin_role.clone(),
            sign_role: cfg.sign_role.clone(),
        }),
        refusals: Default::default(),
    })
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

pub async fn serve(cfg: ServerConfig) -> Result<()> {
    let kek = cfg.kek.load()?;
    let state = build_state(&cfg, kek).await?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, metadata = %cfg.auth.metadata_url, "keyserver listening");
    axum::serve(listener, influxion_server::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
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

pub const DEV_CLIENT_ID: &str = "influxion-dev-ci";

pub async fn dev(data_dir: &Path, port: u16) -> Result<()> {
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
        let state = DevIdpState::generate(
            DEV_AUDIENCE,
            vec![DevClient {
                client_id: DEV_CLIENT_ID.into(),
                client_secret: random_secret(),
                roles: vec!["Influxion.Sign".into(), "Influxion.Admin".into()],
            }],
        )?;
        write_private(&idp_path, &serde_json::to_vec_pretty(&state)?)?;
    }
    let idp: DevIdpState = serde_json::from_slice(&std::fs::read(&idp_path)?)
        .with_context(|| format!("reading {}", idp_path.display()))?;

    let issuer_port = port.checked_add(1).context("--port too large")?;
    let issuer = format!("http://127.0.0.1:{issuer_port}");
    let idp_listener = TcpListener::bind(("127.0.0.1", issuer_port))
        .await
        .with_context(|| format!("binding the development issuer on 127.0.0.1:{issuer_port}"))?;
    let api_listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the keyserver on 127.0.0.1:{port}"))?;
    let secret = idp
        .clients
        .first()
        .map(|c| c.client_secret.clone())
        .unwrap_or_default();
    let idp_router = influxion_devidp::router(&issuer, idp)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(idp_listener, idp_router).await {
            tracing::error!(error = %e, "development issuer stopped");
        }
    });

    let cfg = ServerConfig {
        listen: ([127, 0, 0, 1], port).into(),
        data_dir: data_dir.to_path_buf(),
        database_url: format!("sqlite://{}/influxion.db", data_dir.display()),
        auth: AuthConfig {
            metadata_url: format!("{issuer}/.well-known/openid-configuration"),
            audiences: vec![DEV_AUDIENCE.into()],
            tenant_id: None,
            allowed_tenants: vec![],
            extra_issuers: vec![],
            required_scope: "access_as_user".into(),
            app_roles: vec!["Influxion.Sign".into(), "Influxion.Admin".into()],
            accepted_versions: vec!["2.0".into()],
            algorithms: AuthConfig::DEFAULT_ALGORITHMS.to_vec(),
            clock_skew: std::time::Duration::from_secs(300),
            jwks_refresh_interval: std::time::Duration::from_secs(3600),
            jwks_min_refresh_interval: std::time::Duration::from_secs(60),
            jwks_max_age: std::time::Duration::from_secs(24 * 3600),
            max_token_bytes: 16 * 1024,
            allow_insecure_http: false,
        },
        admin_role: "Influxion.Admin".into(),
        sign_role: "Influxion.Sign".into(),
        kek: crate::config::KekSource::File(kek_path),
        vault_url: None,
    };
    let state = build_state(&cfg, cfg.kek.load()?).await?;
    ensure_demo_key(&state).await?;

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
    println!(
        "\nInfluxion development mode — loopback only, NOT for production.\n\n  \
         keyserver API   http://127.0.0.1:{port}   (OpenAPI: http://127.0.0.1:{port}/openapi.json)\n  \
         dev OIDC issuer {issuer}   DEVELOPMENT-ONLY token issuer\n  \
         data directory  {dir}   (SQLite, software keystore, key-encryption key)\n  \
         demo key        demo (ECDSA P-256)\n\n\
         Try, in another shell (the client credentials are in {env}):\n\n  \
         source {env}\n  \
         head -c 64M /dev/urandom > firmware.bin\n  \
         {exe} sign --key demo firmware.bin -o firmware.sig\n  \
         {exe} verify --key demo firmware.bin --signature firmware.sig\n  \
         {exe} keys public demo -o pub.pem\n  \
         openssl dgst -sha256 -verify pub.pem -signature firmware.sig firmware.bin\n  \
         {exe} keys create release --type rsa-3072\n  \
         {exe} audit verify --data-dir {dir}\n\n\
         Press Ctrl-C to stop.\n",
        dir = data_dir.display(),
        env = env_path.display(),
    );
    axum::serve(api_listener, influxion_server::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn ensure_demo_key(state: &AppState) -> Result<()> {
    let name: KeyName = "demo".parse()?;
    if state.store.get_key(&name).await?.is_some() {
        return Ok(());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let g = state.backend.generate(&id, KeyType::EcP256).await?;
    let record = KeyRecord {
        id,
        name: name.clone(),
        key_type: KeyType::EcP256,
        backend: state.backend.name().into(),
        status: KeyStatus::Active,
        public_key: g.public_key_der,
        handle: g.handle,
        created_at: influxion_store::now_rfc3339(),
        created_by: "system:dev".into(),
    };
    let event = AuditEvent::new("system:dev", "key.create", Outcome::Ok)
        .target("demo")
        .detail(serde_json::json!({"key_type": "ec-p256", "backend": "software"}));
    state.store.insert_key(record, event).await?;
    Ok(())
}

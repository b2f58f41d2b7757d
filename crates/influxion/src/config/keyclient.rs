//! The configuration of `influxion keyclient`: the backend-for-frontend's listener,
//! public origin, OIDC client and session key.

use std::path::PathBuf;

use super::{
    entra_metadata_url, env, env_secret, env_u64, err, http_limits, is_loopback_url, parse_url,
    ConfigError, FileConfig, DEV_SERVER,
};

/// The configuration of `influxion keyclient`, from the environment (and the auth
/// settings of the TOML file). See docs/configuration.md.
pub(crate) fn keyclient(
    file: &FileConfig,
) -> Result<influxion_keyclient::KeyclientConfig, ConfigError> {
    use influxion_keyclient::{KeyclientConfig, OidcSettings, Timeouts};
    let listen_text = env("INFLUXION_KEYCLIENT_LISTEN").unwrap_or_else(|| "127.0.0.1:8402".into());
    let listen: std::net::SocketAddr = listen_text.parse().map_err(|_| {
        err(
            "INFLUXION_KEYCLIENT_LISTEN",
            format!("{listen_text:?} is not host:port"),
        )
    })?;
    let public_url = match env("INFLUXION_KEYCLIENT_PUBLIC_URL") {
        Some(v) => parse_url("INFLUXION_KEYCLIENT_PUBLIC_URL", &v)?,
        None => parse_url("INFLUXION_KEYCLIENT_LISTEN", &format!("http://{listen}/"))?,
    };
    let tls =
        match (
            env("INFLUXION_KEYCLIENT_TLS_CERT"),
            env("INFLUXION_KEYCLIENT_TLS_KEY"),
        ) {
            (Some(cert), Some(key)) => Some(influxion_keyclient::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            _ => return Err(err(
                "INFLUXION_KEYCLIENT_TLS_CERT",
                "set both INFLUXION_KEYCLIENT_TLS_CERT and INFLUXION_KEYCLIENT_TLS_KEY, or neither",
            )),
        };
    // The session cookie is Secure: browsers accept that over plain HTTP on loopback only.
    if public_url.scheme() != "https" && !is_loopback_url(&public_url) {
        return Err(err(
            "INFLUXION_KEYCLIENT_PUBLIC_URL",
            format!("{public_url} must be https:// (plain http is for loopback development only)"),
        ));
    }
    let server = env("INFLUXION_SERVER")
        .or_else(|| file.client.server.clone())
        .unwrap_or_else(|| DEV_SERVER.into());
    let keyserver_url = parse_url("INFLUXION_SERVER", &server)?;
    // Bearer tokens go to the keyserver, the client secret and codes to the provider:
    // never in clear text beyond this host.
    if keyserver_url.scheme() != "https" && !is_loopback_url(&keyserver_url) {
        return Err(err(
            "INFLUXION_SERVER",
            format!("{keyserver_url} must be https:// unless it is on loopback"),
        ));
    }
    let tenant = env("INFLUXION_AZURE_TENANT_ID").or_else(|| file.auth.tenant_id.clone());
    let metadata = env("INFLUXION_OIDC_METADATA_URL")
        .or_else(|| file.auth.metadata_url.clone())
        .or_else(|| tenant.as_deref().map(entra_metadata_url))
        .ok_or_else(|| {
            err(
                "INFLUXION_OIDC_METADATA_URL",
                "set it, or INFLUXION_AZURE_TENANT_ID for Entra ID",
            )
        })?;
    let metadata_url = parse_url("INFLUXION_OIDC_METADATA_URL", &metadata)?;
    if metadata_url.scheme() != "https" && !is_loopback_url(&metadata_url) {
        return Err(err(
            "INFLUXION_OIDC_METADATA_URL",
            format!("{metadata_url} must be https:// unless it is on loopback"),
        ));
    }
    let client_id = env("INFLUXION_KEYCLIENT_CLIENT_ID")
        .or_else(|| env("INFLUXION_AZURE_CLIENT_ID"))
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_CLIENT_ID",
                "the keyclient's client id (or INFLUXION_AZURE_CLIENT_ID) is required",
            )
        })?;
    let client_secret = match env_secret(
        "INFLUXION_KEYCLIENT_CLIENT_SECRET",
        "INFLUXION_KEYCLIENT_CLIENT_SECRET_FILE",
    )? {
        Some(s) => s,
        None => env_secret(
            "INFLUXION_AZURE_CLIENT_SECRET",
            "INFLUXION_AZURE_CLIENT_SECRET_FILE",
        )?
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_CLIENT_SECRET",
                "the keyclient's client secret (or _FILE, or INFLUXION_AZURE_CLIENT_SECRET) is required",
            )
        })?,
    };
    let redirect_uri = match env("INFLUXION_KEYCLIENT_REDIRECT_URI") {
        Some(v) => parse_url("INFLUXION_KEYCLIENT_REDIRECT_URI", &v)?,
        None => KeyclientConfig::default_redirect_uri(&public_url)
            .map_err(|e| err("INFLUXION_KEYCLIENT_PUBLIC_URL", e.to_string()))?,
    };
    if redirect_uri.origin() != public_url.origin() {
        return Err(err(
            "INFLUXION_KEYCLIENT_REDIRECT_URI",
            "must be on the keyclient's own origin (INFLUXION_KEYCLIENT_PUBLIC_URL)",
        ));
    }
    let audience = env("INFLUXION_AZURE_AUDIENCE")
        .or_else(|| env("INFLUXION_AZURE_API_CLIENT_ID").map(|id| format!("api://{id}")));
    let api_scope = env("INFLUXION_KEYCLIENT_SCOPE")
        .or_else(|| audience.map(|a| format!("{a}/access_as_user")))
        .ok_or_else(|| {
            err(
                "INFLUXION_KEYCLIENT_SCOPE",
                "the API scope to request, e.g. api://<api-client-id>/access_as_user",
            )
        })?;
    let data_dir = env("INFLUXION_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let database_url = env("INFLUXION_KEYCLIENT_DATABASE_URL")
        .unwrap_or_else(|| format!("sqlite://{}/keyclient.db", data_dir.display()));
    // PostgreSQL for replicas on several hosts; its password from the URL or the PG*
    // variables (docs/keyclient.md).
    if !influxion_keyclient::supported_database_url(&database_url) {
        return Err(err(
            "INFLUXION_KEYCLIENT_DATABASE_URL",
            "must be a sqlite:, postgres: or postgresql: URL",
        ));
    }
    let key_text = match env_secret(
        "INFLUXION_KEYCLIENT_SESSION_KEY",
        "INFLUXION_KEYCLIENT_SESSION_KEY_FILE",
    )? {
        Some(k) => zeroize::Zeroizing::new(k),
        None => return Err(err(
            "INFLUXION_KEYCLIENT_SESSION_KEY",
            "32 random bytes, base64 (e.g. `openssl rand -base64 32`), the same on every replica; or _FILE",
        )),
    };
    let session_key = session_key(&key_text)?;
    let secs = |name: &'static str, default: u64| -> Result<std::time::Duration, ConfigError> {
        Ok(std::time::Duration::from_secs(
            env_u64(name)?.unwrap_or(default),
        ))
    };
    let timeouts = Timeouts {
        idle: secs("INFLUXION_KEYCLIENT_IDLE_TIMEOUT_SECS", 30 * 60)?,
        absolute: secs("INFLUXION_KEYCLIENT_ABSOLUTE_TIMEOUT_SECS", 8 * 3600)?,
        ..Timeouts::default()
    };
    let (idle, absolute) = (timeouts.idle.as_secs(), timeouts.absolute.as_secs());
    if !(60..=absolute).contains(&idle) || absolute > 7 * 24 * 3600 {
        return Err(err(
            "INFLUXION_KEYCLIENT_IDLE_TIMEOUT_SECS",
            format!("need 60 <= idle ({idle}) <= absolute ({absolute}) <= 604800 (7 days)"),
        ));
    }
    Ok(KeyclientConfig {
        listen,
        oidc: OidcSettings {
            metadata_url,
            client_id,
            client_secret: zeroize::Zeroizing::new(client_secret),
            redirect_uri,
            post_logout_redirect_uri: public_url.clone(),
            scopes: influxion_keyclient::scopes(&api_scope),
        },
        public_url,
        keyserver_url,
        database_url,
        session_key,
        timeouts,
        tls,
        limits: http_limits(&file.http)?,
    })
}

/// A 256-bit key from its base64 text.
pub(crate) fn session_key(text: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, ConfigError> {
    use base64::Engine as _;
    let raw = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| err("INFLUXION_KEYCLIENT_SESSION_KEY", "not base64"))?,
    );
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return Err(err(
            "INFLUXION_KEYCLIENT_SESSION_KEY",
            format!("must be 32 bytes, not {}", raw.len()),
        ));
    }
    key.copy_from_slice(&raw);
    Ok(key)
}

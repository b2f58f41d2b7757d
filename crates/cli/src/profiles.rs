//! The CLI's own files: profiles (`config.toml`) and the token cache (`tokens/`), in the
//! user's config directory (`$INFLUXION_CONFIG_DIR`, else `$XDG_CONFIG_HOME/influxion`,
//! else `~/.config/influxion`). Directories are 0700, token files 0600.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// One keyserver/tenant the CLI talks to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: Option<String>,
    pub metadata_url: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// Scope for client credentials and federated tokens (`api://<api>/.default`).
    pub scope: Option<String>,
    /// Scope people sign in for (`api://<api>/access_as_user`).
    pub login_scope: Option<String>,
    /// Loopback redirect URI for `influxion login` (any port when it has none).
    pub redirect_uri: Option<String>,
}

/// The keys `influxion config set` accepts.
pub const KEYS: [&str; 7] = [
    "server",
    "metadata_url",
    "tenant_id",
    "client_id",
    "scope",
    "login_scope",
    "redirect_uri",
];

impl Profile {
    pub fn get(&self, key: &str) -> Result<Option<&String>> {
        Ok(match key {
            "server" => self.server.as_ref(),
            "metadata_url" => self.metadata_url.as_ref(),
            "tenant_id" => self.tenant_id.as_ref(),
            "client_id" => self.client_id.as_ref(),
            "scope" => self.scope.as_ref(),
            "login_scope" => self.login_scope.as_ref(),
            "redirect_uri" => self.redirect_uri.as_ref(),
            other => bail!("unknown setting {other:?}; one of {}", KEYS.join(", ")),
        })
    }

    fn slot(&mut self, key: &str) -> Result<&mut Option<String>> {
        Ok(match key {
            "server" => &mut self.server,
            "metadata_url" => &mut self.metadata_url,
            "tenant_id" => &mut self.tenant_id,
            "client_id" => &mut self.client_id,
            "scope" => &mut self.scope,
            "login_scope" => &mut self.login_scope,
            "redirect_uri" => &mut self.redirect_uri,
            other => bail!("unknown setting {other:?}; one of {}", KEYS.join(", ")),
        })
    }

    pub fn set(&mut self, key: &str, value: Option<String>) -> Result<()> {
        if let Some(v) = &value {
            if matches!(key, "server" | "metadata_url" | "redirect_uri") {
                url::Url::parse(v).with_context(|| format!("{key}: {v:?} is not a URL"))?;
            }
        }
        *self.slot(key)? = value;
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The profile used without `--profile` (else "default").
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

pub fn config_dir() -> Result<PathBuf> {
    if let Some(d) = crate::environment::env("INFLUXION_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = crate::environment::env("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(d).join("influxion"));
    }
    let home = crate::environment::env("HOME").context("no HOME: set INFLUXION_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".config/influxion"))
}

fn private_dir(d: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .with_context(|| format!("creating {}", d.display()))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Replace `path` with `bytes`, readable by the owner only, atomically (a crash leaves
/// the old file or the new one, never half of one).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file without a directory")?;
    private_dir(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl UserConfig {
    pub fn path() -> Result<PathBuf> {
        Ok(config_dir()?.join("config.toml"))
    }

    pub fn load() -> Result<Self> {
        // No home and no INFLUXION_CONFIG_DIR (a bare service environment): no profiles.
        let Ok(p) = Self::path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("{}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        write_private(&Self::path()?, toml::to_string_pretty(self)?.as_bytes())
    }

    /// The profile name in effect: `--profile`, `INFLUXION_PROFILE`, the file's default,
    /// else "default".
    pub fn profile_name(&self, flag: Option<&str>) -> String {
        flag.map(str::to_owned)
            .or_else(|| crate::environment::env("INFLUXION_PROFILE"))
            .or_else(|| self.default_profile.clone())
            .unwrap_or_else(|| "default".into())
    }
}

/// A valid profile name: it becomes a file name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if !ok {
        bail!("profile names are 1-64 of [A-Za-z0-9._-], not starting with '.': {name:?}");
    }
    Ok(())
}

/// Tokens of a signed-in person, per profile.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct CachedToken {
    pub access_token: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub refresh_token: Option<String>,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub client_id: String,
    pub scope: String,
    /// The metadata document the tokens came from: a cache made for another provider
    /// is never used.
    pub metadata_url: String,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("expires_at", &self.expires_at)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

pub fn token_path(profile: &str) -> Result<PathBuf> {
    check_name(profile)?;
    Ok(config_dir()?.join("tokens").join(format!("{profile}.json")))
}

pub fn load_token(profile: &str) -> Result<Option<CachedToken>> {
    check_name(profile)?;
    let Ok(dir) = config_dir() else {
        return Ok(None);
    };
    let p = dir.join("tokens").join(format!("{profile}.json"));
    let text = match std::fs::read(&p) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let mode = std::fs::metadata(&p)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}); refusing to use it. Run `influxion logout` and sign in again",
            p.display(),
            mode & 0o777
        );
    }
    Ok(serde_json::from_slice(&text).ok())
}

/// An exclusive lock on a profile's sign-in, held while it is refreshed: two CLI
/// processes must not spend one refresh token (providers that detect reuse would
/// revoke the whole sign-in). Released when the file is dropped.
pub fn lock_token(profile: &str) -> Result<std::fs::File> {
    let p = token_path(profile)?.with_extension("lock");
    private_dir(p.parent().context("a file without a directory")?)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", p.display()))?;
    Ok(f)
}

pub fn save_token(profile: &str, t: &CachedToken) -> Result<PathBuf> {
    let p = token_path(profile)?;
    let bytes = zeroize::Zeroizing::new(serde_json::to_vec(t)?);
    write_private(&p, &bytes)?;
    Ok(p)
}

pub fn remove_token(profile: &str) -> Result<bool> {
    let p = token_path(profile)?;
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "prod-eu", "a.b_c"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "../x", ".hidden", "a/b", "with space"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn set_and_get() {
        let mut p = Profile::default();
        p.set("server", Some("https://keys.example.com".into()))
            .unwrap();
        assert!(p.set("server", Some("not a url".into())).is_err());
        assert!(p.set("colour", Some("x".into())).is_err());
        assert_eq!(
            p.get("server").unwrap().map(String::as_str),
            Some("https://keys.example.com")
        );
    }
}

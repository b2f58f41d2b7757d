//! `influxion login`, `logout`, `token` and the profile commands of `influxion config`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::client::Client;
use crate::config::{env, ClientConfig};
use crate::login::{self, LoginParams};
use crate::output;
use crate::profiles::{self, UserConfig};

#[derive(Args)]
pub struct LoginArgs {
    /// Use the device code flow (for equipment without a browser).
    #[arg(long)]
    device_code: bool,
    /// Do not try to open a browser; print the URL only.
    #[arg(long)]
    no_browser: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Whether this is a pipeline (no prompts, no spinners, no browser).
pub fn ci() -> bool {
    env("CI").is_some_and(|v| v != "false" && v != "0")
}

pub async fn login(cfg: ClientConfig, args: LoginArgs) -> Result<ExitCode> {
    let client_id = cfg.client_id.clone().context(
        "no client id: set INFLUXION_AZURE_CLIENT_ID (the public client registered for the CLI) or `influxion config set client_id <id>`",
    )?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let has_display = env("DISPLAY").is_some() || env("WAYLAND_DISPLAY").is_some();
    let params = LoginParams {
        metadata_url: &cfg.metadata_url,
        client_id: &client_id,
        scope: &cfg.login_scope,
        redirect_uri: &cfg.redirect_uri,
        open_browser: !args.no_browser && !ci() && has_display,
        timeout: Duration::from_secs(args.timeout),
    };
    let t = if args.device_code {
        login::login_device(&http, &params).await?
    } else {
        login::login_pkce(&http, &params).await?
    };
    let path = profiles::save_token(&cfg.profile, &t)?;
    output::note(
        &serde_json::json!({"profile": cfg.profile, "token_cache": path, "expires_at": t.expires_at}),
        &format!(
            "Signed in (profile {}); the token cache is {} (mode 0600).",
            cfg.profile,
            path.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logout(cfg: ClientConfig) -> Result<ExitCode> {
    if let Some(t) = profiles::load_token(&cfg.profile).ok().flatten() {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        login::revoke(&http, &t).await;
    }
    let removed = profiles::remove_token(&cfg.profile)?;
    output::note(
        &serde_json::json!({"profile": cfg.profile, "signed_out": removed}),
        &format!(
            "{} (profile {}).",
            if removed {
                "Signed out"
            } else {
                "Was not signed in"
            },
            cfg.profile
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// The access token, on stdout and nowhere else.
pub async fn token(mut c: Client) -> Result<ExitCode> {
    c.prefetch_token().await?;
    let t = c.current_token().await.context("no token")?;
    output::emit(&serde_json::json!({"access_token": t.as_str()}), || {
        println!("{}", t.as_str())
    });
    Ok(ExitCode::SUCCESS)
}

fn profile_of(cfg: &UserConfig, flag: Option<&str>) -> Result<String> {
    let name = cfg.profile_name(flag);
    profiles::check_name(&name)?;
    Ok(name)
}

pub fn config_set(profile: Option<&str>, key: &str, value: Option<String>) -> Result<ExitCode> {
    let mut cfg = UserConfig::load()?;
    let name = profile_of(&cfg, profile)?;
    cfg.profiles
        .entry(name.clone())
        .or_default()
        .set(key, value)?;
    cfg.save()?;
    output::note(
        &serde_json::json!({"profile": name, "key": key, "updated": true}),
        &format!(
            "profile {name}: {key} updated in {}",
            UserConfig::path()?.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn config_get(profile: Option<&str>, key: &str) -> Result<ExitCode> {
    let cfg = UserConfig::load()?;
    let name = profile_of(&cfg, profile)?;
    let p = cfg.profiles.get(&name).cloned().unwrap_or_default();
    match p.get(key)? {
        Some(v) => {
            output::emit(
                &serde_json::json!({"profile": name, "key": key, "value": v}),
                || println!("{v}"),
            );
            Ok(ExitCode::SUCCESS)
        }
        None => {
            output::emit(
                &serde_json::json!({"profile": name, "key": key, "value": null}),
                || {},
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn config_list() -> Result<ExitCode> {
    let cfg = UserConfig::load()?;
    let default = cfg.profile_name(None);
    let mut out = serde_json::Map::new();
    for (name, p) in &cfg.profiles {
        let mut v = serde_json::to_value(p)?;
        if let Some(o) = v.as_object_mut() {
            o.retain(|_, x| !x.is_null());
            o.insert("default".into(), (name == &default).into());
            o.insert(
                "signed_in".into(),
                profiles::load_token(name).ok().flatten().is_some().into(),
            );
        }
        out.insert(name.clone(), v);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

pub fn config_use(profile: &str) -> Result<ExitCode> {
    profiles::check_name(profile)?;
    let mut cfg = UserConfig::load()?;
    if !cfg.profiles.contains_key(profile) {
        anyhow::bail!("no profile {profile:?}; create it with `influxion config set server <url> --profile {profile}`");
    }
    cfg.default_profile = Some(profile.to_owned());
    cfg.save()?;
    output::note(
        &serde_json::json!({"default_profile": profile}),
        &format!("default profile: {profile}"),
    );
    Ok(ExitCode::SUCCESS)
}

pub fn config_path() -> Result<ExitCode> {
    let dir = profiles::config_dir()?;
    output::emit(&serde_json::json!({"config_dir": dir}), || {
        println!("{}", dir.display())
    });
    Ok(ExitCode::SUCCESS)
}

//! `influxion profiles …`: certificate profiles, what device certificates contain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use influxion_api::pki::{ProfileList, ProfileView};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{Client, Reply};
use crate::output;

#[derive(Subcommand)]
pub enum ProfilesCommand {
    List,
    Show {
        name: String,
    },
    /// Create or replace a profile, from flags or from a JSON file (--json).
    Set(Box<ProfileArgs>),
    Delete {
        name: String,
    },
}

#[derive(Args)]
pub struct ProfileArgs {
    name: String,
    /// The whole profile as JSON (see docs/pki.md); other flags are then not used.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Issuing CA.
    #[arg(long)]
    ca: Option<String>,
    #[arg(long)]
    validity_days: Option<u32>,
    /// Comma-separated: ec-p256, ec-p384, ed25519, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long)]
    key_types: Option<String>,
    /// Comma-separated: digital_signature, key_encipherment, key_agreement, …
    #[arg(long)]
    key_usage: Option<String>,
    /// Comma-separated: client_auth, server_auth, code_signing, …
    #[arg(long)]
    eku: Option<String>,
    /// Common name template ({device_id} is replaced).
    #[arg(long)]
    cn: Option<String>,
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    ou: Option<String>,
    #[arg(long)]
    country: Option<String>,
    /// serialNumber attribute template.
    #[arg(long)]
    serial_number: Option<String>,
    /// DNS subjectAltName template (repeatable).
    #[arg(long)]
    san_dns: Vec<String>,
    /// URI subjectAltName template (repeatable).
    #[arg(long)]
    san_uri: Vec<String>,
    #[arg(long)]
    allow_subject_override: bool,
    /// Valid certificates per device id (0: no limit).
    #[arg(long)]
    max_per_device: Option<u32>,
    /// Leave the CRL distribution point out of certificates.
    #[arg(long)]
    no_crl_dp: bool,
    /// Refuse server-side key generation.
    #[arg(long)]
    no_server_keygen: bool,
}

fn csv(s: &Option<String>) -> Option<Vec<String>> {
    s.as_ref().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    })
}

pub async fn profiles(mut c: Client, cmd: ProfilesCommand) -> Result<ExitCode> {
    match cmd {
        ProfilesCommand::List => {
            let r: Reply<ProfileList> = c.fetch(Method::GET, "/v1/profiles").await?;
            if output::json() {
                println!("{}", r.raw);
                return Ok(ExitCode::SUCCESS);
            }
            for p in &r.body.profiles {
                println!(
                    "{:<20} CA {:<16} {} days  keys {}  max/device {}",
                    p.name,
                    p.ca,
                    p.validity_days,
                    // As JSON, the way the list has always read: ["ec-p256"].
                    serde_json::to_value(&p.key_types)?,
                    p.max_per_device,
                );
            }
        }
        ProfilesCommand::Show { name } => {
            let r: Reply<ProfileView> = c
                .fetch(Method::GET, &format!("/v1/profiles/{name}"))
                .await?;
            println!("{}", serde_json::to_string_pretty(&r.raw)?);
        }
        ProfilesCommand::Set(a) => {
            let body: Value = match &a.json {
                Some(path) => serde_json::from_str(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not JSON", path.display()))?,
                None => profile_from_flags(&a)?,
            };
            let r: Reply<ProfileView> = c
                .call(
                    Method::PUT,
                    &format!("/v1/profiles/{}", a.name),
                    Some(&body),
                )
                .await?;
            let what = if r.status == reqwest::StatusCode::CREATED {
                "created"
            } else {
                "updated"
            };
            eprintln!("profile {} {what}", a.name);
            println!("{}", serde_json::to_string_pretty(&r.raw)?);
        }
        ProfilesCommand::Delete { name } => {
            let _: Reply<Value> = c
                .fetch(Method::DELETE, &format!("/v1/profiles/{name}"))
                .await?;
            output::note(
                &json!({"profile": name, "deleted": true}),
                &format!("profile {name} deleted"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn profile_from_flags(a: &ProfileArgs) -> Result<Value> {
    let ca =
        a.ca.clone()
            .ok_or_else(|| anyhow!("--ca is required (or --json)"))?;
    let mut b = json!({"ca": ca});
    if let Some(d) = a.validity_days {
        b["validity_days"] = json!(d);
    }
    if let Some(v) = csv(&a.key_types) {
        b["key_types"] = json!(v);
    }
    if let Some(v) = csv(&a.key_usage) {
        b["key_usage"] = json!(v);
    }
    if let Some(v) = csv(&a.eku) {
        b["extended_key_usage"] = json!(v);
    }
    let mut subject = serde_json::Map::new();
    for (k, v) in [
        ("common_name", &a.cn),
        ("organization", &a.org),
        ("organizational_unit", &a.ou),
        ("country", &a.country),
        ("serial_number", &a.serial_number),
    ] {
        if let Some(v) = v {
            subject.insert(k.into(), json!(v));
        }
    }
    b["subject"] = Value::Object(subject);
    b["san_dns"] = json!(a.san_dns);
    b["san_uri"] = json!(a.san_uri);
    b["allow_subject_override"] = json!(a.allow_subject_override);
    if let Some(m) = a.max_per_device {
        b["max_per_device"] = json!(m);
    }
    b["crl_distribution_point"] = json!(!a.no_crl_dp);
    b["allow_server_keygen"] = json!(!a.no_server_keygen);
    Ok(b)
}

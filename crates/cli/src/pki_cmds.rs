//! `influxion ca …`, `influxion profiles …` and `influxion cert …`: the device CA from
//! the command line, including bulk issuance for production lines.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::client::{ApiStatus, Client};
use crate::output;

#[derive(Subcommand)]
pub enum CaCommand {
    /// List CAs with their status, validity and counters.
    List,
    /// Show one CA.
    Show { name: String },
    /// Create a root CA, an intermediate signed by a CA held here (--parent), or an
    /// intermediate for an external root (--external; prints the CSR).
    Create(CaCreateArgs),
    /// Import the certificate an external root issued for a pending intermediate.
    Import {
        name: String,
        /// The CA's certificate (PEM).
        #[arg(long)]
        certificate: PathBuf,
        /// The issuer's certificate and any above it, PEM, nearest first.
        #[arg(long)]
        chain: PathBuf,
    },
    /// Write the CA's certificate chain (this CA first).
    Chain {
        name: String,
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
        /// pem or pkcs7.
        #[arg(long, default_value = "pem")]
        format: String,
    },
    /// Issue a fresh CRL now.
    Crl { name: String },
    /// Stop a CA from issuing (it still publishes its CRL); there is no re-enable.
    Disable { name: String },
    /// Revoke an intermediate CA's certificate: its parent's CRL lists it from now on,
    /// and the CA is disabled (admin).
    Revoke {
        name: String,
        /// unspecified, key_compromise, ca_compromise, affiliation_changed, superseded,
        /// cessation_of_operation, privilege_withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Args)]
pub struct CaCreateArgs {
    name: String,
    /// Subject common name.
    #[arg(long)]
    cn: String,
    #[arg(long)]
    org: Option<String>,
    #[arg(long)]
    ou: Option<String>,
    /// Two-letter country code.
    #[arg(long)]
    country: Option<String>,
    /// ec-p256, ec-p384, rsa-3072 or rsa-4096.
    #[arg(long, default_value = "ec-p384")]
    key_type: String,
    #[arg(long)]
    validity_days: Option<u32>,
    /// Sign the new CA with this CA (an intermediate).
    #[arg(long)]
    parent: Option<String>,
    /// Create a pending intermediate for an external root.
    #[arg(long)]
    external: bool,
    /// With --external: where to write the CSR (default: standard output).
    #[arg(long)]
    csr_out: Option<PathBuf>,
}

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

#[derive(Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for a CSR.
    Issue {
        #[arg(long)]
        profile: String,
        #[arg(long)]
        csr: PathBuf,
        /// Defaults to the CSR's common name.
        #[arg(long)]
        device_id: Option<String>,
        /// Where to write the certificate (default: standard output).
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
        /// pem (certificate and chain), der (certificate) or pkcs7 (certs-only).
        #[arg(long, default_value = "pem")]
        format: String,
        /// Idempotency key: a retry with the same key returns the same certificate.
        #[arg(long)]
        request_key: Option<String>,
    },
    /// Have the keyserver generate the device key; writes a PKCS#12 file (password from
    /// INFLUXION_P12_PASSWORD or --password-file) or, with --format pem, a PEM pair.
    New {
        #[arg(long)]
        profile: String,
        #[arg(long)]
        device_id: String,
        #[arg(short = 'o', long = "out")]
        output: PathBuf,
        /// pkcs12 or pem.
        #[arg(long, default_value = "pkcs12")]
        format: String,
        #[arg(long)]
        key_type: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// With --format pem: where to write the private key (default: OUTPUT.key).
        #[arg(long)]
        key_out: Option<PathBuf>,
    },
    /// Revoke a certificate; the CA's CRL is regenerated.
    Revoke {
        serial: String,
        /// unspecified, key_compromise, ca_compromise, affiliation_changed, superseded,
        /// cessation_of_operation, privilege_withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Search issued certificates.
    List {
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        /// Substring of the subject.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// valid or revoked.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one certificate record; -o writes the certificate and chain (PEM).
    Show {
        serial: String,
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Issue for many devices: every *.csr/*.pem CSR in --csr-dir, or every device id
    /// in --device-ids (keys are then made here, next to their certificates). Resumes
    /// after an interruption without issuing twice.
    Bulk(BulkArgs),
}

#[derive(Args)]
pub struct BulkArgs {
    #[arg(long)]
    profile: String,
    #[arg(
        long,
        conflicts_with = "device_ids",
        required_unless_present = "device_ids"
    )]
    csr_dir: Option<PathBuf>,
    /// A file with one device id per line.
    #[arg(long)]
    device_ids: Option<PathBuf>,
    /// Where certificates (and generated keys) go.
    #[arg(long)]
    out_dir: PathBuf,
    /// Key type for keys made here (--device-ids).
    #[arg(long, default_value = "ec-p256")]
    key_type: String,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Attempts per device for transient failures (network, 5xx, 429).
    #[arg(long, default_value_t = 4)]
    attempts: u32,
}

/// `influxion provision`: a production-line run.
#[derive(Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    bulk: BulkArgs,
    /// Also sign each device's firmware image <firmware-dir>/<id>.bin with this key,
    /// writing <out-dir>/<id>.sig (keys that need approval cannot be used here).
    #[arg(long, requires = "firmware_dir")]
    sign_key: Option<String>,
    #[arg(long, requires = "sign_key")]
    firmware_dir: Option<PathBuf>,
    /// Reason recorded with each signature in the audit log.
    #[arg(long, default_value = "production line provisioning")]
    reason: String,
}

fn write_out(path: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match path {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => std::io::stdout()
            .write_all(bytes)
            .context("writing to standard output"),
    }
}

/// Write a secret file readable by its owner only, created that way (never briefly
/// world-readable). An existing file (or symlink) is removed first, so its old
/// permissions or target are never used.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("replacing {}", path.display())),
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().ok();
    Ok(())
}

fn print_ca(v: &Value) {
    println!(
        "{:<20} {:<9} {:<8} not after {}  issued {}  revoked {}  CRL #{}",
        v["name"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["key_type"].as_str().unwrap_or(""),
        v["not_after"].as_str().unwrap_or("-"),
        v["counters"]["issued"],
        v["counters"]["revoked"],
        v["crl_number"],
    );
}

fn csv(s: &Option<String>) -> Option<Vec<String>> {
    s.as_ref().map(|s| {
        s.split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect()
    })
}

pub async fn ca(mut c: Client, cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::List => {
            let (_, v) = c.call(Method::GET, "/v1/cas", None).await?;
            output::emit(&v, || {
                for ca in v["cas"].as_array().into_iter().flatten() {
                    print_ca(ca);
                }
            });
        }
        CaCommand::Show { name } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/cas/{name}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CaCommand::Create(a) => {
            let mut subject = json!({"common_name": a.cn});
            for (k, v) in [
                ("organization", &a.org),
                ("organizational_unit", &a.ou),
                ("country", &a.country),
            ] {
                if let Some(v) = v {
                    subject[k] = json!(v);
                }
            }
            let mut body = json!({"name": a.name, "key_type": a.key_type, "subject": subject, "external": a.external});
            if let Some(p) = &a.parent {
                body["parent"] = json!(p);
            }
            if let Some(d) = a.validity_days {
                body["validity_days"] = json!(d);
            }
            let (_, v) = c.call(Method::POST, "/v1/cas", Some(&body)).await?;
            if a.external {
                let csr = v["csr_pem"].as_str().unwrap_or_default();
                write_out(a.csr_out.as_deref(), csr.as_bytes())?;
                output::note(
                    &v,
                    &format!(
                        "CA {} is pending: have the root sign the CSR, then run `influxion ca import {} --certificate … --chain …`",
                        a.name, a.name
                    ),
                );
            } else {
                output::emit(&v, || print_ca(&v));
            }
        }
        CaCommand::Import {
            name,
            certificate,
            chain,
        } => {
            let body = json!({
                "certificate": std::fs::read_to_string(&certificate)
                    .with_context(|| format!("reading {}", certificate.display()))?,
                "chain": std::fs::read_to_string(&chain)
                    .with_context(|| format!("reading {}", chain.display()))?,
            });
            let (_, v) = c
                .call(
                    Method::PUT,
                    &format!("/v1/cas/{name}/certificate"),
                    Some(&body),
                )
                .await?;
            output::emit(&v, || print_ca(&v));
        }
        CaCommand::Chain {
            name,
            output,
            format,
        } => {
            let (_, bytes) = c
                .call_raw(
                    Method::GET,
                    &format!("/v1/cas/{name}/chain?format={format}"),
                    None,
                )
                .await?;
            write_out(output.as_deref(), &bytes)?;
        }
        CaCommand::Disable { name } => {
            let (_, v) = c
                .call(Method::POST, &format!("/v1/cas/{name}/disable"), None)
                .await?;
            output::emit(&v, || print_ca(&v));
        }
        CaCommand::Revoke { name, reason } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/cas/{name}/revoke"),
                    Some(&json!({"reason": reason})),
                )
                .await?;
            output::emit(&v, || {
                print_ca(&v);
                eprintln!(
                    "CA {name} revoked ({}); the CRL of {} lists serial {}",
                    v["revocation_reason"].as_str().unwrap_or(""),
                    v["parent"].as_str().unwrap_or(""),
                    v["serial"].as_str().unwrap_or("")
                );
            });
        }
        CaCommand::Crl { name } => {
            let (_, v) = c
                .call(Method::POST, &format!("/v1/cas/{name}/crl"), None)
                .await?;
            output::emit(&v, || print_ca(&v));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn profiles(mut c: Client, cmd: ProfilesCommand) -> Result<ExitCode> {
    match cmd {
        ProfilesCommand::List => {
            let (_, v) = c.call(Method::GET, "/v1/profiles", None).await?;
            if output::json() {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            for p in v["profiles"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} CA {:<16} {} days  keys {}  max/device {}",
                    p["name"].as_str().unwrap_or(""),
                    p["ca"].as_str().unwrap_or(""),
                    p["validity_days"],
                    p["key_types"],
                    p["max_per_device"],
                );
            }
        }
        ProfilesCommand::Show { name } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/profiles/{name}"), None)
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ProfilesCommand::Set(a) => {
            let body = match &a.json {
                Some(path) => serde_json::from_str(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not JSON", path.display()))?,
                None => profile_from_flags(&a)?,
            };
            let (status, v) = c
                .call(
                    Method::PUT,
                    &format!("/v1/profiles/{}", a.name),
                    Some(&body),
                )
                .await?;
            let what = if status == reqwest::StatusCode::CREATED {
                "created"
            } else {
                "updated"
            };
            eprintln!("profile {} {what}", a.name);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ProfilesCommand::Delete { name } => {
            c.call(Method::DELETE, &format!("/v1/profiles/{name}"), None)
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

fn read_password(file: Option<&Path>) -> Result<zeroize::Zeroizing<String>> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(zeroize::Zeroizing::new(
            s.trim_end_matches(['\r', '\n']).to_owned(),
        ));
    }
    std::env::var("INFLUXION_P12_PASSWORD")
        .map(zeroize::Zeroizing::new)
        .map_err(|_| {
            anyhow!("set INFLUXION_P12_PASSWORD or pass --password-file for the PKCS#12 password")
        })
}

pub async fn cert(mut c: Client, cmd: CertCommand) -> Result<ExitCode> {
    match cmd {
        CertCommand::Issue {
            profile,
            csr,
            device_id,
            output,
            format,
            request_key,
        } => {
            let csr_text = std::fs::read_to_string(&csr)
                .with_context(|| format!("reading {} (a PEM CSR)", csr.display()))?;
            let mut body = json!({"csr": csr_text});
            if let Some(d) = device_id {
                body["device_id"] = json!(d);
            }
            if let Some(k) = request_key {
                body["request_key"] = json!(k);
            }
            let (_, bytes) = c
                .call_raw(
                    Method::POST,
                    &format!("/v1/profiles/{profile}/certificates?format={format}"),
                    Some(&body),
                )
                .await?;
            write_out(output.as_deref(), &bytes)?;
            if let Some(o) = &output {
                output::note(
                    &json!({"profile": profile, "written": o}),
                    &format!("certificate written to {}", o.display()),
                );
            }
        }
        CertCommand::New {
            profile,
            device_id,
            output,
            format,
            key_type,
            password_file,
            key_out,
        } => {
            let mut body = json!({"device_id": device_id, "format": format});
            if let Some(k) = key_type {
                body["key_type"] = json!(k);
            }
            let password = if format == "pkcs12" {
                let pw = read_password(password_file.as_deref())?;
                body["password"] = json!(pw.as_str());
                Some(pw)
            } else {
                None
            };
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/profiles/{profile}/keys"),
                    Some(&body),
                )
                .await?;
            if let Some(p12) = v["pkcs12_base64"].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(p12)
                    .context("the PKCS#12 in the response is not base64")?;
                write_secret(&output, &bytes)?;
            } else {
                let key = v["private_key_pem"]
                    .as_str()
                    .ok_or_else(|| anyhow!("the response holds no key"))?;
                let key_path = key_out.unwrap_or_else(|| output.with_extension("key"));
                write_secret(&key_path, key.as_bytes())?;
                let pem = format!(
                    "{}{}",
                    v["certificate_pem"].as_str().unwrap_or(""),
                    v["chain_pem"].as_str().unwrap_or("")
                );
                std::fs::write(&output, pem)?;
                eprintln!("private key written to {}", key_path.display());
            }
            drop(password);
            output::note(
                &json!({"serial": v["serial"], "device_id": v["device_id"], "written": output}),
                &format!(
                    "certificate {} for {} written to {}",
                    v["serial"].as_str().unwrap_or(""),
                    v["device_id"].as_str().unwrap_or(""),
                    output.display()
                ),
            );
        }
        CertCommand::Revoke { serial, reason } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/certificates/{serial}/revoke"),
                    Some(&json!({"reason": reason})),
                )
                .await?;
            output::note(
                &v,
                &format!(
                    "certificate {} revoked ({}); the CRL of {} is updated",
                    v["serial"].as_str().unwrap_or(""),
                    v["revocation_reason"].as_str().unwrap_or(""),
                    v["ca"].as_str().unwrap_or("")
                ),
            );
        }
        CertCommand::List {
            device_id,
            serial,
            subject,
            profile,
            status,
            limit,
        } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("device_id", device_id),
                ("serial", serial),
                ("subject", subject),
                ("profile", profile),
                ("status", status),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, &v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            let (_, v) = c
                .call(
                    Method::GET,
                    &format!("/v1/certificates?{}", q.finish()),
                    None,
                )
                .await?;
            if output::json() {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            for r in v["certificates"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<8} {:<16} {:<24} {}  until {}",
                    r["serial"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["profile"].as_str().unwrap_or(""),
                    r["device_id"].as_str().unwrap_or(""),
                    r["subject"].as_str().unwrap_or(""),
                    r["not_after"].as_str().unwrap_or(""),
                );
            }
        }
        CertCommand::Show { serial, output } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/certificates/{serial}"), None)
                .await?;
            if let Some(o) = output {
                let pem = format!(
                    "{}{}",
                    v["certificate_pem"].as_str().unwrap_or(""),
                    v["chain_pem"].as_str().unwrap_or("")
                );
                std::fs::write(&o, pem)?;
            }
            let mut shown = v.clone();
            if let Some(o) = shown.as_object_mut() {
                o.remove("certificate_pem");
                o.remove("chain_pem");
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        CertCommand::Bulk(a) => return bulk(c, a, None).await,
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------
// Bulk issuance

/// One device of a bulk run: its name in the journal and output files, and its CSR.
struct Item {
    id: String,
    csr_pem: String,
}

const JOURNAL: &str = "influxion-journal.jsonl";

/// The journal is append-only JSON lines, one per finished device, fsynced, so a run
/// that is killed resumes where it stopped.
///
/// A device counts as done only for the steps this run asks for: a run with
/// `--sign-key` redoes devices an earlier run without it finished (their certificate
/// comes back unchanged, by its request key).
fn read_journal(path: &Path, want_signature: bool) -> Result<HashSet<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashSet::new());
    };
    let mut done = HashSet::new();
    for line in text.lines() {
        // A torn last line (killed mid-write) is ignored; that device is redone, and
        // its request key makes the keyserver return the same certificate.
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            let signed = v["signed"].as_bool().unwrap_or(false);
            if let Some(id) = v["id"].as_str().filter(|_| signed || !want_signature) {
                done.insert(id.to_owned());
            }
        }
    }
    Ok(done)
}

fn safe_file_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Gather the items: CSRs from a directory, or device ids whose keys and CSRs are
/// made here once (kept on disk, so a resumed run sends the same CSR).
fn gather(a: &BulkArgs, done: &HashSet<String>) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    if let Some(dir) = &a.csr_dir {
        let same = |x: &Path, y: &Path| matches!((x.canonicalize(), y.canonicalize()), (Ok(x), Ok(y)) if x == y);
        if same(dir, &a.out_dir) {
            bail!("--out-dir must differ from --csr-dir (certificates are written as <id>.pem)");
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("csr" | "pem")))
            .collect();
        paths.sort();
        for p in paths {
            let id = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            if !safe_file_name(&id) {
                bail!(
                    "{}: file names must be letters, digits, '.', '_', '-'",
                    p.display()
                );
            }
            if items.iter().any(|i: &Item| i.id == id) {
                bail!("{}: two CSR files for {id}", p.display());
            }
            if done.contains(&id) {
                continue;
            }
            let csr_pem =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            items.push(Item { id, csr_pem });
        }
    } else if let Some(list) = &a.device_ids {
        let kt = influxion_pki::DeviceKeyType::parse(&a.key_type)
            .ok_or_else(|| anyhow!("unknown key type {}", a.key_type))?;
        let text =
            std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
        let mut seen = HashSet::new();
        for id in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            influxion_pki::profile::validate_device_id(id).map_err(|e| anyhow!("{id:?}: {e}"))?;
            if !seen.insert(id.to_owned()) || done.contains(id) {
                continue;
            }
            let key_path = a.out_dir.join(format!("{id}.key"));
            let csr_path = a.out_dir.join(format!("{id}.csr"));
            let csr_pem = match std::fs::read_to_string(&csr_path) {
                Ok(csr) if key_path.exists() => csr,
                _ => {
                    let (key, csr) = influxion_pki::encode::local_key_and_csr(kt, id)
                        .map_err(|e| anyhow!("{id}: {e}"))?;
                    write_secret(&key_path, key.as_bytes())?;
                    durable_write(&a.out_dir, &format!("{id}.csr"), csr.as_bytes())?;
                    csr
                }
            };
            items.push(Item {
                id: id.to_owned(),
                csr_pem,
            });
        }
    }
    Ok(items)
}

fn transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ApiStatus>() {
        Some(ApiStatus { status: s, .. }) => {
            s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408 || s.as_u16() == 401
        }
        // No HTTP status: transient only if the request did not complete (connection
        // refused, reset, timeout); a response that does not parse is not.
        None => e
            .chain()
            .filter_map(|c| c.downcast_ref::<reqwest::Error>())
            .any(|r| r.is_connect() || r.is_timeout() || r.is_request()),
    }
}

async fn issue_one(
    mut c: Client,
    profile: &str,
    item: &Item,
    out_dir: &Path,
    attempts: u32,
) -> Result<String> {
    // The request key binds a retry to the first issuance, whatever the journal knew.
    let digest = sha2::Sha256::digest(item.csr_pem.as_bytes());
    // Request keys are at most 128 bytes: long ids are hashed in.
    let request_key = if item.id.len() <= 96 {
        format!("bulk:{}:{}", item.id, hex::encode(&digest[..12]))
    } else {
        let id = sha2::Sha256::digest(item.id.as_bytes());
        format!(
            "bulk:#{}:{}",
            hex::encode(&id[..16]),
            hex::encode(&digest[..12])
        )
    };
    let body = json!({"csr": item.csr_pem, "request_key": request_key});
    let path = format!("/v1/profiles/{profile}/certificates?format=json");
    let v = retrying(&mut c, attempts, |mut c| {
        let body = body.clone();
        let path = path.clone();
        async move { c.call(Method::POST, &path, Some(&body)).await }
    })
    .await?;
    let pem = format!(
        "{}{}",
        v["certificate_pem"].as_str().unwrap_or(""),
        v["chain_pem"].as_str().unwrap_or("")
    );
    // Durable before the journal says done.
    durable_write(out_dir, &format!("{}.pem", item.id), pem.as_bytes())?;
    Ok(v["serial"].as_str().unwrap_or_default().to_owned())
}

pub async fn provision(mut c: Client, a: ProvisionArgs) -> Result<ExitCode> {
    let sign = match (a.sign_key, a.firmware_dir) {
        (Some(key), Some(dir)) => Some(Arc::new(SignStep::new(&mut c, key, dir, a.reason).await?)),
        _ => None,
    };
    bulk(c, a.bulk, sign).await
}

/// Firmware signing within a provisioning run: the key's facts fetched once.
struct SignStep {
    key: String,
    key_type: influxion_core::KeyType,
    algorithm: influxion_core::SignAlgorithm,
    spki: Vec<u8>,
    firmware_dir: PathBuf,
    reason: String,
}

impl SignStep {
    async fn new(
        c: &mut Client,
        key: String,
        firmware_dir: PathBuf,
        reason: String,
    ) -> Result<Self> {
        let (_, v) = c
            .call(Method::GET, &format!("/v1/keys/{key}"), None)
            .await?;
        let key_type: influxion_core::KeyType = v["key_type"]
            .as_str()
            .context("key without a type")?
            .parse()?;
        let algorithm: influxion_core::SignAlgorithm = v["default_algorithm"]
            .as_str()
            .context("key without a default algorithm")?
            .parse()?;
        if v["policy"]["approvals_required"].as_u64().unwrap_or(0) > 0 {
            bail!("key {key} needs approvals; a provisioning run cannot wait for people");
        }
        let spki = influxion_keystore::public::from_pem(
            v["public_key_pem"]
                .as_str()
                .context("key without a public key")?,
        )?;
        Ok(Self {
            key,
            key_type,
            algorithm,
            spki,
            firmware_dir,
            reason,
        })
    }

    /// Sign <firmware-dir>/<id>.bin; the signature is checked before it is written.
    async fn sign(&self, mut c: Client, id: &str, out_dir: &Path, attempts: u32) -> Result<()> {
        let file = self.firmware_dir.join(format!("{id}.bin"));
        let digest = crate::commands::hash_file(&file, self.algorithm.hash())?;
        let size = std::fs::metadata(&file)?.len();
        let body = json!({
            "digest": hex::encode(&digest),
            "algorithm": self.algorithm.as_str(),
            "reason": self.reason,
            "metadata": {"file": format!("{id}.bin"), "size": size, "device_id": id},
        });
        let path = format!("/v1/keys/{}/sign", self.key);
        let v = retrying(&mut c, attempts, |mut c| {
            let body = body.clone();
            let path = path.clone();
            async move { c.call(Method::POST, &path, Some(&body)).await }
        })
        .await?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(
                v["signature"]
                    .as_str()
                    .context("no signature (the key needs approval?)")?,
            )
            .context("the signature is not base64")?;
        let d = influxion_core::Digest::new(self.algorithm, digest)?;
        if !influxion_keystore::public::verify(self.key_type, &self.spki, &d, &sig)? {
            bail!("{id}: the keyserver returned a signature that does not verify");
        }
        durable_write(out_dir, &format!("{id}.sig"), &sig)
    }
}

/// Write `dir/name` durably: temporary file, fsync, rename.
fn durable_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Run `call` until it succeeds, fails for good, or `attempts` are spent; transient
/// failures back off exponentially, and a 401 fetches a new token first.
async fn retrying<F, Fut>(c: &mut Client, attempts: u32, mut call: F) -> Result<Value>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(reqwest::StatusCode, Value)>>,
{
    let mut delay = Duration::from_millis(250);
    let mut n = 0;
    loop {
        n += 1;
        let used = c.token_now().await?;
        match call(c.clone()).await {
            Ok((s, _)) if s == reqwest::StatusCode::ACCEPTED => {
                bail!("the key needs approval; a provisioning run cannot wait for people")
            }
            Ok((_, v)) => return Ok(v),
            Err(e) if n < attempts && transient(&e) => {
                if matches!(e.downcast_ref::<ApiStatus>(), Some(a) if a.status.as_u16() == 401) {
                    // Shared by every task of the run: the first one to see the 401
                    // clears it, and the next call fetches one new token for all.
                    c.reset_token(&used).await;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn bulk(mut c: Client, a: BulkArgs, sign: Option<Arc<SignStep>>) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let journal_path = a.out_dir.join(JOURNAL);
    let journal_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal_path)
        .with_context(|| format!("opening {}", journal_path.display()))?;
    // One run per output directory: two would make two keys (and certificates) for a
    // device and interleave their files.
    if journal_file.try_lock().is_err() {
        bail!(
            "another run is using {} (its journal is locked)",
            a.out_dir.display()
        );
    }
    let done = read_journal(&journal_path, sign.is_some())?;
    let items: Vec<Item> = gather(&a, &done)?;
    let skipped = done.len();
    if !items.is_empty() {
        c.prefetch_token().await?;
    }
    let total = items.len() as u64;
    let bar = if crate::commands::quiet() {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    let journal = Arc::new(std::sync::Mutex::new(journal_file));
    let profile = a.profile.clone();
    let out_dir = a.out_dir.clone();
    let attempts = a.attempts.max(1);
    let results: Vec<(String, Result<String>)> = futures::stream::iter(items)
        .map(|item| {
            let c = c.clone();
            let profile = profile.clone();
            let out_dir = out_dir.clone();
            let journal = journal.clone();
            let bar = bar.clone();
            let sign = sign.clone();
            async move {
                let mut r = issue_one(c.clone(), &profile, &item, &out_dir, attempts).await;
                if let (Ok(_), Some(step)) = (&r, &sign) {
                    if let Err(e) = step.sign(c, &item.id, &out_dir, attempts).await {
                        r = Err(e);
                    }
                }
                if let Ok(serial) = &r {
                    let line = json!({"id": item.id, "serial": serial, "signed": sign.is_some()})
                        .to_string();
                    // A device is done only once the journal says so durably.
                    let written = journal
                        .lock()
                        .map_err(|_| anyhow!("the journal lock is poisoned"))
                        .and_then(|mut f| {
                            writeln!(f, "{line}")
                                .and_then(|_| f.sync_data())
                                .context("writing the journal")
                        });
                    if let Err(e) = written {
                        r = Err(e);
                    }
                }
                bar.inc(1);
                (item.id, r)
            }
        })
        .buffer_unordered(a.concurrency.clamp(1, 64))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut failed = 0;
    for (id, r) in &results {
        if let Err(e) = r {
            failed += 1;
            eprintln!("{id}: {e:#}");
        }
    }
    let issued = results.len() - failed;
    let errors: Vec<Value> = results
        .iter()
        .filter_map(|(id, r)| {
            r.as_ref()
                .err()
                .map(|e| json!({"device_id": id, "error": format!("{e:#}")}))
        })
        .collect();
    output::note(
        &json!({"issued": issued, "already_done": skipped, "failed": failed, "errors": errors}),
        &format!("issued {issued}, already done {skipped}, failed {failed}"),
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn journal_counts_only_the_steps_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(JOURNAL);
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"serial\":\"01\",\"signed\":true}\n\
             {\"id\":\"b\",\"serial\":\"02\",\"signed\":false}\n\
             {\"id\":\"c\",\"serial\":\"03\"}\n{\"id\":\"d\",\"ser",
        )
        .unwrap();
        let all = read_journal(&p, false).unwrap();
        assert_eq!(all.len(), 3, "a torn last line is not a finished device");
        let signed = read_journal(&p, true).unwrap();
        assert_eq!(signed.into_iter().collect::<Vec<_>>(), vec!["a".to_owned()]);
    }
}

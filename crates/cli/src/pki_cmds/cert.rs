//! `influxion cert …`: device certificates, one at a time (issue, generate, revoke,
//! search, show); `cert bulk` runs the engine of [`super::bulk`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use influxion_api::pki::{CertList, IssuedView};
use reqwest::Method;
use serde_json::json;

use super::bulk::{self, BulkArgs};
use super::files::{write_out, write_secret};
use crate::client::{Client, Reply};
use crate::output::{self, terminal_safe, who};

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
            let r: Reply<IssuedView> = c
                .call(
                    Method::POST,
                    &format!("/v1/profiles/{profile}/keys"),
                    Some(&body),
                )
                .await?;
            let v = r.body;
            if let Some(p12) = &v.pkcs12_base64 {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(p12)
                    .context("the PKCS#12 in the response is not base64")?;
                write_secret(&output, &bytes)?;
            } else {
                let key = v
                    .private_key_pem
                    .as_deref()
                    .ok_or_else(|| anyhow!("the response holds no key"))?;
                let key_path = key_out.unwrap_or_else(|| output.with_extension("key"));
                write_secret(&key_path, key.as_bytes())?;
                let pem = format!("{}{}", v.certificate_pem, v.chain_pem);
                std::fs::write(&output, pem)?;
                eprintln!("private key written to {}", key_path.display());
            }
            drop(password);
            output::note(
                &json!({"serial": v.record.serial, "device_id": v.record.device_id, "written": output}),
                &format!(
                    "certificate {} for {} written to {}",
                    v.record.serial,
                    v.record.device_id,
                    output.display()
                ),
            );
        }
        CertCommand::Revoke { serial, reason } => {
            let r: Reply<IssuedView> = c
                .call(
                    Method::POST,
                    &format!("/v1/certificates/{serial}/revoke"),
                    Some(&json!({"reason": reason})),
                )
                .await?;
            let v = &r.body.record;
            output::note(
                &r.raw,
                &format!(
                    "certificate {} revoked ({}); the CRL of {} is updated",
                    v.serial,
                    v.revocation_reason.as_deref().unwrap_or_default(),
                    v.ca
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
            let r: Reply<CertList> = c
                .fetch(Method::GET, &format!("/v1/certificates?{}", q.finish()))
                .await?;
            if output::json() {
                println!("{}", r.raw);
                return Ok(ExitCode::SUCCESS);
            }
            for r in &r.body.certificates {
                println!(
                    "{}  {:<8} {:<16} {:<24} {}  until {}  by {}",
                    r.serial,
                    r.status,
                    r.profile,
                    terminal_safe(&r.device_id),
                    terminal_safe(&r.subject),
                    r.not_after,
                    terminal_safe(&r.requested_by.label()),
                );
            }
        }
        CertCommand::Show { serial, output } => {
            let r: Reply<IssuedView> = c
                .fetch(Method::GET, &format!("/v1/certificates/{serial}"))
                .await?;
            if let Some(o) = output {
                let pem = format!("{}{}", r.body.certificate_pem, r.body.chain_pem);
                std::fs::write(&o, pem)?;
            }
            // The record as the keyserver sent it, without the PEM (written with -o).
            let mut shown = r.raw;
            if let Some(o) = shown.as_object_mut() {
                o.remove("certificate_pem");
                o.remove("chain_pem");
            }
            let v = &r.body.record;
            output::emit(&shown, || {
                println!("serial     {}", v.serial);
                println!("status     {}", v.status);
                if let (Some(at), Some(why)) = (&v.revoked_at, &v.revocation_reason) {
                    println!("revoked    {at} ({})", terminal_safe(why));
                }
                println!("subject    {}", terminal_safe(&v.subject));
                println!("device     {}", terminal_safe(&v.device_id));
                println!("profile    {} (CA {})", v.profile, v.ca);
                println!("valid      {} to {}", v.not_before, v.not_after);
                println!("issued     {}", v.issued_at);
                println!("issued by  {}", who(&v.requested_by));
                if v.key_generated {
                    println!("key        generated by the keyserver");
                }
            });
        }
        CertCommand::Bulk(a) => return bulk::certificates(c, a).await,
    }
    Ok(ExitCode::SUCCESS)
}

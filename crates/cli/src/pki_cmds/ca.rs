//! `influxion ca …`: certificate authorities for device certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use influxion_api::pki::{CaList, CaView};
use reqwest::Method;
use serde_json::json;

use super::files::write_out;
use crate::client::{Client, Reply};
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
    /// The key backend of the CA key: software or azure-keyvault (default: the
    /// keyserver's).
    #[arg(long)]
    backend: Option<String>,
}

fn print_ca(v: &CaView) {
    println!(
        "{:<20} {:<9} {:<8} not after {}  issued {}  revoked {}  CRL #{}",
        v.name,
        v.status,
        v.key_type,
        v.not_after.as_deref().unwrap_or("-"),
        v.counters.issued,
        v.counters.revoked,
        v.crl_number,
    );
}

pub async fn ca(mut c: Client, cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::List => {
            let r: Reply<CaList> = c.fetch(Method::GET, "/v1/cas").await?;
            output::emit(&r.raw, || r.body.cas.iter().for_each(print_ca));
        }
        CaCommand::Show { name } => {
            let r: Reply<CaView> = c.fetch(Method::GET, &format!("/v1/cas/{name}")).await?;
            println!("{}", serde_json::to_string_pretty(&r.raw)?);
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
            if let Some(b) = &a.backend {
                body["backend"] = json!(b);
            }
            let r: Reply<CaView> = c.call(Method::POST, "/v1/cas", Some(&body)).await?;
            if a.external {
                let csr = r.body.csr_pem.as_deref().unwrap_or_default();
                write_out(a.csr_out.as_deref(), csr.as_bytes())?;
                output::note(
                    &r.raw,
                    &format!(
                        "CA {} is pending: have the root sign the CSR, then run `influxion ca import {} --certificate … --chain …`",
                        a.name, a.name
                    ),
                );
            } else {
                output::emit(&r.raw, || print_ca(&r.body));
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
            let r: Reply<CaView> = c
                .call(
                    Method::PUT,
                    &format!("/v1/cas/{name}/certificate"),
                    Some(&body),
                )
                .await?;
            output::emit(&r.raw, || print_ca(&r.body));
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
                    None::<&()>,
                )
                .await?;
            write_out(output.as_deref(), &bytes)?;
        }
        CaCommand::Disable { name } => {
            let r: Reply<CaView> = c
                .fetch(Method::POST, &format!("/v1/cas/{name}/disable"))
                .await?;
            output::emit(&r.raw, || print_ca(&r.body));
        }
        CaCommand::Revoke { name, reason } => {
            let r: Reply<CaView> = c
                .call(
                    Method::POST,
                    &format!("/v1/cas/{name}/revoke"),
                    Some(&json!({"reason": reason})),
                )
                .await?;
            let v = &r.body;
            output::emit(&r.raw, || {
                print_ca(v);
                eprintln!(
                    "CA {name} revoked ({}); the CRL of {} lists serial {}",
                    v.revocation_reason.as_deref().unwrap_or_default(),
                    v.parent.as_deref().unwrap_or_default(),
                    v.serial.as_deref().unwrap_or_default()
                );
            });
        }
        CaCommand::Crl { name } => {
            let r: Reply<CaView> = c
                .fetch(Method::POST, &format!("/v1/cas/{name}/crl"))
                .await?;
            output::emit(&r.raw, || print_ca(&r.body));
        }
    }
    Ok(ExitCode::SUCCESS)
}

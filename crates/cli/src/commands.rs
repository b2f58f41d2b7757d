//! Client commands: keys, sign, verify.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use influxion_api::{
    CertifyKey, CreateKey, ImportKey, KeyCertificate, KeyList, KeyView, PendingChange,
    PolicyRequest, RequestView,
};
use influxion_core::key::HashAlg;
use reqwest::Method;
use sha2::Digest as _;

use crate::client::{Client, Reply};
use crate::output;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// List keys.
    List,
    /// Show one key.
    Show { name: String },
    /// Export a public key (PEM by default).
    Public {
        name: String,
        #[arg(long, default_value = "pem", value_parser = ["pem", "jwk"])]
        format: String,
        /// Write here instead of standard output.
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Create a key (key-admin).
    Create {
        name: String,
        /// ec-p256, ec-p384, ed25519, rsa-2048 (for devices that verify nothing stronger), rsa-3072 or rsa-4096.
        #[arg(long = "type", default_value = "ec-p256")]
        key_type: String,
        /// The key backend: software, azure-keyvault, pkcs11 or pkcs11:TOKEN (default:
        /// the keyserver's).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Bind a key that already exists in Azure Key Vault or on the PKCS#11 token (key-admin).
    #[command(group(clap::ArgGroup::new("source").required(true).args(["vault_key", "vault_certificate", "pkcs11_label", "pkcs11_id"])))]
    Import {
        name: String,
        /// A vault key, NAME or NAME/VERSION; the version is pinned (default: the newest now).
        #[arg(long)]
        vault_key: Option<String>,
        /// A vault certificate: its key signs in the vault, its chain is kept with the key.
        #[arg(long)]
        vault_certificate: Option<String>,
        /// Read the certificate's private key from its secret and hold it in memory (for
        /// vaults that grant only secrets get; prefer signing in the vault).
        #[arg(long, requires = "vault_certificate")]
        from_secret: bool,
        /// A private key on the PKCS#11 token, by its label (CKA_LABEL).
        #[arg(long)]
        pkcs11_label: Option<String>,
        /// A private key on the PKCS#11 token, by its id (CKA_ID), hex.
        #[arg(long)]
        pkcs11_id: Option<String>,
        /// Accept a token key that can leave the token (extractable or not sensitive);
        /// the audit record of the import says so.
        #[arg(long)]
        allow_extractable: bool,
        /// The backend holding it when several of its kind are configured:
        /// pkcs11:TOKEN (default: the only PKCS#11 token, or the vault).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Bind a newer version of the key's vault key or certificate (key-admin, audited).
    Rotate {
        name: String,
        /// The version to bind (default: the newest).
        #[arg(long)]
        version: Option<String>,
    },
    /// The key's certificate chain, PEM, leaf first; with --chain, give the key one
    /// (key-admin, audited: the leaf must carry the key's public key).
    Certificate {
        name: String,
        /// Write here instead of standard output.
        #[arg(short = 'o', long = "out", conflicts_with = "chain")]
        output: Option<PathBuf>,
        /// A PEM file of the key's certificate and its issuers, leaf first.
        #[arg(long)]
        chain: Option<PathBuf>,
    },
    /// Give the key a code-signing certificate from one of the keyserver's certificate
    /// profiles (extendedKeyUsage codeSigning), its CA's chain included (key-admin).
    Certify {
        name: String,
        /// The certificate profile.
        #[arg(long)]
        profile: String,
    },
    /// Disable a key: it can no longer sign (key-admin).
    Disable { name: String },
    /// Set a key's approval policy (key-admin).
    Policy {
        name: String,
        /// Approvals needed before a signature is made; 0 turns approval off.
        #[arg(long)]
        approvals: u32,
        /// Seconds a request waits before it expires.
        #[arg(long, default_value_t = 86_400)]
        ttl: u32,
        /// Subject allowed to approve (repeatable); none = any approver of the key.
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// Why: shown to the approvers when the change weakens the policy.
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn keys(mut c: Client, cmd: KeysCommand) -> Result<ExitCode> {
    match cmd {
        KeysCommand::List => {
            let r: Reply<KeyList> = c.fetch(Method::GET, "/v1/keys").await?;
            if output::json() {
                println!("{}", r.raw);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<10} {:<8} {:<9} {:<9} CREATED",
                "NAME", "TYPE", "ALG", "STATUS", "BACKEND"
            );
            for k in r.body.keys {
                println!(
                    "{:<24} {:<10} {:<8} {:<9} {:<9} {}",
                    k.name,
                    k.key_type,
                    k.default_algorithm,
                    k.status.as_str(),
                    k.backend,
                    k.created_at
                );
            }
        }
        KeysCommand::Show { name } => {
            let r: Reply<KeyView> = c.fetch(Method::GET, &format!("/v1/keys/{name}")).await?;
            println!("{}", serde_json::to_string_pretty(&r.raw)?);
        }
        KeysCommand::Public {
            name,
            format,
            output,
        } => {
            let text = c
                .get_text(&format!("/v1/keys/{name}/public?format={format}"))
                .await?;
            match output {
                Some(p) => {
                    std::fs::write(&p, &text)
                        .with_context(|| format!("writing {}", p.display()))?;
                    output::note(
                        &serde_json::json!({"key": name, "format": format, "written": p}),
                        &format!("public key of {name} written to {}", p.display()),
                    );
                }
                None => output::emit(
                    &serde_json::json!({"key": name, "format": format, "public_key": text}),
                    || print!("{text}"),
                ),
            }
        }
        KeysCommand::Create {
            name,
            key_type,
            backend,
        } => {
            let r: Reply<KeyView> = c
                .call(
                    Method::POST,
                    "/v1/keys",
                    Some(&CreateKey {
                        name,
                        key_type,
                        backend,
                    }),
                )
                .await?;
            let k = &r.body;
            output::emit(&r.raw, || {
                println!(
                    "created key {} ({}, {} backend) {}",
                    k.name,
                    k.key_type.as_str(),
                    k.backend,
                    fingerprint(&k.public_key_pem)
                )
            });
        }
        KeysCommand::Import {
            name,
            vault_key,
            vault_certificate,
            from_secret,
            pkcs11_label,
            pkcs11_id,
            allow_extractable,
            backend,
        } => {
            let body = ImportKey {
                vault_key,
                vault_certificate,
                from_secret,
                pkcs11_label,
                pkcs11_id,
                allow_extractable,
                backend,
            };
            let r: Reply<KeyView> = c
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/import"),
                    Some(&body),
                )
                .await?;
            let k = &r.body;
            output::emit(&r.raw, || {
                println!(
                    "imported key {} ({}, {}{}) {}{}",
                    k.name,
                    k.key_type.as_str(),
                    k.backend,
                    location(k),
                    fingerprint(&k.public_key_pem),
                    if k.has_certificate {
                        ", with certificate"
                    } else {
                        ""
                    }
                )
            });
        }
        KeysCommand::Rotate { name, version } => {
            let body = influxion_api::RotateKey { version };
            let r: Reply<KeyView> = c
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/rotate"),
                    Some(&body),
                )
                .await?;
            let k = &r.body;
            output::emit(&r.raw, || {
                println!(
                    "key {} now bound to{} {}",
                    k.name,
                    location(k),
                    fingerprint(&k.public_key_pem)
                )
            });
        }
        KeysCommand::Certificate {
            name,
            chain: Some(chain),
            ..
        } => {
            let pem = std::fs::read_to_string(&chain)
                .with_context(|| format!("reading {}", chain.display()))?;
            let r: Reply<KeyView> = c
                .call(
                    Method::PUT,
                    &format!("/v1/keys/{name}/certificate"),
                    Some(&KeyCertificate { chain: pem }),
                )
                .await?;
            output::emit(&r.raw, || {
                println!(
                    "key {name} now has the certificate chain of {}",
                    chain.display()
                )
            });
        }
        KeysCommand::Certify { name, profile } => {
            let r: Reply<KeyView> = c
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/certify"),
                    Some(&CertifyKey {
                        profile: profile.clone(),
                    }),
                )
                .await?;
            output::emit(&r.raw, || {
                println!("key {name} now has a code-signing certificate from profile {profile}")
            });
        }
        KeysCommand::Certificate {
            name,
            output,
            chain: None,
        } => {
            let text = c.get_text(&format!("/v1/keys/{name}/certificate")).await?;
            match output {
                Some(p) => {
                    std::fs::write(&p, &text)
                        .with_context(|| format!("writing {}", p.display()))?;
                    output::note(
                        &serde_json::json!({"key": name, "written": p}),
                        &format!("certificate chain of {name} written to {}", p.display()),
                    );
                }
                None => output::emit(
                    &serde_json::json!({"key": name, "certificate_chain": text}),
                    || print!("{text}"),
                ),
            }
        }
        KeysCommand::Policy {
            name,
            approvals,
            ttl,
            approvers,
            reason,
        } => {
            let body = PolicyRequest {
                approvals_required: approvals,
                approval_ttl_secs: Some(ttl),
                approvers,
                reason,
            };
            let r: Reply<serde_json::Value> = c
                .call(Method::PUT, &format!("/v1/keys/{name}/policy"), Some(&body))
                .await?;
            // A weakening change waits for the key's approvers.
            if r.status == reqwest::StatusCode::ACCEPTED {
                let pending: PendingChange = r.read()?;
                output::note(
                    &r.raw,
                    &format!(
                        "policy change {} pending: it weakens the policy and needs {} approval(s) \
                         (influxion policy-changes show {})",
                        pending.change_id, pending.quorum, pending.change_id
                    ),
                );
            } else {
                let key: KeyView = r.read()?;
                let policy = serde_json::to_value(&key.policy)?;
                let pretty = serde_json::to_string_pretty(&policy)?;
                output::emit(&policy, || println!("{pretty}"));
            }
        }
        KeysCommand::Disable { name } => {
            let _: Reply<KeyView> = c
                .call(
                    Method::POST,
                    &format!("/v1/keys/{name}/disable"),
                    Some(&serde_json::json!({})),
                )
                .await?;
            output::note(
                &serde_json::json!({"key": name, "status": "disabled"}),
                &format!("key {name} disabled"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// ` vault key NAME/VERSION` (or the secret) for keys whose backend says where they live.
fn location(k: &KeyView) -> String {
    let l = &k.location;
    let s = |f: &str| l.get(f).and_then(|v| v.as_str());
    match (s("vault_key"), s("vault_key_version"), s("vault_secret")) {
        (Some(n), Some(v), _) => format!(" vault key {n}/{v}"),
        (_, _, Some(n)) => format!(
            " vault secret {n}/{}",
            s("vault_secret_version").unwrap_or("?")
        ),
        _ => String::new(),
    }
}

/// No progress bars or spinners: in pipelines, for JSON output, or off a terminal.
pub fn quiet() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || output::json()
        || !std::io::stderr().is_terminal()
}

/// Hash a file in fixed-size chunks (constant memory), with a progress bar for large files.
pub fn hash_file(path: &Path, hash: HashAlg) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bar = crate::signing::progress_for(path);
    let digest = influxion_formats::hash_stream(f, hash, path, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    Ok(digest)
}

/// Exit code when a signing request ends without a signature (rejected, cancelled,
/// expired) or waiting timed out.
pub const EXIT_NOT_SIGNED: u8 = 3;
/// Gave up waiting for approvals (the request is still pending).
pub const EXIT_TIMEOUT: u8 = 6;

/// `sha256:<hex>` of the public key's SubjectPublicKeyInfo (DER), as `openssl pkey
/// -pubin -outform DER | sha256sum` prints it.
fn fingerprint(public_key_pem: &str) -> String {
    match pem::parse(public_key_pem) {
        Ok(p) => format!("sha256:{}", hex::encode(sha2::Sha256::digest(p.contents()))),
        Err(_) => "(public key unreadable)".into(),
    }
}

/// Who approved a request, for the summary line.
pub(crate) fn approvers(r: &RequestView) -> String {
    r.approvals
        .iter()
        .filter(|a| a.decision == "approve")
        .map(|a| output::terminal_safe(&a.approver.label()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) enum Waited {
    Signed(Box<RequestView>),
    Ended(String),
    TimedOut,
}

/// Poll a signing request until it ends, with a spinner on a terminal.
pub(crate) async fn wait_for(c: &mut Client, id: &str, timeout: u64) -> Result<Waited> {
    let spinner = if quiet() {
        ProgressBar::hidden()
    } else {
        let s = ProgressBar::new_spinner();
        s.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut renewed = false;
    loop {
        let used = c.token_now().await?;
        let r: RequestView = match c
            .fetch(Method::GET, &format!("/v1/signing-requests/{id}"))
            .await
        {
            Ok(r) => {
                renewed = false;
                r.body
            }
            // A wait of hours outlives the access token: fetch a new one (once) and go on.
            Err(e)
                if !renewed
                    && e.downcast_ref::<crate::client::ApiStatus>()
                        .is_some_and(|a| a.status == reqwest::StatusCode::UNAUTHORIZED) =>
            {
                renewed = true;
                c.reset_token(&used).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        spinner.set_message(format!(
            "waiting for approval of {id}: {}/{} approvals",
            r.approvals_count, r.quorum
        ));
        match r.status.as_str() {
            "signed" => {
                spinner.finish_and_clear();
                return Ok(Waited::Signed(Box::new(r)));
            }
            "pending" => {}
            _ => {
                spinner.finish_and_clear();
                return Ok(Waited::Ended(r.status));
            }
        }
        if std::time::Instant::now() >= deadline {
            spinner.finish_and_clear();
            return Ok(Waited::TimedOut);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
}

//! The engine of production lines: `influxion cert bulk` and `influxion provision`.
//! Concurrent, retried on transient failures, and resumable from an fsynced journal
//! without issuing twice (each device's request key binds a retry to its first
//! certificate).

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use influxion_api::pki::IssuedView;
use influxion_api::{KeyView, SignResponse};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest as _;

use super::files::{durable_write, write_secret};
use crate::client::{ApiStatus, Client, Reply};
use crate::output;

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
        if let Ok(entry) = serde_json::from_str::<JournalEntry>(line) {
            if entry.signed || !want_signature {
                done.insert(entry.id);
            }
        }
    }
    Ok(done)
}

/// One line of the journal: a device finished.
#[derive(Serialize, Deserialize)]
struct JournalEntry {
    id: String,
    #[serde(default)]
    serial: String,
    /// Whether its firmware was signed too (older journals have no such field).
    #[serde(default)]
    signed: bool,
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
    let v: IssuedView = retrying(&mut c, attempts, |mut c| {
        let body = body.clone();
        let path = path.clone();
        async move { c.call(Method::POST, &path, Some(&body)).await }
    })
    .await?;
    let pem = format!("{}{}", v.certificate_pem, v.chain_pem);
    // Durable before the journal says done.
    durable_write(out_dir, &format!("{}.pem", item.id), pem.as_bytes())?;
    Ok(v.record.serial)
}

/// `influxion cert bulk`: certificates only.
pub(super) async fn certificates(c: Client, a: BulkArgs) -> Result<ExitCode> {
    bulk(c, a, None).await
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
        let v: KeyView = c.fetch(Method::GET, &format!("/v1/keys/{key}")).await?.body;
        if v.policy.approvals_required > 0 {
            bail!("key {key} needs approvals; a provisioning run cannot wait for people");
        }
        let spki = influxion_verify::from_pem(&v.public_key_pem)?;
        Ok(Self {
            key,
            key_type: v.key_type,
            algorithm: v.default_algorithm,
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
        let v: SignResponse = retrying(&mut c, attempts, |mut c| {
            let body = body.clone();
            let path = path.clone();
            async move { c.call(Method::POST, &path, Some(&body)).await }
        })
        .await
        .context("no signature (the key needs approval?)")?;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(v.signature)
            .context("the signature is not base64")?;
        let d = influxion_core::Digest::new(self.algorithm, digest)?;
        if !influxion_verify::verify(self.key_type, &self.spki, &d, &sig)? {
            bail!("{id}: the keyserver returned a signature that does not verify");
        }
        durable_write(out_dir, &format!("{id}.sig"), &sig)
    }
}

/// Run `call` until it succeeds, fails for good, or `attempts` are spent; transient
/// failures back off exponentially, and a 401 fetches a new token first.
async fn retrying<T, F, Fut>(c: &mut Client, attempts: u32, mut call: F) -> Result<T>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<Reply<Value>>>,
{
    let mut delay = Duration::from_millis(250);
    let mut n = 0;
    loop {
        n += 1;
        let used = c.token_now().await?;
        match call(c.clone()).await {
            Ok(r) if r.status == reqwest::StatusCode::ACCEPTED => {
                bail!("the key needs approval; a provisioning run cannot wait for people")
            }
            Ok(r) => return r.read(),
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
                    let entry = JournalEntry {
                        id: item.id.clone(),
                        serial: serial.clone(),
                        signed: sign.is_some(),
                    };
                    // A device is done only once the journal says so durably.
                    let written = serde_json::to_string(&entry)
                        .context("writing the journal")
                        .and_then(|line| {
                            journal
                                .lock()
                                .map_err(|_| anyhow!("the journal lock is poisoned"))
                                .map(|f| (line, f))
                        })
                        .and_then(|(line, mut f)| {
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

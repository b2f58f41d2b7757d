//! `influxion sign` and `influxion verify`: one pathway for every signature format.
//! The format prepares the file on this machine (parse, check, hash: only a digest
//! leaves it), the keyserver signs the digest (at once, or after a signing request's
//! approvals), the signature is checked against the key, and the format writes the
//! output. A refusal of the format (a file it does not take, a key it cannot use)
//! comes before any request, and nothing is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use influxion_api::{KeyView, PendingResponse, SignRequest, SignResponse};
use influxion_core::{KeyType, SignAlgorithm};
use influxion_formats::{Format, SignerKey};
use influxion_verify as public;
use reqwest::Method;

use crate::client::{Client, Reply};
use crate::commands::{approvers, quiet, wait_for, Waited, EXIT_NOT_SIGNED, EXIT_TIMEOUT};
use crate::config::ClientConfig;
use crate::output;

/// What every format takes: which format, and its options.
#[derive(Args)]
pub struct FormatArgs {
    /// Signature format: raw (a detached signature), cms (detached CMS SignedData with
    /// the key's certificate chain), mcuboot (a signed MCUboot image), authenticode (a
    /// signed Windows PE or UEFI image).
    #[arg(long, default_value = "raw", value_parser = influxion_formats::NAMES)]
    format: String,
    #[command(flatten)]
    mcuboot: McubootArgs,
    /// Ask this RFC 3161 Time-Stamping Authority (http or https) for a timestamp of the
    /// signature and embed it (sign, --format authenticode or cms), as signtool /tr and
    /// osslsigncode -ts do.
    #[arg(long, value_parser = parse_tsa_url, value_name = "URL")]
    timestamp_url: Option<url::Url>,
}

/// A TSA URL: http or https only (RFC 3161 over HTTP, section 3.4).
fn parse_tsa_url(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match u.scheme() {
        "http" | "https" if u.host().is_some() => Ok(u),
        "http" | "https" => Err(format!("{s:?} names no host")),
        other => Err(format!(
            "a timestamp URL is http or https, not {other}: RFC 3161 over HTTP"
        )),
    }
}

/// imgtool's options, with imgtool's names and meanings (`--format mcuboot`).
#[derive(Args)]
pub struct McubootArgs {
    /// Size of the image header, which the input's first bytes leave zero (Zephyr's
    /// CONFIG_ROM_START_OFFSET), e.g. 0x200.
    #[arg(long, value_parser = parse_u32, help_heading = "MCUboot (--format mcuboot)")]
    header_size: Option<u32>,
    /// The input is a raw binary: add the header in front instead of filling zeros.
    #[arg(long, help_heading = "MCUboot (--format mcuboot)")]
    pad_header: bool,
    /// Size of the slot the image must fit in.
    #[arg(long, value_parser = parse_u32, help_heading = "MCUboot (--format mcuboot)")]
    slot_size: Option<u32>,
    /// Flash write alignment: 1, 2, 4, 8, 16 or 32.
    #[arg(long, default_value_t = 1, help_heading = "MCUboot (--format mcuboot)")]
    align: u8,
    /// Image version, MAJOR.MINOR.REVISION+BUILD.
    #[arg(
        long = "version",
        default_value = "0.0.0",
        help_heading = "MCUboot (--format mcuboot)"
    )]
    image_version: String,
    /// Security counter (a number, or `auto` to derive it from the version).
    #[arg(long, help_heading = "MCUboot (--format mcuboot)")]
    security_counter: Option<String>,
    /// Accept an image that is already signed: its signature and TLVs are replaced.
    #[arg(long, help_heading = "MCUboot (--format mcuboot)")]
    replace_signature: bool,
    /// Load address for RAM-loaded images (sets IMAGE_F_RAM_LOAD).
    #[arg(long, value_parser = parse_u32, help_heading = "MCUboot (--format mcuboot)")]
    load_addr: Option<u32>,
}

/// A number as imgtool takes it: decimal or 0x-prefixed hex.
fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number (decimal or 0x hex)"))
}

impl FormatArgs {
    /// The format, signing with `algorithm`. Verifying reads the layout from the
    /// file, so imgtool's layout options are needed only for signing.
    fn format(&self, algorithm: SignAlgorithm, signing: bool) -> Result<Box<dyn Format>> {
        Ok(match self.format.as_str() {
            "raw" => Box::new(influxion_formats::raw::Raw { algorithm }),
            "cms" => Box::new(influxion_formats::cms::Cms { algorithm }),
            "authenticode" => Box::new(influxion_formats::authenticode::Authenticode { algorithm }),
            "mcuboot" => {
                let m = &self.mcuboot;
                let header_size = match (m.header_size, signing) {
                    (Some(h), _) => h,
                    (None, false) => 0,
                    (None, true) => {
                        bail!("--format mcuboot needs --header-size (e.g. 0x200), as imgtool does")
                    }
                };
                let version = influxion_formats::mcuboot::parse_version(&m.image_version)
                    .map_err(anyhow::Error::msg)?;
                let security_counter = m
                    .security_counter
                    .as_deref()
                    .map(|s| influxion_formats::mcuboot::parse_security_counter(s, version))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                Box::new(influxion_formats::mcuboot::Mcuboot {
                    options: influxion_formats::mcuboot::McubootOptions {
                        header_size,
                        pad_header: m.pad_header,
                        slot_size: m.slot_size,
                        align: m.align,
                        version,
                        security_counter,
                        load_addr: m.load_addr,
                        replace_signature: m.replace_signature,
                    },
                })
            }
            other => bail!("unknown format {other:?}"),
        })
    }

    /// Where the output goes unless `-o` says: the signature beside the file for
    /// detached formats; an image or program file needs a name.
    fn default_output(&self, file: &Path) -> Result<PathBuf> {
        let beside = |ext: &str| {
            let mut s = file.as_os_str().to_owned();
            s.push(ext);
            PathBuf::from(s)
        };
        match self.format.as_str() {
            "raw" => Ok(beside(".sig")),
            "cms" => Ok(beside(".p7s")),
            f => bail!("--format {f} writes a new file: name it with -o OUT"),
        }
    }

    /// The TSA to ask, if any, refused for formats that carry no timestamp.
    fn timestamp_url(&self) -> Result<Option<&url::Url>> {
        match (&self.timestamp_url, self.format.as_str()) {
            (Some(_), "authenticode" | "cms") | (None, _) => Ok(self.timestamp_url.as_ref()),
            (Some(_), f) => bail!(
                "--timestamp-url is for --format authenticode and cms: the {f} format carries \
                 no timestamp"
            ),
        }
    }

    /// Whether `verify` reads a separate signature file.
    fn detached(&self) -> bool {
        matches!(self.format.as_str(), "raw" | "cms")
    }
}

#[derive(Args)]
pub struct SignArgs {
    /// Key to sign with.
    #[arg(long)]
    key: String,
    /// File to sign.
    file: PathBuf,
    /// Where to write the output (default: FILE.sig for raw, FILE.p7s for cms).
    #[arg(short = 'o', long = "out")]
    output: Option<PathBuf>,
    /// Signing algorithm (default: the key's default; MCUboot chooses by key type).
    #[arg(long)]
    algorithm: Option<String>,
    /// Why: shown to approvers and kept in the audit log (required for keys that need approval).
    #[arg(long)]
    reason: Option<String>,
    /// Extra facts for approvers, as KEY=VALUE (repeatable); file name and size are added.
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// For keys that need approval: print the request id and return at once.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting for approval after this many seconds.
    #[arg(long, default_value_t = 86_400)]
    timeout: u64,
    #[command(flatten)]
    format: FormatArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Key whose public key (and certificate chain) to use, fetched from the keyserver
    /// unless --public-key is given.
    #[arg(long)]
    key: Option<String>,
    /// Public key PEM file, for verifying offline.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// The signed file (for mcuboot: the signed image).
    file: PathBuf,
    /// Signature file of a detached format (default: FILE.sig, FILE.p7s).
    #[arg(long)]
    signature: Option<PathBuf>,
    #[arg(long)]
    algorithm: Option<String>,
    #[command(flatten)]
    format: FormatArgs,
}

/// A progress bar for reading `path`, shown for large files on a terminal.
pub(crate) fn progress_for(path: &Path) -> ProgressBar {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len < 16 * 1024 * 1024 || quiet() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "hashing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// The key's public key and certificate chain, as the formats need them.
async fn signer_key(c: &mut Client, key: &KeyView) -> Result<SignerKey> {
    let chain = if key.has_certificate {
        let text = c
            .get_text(&format!("/v1/keys/{}/certificate", key.name))
            .await?;
        pem::parse_many(text.as_bytes())
            .context("the key's certificate chain is not PEM")?
            .into_iter()
            .map(|p| p.into_contents())
            .collect()
    } else {
        Vec::new()
    };
    Ok(SignerKey {
        key_type: key.key_type,
        public_key_der: public::from_pem(&key.public_key_pem)?,
        chain,
    })
}

fn algorithm(
    named: Option<&str>,
    key_type: KeyType,
    default: SignAlgorithm,
) -> Result<SignAlgorithm> {
    let alg: SignAlgorithm = match named {
        Some(a) => a.parse()?,
        None => default,
    };
    if !key_type.allows(alg) {
        bail!("a {key_type} key cannot sign with {alg}");
    }
    Ok(alg)
}

/// The largest TSA answer read: a token with its certificates is a few kilobytes.
const MAX_TSA_RESPONSE: usize = influxion_formats::tsp::MAX_RESPONSE;

/// An RFC 3161 timestamp token over `signature` (its `hash`), from the TSA at `url`:
/// POST a TimeStampReq with a random nonce, read at most 64 KiB, and check the answer.
async fn timestamp(
    url: &url::Url,
    hash: influxion_core::key::HashAlg,
    signature: &[u8],
) -> Result<Vec<u8>> {
    use reqwest::header::{ACCEPT, CONTENT_TYPE};
    let request = influxion_formats::tsp::request(hash, signature, rand::random())?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        // The request goes to the URL named, never elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let mut resp = http
        .post(url.clone())
        .header(CONTENT_TYPE, "application/timestamp-query")
        .header(ACCEPT, "application/timestamp-reply")
        .body(request.clone())
        .send()
        .await
        .with_context(|| format!("asking the TSA at {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("the TSA at {url} answered HTTP {status}");
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let too_large = || anyhow::anyhow!("the TSA at {url} answered more than 64 KiB");
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > MAX_TSA_RESPONSE))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading the TSA's answer from {url}"))?
    {
        if body.len() + chunk.len() > MAX_TSA_RESPONSE {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    influxion_formats::tsp::token_from_response(&body, &request)
        .with_context(|| format!("the TSA at {url} (Content-Type {content_type:?})"))
}

pub async fn sign(mut c: Client, args: SignArgs) -> Result<ExitCode> {
    // A usage error, before any request.
    let tsa = args.format.timestamp_url()?.cloned();
    let key: KeyView = c
        .fetch(Method::GET, &format!("/v1/keys/{}", args.key))
        .await?
        .body;
    let alg = algorithm(
        args.algorithm.as_deref(),
        key.key_type,
        key.default_algorithm,
    )?;
    let format = args.format.format(alg, true)?;
    let out = match &args.output {
        Some(o) => o.clone(),
        None => args.format.default_output(&args.file)?,
    };
    let signer = signer_key(&mut c, &key).await?;
    let bar = progress_for(&args.file);
    let mut prepared = format
        .prepare(&args.file, &signer, &|n| bar.inc(n))
        .with_context(|| format!("{} format", format.name()))?;
    bar.finish_and_clear();
    let digest = prepared.to_sign().clone();
    let mut meta = serde_json::Map::new();
    if let Some(n) = args.file.file_name() {
        meta.insert("file".into(), n.to_string_lossy().into());
    }
    if let Ok(m) = std::fs::metadata(&args.file) {
        meta.insert("size".into(), m.len().into());
    }
    for kv in &args.meta {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--meta {kv:?} is not KEY=VALUE"))?;
        meta.insert(k.to_owned(), v.into());
    }
    let body = SignRequest {
        digest: digest.to_hex(),
        algorithm: Some(digest.algorithm().as_str().to_owned()),
        reason: args.reason.clone(),
        metadata: Some(meta),
        format: Some(format.name().to_owned()),
    };
    let r: Reply<serde_json::Value> = c
        .call(
            Method::POST,
            &format!("/v1/keys/{}/sign", args.key),
            Some(&body),
        )
        .await?;
    // Who approved, for --output json (the text summary names them too).
    let mut approvals: Vec<influxion_api::Actor> = Vec::new();
    let (sig_b64, summary) = if r.status == reqwest::StatusCode::ACCEPTED {
        let pending: PendingResponse = r.read()?;
        let id = pending.request_id;
        eprintln!(
            "key {} needs {} approval(s): signing request {id}",
            key.name, pending.quorum
        );
        if args.no_wait {
            output::emit(
                &serde_json::json!({"request_id": id, "status": "pending"}),
                || println!("{id}"),
            );
            return Ok(ExitCode::SUCCESS);
        }
        match wait_for(&mut c, &id, args.timeout).await? {
            Waited::Signed(r) => {
                let approved_by = approvers(&r);
                approvals = r
                    .approvals
                    .iter()
                    .filter(|a| a.decision == "approve")
                    .map(|a| a.approver.clone())
                    .collect();
                (
                    r.signature.context("signed request without signature")?,
                    format!("request {id}, approved by {approved_by}"),
                )
            }
            Waited::Ended(status) => {
                output::note(
                    &serde_json::json!({"request_id": id, "status": status, "signed": false}),
                    &format!("signing request {id} was {status}; no signature"),
                );
                return Ok(ExitCode::from(EXIT_NOT_SIGNED));
            }
            Waited::TimedOut => {
                output::note(
                    &serde_json::json!({"request_id": id, "status": "pending", "signed": false, "timed_out": true}),
                    &format!("gave up waiting for signing request {id} (still pending; see `influxion approvals show {id}`)"),
                );
                return Ok(ExitCode::from(EXIT_TIMEOUT));
            }
        }
    } else {
        let signed: SignResponse = r.read().context("no signature in the response")?;
        (
            signed.signature,
            format!("audit record {}", signed.audit_seq),
        )
    };
    let sig = B64.decode(sig_b64).context("the signature is not base64")?;
    // Check before writing: a signature that does not verify is never handed on.
    if !public::verify(key.key_type, &signer.public_key_der, &digest, &sig)? {
        bail!("the keyserver returned a signature that does not verify; nothing written");
    }
    if let Some(url) = &tsa {
        // The signature is made and audited; without its timestamp nothing is written.
        let failed = |e: anyhow::Error| {
            anyhow::anyhow!("signed ({summary}) but the timestamp failed: {e:#}; nothing written")
        };
        let token = timestamp(url, digest.algorithm().hash(), &sig)
            .await
            .map_err(failed)?;
        prepared
            .set_timestamp(token)
            .map_err(|e| failed(e.into()))?;
    }
    // Every format writes a new file beside the output (created exclusively, so never
    // through a link planted there) and renames it into place: a failure leaves nothing.
    let name = format.name();
    prepared
        .assemble(&sig, &out)
        .with_context(|| format!("writing the {name} output"))?;
    let alg = digest.algorithm();
    if output::json() {
        println!(
            "{}",
            serde_json::json!({
                "file": args.file, "key": key.name, "algorithm": alg.to_string(),
                "format": name, "digest": digest.to_hex(), "output": out,
                "signature_file": out, "signed": true,
                "summary": summary, "approved_by": approvals,
                "timestamp_url": tsa.as_ref().map(url::Url::as_str),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let stamped = tsa
        .as_ref()
        .map(|u| format!(", timestamped by {u}"))
        .unwrap_or_default();
    eprintln!(
        "signed {} with {} ({alg}, {name}), signed {} {}, {summary}{stamped}, output in {}",
        args.file.display(),
        key.name,
        alg.hash().as_str(),
        digest.to_hex(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(cfg: ClientConfig, args: VerifyArgs) -> Result<ExitCode> {
    if args.format.timestamp_url.is_some() {
        bail!("--timestamp-url is for sign: verify checks the timestamp a file carries");
    }
    let (key, default_alg) = match (&args.public_key, &args.key) {
        (Some(p), _) => {
            let pem =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let spki = public::from_pem(&pem)?;
            let kt = public::detect_key_type(&spki).context("unsupported public key type")?;
            let key = SignerKey {
                key_type: kt,
                public_key_der: spki,
                chain: Vec::new(),
            };
            (key, kt.default_algorithm())
        }
        (None, Some(name)) => {
            let mut c = Client::new(cfg)?;
            let view: KeyView = c
                .fetch(Method::GET, &format!("/v1/keys/{name}"))
                .await?
                .body;
            (signer_key(&mut c, &view).await?, view.default_algorithm)
        }
        (None, None) => bail!("give --key NAME or --public-key FILE"),
    };
    let alg = algorithm(args.algorithm.as_deref(), key.key_type, default_alg)?;
    let format = args.format.format(alg, false)?;
    let (signed, content) = if args.format.detached() {
        let sig = match &args.signature {
            Some(s) => s.clone(),
            None => args.format.default_output(&args.file)?,
        };
        (sig, Some(args.file.as_path()))
    } else {
        (args.file.clone(), None)
    };
    let bar = progress_for(&args.file);
    let result = format.verify(&signed, content, &key, &|n| bar.inc(n));
    bar.finish_and_clear();
    match result {
        Ok(checks) => {
            let v = serde_json::json!({
                "file": args.file, "format": format.name(), "valid": true, "checked": checks,
            });
            output::emit(&v, || {
                println!(
                    "signature OK ({} format, {})",
                    format.name(),
                    args.file.display()
                );
                for c in &checks {
                    println!("  checked: {c}");
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(influxion_formats::FormatError::Verify(why)) => {
            let v = serde_json::json!({
                "file": args.file, "format": format.name(), "valid": false, "reason": why,
            });
            output::note(&v, &format!("signature INVALID ({}): {why}", format.name()));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

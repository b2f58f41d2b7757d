//! `influxion audit list|show|export`: the audit log through the keyserver's API, as an
//! auditor. (`audit verify` and `audit reseal` work on the database itself and live
//! with the server wiring.)

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use influxion_api::{AuditEntry, AuditPage, AuditRecordView, Chain};
use reqwest::{Method, StatusCode};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::client::{ApiStatus, Client, Reply};
use crate::output::{self, fit, terminal_safe, who};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutcomeArg {
    Ok,
    Refused,
    Error,
}

impl OutcomeArg {
    fn as_str(self) -> &'static str {
        match self {
            OutcomeArg::Ok => "ok",
            OutcomeArg::Refused => "refused",
            OutcomeArg::Error => "error",
        }
    }
}

/// Filters shared by `list` and `export`; the keyserver applies them.
#[derive(clap::Args, Debug, Default)]
pub struct Filters {
    /// Only these actions (repeat or comma-separate; `cert.*` matches a prefix):
    /// sign, signing_request.approve, cert.issue, key.create, audit.read, …
    #[arg(long, value_delimiter = ',')]
    action: Vec<String>,
    /// Only records whose actor's identity or name contains TEXT.
    #[arg(long, value_name = "TEXT")]
    actor: Option<String>,
    /// Only records about this key (or CA): their target or their detail's key.
    #[arg(long, value_name = "NAME")]
    key: Option<String>,
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// At or after TIME: RFC 3339 (2026-12-01T09:00:00Z) or an age (90m, 12h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before TIME (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    #[command(flatten)]
    filters: Filters,
    /// Records to show, newest first (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Only records before this sequence number (the next page of a listing).
    #[arg(long, value_name = "SEQ")]
    before: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line (JSON Lines), oldest first.
    Jsonl,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "jsonl")]
    format: ExportFormat,
    /// Records after sequence number SEQ (the last one already shipped). Default: 0,
    /// or the last record in --out when it already holds some.
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(i64).range(0..))]
    since: Option<i64>,
    /// Keep streaming records as they are written (until interrupted).
    #[arg(long)]
    follow: bool,
    /// Append to FILE instead of writing to stdout; an export into a file that already
    /// holds records resumes after its last one, without gaps or repeats.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    filters: Filters,
    /// Records per request (1 to 1000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    page: u32,
}

/// `--since 12h` or an RFC 3339 time, as the RFC 3339 time the keyserver takes.
fn time_arg(name: &str, v: &str, now: OffsetDateTime) -> Result<String> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t.format(&Rfc3339)?);
    }
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: i64 = n.parse().ok().filter(|n| *n > 0).with_context(|| {
        format!(
            "--{name} is an RFC 3339 time (2026-12-01T09:00:00Z) or an age such as 90m, 12h or 7d"
        )
    })?;
    let age = match unit {
        "s" => time::Duration::seconds(n),
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        "w" => time::Duration::weeks(n),
        _ => bail!("--{name}: the unit of an age is s, m, h, d or w (as in 12h)"),
    };
    let t = now
        .checked_sub(age)
        .with_context(|| format!("--{name} is too far back"))?;
    Ok(t.format(&Rfc3339)?)
}

/// The query string of a request; values are percent-encoded.
fn query(pairs: &[(&str, String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    q.finish()
}

impl Filters {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !self.action.is_empty() {
            p.push(("action", self.action.join(",")));
        }
        if let Some(a) = &self.actor {
            p.push(("actor", a.clone()));
        }
        if let Some(k) = &self.key {
            p.push(("key", k.clone()));
        }
        if let Some(o) = self.outcome {
            p.push(("outcome", o.as_str().to_owned()));
        }
        p
    }
}

pub async fn list(mut c: Client, a: ListArgs) -> Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let mut p = a.filters.pairs();
    if let Some(s) = &a.since {
        p.push(("since", time_arg("since", s, now)?));
    }
    if let Some(u) = &a.until {
        p.push(("until", time_arg("until", u, now)?));
    }
    if let Some(b) = a.before {
        p.push(("before", b.to_string()));
    }
    p.push(("limit", a.limit.to_string()));
    let r: Reply<AuditPage> = c
        .fetch(Method::GET, &format!("/v1/audit?{}", query(&p)))
        .await?;
    output::emit(&r.raw, || print_list(&r.body));
    Ok(chain_exit(r.body.chain.as_ref()))
}

/// A broken chain is a failure of the command, whatever it printed.
fn chain_exit(chain: Option<&Chain>) -> ExitCode {
    match chain {
        Some(c) if c.status != "intact" => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

fn chain_line(c: &Chain) -> String {
    match (c.status.as_str(), c.records, c.seq) {
        ("intact", Some(n), _) => format!("chain intact ({n} records verified)"),
        (_, _, Some(seq)) => format!(
            "CHAIN BROKEN at record {seq}: {}",
            terminal_safe(c.reason.as_deref().unwrap_or(""))
        ),
        (s, _, _) => format!("chain {}", terminal_safe(s)),
    }
}

fn print_list(page: &AuditPage) {
    if let Some(c) = &page.chain {
        eprintln!("{}", chain_line(c));
    }
    if page.records.is_empty() {
        eprintln!("no records match");
        return;
    }
    println!(
        "{:>7}  {:<20}  {:<8} {:<28} {:<40} TARGET",
        "SEQ", "AT", "OUTCOME", "ACTION", "ACTOR"
    );
    for r in &page.records {
        println!(
            "{:>7}  {:<20}  {:<8} {:<28} {:<40} {}",
            r.seq,
            short_time(&r.at),
            terminal_safe(&r.outcome),
            terminal_safe(&r.action),
            fit(&short_who(&r.actor), 40),
            terminal_safe(r.target.as_deref().unwrap_or("")),
        );
    }
    if let Some(last) = page.records.last().filter(|_| page.records.len() > 1) {
        eprintln!(
            "newest first; older: --before {} (influxion audit show SEQ for one record)",
            last.seq
        );
    }
}

/// The label with the end of the identity, so that two people who call themselves
/// the same are told apart in a table (the whole identity: `audit show`, JSON).
fn short_who(a: &influxion_api::Actor) -> String {
    let label = terminal_safe(&a.label());
    if !a.has_label() {
        return label;
    }
    let id = terminal_safe(&a.id);
    let tail: String = id
        .chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{label} …{tail}")
}

/// `2026-12-01T09:00:00.123456Z` to the second.
fn short_time(at: &str) -> String {
    let base = at.split('.').next().unwrap_or(at);
    let mut s = terminal_safe(base);
    if !s.ends_with('Z') && at.ends_with('Z') {
        s.push('Z');
    }
    s
}

pub async fn show(mut c: Client, seq: i64) -> Result<ExitCode> {
    let r: Reply<AuditRecordView> = c.fetch(Method::GET, &format!("/v1/audit/{seq}")).await?;
    output::emit(&r.raw, || print_record(&r.body));
    let k = &r.body.checks;
    let ok = k.hash_matches && k.mac != "invalid" && k.links_to_previous && k.next_links_here;
    Ok(if ok {
        chain_exit(Some(&r.body.chain))
    } else {
        ExitCode::FAILURE
    })
}

fn print_record(v: &AuditRecordView) {
    let r = &v.record;
    let k = &v.checks;
    println!("record     {} of {}", r.seq, k.last_seq);
    println!("at         {}", terminal_safe(&r.at));
    println!("actor      {}", who(&r.actor));
    if let Some(s) = &r.actor.subject {
        println!("subjects   {}", terminal_safe(s));
    }
    println!("action     {}", terminal_safe(&r.action));
    if let Some(t) = &r.target {
        println!("target     {}", terminal_safe(t));
    }
    println!("outcome    {}", terminal_safe(&r.outcome));
    match r.detail.as_object() {
        Some(m) if !m.is_empty() => {
            println!("detail");
            for (key, value) in m {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("  {:<16} {}", terminal_safe(key), terminal_safe(&text));
            }
        }
        _ => {}
    }
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!("hash       {}", terminal_safe(&r.hash));
    println!(
        "           matches the record's fields: {}",
        yes(k.hash_matches)
    );
    println!("prev_hash  {}", terminal_safe(&r.prev_hash));
    let previous = if r.seq == 1 {
        "the genesis hash".to_owned()
    } else {
        format!("record {}'s hash", r.seq - 1)
    };
    println!("           equals {previous}: {}", yes(k.links_to_previous));
    match k.next_seq {
        Some(n) => println!(
            "next       record {n} links to this one: {}",
            yes(k.next_links_here)
        ),
        None => println!("next       none: this is the newest record"),
    }
    let mac = match k.mac.as_str() {
        "valid" => "valid (HMAC-SHA256 under the audit key)",
        "none" => "none (written before the log was keyed; covered by the links)",
        _ => "INVALID",
    };
    println!("mac        {mac}");
    println!("{}", chain_line(&v.chain));
}

/// Where exported lines go.
enum Sink {
    Stdout(std::io::Stdout),
    File(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(line.as_bytes())?;
                l.write_all(b"\n")
            }
            Sink::File(f) => {
                f.write_all(line.as_bytes())?;
                f.write_all(b"\n")
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// The last record's sequence number in an export file. A last line without its
/// newline (an export killed mid-write) is cut off first, so the resumed export
/// rewrites that record whole instead of appending to half of it.
fn last_exported(path: &PathBuf) -> Result<Option<i64>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let len = f.metadata()?.len();
    if len > 0 {
        use std::io::{Read, Seek, SeekFrom};
        let mut r = &f;
        let mut content = Vec::new();
        r.seek(SeekFrom::Start(0))?;
        r.read_to_end(&mut content)?;
        if content.last() != Some(&b'\n') {
            let keep = content
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            f.set_len(u64::try_from(keep).unwrap_or(0))
                .with_context(|| {
                    format!("cutting the unfinished last line of {}", path.display())
                })?;
            eprintln!("{}: an unfinished last line was removed", path.display());
        }
    }
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut last = None;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} holds a line that is not JSON; resume with --since SEQ instead",
                path.display()
            )
        })?;
        last = v.get("seq").and_then(serde_json::Value::as_i64).or(last);
    }
    Ok(last)
}

/// How long a follower waits for new records per request (the keyserver's most).
const FOLLOW_WAIT_SECS: u64 = 25;

pub async fn export(mut c: Client, a: ExportArgs) -> Result<ExitCode> {
    let ExportFormat::Jsonl = a.format;
    let resume = match (&a.out, a.since) {
        (_, Some(s)) => s,
        (Some(p), None) => last_exported(p)?.unwrap_or(0),
        (None, None) => 0,
    };
    let mut sink = match &a.out {
        Some(p) => Sink::File(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Sink::Stdout(std::io::stdout()),
    };
    if resume > 0 {
        eprintln!("exporting records after {resume}");
    }
    let filters = a.filters.pairs();
    let mut after = resume;
    let mut exported: u64 = 0;
    let mut failures: u32 = 0;
    loop {
        let mut p = filters.clone();
        p.push(("after", after.to_string()));
        p.push(("limit", a.page.to_string()));
        if a.follow {
            p.push(("wait", FOLLOW_WAIT_SECS.to_string()));
        }
        let path = format!("/v1/audit?{}", query(&p));
        let asked = std::time::Instant::now();
        let page: Reply<AuditPage> = match c.fetch(Method::GET, &path).await {
            Ok(r) => {
                failures = 0;
                r
            }
            Err(e) if a.follow && retryable(&e) && failures < 100 => {
                failures += 1;
                if unauthorized(&e) {
                    // A long follow outlives its token: get a new one.
                    let t = c.token_now().await?;
                    c.reset_token(&t).await;
                }
                let backoff = Duration::from_secs(u64::from(failures.min(30)));
                eprintln!("{e:#}; retrying in {}s", backoff.as_secs());
                tokio::time::sleep(backoff).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let raw = page.raw.get("records").and_then(|r| r.as_array());
        let records = raw.map(Vec::as_slice).unwrap_or_default();
        let typed: &[AuditEntry] = &page.body.records;
        for (value, entry) in records.iter().zip(typed) {
            // The record as the keyserver sent it, so fields newer than this CLI ship too.
            match sink.write_line(&value.to_string()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS)
                }
                Err(e) => return Err(e).context("writing the export"),
            }
            after = entry.seq;
            exported += 1;
        }
        match sink.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e).context("writing the export"),
        }
        if typed.is_empty() && !a.follow {
            break;
        }
        // An empty page long before the wait was up: the keyserver had no room for
        // another waiting request. Pause instead of asking again at once.
        if typed.is_empty() && asked.elapsed() < Duration::from_secs(FOLLOW_WAIT_SECS / 5) {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // stdout is the export itself: the summary goes to stderr whatever --output says.
    eprintln!("exported {exported} records; the last is {after} (resume with --since {after})");
    Ok(ExitCode::SUCCESS)
}

fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.chain()
        .find_map(|c| c.downcast_ref::<ApiStatus>())
        .map(|s| s.status)
}

fn unauthorized(e: &anyhow::Error) -> bool {
    status_of(e) == Some(StatusCode::UNAUTHORIZED)
}

/// Worth another try while following: the network, the keyserver restarting or busy,
/// an expired token. A refusal (403) or a bad request is not.
fn retryable(e: &anyhow::Error) -> bool {
    match status_of(e) {
        Some(s) => {
            s == StatusCode::UNAUTHORIZED
                || s == StatusCode::TOO_MANY_REQUESTS
                || s.is_server_error()
        }
        None => e
            .chain()
            .any(|c| c.downcast_ref::<reqwest::Error>().is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ages() {
        let now = OffsetDateTime::parse("2026-12-02T12:00:00Z", &Rfc3339).unwrap();
        assert_eq!(
            time_arg("since", "12h", now).unwrap(),
            "2026-12-02T00:00:00Z"
        );
        assert_eq!(
            time_arg("since", "7d", now).unwrap(),
            "2026-11-25T12:00:00Z"
        );
        assert_eq!(
            time_arg("since", "2026-12-01T10:00:00+01:00", now).unwrap(),
            "2026-12-01T10:00:00+01:00"
        );
        assert!(time_arg("since", "yesterday", now).is_err());
        assert!(time_arg("since", "5y", now).is_err());
        assert!(time_arg("since", "0h", now).is_err());
    }

    #[test]
    fn an_export_file_resumes_after_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        assert_eq!(last_exported(&p).unwrap(), None);
        std::fs::write(&p, "{\"seq\":1}\n{\"seq\":2}\n\n").unwrap();
        assert_eq!(last_exported(&p).unwrap(), Some(2));
        std::fs::write(&p, "{\"seq\":1}\nnot json\n").unwrap();
        assert!(last_exported(&p).is_err());
        // Killed mid-line: the half record goes, the resume starts after record 1.
        std::fs::write(&p, "{\"seq\":1}\n{\"seq\":2,\"at").unwrap();
        assert_eq!(last_exported(&p).unwrap(), Some(1));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"seq\":1}\n");
    }

    #[test]
    fn times_are_shown_to_the_second() {
        assert_eq!(
            short_time("2026-12-01T09:00:00.123Z"),
            "2026-12-01T09:00:00Z"
        );
        assert_eq!(short_time("2026-12-01T09:00:00Z"), "2026-12-01T09:00:00Z");
    }
}

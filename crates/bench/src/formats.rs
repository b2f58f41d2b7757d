//! `--mode formats`: the CLI's client side on a large file. `sha256sum` on the file is
//! the machine's hashing rate; Influxion's streaming hash (`influxion_formats`) is
//! measured in this process on the same file; then `influxion sign --format F` runs
//! once per format against `influxion dev` (the demo key, which has a code-signing
//! certificate), timed, with its peak RSS taken by a child of this binary that waits
//! for it alone (`--rss-of`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::RngCore;

/// Run `cmd` and wait for it; print its peak RSS in KiB (its rusage, not a sample),
/// and exit with its exit status. Used as `influxion-bench --rss-of -- CMD ARGS…`.
pub(crate) fn rss_of(cmd: &[String]) -> Result<std::process::ExitCode> {
    let cmd = match cmd.split_first() {
        Some((dashes, rest)) if dashes == "--" => rest,
        _ => cmd,
    };
    let (prog, args) = cmd.split_first().context("--rss-of needs a command")?;
    let status = Command::new(prog).args(args).status()?;
    // This process has exactly one child, so the children's peak is that command's.
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    println!("{}", usage.max_rss());
    Ok(std::process::ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// A file of `mib` MiB (a random MiB repeated: hashing cost does not depend on the
/// data), written in chunks.
fn big_file(path: &Path, mib: usize) -> Result<()> {
    use std::io::Write;
    let mut chunk = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut chunk);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.flush()?;
    Ok(())
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

pub(crate) fn run(influxion: &Path, dir: &Path, env_file: &str, mib: usize) -> Result<()> {
    let file = dir.join("big.bin");
    eprintln!("writing a {mib} MiB file");
    big_file(&file, mib)?;
    let bytes = std::fs::metadata(&file)?.len();
    // Read once so both hashers start from the page cache.
    std::io::copy(&mut std::fs::File::open(&file)?, &mut std::io::sink())?;

    let t = Instant::now();
    let out = Command::new("sha256sum").arg(&file).output()?;
    if !out.status.success() {
        bail!("sha256sum failed");
    }
    let sha256sum = mib_per_s(bytes, t.elapsed().as_secs_f64());

    let t = Instant::now();
    let ours = influxion_formats::hash_stream(
        std::fs::File::open(&file)?,
        influxion_core::key::HashAlg::Sha256,
        &file,
        &|_| {},
    )?;
    let in_process = mib_per_s(bytes, t.elapsed().as_secs_f64());
    let theirs = String::from_utf8_lossy(&out.stdout);
    if !theirs.starts_with(&hex::encode(&ours)) {
        bail!("influxion_formats and sha256sum disagree on the file's SHA-256");
    }

    // Two more references: OpenSSL's SHA-256 (SHA-NI where the CPU has it), and
    // writing the file's size to this disk with fsync, which formats that write a new
    // image (MCUboot, Authenticode) cannot beat.
    let t = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(&file)
        .output()?;
    if !out.status.success() {
        bail!("openssl dgst failed");
    }
    let openssl = mib_per_s(bytes, t.elapsed().as_secs_f64());
    let copy = dir.join("copy.bin");
    let t = Instant::now();
    std::io::copy(
        &mut std::fs::File::open(&file)?,
        &mut std::fs::File::create(&copy)?,
    )?;
    std::fs::File::open(&copy)?.sync_all()?;
    let write = mib_per_s(bytes, t.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&copy);

    println!("file: {mib} MiB; sha256sum: {sha256sum:.0} MiB/s; openssl dgst -sha256: {openssl:.0} MiB/s; copy with fsync: {write:.0} MiB/s");
    println!("influxion_formats::hash_stream: {in_process:.0} MiB/s ({:.2} of sha256sum, {:.2} of openssl)", in_process / sha256sum, in_process / openssl);
    println!("| format | wall time | MiB/s | of sha256sum | of openssl | CLI peak RSS |");
    println!("|---|---|---|---|---|---|");
    // Authenticode takes a PE file: a program built by mingw-w64 with the big file
    // appended, which Authenticode hashes as trailing data.
    let pe = dir.join("big.exe");
    big_pe(dir, &file, &pe)?;
    let mcuboot: &[&str] = &[
        "--header-size",
        "0x200",
        "--pad-header",
        "--version",
        "1.0.0",
    ];
    let formats: [(&str, &Path, &[&str]); 4] = [
        ("raw", &file, &[]),
        ("cms", &file, &[]),
        ("mcuboot", &file, mcuboot),
        ("authenticode", &pe, &[]),
    ];
    let me = std::env::current_exe()?;
    for (format, input, extra) in formats {
        let out_file = dir.join(format!("big.{format}"));
        let mut cmd = Command::new(&me);
        cmd.arg("--rss-of")
            .arg("--")
            .arg(influxion)
            .args(["sign", "--key", "demo", "--format", format])
            .arg(input)
            .arg("-o")
            .arg(&out_file)
            .args(extra)
            .env("CI", "true");
        for line in env_file.lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                cmd.env(k, v);
            }
        }
        let t = Instant::now();
        let out = cmd.stderr(Stdio::piped()).output()?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "sign --format {format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rss_kib: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let rate = mib_per_s(bytes, secs);
        println!(
            "| {format} | {secs:.2} s | {rate:.0} | {:.2} | {:.2} | {:.1} MiB |",
            rate / sha256sum,
            rate / openssl,
            rss_kib / 1024.0
        );
        let _ = std::fs::remove_file(&out_file);
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&pe);
    Ok(())
}

/// A Windows program (mingw-w64) followed by `data`: a PE file as large as the data.
fn big_pe(dir: &Path, data: &Path, out: &Path) -> Result<()> {
    let c = dir.join("hello.c");
    std::fs::write(&c, "int main(void) { return 0; }\n")?;
    let built = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-O2", "-o"])
        .arg(out)
        .arg(&c)
        .output()
        .context("x86_64-w64-mingw32-gcc (Debian gcc-mingw-w64-x86-64)")?;
    if !built.status.success() {
        bail!("mingw: {}", String::from_utf8_lossy(&built.stderr));
    }
    let mut pe = std::fs::OpenOptions::new().append(true).open(out)?;
    std::io::copy(&mut std::fs::File::open(data)?, &mut pe)?;
    Ok(())
}

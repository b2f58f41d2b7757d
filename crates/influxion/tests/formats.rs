//! Signature formats through the real binary, checked by verifiers nobody here wrote:
//! CMS detached SignedData against `openssl cms -verify`, with keys certified by the
//! keyserver's own CA (`keys certify`) or given an operator's chain (`keys certificate
//! --chain`). Bad input is refused before any request, with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::path::Path;

use common::*;

/// A copy of `file` with one byte changed.
fn tampered(d: &Path, file: &str, to: &str) {
    let mut bytes = std::fs::read(d.join(file)).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(d.join(to), bytes).unwrap();
}

/// A code-signing profile of the keyserver's own CA (`cs-root`, its chain in
/// `root.pem`) and `keys`, each certified by it.
fn code_signing_keys(ks: &Keyserver, d: &Path, keys: &[(&str, &str)]) {
    ok(&ks.admin(&["ca", "create", "cs-root", "--cn", "Code Signing Root"], d));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "code-signing",
            "--ca",
            "cs-root",
            "--cn",
            "{device_id}",
            "--key-types",
            "ec-p256,ec-p384,rsa-3072",
            "--eku",
            "code_signing",
        ],
        d,
    ));
    ok(&ks.admin(&["ca", "chain", "cs-root", "-o", "root.pem"], d));
    for (key, key_type) in keys {
        ok(&ks.admin(&["keys", "create", key, "--type", key_type], d));
        let certified = ok(&ks.admin(&["keys", "certify", key, "--profile", "code-signing"], d));
        assert!(
            certified.contains("code-signing certificate"),
            "{certified}"
        );
    }
}

/// The `sign` audit records of `key`, newest first, as `audit list --output json`.
fn sign_audit(ks: &Keyserver, d: &Path, key: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", key,
        ],
        d,
    )))
    .unwrap()
}

fn sign_records(ks: &Keyserver, d: &Path, key: &str) -> usize {
    sign_audit(ks, d, key)["records"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn cms_signatures_verify_with_openssl() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "fw.bin", 300_000);

    code_signing_keys(
        &ks,
        d,
        &[
            ("fw-p256", "ec-p256"),
            ("fw-p384", "ec-p384"),
            ("fw-rsa", "rsa-3072"),
        ],
    );
    let cases = [
        ("fw-p256", None),
        ("fw-p384", None),
        ("fw-rsa", Some("PS256")),
        ("fw-rsa", Some("RS256")),
    ];
    for (key, alg) in cases {
        let out = format!("{key}-{}.p7s", alg.unwrap_or("default"));
        let mut args = vec![
            "sign", "--key", key, "--format", "cms", "fw.bin", "-o", &out,
        ];
        if let Some(a) = alg {
            args.extend(["--algorithm", a]);
        }
        ok(&ks.signer(&args, d));
        let (verified, err) = openssl_cms_verifies(d, &out, "fw.bin", "root.pem");
        assert!(verified, "{key} {alg:?}: {err}");
        let checked = ok(&ks.signer(
            &[
                "verify",
                "--format",
                "cms",
                "--key",
                key,
                "fw.bin",
                "--signature",
                &out,
            ],
            d,
        ));
        assert!(checked.starts_with("signature OK (cms format"), "{checked}");
        assert!(checked.contains("message digest is the sha"), "{checked}");
    }
    // The audit record names the format.
    let audit = sign_audit(&ks, d, "fw-p256");
    assert_eq!(audit["records"][0]["detail"]["format"], "cms", "{audit}");

    // One byte of the firmware changed: openssl and influxion verify both refuse.
    tampered(d, "fw.bin", "fw-changed.bin");
    let (verified, _) =
        openssl_cms_verifies(d, "fw-p256-default.p7s", "fw-changed.bin", "root.pem");
    assert!(!verified, "openssl accepted a changed firmware");
    let refused = ks.signer(
        &[
            "verify",
            "--format",
            "cms",
            "--key",
            "fw-p256",
            "fw-changed.bin",
            "--signature",
            "fw-p256-default.p7s",
        ],
        d,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature INVALID (cms)"),
        "{refused:?}"
    );

    // Refused before any request, nothing written: a key without a certificate, and an
    // Ed25519 key (CMS signs Ed25519 over the attributes, the keyserver signs digests).
    ok(&ks.admin(&["keys", "create", "no-cert"], d));
    ok(&ks.admin(&["keys", "create", "ed", "--type", "ed25519"], d));
    for (key, says) in [("no-cert", "has none"), ("ed", "Ed25519")] {
        let out = ks.signer(
            &[
                "sign", "--key", key, "--format", "cms", "fw.bin", "-o", "x.p7s",
            ],
            d,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: {err}");
        assert!(err.contains(says), "{key}: {err}");
        assert!(!d.join("x.p7s").exists() && !d.join("x.p7s.partial").exists());
        assert_eq!(
            sign_records(&ks, d, key),
            0,
            "{key}: a request reached the server"
        );
    }

    // An operator's own chain: a CA made with openssl certifies the key's public key.
    ok(&ks.admin(&["keys", "create", "ext-fw"], d));
    ok(&ks.signer(&["keys", "public", "ext-fw", "-o", "ext.pub"], d));
    std::fs::write(
        d.join("ext.cnf"),
        "[leaf]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n",
    )
    .unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "op-ca.key",
            "-subj",
            "/CN=Operator Root",
            "-days",
            "30",
            "-out",
            "op-ca.pem",
        ],
        vec![
            "x509",
            "-new",
            "-subj",
            "/CN=ext-fw",
            "-force_pubkey",
            "ext.pub",
            "-CA",
            "op-ca.pem",
            "-CAkey",
            "op-ca.key",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "leaf",
            "-out",
            "ext-leaf.pem",
        ],
    ] {
        let out = openssl(&args, d);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let chain = [
        std::fs::read_to_string(d.join("ext-leaf.pem")).unwrap(),
        std::fs::read_to_string(d.join("op-ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("ext-chain.pem"), &chain).unwrap();
    // The wrong chains first: the CA alone (another key, a CA certificate), and the
    // chain in the wrong order.
    let wrong_order = [
        std::fs::read_to_string(d.join("op-ca.pem")).unwrap(),
        std::fs::read_to_string(d.join("ext-leaf.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("wrong-order.pem"), wrong_order).unwrap();
    for bad in ["op-ca.pem", "wrong-order.pem"] {
        let out = ks.admin(&["keys", "certificate", "ext-fw", "--chain", bad], d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(
            err.contains("bad-key-certificate") && err.contains("422"),
            "{bad}: {err}"
        );
    }
    ok(&ks.admin(
        &["keys", "certificate", "ext-fw", "--chain", "ext-chain.pem"],
        d,
    ));
    let served = ok(&ks.signer(&["keys", "certificate", "ext-fw"], d));
    assert_eq!(served.replace("\r\n", "\n").trim(), chain.trim());
    ok(&ks.signer(
        &[
            "sign", "--key", "ext-fw", "--format", "cms", "fw.bin", "-o", "ext.p7s",
        ],
        d,
    ));
    let (verified, err) = openssl_cms_verifies(d, "ext.p7s", "fw.bin", "op-ca.pem");
    assert!(verified, "{err}");
    let records: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output",
            "json",
            "audit",
            "list",
            "--action",
            "key.certificate",
        ],
        d,
    )))
    .unwrap();
    let latest = &records["records"][0];
    assert_eq!(latest["target"], "ext-fw", "{records}");
    assert_eq!(latest["detail"]["subject"], "CN=ext-fw", "{records}");
    assert_eq!(latest["detail"]["source"], "given", "{records}");
}

/// The signature TLV (RSA2048_PSS 0x20, ECDSA_SIG 0x22, RSA3072_PSS 0x23, ED25519 0x24) of a signed
/// MCUboot image, read by its header's sizes.
fn signature_tlv(image: &[u8]) -> Vec<u8> {
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([image[o], image[o + 1]]));
    let u32_at = |o: usize| {
        usize::try_from(u32::from_le_bytes(image[o..o + 4].try_into().unwrap())).unwrap()
    };
    let (hdr, prot, img) = (u16_at(8), u16_at(10), u32_at(12));
    let mut at = hdr + img + prot;
    assert_eq!(u16_at(at), 0x6907, "no TLV area where the header says");
    let end = at + u16_at(at + 2);
    at += 4;
    while at < end {
        let (kind, len) = (image[at], u16_at(at + 2));
        if matches!(kind, 0x20 | 0x22..=0x24) {
            return image[at + 4..at + 4 + len].to_vec();
        }
        at += 4 + len;
    }
    panic!("no signature TLV");
}

#[test]
fn mcuboot_images_verify_with_imgtool() {
    use base64::Engine as _;
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "app.bin", 40_000);
    // Zephyr's zephyr.bin with CONFIG_ROM_START_OFFSET: the header region is zeros.
    let mut zeroed = vec![0u8; 0x200];
    zeroed.extend(std::fs::read(d.join("app.bin")).unwrap());
    std::fs::write(d.join("zephyr.bin"), &zeroed).unwrap();
    let options: [(&str, Vec<&str>); 2] = [
        (
            "app.bin",
            vec![
                "--header-size",
                "0x200",
                "--pad-header",
                "--version",
                "1.2.3+4",
                "--security-counter",
                "auto",
                "--slot-size",
                "0x20000",
                "--align",
                "8",
            ],
        ),
        (
            "zephyr.bin",
            vec![
                "--header-size",
                "0x200",
                "--version",
                "2.0.0",
                "--slot-size",
                "0x20000",
            ],
        ),
    ];
    for (key, key_type) in [
        ("mcu-p256", "ec-p256"),
        ("mcu-p384", "ec-p384"),
        ("mcu-ed", "ed25519"),
        ("mcu-rsa2048", "rsa-2048"),
        ("mcu-rsa", "rsa-3072"),
    ] {
        ok(&ks.admin(&["keys", "create", key, "--type", key_type], d));
        let public = format!("{key}.pub.pem");
        ok(&ks.signer(&["keys", "public", key, "-o", &public], d));
        for (input, opts) in &options {
            let out = format!("{key}-{input}.signed");
            let mut args = vec![
                "sign", "--key", key, "--format", "mcuboot", input, "-o", &out,
            ];
            args.extend(opts.iter().copied());
            ok(&ks.signer(&args, d));
            let (verified, said) = imgtool_verifies(d, &public, &out);
            assert!(verified, "imgtool verify {key} {input}: {said}");
            // imgtool with the same options and our signature writes the same bytes:
            // header, protected TLVs, image hash and key hash are imgtool's.
            let ours = std::fs::read(d.join(&out)).unwrap();
            let sig = base64::engine::general_purpose::STANDARD.encode(signature_tlv(&ours));
            std::fs::write(d.join("sig.b64"), sig).unwrap();
            let fixed = format!("{out}.imgtool");
            let mut it = vec!["sign", "--fix-sig", "sig.b64", "--fix-sig-pubkey", &public];
            it.extend(
                opts.iter()
                    .copied()
                    .filter(|o| *o != "--security-counter" && *o != "auto"),
            );
            if opts.contains(&"--security-counter") {
                it.extend(["-s", "auto"]);
            }
            it.extend([*input, fixed.as_str()]);
            let (fixed_ok, said) = tool(d, imgtool(), &it);
            assert!(fixed_ok, "imgtool sign --fix-sig: {said}");
            assert!(
                std::fs::read(d.join(&fixed)).unwrap() == ours,
                "{key} {input}: imgtool's image differs from ours"
            );
            let checked = ok(&ks.signer(&["verify", "--format", "mcuboot", "--key", key, &out], d));
            assert!(checked.contains("image hash"), "{checked}");
        }
    }
    let audit = sign_audit(&ks, d, "mcu-ed");
    assert_eq!(
        audit["records"][0]["detail"]["format"], "mcuboot",
        "{audit}"
    );

    // A modified image fails imgtool and influxion verify.
    tampered(d, "mcu-p256-app.bin.signed", "changed.signed");
    let (verified, _) = imgtool_verifies(d, "mcu-p256.pub.pem", "changed.signed");
    assert!(!verified, "imgtool accepted a modified image");
    let refused = ks.signer(
        &[
            "verify",
            "--format",
            "mcuboot",
            "--key",
            "mcu-p256",
            "changed.signed",
        ],
        d,
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");

    // Refused before any request, nothing written.
    let mut resized = std::fs::read(d.join("mcu-p256-zephyr.bin.signed")).unwrap();
    resized[12] ^= 0x10; // img_size no longer matches the file
    std::fs::write(d.join("resized.signed"), resized).unwrap();
    ok(&ks.admin(&["keys", "create", "mcu-rsa4096", "--type", "rsa-4096"], d));
    let cases: [(&str, Vec<&str>, &str); 6] = [
        (
            "mcu-p256",
            vec!["app.bin", "--header-size", "0x200"],
            "--pad-header",
        ),
        (
            "mcu-p256",
            vec!["mcu-p256-zephyr.bin.signed", "--header-size", "0x200"],
            "already a signed MCUboot image",
        ),
        (
            "mcu-p256",
            vec![
                "resized.signed",
                "--header-size",
                "0x200",
                "--replace-signature",
            ],
            "does not fit the file",
        ),
        (
            "mcu-p256",
            vec![
                "zephyr.bin",
                "--header-size",
                "0x200",
                "--slot-size",
                "0x4000",
            ],
            "slot",
        ),
        ("mcu-p256", vec!["zephyr.bin"], "--header-size"),
        (
            "mcu-rsa4096",
            vec!["zephyr.bin", "--header-size", "0x200"],
            "rsa-4096",
        ),
    ];
    let before = sign_records(&ks, d, "mcu-p256");
    for (key, opts, says) in cases {
        let mut args = vec![
            "sign",
            "--key",
            key,
            "--format",
            "mcuboot",
            "-o",
            "refused.signed",
        ];
        args.extend(opts.iter().copied());
        let out = ks.signer(&args, d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts:?}: {err}");
        assert!(err.contains(says), "{opts:?}: wanted {says:?} in {err}");
        assert!(!d.join("refused.signed").exists(), "{opts:?} wrote a file");
    }
    assert_eq!(
        sign_records(&ks, d, "mcu-p256"),
        before,
        "a refused image reached the server"
    );
    assert_eq!(sign_records(&ks, d, "mcu-rsa4096"), 0);
}

/// A key that needs an approval: the format is prepared before the request, shown to
/// the approver, and the image is assembled once the quorum signs; the quorum's sign
/// record names the format.
#[test]
fn a_format_signs_through_an_approval() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    write_firmware(d, "app.bin", 30_000);
    ok(&ks.admin(&["keys", "create", "rel-mcu"], d));
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "approver-1",
            "--app-id",
            "approver-1",
            "--grant",
            "approver:rel-*",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "keys",
            "policy",
            "rel-mcu",
            "--approvals",
            "1",
            "--approver",
            "approver-1",
        ],
        d,
    ));
    let signer = ks.spawn_signer(
        &[
            "sign",
            "--key",
            "rel-mcu",
            "--format",
            "mcuboot",
            "--header-size",
            "0x200",
            "--pad-header",
            "--version",
            "3.1.0",
            "app.bin",
            "-o",
            "rel.signed",
            "--reason",
            "release 3.1",
        ],
        d,
    );
    let id = pending_id(&ks, d);
    let approver = |args: &[&str]| ks.cli("approver-1", "approver-1-secret-123456", args, d);
    let shown = ok(&approver(&["approvals", "show", &id]));
    assert!(
        shown.contains("mcuboot"),
        "the approver does not see the format: {shown}"
    );
    ok(&approver(&["approvals", "approve", &id]));
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&ks.signer(&["keys", "public", "rel-mcu", "-o", "rel.pem"], d));
    let (verified, said) = imgtool_verifies(d, "rel.pem", "rel.signed");
    assert!(verified, "{said}");
    let audit = sign_audit(&ks, d, "rel-mcu");
    let quorum = &audit["records"][0];
    assert_eq!(quorum["actor"]["id"], "system:quorum", "{audit}");
    assert_eq!(quorum["detail"]["format"], "mcuboot", "{audit}");
}

#[test]
fn authenticode_signatures_verify_with_osslsigncode_and_sbverify() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    mingw(d, "hello.exe", "int main(void) { return 0; }\n", &[]);
    mingw(
        d,
        "hello.efi",
        "unsigned long long efi_main(void *image, void *system_table) { return 0; }\n",
        &["-nostdlib", "-Wl,--subsystem,10", "-e", "efi_main"],
    );
    code_signing_keys(&ks, d, &[("win-p256", "ec-p256"), ("win-rsa", "rsa-3072")]);
    for (key, alg) in [("win-p256", "ES256"), ("win-rsa", "RS256")] {
        let exe = format!("{key}.exe");
        ok(&ks.signer(
            &[
                "sign",
                "--key",
                key,
                "--format",
                "authenticode",
                "--algorithm",
                alg,
                "hello.exe",
                "-o",
                &exe,
            ],
            d,
        ));
        let (verified, said) = tool(
            d,
            "osslsigncode",
            &["verify", "-CAfile", "root.pem", "-in", &exe],
        );
        assert!(verified, "osslsigncode {key}: {said}");
        let checked = ok(&ks.signer(
            &["verify", "--format", "authenticode", "--key", key, &exe],
            d,
        ));
        assert!(
            checked.starts_with("signature OK (authenticode format"),
            "{checked}"
        );

        // A UEFI application, checked as shim and the firmware do, by sbverify.
        let efi = format!("{key}.efi");
        ok(&ks.signer(
            &[
                "sign",
                "--key",
                key,
                "--format",
                "authenticode",
                "--algorithm",
                alg,
                "hello.efi",
                "-o",
                &efi,
            ],
            d,
        ));
        ok(&ks.signer(&["keys", "certificate", key, "-o", "chain.pem"], d));
        let chain = std::fs::read_to_string(d.join("chain.pem")).unwrap();
        let end = chain.find("-----END CERTIFICATE-----").unwrap() + 25;
        std::fs::write(d.join("leaf.pem"), &chain[..end]).unwrap();
        let (verified, said) = tool(d, "sbverify", &["--cert", "leaf.pem", &efi]);
        assert!(verified, "sbverify {key}: {said}");
    }
    let audit = sign_audit(&ks, d, "win-rsa");
    assert_eq!(
        audit["records"][0]["detail"]["format"], "authenticode",
        "{audit}"
    );

    // One byte of the program changed: both verifiers refuse.
    tampered(d, "win-p256.exe", "changed.exe");
    let (verified, _) = tool(
        d,
        "osslsigncode",
        &["verify", "-CAfile", "root.pem", "-in", "changed.exe"],
    );
    assert!(!verified, "osslsigncode accepted a changed program");
    let refused = ks.signer(
        &[
            "verify",
            "--format",
            "authenticode",
            "--key",
            "win-p256",
            "changed.exe",
        ],
        d,
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");

    // Refused before any request, nothing written: not a PE, a truncated PE, a key type
    // Authenticode cannot use, a key without a certificate.
    write_firmware(d, "fw.bin", 5_000);
    let exe = std::fs::read(d.join("hello.exe")).unwrap();
    std::fs::write(d.join("truncated.exe"), &exe[..300]).unwrap();
    ok(&ks.admin(&["keys", "create", "win-ed", "--type", "ed25519"], d));
    ok(&ks.admin(&["keys", "create", "win-nocert"], d));
    let before = sign_records(&ks, d, "win-p256");
    for (key, input, says) in [
        ("win-p256", "fw.bin", "not a PE"),
        ("win-p256", "truncated.exe", "truncated"),
        ("win-ed", "hello.exe", "Ed25519"),
        ("win-nocert", "hello.exe", "has none"),
    ] {
        let out = ks.signer(
            &[
                "sign",
                "--key",
                key,
                "--format",
                "authenticode",
                input,
                "-o",
                "refused.exe",
            ],
            d,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} {input}: {err}");
        assert!(
            err.contains(says),
            "{key} {input}: wanted {says:?} in {err}"
        );
        assert!(
            !d.join("refused.exe").exists(),
            "{key} {input} wrote a file"
        );
    }
    assert_eq!(
        sign_records(&ks, d, "win-p256"),
        before,
        "a refused file reached the server"
    );
    assert_eq!(
        sign_records(&ks, d, "win-ed") + sign_records(&ks, d, "win-nocert"),
        0
    );
}

/// RFC 3161 timestamps from a local TSA (`openssl ts -reply` behind a minimal HTTP
/// server): osslsigncode checks the Authenticode timestamp against the TSA's CA,
/// openssl still verifies the timestamped CMS, and influxion verify reports both. A TSA
/// that fails leaves nothing written, though the signature was made.
#[test]
fn timestamps_from_a_local_tsa_verify_with_osslsigncode_and_openssl() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let provider = start_provider(d);
    let ks = start_keyserver(d, &provider.issuer);
    mingw(d, "hello.exe", "int main(void) { return 0; }\n", &[]);
    write_firmware(d, "fw.bin", 20_000);
    code_signing_keys(&ks, d, &[("ts-p256", "ec-p256"), ("ts-rsa", "rsa-3072")]);
    tsa_pki(d);
    let tsa = LocalTsa::start(d, TsaMode::Grant);
    let url = tsa.url();

    for (key, alg) in [("ts-p256", "ES256"), ("ts-rsa", "RS256")] {
        let exe = format!("{key}-ts.exe");
        let said = ks.signer(
            &[
                "sign",
                "--key",
                key,
                "--format",
                "authenticode",
                "--algorithm",
                alg,
                "--timestamp-url",
                &url,
                "hello.exe",
                "-o",
                &exe,
            ],
            d,
        );
        ok(&said);
        assert!(
            String::from_utf8_lossy(&said.stderr).contains(&format!("timestamped by {url}")),
            "{said:?}"
        );
        let (verified, out) = tool(
            d,
            "osslsigncode",
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-TSA-CAfile",
                "tsa-ca.pem",
                "-in",
                &exe,
            ],
        );
        assert!(verified, "osslsigncode {key}: {out}");
        for needle in [
            "Timestamp Server Signature verification: ok",
            "Timestamp verified using:",
            "Subject: /CN=Influxion Test TSA\n",
            "Signature verification time:",
            "Signature verification: ok",
        ] {
            assert!(out.contains(needle), "{key}: wanted {needle:?} in {out}");
        }
        let checked = ok(&ks.signer(
            &["verify", "--format", "authenticode", "--key", key, &exe],
            d,
        ));
        assert!(
            checked.contains("checked: RFC 3161 timestamp by CN=Influxion Test TSA at ")
                && checked.contains("RSA PKCS#1 v1.5 sha256 signature over the TSTInfo verifies"),
            "{checked}"
        );
        // Another TSA root: osslsigncode 2.9 says the timestamp fails (and still accepts
        // the signature itself, checked at the current time).
        let (verified, out) = tool(
            d,
            "osslsigncode",
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-TSA-CAfile",
                "root.pem",
                "-in",
                &exe,
            ],
        );
        assert!(
            out.contains("Timestamp Server Signature verification: failed"),
            "osslsigncode accepted an untrusted TSA ({verified}): {out}"
        );
    }
    assert_eq!(
        tsa.content_types(),
        vec!["application/timestamp-query"; 2],
        "what the TSA was sent"
    );

    // CMS: openssl still verifies the signature; influxion verify checks the token.
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "ts-p256",
            "--format",
            "cms",
            "--timestamp-url",
            &url,
            "fw.bin",
            "-o",
            "fw-ts.p7s",
        ],
        d,
    ));
    let (verified, err) = openssl_cms_verifies(d, "fw-ts.p7s", "fw.bin", "root.pem");
    assert!(verified, "{err}");
    let printed = openssl(
        &[
            "cms",
            "-cmsout",
            "-print",
            "-inform",
            "DER",
            "-in",
            "fw-ts.p7s",
        ],
        d,
    );
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("id-smime-aa-timeStampToken"), "{printed}");
    let checked = ok(&ks.signer(
        &[
            "verify",
            "--format",
            "cms",
            "--key",
            "ts-p256",
            "fw.bin",
            "--signature",
            "fw-ts.p7s",
        ],
        d,
    ));
    assert!(
        checked.contains("checked: RFC 3161 timestamp by CN=Influxion Test TSA"),
        "{checked}"
    );

    // A TSA that fails: the signature is made and audited, nothing is written.
    for mode in [TsaMode::Error, TsaMode::Garbage] {
        let bad = LocalTsa::start(d, mode);
        let before = sign_records(&ks, d, "ts-p256");
        let out = ks.signer(
            &[
                "sign",
                "--key",
                "ts-p256",
                "--format",
                "authenticode",
                "--timestamp-url",
                &bad.url(),
                "hello.exe",
                "-o",
                "failed.exe",
            ],
            d,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode:?}: {err}");
        assert!(
            err.contains("signed (audit record ")
                && err.contains("but the timestamp failed")
                && err.contains("nothing written"),
            "{mode:?}: {err}"
        );
        let says = match mode {
            TsaMode::Error => "HTTP 500",
            _ => "not an RFC 3161 TimeStampResp",
        };
        assert!(err.contains(says), "{mode:?}: wanted {says:?} in {err}");
        assert!(!d.join("failed.exe").exists() && !d.join("failed.exe.partial").exists());
        assert_eq!(sign_records(&ks, d, "ts-p256"), before + 1);
    }

    // Refused before any request: a format without timestamps, a scheme not HTTP.
    let before = sign_records(&ks, d, "ts-p256");
    for (args, says) in [
        (
            vec!["--format", "raw", "--timestamp-url", url.as_str()],
            "--timestamp-url is for --format authenticode and cms",
        ),
        (
            vec!["--format", "cms", "--timestamp-url", "ftp://127.0.0.1/"],
            "http or https",
        ),
    ] {
        let mut all = vec!["sign", "--key", "ts-p256", "fw.bin", "-o", "refused.sig"];
        all.extend(args);
        let out = ks.signer(&all, d);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(says), "wanted {says:?} in {err}");
        assert!(!d.join("refused.sig").exists());
    }
    assert_eq!(sign_records(&ks, d, "ts-p256"), before);
}

/// A TSA root and a TSA certificate (RSA, extendedKeyUsage critical timeStamping)
/// made with openssl: `tsa-ca.pem`, `tsa.pem`, `tsa.key`, and `ts.cnf` for `openssl
/// ts -reply`.
fn tsa_pki(d: &Path) {
    std::fs::write(
        d.join("tsa.ext"),
        "[tsa]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=critical,timeStamping\nsubjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    std::fs::write(
        d.join("ts.cnf"),
        "[tsa]\ndefault_tsa = tsa_config1\n\n[tsa_config1]\nserial = ./tsaserial\n\
         crypto_device = builtin\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\n\
         digests = sha256, sha384, sha512\naccuracy = secs:1, millisecs:500, microsecs:100\n\
         clock_precision_digits = 0\nordering = no\ntsa_name = yes\n\
         ess_cert_id_chain = no\ness_cert_id_alg = sha256\n",
    )
    .unwrap();
    std::fs::write(d.join("tsaserial"), "01\n").unwrap();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tsa-ca.key",
            "-subj",
            "/CN=Influxion Test TSA Root",
            "-days",
            "30",
            "-out",
            "tsa-ca.pem",
        ],
        vec![
            "req",
            "-new",
            "-newkey",
            "rsa:3072",
            "-nodes",
            "-keyout",
            "tsa.key",
            "-subj",
            "/CN=Influxion Test TSA",
            "-out",
            "tsa.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "tsa.csr",
            "-CA",
            "tsa-ca.pem",
            "-CAkey",
            "tsa-ca.key",
            "-days",
            "30",
            "-extfile",
            "tsa.ext",
            "-extensions",
            "tsa",
            "-out",
            "tsa.pem",
        ],
    ] {
        let out = openssl(&args, d);
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsaMode {
    /// Answer with `openssl ts -reply`.
    Grant,
    /// HTTP 500.
    Error,
    /// 200 with a body that is no TimeStampResp.
    Garbage,
}

/// A TSA on 127.0.0.1: one HTTP POST per connection, answered by `openssl ts -reply`
/// in `d` (with `tsa_pki`'s files). Its thread ends with the test process.
struct LocalTsa {
    port: u16,
    content_types: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LocalTsa {
    fn start(d: &Path, mode: TsaMode) -> LocalTsa {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let content_types = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = content_types.clone();
        let d = d.to_path_buf();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(stream) = conn else { continue };
                if let Err(e) = answer(&d, mode, n, stream, &seen) {
                    eprintln!("local TSA: {e}");
                }
            }
        });
        LocalTsa {
            port,
            content_types,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn content_types(&self) -> Vec<String> {
        self.content_types.lock().unwrap().clone()
    }
}

fn answer(
    d: &Path,
    mode: TsaMode,
    n: usize,
    mut stream: std::net::TcpStream,
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let (mut len, mut content_type) = (0usize, String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    seen.lock().unwrap().push(content_type);
    let (status, reply) = match mode {
        TsaMode::Grant => {
            let (q, r) = (format!("q{n}.tsq"), format!("r{n}.tsr"));
            std::fs::write(d.join(&q), &body)?;
            let out = openssl(
                &[
                    "ts",
                    "-reply",
                    "-queryfile",
                    &q,
                    "-signer",
                    "tsa.pem",
                    "-inkey",
                    "tsa.key",
                    "-config",
                    "ts.cnf",
                    "-out",
                    &r,
                ],
                d,
            );
            if out.status.success() {
                ("200 OK", std::fs::read(d.join(&r))?)
            } else {
                eprintln!(
                    "openssl ts -reply: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ("500 Internal Server Error", Vec::new())
            }
        }
        TsaMode::Error => ("500 Internal Server Error", b"busy".to_vec()),
        TsaMode::Garbage => ("200 OK", b"<html>not a timestamp</html>".to_vec()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/timestamp-reply\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.len()
    )?;
    stream.write_all(&reply)?;
    stream.flush()
}

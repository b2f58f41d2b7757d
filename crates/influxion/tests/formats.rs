//! Signature formats through the real binary, checked by verifiers nobody here wrote:
//! CMS detached SignedData against `openssl cms -verify`, with keys certified by the
//! keyserver's own CA (`keys certify`) or given an operator's chain (`keys certificate
//! --chain`). Bad input is refused before any request, with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::path::Path;

use common::*;

/// `openssl cms -verify` of a detached signature over `content`, trusting `ca`.
fn openssl_cms_verifies(d: &Path, p7s: &str, content: &str, ca: &str) -> (bool, String) {
    let out = openssl(
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            p7s,
            "-content",
            content,
            "-CAfile",
            ca,
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        d,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of `file` with one byte changed.
fn tampered(d: &Path, file: &str, to: &str) {
    let mut bytes = std::fs::read(d.join(file)).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(d.join(to), bytes).unwrap();
}

fn sign_records(ks: &Keyserver, d: &Path, key: &str) -> usize {
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", key,
        ],
        d,
    )))
    .unwrap();
    audit["records"].as_array().map_or(0, Vec::len)
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

    // A code-signing profile of the keyserver's own CA certifies the keys.
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
    for (key, key_type) in [
        ("fw-p256", "ec-p256"),
        ("fw-p384", "ec-p384"),
        ("fw-rsa", "rsa-3072"),
    ] {
        ok(&ks.admin(&["keys", "create", key, "--type", key_type], d));
        let certified = ok(&ks.admin(&["keys", "certify", key, "--profile", "code-signing"], d));
        assert!(
            certified.contains("code-signing certificate"),
            "{certified}"
        );
    }
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
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", "fw-p256",
        ],
        d,
    )))
    .unwrap();
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

//! The real binary with keys in Azure Key Vault: the loopback HTTPS vault stand-in
//! (its own CA, passed as INFLUXION_VAULT_CA_FILE) reached with a managed-identity
//! token from the instance-metadata stand-in (INFLUXION_IMDS_ENDPOINT), people and
//! pipelines from the Node OIDC provider. Signatures are checked with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use common::*;
use influxion_azure_standin::{
    CertificateKey, Endpoint, IdentityStandIn, SecretFormat, VaultStandIn,
};

#[test]
fn keys_in_key_vault_sign_through_the_keyserver() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The stand-ins run on their own runtime for the whole test.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (idp, vault) = rt.block_on(async {
        let idp = IdentityStandIn::start().await.unwrap();
        let vault = VaultStandIn::start(d, "https://login.microsoftonline.com/t1")
            .await
            .unwrap();
        vault.accept_standin_tokens();
        (idp, vault)
    });
    let provider = start_provider(d);
    let imds = idp.url();
    let vault_url = vault.url();
    let ca = vault.ca_file.display().to_string();
    let ks = start_keyserver_env(
        d,
        &provider.issuer,
        AUDIENCE,
        &[
            ("INFLUXION_VAULT_URL", vault_url.as_str()),
            ("INFLUXION_IMDS_ENDPOINT", imds.as_str()),
            ("INFLUXION_VAULT_CA_FILE", ca.as_str()),
        ],
    );
    write_firmware(d, "fw.bin", 100_000);

    let created = ok(&ks.admin(
        &["keys", "create", "kv-fw", "--backend", "azure-keyvault"],
        d,
    ));
    assert!(
        created.starts_with("created key kv-fw (ec-p256, azure-keyvault backend) sha256:"),
        "{created}"
    );
    // Made in the vault as a non-exportable key.
    let made = vault
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/create"))
        .unwrap();
    assert_eq!(made.body.unwrap()["attributes"]["exportable"], false);
    assert!(made.bearer.unwrap().starts_with("standin-imds-token-"));

    let before = vault.requests().len();
    ok(&ks.signer(&["sign", "--key", "kv-fw", "fw.bin", "-o", "fw.sig"], d));
    ok(&ks.signer(&["sign", "--key", "kv-fw", "fw.bin", "-o", "fw2.sig"], d));
    let calls: Vec<_> = vault.requests()[before..].to_vec();
    assert_eq!(calls.len(), 2, "one vault call per signature: {calls:?}");
    assert!(calls.iter().all(|c| c.path.ends_with("/sign")));
    ok(&ks.signer(&["keys", "public", "kv-fw", "-o", "kv.pem"], d));
    assert_sha256_verifies(d, "kv.pem", "fw.sig", "fw.bin");
    assert_sha256_verifies(d, "kv.pem", "fw2.sig", "fw.bin");

    // The audit record names the backend, the vault, the key and its version.
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", "kv-fw",
        ],
        d,
    )))
    .unwrap();
    let detail = &audit["records"][0]["detail"];
    assert_eq!(detail["backend"], "azure-keyvault", "{audit}");
    assert_eq!(detail["vault"], vault_url);
    assert!(detail["vault_key"]
        .as_str()
        .unwrap()
        .starts_with("influxion-"));
    assert!(!detail["vault_key_version"].as_str().unwrap().is_empty());

    // The firmware formats with the vault's key: an MCUboot image imgtool accepts, and
    // CMS with a code-signing certificate from the keyserver's CA.
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "kv-fw",
            "--format",
            "mcuboot",
            "--header-size",
            "0x200",
            "--pad-header",
            "fw.bin",
            "-o",
            "fw.signed",
        ],
        d,
    ));
    let (verified, said) = imgtool_verifies(d, "kv.pem", "fw.signed");
    assert!(verified, "{said}");
    ok(&ks.admin(&["ca", "create", "cs-root", "--cn", "Code Signing Root"], d));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "code",
            "--ca",
            "cs-root",
            "--cn",
            "{device_id}",
            "--eku",
            "code_signing",
        ],
        d,
    ));
    ok(&ks.admin(&["keys", "certify", "kv-fw", "--profile", "code"], d));
    ok(&ks.admin(&["ca", "chain", "cs-root", "-o", "cs-root.pem"], d));
    ok(&ks.signer(
        &[
            "sign", "--key", "kv-fw", "--format", "cms", "fw.bin", "-o", "fw.p7s",
        ],
        d,
    ));
    let (verified, said) = openssl_cms_verifies(d, "fw.p7s", "fw.bin", "cs-root.pem");
    assert!(verified, "{said}");
    mingw(d, "hello.exe", "int main(void) { return 0; }\n", &[]);
    ok(&ks.signer(
        &[
            "sign",
            "--key",
            "kv-fw",
            "--format",
            "authenticode",
            "hello.exe",
            "-o",
            "kv.exe",
        ],
        d,
    ));
    let (verified, said) = tool(
        d,
        "osslsigncode",
        &["verify", "-CAfile", "cs-root.pem", "-in", "kv.exe"],
    );
    assert!(verified, "{said}");

    // With approvals: the approver's completing vote signs in the vault, and the
    // quorum's record names the vault key and version.
    ok(&ks.admin(
        &["keys", "create", "kv-rel", "--backend", "azure-keyvault"],
        d,
    ));
    ok(&ks.admin(
        &[
            "subjects",
            "create",
            "approver-1",
            "--app-id",
            "approver-1",
            "--grant",
            "approver:kv-*",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "keys",
            "policy",
            "kv-rel",
            "--approvals",
            "1",
            "--approver",
            "approver-1",
        ],
        d,
    ));
    let signer = ks.spawn_signer(
        &[
            "sign", "--key", "kv-rel", "fw.bin", "--reason", "release", "-o", "rel.sig",
        ],
        d,
    );
    let id = pending_id(&ks, d);
    ok(&ks.cli(
        "approver-1",
        "approver-1-secret-123456",
        &["approvals", "approve", &id, "--comment", "ok"],
        d,
    ));
    let out = signer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&ks.signer(&["keys", "public", "kv-rel", "-o", "rel.pem"], d));
    assert_sha256_verifies(d, "rel.pem", "rel.sig", "fw.bin");
    let audit: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", "sign", "--key", "kv-rel",
        ],
        d,
    )))
    .unwrap();
    let rec = &audit["records"][0];
    assert_eq!(rec["actor"]["id"], "system:quorum", "{audit}");
    assert_eq!(rec["detail"]["backend"], "azure-keyvault");
    assert!(rec["detail"]["vault_key_version"].is_string(), "{audit}");

    // No Ed25519 in Key Vault: refused with a problem pointing elsewhere.
    let ed = ks.admin(
        &[
            "keys",
            "create",
            "kv-ed",
            "--backend",
            "azure-keyvault",
            "--type",
            "ed25519",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&ed.stderr);
    assert!(
        !ed.status.success()
            && err.contains("unsupported-key-type")
            && err.contains("software keystore"),
        "{err}"
    );
    let unknown = ks.admin(&["keys", "create", "x", "--backend", "hsm-9"], d);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("invalid-request") && err.contains("hsm-9"),
        "{err}"
    );

    // A permission removed in the vault: 502 backend-refused, naming the role; keys of
    // the software keystore keep working.
    vault.forbid("sign");
    let refused = ks.signer(&["sign", "--key", "kv-fw", "fw.bin", "-o", "no.sig"], d);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("backend-refused")
            && err.contains("Key Vault Crypto User"),
        "{err}"
    );
    assert!(!d.join("no.sig").exists());
    ok(&ks.admin(&["keys", "create", "sw-fw"], d));
    ok(&ks.signer(&["sign", "--key", "sw-fw", "fw.bin", "-o", "sw.sig"], d));

    // A device CA whose key is in the vault: its certificate, its CRL and the device
    // certificates it issues are signed there, and openssl accepts the chain.
    let vault_signs = |v: &VaultStandIn| {
        v.requests()
            .iter()
            .filter(|r| r.path.ends_with("/sign"))
            .count()
    };
    let signs_before = vault_signs(&vault);
    // The permission granted again.
    vault.allow("sign");
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "vault-root",
            "--cn",
            "Vault Root CA",
            "--backend",
            "azure-keyvault",
        ],
        d,
    ));
    ok(&ks.admin(
        &[
            "profiles",
            "set",
            "vdev",
            "--ca",
            "vault-root",
            "--cn",
            "{device_id}",
            "--key-types",
            "ec-p256",
        ],
        d,
    ));
    let csr = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "dev.key",
            "-subj",
            "/CN=dev-1",
            "-out",
            "dev.csr",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(csr.status.success());
    ok(&ks.admin(
        &[
            "cert",
            "issue",
            "--profile",
            "vdev",
            "--csr",
            "dev.csr",
            "-o",
            "dev.pem",
        ],
        d,
    ));
    ok(&ks.admin(&["ca", "chain", "vault-root", "-o", "vroot.pem"], d));
    let v = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "vroot.pem", "dev.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("dev.pem: OK"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let issued: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output",
            "json",
            "audit",
            "list",
            "--action",
            "cert.issue",
        ],
        d,
    )))
    .unwrap();
    assert_eq!(
        issued["records"][0]["detail"]["backend"], "azure-keyvault",
        "{issued}"
    );
    assert!(issued["records"][0]["detail"]["vault_key_version"].is_string());
    // Root certificate, first CRL and the device certificate: three vault signatures.
    assert_eq!(vault_signs(&vault) - signs_before, 3);
    let ca: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &["--output", "json", "audit", "list", "--action", "ca.create"],
        d,
    )))
    .unwrap();
    assert_eq!(
        ca["records"][0]["detail"]["backend"], "azure-keyvault",
        "{ca}"
    );

    // Readiness names each backend; a vault that refuses to read keys makes it 503.
    let ready = |url: String| {
        rt.block_on(async move {
            let r = reqwest::get(format!("{url}/readyz")).await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    let (status, body) = ready(ks.url.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backends"]["azure-keyvault"], "ok");
    assert_eq!(body["jwks"], "ok", "{body}");
    assert_eq!(body["backends"]["software"], "ok");
    vault.forbid("get");
    let (status, body) = ready(ks.url.clone());
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["backends"]["azure-keyvault"], "refused");
    assert_eq!(body["backends"]["software"], "ok");
    vault.allow("get");

    // The managed identity was asked once (the token is cached), for the vault.
    assert_eq!(idp.count(Endpoint::Imds), 1);
    assert_eq!(idp.seen()[0].query["resource"], "https://vault.azure.net");
    assert_eq!(idp.seen()[0].headers["metadata"], "true");
    drop(rt);
}

/// The last audit record of `action` on `key`.
fn last_audit(ks: &Keyserver, d: &std::path::Path, action: &str, key: &str) -> serde_json::Value {
    let out: serde_json::Value = serde_json::from_str(&ok(&ks.admin(
        &[
            "--output", "json", "audit", "list", "--action", action, "--key", key,
        ],
        d,
    )))
    .unwrap();
    out["records"][0].clone()
}

#[test]
fn vault_keys_and_certificates_are_imported_rotated_and_served() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_idp, vault, imds) = rt.block_on(async {
        let idp = IdentityStandIn::start().await.unwrap();
        let vault = VaultStandIn::start(d, "https://login.microsoftonline.com/t1")
            .await
            .unwrap();
        vault.accept_standin_tokens();
        let imds = idp.url();
        (idp, vault, imds)
    });
    // What an operator made in the vault before Influxion came: a certificate whose
    // key is not exportable (signs only in the vault), and one whose key is (its
    // secret holds it).
    let v1 = vault
        .create_certificate("legacy-fw", CertificateKey::P256, SecretFormat::Pem, false)
        .unwrap();
    vault
        .create_certificate(
            "code-sign",
            CertificateKey::P256,
            SecretFormat::Pkcs12,
            false,
        )
        .unwrap();
    vault
        .create_certificate(
            "secret-sign",
            CertificateKey::P384,
            SecretFormat::Pkcs12,
            true,
        )
        .unwrap();
    vault
        .create_certificate("rsa-2048", CertificateKey::Rsa2048, SecretFormat::Pem, true)
        .unwrap();
    std::fs::write(
        d.join("vault-signing-ca.pem"),
        vault.signing_ca_pem().unwrap(),
    )
    .unwrap();
    let provider = start_provider(d);
    let vault_url = vault.url();
    let ca = vault.ca_file.display().to_string();
    let env = [
        ("INFLUXION_VAULT_URL", vault_url.as_str()),
        ("INFLUXION_IMDS_ENDPOINT", imds.as_str()),
        ("INFLUXION_VAULT_CA_FILE", ca.as_str()),
    ];
    let mut ks = start_keyserver_env(d, &provider.issuer, AUDIENCE, &env);
    write_firmware(d, "fw.bin", 50_000);

    // A vault key, bound by name: the newest version, pinned.
    let imported = ok(&ks.admin(&["keys", "import", "legacy", "--vault-key", "legacy-fw"], d));
    assert!(
        imported.starts_with(&format!(
            "imported key legacy (ec-p256, azure-keyvault vault key legacy-fw/{v1}) sha256:"
        )),
        "{imported}"
    );
    let rec = last_audit(&ks, d, "key.import", "legacy");
    assert_eq!(rec["detail"]["vault_key_version"], v1.as_str(), "{rec}");
    ok(&ks.signer(&["sign", "--key", "legacy", "fw.bin", "-o", "l1.sig"], d));
    ok(&ks.signer(&["keys", "public", "legacy", "-o", "l1.pem"], d));
    assert_sha256_verifies(d, "l1.pem", "l1.sig", "fw.bin");

    // A newer version in the vault is not used until someone rotates, explicitly.
    let v2 = vault.renew_certificate("legacy-fw").unwrap();
    ok(&ks.signer(&["sign", "--key", "legacy", "fw.bin", "-o", "l2.sig"], d));
    assert_sha256_verifies(d, "l1.pem", "l2.sig", "fw.bin");
    assert!(vault.requests().last().unwrap().path.contains(&v1));
    let rotated = ok(&ks.admin(&["keys", "rotate", "legacy"], d));
    assert!(
        rotated.starts_with(&format!(
            "key legacy now bound to vault key legacy-fw/{v2} sha256:"
        )),
        "{rotated}"
    );
    let rec = last_audit(&ks, d, "key.rotate", "legacy");
    assert_eq!(
        rec["detail"]["from"]["vault_key_version"],
        v1.as_str(),
        "{rec}"
    );
    assert_eq!(
        rec["detail"]["to"]["vault_key_version"],
        v2.as_str(),
        "{rec}"
    );
    assert!(rec["actor"]["id"].as_str().unwrap().starts_with("app:"));
    ok(&ks.signer(&["sign", "--key", "legacy", "fw.bin", "-o", "l3.sig"], d));
    ok(&ks.signer(&["keys", "public", "legacy", "-o", "l3.pem"], d));
    assert_sha256_verifies(d, "l3.pem", "l3.sig", "fw.bin");
    // Rotating again finds nothing newer.
    let again = ks.admin(&["keys", "rotate", "legacy"], d);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("unfit-key") && err.contains("already bound"),
        "{err}"
    );
    // A signer may not rotate.
    let denied = ks.signer(&["keys", "rotate", "legacy", "--version", &v1], d);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));

    // A vault certificate: the key signs in the vault, the chain is served.
    ok(&ks.admin(
        &[
            "keys",
            "import",
            "fw-cert",
            "--vault-certificate",
            "code-sign",
        ],
        d,
    ));
    ok(&ks.signer(&["keys", "certificate", "fw-cert", "-o", "chain.pem"], d));
    let chain = std::fs::read_to_string(d.join("chain.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and issuing CA"
    );
    let v = openssl(
        &["verify", "-CAfile", "vault-signing-ca.pem", "chain.pem"],
        d,
    );
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("chain.pem: OK"),
        "{v:?}"
    );
    let leaf_key = openssl(&["x509", "-in", "chain.pem", "-noout", "-pubkey"], d);
    ok(&ks.signer(&["keys", "public", "fw-cert", "-o", "cert-key.pem"], d));
    assert_eq!(
        String::from_utf8_lossy(&leaf_key.stdout),
        std::fs::read_to_string(d.join("cert-key.pem")).unwrap()
    );
    let before = vault.requests().len();
    ok(&ks.signer(&["sign", "--key", "fw-cert", "fw.bin", "-o", "c.sig"], d));
    assert_eq!(
        vault.requests().len(),
        before + 1,
        "one vault call per signature"
    );
    assert_sha256_verifies(d, "cert-key.pem", "c.sig", "fw.bin");
    let show: serde_json::Value =
        serde_json::from_str(&ok(&ks.signer(&["keys", "show", "fw-cert"], d))).unwrap();
    assert_eq!(show["has_certificate"], true);
    assert_eq!(show["location"]["vault_certificate"], "code-sign");

    // The guide's permissions: Get on secrets only. The private key is read from the
    // certificate's secret and held in memory; signing makes no vault call.
    ok(&ks.admin(
        &[
            "keys",
            "import",
            "sec",
            "--vault-certificate",
            "secret-sign",
            "--from-secret",
        ],
        d,
    ));
    let before = vault.requests().len();
    ok(&ks.signer(&["sign", "--key", "sec", "fw.bin", "-o", "s1.sig"], d));
    assert_eq!(vault.requests().len(), before);
    ok(&ks.signer(&["keys", "public", "sec", "-o", "sec.pem"], d));
    let v = openssl(
        &[
            "dgst",
            "-sha384",
            "-verify",
            "sec.pem",
            "-signature",
            "s1.sig",
            "fw.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");
    let rec = last_audit(&ks, d, "sign", "sec");
    assert_eq!(rec["detail"]["vault_secret"], "secret-sign", "{rec}");
    // Nothing of it on disk: the database holds the public key and the secret's name.
    let pkcs8 = vault.exportable_key("secret-sign").unwrap();
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&pkcs8)
    };
    let mut on_disk = Vec::new();
    for f in std::fs::read_dir(&ks.data).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            on_disk.extend(std::fs::read(p).unwrap());
        }
    }
    assert!(!on_disk.is_empty());
    let scalar = {
        use p384::pkcs8::DecodePrivateKey as _;
        p384::SecretKey::from_pkcs8_der(&pkcs8).unwrap().to_bytes()
    };
    assert!(
        !on_disk.windows(48).any(|w| w == &scalar[..]),
        "the private key is not on disk"
    );
    assert!(!String::from_utf8_lossy(&on_disk).contains(&b64[8..40]));

    // After a restart the secret is read again at start, then signing needs only it.
    ks.restart(d, &env);
    let reads = vault
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/secrets/secret-sign"))
        .count();
    assert!(
        reads >= 2,
        "read at import and again at start: {:?}",
        vault.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    for op in ["sign", "get", "create", "certificates-get"] {
        vault.forbid(op);
    }
    ok(&ks.signer(&["sign", "--key", "sec", "fw.bin", "-o", "s2.sig"], d));
    let v = openssl(
        &[
            "dgst",
            "-sha384",
            "-verify",
            "sec.pem",
            "-signature",
            "s2.sig",
            "fw.bin",
        ],
        d,
    );
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), "Verified OK");
    for op in ["sign", "get", "create", "certificates-get"] {
        vault.allow(op);
    }

    // Bad imports, each with its exact status and problem.
    let token = access_token(&ks, "ci-admin", "admin-secret-1234567890");
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{}{path}", ks.url);
        let token = token.clone();
        rt.block_on(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    let cases = [
        (
            "/v1/keys/x1/import",
            serde_json::json!({}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "a", "vault_certificate": "b"}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "bad/name/x"}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "a b"}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "a", "from_secret": true}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "a", "extra": 1}),
            400,
            "invalid-request",
        ),
        (
            "/v1/keys/legacy/import",
            serde_json::json!({"vault_key": "legacy-fw"}),
            409,
            "key-exists",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_key": "missing"}),
            502,
            "backend-refused",
        ),
        (
            "/v1/keys/x1/import",
            serde_json::json!({"vault_certificate": "code-sign", "from_secret": true}),
            422,
            "unfit-key",
        ),
        (
            "/v1/keys/nope/rotate",
            serde_json::json!({}),
            404,
            "unknown-key",
        ),
        (
            "/v1/keys/legacy/rotate",
            serde_json::json!({"version": "../x"}),
            400,
            "invalid-request",
        ),
    ];
    for (path, body, status, slug) in cases {
        let (got, problem) = post(path, body.clone());
        assert_eq!(got, status, "{path} {body}: {problem}");
        assert_eq!(
            problem["type"],
            format!("https://influxion.dev/problems/{slug}"),
            "{problem}"
        );
    }
    // An RSA-2048 vault key binds as rsa-2048 (for boot chains that verify nothing
    // stronger).
    let (got, body) = post(
        "/v1/keys/old-rsa/import",
        serde_json::json!({"vault_key": "rsa-2048"}),
    );
    assert_eq!(got, 201, "{body}");
    assert_eq!(body["key_type"], "rsa-2048", "{body}");
    // A software key has no versions to rotate to, and no certificate.
    ok(&ks.admin(&["keys", "create", "sw"], d));
    let (got, problem) = post("/v1/keys/sw/rotate", serde_json::json!({}));
    assert_eq!(
        (got, problem["type"].as_str().unwrap()),
        (422, "https://influxion.dev/problems/unfit-key")
    );
    let none = ks.signer(&["keys", "certificate", "sw"], d);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("no-certificate") && err.contains("404"),
        "{err}"
    );
    // A CA key is never rotated: its certificate certifies the old key.
    ok(&ks.admin(
        &[
            "ca",
            "create",
            "vroot",
            "--cn",
            "V",
            "--backend",
            "azure-keyvault",
        ],
        d,
    ));
    let ca_key = serde_json::from_str::<serde_json::Value>(&ok(
        &ks.admin(&["--output", "json", "keys", "list"], d)
    ))
    .unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["purpose"] == "ca")
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let (got, problem) = post(&format!("/v1/keys/{ca_key}/rotate"), serde_json::json!({}));
    assert_eq!(
        (got, problem["type"].as_str().unwrap()),
        (409, "https://influxion.dev/problems/ca-key")
    );
    drop(rt);
}

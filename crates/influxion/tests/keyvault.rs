//! The real binary with keys in Azure Key Vault: the loopback HTTPS vault stand-in
//! (its own CA, passed as INFLUXION_VAULT_CA_FILE) reached with a managed-identity
//! token from the instance-metadata stand-in (INFLUXION_IMDS_ENDPOINT), people and
//! pipelines from the Node OIDC provider. Signatures are checked with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use common::*;
use influxion_azure_standin::{Endpoint, IdentityStandIn, VaultStandIn};

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

//! People and pipelines by name: labels recorded from the token in requests, approvals
//! and audit records; and the audit log's API (filters, export pages that wait, one
//! record with its place in the chain), with every bad input refused exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use common::*;
use influxion_core::{CallerRule, Role, SubjectRules};
use serde_json::{json, Value};

const ADMIN_OID: &str = "cccccccc-0000-4000-8000-000000000003";

struct World {
    _idp: TestIdp,
    h: Harness,
    admin: String,
    signer: String,
    bob: String,
    carol: String,
}

fn person(idp: &TestIdp, oid: &str, name: Value, username: &str) -> String {
    let mut c = user_claims(&idp.issuer);
    c["oid"] = json!(oid);
    c["name"] = name;
    c["preferred_username"] = json!(username);
    token(&keys().rsa1, &c)
}

async fn world() -> World {
    let k = keys();
    let idp = TestIdp::start("", &[&k.rsa1]).await;
    let h = Harness::new(auth_config(&idp)).await;
    let admin = token(&k.rsa1, &{
        let mut a = app_claims(&idp.issuer);
        a["azp"] = json!("key-admin");
        a["oid"] = json!(ADMIN_OID);
        a
    });
    let signer = token(&k.rsa1, &app_claims(&idp.issuer));
    h.add_subject(
        "approvers",
        SubjectRules {
            tenant_id: Some(TENANT.into()),
            caller: Some(CallerRule::User),
            ..Default::default()
        },
        &[(Role::Approver, "*")],
    )
    .await;
    let bob = person(
        &idp,
        "b0b00000-0000-4000-8000-00000000000b",
        json!("Bob Approver"),
        "bob@contoso.com",
    );
    // A name claim holding markup and a terminal escape: shown as text, cleaned.
    let carol = person(
        &idp,
        "ca401000-0000-4000-8000-00000000000c",
        json!("<img src=x onerror=alert(1)>Carol\u{1b}[2J\u{202E}"),
        "carol@contoso.com",
    );
    assert_eq!(h.create_key(&admin, "fw", "ec-p256").await.status, 201);
    assert_eq!(h.create_key(&admin, "rel", "ec-p256").await.status, 201);
    let r = h
        .call(
            "PUT",
            "/v1/keys/rel/policy",
            Some(&admin),
            Some(json!({"approvals_required": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    World {
        _idp: idp,
        h,
        admin,
        signer,
        bob,
        carol,
    }
}

async fn sign(w: &World, key: &str) -> Value {
    let r =
        w.h.call(
            "POST",
            &format!("/v1/keys/{key}/sign"),
            Some(&w.signer),
            Some(json!({"digest": "ab".repeat(32), "reason": "release 2.1"})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    r.json
}

async fn audit(w: &World, query: &str) -> Resp {
    w.h.call("GET", &format!("/v1/audit{query}"), Some(&w.admin), None)
        .await
}

#[tokio::test]
async fn requests_approvals_and_audit_records_name_people_and_pipelines() {
    let w = world().await;
    let id = sign(&w, "rel").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (who, comment) in [(&w.bob, "checked"), (&w.carol, "lgtm")] {
        let r =
            w.h.call(
                "POST",
                &format!("/v1/signing-requests/{id}/approve"),
                Some(who),
                Some(json!({"comment": comment})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r =
        w.h.call(
            "GET",
            &format!("/v1/signing-requests/{id}"),
            Some(&w.admin),
            None,
        )
        .await;
    assert_eq!(r.json["status"], "signed", "{}", r.text);
    // The pipeline: its subject's name, its client id, the identity beside them.
    let requester = &r.json["requester"];
    assert_eq!(requester["label"], "ci (app)");
    assert_eq!(requester["name"], "ci");
    assert_eq!(requester["username"], "ci-signer");
    assert_eq!(requester["kind"], "app");
    assert_eq!(
        requester["id"],
        format!("{TENANT}/aaaaaaaa-0000-4000-8000-000000000001")
    );
    let approvers: Vec<&Value> = r.json["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["approver"])
        .collect();
    assert_eq!(approvers[0]["label"], "Bob Approver <bob@contoso.com>");
    assert_eq!(approvers[0]["subject"], "approvers");
    assert_eq!(
        approvers[0]["id"],
        format!("{TENANT}/b0b00000-0000-4000-8000-00000000000b")
    );
    // Markup stays text for the renderer to escape; control and bidi characters go.
    assert_eq!(approvers[1]["name"], "<img src=x onerror=alert(1)>Carol[2J");
    assert_eq!(
        approvers[1]["label"],
        "<img src=x onerror=alert(1)>Carol[2J <carol@contoso.com>"
    );

    // The audit records carry the same labels, under the audit identity.
    let r = audit(&w, "?action=signing_request.approve").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 2, "{}", r.text);
    let bob = &recs[1]["actor"];
    assert_eq!(bob["name"], "Bob Approver");
    assert_eq!(bob["username"], "bob@contoso.com");
    assert_eq!(bob["subject"], "approvers");
    assert_eq!(
        bob["id"],
        format!("user:{TENANT}/b0b00000-0000-4000-8000-00000000000b")
    );
    // The quorum's signature is Influxion's own act: known by its identity alone.
    let r = audit(&w, "?action=sign&key=rel").await;
    let signed = &r.json["records"][0]["actor"];
    assert_eq!(signed["id"], "system:quorum");
    assert_eq!(signed["label"], "system:quorum");
    assert!(signed["name"].is_null());

    // The labels are hashed with the record: the chain still verifies in full.
    let r = audit(&w, "?full=true&limit=1").await;
    assert_eq!(r.json["chain"]["status"], "intact", "{}", r.text);

    // Names never decide: Bob under another object id is someone else, and may not
    // approve as the first Bob would be refused (a second vote of the same identity).
    let id = sign(&w, "rel").await["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let approve = |t: String| {
        let id = id.clone();
        let h = &w.h;
        async move {
            h.call(
                "POST",
                &format!("/v1/signing-requests/{id}/approve"),
                Some(&t),
                Some(json!({"comment": "x"})),
            )
            .await
        }
    };
    assert_eq!(approve(w.bob.clone()).await.status, 200);
    approve(w.bob.clone())
        .await
        .assert_problem(409, "already-decided");
    let impostor = person(
        &w._idp,
        "1e1e1e1e-0000-4000-8000-00000000000e",
        json!("Bob Approver"),
        "bob@contoso.com",
    );
    let r = approve(impostor).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r =
        w.h.call(
            "GET",
            &format!("/v1/signing-requests/{id}"),
            Some(&w.admin),
            None,
        )
        .await;
    let ids: Vec<&str> = r.json["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["approver"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn display_claims_of_any_shape_never_refuse_a_token() {
    let w = world().await;
    let odd = person(
        &w._idp,
        "0dd00000-0000-4000-8000-00000000000d",
        json!({"given": "Bob"}),
        "",
    );
    let r = w.h.call("GET", "/v1/me", Some(&odd), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["principal"]["name"].is_null());
    assert!(r.json["principal"]["username"].is_null());
    let long = person(
        &w._idp,
        "0dd00000-0000-4000-8000-00000000000e",
        json!("x".repeat(5000)),
        "y",
    );
    let r = w.h.call("GET", "/v1/me", Some(&long), None).await;
    assert_eq!(
        r.json["principal"]["name"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        128
    );
}

#[tokio::test]
async fn the_audit_log_is_filtered_by_the_keyserver() {
    let w = world().await;
    sign(&w, "fw").await;
    sign(&w, "fw").await;
    let refused =
        w.h.call(
            "POST",
            "/v1/keys/fw/disable",
            Some(&w.signer),
            Some(json!({})),
        )
        .await;
    refused.assert_problem(403, "forbidden");

    let seqs = |r: &Resp| -> Vec<i64> {
        r.json["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    };
    let r = audit(&w, "?action=sign&key=fw").await;
    let signs = seqs(&r);
    assert_eq!(signs.len(), 2, "{}", r.text);
    assert!(signs[0] > signs[1], "newest first");
    assert!(r.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["action"] == "sign" && x["target"] == "fw"));
    // A prefix, a list, an outcome, an actor by name or by id.
    let r = audit(&w, "?action=key.*").await;
    assert!(r.json["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["action"].as_str().unwrap().starts_with("key.")));
    let r = audit(&w, "?action=key.disable&outcome=refused").await;
    assert_eq!(seqs(&r).len(), 1, "{}", r.text);
    assert_eq!(r.json["records"][0]["actor"]["label"], "ci (app)");
    let r = audit(&w, "?action=sign,key.disable&actor=ci-sign").await;
    assert_eq!(seqs(&r).len(), 3, "{}", r.text);
    let r = audit(&w, "?actor=AAAAAAAA-0000").await;
    assert!(
        seqs(&r).len() >= 3,
        "identity, ASCII case ignored: {}",
        r.text
    );
    // The label's fields are searched, not its JSON text.
    let r = audit(&w, "?actor=username").await;
    assert!(seqs(&r).is_empty(), "JSON keys never match: {}", r.text);
    let r = audit(&w, "?actor=50%25").await;
    assert!(seqs(&r).is_empty(), "% is literal: {}", r.text);
    let r = audit(&w, "?outcome=error").await;
    assert!(seqs(&r).is_empty());
    // Time windows: the future is empty, the past holds everything.
    let r = audit(&w, "?since=2999-01-01T00:00:00Z").await;
    assert!(seqs(&r).is_empty());
    let r = audit(&w, "?until=2000-01-01T00:00:00%2B01:00").await;
    assert!(seqs(&r).is_empty());
    let r = audit(&w, "?since=2000-01-01T00:00:00Z&action=sign").await;
    assert_eq!(seqs(&r).len(), 2);
    // Paging back with before, and export order with after.
    let r = audit(&w, &format!("?action=sign&before={}", signs[0])).await;
    assert_eq!(seqs(&r), vec![signs[1]]);
    let r = audit(&w, &format!("?after={}&action=sign", signs[1] - 1)).await;
    assert_eq!(seqs(&r), vec![signs[1], signs[0]], "oldest first");
    assert!(r.json.get("chain").is_none(), "export pages skip the walk");
    assert!(r.json["last_seq"].as_i64().unwrap() >= signs[0]);
}

#[tokio::test]
async fn an_export_page_waits_for_the_next_record() {
    let w = world().await;
    let last = audit(&w, "?limit=1").await.json["last_seq"]
        .as_i64()
        .unwrap();
    let h = &w.h;
    let admin = w.admin.clone();
    // Nothing after `last` matches: the request waits, and a signature made meanwhile
    // answers it.
    let waiting = async {
        h.call(
            "GET",
            &format!("/v1/audit?after={last}&action=sign&wait=30"),
            Some(&admin),
            None,
        )
        .await
    };
    let later = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sign(&w, "fw").await
    };
    let (r, signed) = tokio::join!(waiting, later);
    assert_eq!(r.status, 200, "{}", r.text);
    let recs = r.json["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{}", r.text);
    assert_eq!(recs[0]["action"], "sign");
    assert_eq!(recs[0]["seq"], signed["audit_seq"]);
    // wait=0 answers at once, with nothing new.
    let after = recs[0]["seq"].as_i64().unwrap();
    let r = audit(&w, &format!("?after={after}&action=sign&wait=0")).await;
    assert_eq!(r.status, 200);
    assert!(r.json["records"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn one_record_shows_its_place_in_the_chain() {
    let w = world().await;
    let seq = sign(&w, "fw").await["audit_seq"].as_i64().unwrap();
    let r = audit(&w, &format!("/{seq}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["record"]["seq"], seq);
    assert_eq!(r.json["record"]["action"], "sign");
    assert_eq!(r.json["record"]["actor"]["label"], "ci (app)");
    let k = &r.json["checks"];
    assert_eq!(k["hash_matches"], true);
    assert_eq!(k["mac"], "valid");
    assert_eq!(k["links_to_previous"], true);
    assert_eq!(k["previous_hash"], r.json["record"]["prev_hash"]);
    assert_eq!(k["next_links_here"], true);
    assert_eq!(r.json["chain"]["status"], "intact");
    let first = audit(&w, "/1").await;
    assert_eq!(
        first.json["checks"]["previous_hash"],
        "0".repeat(64),
        "{}",
        first.text
    );
    assert_eq!(first.json["checks"]["next_seq"], 2);

    // An altered label is caught by the record's own hash.
    let mut rec =
        w.h.state
            .store
            .tamper()
            .audit_row(seq)
            .await
            .unwrap()
            .unwrap();
    rec.actor_label = Some(r#"{"kind":"app","name":"someone else"}"#.into());
    w.h.state.store.tamper().put_audit_row(&rec).await.unwrap();
    let r = audit(&w, &format!("/{seq}")).await;
    assert_eq!(r.json["checks"]["hash_matches"], false, "{}", r.text);
    assert_eq!(r.json["record"]["actor"]["name"], "someone else");
    let r = audit(&w, "?full=true").await;
    assert_eq!(r.json["chain"]["status"], "broken");
    assert_eq!(r.json["chain"]["seq"], seq);
}

#[tokio::test]
async fn bad_audit_queries_are_refused_exactly() {
    let w = world().await;
    for (query, why) in [
        ("?outcome=maybe", "outcome is ok, refused or error"),
        ("?limit=0", "limit is 1 to 1000"),
        ("?limit=1001", "limit is 1 to 1000"),
        ("?since=yesterday", "since is an RFC 3339 time"),
        ("?until=2026-13-01T00:00:00Z", "until is an RFC 3339 time"),
        ("?action=sign;drop", "action is a comma-separated list"),
        ("?action=a*b", "action is a comma-separated list"),
        ("?after=1&before=5", "do not go together"),
        ("?wait=5", "wait needs after"),
        ("?after=0&wait=31", "wait is at most 30 seconds"),
        ("?after=-1", "after is 0 or more"),
        ("?before=0", "before is 1 or more"),
        ("?verbose=1", "unknown field"),
        ("?limit=many", "invalid digit"),
        ("/0", "sequence number (1 or more)"),
        ("/abc", "sequence number (1 or more)"),
    ] {
        let r = audit(&w, query).await;
        r.assert_problem(400, "invalid-request");
        assert!(
            r.json["detail"].as_str().unwrap_or("").contains(why),
            "{query}: {}",
            r.text
        );
    }
    let long = "x".repeat(129);
    audit(&w, &format!("?actor={long}"))
        .await
        .assert_problem(400, "invalid-request");
    audit(&w, "?key=a%0Ab")
        .await
        .assert_problem(400, "invalid-request");
    audit(&w, "/999999")
        .await
        .assert_problem(404, "unknown-audit-record");
    // Auditors only, and the refusal is on record.
    for path in ["/v1/audit", "/v1/audit/1", "/v1/audit?after=0&wait=1"] {
        w.h.call("GET", path, Some(&w.signer), None)
            .await
            .assert_problem(403, "forbidden");
    }
    let a = w.h.last_audit().await;
    assert_eq!(
        (a.action.as_str(), a.outcome.as_str()),
        ("audit.read", "refused")
    );
}

#[tokio::test]
async fn export_reads_are_recorded_but_do_not_feed_themselves() {
    let w = world().await;
    let r = audit(&w, "?after=0&limit=1000").await;
    let first = r.json["records"].as_array().unwrap().clone();
    let exported: Vec<&Value> = first
        .iter()
        .filter(|x| x["action"] == "audit.export")
        .collect();
    assert_eq!(exported.len(), 1, "the first export read is on record");
    let last = first.last().unwrap()["seq"].as_i64().unwrap();
    // Reading on from the end finds nothing new: the second read is not recorded
    // again (a follower would otherwise read its own reads forever).
    let r = audit(&w, &format!("?after={last}&wait=1")).await;
    assert!(
        r.json["records"].as_array().unwrap().is_empty(),
        "{}",
        r.text
    );
}

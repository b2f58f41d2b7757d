//! CLI for subjects, grants, approvals and key policies.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::output;

#[derive(Args, Default)]
pub struct RuleArgs {
    /// Match the token's issuer exactly.
    #[arg(long)]
    issuer: Option<String>,
    /// Match the tenant (`tid`).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Match a person's or service principal's object id (`oid`).
    #[arg(long)]
    object_id: Option<String>,
    /// Match the application that obtained the token (`azp`/`appid`).
    #[arg(long)]
    app_id: Option<String>,
    /// Match an app role in `roles` (client credentials, workload identity).
    #[arg(long)]
    app_role: Option<String>,
    /// Match a group id in `groups`.
    #[arg(long)]
    group_id: Option<String>,
    /// Which tokens match: app (app-only), user (delegated) or any. Default: app when
    /// the only identity rules are --app-id/--app-role, otherwise any.
    #[arg(long, value_parser = ["app", "user", "any"])]
    caller: Option<String>,
    #[arg(long, default_value = "")]
    description: String,
}

impl RuleArgs {
    fn to_json(&self) -> Value {
        let mut v = json!({"description": self.description});
        for (k, x) in [
            ("issuer", &self.issuer),
            ("tenant_id", &self.tenant_id),
            ("object_id", &self.object_id),
            ("app_id", &self.app_id),
            ("app_role", &self.app_role),
            ("group_id", &self.group_id),
            ("caller", &self.caller),
        ] {
            if let Some(x) = x {
                v[k] = json!(x);
            }
        }
        v
    }
}

#[derive(Subcommand)]
pub enum SubjectsCommand {
    /// List subjects with their rules and grants.
    List,
    /// Show one subject.
    Show { name: String },
    /// Create a subject (admin). Give at least one of --object-id, --app-id, --app-role, --group-id.
    Create {
        name: String,
        #[command(flatten)]
        rules: RuleArgs,
        /// Grants as ROLE[:PATTERN], e.g. signer:fw-*; repeatable.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// Replace a subject's rules and description (admin).
    Update {
        name: String,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Delete a subject and its grants (admin).
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// List a subject's grants.
    List { subject: String },
    /// Grant a role on keys matching a pattern (admin).
    Add {
        subject: String,
        /// admin, key-admin, signer, approver, provisioner or auditor.
        role: String,
        #[arg(long, default_value = "*")]
        pattern: String,
    },
    /// Remove a grant by id (admin).
    Remove { subject: String, id: String },
}

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Signing requests you can see (pending by default).
    List {
        /// pending, signed, rejected, cancelled, expired, or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Everything about one request.
    Show { id: String },
    /// Approve a request.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject a request (a comment is required).
    Reject {
        id: String,
        #[arg(long)]
        comment: String,
    },
    /// Cancel your own pending request.
    Cancel { id: String },
}

#[derive(Subcommand)]
pub enum PolicyChangesCommand {
    /// Policy changes you can see (pending by default).
    List {
        /// pending, applied, rejected, expired, superseded, or all.
        #[arg(long, default_value = "pending")]
        status: String,
    },
    /// Everything about one change: the policy now and the one proposed.
    Show { id: String },
    /// Approve a change (an approver of the key).
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject a change (a comment is required).
    Reject {
        id: String,
        #[arg(long)]
        comment: String,
    },
}

fn parse_grant(g: &str) -> Value {
    match g.split_once(':') {
        Some((role, pattern)) => json!({"role": role, "pattern": pattern}),
        None => json!({"role": g, "pattern": "*"}),
    }
}

fn print_subject(s: &Value) {
    println!(
        "{}  {}",
        s["name"].as_str().unwrap_or(""),
        s["description"].as_str().unwrap_or("")
    );
    for k in [
        "issuer",
        "tenant_id",
        "object_id",
        "app_id",
        "app_role",
        "group_id",
        "caller",
    ] {
        if let Some(v) = s[k].as_str() {
            println!("    {k:<10} {v}");
        }
    }
    for g in s["grants"].as_array().into_iter().flatten() {
        println!(
            "    grant      {:<12} {:<16} ({})",
            g["role"].as_str().unwrap_or(""),
            g["pattern"].as_str().unwrap_or(""),
            g["id"].as_str().unwrap_or("")
        );
    }
}

pub async fn subjects(mut c: Client, cmd: SubjectsCommand) -> Result<ExitCode> {
    match cmd {
        SubjectsCommand::List => {
            let (_, v) = c.call(Method::GET, "/v1/subjects", None).await?;
            output::emit(&v, || {
                for s in v["subjects"].as_array().into_iter().flatten() {
                    print_subject(s);
                }
            });
        }
        SubjectsCommand::Show { name } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/subjects/{name}"), None)
                .await?;
            output::emit(&v, || print_subject(&v));
        }
        SubjectsCommand::Create {
            name,
            rules,
            grants,
        } => {
            let mut body = rules.to_json();
            body["name"] = json!(name);
            body["grants"] = Value::Array(grants.iter().map(|g| parse_grant(g)).collect());
            let (_, v) = c.call(Method::POST, "/v1/subjects", Some(&body)).await?;
            output::emit(&v, || print_subject(&v));
        }
        SubjectsCommand::Update { name, rules } => {
            let (_, v) = c
                .call(
                    Method::PUT,
                    &format!("/v1/subjects/{name}"),
                    Some(&rules.to_json()),
                )
                .await?;
            output::emit(&v, || print_subject(&v));
        }
        SubjectsCommand::Delete { name } => {
            c.call(Method::DELETE, &format!("/v1/subjects/{name}"), None)
                .await?;
            output::note(
                &json!({"subject": name, "deleted": true}),
                &format!("subject {name} deleted"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn grants(mut c: Client, cmd: GrantsCommand) -> Result<ExitCode> {
    match cmd {
        GrantsCommand::List { subject } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/subjects/{subject}"), None)
                .await?;
            output::emit(&v, || print_subject(&v));
        }
        GrantsCommand::Add {
            subject,
            role,
            pattern,
        } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{subject}/grants"),
                    Some(&json!({"role": role, "pattern": pattern})),
                )
                .await?;
            output::emit(&v, || println!("{}", v["id"].as_str().unwrap_or("")));
        }
        GrantsCommand::Remove { subject, id } => {
            c.call(
                Method::DELETE,
                &format!("/v1/subjects/{subject}/grants/{id}"),
                None,
            )
            .await?;
            output::note(
                &json!({"subject": subject, "grant": id, "removed": true}),
                &format!("grant {id} removed from {subject}"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request, for a person deciding on it.
pub fn print_request(r: &Value) {
    println!("request    {}", r["id"].as_str().unwrap_or(""));
    println!("status     {}", r["status"].as_str().unwrap_or(""));
    println!(
        "key        {} ({})",
        r["key_name"].as_str().unwrap_or(""),
        r["algorithm"].as_str().unwrap_or("")
    );
    println!("digest     {}", r["digest"].as_str().unwrap_or(""));
    println!(
        "requester  {} {}",
        r["requester"].as_str().unwrap_or(""),
        r["requester_name"]
            .as_str()
            .map(|n| format!("({n})"))
            .unwrap_or_default()
    );
    println!("reason     {}", r["reason"].as_str().unwrap_or(""));
    if let Some(m) = r["metadata"].as_object().filter(|m| !m.is_empty()) {
        for (k, v) in m {
            println!("  {k:<9}  {v}");
        }
    }
    println!(
        "approvals  {}/{}",
        r["approvals_count"].as_u64().unwrap_or(0),
        r["quorum"].as_u64().unwrap_or(0)
    );
    for a in r["approvals"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {} {} {}",
            a["decision"].as_str().unwrap_or(""),
            a["approver"].as_str().unwrap_or(""),
            a["at"].as_str().unwrap_or(""),
            a["comment"].as_str().unwrap_or("")
        );
    }
    println!(
        "created    {}  expires {}",
        r["created_at"].as_str().unwrap_or(""),
        r["expires_at"]
    );
    if r["can_decide"].as_bool() == Some(true) {
        println!("you can approve or reject this request");
    }
}

pub async fn approvals(mut c: Client, cmd: ApprovalsCommand) -> Result<ExitCode> {
    match cmd {
        ApprovalsCommand::List { status } => {
            let path = if status == "all" {
                "/v1/signing-requests".to_owned()
            } else {
                format!("/v1/signing-requests?status={status}")
            };
            let (_, v) = c.call(Method::GET, &path, None).await?;
            if output::json() {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<9} {:<16} {:<9} {:<5} REASON",
                "ID", "STATUS", "KEY", "APPROVALS", "YOURS"
            );
            for r in v["requests"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<9} {:<16} {:<9} {:<5} {}",
                    r["id"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["key_name"].as_str().unwrap_or(""),
                    format!("{}/{}", r["approvals_count"], r["quorum"]),
                    if r["can_decide"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        ""
                    },
                    r["reason"].as_str().unwrap_or("")
                );
            }
        }
        ApprovalsCommand::Show { id } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/signing-requests/{id}"), None)
                .await?;
            output::emit(&v, || print_request(&v));
        }
        ApprovalsCommand::Approve { id, comment } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/signing-requests/{id}/approve"),
                    Some(&json!({"comment": comment})),
                )
                .await?;
            output::note(
                &v,
                &format!(
                    "approved: {} ({}/{} approvals)",
                    v["status"].as_str().unwrap_or(""),
                    v["approvals_count"],
                    v["quorum"]
                ),
            );
        }
        ApprovalsCommand::Reject { id, comment } => {
            if comment.trim().is_empty() {
                bail!("a rejection needs --comment");
            }
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/signing-requests/{id}/reject"),
                    Some(&json!({"comment": comment})),
                )
                .await?;
            output::note(
                &v,
                &format!("request {}", v["status"].as_str().unwrap_or("")),
            );
        }
        ApprovalsCommand::Cancel { id } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/signing-requests/{id}/cancel"),
                    None,
                )
                .await?;
            output::note(
                &v,
                &format!("request {}", v["status"].as_str().unwrap_or("")),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(mut c: Client) -> Result<ExitCode> {
    let (_, v) = c.call(Method::GET, "/v1/me", None).await?;
    let pretty = serde_json::to_string_pretty(&v)?;
    output::emit(&v, || println!("{pretty}"));
    Ok(ExitCode::SUCCESS)
}

fn print_change(ch: &Value) {
    println!("change     {}", ch["id"].as_str().unwrap_or(""));
    println!("status     {}", ch["status"].as_str().unwrap_or(""));
    println!("key        {}", ch["key_name"].as_str().unwrap_or(""));
    println!(
        "requester  {} {}",
        ch["requester"].as_str().unwrap_or(""),
        ch["requester_name"]
            .as_str()
            .map(|n| format!("({n})"))
            .unwrap_or_default()
    );
    println!("reason     {}", ch["reason"].as_str().unwrap_or(""));
    println!("now        {}", ch["base_policy"]);
    println!("proposed   {}", ch["policy"]);
    println!("weakens    {}", ch["weakens"]);
    println!(
        "approvals  {}/{}",
        ch["approvals_count"].as_u64().unwrap_or(0),
        ch["quorum"].as_u64().unwrap_or(0)
    );
    for a in ch["approvals"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {} {} {}",
            a["decision"].as_str().unwrap_or(""),
            a["approver"].as_str().unwrap_or(""),
            a["at"].as_str().unwrap_or(""),
            a["comment"].as_str().unwrap_or("")
        );
    }
    if ch["can_decide"].as_bool() == Some(true) {
        println!("you can approve or reject this change");
    }
}

pub async fn policy_changes(mut c: Client, cmd: PolicyChangesCommand) -> Result<ExitCode> {
    match cmd {
        PolicyChangesCommand::List { status } => {
            let path = if status == "all" {
                "/v1/policy-changes".to_owned()
            } else {
                format!("/v1/policy-changes?status={status}")
            };
            let (_, v) = c.call(Method::GET, &path, None).await?;
            output::emit(&v, || {
                for ch in v["changes"].as_array().into_iter().flatten() {
                    println!(
                        "{:<36}  {:<10} {:<16} {}/{}  {}",
                        ch["id"].as_str().unwrap_or(""),
                        ch["status"].as_str().unwrap_or(""),
                        ch["key_name"].as_str().unwrap_or(""),
                        ch["approvals_count"],
                        ch["quorum"],
                        ch["weakens"]
                    );
                }
            });
        }
        PolicyChangesCommand::Show { id } => {
            let (_, v) = c
                .call(Method::GET, &format!("/v1/policy-changes/{id}"), None)
                .await?;
            output::emit(&v, || print_change(&v));
        }
        PolicyChangesCommand::Approve { id, comment } => {
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/policy-changes/{id}/approve"),
                    Some(&json!({"comment": comment})),
                )
                .await?;
            output::note(
                &v,
                &format!(
                    "approved: {} ({}/{} approvals)",
                    v["status"].as_str().unwrap_or(""),
                    v["approvals_count"],
                    v["quorum"]
                ),
            );
        }
        PolicyChangesCommand::Reject { id, comment } => {
            if comment.trim().is_empty() {
                bail!("a rejection needs --comment");
            }
            let (_, v) = c
                .call(
                    Method::POST,
                    &format!("/v1/policy-changes/{id}/reject"),
                    Some(&json!({"comment": comment})),
                )
                .await?;
            output::note(
                &v,
                &format!("change {}", v["status"].as_str().unwrap_or("")),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

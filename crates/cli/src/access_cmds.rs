//! `influxion subjects`, `grants` and `whoami`: who is who, and what they may do.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use influxion_api::{GrantBody, Subject, SubjectBody, SubjectList, UpdateBody};
use influxion_core::{Grant, SubjectRules};
use reqwest::Method;
use serde::Deserialize as _;
use serde_json::json;

use crate::client::{Client, Reply};
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
    fn rules(&self) -> Result<SubjectRules> {
        Ok(SubjectRules {
            issuer: self.issuer.clone(),
            tenant_id: self.tenant_id.clone(),
            object_id: self.object_id.clone(),
            app_id: self.app_id.clone(),
            app_role: self.app_role.clone(),
            group_id: self.group_id.clone(),
            caller: self.caller.as_deref().map(str::parse).transpose()?,
        })
    }

    fn update(&self) -> Result<UpdateBody> {
        Ok(UpdateBody {
            description: self.description.clone(),
            rules: self.rules()?,
        })
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

/// `ROLE[:PATTERN]`; the pattern defaults to every name.
fn parse_grant(g: &str) -> GrantBody {
    let (role, pattern) = g.split_once(':').unwrap_or((g, "*"));
    GrantBody {
        role: role.to_owned(),
        pattern: Some(pattern.to_owned()),
    }
}

fn print_subject(s: &Subject) {
    println!("{}  {}", s.name, s.description);
    let r = &s.rules;
    for (k, v) in [
        ("issuer", r.issuer.as_deref()),
        ("tenant_id", r.tenant_id.as_deref()),
        ("object_id", r.object_id.as_deref()),
        ("app_id", r.app_id.as_deref()),
        ("app_role", r.app_role.as_deref()),
        ("group_id", r.group_id.as_deref()),
        ("caller", r.caller.map(|c| c.as_str())),
    ] {
        if let Some(v) = v {
            println!("    {k:<10} {v}");
        }
    }
    for g in &s.grants {
        println!(
            "    grant      {:<12} {:<16} ({})",
            g.role.as_str(),
            g.pattern,
            g.id
        );
    }
}

pub async fn subjects(mut c: Client, cmd: SubjectsCommand) -> Result<ExitCode> {
    match cmd {
        SubjectsCommand::List => {
            let r: Reply<SubjectList> = c.fetch(Method::GET, "/v1/subjects").await?;
            output::emit(&r.raw, || r.body.subjects.iter().for_each(print_subject));
        }
        SubjectsCommand::Show { name } => {
            let r: Reply<Subject> = c
                .fetch(Method::GET, &format!("/v1/subjects/{name}"))
                .await?;
            output::emit(&r.raw, || print_subject(&r.body));
        }
        SubjectsCommand::Create {
            name,
            rules,
            grants,
        } => {
            let body = SubjectBody {
                name,
                description: rules.description.clone(),
                rules: rules.rules()?,
                grants: grants.iter().map(|g| parse_grant(g)).collect(),
            };
            let r: Reply<Subject> = c.call(Method::POST, "/v1/subjects", Some(&body)).await?;
            output::emit(&r.raw, || print_subject(&r.body));
        }
        SubjectsCommand::Update { name, rules } => {
            let r: Reply<Subject> = c
                .call(
                    Method::PUT,
                    &format!("/v1/subjects/{name}"),
                    Some(&rules.update()?),
                )
                .await?;
            output::emit(&r.raw, || print_subject(&r.body));
        }
        SubjectsCommand::Delete { name } => {
            let _: Reply<serde_json::Value> = c
                .fetch(Method::DELETE, &format!("/v1/subjects/{name}"))
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
            let r: Reply<Subject> = c
                .fetch(Method::GET, &format!("/v1/subjects/{subject}"))
                .await?;
            output::emit(&r.raw, || print_subject(&r.body));
        }
        GrantsCommand::Add {
            subject,
            role,
            pattern,
        } => {
            let body = GrantBody {
                role,
                pattern: Some(pattern),
            };
            let r: Reply<Grant> = c
                .call(
                    Method::POST,
                    &format!("/v1/subjects/{subject}/grants"),
                    Some(&body),
                )
                .await?;
            output::emit(&r.raw, || println!("{}", r.body.id));
        }
        GrantsCommand::Remove { subject, id } => {
            let _: Reply<serde_json::Value> = c
                .fetch(
                    Method::DELETE,
                    &format!("/v1/subjects/{subject}/grants/{id}"),
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

pub async fn whoami(mut c: Client) -> Result<ExitCode> {
    let r: Reply<serde_json::Value> = c.fetch(Method::GET, "/v1/me").await?;
    let me = &r.raw;
    let list = |v: &serde_json::Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(output::terminal_safe)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into())
    };
    output::emit(me, || {
        match influxion_api::Actor::deserialize(&me["actor"]) {
            Ok(a) => println!("you are    {}", output::who(&a)),
            Err(_) => println!(
                "you are    {}",
                output::terminal_safe(&me["principal_id"].to_string())
            ),
        }
        println!("subjects   {}", list(&me["subjects"]));
        println!("roles      {}", list(&me["roles"]));
        if let Some(grants) = me["grants"].as_array().filter(|g| !g.is_empty()) {
            for g in grants {
                println!(
                    "  {} on {}",
                    output::terminal_safe(g["role"].as_str().unwrap_or("")),
                    output::terminal_safe(g["pattern"].as_str().unwrap_or(""))
                );
            }
        }
    });
    Ok(ExitCode::SUCCESS)
}

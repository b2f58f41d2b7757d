//! What waits for approvers: signing requests (`influxion approvals`) and weakening
//! policy changes (`influxion policy-changes`). Both are listed, shown, approved and
//! rejected the same way; [`Pending`] holds what differs (where they live, how they
//! read to a person), and one function runs the commands for either.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;
use influxion_api::{Actor, Approval, ChangeList, ChangeView, Decision, RequestList, RequestView};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::client::{Client, Reply};
use crate::output::{self, terminal_safe};

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

/// The commands both kinds of pending item answer to.
enum Action {
    List {
        status: String,
    },
    Show {
        id: String,
    },
    Decide {
        id: String,
        approve: bool,
        comment: String,
    },
    Cancel {
        id: String,
    },
}

impl From<ApprovalsCommand> for Action {
    fn from(cmd: ApprovalsCommand) -> Self {
        match cmd {
            ApprovalsCommand::List { status } => Action::List { status },
            ApprovalsCommand::Show { id } => Action::Show { id },
            ApprovalsCommand::Approve { id, comment } => Action::Decide {
                id,
                approve: true,
                comment,
            },
            ApprovalsCommand::Reject { id, comment } => Action::Decide {
                id,
                approve: false,
                comment,
            },
            ApprovalsCommand::Cancel { id } => Action::Cancel { id },
        }
    }
}

impl From<PolicyChangesCommand> for Action {
    fn from(cmd: PolicyChangesCommand) -> Self {
        match cmd {
            PolicyChangesCommand::List { status } => Action::List { status },
            PolicyChangesCommand::Show { id } => Action::Show { id },
            PolicyChangesCommand::Approve { id, comment } => Action::Decide {
                id,
                approve: true,
                comment,
            },
            PolicyChangesCommand::Reject { id, comment } => Action::Decide {
                id,
                approve: false,
                comment,
            },
        }
    }
}

/// A kind of item that waits for approvers: what differs between signing requests and
/// policy changes.
trait Pending: DeserializeOwned {
    /// Its collection in the API.
    const PATH: &'static str;
    /// What a person calls one ("request", "change").
    const NOUN: &'static str;
    /// The answer of the collection.
    type List: DeserializeOwned;

    fn items(list: &Self::List) -> &[Self];
    fn status(&self) -> &str;
    fn approvals_count(&self) -> u32;
    fn quorum(&self) -> u32;
    /// The list, for a person.
    fn print_list(items: &[Self]);
    /// Everything about one, for a person deciding on it.
    fn print(&self);
}

impl Pending for RequestView {
    const PATH: &'static str = "/v1/signing-requests";
    const NOUN: &'static str = "request";
    type List = RequestList;

    fn items(list: &RequestList) -> &[Self] {
        &list.requests
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn approvals_count(&self) -> u32 {
        self.approvals_count
    }
    fn quorum(&self) -> u32 {
        self.quorum
    }

    fn print_list(items: &[Self]) {
        println!(
            "{:<36}  {:<9} {:<16} {:<9} {:<5} {:<32} REASON",
            "ID", "STATUS", "KEY", "APPROVALS", "YOURS", "REQUESTER"
        );
        for r in items {
            println!(
                "{:<36}  {:<9} {:<16} {:<9} {:<5} {:<32} {}",
                r.id,
                r.status,
                r.key_name,
                format!("{}/{}", r.approvals_count, r.quorum),
                if r.can_decide { "yes" } else { "" },
                output::fit(&terminal_safe(&r.requester.label()), 32),
                terminal_safe(&r.reason)
            );
        }
    }

    fn print(&self) {
        println!("request    {}", self.id);
        println!("status     {}", self.status);
        println!("key        {} ({})", self.key_name, self.algorithm);
        println!("digest     {}", self.digest);
        print_requester(&self.requester, &self.reason);
        if let Some(m) = self.metadata.as_object().filter(|m| !m.is_empty()) {
            for (k, v) in m {
                println!("  {k:<9}  {v}");
            }
        }
        print_approvals(self.approvals_count, self.quorum, &self.approvals);
        println!(
            "created    {}  expires {}",
            self.created_at, self.expires_at
        );
        if self.can_decide {
            println!("you can approve or reject this request");
        }
    }
}

impl Pending for ChangeView {
    const PATH: &'static str = "/v1/policy-changes";
    const NOUN: &'static str = "change";
    type List = ChangeList;

    fn items(list: &ChangeList) -> &[Self] {
        &list.changes
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn approvals_count(&self) -> u32 {
        self.approvals_count
    }
    fn quorum(&self) -> u32 {
        self.quorum
    }

    fn print_list(items: &[Self]) {
        for ch in items {
            println!(
                "{:<36}  {:<10} {:<16} {}/{}  {}",
                ch.id,
                ch.status,
                ch.key_name,
                ch.approvals_count,
                ch.quorum,
                json_text(&ch.weakens)
            );
        }
    }

    fn print(&self) {
        println!("change     {}", self.id);
        println!("status     {}", self.status);
        println!("key        {}", self.key_name);
        print_requester(&self.requester, &self.reason);
        println!("now        {}", json_text(&self.base_policy));
        println!("proposed   {}", json_text(&self.policy));
        println!("weakens    {}", json_text(&self.weakens));
        print_approvals(self.approvals_count, self.quorum, &self.approvals);
        if self.can_decide {
            println!("you can approve or reject this change");
        }
    }
}

/// Compact JSON as the API has it (keys sorted, as the keyserver's documents read).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

fn print_requester(requester: &Actor, reason: &str) {
    println!("requester  {}", output::who(requester));
    println!("reason     {}", terminal_safe(reason));
}

fn print_approvals(count: u32, quorum: u32, approvals: &[Approval]) {
    println!("approvals  {count}/{quorum}");
    for a in approvals {
        println!(
            "  {:<8} {} {} {}",
            a.decision,
            output::who(&a.approver),
            a.at,
            terminal_safe(&a.comment)
        );
    }
}

pub async fn approvals(c: Client, cmd: ApprovalsCommand) -> Result<ExitCode> {
    run::<RequestView>(c, cmd.into()).await
}

pub async fn policy_changes(c: Client, cmd: PolicyChangesCommand) -> Result<ExitCode> {
    run::<ChangeView>(c, cmd.into()).await
}

async fn run<T: Pending>(mut c: Client, action: Action) -> Result<ExitCode> {
    match action {
        Action::List { status } => {
            let path = if status == "all" {
                T::PATH.to_owned()
            } else {
                format!("{}?status={status}", T::PATH)
            };
            let r: Reply<T::List> = c.fetch(Method::GET, &path).await?;
            output::emit(&r.raw, || T::print_list(T::items(&r.body)));
        }
        Action::Show { id } => {
            let r: Reply<T> = c.fetch(Method::GET, &format!("{}/{id}", T::PATH)).await?;
            output::emit(&r.raw, || r.body.print());
        }
        Action::Decide {
            id,
            approve,
            comment,
        } => {
            if !approve && comment.trim().is_empty() {
                bail!("a rejection needs --comment");
            }
            let verb = if approve { "approve" } else { "reject" };
            let r: Reply<T> = c
                .call(
                    Method::POST,
                    &format!("{}/{id}/{verb}", T::PATH),
                    Some(&Decision { comment }),
                )
                .await?;
            let text = if approve {
                format!(
                    "approved: {} ({}/{} approvals)",
                    r.body.status(),
                    r.body.approvals_count(),
                    r.body.quorum()
                )
            } else {
                format!("{} {}", T::NOUN, r.body.status())
            };
            output::note(&r.raw, &text);
        }
        Action::Cancel { id } => {
            let r: Reply<T> = c
                .fetch(Method::POST, &format!("{}/{id}/cancel", T::PATH))
                .await?;
            output::note(&r.raw, &format!("{} {}", T::NOUN, r.body.status()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! A key's approval policy, and which changes to it weaken four-eyes signing.
//!
//! Plain rules over domain types: the HTTP layer decides who may make a weakening
//! change, the store checks at commit that the policy compared against is still the one
//! in force.

use serde::{Deserialize, Serialize};

/// How signing with a key is governed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    /// Approvals needed before a signature is made (M of the eligible approvers); 0 = none.
    pub approvals_required: u32,
    /// How long a signing request waits before it expires.
    pub approval_ttl_secs: u32,
    /// Subjects allowed to approve; empty means any subject with the approver role on the key.
    pub approver_subjects: Vec<String>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            approvals_required: 0,
            approval_ttl_secs: 86_400,
            approver_subjects: Vec::new(),
        }
    }
}

/// One way a policy change makes signing with the key easier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weakening {
    /// Fewer approvals (down to none).
    FewerApprovals,
    /// Someone may approve who could not before: a subject added to the list, or the
    /// list emptied (any approver of the key).
    WiderApprovers,
    /// Requests wait longer for their approvals.
    LongerTtl,
}

impl Weakening {
    pub fn as_str(self) -> &'static str {
        match self {
            Weakening::FewerApprovals => "fewer_approvals",
            Weakening::WiderApprovers => "wider_approvers",
            Weakening::LongerTtl => "longer_ttl",
        }
    }
}

impl std::fmt::Display for Weakening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Weakening::FewerApprovals => "fewer approvals",
            Weakening::WiderApprovers => "approvers who could not approve before",
            Weakening::LongerTtl => "a longer approval TTL",
        })
    }
}

impl KeyPolicy {
    /// The ways `next` is weaker than `self`; empty when it is as strong or stronger.
    ///
    /// A policy that needs no approval has no four eyes to weaken, so every change away
    /// from it is immediate. The approver set only ever narrows safely: an approver vote
    /// already needs the approver role on the key, so a named list is a subset of "any",
    /// and adding a name lets in someone new (possibly a subject the caller controls).
    pub fn weakenings(&self, next: &KeyPolicy) -> Vec<Weakening> {
        if self.approvals_required == 0 {
            return Vec::new();
        }
        let mut w = Vec::new();
        if next.approvals_required < self.approvals_required {
            w.push(Weakening::FewerApprovals);
        }
        let narrower = !next.approver_subjects.is_empty()
            && (self.approver_subjects.is_empty()
                || next
                    .approver_subjects
                    .iter()
                    .all(|s| self.approver_subjects.contains(s)));
        if next.approver_subjects != self.approver_subjects && !narrower {
            w.push(Weakening::WiderApprovers);
        }
        if next.approval_ttl_secs > self.approval_ttl_secs {
            w.push(Weakening::LongerTtl);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: u32, ttl: u32, approvers: &[&str]) -> KeyPolicy {
        KeyPolicy {
            approvals_required: m,
            approval_ttl_secs: ttl,
            approver_subjects: approvers.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn weakenings() {
        use Weakening::*;
        let cur = p(2, 3600, &["a", "b", "c"]);
        assert_eq!(cur.weakenings(&cur), vec![]);
        assert_eq!(cur.weakenings(&p(3, 60, &["a", "b", "c"])), vec![]);
        assert_eq!(cur.weakenings(&p(2, 3600, &["a", "b"])), vec![]);
        assert_eq!(
            cur.weakenings(&p(0, 3600, &["a", "b", "c"])),
            vec![FewerApprovals]
        );
        assert_eq!(
            cur.weakenings(&p(2, 3600, &["a", "d"])),
            vec![WiderApprovers]
        );
        assert_eq!(
            cur.weakenings(&p(2, 3600, &["a", "b", "c", "d"])),
            vec![WiderApprovers]
        );
        assert_eq!(cur.weakenings(&p(2, 3600, &[])), vec![WiderApprovers]);
        assert_eq!(
            cur.weakenings(&p(2, 7200, &["a", "b", "c"])),
            vec![LongerTtl]
        );
        assert_eq!(
            cur.weakenings(&p(1, 7200, &[])),
            vec![FewerApprovals, WiderApprovers, LongerTtl]
        );
        // "Any approver" narrowed to a list is no weakening.
        assert_eq!(p(1, 3600, &[]).weakenings(&p(1, 3600, &["x"])), vec![]);
        // No approval needed: nothing to weaken.
        assert_eq!(p(0, 3600, &["a"]).weakenings(&p(0, 9000, &["z"])), vec![]);
    }
}

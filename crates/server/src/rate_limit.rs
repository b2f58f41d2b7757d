//! Per-subject rate limits on signatures (and signing requests) and certificates.
//!
//! A limit belongs to a subject, shared by every caller that matches it: the
//! configuration's default applies to each subject on its own, and an entry for one
//! subject (by id or name) replaces it. A request is charged to the subjects whose
//! grants allow it (the signer role on the key, the provisioner role on the profile,
//! or admin); when several do, each must have room, so the strictest applies. The
//! limiter is GCRA (`governor`): a subject limited to N per minute may use N at once,
//! then one more every 60/N seconds.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use influxion_store::SubjectRecord;

/// Limits per minute; `None` is unlimited (or, in a subject's entry, the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerMinute {
    pub signatures: Option<NonZeroU32>,
    pub certificates: Option<NonZeroU32>,
}

/// The configuration: a default for every subject, and entries that replace it for
/// one subject, keyed by the subject's id or its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub default: PerMinute,
    pub subjects: BTreeMap<String, PerMinute>,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// A signature, or a signing request on a key that needs approval.
    Sign,
    /// A certificate issued from a profile (API or EST).
    Certificate,
}

impl Operation {
    /// The metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Operation::Sign => "sign",
            Operation::Certificate => "certificate",
        }
    }

    /// What the problem's detail calls it.
    pub(crate) fn counted(self) -> &'static str {
        match self {
            Operation::Sign => "signatures",
            Operation::Certificate => "certificates",
        }
    }

    fn of(self, p: &PerMinute) -> Option<NonZeroU32> {
        match self {
            Operation::Sign => p.signatures,
            Operation::Certificate => p.certificates,
        }
    }
}

/// A refusal: which subject's limit, what it allows, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) subject: String,
    pub(crate) per_minute: u32,
    /// Whole seconds, at least 1 (the `Retry-After` header).
    pub(crate) retry_after_secs: u64,
}

/// Check the keyed limiter's size this often, and forget subjects whose buckets are
/// full again (their state is the same as a new one's).
const RETAIN_EVERY: u64 = 1024;

/// The buckets of one operation: the default's, keyed by subject id, and one per
/// configured subject.
struct Buckets {
    default: Option<(NonZeroU32, DefaultKeyedRateLimiter<String>)>,
    subjects: HashMap<String, (NonZeroU32, DefaultDirectRateLimiter)>,
    checks: AtomicU64,
}

impl Buckets {
    fn new(op: Operation, cfg: &RateLimits) -> Self {
        Self {
            default: op
                .of(&cfg.default)
                .map(|n| (n, RateLimiter::keyed(Quota::per_minute(n)))),
            subjects: cfg
                .subjects
                .iter()
                .filter_map(|(k, p)| {
                    op.of(p)
                        .map(|n| (k.clone(), (n, RateLimiter::direct(Quota::per_minute(n)))))
                })
                .collect(),
            checks: AtomicU64::new(0),
        }
    }

    fn any(&self) -> bool {
        self.default.is_some() || !self.subjects.is_empty()
    }

    fn check(&self, s: &SubjectRecord) -> Result<(), Limited> {
        let now = DefaultClock::default().now();
        // An entry by id wins over one by name.
        let own = self
            .subjects
            .get(&s.id)
            .or_else(|| self.subjects.get(&s.name));
        let (n, refused) = match (own, &self.default) {
            (Some((n, l)), _) => (n, l.check().err()),
            (None, Some((n, l))) => {
                let r = l.check_key(&s.id).err();
                self.retain(l);
                (n, r)
            }
            (None, None) => return Ok(()),
        };
        match refused {
            None => Ok(()),
            Some(not_until) => Err(Limited {
                subject: s.name.clone(),
                per_minute: n.get(),
                retry_after_secs: whole_seconds(not_until.wait_time_from(now)),
            }),
        }
    }

    /// Bound the keyed limiter's memory: subjects are few, but deleted ones would stay.
    fn retain(&self, l: &DefaultKeyedRateLimiter<String>) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    let up = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    up.max(1)
}

/// The limiter of a running keyserver. Without configuration, nothing is limited.
pub struct SubjectLimiter {
    config: RateLimits,
    signatures: Buckets,
    certificates: Buckets,
}

impl Default for SubjectLimiter {
    fn default() -> Self {
        Self::new(RateLimits::default())
    }
}

impl SubjectLimiter {
    pub fn new(config: RateLimits) -> Self {
        Self {
            signatures: Buckets::new(Operation::Sign, &config),
            certificates: Buckets::new(Operation::Certificate, &config),
            config,
        }
    }

    pub fn config(&self) -> &RateLimits {
        &self.config
    }

    fn buckets(&self, op: Operation) -> &Buckets {
        match op {
            Operation::Sign => &self.signatures,
            Operation::Certificate => &self.certificates,
        }
    }

    /// Whether any limit applies to `op` (if not, no subject needs to be looked up).
    pub(crate) fn limits(&self, op: Operation) -> bool {
        self.buckets(op).any()
    }

    /// Take one `op` from each of `subjects`; the first without room refuses (a cell
    /// taken from a subject before it is not given back: refusals err on the strict
    /// side).
    pub(crate) fn check<'a>(
        &self,
        op: Operation,
        subjects: impl IntoIterator<Item = &'a SubjectRecord>,
    ) -> Result<(), Limited> {
        let b = self.buckets(op);
        subjects.into_iter().try_for_each(|s| b.check(s))
    }

    /// Configured subject entries that name no subject of `subjects` (by id or name):
    /// probably a typo, reported at start.
    pub fn unmatched<'a>(&'a self, subjects: &[SubjectRecord]) -> Vec<&'a str> {
        self.config
            .subjects
            .keys()
            .filter(|k| !subjects.iter().any(|s| &s.id == *k || &s.name == *k))
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str, name: &str) -> SubjectRecord {
        SubjectRecord {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            rules: Default::default(),
            grants: vec![],
            created_at: String::new(),
            created_by: influxion_core::Actor::id_only("test"),
        }
    }

    fn n(v: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(v)
    }

    #[test]
    fn nothing_is_limited_without_configuration() {
        let l = SubjectLimiter::default();
        assert!(!l.limits(Operation::Sign));
        assert!(!l.limits(Operation::Certificate));
        let s = subject("s1", "ci");
        for _ in 0..10_000 {
            assert!(l.check(Operation::Sign, [&s]).is_ok());
        }
    }

    #[test]
    fn the_default_applies_to_each_subject_apart() {
        let l = SubjectLimiter::new(RateLimits {
            default: PerMinute {
                signatures: n(3),
                certificates: None,
            },
            subjects: BTreeMap::new(),
        });
        let (a, b) = (subject("s1", "a"), subject("s2", "b"));
        for _ in 0..3 {
            assert!(l.check(Operation::Sign, [&a]).is_ok());
        }
        let refused = l.check(Operation::Sign, [&a]).unwrap_err();
        assert_eq!(refused.subject, "a");
        assert_eq!(refused.per_minute, 3);
        // One more every 20 seconds.
        assert!((1..=20).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(l.check(Operation::Sign, [&b]).is_ok());
        // Certificates have no limit here.
        assert!(l.check(Operation::Certificate, [&a]).is_ok());
    }

    #[test]
    fn a_subject_entry_by_id_or_name_replaces_the_default() {
        let mut subjects = BTreeMap::new();
        subjects.insert(
            "line-1".to_owned(),
            PerMinute {
                signatures: n(1),
                certificates: n(2),
            },
        );
        subjects.insert(
            "s3".to_owned(),
            PerMinute {
                signatures: None,
                certificates: n(1),
            },
        );
        let l = SubjectLimiter::new(RateLimits {
            default: PerMinute {
                signatures: n(100),
                certificates: n(100),
            },
            subjects,
        });
        let line = subject("s1", "line-1");
        assert!(l.check(Operation::Sign, [&line]).is_ok());
        let e = l.check(Operation::Sign, [&line]).unwrap_err();
        assert_eq!(e.per_minute, 1);
        assert!((59..=60).contains(&e.retry_after_secs), "{e:?}");
        assert!(l.check(Operation::Certificate, [&line]).is_ok());
        assert!(l.check(Operation::Certificate, [&line]).is_ok());
        assert!(l.check(Operation::Certificate, [&line]).is_err());
        // By id; signatures not named there fall back to the default.
        let other = subject("s3", "other");
        assert!(l.check(Operation::Certificate, [&other]).is_ok());
        assert!(l.check(Operation::Certificate, [&other]).is_err());
        for _ in 0..50 {
            assert!(l.check(Operation::Sign, [&other]).is_ok());
        }
        assert_eq!(
            l.unmatched(&[line, other, subject("s4", "x")]),
            Vec::<&str>::new()
        );
        assert_eq!(l.unmatched(&[]), vec!["line-1", "s3"]);
    }

    #[test]
    fn every_charged_subject_must_have_room() {
        let mut subjects = BTreeMap::new();
        subjects.insert(
            "strict".to_owned(),
            PerMinute {
                signatures: n(1),
                certificates: None,
            },
        );
        let l = SubjectLimiter::new(RateLimits {
            default: PerMinute::default(),
            subjects,
        });
        let (loose, strict) = (subject("s1", "loose"), subject("s2", "strict"));
        assert!(l.check(Operation::Sign, [&loose, &strict]).is_ok());
        let e = l.check(Operation::Sign, [&loose, &strict]).unwrap_err();
        assert_eq!(e.subject, "strict");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(10)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(6)), 6);
    }
}

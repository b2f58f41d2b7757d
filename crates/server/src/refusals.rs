//! How many refusals reach the audit log.
//!
//! Refusals are written through the same hash-chained writer as signatures. Without a
//! bound, anyone on the network (no token) or any holder of a valid token that matches
//! no subject could loop a refused call and fill the disk or crowd out signing records.
//! What is not written is counted, and the count is carried into the next record that
//! is, so the log still says how much was refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A one-second window with a count, and what it has suppressed since its last record.
#[derive(Default)]
struct Window {
    start: Option<Instant>,
    count: u32,
    suppressed: u64,
}

impl Window {
    fn roll(&mut self, now: Instant) {
        if self
            .start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.start = Some(now);
            self.count = 0;
        }
    }

    fn full(&self, limit: u32) -> bool {
        self.count >= limit
    }

    fn stale(&self, now: Instant) -> bool {
        self.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
    }
}

#[derive(Default)]
struct Authenticated {
    overall: Window,
    principals: HashMap<String, Window>,
}

/// The refusal budget: anonymous refusals share one window; refusals of valid-token
/// callers have a window overall and one per principal.
#[derive(Default)]
pub struct RefusalLimiter {
    anonymous: Mutex<Window>,
    authenticated: Mutex<Authenticated>,
}

/// A refusal that is to be recorded, with what was suppressed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Refusals of this principal (or, for anonymous callers, of anyone without a
    /// valid token) not recorded since its last recorded one.
    pub suppressed_before: u64,
    /// Refusals of all valid-token callers not recorded since the last recorded one
    /// (0 for anonymous refusals).
    pub suppressed_total: u64,
}

impl RefusalLimiter {
    /// Anonymous refusals recorded per second.
    pub const PER_SECOND: u32 = 50;
    /// Refusals of valid-token callers recorded per second, all principals together.
    pub const AUTHENTICATED_PER_SECOND: u32 = 50;
    /// Refusals recorded per second for any one principal.
    pub const PER_PRINCIPAL_PER_SECOND: u32 = 10;
    /// Principals tracked at once; beyond this, stale windows are dropped first.
    const MAX_TRACKED: usize = 10_000;

    /// `Some(n)` when this anonymous refusal should be recorded, with `n` refusals
    /// suppressed since the last recorded one; `None` when it should only be counted.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut w) = self.anonymous.lock() else {
            return Some(0);
        };
        w.roll(Instant::now());
        if w.full(Self::PER_SECOND) {
            w.suppressed += 1;
            return None;
        }
        w.count += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    /// Whether a refusal of the valid-token caller `principal` (its audit id) should
    /// be recorded.
    pub fn admit_principal(&self, principal: &str) -> Option<Admitted> {
        let Ok(mut a) = self.authenticated.lock() else {
            return Some(Admitted {
                suppressed_before: 0,
                suppressed_total: 0,
            });
        };
        let now = Instant::now();
        let a = &mut *a;
        a.overall.roll(now);
        if !a.principals.contains_key(principal) && a.principals.len() >= Self::MAX_TRACKED {
            // Keep only windows that still limit someone or carry a count to report.
            a.principals
                .retain(|_, w| !w.stale(now) || w.suppressed > 0);
        }
        let tracked =
            a.principals.contains_key(principal) || a.principals.len() < Self::MAX_TRACKED;
        if !tracked {
            // Too many distinct principals at once: count, record nothing.
            a.overall.suppressed += 1;
            return None;
        }
        let w = a.principals.entry(principal.to_owned()).or_default();
        w.roll(now);
        if w.full(Self::PER_PRINCIPAL_PER_SECOND) || a.overall.full(Self::AUTHENTICATED_PER_SECOND)
        {
            w.suppressed += 1;
            a.overall.suppressed += 1;
            return None;
        }
        w.count += 1;
        a.overall.count += 1;
        Some(Admitted {
            suppressed_before: std::mem::take(&mut w.suppressed),
            suppressed_total: std::mem::take(&mut a.overall.suppressed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RefusalLimiter;

    #[test]
    fn one_principal_cannot_use_the_whole_budget() {
        let l = RefusalLimiter::default();
        let mut recorded = 0;
        for _ in 0..100 {
            if l.admit_principal("t/looper").is_some() {
                recorded += 1;
            }
        }
        assert_eq!(recorded, RefusalLimiter::PER_PRINCIPAL_PER_SECOND);
        // Another principal is still recorded, and learns of the suppressed total.
        let other = l
            .admit_principal("t/other")
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(other.suppressed_before, 0);
        assert_eq!(
            other.suppressed_total,
            100 - u64::from(RefusalLimiter::PER_PRINCIPAL_PER_SECOND)
        );
    }

    #[test]
    fn overall_budget_bounds_many_principals() {
        let l = RefusalLimiter::default();
        let recorded = (0..500)
            .filter(|i| l.admit_principal(&format!("t/p{i}")).is_some())
            .count();
        assert_eq!(recorded, RefusalLimiter::AUTHENTICATED_PER_SECOND as usize);
    }

    #[test]
    fn anonymous_and_authenticated_budgets_are_apart() {
        let l = RefusalLimiter::default();
        for _ in 0..1000 {
            l.admit();
        }
        assert!(l.admit_principal("t/p").is_some());
    }
}

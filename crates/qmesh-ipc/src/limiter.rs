//! Slowing down password guessing: a count of failed logins per remote
//! address and user name tried, sans-IO (time comes in as an argument,
//! nothing sleeps here).
//!
//! The rule, for each remote IP address and user name:
//!
//! * the first [`FailurePolicy::free_failures`] failures cost nothing (a
//!   user mistyping a password is not punished);
//! * each failure past those makes the address wait before its next attempt
//!   is even checked: [`FailurePolicy::first_delay`], doubling per further
//!   failure, at most [`FailurePolicy::max_delay`];
//! * a success forgets that user's failures from that address, and only
//!   those: were a success to clear the address's count, anyone holding one
//!   account could guess every other user's password at full speed (four
//!   guesses, one good login, again); and one user's typos do not hold
//!   back the others logging in from the same host (a one-host estate
//!   logs in from `127.0.0.1` throughout). [`FailurePolicy::forget_after`]
//!   without a failure forgets them too.
//!
//! An attempt made while the address must wait is refused without looking
//! at its credentials (and does not lengthen the wait: a client retrying in
//! a loop is held off, not locked out for ever). The table holds at most
//! [`MAX_TRACKED_ADDRESSES`] addresses.
//!
//! One limiter is shared by a process's kdb+ IPC port and its HTTP port, so
//! guesses on either door count together. Users of this module (the IPC
//! server's handshake, the process shell's HTTP layer) hold it in a
//! `Mutex` and call it with the current [`Instant`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest user name kept in the table, in bytes: a longer one (from a
/// client, unchecked) counts under its first this many bytes.
pub const MAX_LIMITED_USER_BYTES: usize = 64;

/// Most (address, user) pairs whose failures are remembered at once. Past it, the
/// entries whose wait is over and that failed longest ago are dropped first.
/// 64 Ki entries of ~64 bytes: a few MiB at worst, whatever a scan of the
/// whole IPv4 space throws at the port.
pub const MAX_TRACKED_ADDRESSES: usize = 64 * 1024;

/// Failures without a delay, before the first one: a person mistyping.
pub const DEFAULT_FREE_FAILURES: u32 = 5;

/// The wait after the first failure past the free ones.
pub const DEFAULT_FIRST_DELAY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts of one address.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);

/// Time without a failure after which an address's failures are forgotten.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// How failures are counted and punished; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures allowed without a wait.
    pub free_failures: u32,
    /// The wait after the first failure past the free ones.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures are forgotten after this long without one.
    pub forget_after: Duration,
}

impl Default for FailurePolicy {
    fn default() -> FailurePolicy {
        FailurePolicy {
            free_failures: DEFAULT_FREE_FAILURES,
            first_delay: DEFAULT_FIRST_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            forget_after: DEFAULT_FORGET_AFTER,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// No attempt is checked before this.
    blocked_until: Instant,
}

/// What an address may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check its credentials.
    Check,
    /// Refuse without checking; it may try again after this long.
    Wait(Duration),
}

/// Failed logins per remote address; see the module docs.
#[derive(Debug)]
pub struct FailureLimiter {
    policy: FailurePolicy,
    entries: HashMap<(IpAddr, Box<[u8]>), Entry>,
}

impl Default for FailureLimiter {
    fn default() -> FailureLimiter {
        FailureLimiter::new(FailurePolicy::default())
    }
}

impl FailureLimiter {
    /// An empty table with `policy`.
    pub fn new(policy: FailurePolicy) -> FailureLimiter {
        FailureLimiter { policy, entries: HashMap::new() }
    }

    /// Whether an attempt from `ip` as `user` at `now` may be checked.
    pub fn verdict(&mut self, ip: IpAddr, user: &str, now: Instant) -> Verdict {
        let key = key(ip, user);
        let Some(e) = self.entries.get(&key) else { return Verdict::Check };
        if now.saturating_duration_since(e.last_failure) >= self.policy.forget_after {
            self.entries.remove(&key);
            return Verdict::Check;
        }
        match e.blocked_until.checked_duration_since(now) {
            Some(wait) if !wait.is_zero() => Verdict::Wait(wait),
            _ => Verdict::Check,
        }
    }

    /// `ip` gave bad credentials for `user` at `now`; returns the wait now
    /// imposed on that pair (zero while its failures are free).
    pub fn failed(&mut self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let key = key(ip, user);
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_TRACKED_ADDRESSES {
            self.evict(now);
        }
        let policy = self.policy;
        let e =
            self.entries.entry(key).or_insert(Entry { failures: 0, last_failure: now, blocked_until: now });
        if now.saturating_duration_since(e.last_failure) >= policy.forget_after {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let wait = policy.delay(e.failures);
        e.blocked_until = now + wait;
        wait
    }

    /// `user` logged in from `ip`: that pair's failures are forgotten (no
    /// other user's).
    pub fn succeeded(&mut self, ip: IpAddr, user: &str) {
        self.entries.remove(&key(ip, user));
    }

    /// How many (address, user) pairs have failures remembered.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Makes room for one entry: drops forgotten ones, then (if still full)
    /// the one whose last failure is oldest.
    fn evict(&mut self, now: Instant) {
        let forget = self.policy.forget_after;
        self.entries.retain(|_, e| now.saturating_duration_since(e.last_failure) < forget);
        if self.entries.len() >= MAX_TRACKED_ADDRESSES
            && let Some(oldest) =
                self.entries.iter().min_by_key(|(_, e)| e.last_failure).map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
    }
}

/// The table's key: the address and the user name's first
/// [`MAX_LIMITED_USER_BYTES`] bytes.
fn key(ip: IpAddr, user: &str) -> (IpAddr, Box<[u8]>) {
    let b = user.as_bytes();
    (ip, b[..b.len().min(MAX_LIMITED_USER_BYTES)].into())
}

impl FailurePolicy {
    /// The wait after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(past) = failures.checked_sub(self.free_failures).filter(|&n| n > 0) else {
            return Duration::ZERO;
        };
        let doublings = (past - 1).min(31);
        self.first_delay.saturating_mul(1u32 << doublings).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn free_failures_then_doubling_waits_capped() {
        let p = FailurePolicy::default();
        let d: Vec<u64> = (0..=14).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(d, vec![0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.delay(u32::MAX), DEFAULT_MAX_DELAY);
    }

    #[test]
    fn an_address_waits_after_its_free_failures_and_others_do_not() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for _ in 0..DEFAULT_FREE_FAILURES {
            assert_eq!(l.verdict(ip(1), "u", t0), Verdict::Check);
            assert_eq!(l.failed(ip(1), "u", t0), Duration::ZERO);
        }
        assert_eq!(l.failed(ip(1), "u", t0), Duration::from_secs(1));
        assert_eq!(l.verdict(ip(1), "u", t0), Verdict::Wait(Duration::from_secs(1)));
        assert_eq!(
            l.verdict(ip(1), "u", t0 + Duration::from_millis(400)),
            Verdict::Wait(Duration::from_millis(600))
        );
        assert_eq!(l.verdict(ip(2), "u", t0), Verdict::Check, "another address is not slowed");
        // once the wait is over it may try again; another failure doubles it
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.verdict(ip(1), "u", t1), Verdict::Check);
        assert_eq!(l.failed(ip(1), "u", t1), Duration::from_secs(2));
        assert_eq!(l.verdict(ip(1), "u", t1 + Duration::from_secs(1)), Verdict::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn success_forgets_only_its_own_users_failures_and_time_forgets_all() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for _ in 0..=DEFAULT_FREE_FAILURES {
            l.failed(ip(1), "bob", t0);
        }
        assert!(matches!(l.verdict(ip(1), "bob", t0), Verdict::Wait(_)));
        // alice logging in from the same address neither waits nor clears bob's count
        assert_eq!(l.verdict(ip(1), "alice", t0), Verdict::Check);
        l.succeeded(ip(1), "alice");
        assert!(
            matches!(l.verdict(ip(1), "bob", t0), Verdict::Wait(_)),
            "one account's login clears no other's guesses"
        );
        l.succeeded(ip(1), "bob");
        assert_eq!(l.verdict(ip(1), "bob", t0), Verdict::Check);
        assert_eq!(l.tracked(), 0);

        for _ in 0..=DEFAULT_FREE_FAILURES {
            l.failed(ip(3), "u", t0);
        }
        let later = t0 + DEFAULT_FORGET_AFTER;
        assert_eq!(l.verdict(ip(3), "u", later), Verdict::Check);
        assert_eq!(l.tracked(), 0, "a forgotten entry is dropped");
        // counting starts again from zero
        assert_eq!(l.failed(ip(3), "u", later), Duration::ZERO);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::default();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 10) {
            let a = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            l.failed(a, "u", t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(l.tracked(), MAX_TRACKED_ADDRESSES);
        // the oldest went first
        assert!(!l.entries.contains_key(&key(IpAddr::from([10, 0, 0, 0]), "u")));
        assert!(l.entries.contains_key(&key(IpAddr::from((0x0a00_0000u32 + 10).to_be_bytes()), "u")));
        // a long user name counts under its first bytes
        let long = "x".repeat(10 * MAX_LIMITED_USER_BYTES);
        assert_eq!(key(ip(1), &long).1.len(), MAX_LIMITED_USER_BYTES);
    }
}

//! The restart policy: when a process that died is started again. Sans-IO:
//! the caller passes the time (a [`Duration`] since any fixed instant) and
//! acts on the answer, so the policy is tested without processes or clocks.
//!
//! Exponential backoff: the first restart waits [`Backoff::initial`], each
//! further one twice the last, up to [`Backoff::max`]. A process that stayed
//! up for [`Backoff::stable_after`] counts as healthy again, so its next
//! crash waits the initial delay. It never gives up: a supervisor of a kdb+
//! estate keeps trying, at most every `max`, and says so each time.

use std::time::Duration;

/// The backoff's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first restart after a stable run.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Uptime after which the next crash starts the backoff over.
    pub stable_after: Duration,
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Start the process again at this time.
    pub at: Duration,
    /// The delay from the exit to `at`.
    pub delay: Duration,
    /// The restart's number for this process (1 for the first, counting
    /// every restart since the supervisor started).
    pub count: u64,
}

/// One process's restart state.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    backoff: Backoff,
    /// Restarts since the last stable run: the exponent of the next delay.
    streak: u32,
    /// Restarts in all.
    count: u64,
    /// When the current run started (`None` while not running).
    started: Option<Duration>,
}

impl RestartPolicy {
    /// A policy for a process not yet started.
    pub fn new(backoff: Backoff) -> RestartPolicy {
        RestartPolicy { backoff, streak: 0, count: 0, started: None }
    }

    /// The process was started at `now`.
    pub fn started(&mut self, now: Duration) {
        self.started = Some(now);
    }

    /// The process exited (or was killed) at `now` without being asked to:
    /// when to start it again.
    pub fn exited(&mut self, now: Duration) -> Restart {
        if let Some(started) = self.started.take()
            && now.saturating_sub(started) >= self.backoff.stable_after
        {
            self.streak = 0;
        }
        let delay = self.delay(self.streak);
        self.streak = self.streak.saturating_add(1);
        self.count += 1;
        Restart { at: now.saturating_add(delay), delay, count: self.count }
    }

    /// Restarts so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `initial × 2^n`, at most `max`.
    fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.backoff.initial.saturating_mul(factor).min(self.backoff.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(8),
        stable_after: Duration::from_secs(60),
    };

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn delays_double_up_to_the_max() {
        let mut p = RestartPolicy::new(B);
        let mut now = s(0.0);
        let mut delays = Vec::new();
        for _ in 0..8 {
            p.started(now);
            now += s(1.0); // dies a second after each start
            let r = p.exited(now);
            assert_eq!(r.at, now + r.delay);
            delays.push(r.delay.as_secs_f64());
            now = r.at;
        }
        assert_eq!(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]);
        assert_eq!(p.count(), 8);
    }

    #[test]
    fn a_stable_run_starts_the_backoff_over_but_keeps_the_count() {
        let mut p = RestartPolicy::new(B);
        p.started(s(0.0));
        assert_eq!(p.exited(s(1.0)).delay, s(0.5));
        p.started(s(1.5));
        assert_eq!(p.exited(s(2.0)).delay, s(1.0));
        p.started(s(3.0));
        // up for exactly stable_after: stable
        let r = p.exited(s(63.0));
        assert_eq!((r.delay, r.count), (s(0.5), 3));
        p.started(r.at);
        assert_eq!(p.exited(r.at + s(59.9)).delay, s(1.0));
    }

    #[test]
    fn exit_before_start_or_twice_still_backs_off() {
        // a start that failed (spawn error) is reported as an exit with no
        // start: it counts and backs off like any other
        let mut p = RestartPolicy::new(B);
        assert_eq!(p.exited(s(0.0)).delay, s(0.5));
        assert_eq!(p.exited(s(0.5)).delay, s(1.0));
    }

    #[test]
    fn huge_streaks_do_not_overflow() {
        let mut p = RestartPolicy::new(Backoff { max: Duration::MAX, ..B });
        let mut last = Duration::ZERO;
        for i in 0..100u32 {
            let r = p.exited(s(f64::from(i)));
            assert!(r.delay >= last);
            last = r.delay;
        }
    }
}

//! The data model of supervised processes: slots, generations, worker states.
//!
//! A pid lives in exactly one place from fork to reap: a [`Worker`] in the
//! table. When the process is reaped the worker is removed, so nothing can
//! signal a pid that may have been reused. What may outlive a worker's leader
//! is its process group (a shell wrapper's children); that is tracked as a
//! [`Lingering`] group, by pgid only. This module makes no syscalls and
//! never reads the clock.

use std::fmt;
use std::time::{Duration, Instant};

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signaled(i32),
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "status {c}"),
            ExitStatus::Signaled(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "signal {}", sig.as_str().trim_start_matches("SIG")),
                Err(_) => write!(f, "signal {s}"),
            },
        }
    }
}

/// Where a worker is in its life. The pid is in [`Worker`], which exists
/// only while the process does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    /// Started, not ready yet: ready at `ready_at` in the `delay:` mode (or
    /// on READY=1); a failed boot if still here at `boot_deadline`.
    Booting {
        ready_at: Option<Instant>,
        boot_deadline: Instant,
    },
    /// Serving since `since`.
    Ready { since: Instant },
    /// Sent the stop signal; at `kill_at` its process group gets SIGKILL.
    Stopping { kill_at: Instant, killed: bool },
}

/// One live child process running the user's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub slot: usize,
    pub generation: u64,
    pub pid: i32,
    pub spawned_at: Instant,
    pub state: WorkerState,
    /// The latest `STATUS=` it sent.
    pub status: Option<String>,
    /// With `--watchdog`, after its first `WATCHDOG=1`: killed if no
    /// other comes by then.
    pub watchdog_deadline: Option<Instant>,
}

impl Worker {
    pub fn is_stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { .. })
    }

    /// The name log lines use: `worker 3 (pid 4121, gen 7)`.
    pub fn label(&self) -> String {
        format!("worker {} (pid {}, gen {})", self.slot, self.pid, self.generation)
    }
}

/// A process group sup may signal as a whole. Made only from the pid of a
/// process sup started as the leader of its own group (every worker and
/// helper is), so a group kill reaches that group and nothing else — and
/// can never be mistaken for a signal to one pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pgid(i32);

impl Pgid {
    /// The group led by `pid` (the pid of a process sup started).
    pub fn led_by(pid: i32) -> Pgid {
        Pgid(pid)
    }

    pub fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Pgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A process group whose leader has been reaped while other members remain
/// (a wrapper's children). It gets SIGKILL at `kill_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lingering {
    pub pgid: Pgid,
    pub slot: usize,
    pub kill_at: Instant,
}

/// Per-slot history: what survives the replacement of its worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Consecutive failed runs (exits before a healthy run, failed spawns).
    pub failures: u32,
    /// No spawn into this slot before this instant (crash backoff).
    pub not_before: Option<Instant>,
    /// A spawn was requested and its outcome has not come back yet.
    pub spawning: bool,
    /// How many times a worker of this slot was replaced after an exit.
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
}

/// Crash backoff: the first failure after a healthy run restarts at once,
/// then the delay doubles from `base` up to `cap`. A run longer than
/// `reset_after` counts as healthy and resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before the next spawn after `failures` consecutive failures.
    pub fn delay(&self, failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            n => {
                let doublings = (n - 2).min(16);
                self.base.saturating_mul(1 << doublings).min(self.cap)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::default();
        let delays: Vec<u64> = (1..=10).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.delay(u32::MAX), b.cap);
    }

    #[test]
    fn exit_status_reads_well() {
        assert_eq!(ExitStatus::Code(1).to_string(), "status 1");
        assert_eq!(ExitStatus::Signaled(9).to_string(), "signal KILL");
    }
}

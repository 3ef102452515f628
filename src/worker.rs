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

pub use crate::pid::{Pgid, Pid};

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// `dumped`: it was sent `--dump-signal` (a timeout), and `kill_at` is
    /// the end of `--dump-grace`.
    Stopping {
        kill_at: Instant,
        killed: bool,
        dumped: bool,
    },
}

/// One live child process running the user's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub slot: usize,
    pub generation: u64,
    pub pid: Pid,
    pub spawned_at: Instant,
    pub state: WorkerState,
    /// The latest `STATUS=` it sent.
    pub status: Option<String>,
    /// With `--watchdog`, after its first `WATCHDOG=1`: killed if no
    /// other comes by then.
    pub watchdog_deadline: Option<Instant>,
    /// With `--max-memory`: the latest sample of its process group's PSS,
    /// and how many samples in a row were above the limit.
    pub memory: Option<u64>,
    pub over_memory: u32,
    /// With `--max-age`: it has reached its age and is recycled when the
    /// surge allows.
    pub age_due: bool,
    /// It asked to be replaced (`X_SUP_RECYCLE=1`), after N requests, say.
    pub recycle_asked: bool,
}

impl Worker {
    /// A worker just started as `pid`: booting, ready after the `delay:`
    /// if there is one (or on READY=1), failed if not ready by the boot timeout.
    pub fn booting(
        slot: usize,
        generation: u64,
        pid: Pid,
        now: Instant,
        ready_delay: Option<Duration>,
        boot_timeout: Duration,
    ) -> Worker {
        Worker {
            slot,
            generation,
            pid,
            spawned_at: now,
            state: WorkerState::Booting {
                ready_at: ready_delay.map(|d| now + d),
                boot_deadline: now + boot_timeout,
            },
            status: None,
            watchdog_deadline: None,
            memory: None,
            over_memory: 0,
            age_due: false,
            recycle_asked: false,
        }
    }

    pub fn is_stopping(&self) -> bool {
        matches!(self.state, WorkerState::Stopping { .. })
    }

    /// The name log lines use: `worker 3 (pid 4121, gen 7)`.
    pub fn label(&self) -> String {
        format!("worker {} (pid {}, gen {})", self.slot, self.pid, self.generation)
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

/// One entry of the core's slot table: what the slot holds now, as one
/// state, and its history (what survives the replacement of its worker).
/// Every question the core asks about a slot is answered here in O(1).
/// Workers that are stopping belong to no slot's state: they are on their
/// way out and the slot is free for another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub state: SlotState,
    /// Consecutive failed runs (exits before a healthy run, failed spawns).
    pub failures: u32,
    /// How many times a worker of this slot was replaced after an exit.
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
}

/// What a slot holds. At most two live workers share a slot: the one
/// serving and its replacement; the hand-over rule stops the older once
/// the newer is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// No live worker; the next spawn not before `not_before` (crash backoff).
    Empty { not_before: Option<Instant> },
    /// A spawn of `generation` was asked for; its outcome has not come back.
    Spawning { generation: u64 },
    /// One live worker (booting or ready).
    Running { pid: Pid },
    /// A live worker and its replacement, still spawning or booting.
    Replacing { old: Pid, new: Replacement },
}

impl Default for SlotState {
    fn default() -> Self {
        SlotState::Empty { not_before: None }
    }
}

/// The newer worker of a [`SlotState::Replacing`] slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    Spawning { generation: u64 },
    Started { pid: Pid },
}

impl Slot {
    /// The live workers' pids, older first.
    pub fn live(&self) -> impl Iterator<Item = Pid> {
        let (a, b) = match self.state {
            SlotState::Empty { .. } | SlotState::Spawning { .. } => (None, None),
            SlotState::Running { pid } => (Some(pid), None),
            SlotState::Replacing {
                old,
                new: Replacement::Spawning { .. },
            } => (Some(old), None),
            SlotState::Replacing {
                old,
                new: Replacement::Started { pid },
            } => (Some(old), Some(pid)),
        };
        a.into_iter().chain(b)
    }

    /// Whether a spawn into this slot is under way (its outcome not back).
    pub fn is_spawning(&self) -> bool {
        matches!(
            self.state,
            SlotState::Spawning { .. }
                | SlotState::Replacing {
                    new: Replacement::Spawning { .. },
                    ..
                }
        )
    }

    /// A spawn of `generation` is asked for: into an empty slot, or as the
    /// replacement of its one live worker. False (and no change) otherwise.
    pub fn request_spawn(&mut self, generation: u64) -> bool {
        self.state = match self.state {
            SlotState::Empty { .. } => SlotState::Spawning { generation },
            SlotState::Running { pid } => SlotState::Replacing {
                old: pid,
                new: Replacement::Spawning { generation },
            },
            SlotState::Spawning { .. } | SlotState::Replacing { .. } => return false,
        };
        true
    }

    /// A process `pid` now runs in this slot: the spawn asked for, or an
    /// adopted worker. False (and no change) when the slot already holds
    /// two: the caller must stop `pid`.
    pub fn take(&mut self, pid: Pid) -> bool {
        self.state = match self.state {
            SlotState::Empty { .. } | SlotState::Spawning { .. } => SlotState::Running { pid },
            SlotState::Running { pid: old }
            | SlotState::Replacing {
                old,
                new: Replacement::Spawning { .. },
            } => SlotState::Replacing {
                old,
                new: Replacement::Started { pid },
            },
            SlotState::Replacing {
                new: Replacement::Started { .. },
                ..
            } => return false,
        };
        true
    }

    /// The spawn asked for failed: the slot is back to what it was.
    pub fn spawn_failed(&mut self) {
        self.state = match self.state {
            SlotState::Spawning { .. } => SlotState::default(),
            SlotState::Replacing {
                old,
                new: Replacement::Spawning { .. },
            } => SlotState::Running { pid: old },
            other => other,
        };
    }

    /// `pid` is no longer live here (it is stopping, or was reaped).
    pub fn release(&mut self, pid: Pid) {
        self.state = match self.state {
            SlotState::Running { pid: p } if p == pid => SlotState::default(),
            SlotState::Replacing { old, new } if old == pid => match new {
                Replacement::Spawning { generation } => SlotState::Spawning { generation },
                Replacement::Started { pid } => SlotState::Running { pid },
            },
            SlotState::Replacing {
                old,
                new: Replacement::Started { pid: p },
            } if p == pid => SlotState::Running { pid: old },
            other => other,
        };
    }

    /// An empty slot waits until `at` before its next spawn.
    pub fn back_off_until(&mut self, at: Instant) {
        if let SlotState::Empty { not_before } = &mut self.state {
            *not_before = Some(at);
        }
    }

    /// The backoff has passed: the slot may be filled.
    pub fn end_backoff(&mut self) {
        if let SlotState::Empty { not_before } = &mut self.state {
            *not_before = None;
        }
    }

    /// When an empty slot may be filled again, if it must wait.
    pub fn not_before(&self) -> Option<Instant> {
        match self.state {
            SlotState::Empty { not_before } => not_before,
            SlotState::Spawning { .. } | SlotState::Running { .. } | SlotState::Replacing { .. } => None,
        }
    }

    /// Forget the history (the slot was scaled away); what is under way stays.
    pub fn forget(&mut self) {
        *self = Slot {
            state: match self.state {
                SlotState::Empty { .. } => SlotState::default(),
                other => other,
            },
            ..Slot::default()
        };
    }
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

    fn slot(state: SlotState) -> Slot {
        Slot {
            state,
            ..Slot::default()
        }
    }

    const fn replacing(old: i32, new: Replacement) -> SlotState {
        SlotState::Replacing {
            old: Pid::from_raw(old),
            new,
        }
    }

    #[test]
    fn every_slot_transition() {
        use Replacement::{Spawning as NewSpawning, Started};
        use SlotState::{Empty, Running, Spawning};
        let empty = Empty { not_before: None };
        // A spawn is asked for: into an empty slot, or as a replacement.
        let cases_request = [
            (empty, Some(Spawning { generation: 1 })),
            (
                Running { pid: Pid::from_raw(7) },
                Some(replacing(7, NewSpawning { generation: 1 })),
            ),
            (Spawning { generation: 0 }, None),
            (replacing(7, NewSpawning { generation: 0 }), None),
            (replacing(7, Started { pid: Pid::from_raw(8) }), None),
        ];
        for (from, to) in cases_request {
            let mut s = slot(from);
            assert_eq!(s.request_spawn(1), to.is_some(), "{from:?}");
            assert_eq!(s.state, to.unwrap_or(from), "request_spawn from {from:?}");
        }
        // A process arrives (a spawn's outcome, or an adopted worker).
        let cases_take = [
            (empty, Some(Running { pid: Pid::from_raw(9) })),
            (Spawning { generation: 1 }, Some(Running { pid: Pid::from_raw(9) })),
            (
                Running { pid: Pid::from_raw(7) },
                Some(replacing(7, Started { pid: Pid::from_raw(9) })),
            ),
            (
                replacing(7, NewSpawning { generation: 1 }),
                Some(replacing(7, Started { pid: Pid::from_raw(9) })),
            ),
            (replacing(7, Started { pid: Pid::from_raw(8) }), None),
        ];
        for (from, to) in cases_take {
            let mut s = slot(from);
            assert_eq!(s.take(Pid::from_raw(9)), to.is_some(), "{from:?}");
            assert_eq!(s.state, to.unwrap_or(from), "take from {from:?}");
        }
        // A spawn fails: back to what the slot was.
        let cases_failed = [
            (Spawning { generation: 1 }, empty),
            (
                replacing(7, NewSpawning { generation: 1 }),
                Running { pid: Pid::from_raw(7) },
            ),
            (Running { pid: Pid::from_raw(7) }, Running { pid: Pid::from_raw(7) }),
        ];
        for (from, to) in cases_failed {
            let mut s = slot(from);
            s.spawn_failed();
            assert_eq!(s.state, to, "spawn_failed from {from:?}");
        }
        // A worker stops or is reaped.
        let cases_release = [
            (Running { pid: Pid::from_raw(7) }, 7, empty),
            (Running { pid: Pid::from_raw(7) }, 8, Running { pid: Pid::from_raw(7) }),
            (
                replacing(7, Started { pid: Pid::from_raw(8) }),
                7,
                Running { pid: Pid::from_raw(8) },
            ),
            (
                replacing(7, Started { pid: Pid::from_raw(8) }),
                8,
                Running { pid: Pid::from_raw(7) },
            ),
            (
                replacing(7, NewSpawning { generation: 2 }),
                7,
                Spawning { generation: 2 },
            ),
            (Spawning { generation: 2 }, 7, Spawning { generation: 2 }),
        ];
        for (from, pid, to) in cases_release {
            let mut s = slot(from);
            s.release(Pid::from_raw(pid));
            assert_eq!(s.state, to, "release {pid} from {from:?}");
        }
    }

    #[test]
    fn live_workers_spawning_and_backoff() {
        let t = Instant::now();
        let mut s = Slot::default();
        assert!(matches!(s.state, SlotState::Empty { .. }) && !s.is_spawning() && s.live().next().is_none());
        s.back_off_until(t);
        assert_eq!(s.not_before(), Some(t), "an empty slot waits");
        assert!(s.request_spawn(3));
        assert_eq!(s.not_before(), None, "a spawn ends the wait");
        assert!(s.is_spawning());
        assert!(s.take(Pid::from_raw(10)));
        s.back_off_until(t);
        assert_eq!(s.not_before(), None, "an occupied slot has nothing to wait for");
        assert!(s.request_spawn(4));
        assert_eq!(
            s.live().map(Pid::raw).collect::<Vec<_>>(),
            [10],
            "a spawning replacement is not live yet"
        );
        assert!(s.take(Pid::from_raw(11)));
        assert_eq!(s.live().map(Pid::raw).collect::<Vec<_>>(), [10, 11], "older first");
        s.failures = 3;
        s.forget();
        assert_eq!((s.failures, s.live().count()), (0, 2), "forgetting keeps what runs");
    }
}

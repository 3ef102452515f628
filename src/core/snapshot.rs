//! Everything a new sup image needs from the old one's core, as one value:
//! [`Core::snapshot`] writes it, [`Core::restore`] rebuilds a core from it,
//! validating what it adopts. It is the hot-restart handoff's only state
//! besides the file descriptors (`handoff`): a piece of state the next image
//! needs is added here, once, in both functions.
//!
//! One time encoding: every instant is milliseconds relative to the moment
//! the snapshot was taken (negative in the past), and that moment is given
//! as wall-clock milliseconds, so the new image also knows how long the
//! exec took. The core still never reads a clock: both callers pass the
//! wall-clock time in.

use std::time::{Duration, Instant};

use log::Level;
use serde::{Deserialize, Serialize};

use super::Core;
use super::counters::{Counters, RecycleReason};
use super::restart::{Outcome, Phase, Restart, RestartRecord, Rollout};
use super::vocab::RestartKind;
use super::vocab::{Action, Settings, log};
use crate::pid::{Pgid, Pid};
use crate::worker::{ExitStatus, Lingering, Slot, Worker, WorkerState};

/// Milliseconds relative to when the snapshot was taken.
pub type Ms = i64;

/// A clock step (or a very slow exec) is not believed beyond this.
const MAX_GAP: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Wall-clock milliseconds since the epoch when it was taken.
    pub taken_ms: u64,
    pub generation: u64,
    pub target: usize,
    /// The worker count the configuration said then: a count changed at
    /// runtime survives unless the new configuration changes it.
    pub configured: usize,
    pub workers: Vec<WorkerSnap>,
    /// Each slot's history and backoff; what it holds is rebuilt from the workers.
    pub slots: Vec<SlotSnap>,
    pub lingering: Vec<LingeringSnap>,
    pub restart: Option<RestartSnap>,
    /// A paused canary set aside while a reexec runs.
    #[serde(default)]
    pub parked: Option<RestartSnap>,
    /// The generation `sup ctl rollback` goes back to.
    #[serde(default)]
    pub rollback_target: Option<u64>,
    /// After a failed rollout, the generation slots are refilled with.
    #[serde(default)]
    pub refill: Option<u64>,
    pub pending: Option<RestartKind>,
    pub last_restart: Option<RecordSnap>,
    pub restarts_begun: u64,
    pub ready_announced: bool,
    pub counters: Counters,
    /// Slots being recycled: the slot, why, and the pid being replaced.
    pub recycling: Vec<(usize, RecycleReason, Pid)>,
    /// Slots whose recycling failed, and when they may be tried again.
    pub recycle_after: Vec<(usize, Ms)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnap {
    pub pid: Pid,
    pub slot: usize,
    pub generation: u64,
    pub spawned: Ms,
    pub state: StateSnap,
    pub status: Option<String>,
    pub watchdog: Option<Ms>,
    pub memory: Option<u64>,
    pub over_memory: u32,
    pub age_due: bool,
    #[serde(default)]
    pub recycle_asked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StateSnap {
    Booting {
        ready_at: Option<Ms>,
        boot_deadline: Ms,
    },
    Ready {
        since: Ms,
    },
    Stopping {
        kill_at: Ms,
        killed: bool,
        #[serde(default)]
        dumped: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSnap {
    /// Its live workers, the serving one first.
    #[serde(default)]
    pub live: Vec<Pid>,
    pub failures: u32,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub not_before: Option<Ms>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LingeringSnap {
    pub pgid: Pgid,
    pub slot: usize,
    pub kill_at: Ms,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartSnap {
    pub id: u64,
    pub kind: RestartKind,
    pub started: Ms,
    pub phase: PhaseSnap,
    #[serde(default)]
    pub plan: Rollout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum PhaseSnap {
    Hook { pid: Option<Pid>, deadline: Ms },
    Preflight { pid: Option<Pid>, deadline: Ms },
    Rolling { generation: u64 },
    Paused { generation: u64 },
    Draining,
    Exec { adopt: bool },
    Starting { generation: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSnap {
    pub id: u64,
    pub kind: RestartKind,
    pub generation: Option<u64>,
    pub started: Ms,
    pub finished: Option<Ms>,
    pub outcome: Outcome,
}

/// `at` as milliseconds from `now`.
fn rel(at: Instant, now: Instant) -> Ms {
    match at.checked_duration_since(now) {
        Some(ahead) => ahead.as_millis() as Ms,
        None => -(now.saturating_duration_since(at).as_millis() as Ms),
    }
}

/// Milliseconds from `base` as an instant.
fn abs(ms: Ms, base: Instant) -> Instant {
    if ms >= 0 {
        base + Duration::from_millis(ms as u64)
    } else {
        base.checked_sub(Duration::from_millis(ms.unsigned_abs()))
            .unwrap_or(base)
    }
}

impl WorkerSnap {
    fn of(w: &Worker, now: Instant) -> WorkerSnap {
        WorkerSnap {
            pid: w.pid,
            slot: w.slot,
            generation: w.generation,
            spawned: rel(w.spawned_at, now),
            state: match w.state {
                WorkerState::Booting {
                    ready_at,
                    boot_deadline,
                } => StateSnap::Booting {
                    ready_at: ready_at.map(|t| rel(t, now)),
                    boot_deadline: rel(boot_deadline, now),
                },
                WorkerState::Ready { since } => StateSnap::Ready { since: rel(since, now) },
                WorkerState::Stopping {
                    kill_at,
                    killed,
                    dumped,
                } => StateSnap::Stopping {
                    kill_at: rel(kill_at, now),
                    killed,
                    dumped,
                },
            },
            status: w.status.clone(),
            watchdog: w.watchdog_deadline.map(|t| rel(t, now)),
            memory: w.memory,
            over_memory: w.over_memory,
            age_due: w.age_due,
            recycle_asked: w.recycle_asked,
        }
    }

    fn worker(&self, base: Instant) -> Worker {
        Worker {
            slot: self.slot,
            generation: self.generation,
            pid: self.pid,
            spawned_at: abs(self.spawned, base),
            state: match self.state {
                StateSnap::Booting {
                    ready_at,
                    boot_deadline,
                } => WorkerState::Booting {
                    ready_at: ready_at.map(|t| abs(t, base)),
                    boot_deadline: abs(boot_deadline, base),
                },
                StateSnap::Ready { since } => WorkerState::Ready {
                    since: abs(since, base),
                },
                StateSnap::Stopping {
                    kill_at,
                    killed,
                    dumped,
                } => WorkerState::Stopping {
                    kill_at: abs(kill_at, base),
                    killed,
                    dumped,
                },
            },
            status: self.status.clone(),
            watchdog_deadline: self.watchdog.map(|t| abs(t, base)),
            memory: self.memory,
            over_memory: self.over_memory,
            age_due: self.age_due,
            recycle_asked: self.recycle_asked,
        }
    }
}

impl RestartSnap {
    fn of(r: &Restart, now: Instant) -> RestartSnap {
        RestartSnap {
            id: r.id,
            kind: r.kind,
            started: rel(r.started_at, now),
            phase: PhaseSnap::of(r.phase, now),
            plan: r.plan,
        }
    }

    fn restart(&self, base: Instant) -> Restart {
        Restart {
            id: self.id,
            kind: self.kind,
            started_at: abs(self.started, base),
            phase: self.phase.phase(base),
            plan: self.plan,
        }
    }
}

impl PhaseSnap {
    fn of(phase: Phase, now: Instant) -> PhaseSnap {
        match phase {
            Phase::Hook { pid, deadline } => PhaseSnap::Hook {
                pid,
                deadline: rel(deadline, now),
            },
            Phase::Preflight { pid, deadline } => PhaseSnap::Preflight {
                pid,
                deadline: rel(deadline, now),
            },
            Phase::Rolling { generation } => PhaseSnap::Rolling { generation },
            Phase::Paused { generation } => PhaseSnap::Paused { generation },
            Phase::Draining => PhaseSnap::Draining,
            Phase::Exec { adopt } => PhaseSnap::Exec { adopt },
            Phase::Starting { generation } => PhaseSnap::Starting { generation },
        }
    }

    fn phase(self, base: Instant) -> Phase {
        match self {
            PhaseSnap::Hook { pid, deadline } => Phase::Hook {
                pid,
                deadline: abs(deadline, base),
            },
            PhaseSnap::Preflight { pid, deadline } => Phase::Preflight {
                pid,
                deadline: abs(deadline, base),
            },
            PhaseSnap::Rolling { generation } => Phase::Rolling { generation },
            PhaseSnap::Paused { generation } => Phase::Paused { generation },
            PhaseSnap::Draining => Phase::Draining,
            PhaseSnap::Exec { adopt } => Phase::Exec { adopt },
            PhaseSnap::Starting { generation } => Phase::Starting { generation },
        }
    }
}

impl Core {
    /// Everything the next image needs, at `now` (`wall_ms`: the same
    /// moment on the wall clock).
    pub fn snapshot(&self, now: Instant, wall_ms: u64) -> Snapshot {
        let restart = &self.restart;
        // By pid: the table's order means nothing, and one snapshot of one
        // state is one value.
        let mut workers: Vec<WorkerSnap> = self.workers.iter().map(|w| WorkerSnap::of(w, now)).collect();
        workers.sort_unstable_by_key(|w| w.pid);
        Snapshot {
            taken_ms: wall_ms,
            generation: self.generation,
            target: self.target,
            configured: self.settings.workers.max(1),
            workers,
            slots: self
                .slots
                .iter()
                .map(|s| SlotSnap {
                    live: s.live().collect(),
                    failures: s.failures,
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                    not_before: s.not_before().map(|t| rel(t, now)),
                })
                .collect(),
            lingering: self
                .lingering
                .iter()
                .map(|l| LingeringSnap {
                    pgid: l.pgid,
                    slot: l.slot,
                    kill_at: rel(l.kill_at, now),
                })
                .collect(),
            restart: restart.current.map(|r| RestartSnap::of(&r, now)),
            parked: restart.parked.map(|r| RestartSnap::of(&r, now)),
            rollback_target: self.rollback_target,
            refill: self.refill,
            pending: restart.pending,
            last_restart: restart.last.as_ref().map(|r| RecordSnap {
                id: r.id,
                kind: r.kind,
                generation: r.generation,
                started: rel(r.started_at, now),
                finished: r.finished_at.map(|t| rel(t, now)),
                outcome: r.outcome.clone(),
            }),
            restarts_begun: restart.begun,
            ready_announced: self.ready_announced || restart.ready_sent,
            counters: self.counters.clone(),
            recycling: self
                .recycling
                .active
                .iter()
                .map(|(&k, &(why, pid))| (k, why, pid))
                .collect(),
            recycle_after: self.recycling.after.iter().map(|(&k, &t)| (k, rel(t, now))).collect(),
        }
    }

    /// A core rebuilt from `snap` in a new image, at `now` (`wall_ms` on
    /// the wall clock), and what to do at once. `ours` says whether a pid
    /// the snapshot names is a process this sup may take over (its child,
    /// leading its own group); one that is not is left alone, never
    /// signalled, and so is a worker of a generation from the future. A
    /// restart that was at its exec carries on: stop mode boots the new
    /// generation, overlap rolls the adopted workers, reexec is complete.
    pub fn restore<E: std::fmt::Display>(
        settings: Settings,
        snap: Snapshot,
        now: Instant,
        wall_ms: u64,
        ours: impl Fn(Pid) -> Result<(), E>,
    ) -> (Core, Vec<Action>) {
        let mut out = Vec::new();
        let gap = Duration::from_millis(wall_ms.saturating_sub(snap.taken_ms)).min(MAX_GAP);
        let base = now.checked_sub(gap).unwrap_or(now);
        let mut core = Core::new(settings);
        core.keep_runtime_count(snap.target, snap.configured, &mut out);
        core.generation = snap.generation;
        core.counters = snap.counters;
        core.ready_announced = snap.ready_announced;
        let r = &mut core.restart;
        r.pending = snap.pending;
        r.begun = snap.restarts_begun;
        r.last = snap.last_restart.map(|l| RestartRecord {
            id: l.id,
            kind: l.kind,
            generation: l.generation,
            started_at: abs(l.started, base),
            finished_at: l.finished.map(|t| abs(t, base)),
            outcome: l.outcome,
        });
        r.current = snap.restart.map(|s| {
            let mut r = s.restart(base);
            if let Phase::Hook { pid, .. } | Phase::Preflight { pid, .. } = &mut r.phase
                && let Some(p) = *pid
                && let Err(why) = ours(p)
            {
                log(
                    &mut out,
                    Level::Error,
                    format!("not adopting the restart's helper: {why}"),
                );
                *pid = None;
            }
            r
        });
        r.parked = snap.parked.map(|s| s.restart(base));
        core.rollback_target = snap.rollback_target;
        core.refill = snap.refill;
        let highest = snap.workers.iter().map(|w| w.slot + 1).max().unwrap_or(0);
        let slots = snap.slots.len().max(highest).max(core.target);
        core.slots.resize(slots, Slot::default());
        for (s, slot) in core.slots.iter_mut().zip(&snap.slots) {
            s.failures = slot.failures;
            s.restarts = slot.restarts;
            s.last_exit = slot.last_exit;
            if let Some(t) = slot.not_before {
                s.back_off_until(abs(t, base));
            }
        }
        core.lingering = snap
            .lingering
            .iter()
            .map(|l| Lingering {
                pgid: l.pgid,
                slot: l.slot,
                kill_at: abs(l.kill_at, base),
            })
            .collect();
        let order = |w: &Worker| {
            let listed = snap
                .slots
                .get(w.slot)
                .and_then(|s| s.live.iter().position(|&p| p == w.pid));
            (w.slot, listed.unwrap_or(usize::MAX), w.generation, w.spawned_at)
        };
        core.adopt(
            snap.workers.iter().map(|w| w.worker(base)).collect(),
            order,
            now,
            &ours,
            &mut out,
        );
        core.recycling.active = snap
            .recycling
            .into_iter()
            .map(|(k, why, pid)| (k, (why, pid)))
            .collect();
        core.recycling.after = snap.recycle_after.into_iter().map(|(k, t)| (k, abs(t, base))).collect();
        core.recycling.asked = core.workers.iter().any(|w| w.recycle_asked);
        core.arm_linger_probe(now);
        let adopted = core.workers.len();
        let follow = core
            .restart
            .resume(core.generation, adopted, now, &mut core.counters, &mut out);
        core.follow(follow, now, &mut out);
        (core, out)
    }

    /// The worker count at the snapshot (`count`) and what the configuration
    /// said then: a count set at runtime (TTIN, TTOU, `sup ctl workers`)
    /// survives unless the new configuration changes it.
    fn keep_runtime_count(&mut self, count: usize, configured_then: usize, out: &mut Vec<Action>) {
        if count == configured_then {
            return;
        }
        let configured = self.settings.workers.max(1);
        if configured == configured_then {
            log(
                out,
                Level::Info,
                format!("keeping the worker count set at runtime: {count} (the configuration says {configured})"),
            );
            self.target = count.max(1);
            if self.slots.len() < self.target {
                self.slots.resize(self.target, Slot::default());
            }
        } else {
            log(
                out,
                Level::Info,
                format!(
                    "the configuration changed the worker count ({configured_then} → {configured}): \
                     {configured} workers; the count set at runtime ({count}) is dropped"
                ),
            );
        }
    }

    /// Take the old image's workers as this core's own, in the slot table's
    /// `order` (the serving one, then its replacement). Workers in slots the
    /// configuration no longer has are stopped.
    fn adopt<K: Ord, E: std::fmt::Display>(
        &mut self,
        workers: Vec<Worker>,
        order: impl Fn(&Worker) -> K,
        now: Instant,
        ours: &impl Fn(Pid) -> Result<(), E>,
        out: &mut Vec<Action>,
    ) {
        let generation = self.generation;
        let mut workers: Vec<Worker> = workers
            .into_iter()
            .filter(|w| {
                if w.generation > generation {
                    log(
                        out,
                        Level::Error,
                        format!(
                            "not adopting {}: its generation is from the future (now {generation})",
                            w.label()
                        ),
                    );
                    return false;
                }
                ours(w.pid)
                    .inspect_err(|why| log(out, Level::Error, format!("not adopting {}: {why}", w.label())))
                    .is_ok()
            })
            .collect();
        workers.sort_by_key(order);
        for w in workers {
            log(out, Level::Info, format!("adopted {}", w.label()));
            let (slot, pid, live) = (w.slot, w.pid, !w.is_stopping());
            let i = self.push_worker(w);
            if !live {
                continue;
            }
            if !self.slots[slot].take(pid) {
                log(
                    out,
                    Level::Warn,
                    format!("worker {slot} already has two live workers: stopping pid {pid}"),
                );
                self.stop_worker(i, now, out);
            } else if slot >= self.target {
                // Scaled down while it retired: with per-slot sockets it
                // drains its queue first, as before the exec.
                if self.settings.balance {
                    self.retire(i, now, out);
                } else {
                    self.stop_worker(i, now, out);
                }
            }
            self.note_replacing(slot);
        }
    }
}

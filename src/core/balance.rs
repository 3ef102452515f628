//! Per-slot sockets (`--balance reuseport`): which slots new connections
//! are steered to, the retirement of a slot at a scale-down (its queue
//! drained through its own worker before the worker stops; the socket
//! stays, steered to by nobody), and `--stall-timeout` (a worker whose own
//! queue does not shrink is hung). The shell holds the sockets and reads the queues;
//! the core decides from what it reads ([`Event::SlotQueues`]).
//!
//! Steering: a slot gets new connections while its worker is ready and
//! its queue is not stuck; when no slot qualifies, every slot of the target
//! does (connections then wait in a queue for the next worker, as with a
//! shared socket). At a stop, once the stop delay is over, only slot 0's
//! socket is offered: it is the bind's own socket, the one systemd's fd
//! store keeps across a restart.
//!
//! The stall rule: a slot's queue that holds connections and has not
//! shrunk for half the timeout is steered away from; at the full timeout,
//! if it still has not shrunk and its worker holds no socket it did not
//! hold at the last look (the shell lists them while the queue is stuck),
//! the worker is hung. The sockets are what tell an overloaded worker from
//! a hung one: a full backlog refills from pending handshakes as fast as
//! it is served, so its depth never shrinks while the worker accepts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::Level;

use super::Core;
use super::counters::RecycleReason;
use super::state::Drain;
use super::vocab::{Action, log};
use crate::pid::Pid;
use crate::worker::{SlotState, WorkerState};

/// How often the queues are read while a scaled-down slot drains.
pub(super) const RETIRE_PROBE: Duration = Duration::from_millis(10);

/// The per-slot sockets' book.
#[derive(Debug, Default)]
pub(super) struct Balancing {
    /// The slots the shell was last told to steer to.
    pub(super) steered: Option<Vec<usize>>,
    /// Workers of removed slots that keep serving what their slot's queue
    /// holds (no new connection reaches it), and when they are stopped
    /// anyway.
    pub(super) retiring: Vec<(Pid, Instant)>,
    /// By slot: the stall watch of its serving worker.
    pub(super) watch: HashMap<usize, Watch>,
    /// The next look at the queues (none while one is out).
    pub(super) next_probe: Option<Instant>,
    /// A look at the queues is out: its answer has not come.
    pub(super) probing: bool,
    /// Slots whose serving worker exited: refilled at once, backoff or
    /// not, if their queue holds connections.
    pub(super) stranded: Vec<usize>,
}

/// A worker that served at least this long before it exited lets its
/// slot's queue skip the crash backoff, however often it happens; one that
/// served less only for the first few exits in a row (a worker that
/// becomes ready and dies at once keeps the backoff).
pub(super) const SERVED_ENOUGH: Duration = Duration::from_secs(1);
pub(super) const QUICK_EXITS: u32 = 4;

/// What the stall rule knows of one slot's serving worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Watch {
    pub(super) pid: Pid,
    /// The depth last read.
    pub(super) depth: u32,
    /// Since when the queue has held connections without shrinking.
    pub(super) stuck_since: Option<Instant>,
    /// Steered away from: its queue is stuck, or its worker is hung and
    /// being replaced.
    pub(super) away: bool,
    /// Found hung; its replacement is under way.
    pub(super) hung: bool,
    /// The sockets the worker held at the last look (asked for while its
    /// queue is stuck): a new one is a connection it accepted.
    pub(super) held: Option<Vec<u64>>,
}

impl Core {
    /// The ready worker that serves slot `k`, if any (the old one while a
    /// replacement boots).
    fn serving_pid(&self, k: usize) -> Option<Pid> {
        let pid = match self.slots.get(k)?.state {
            SlotState::Running { pid } => pid,
            SlotState::Replacing { old, new } => match new {
                crate::worker::Replacement::Started { pid } if self.is_ready(pid) => pid,
                _ => old,
            },
            SlotState::Empty { .. } | SlotState::Spawning { .. } => return None,
        };
        self.is_ready(pid).then_some(pid)
    }

    /// Which slots new connections go to now.
    fn steer_to(&self) -> Vec<usize> {
        let draining = self.stopping.is_some_and(|s| !matches!(s.drain, Drain::Delay { .. }));
        if draining {
            return vec![0];
        }
        let serving: Vec<usize> = (0..self.target)
            .filter(|&k| self.serving_pid(k).is_some())
            .filter(|k| !self.balancing.watch.get(k).is_some_and(|w| w.away))
            .collect();
        if serving.is_empty() {
            (0..self.target).collect()
        } else {
            serving
        }
    }

    /// After every event: tell the shell where to steer when that changed;
    /// arm the next look at the queues.
    pub(super) fn balance(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.settings.balance || self.exited {
            return;
        }
        let slots = self.steer_to();
        if self.balancing.steered.as_ref() != Some(&slots) {
            out.push(Action::Steer { slots: slots.clone() });
            self.balancing.steered = Some(slots);
        }
        let watching = self.settings.stall_timeout.is_some() && self.started && self.stopping.is_none();
        let wanted = watching || !self.balancing.retiring.is_empty();
        if !wanted {
            self.balancing.next_probe = None;
        } else if self.balancing.next_probe.is_none() && !self.balancing.probing {
            self.balancing.next_probe = Some(now + self.probe_every());
        }
    }

    /// How often the queues are read.
    fn probe_every(&self) -> Duration {
        if !self.balancing.retiring.is_empty() {
            return RETIRE_PROBE;
        }
        self.settings.stall_timeout.map_or(RETIRE_PROBE, |d| {
            (d / 10).clamp(RETIRE_PROBE, Duration::from_millis(250))
        })
    }

    /// Its timer: read the queues, and what the workers whose queue is
    /// stuck hold.
    pub(super) fn probe_slot_queues(&mut self, out: &mut Vec<Action>) {
        self.balancing.next_probe = None;
        self.balancing.probing = true;
        let pids = self
            .balancing
            .watch
            .values()
            .filter(|w| w.stuck_since.is_some() && !w.hung)
            .map(|w| w.pid)
            .collect();
        out.push(Action::ProbeSlotQueues { pids });
    }

    /// Scale-down with per-slot sockets: the workers of removed slots are
    /// not stopped yet. No new connection reaches their slot (it is out of
    /// the target); each stops once its queue is empty, or at the graceful
    /// timeout whatever is left.
    pub(super) fn retire(&mut self, i: usize, now: Instant, out: &mut Vec<Action>) {
        let w = &self.workers[i];
        if !matches!(w.state, WorkerState::Ready { .. }) {
            self.stop_worker(i, now, out);
            return;
        }
        log(
            out,
            Level::Info,
            format!(
                "{}: no new connections; it takes what its slot's queue holds, then stops",
                w.label()
            ),
        );
        let until = now + self.settings.graceful_timeout;
        self.balancing.retiring.push((w.pid, until));
    }

    /// Whether `pid` is a retiring worker (counted apart from the live ones).
    pub(super) fn is_retiring(&self, pid: Pid) -> bool {
        self.balancing.retiring.iter().any(|(p, _)| *p == pid)
    }

    /// A retiring worker is stopped (its queue is empty, or its time is up).
    pub(super) fn end_retiring(&mut self, pid: Pid, why: &str, now: Instant, out: &mut Vec<Action>) {
        self.balancing.retiring.retain(|(p, _)| *p != pid);
        let Some(i) = self.find(pid) else { return };
        if self.workers[i].is_stopping() {
            return;
        }
        log(
            out,
            Level::Info,
            format!("{}: {why}; stopping it", self.workers[i].label()),
        );
        let slot = self.workers[i].slot;
        self.stop_worker(i, now, out);
        if slot >= self.target
            && let Some(s) = self.slots.get_mut(slot)
        {
            s.forget();
        }
    }

    /// Scaled back up before a retiring worker stopped: it serves on.
    pub(super) fn keep_retiring(&mut self) {
        let target = self.target;
        let workers = &self.workers;
        let index = &self.index;
        self.balancing
            .retiring
            .retain(|(p, _)| index.get(p).is_none_or(|&i| workers[i].slot >= target));
    }

    /// A worker that served exited unasked: what its slot's queue holds
    /// waits for the slot's next worker, not for a backoff — look at the
    /// queue (see [`SERVED_ENOUGH`]).
    pub(super) fn served_and_exited(&mut self, slot: usize, ready_since: Instant, now: Instant, out: &mut Vec<Action>) {
        let failures = self.slots.get(slot).map_or(0, |s| s.failures);
        let served = now.saturating_duration_since(ready_since) >= SERVED_ENOUGH;
        if self.settings.balance && slot < self.target && (served || failures <= QUICK_EXITS) {
            self.balancing.stranded.push(slot);
            out.push(Action::ProbeSlotQueues { pids: Vec::new() });
        }
    }

    /// The answer to a look at the queues.
    pub(super) fn on_slot_queues(
        &mut self,
        depths: Vec<u32>,
        held: &[(Pid, Vec<u64>)],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.balancing.probing = false;
        let depth = |k: usize| depths.get(k).copied().unwrap_or(0);
        for k in std::mem::take(&mut self.balancing.stranded) {
            let Some(s) = self.slots.get_mut(k) else { continue };
            if depth(k) > 0 && s.not_before().is_some() {
                s.end_backoff();
                log(
                    out,
                    Level::Info,
                    format!(
                        "worker {k}'s own queue holds {} connection(s): its slot is refilled at once, without a backoff",
                        depth(k)
                    ),
                );
            }
        }
        let drained: Vec<Pid> = self
            .balancing
            .retiring
            .iter()
            .filter(|(p, _)| self.worker(*p).is_some_and(|w| depth(w.slot) == 0))
            .map(|(p, _)| *p)
            .collect();
        for pid in drained {
            self.end_retiring(pid, "its slot's queue is empty", now, out);
        }
        if let Some(timeout) = self.settings.stall_timeout
            && self.stopping.is_none()
        {
            self.watch_stalls(&depths, held, timeout, now, out);
        }
    }

    fn watch_stalls(
        &mut self,
        depths: &[u32],
        held: &[(Pid, Vec<u64>)],
        timeout: Duration,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let target = self.target;
        self.balancing.watch.retain(|&k, _| k < target);
        for k in 0..self.target {
            let Some(pid) = self.serving_pid(k) else {
                // A hung worker stays steered away from until its
                // replacement serves; an empty slot has nothing to watch.
                if self.balancing.watch.get(&k).is_some_and(|w| !w.hung) {
                    self.balancing.watch.remove(&k);
                }
                continue;
            };
            let depth = depths.get(k).copied().unwrap_or(0);
            let fresh = Watch {
                pid,
                depth,
                stuck_since: None,
                away: false,
                hung: false,
                held: None,
            };
            let w = self.balancing.watch.entry(k).or_insert_with(|| fresh.clone());
            if w.pid != pid {
                *w = fresh.clone();
            }
            // A hung worker whose replacement failed to start (the slot is
            // its alone again) is watched afresh, and tried again.
            let alone = matches!(self.slots[k].state, SlotState::Running { .. });
            if w.hung && alone {
                *w = fresh;
            }
            if w.hung {
                continue;
            }
            // Progress: the queue shrank, or the worker holds a socket it did
            // not hold at the last look (it accepted a connection; under
            // overload a full queue refills as fast as it is served).
            let now_held = held.iter().find(|(p, _)| *p == pid).map(|(_, h)| h);
            let accepted = match (&w.held, now_held) {
                (Some(before), Some(now_held)) => now_held.iter().any(|i| !before.contains(i)),
                _ => false,
            };
            if let Some(h) = now_held {
                w.held = Some(h.clone());
            }
            if depth == 0 || depth < w.depth || accepted {
                w.stuck_since = None;
                w.away = false;
                w.held = None;
            } else if w.stuck_since.is_none() {
                w.stuck_since = Some(now);
            }
            w.depth = depth;
            let Some(since) = w.stuck_since else { continue };
            let stuck = now.saturating_duration_since(since);
            if stuck >= timeout / 2 {
                w.away = true;
            }
            if stuck >= timeout {
                w.hung = true;
                self.hung(k, pid, depth, timeout, now, out);
            }
        }
    }

    /// Worker `pid` of slot `k` has accepted nothing for `timeout` with
    /// `depth` connections in its queue: replace it (make-before-break when
    /// the slot and the surge allow, else it is stopped and the slot
    /// refilled); its replacement takes what is queued.
    fn hung(&mut self, k: usize, pid: Pid, depth: u32, timeout: Duration, now: Instant, out: &mut Vec<Action>) {
        let Some(i) = self.find(pid) else { return };
        let label = self.workers[i].label();
        if let Some(signal) = self.settings.dump_signal {
            out.push(Action::Signal { pid, signal });
        }
        let replacing = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Replacing { .. }))
            .count();
        let make_first = self.restart.current().is_none()
            && matches!(self.slots[k].state, SlotState::Running { .. })
            && replacing < self.settings.max_surge;
        let how = if make_first {
            "replacing it (its replacement starts first and takes what is queued)"
        } else {
            "stopping it (its slot gets a new worker, which takes what is queued)"
        };
        log(
            out,
            Level::Warn,
            format!(
                "{label} is hung: {depth} connection(s) in its queue and none accepted for {timeout:?} (--stall-timeout); {how}"
            ),
        );
        if make_first {
            self.replace_in_slot(k, pid, RecycleReason::Stall, out);
        } else {
            self.counters.recycled.bump(RecycleReason::Stall);
            self.stop_worker(i, now, out);
        }
    }
}

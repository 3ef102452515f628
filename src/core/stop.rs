//! Stopping: one worker (the stop signal, then SIGKILL to its group at the
//! graceful deadline), the groups a worker leaves behind (lingering), the
//! helper a stop waits for, the processes that escaped every group
//! (strays), and sup's own stop — graceful or immediate — up to its exit.

use std::time::{Duration, Instant};

use log::Level;
use nix::sys::signal::Signal;

use super::Core;
use super::vocab::{Action, Upward, log};
use crate::pid::{Pgid, Pid};
use crate::worker::{ExitStatus, Lingering, SlotState, Worker, WorkerState};

/// How often a lingering group is probed (see `linger`).
pub(super) const LINGER_PROBE: Duration = Duration::from_secs(1);

/// How sup is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Graceful,
    /// Everything was killed; sup exits at `exit_by` whatever is left.
    Immediate {
        exit_by: Instant,
    },
}

/// At a stop, what is known of sup's other children (strays): like a
/// systemd unit's control group, nothing of the service outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strays {
    /// They got the stop signal; SIGKILL at `kill_at`.
    Signalled { kill_at: Instant },
    /// They got SIGKILL.
    Killed,
    /// None is left (the shell looked).
    Gone,
}

/// sup's own stop, once begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stopping {
    pub(super) mode: Mode,
    pub(super) strays: Strays,
    /// The group of the helper (hook, preflight) that was running: SIGKILL
    /// at the deadline, and sup waits for it.
    pub(super) helper: Option<(Pgid, Instant)>,
    /// A [`Action::ProbeStrays`] is out, not answered by a reap since.
    pub(super) strays_probed: bool,
}

impl Core {
    pub(super) fn begin_graceful(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Stopping {
            mode: Mode::Graceful,
            strays: Strays::Signalled {
                kill_at: now + self.settings.graceful_timeout,
            },
            helper: None,
            strays_probed: false,
        });
        out.push(Action::Upward(Upward::Stopping));
        out.push(Action::SignalStrays {
            signal: self.settings.stop_signal,
        });
        let follow = self.restart.stop(now, &mut self.counters, out);
        self.follow(follow, now, out);
        log(
            out,
            Level::Info,
            format!(
                "stopping: {} worker(s) get the stop signal, {:?} to finish",
                self.live_workers(),
                self.settings.graceful_timeout
            ),
        );
        for i in 0..self.workers.len() {
            if !self.workers[i].is_stopping() {
                self.stop_worker(i, now, out);
            }
        }
    }

    pub(super) fn begin_immediate(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_none() {
            out.push(Action::Upward(Upward::Stopping));
        }
        let before = self.stopping.take();
        let mode = Mode::Immediate {
            exit_by: now + self.settings.halt_timeout,
        };
        let mut stopping = Stopping {
            mode,
            strays: before.map_or(Strays::Killed, |b| b.strays),
            helper: before.and_then(|b| b.helper),
            strays_probed: before.is_some_and(|b| b.strays_probed),
        };
        if stopping.strays != Strays::Gone || before.is_none() {
            out.push(Action::SignalStrays {
                signal: Signal::SIGKILL,
            });
            stopping.strays = Strays::Killed;
        }
        self.stopping = Some(stopping);
        let follow = self.restart.stop(now, &mut self.counters, out);
        self.follow(follow, now, out);
        for w in &mut self.workers {
            out.push(Action::KillGroup {
                pgid: Pgid::led_by(w.pid),
            });
            w.state = WorkerState::Stopping {
                kill_at: now,
                killed: true,
            };
        }
        for s in &mut self.slots {
            s.state = SlotState::default();
        }
        for l in self.lingering.drain(..) {
            out.push(Action::KillGroup { pgid: l.pgid });
        }
        if let Some(s) = &mut self.stopping
            && let Some((pgid, _)) = s.helper.take()
        {
            out.push(Action::KillGroup { pgid });
        }
    }

    /// The helper `pid` was given up on. At a graceful stop its group is
    /// treated like a worker's: TERM (the hook's shell passes it to its
    /// whole group), then SIGKILL at the graceful deadline, and sup waits
    /// for it. Otherwise its group is killed at once.
    pub(super) fn end_helper(&mut self, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        let pgid = Pgid::led_by(pid);
        match &mut self.stopping {
            Some(s) if s.mode == Mode::Graceful => {
                out.push(Action::Signal {
                    pid,
                    signal: Signal::SIGTERM,
                });
                s.helper = Some((pgid, now + self.settings.graceful_timeout));
                out.push(Action::ProbeGroup { pgid });
                self.arm_linger_probe(now);
            }
            Some(_) | None => out.push(Action::KillGroup { pgid }),
        }
    }

    /// Send the stop signal to worker `i` and start its graceful deadline.
    pub(super) fn stop_worker(&mut self, i: usize, now: Instant, out: &mut Vec<Action>) {
        let w = &mut self.workers[i];
        out.push(Action::Signal {
            pid: w.pid,
            signal: self.settings.stop_signal,
        });
        // A stopped (SIGSTOP) process cannot act on the stop signal until continued.
        out.push(Action::Signal {
            pid: w.pid,
            signal: Signal::SIGCONT,
        });
        w.state = WorkerState::Stopping {
            kill_at: now + self.settings.graceful_timeout,
            killed: false,
        };
        let (slot, pid) = (w.slot, w.pid);
        if let Some(s) = self.slots.get_mut(slot) {
            s.release(pid);
        }
    }

    /// Kill worker `i`'s group now (it failed a deadline).
    pub(super) fn kill_worker(&mut self, i: usize, now: Instant, out: &mut Vec<Action>) {
        let w = &mut self.workers[i];
        out.push(Action::KillGroup {
            pgid: Pgid::led_by(w.pid),
        });
        w.state = WorkerState::Stopping {
            kill_at: now,
            killed: true,
        };
        let (slot, pid) = (w.slot, w.pid);
        if let Some(s) = self.slots.get_mut(slot) {
            s.release(pid);
        }
    }

    /// A reaped process that is no worker: an orphan re-parented to sup (it
    /// is a subreaper), a member of a lingering group, or a killed hook. It
    /// may have been the last of a lingering group: ask.
    pub(super) fn on_other_exited(&mut self, pid: Pid, status: ExitStatus, out: &mut Vec<Action>) {
        log(out, Level::Debug, format!("reaped process {pid} ({status})"));
        out.extend(self.lingering.iter().map(|l| Action::ProbeGroup { pgid: l.pgid }));
        if let Some(s) = &mut self.stopping {
            out.extend(s.helper.map(|(pgid, _)| Action::ProbeGroup { pgid }));
            s.strays_probed = false;
        }
    }

    pub(super) fn linger(
        &mut self,
        pgid: Pgid,
        slot: usize,
        kill_at: Instant,
        now: Instant,
        label: &str,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.stopping.map(|s| s.mode), Some(Mode::Immediate { .. })) {
            out.push(Action::KillGroup { pgid });
            return;
        }
        log(
            out,
            Level::Info,
            format!("{label}: other processes remain in its group; they are killed if still there at the deadline"),
        );
        self.lingering.push(Lingering { pgid, slot, kill_at });
        // They may have exited since the leader was reaped (a server's
        // helper processes follow it out within milliseconds): each exit is
        // reaped as an orphan and probes again, and this probe covers the
        // ones reaped before the group was recorded. A member may also leave
        // the group without exiting (`setsid`): the probe repeats every
        // LINGER_PROBE while anything lingers.
        out.push(Action::ProbeGroup { pgid });
        self.arm_linger_probe(now);
    }

    /// While a group lingers (a worker's, or the helper a stop waits for),
    /// look again every LINGER_PROBE whether it has emptied.
    pub(super) fn arm_linger_probe(&mut self, now: Instant) {
        if self.next_linger_probe.is_none() && self.lingers() {
            self.next_linger_probe = Some(now + LINGER_PROBE);
        }
    }

    pub(super) fn lingers(&self) -> bool {
        !self.lingering.is_empty() || self.stopping.is_some_and(|s| s.helper.is_some())
    }

    /// A lingering group emptied by itself: nothing is left to wait for or
    /// to kill (a hot restart's drain or a stop goes on at once).
    pub(super) fn on_group_empty(&mut self, pgid: Pgid, out: &mut Vec<Action>) {
        if let Some(s) = &mut self.stopping
            && s.helper.is_some_and(|(g, _)| g == pgid)
        {
            s.helper = None;
            log(
                out,
                Level::Debug,
                format!("the helper's process group {pgid} has exited"),
            );
        }
        if let Some(i) = self.lingering.iter().position(|l| l.pgid == pgid) {
            let l = self.lingering.remove(i);
            log(
                out,
                Level::Debug,
                format!("worker {}'s process group {pgid} has exited", l.slot),
            );
        }
    }

    /// Whether sup may exit: nothing of its own is left, strays included.
    pub(super) fn check_done(&mut self, out: &mut Vec<Action>) {
        let Some(stopping) = &mut self.stopping else { return };
        if !self.workers.is_empty() || !self.lingering.is_empty() || stopping.helper.is_some() {
            return;
        }
        // Then sup's other children: asked about once, and again after each
        // reap of a process that was not a worker.
        if stopping.strays != Strays::Gone {
            if !stopping.strays_probed {
                stopping.strays_probed = true;
                // Those the workers' exits left to sup since the last look
                // get what the others got.
                let signal = match stopping.strays {
                    Strays::Signalled { .. } => Some(self.settings.stop_signal),
                    Strays::Killed => Some(Signal::SIGKILL),
                    Strays::Gone => None,
                };
                if let Some(signal) = signal {
                    out.push(Action::SignalStrays { signal });
                }
                out.push(Action::ProbeStrays);
            }
            return;
        }
        self.exit(out);
    }

    /// The immediate stop's deadline passed: exit whatever is left.
    pub(super) fn exit_overdue(&mut self, out: &mut Vec<Action>) {
        if !self.workers.is_empty() {
            let left: Vec<String> = self.workers.iter().map(Worker::label).collect();
            log(
                out,
                Level::Error,
                format!("exiting with unreaped workers: {}", left.join(", ")),
            );
        }
        self.exit(out);
    }

    fn exit(&mut self, out: &mut Vec<Action>) {
        self.exited = true;
        out.push(Action::Exit(0));
    }
}

//! Stopping: one worker (the stop signal, then SIGKILL to its group at the
//! graceful deadline), the groups a worker leaves behind (lingering), the
//! helper a stop waits for, the processes that escaped every group
//! (strays), and sup's own stop — graceful or immediate — up to its exit.

use std::time::{Duration, Instant};

use log::Level;
use nix::sys::signal::Signal;

use super::Core;
use super::state::{Drain, Health, HealthStatus, Mode, Stopping, Strays};
use super::vocab::{Action, Upward, log};
use crate::pid::{Pgid, Pid};
use crate::worker::{ExitStatus, Lingering, SlotState, Worker, WorkerState};

/// How often a lingering group is probed (see `linger`).
pub(super) const LINGER_PROBE: Duration = Duration::from_secs(1);

/// How often the accept queues are looked at while they drain.
pub(super) const DRAIN_PROBE: Duration = Duration::from_millis(10);

impl Core {
    /// A graceful stop: after `--stop-delay` (reported as not ready, still
    /// serving), keep new connections out and let the workers take what the
    /// kernel has queued; only then the stop signal to every worker.
    pub(super) fn begin_graceful(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let delay = self.settings.stop_delay;
        self.stopping = Some(Stopping {
            mode: Mode::Graceful,
            drain: Drain::Delay { until: now + delay },
            strays: Strays::Later,
            helper: None,
            strays_probed: false,
        });
        out.push(Action::Upward(Upward::Stopping));
        let follow = self.restart.stop(now, &mut self.counters, out);
        self.follow(follow, now, out);
        if delay.is_zero() || self.live_workers() == 0 {
            self.begin_drain_queues(now, out);
        } else {
            log(
                out,
                Level::Info,
                format!(
                    "stopping: reporting not ready (GET /health answers 503) and serving for {delay:?} (--stop-delay), then draining"
                ),
            );
        }
    }

    /// The stop delay is over: keep new connections out, then wait for the
    /// accept queues to empty (at most `--graceful-timeout`).
    pub(super) fn begin_drain_queues(&mut self, now: Instant, out: &mut Vec<Action>) {
        let graceful = self.settings.graceful_timeout;
        if self.live_workers() == 0 {
            self.stop_workers(now, out);
            return;
        }
        let Some(s) = &mut self.stopping else { return };
        s.drain = Drain::Queue {
            deadline: now + graceful,
            probe: None,
            queued: 0,
        };
        out.push(Action::CloseListeners);
        out.push(Action::ProbeQueues);
        log(
            out,
            Level::Info,
            format!(
                "stopping: no new connections are let in; the workers take what is already queued ({graceful:?} at most)"
            ),
        );
    }

    /// The answer to a look at the accept queues while they drain.
    pub(super) fn on_queued(&mut self, connections: u32, now: Instant, out: &mut Vec<Action>) {
        let Some(Stopping {
            drain: Drain::Queue { probe, queued, .. },
            ..
        }) = &mut self.stopping
        else {
            return;
        };
        if connections == 0 {
            log(out, Level::Info, "stopping: the accept queues are empty".to_string());
            self.stop_workers(now, out);
            return;
        }
        *queued = connections;
        *probe = Some(now + DRAIN_PROBE);
    }

    /// The workers get the stop signal, and so do the processes left to sup.
    pub(super) fn stop_workers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let graceful = self.settings.graceful_timeout;
        let Some(s) = &mut self.stopping else { return };
        if s.drain == Drain::Workers {
            return;
        }
        s.drain = Drain::Workers;
        s.strays = Strays::Signalled {
            kill_at: now + graceful,
        };
        out.push(Action::SignalStrays {
            signal: self.settings.stop_signal,
        });
        log(
            out,
            Level::Info,
            format!(
                "stopping: {} worker(s) get the stop signal, {graceful:?} to finish",
                self.live_workers()
            ),
        );
        for i in 0..self.workers.len() {
            if !self.workers[i].is_stopping() {
                self.stop_worker(i, now, out);
            }
        }
    }

    /// Whether sup reports itself ready to a load balancer: every slot
    /// serves and sup is not stopping.
    pub fn health(&self) -> Health {
        let ready = self.ready_slots();
        let status = if self.stopping.is_some() {
            HealthStatus::Stopping
        } else if self.started && ready == self.target {
            HealthStatus::Serving
        } else {
            HealthStatus::NotReady
        };
        Health {
            status,
            ready,
            target: self.target,
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
            drain: Drain::Workers,
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
                dumped: false,
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
        let pid = self.workers[i].pid;
        self.balancing.retiring.retain(|(p, _)| *p != pid);
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
            dumped: false,
        };
        let (slot, pid) = (w.slot, w.pid);
        if let Some(s) = self.slots.get_mut(slot) {
            s.release(pid);
        }
    }

    /// Kill worker `i`'s group (it failed a deadline): at once, or with
    /// `--dump-signal`, after asking it for a dump and giving it
    /// `--dump-grace` to write it.
    pub(super) fn kill_worker(&mut self, i: usize, now: Instant, out: &mut Vec<Action>) {
        let dump = self.settings.dump_signal;
        let grace = self.settings.dump_grace;
        let w = &mut self.workers[i];
        w.state = match dump {
            Some(signal) => {
                out.push(Action::Signal { pid: w.pid, signal });
                // A stopped (SIGSTOP) process takes the signal once continued.
                out.push(Action::Signal {
                    pid: w.pid,
                    signal: Signal::SIGCONT,
                });
                WorkerState::Stopping {
                    kill_at: now + grace,
                    killed: false,
                    dumped: true,
                }
            }
            None => {
                out.push(Action::KillGroup {
                    pgid: Pgid::led_by(w.pid),
                });
                WorkerState::Stopping {
                    kill_at: now,
                    killed: true,
                    dumped: false,
                }
            }
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
        let drained = stopping.drain == Drain::Workers;
        if !drained || !self.workers.is_empty() || !self.lingering.is_empty() || stopping.helper.is_some() {
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
                    Strays::Later | Strays::Gone => None,
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

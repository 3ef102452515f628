//! Every deadline the core keeps, as one [`Timer`] enum: [`Core::timers`]
//! lists the armed ones, [`Core::expire`] expires one with an exhaustive
//! `match`, and [`Core::next_deadline`] is the earliest of the list. A
//! timer added to the enum without an expiry arm does not compile, and one
//! listed but never disarmed is caught by the property test, which asserts
//! progress: after a `Tick` at `now`, no deadline is left at or before
//! `now` (but [`Timer::Continue`], which is "at once" by design and spawns a
//! batch each time it expires).
//!
//! Each expiry arm first checks that what armed the timer still holds (the
//! list is taken before any arm runs), then disarms it: it acts, or moves
//! the deadline on.

use std::time::Instant;

use log::Level;
use nix::sys::signal::Signal;

use super::Core;
use super::counters::KillReason;
use super::restart::Phase;
use super::state::{Drain, Mode, Stopping, Strays};
use super::vocab::{Action, Upward, log};
use crate::pid::{Pgid, Pid};
use crate::worker::WorkerState;

/// One deadline of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `--ready delay:D`: a booting worker counts as ready.
    ReadyDelay(Pid),
    /// A booting worker that is not ready by now is killed (`--boot-timeout`).
    Boot(Pid),
    /// A worker that pinged once and then fell silent is killed (`--watchdog`).
    Watchdog(Pid),
    /// A stopping worker's graceful deadline: SIGKILL to its group.
    Kill(Pid),
    /// A worker reaches `--max-age` (plus its jitter): it is due for recycling.
    Age(Pid),
    /// An empty slot's crash backoff ends.
    Backoff(usize),
    /// A slot whose recycling failed may be tried again.
    RecycleRetry(usize),
    /// What lingers of a worker's group gets SIGKILL.
    Linger(Pgid),
    /// Look again whether lingering groups have emptied.
    LingerProbe,
    /// The restart hook has run too long.
    Hook,
    /// The hot restart's preflight (the new sup's `--check`) has run too long.
    Preflight,
    /// At a graceful stop, the helper's group gets SIGKILL.
    HelperKill,
    /// `--stop-delay` is over: the accept queues drain.
    StopDelay,
    /// Look at the accept queues again while they drain.
    DrainProbe,
    /// The queues did not empty in time: the workers are stopped anyway.
    DrainEnd,
    /// At a stop, the processes left to sup get SIGKILL.
    Strays,
    /// An immediate stop exits, whatever is left.
    Exit,
    /// `--max-memory`: sample the workers' memory.
    MemorySample,
    /// sup's own supervisor's keep-alive.
    Upward,
    /// Per-slot sockets: read the slots' queues (a scaled-down slot
    /// draining, `--stall-timeout`).
    SlotQueues,
    /// A retiring worker's queue did not empty in time: it stops anyway.
    Retire(Pid),
    /// `fill` stopped at its batch: the next batch, at once.
    Continue,
}

impl Core {
    /// Every armed timer with its deadline. O(workers + slots).
    pub fn timers(&self) -> Vec<(Instant, Timer)> {
        let mut list = Vec::new();
        if self.exited {
            return list;
        }
        let running = self.stopping.is_none();
        for w in &self.workers {
            match w.state {
                WorkerState::Booting {
                    ready_at,
                    boot_deadline,
                } => {
                    list.push((boot_deadline, Timer::Boot(w.pid)));
                    list.extend(ready_at.map(|t| (t, Timer::ReadyDelay(w.pid))));
                }
                WorkerState::Stopping {
                    kill_at, killed: false, ..
                } => list.push((kill_at, Timer::Kill(w.pid))),
                WorkerState::Ready { .. } | WorkerState::Stopping { killed: true, .. } => {}
            }
            if !w.is_stopping() {
                list.extend(w.watchdog_deadline.map(|t| (t, Timer::Watchdog(w.pid))));
                if running && self.started && !w.age_due {
                    list.extend(
                        self.recycling
                            .age_deadline(w, &self.settings)
                            .map(|t| (t, Timer::Age(w.pid))),
                    );
                }
            }
        }
        if running {
            list.extend(
                self.target_slots()
                    .filter_map(|(k, s)| s.not_before().map(|t| (t, Timer::Backoff(k)))),
            );
        }
        list.extend(self.lingering.iter().map(|l| (l.kill_at, Timer::Linger(l.pgid))));
        if self.lingers() {
            list.extend(self.next_linger_probe.map(|t| (t, Timer::LingerProbe)));
        }
        match self.restart.phase() {
            Some(Phase::Hook { deadline, .. }) => list.push((deadline, Timer::Hook)),
            Some(Phase::Preflight { deadline, .. }) => list.push((deadline, Timer::Preflight)),
            Some(
                Phase::Rolling { .. }
                | Phase::Paused { .. }
                | Phase::Draining
                | Phase::Exec { .. }
                | Phase::Starting { .. },
            )
            | None => {}
        }
        if let Some(s) = &self.stopping {
            list.extend(s.helper.map(|(_, t)| (t, Timer::HelperKill)));
            match s.drain {
                Drain::Delay { until } => list.push((until, Timer::StopDelay)),
                Drain::Queue { deadline, probe, .. } => {
                    list.push((deadline, Timer::DrainEnd));
                    list.extend(probe.map(|t| (t, Timer::DrainProbe)));
                }
                Drain::Workers => {}
            }
            if let Strays::Signalled { kill_at } = s.strays {
                list.push((kill_at, Timer::Strays));
            }
            if let Mode::Immediate { exit_by } = s.mode {
                list.push((exit_by, Timer::Exit));
            }
        }
        if running {
            list.extend(self.recycling.after.iter().map(|(&k, &t)| (t, Timer::RecycleRetry(k))));
        }
        if running && self.started && self.settings.max_memory.is_some() {
            list.extend(self.recycling.next_memory_check.map(|t| (t, Timer::MemorySample)));
        }
        list.extend(self.balancing.next_probe.map(|t| (t, Timer::SlotQueues)));
        list.extend(self.balancing.retiring.iter().map(|&(pid, t)| (t, Timer::Retire(pid))));
        if running {
            list.extend(self.next_upward_watchdog.map(|t| (t, Timer::Upward)));
            if self.more_spawns {
                list.extend(self.now_seen.map(|t| (t, Timer::Continue)));
            }
        }
        list
    }

    /// The earliest instant at which [`super::Event::Tick`] has something to
    /// do; `None` when nothing is timed (an idle sup sleeps until an event).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers().into_iter().map(|(t, _)| t).min()
    }

    /// Expire every timer due at `now`, earliest first.
    pub(super) fn expire_due(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut due: Vec<(Instant, Timer)> = self.timers().into_iter().filter(|(t, _)| *t <= now).collect();
        due.sort_by_key(|(t, _)| *t);
        for (_, timer) in due {
            self.expire(timer, now, out);
        }
    }

    /// What a timer does when its deadline passes.
    fn expire(&mut self, timer: Timer, now: Instant, out: &mut Vec<Action>) {
        match timer {
            Timer::ReadyDelay(pid) => {
                let Some(i) = self.find(pid) else { return };
                let w = &mut self.workers[i];
                if matches!(w.state, WorkerState::Booting { ready_at: Some(t), .. } if t <= now) {
                    w.state = WorkerState::Ready { since: now };
                    log(out, Level::Info, format!("{} is ready", w.label()));
                }
            }
            Timer::Boot(pid) => {
                let Some(i) = self.find(pid) else { return };
                let w = &self.workers[i];
                if !matches!(w.state, WorkerState::Booting { boot_deadline, .. } if boot_deadline <= now) {
                    return;
                }
                let t = self.settings.boot_timeout;
                log(
                    out,
                    Level::Error,
                    format!("{} was not ready within {t:?}: {}", w.label(), self.kill_words()),
                );
                self.counters.kills.bump(KillReason::BootTimeout);
                self.fail_worker(i, format!("(pid {pid}) was not ready within {t:?}"), now, out);
            }
            Timer::Watchdog(pid) => {
                let Some(i) = self.find(pid) else { return };
                let w = &self.workers[i];
                if w.is_stopping() || w.watchdog_deadline.is_none_or(|t| t > now) {
                    return;
                }
                let d = self.settings.watchdog.unwrap_or_default();
                log(
                    out,
                    Level::Error,
                    format!("{} sent no WATCHDOG=1 for {d:?}: {}", w.label(), self.kill_words()),
                );
                self.counters.kills.bump(KillReason::Watchdog);
                self.fail_worker(i, format!("missed its watchdog ({d:?})"), now, out);
            }
            Timer::Kill(pid) => {
                let Some(i) = self.find(pid) else { return };
                let graceful = self.settings.graceful_timeout;
                let (dump, grace) = (self.settings.dump_signal, self.settings.dump_grace);
                let w = &mut self.workers[i];
                let WorkerState::Stopping {
                    kill_at,
                    killed: false,
                    dumped,
                } = w.state
                else {
                    return;
                };
                let label = w.label();
                match (dumped, dump) {
                    // Its dump's time is over.
                    (true, _) => {
                        log(
                            out,
                            Level::Warn,
                            format!("{label}: its --dump-grace ({grace:?}) is over: killing its process group"),
                        );
                    }
                    // The graceful timeout: a dump first.
                    (false, Some(signal)) => {
                        let name = signal.as_str().trim_start_matches("SIG");
                        log(
                            out,
                            Level::Warn,
                            format!(
                                "{label} did not stop within {graceful:?}: sent it {name} for a dump; SIGKILL to its process group in {grace:?}"
                            ),
                        );
                        out.push(Action::Signal { pid, signal });
                        out.push(Action::Signal {
                            pid,
                            signal: Signal::SIGCONT,
                        });
                        w.state = WorkerState::Stopping {
                            kill_at: now + grace,
                            killed: false,
                            dumped: true,
                        };
                        self.counters.kills.bump(KillReason::GracefulTimeout);
                        return;
                    }
                    (false, None) => {
                        log(
                            out,
                            Level::Warn,
                            format!("{label} did not stop within {graceful:?}: killing its process group"),
                        );
                        self.counters.kills.bump(KillReason::GracefulTimeout);
                    }
                }
                out.push(Action::KillGroup {
                    pgid: Pgid::led_by(pid),
                });
                w.state = WorkerState::Stopping {
                    kill_at,
                    killed: true,
                    dumped,
                };
            }
            Timer::Age(pid) => {
                // Due: the recycle pass replaces it when the surge allows.
                if let Some(i) = self.find(pid) {
                    self.workers[i].age_due = true;
                }
            }
            Timer::Backoff(slot) => {
                if let Some(s) = self.slots.get_mut(slot) {
                    s.end_backoff();
                }
            }
            Timer::RecycleRetry(slot) => {
                self.recycling.after.remove(&slot);
            }
            Timer::Linger(pgid) => {
                let Some(i) = self.lingering.iter().position(|l| l.pgid == pgid) else {
                    return;
                };
                let l = self.lingering.remove(i);
                log(
                    out,
                    Level::Warn,
                    format!("killing what remains of worker {}'s process group {}", l.slot, l.pgid),
                );
                out.push(Action::KillGroup { pgid: l.pgid });
            }
            Timer::LingerProbe => {
                let helper = self.stopping.and_then(|s| s.helper).map(|(g, _)| g);
                let groups = self.lingering.iter().map(|l| l.pgid).chain(helper);
                out.extend(groups.map(|pgid| Action::ProbeGroup { pgid }));
                self.next_linger_probe = None;
                self.arm_linger_probe(now);
            }
            Timer::Hook | Timer::Preflight => {
                let follow = self.restart.helper_timed_out(now, &mut self.counters, out);
                self.follow(follow, now, out);
            }
            Timer::HelperKill => {
                let halt = self.settings.halt_timeout;
                let Some(s) = &mut self.stopping else { return };
                let Some((pgid, _)) = s.helper else { return };
                log(
                    out,
                    Level::Warn,
                    format!("the helper's process group {pgid} did not stop in time: killing it"),
                );
                out.push(Action::KillGroup { pgid });
                // Reaped members probe again; one that is gone already: forget it.
                s.helper = Some((pgid, now + halt));
                out.push(Action::ProbeGroup { pgid });
            }
            Timer::StopDelay => {
                if matches!(self.stopping.map(|s| s.drain), Some(Drain::Delay { .. })) {
                    self.begin_drain_queues(now, out);
                }
            }
            Timer::DrainProbe => {
                if let Some(Stopping {
                    drain: Drain::Queue { probe, .. },
                    ..
                }) = &mut self.stopping
                {
                    *probe = None;
                    out.push(Action::ProbeQueues);
                }
            }
            Timer::DrainEnd => {
                let Some(Drain::Queue { queued, .. }) = self.stopping.map(|s| s.drain) else {
                    return;
                };
                let t = self.settings.graceful_timeout;
                log(
                    out,
                    Level::Warn,
                    format!("stopping: {queued} connection(s) still queued after {t:?}; stopping the workers anyway"),
                );
                self.stop_workers(now, out);
            }
            Timer::Strays => {
                let Some(s) = &mut self.stopping else { return };
                log(
                    out,
                    Level::Warn,
                    "killing what is left of the processes that escaped the workers' groups".to_string(),
                );
                out.push(Action::SignalStrays {
                    signal: Signal::SIGKILL,
                });
                s.strays = Strays::Killed;
            }
            Timer::Exit => self.exit_overdue(out),
            Timer::MemorySample => {
                out.push(Action::SampleMemory);
                self.recycling.next_memory_check = Some(now + self.settings.recycle_check);
            }
            Timer::Upward => {
                out.push(Action::Upward(Upward::Watchdog));
                self.next_upward_watchdog = self.settings.upward_watchdog.map(|every| now + every);
            }
            Timer::SlotQueues => self.probe_slot_queues(out),
            Timer::Retire(pid) => {
                let time = self.settings.graceful_timeout;
                self.end_retiring(pid, &format!("its slot's queue did not empty in {time:?}"), now, out);
            }
            // The next batch: `fill` runs after the timers, and arms it again if more remain.
            Timer::Continue => self.more_spawns = false,
        }
    }

    /// What happens to a worker that failed a deadline, for the log.
    fn kill_words(&self) -> String {
        match self.settings.dump_signal {
            Some(signal) => format!(
                "sent it {} for a dump; SIGKILL to its process group in {:?}",
                signal.as_str().trim_start_matches("SIG"),
                self.settings.dump_grace
            ),
            None => "killing it".to_string(),
        }
    }

    /// Worker `i` failed a deadline (boot, watchdog): kill its group, count
    /// the failure in its slot, and fail the rollout it was part of.
    fn fail_worker(&mut self, i: usize, reason: String, now: Instant, out: &mut Vec<Action>) {
        let (slot, generation, booting) = {
            let w = &self.workers[i];
            (w.slot, w.generation, matches!(w.state, WorkerState::Booting { .. }))
        };
        self.kill_worker(i, now, out);
        self.record_failure(slot, false, None, now);
        if booting {
            self.replacement_failed(slot, generation, reason, now, out);
        }
    }
}

//! One worker, by an operator's hand (`sup ctl worker SLOT|PID
//! replace|signal SIG|stop`): which worker a request names, and what is
//! done to it. A replacement is make-before-break, like a recycling.

use std::time::Instant;

use log::Level;

use super::Core;
use super::counters::RecycleReason;
use super::vocab::{Action, WorkerAction, WorkerRef, log};
use crate::pid::{Pgid, Pid};
use crate::worker::{SlotState, WorkerState};

impl Core {
    /// The live worker `target` names, by its index in the table, or why
    /// none (or two) is meant.
    fn resolve(&self, target: WorkerRef) -> Result<usize, String> {
        let serving = |slot: usize| match self.slots.get(slot).map(|s| s.state) {
            Some(SlotState::Running { pid } | SlotState::Replacing { old: pid, .. }) if slot < self.target => {
                self.find(pid)
            }
            _ => None,
        };
        let live = |pid: Pid| self.find(pid).filter(|&i| !self.workers[i].is_stopping());
        match target {
            WorkerRef::Slot(slot) => serving(slot).ok_or_else(|| format!("slot {slot} has no serving worker")),
            WorkerRef::Pid(pid) => live(pid).ok_or_else(|| format!("pid {pid} is not a serving worker of this sup")),
            WorkerRef::Either(n) => {
                let as_slot = serving(n as usize);
                let as_pid = i32::try_from(n).ok().and_then(|p| live(Pid::from_raw(p)));
                match (as_slot, as_pid) {
                    (Some(a), Some(b)) if a != b => Err(format!(
                        "{n} is both slot {n} and the pid of worker {}: say slot:{n} or pid:{n}",
                        self.workers[b].slot
                    )),
                    (Some(i), _) | (None, Some(i)) => Ok(i),
                    (None, None) => Err(format!(
                        "{n} is neither a slot with a serving worker nor a worker's pid"
                    )),
                }
            }
        }
    }

    /// Do `action` to the worker `target` names; what was done, or why not.
    pub(super) fn on_worker(
        &mut self,
        target: WorkerRef,
        action: WorkerAction,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("sup is stopping".to_string());
        }
        let i = self.resolve(target)?;
        let (label, pid, slot) = {
            let w = &self.workers[i];
            (w.label(), w.pid, w.slot)
        };
        match action {
            WorkerAction::Signal(signal) => {
                let name = signal.as_str().trim_start_matches("SIG");
                log(
                    out,
                    Level::Info,
                    format!("sending {name} to {label}'s process group, as asked"),
                );
                out.push(Action::SignalGroup {
                    pgid: Pgid::led_by(pid),
                    signal,
                });
            }
            WorkerAction::Stop => {
                log(
                    out,
                    Level::Info,
                    format!("stopping {label} as asked; its slot gets a new worker"),
                );
                self.stop_worker(i, now, out);
            }
            WorkerAction::Replace => {
                if let Some(r) = self.restart.current() {
                    return Err(format!(
                        "{} restart {} is running and replaces every worker",
                        r.kind.as_str(),
                        r.id
                    ));
                }
                if !matches!(self.workers[i].state, WorkerState::Ready { .. }) {
                    return Err(format!("{label} is not ready yet"));
                }
                if !matches!(self.slots[slot].state, SlotState::Running { .. }) {
                    return Err(format!("worker {slot} is already being replaced"));
                }
                let replacing = self
                    .slots
                    .iter()
                    .filter(|s| matches!(s.state, SlotState::Replacing { .. }))
                    .count();
                if replacing >= self.settings.max_surge {
                    return Err(format!(
                        "{replacing} worker(s) are being replaced already (--max-surge {})",
                        self.settings.max_surge
                    ));
                }
                log(
                    out,
                    Level::Info,
                    format!(
                        "replacing {label} as asked; its replacement (gen {}) starts first",
                        self.spawn_generation()
                    ),
                );
                self.replace_in_slot(slot, pid, RecycleReason::Operator, out);
            }
        }
        Ok(())
    }
}

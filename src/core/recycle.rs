//! Recycling (`--max-memory`, `--max-age`): a worker over a limit gets a
//! replacement of the same generation first, and is stopped only once the
//! replacement is ready — like one slot of a rolling restart, at most
//! `--max-surge` at a time, never while a restart runs.

use std::time::Instant;

use log::Level;

use super::Core;
use super::counters::RecycleReason;
use super::vocab::{Action, log};
use crate::pid::Pid;
use crate::worker::{SlotState, WorkerState};

/// How many memory samples in a row above `--max-memory` make a worker
/// due for recycling (a short spike is not enough).
pub(super) const RECYCLE_SAMPLES: u32 = 3;

impl Core {
    /// A worker's recycling ends when its slot is no longer being replaced:
    /// done if the worker is gone, failed if it still serves (its
    /// replacement did not come up), and then it waits before another try.
    pub(super) fn end_recycling(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ended: Vec<(usize, RecycleReason, Pid)> = self
            .recycling
            .active
            .iter()
            .filter(|(k, _)| {
                !self
                    .slots
                    .get(**k)
                    .is_some_and(|s| matches!(s.state, SlotState::Replacing { .. }))
            })
            .map(|(k, (why, old))| (*k, *why, *old))
            .collect();
        for (slot, why, old) in ended {
            self.recycling.active.remove(&slot);
            let still_serving =
                matches!(self.slots.get(slot).map(|s| s.state), Some(SlotState::Running { pid }) if pid == old);
            if still_serving {
                let wait = self
                    .settings
                    .recycle_check
                    .max(self.settings.backoff.delay(self.slots[slot].failures.max(2)));
                log(
                    out,
                    Level::Warn,
                    format!(
                        "recycling worker {slot} (pid {old}, {}) failed: its replacement did not come up; it keeps serving, next try in {wait:?}",
                        super::Key::name(why)
                    ),
                );
                self.recycling.after.insert(slot, now + wait);
            }
        }
    }

    /// Start the replacement of `pid`, the worker of `slot`, for `reason`:
    /// it takes over when ready (the hand-over rule), like one slot of a
    /// rolling restart; counted in `/metrics`.
    pub(super) fn replace_in_slot(&mut self, slot: usize, pid: Pid, reason: RecycleReason, out: &mut Vec<Action>) {
        let generation = self.spawn_generation();
        self.counters.recycled.bump(reason);
        self.recycling.after.remove(&slot);
        self.recycling.active.insert(slot, (reason, pid));
        self.slots[slot].request_spawn(generation);
        self.note_replacing(slot);
        out.push(Action::Spawn { slot, generation });
    }

    /// Recycling: arm the memory sampling; then, when no restart runs, give
    /// each over-limit ready worker a replacement (at most `max_surge` at a
    /// time, counting every slot being replaced).
    pub(super) fn recycle(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.started || self.stopping.is_some() {
            return;
        }
        if self.settings.max_memory.is_some() && self.recycling.next_memory_check.is_none() {
            out.push(Action::SampleMemory);
            self.recycling.next_memory_check = Some(now + self.settings.recycle_check);
        }
        let flags = self.settings.max_memory.is_some() || self.settings.max_age.is_some();
        if self.restart.current().is_some() || !(flags || self.recycling.asked) {
            return;
        }
        let replacing = self
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Replacing { .. }))
            .count();
        let mut room = self.settings.max_surge.saturating_sub(replacing);
        for slot in 0..self.target {
            if room == 0 {
                break;
            }
            let SlotState::Running { pid } = self.slots[slot].state else {
                continue;
            };
            if self.recycling.after.get(&slot).is_some_and(|t| *t > now) {
                continue;
            }
            let Some(w) = self.worker(pid) else { continue };
            if !matches!(w.state, WorkerState::Ready { .. }) {
                continue;
            }
            let (reason, why) = if w.over_memory >= RECYCLE_SAMPLES {
                let limit = self.settings.max_memory.unwrap_or_default();
                let mib = |b: u64| b as f64 / f64::from(1 << 20);
                let why = format!(
                    "its memory ({:.1} MiB PSS) stayed above --max-memory ({:.1} MiB) {RECYCLE_SAMPLES} samples in a row",
                    mib(w.memory.unwrap_or_default()),
                    mib(limit)
                );
                (RecycleReason::Memory, why)
            } else if w.age_due {
                let age = now.saturating_duration_since(w.spawned_at);
                (RecycleReason::Age, format!("it has run {age:.2?}, past --max-age"))
            } else if w.recycle_asked {
                (
                    RecycleReason::Requested,
                    "it asked for it (X_SUP_RECYCLE=1)".to_string(),
                )
            } else {
                continue;
            };
            let (label, generation) = (w.label(), self.spawn_generation());
            log(
                out,
                Level::Info,
                format!("recycling {label}: {why}; its replacement (gen {generation}) starts first"),
            );
            self.replace_in_slot(slot, pid, reason, out);
            room -= 1;
        }
        if self.recycling.asked {
            self.recycling.asked = self.workers.iter().any(|w| w.recycle_asked && !w.is_stopping());
        }
    }
}

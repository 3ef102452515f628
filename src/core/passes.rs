//! The reconcile passes that run after every event, in a fixed order
//! ([`Core::passes`]). Each is at most O(workers + slots), with O(1)
//! questions per slot (the slot table) and per pid (the index).

use std::time::Instant;

use super::restart::Phase;
use log::Level;

use super::vocab::{Action, log};
use super::{Core, SPAWN_BATCH};
use crate::worker::{Replacement, SlotState, WorkerState};

impl Core {
    /// After every event, in this order:
    /// 1. timers: every deadline due (readiness by delay, boot and watchdog
    ///    failures, kills, the hook's and preflight's time, …);
    /// 2. hand over: a ready replacement stops the worker it replaces —
    ///    before `roll`, so that the room it frees is used at once;
    /// 3. roll: replacements into slots still running older code;
    /// 4. fill: empty slots past their backoff (after `roll`, which leaves
    ///    empty slots to it); then recycle: a replacement for an over-limit
    ///    worker, when no restart runs and the surge allows;
    /// 5. whether the rollout, the hot restart's drain, or sup is done;
    /// 6. a restart requested meanwhile starts if the last one has ended;
    /// 7. what sup's own supervisor should hear about all that.
    pub(super) fn passes(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.expire_due(now, out);
        self.hand_over(now, out);
        self.roll(out);
        self.fill(now, out);
        self.recycle(now, out);
        self.check_rollout_done(now, out);
        self.check_drained(out);
        self.check_queue_drain(now, out);
        self.check_done(out);
        self.start_pending(now, out);
        self.arm_linger_probe(now);
        self.balance(now, out);
        self.report_upward(now, out);
    }

    /// Hand over: where a slot's replacement is ready, stop the worker it
    /// replaces (the old generation after its replacement came up).
    fn hand_over(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.end_recycling(now, out);
        let slots = &self.slots;
        self.replacing.retain(|&k| {
            slots
                .get(k)
                .is_some_and(|s| matches!(s.state, SlotState::Replacing { .. }))
        });
        let due: Vec<(usize, usize)> = self
            .replacing
            .iter()
            .filter_map(|&k| match self.slots[k].state {
                SlotState::Replacing {
                    old,
                    new: Replacement::Started { pid },
                } if self.is_ready(pid) => Some((self.find(old)?, self.find(pid)?)),
                SlotState::Empty { .. }
                | SlotState::Spawning { .. }
                | SlotState::Running { .. }
                | SlotState::Replacing { .. } => None,
            })
            .collect();
        for (old, new) in due {
            let (old_label, new_label) = (self.workers[old].label(), self.workers[new].label());
            log(out, Level::Info, format!("{new_label} replaces {old_label}"));
            self.stop_worker(old, now, out);
        }
    }

    /// The rolling restart's step: start replacements of the generation
    /// being rolled out, lowest slot first, at most `max_surge` booting.
    fn roll(&mut self, out: &mut Vec<Action>) {
        let Some(Phase::Rolling { generation }) = self.restart.phase() else {
            return;
        };
        let plan = self.restart.current().map(|r| r.plan).unwrap_or_default();
        if self.stopping.is_some() {
            return;
        }
        let booting = self
            .live_workers_where(|w| w.generation == generation && matches!(w.state, WorkerState::Booting { .. }))
            + self.slots.iter().filter(|s| s.is_spawning()).count();
        let mut room = self.settings.max_surge.saturating_sub(booting);
        // A canary: no more than N of the new generation, started or starting.
        if let Some(n) = plan.canary {
            let started = self
                .workers
                .iter()
                .filter(|w| !w.is_stopping() && w.generation == generation)
                .count()
                + self.slots.iter().filter(|s| s.is_spawning()).count();
            room = room.min(n.saturating_sub(started));
        }
        // From where the last replacement went, wrapping around: the slots
        // before it are usually done, and scanning them again at every
        // event would make a rollout quadratic in lookups.
        let target = self.target;
        let from = self.roll_cursor.min(target);
        for slot in (from..target).chain(0..from) {
            if room == 0 {
                break;
            }
            // Only a slot with one live worker of an older generation gets a
            // replacement; an empty slot is filled by `fill`, with its backoff.
            let SlotState::Running { pid } = self.slots[slot].state else {
                continue;
            };
            // Older workers are replaced; a rollback replaces only the newer
            // generation's (the others already run what it restores).
            let due = |w: &crate::worker::Worker| match plan.only {
                Some(only) => w.generation == only,
                None => w.generation < generation,
            };
            if self.worker(pid).is_none_or(|w| !due(w)) {
                continue;
            }
            self.slots[slot].request_spawn(generation);
            self.note_replacing(slot);
            out.push(Action::Spawn { slot, generation });
            self.roll_cursor = slot + 1;
            room -= 1;
        }
    }

    /// Fill: bring every slot below the target to one live worker, spawning
    /// into each empty slot whose backoff has passed.
    fn fill(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.started || self.stopping.is_some() || self.restart.holds_spawns() {
            return;
        }
        let generation = self.spawn_generation();
        // At most SPAWN_BATCH forks per event: the shell reads signals and
        // control requests between batches (a TERM during the start of a
        // thousand workers acts within one batch), and the next batch goes
        // at once ([`super::timers::Timer::Continue`]).
        let mut budget = SPAWN_BATCH;
        for (slot, s) in self.slots.iter_mut().enumerate().take(self.target) {
            let SlotState::Empty { not_before } = s.state else {
                continue;
            };
            if not_before.is_some_and(|t| t > now) {
                continue;
            }
            if budget == 0 {
                self.more_spawns = true;
                break;
            }
            s.request_spawn(generation);
            out.push(Action::Spawn { slot, generation });
            budget -= 1;
        }
    }

    fn check_rollout_done(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some((generation, plan)) = self.restart.rolling() else {
            return;
        };
        let ready_new =
            self.live_workers_where(|w| w.generation == generation && matches!(w.state, WorkerState::Ready { .. }));
        // A canary pauses once its slots serve the new generation and the
        // workers they replaced are gone.
        if let Some(n) = plan.canary {
            let replaced_gone = !self.replacing.iter().any(|&k| {
                self.slots
                    .get(k)
                    .is_some_and(|s| matches!(s.state, SlotState::Replacing { .. }))
            });
            if ready_new >= n.min(self.target) && replaced_gone {
                self.restart.pause(self.target, out);
            }
            return;
        }
        let done = match plan.only {
            // A rollback: every slot serves, and no worker of the generation
            // it replaces is left.
            Some(only) => self.ready_slots() == self.target && !self.workers.iter().any(|w| w.generation == only),
            // Finished means the old code is gone, not merely asked to go: a
            // deploy waiting on the restart must not see an old worker answer.
            None => ready_new == self.target && !self.workers.iter().any(|w| w.generation < generation),
        };
        if done {
            self.restart.complete(self.target, now, &mut self.counters, out);
        }
    }

    /// Stop mode: once every worker (and what lingers of its group) is
    /// gone, exec into the next generation.
    fn check_drained(&mut self, out: &mut Vec<Action>) {
        if self.restart.phase() == Some(Phase::Draining)
            && self.workers.is_empty()
            && self.lingering.is_empty()
            && self.restart.drained()
        {
            // New workers run the code on disk now, in the next image or in
            // this one if the exec fails.
            self.generation += 1;
            self.refill = None;
            out.push(Action::ReExec {
                generation: self.generation,
                adopt: false,
            });
        }
    }

    /// While the accept queues drain, a sup left with no live worker (they
    /// crashed) has nobody to drain them: the stop goes on.
    fn check_queue_drain(&mut self, now: Instant, out: &mut Vec<Action>) {
        let draining = matches!(self.stopping.map(|s| s.drain), Some(super::state::Drain::Queue { .. }));
        if draining && self.live_workers() == 0 {
            self.stop_workers(now, out);
        }
    }

    /// A restart asked for while another ran starts once that one has ended
    /// (completed, failed or abandoned): the last pass after every event.
    fn start_pending(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.restart.current().is_some() || self.stopping.is_some() {
            return;
        }
        let follow = self.restart.take_pending(now, out);
        if follow == super::restart::Follow::Nothing && self.restart.current().is_none() {
            return;
        }
        self.follow(follow, now, out);
        // Its first replacements go now, not at the next event.
        self.roll(out);
        self.fill(now, out);
    }
}

//! The supervisor's decisions: `(event, now) → actions`, and the next deadline.
//!
//! Everything sup decides happens here — when to spawn, when a worker is
//! ready, when to stop or kill, how long to back off, how a restart
//! advances or is abandoned, when to exit — so it is tested by feeding
//! events and asserting actions, without processes. The core makes no
//! syscalls, never reads the clock (callers pass `now`), and does not log:
//! it returns [`Action::Log`] lines for the shell to write. It must not
//! import the shell (`event_loop`, `spawn`, `sockets`, `notify`).
//!
//! One file per concern:
//! - [`vocab`]: events, intents, actions, replies, settings;
//! - [`restart`]: the restart in progress as its own type, with its phases
//!   and transitions (hook, preflight, hand-over or drain, exec, finish,
//!   abandon, the pending one);
//! - [`timers`]: every deadline as one [`timers::Timer`] enum — one list of
//!   what is armed, one exhaustive `match` that expires it;
//! - [`passes`]: the reconcile passes that run after every event (hand over,
//!   roll, fill, done);
//! - [`recycle`]: `--max-memory` and `--max-age`;
//! - [`stop`]: stopping workers, lingering groups, strays, sup's own stop;
//! - [`counters`]: what `/metrics` counts;
//! - [`snapshot`]: everything a new image needs, and the core rebuilt from it.
//!
//! Two rules carry most of the behaviour:
//! - **Fill**: a slot below the target count with no live worker gets one
//!   (after its crash backoff).
//! - **Hand over**: in a slot whose replacement is ready, the worker it
//!   replaces is stopped. A rolling restart is then only "start a
//!   replacement in each slot, at most `max_surge` booting at once".
//!
//! What each slot holds is one [`SlotState`] in the slot table, and workers
//! are found by pid through an index: every question about a slot or a pid
//! is O(1), so one event costs O(workers) at worst.
//!
//! Idle means no deadline: a steady sup sets no timer at all.

mod balance;
pub mod counters;
mod deploy;
mod one_worker;
mod passes;
mod recycle;
pub mod restart;
pub mod snapshot;
mod state;
mod stop;
pub mod timers;
pub mod vocab;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::Level;

pub use counters::{Counters, ExitCause, Key, KillReason, RecycleReason};
pub use restart::{Outcome, RestartRecord};
pub use snapshot::Snapshot;
pub use state::{Health, HealthStatus};
pub use vocab::{
    Action, Ended, Event, Intent, Pinned, Reply, RestartKind, RestartRef, Settings, Upward, WorkerAction, WorkerRef,
};

use crate::message::{Message, Sender};
use crate::pid::{Pgid, Pid};
use crate::worker::{ExitStatus, Lingering, Slot, SlotState, Worker, WorkerState};
use restart::{Follow, Phase, Restarts};
use state::{PidHash, Recycling, Stopping};
use vocab::log;

/// The supervisor's whole state.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    target: usize,
    generation: u64,
    /// Every live process running the user's command, in no useful order.
    workers: Vec<Worker>,
    /// Where each worker is in `workers`, by pid.
    index: HashMap<Pid, usize, PidHash>,
    /// The slot table: at least `target` entries (more after a scale-down,
    /// until what was under way there has come back).
    slots: Vec<Slot>,
    /// Every slot in the `Replacing` state, and maybe some that have left
    /// it (dropped by the next hand-over pass).
    replacing: Vec<usize>,
    /// Where the rollout's next replacement is looked for first.
    roll_cursor: usize,
    lingering: Vec<Lingering>,
    /// While a group lingers, when to look again whether it has emptied.
    next_linger_probe: Option<Instant>,
    restart: Restarts,
    recycling: Recycling,
    /// Set once sup begins to stop.
    stopping: Option<Stopping>,
    /// The generation `sup ctl rollback` goes back to: the one that served
    /// before the last rollout began.
    rollback_target: Option<u64>,
    /// After a failed rollout: the generation that still serves, whose
    /// pinned release refills a slot (a crash, a recycling) until the next
    /// rollout, instead of the release that failed.
    refill: Option<u64>,
    counters: Counters,
    /// Per-slot sockets: steering, retiring slots, the stall watch.
    balancing: balance::Balancing,
    /// READY=1 has been sent upward for the first start.
    ready_announced: bool,
    last_status: String,
    next_upward_watchdog: Option<Instant>,
    /// The `now` of the event being handled.
    now_seen: Option<Instant>,
    /// `fill` stopped at its batch: more slots to fill at once.
    more_spawns: bool,
    started: bool,
    exited: bool,
}

impl Core {
    pub fn new(settings: Settings) -> Core {
        let target = settings.workers.max(1);
        Core {
            target,
            generation: 0,
            workers: Vec::new(),
            index: HashMap::default(),
            slots: vec![Slot::default(); target],
            replacing: Vec::new(),
            roll_cursor: 0,
            lingering: Vec::new(),
            next_linger_probe: None,
            restart: Restarts::new(&settings),
            recycling: Recycling::default(),
            stopping: None,
            rollback_target: None,
            refill: None,
            counters: Counters::default(),
            balancing: balance::Balancing::default(),
            ready_announced: false,
            last_status: String::new(),
            next_upward_watchdog: None,
            now_seen: None,
            more_spawns: false,
            started: false,
            exited: false,
            settings,
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn lingering(&self) -> &[Lingering] {
        &self.lingering
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The restart in progress, or else the last one.
    pub fn restart_record(&self) -> Option<RestartRecord> {
        self.restart.record()
    }

    /// The last restart that ended.
    pub fn last_restart(&self) -> Option<RestartRecord> {
        self.restart.last.clone()
    }

    /// Whether the re-exec the core asked for ([`Action::ReExec`]) is still
    /// what it wants (nothing since has ended the restart).
    pub fn exec_due(&self) -> bool {
        self.restart.exec_due()
    }

    /// The number of the restart in progress, or else of the last one.
    pub fn restart_id(&self) -> u64 {
        self.restart.id()
    }

    /// Whether a restart is running or waiting to run.
    pub fn restart_busy(&self) -> bool {
        self.restart.busy()
    }

    /// The restart asked for while the current one runs, waiting for it.
    pub fn pending(&self) -> Option<RestartKind> {
        self.restart.pending()
    }

    /// Whether `pid` is one of the workers (a lookup, not a scan).
    pub fn is_worker(&self, pid: Pid) -> bool {
        self.index.contains_key(&pid)
    }

    /// The process groups of sup's helpers (the hook, the preflight): the
    /// one running and the one a stop is waiting for. Not strays.
    pub fn helper_groups(&self) -> Vec<Pgid> {
        self.restart
            .helper_pid()
            .map(Pgid::led_by)
            .into_iter()
            .chain(self.stopping.as_ref().and_then(|s| s.helper).map(|(g, _)| g))
            .collect()
    }

    /// Which of sup's `children` are strays: in no worker's or helper's
    /// group (workers and helpers lead their own groups, which sup stops as
    /// groups), so they escaped one and were left to sup, a subreaper.
    /// `group_of` reads a child's process group (if it can: if not, the
    /// child is judged by its pid alone); most children are workers, a
    /// lookup each, and only the rest cost a `group_of`.
    pub fn strays(&self, children: impl IntoIterator<Item = Pid>, group_of: impl Fn(Pid) -> Option<Pgid>) -> Vec<Pid> {
        let helpers = self.helper_groups();
        let known = |p: Pid| self.is_worker(p) || helpers.contains(&Pgid::led_by(p));
        children
            .into_iter()
            .filter(|&p| !known(p) && !known(group_of(p).map_or(p, Pgid::leader)))
            .collect()
    }

    fn find(&self, pid: Pid) -> Option<usize> {
        self.index.get(&pid).copied()
    }

    fn worker(&self, pid: Pid) -> Option<&Worker> {
        self.find(pid).map(|i| &self.workers[i])
    }

    fn is_ready(&self, pid: Pid) -> bool {
        self.worker(pid)
            .is_some_and(|w| matches!(w.state, WorkerState::Ready { .. }))
    }

    fn push_worker(&mut self, worker: Worker) -> usize {
        let i = self.workers.len();
        self.index.insert(worker.pid, i);
        self.workers.push(worker);
        i
    }

    /// Take worker `i` out of the table (it was reaped) and out of its slot.
    fn remove_worker(&mut self, i: usize) -> Worker {
        let w = self.workers.swap_remove(i);
        self.index.remove(&w.pid);
        self.balancing.retiring.retain(|(p, _)| *p != w.pid);
        if let Some(moved) = self.workers.get(i) {
            self.index.insert(moved.pid, i);
        }
        if let Some(s) = self.slots.get_mut(w.slot) {
            s.release(w.pid);
        }
        w
    }

    /// The slots workers are counted in: `0..target`.
    fn target_slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots.iter().enumerate().take(self.target)
    }

    /// Slots whose live worker is ready (a slot holds at most one ready
    /// live worker between events: a scan of the table, no lookups).
    fn ready_slots(&self) -> usize {
        self.live_workers_where(|w| matches!(w.state, WorkerState::Ready { .. }))
    }

    /// How many live workers in the target's slots `which` picks.
    fn live_workers_where(&self, which: impl Fn(&Worker) -> bool) -> usize {
        self.workers
            .iter()
            .filter(|w| !w.is_stopping() && w.slot < self.target && which(w))
            .count()
    }

    fn live_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.is_stopping()).count()
    }

    /// Keep `replacing` a superset of the slots being replaced.
    fn note_replacing(&mut self, slot: usize) {
        let replacing = self
            .slots
            .get(slot)
            .is_some_and(|s| matches!(s.state, SlotState::Replacing { .. }));
        if replacing && !self.replacing.contains(&slot) {
            self.replacing.push(slot);
        }
    }

    /// What must hold between any two events; `Err` names the first
    /// breach. Checked by the core's property tests after every event.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.slots.len() < self.target {
            return Err(format!("{} slots for {} workers", self.slots.len(), self.target));
        }
        if self.index.len() != self.workers.len() {
            return Err("the pid index and the worker table differ in size".to_string());
        }
        for (i, w) in self.workers.iter().enumerate() {
            if self.find(w.pid) != Some(i) {
                return Err(format!("pid {} is not indexed at {i}", w.pid));
            }
            let in_slot = self.slots.get(w.slot).is_some_and(|s| s.live().any(|p| p == w.pid));
            if in_slot == w.is_stopping() {
                return Err(format!("{} ({:?}) and its slot's state disagree", w.label(), w.state));
            }
        }
        for (k, s) in self.slots.iter().enumerate() {
            for pid in s.live() {
                if self.worker(pid).is_none_or(|w| w.slot != k) {
                    return Err(format!("slot {k} names pid {pid}, not a worker of that slot"));
                }
            }
        }
        let live = self
            .workers
            .iter()
            .filter(|w| !w.is_stopping() && !self.is_retiring(w.pid))
            .count();
        let limit = self.target + self.settings.max_surge;
        if live > limit {
            return Err(format!(
                "{live} live workers, more than {} + {} surge",
                self.target, self.settings.max_surge
            ));
        }
        Ok(())
    }

    /// Decide what to do about `event` at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.now_seen = Some(now);
        self.more_spawns = false;
        if self.exited {
            if let Event::Control { conn, intent } = event {
                let reason = "sup is exiting".to_string();
                out.push(Action::Reply {
                    conn,
                    intent,
                    reply: Reply::Refused { reason },
                });
            }
            return out;
        }
        // Answered after every pass has run, so that the worker count and
        // generation they carry are the ones the request led to.
        let mut replies = Vec::new();
        match event {
            Event::Started => self.started = true,
            Event::Intent(intent) => self.on_intent(intent, now, &mut out),
            Event::Control { conn, intent } => {
                let decided = self.on_control(intent, now, &mut out);
                replies.push((conn, intent, decided));
            }
            Event::Spawned { slot, generation, pid } => self.on_spawned(slot, generation, pid, now, &mut out),
            Event::SpawnFailed {
                slot,
                generation,
                reason,
            } => self.on_spawn_failed(slot, generation, &reason, now, &mut out),
            Event::Exited {
                pid,
                status,
                group_alive,
            } => {
                // Whatever was reaped, the strays are looked at again.
                if let Some(s) = &mut self.stopping {
                    s.strays_probed = false;
                }
                if self.restart.helper_pid() == Some(pid) {
                    let follow = self.restart.helper_exited(status, now, &mut self.counters, &mut out);
                    self.follow(follow, now, &mut out);
                } else {
                    self.on_exited(pid, status, group_alive, now, &mut out);
                }
            }
            Event::GroupEmpty { pgid } => self.on_group_empty(pgid, &mut out),
            Event::Queued { connections } => self.on_queued(connections, now, &mut out),
            Event::SlotQueues { depths, held } => self.on_slot_queues(depths, &held, now, &mut out),
            Event::Memory { samples } => {
                self.recycling
                    .on_memory(&samples, &self.index, &mut self.workers, &self.settings)
            }
            Event::StraysGone => {
                if let Some(s) = &mut self.stopping {
                    s.strays = state::Strays::Gone;
                }
            }
            Event::Notify { sender, message } => self.on_notify(sender, &message, now, &mut out),
            Event::ReadyFd { pid, ready } => self.on_ready_fd(pid, ready, now, &mut out),
            Event::HelperSpawned { pid } => self.restart.helper_spawned(pid),
            Event::HelperFailed { reason } => {
                let stopping = self.stopping.is_some();
                let follow = self
                    .restart
                    .helper_failed(&reason, now, stopping, &mut self.counters, &mut out);
                self.follow(follow, now, &mut out);
            }
            Event::ReExecFailed { reason } => self.restart.exec_failed(reason, now, &mut self.counters, &mut out),
            Event::Tick => {}
        }
        self.passes(now, &mut out);
        for (conn, intent, decided) in replies {
            let reply = match decided {
                Ok(restart) => Reply::Accepted {
                    restart,
                    generation: self.generation,
                    target_workers: self.target,
                },
                Err(reason) => Reply::Refused { reason },
            };
            out.push(Action::Reply { conn, intent, reply });
        }
        out
    }

    /// Carry out what a restart's transition needs done to the workers.
    fn follow(&mut self, follow: Follow, now: Instant, out: &mut Vec<Action>) {
        match follow {
            Follow::Nothing => {}
            Follow::Rollout => self.start_rollout(now, out),
            Follow::Drain => self.begin_drain(now, out),
            Follow::Handover => {
                let kind = self.restart.current().map_or("hot", |r| r.kind.as_str());
                log(
                    out,
                    Level::Info,
                    format!(
                        "{kind} restart: the new sup checked out; re-executing with {} worker(s) serving",
                        self.live_workers()
                    ),
                );
                out.push(Action::ReExec {
                    generation: self.generation,
                    adopt: true,
                });
            }
            Follow::StopReplacements { generation } => {
                self.stop_replacements(|w| w.generation == generation, now, out);
                self.refill_from_serving(generation, out);
            }
            Follow::EndHelper(pid) => self.end_helper(pid, now, out),
        }
    }

    /// The generation a slot is filled with outside a rollout: the current
    /// one, or after a failed rollout the one that still serves.
    fn spawn_generation(&self) -> u64 {
        match self.refill {
            Some(g) if self.restart.current().is_none() => g,
            _ => self.generation,
        }
    }

    /// A rollout to `failed` failed: until the next one, slots are refilled
    /// with the newest generation that still serves, from its pinned
    /// release (the release directory may still point at the broken one).
    fn refill_from_serving(&mut self, failed: u64, out: &mut Vec<Action>) {
        let serving = self
            .workers
            .iter()
            .filter(|w| !w.is_stopping() && w.generation < failed)
            .map(|w| w.generation)
            .max();
        if let Some(g) = serving {
            self.refill = Some(g);
            out.push(Action::PinRecipe { generation: g, like: g });
            log(
                out,
                Level::Info,
                format!(
                    "until the next restart, a worker that exits is replaced by gen {g}'s release (the one serving), not gen {failed}'s"
                ),
            );
        }
    }

    /// Puma's `phase` and a one-line summary: `gen 7: 3/4 ready, rolling slot 2`.
    pub fn status_line(&self) -> String {
        let ready = self.ready_slots();
        let mut line = format!("gen {}: {ready}/{} ready", self.generation, self.target);
        if self.stopping.is_some() {
            line.push_str(", stopping");
            return line;
        }
        let Some(r) = self.restart.current() else {
            return line;
        };
        match r.phase {
            Phase::Hook { .. } => line.push_str(&format!(", {} restart: running the hook", r.kind.as_str())),
            Phase::Preflight { .. } => line.push_str(", hot restart: checking the new sup"),
            Phase::Draining | Phase::Exec { .. } => line.push_str(", hot restart: stopping workers"),
            Phase::Starting { generation } => {
                let failing = self
                    .target_slots()
                    .filter(|(_, s)| s.failures > 0 && s.live().next().is_none())
                    .count();
                if failing == 0 {
                    line.push_str(", hot restart: starting workers");
                } else {
                    line.push_str(&format!(
                        ", hot restart: gen {generation} failing to start in {failing} slot(s), retrying"
                    ));
                }
            }
            Phase::Paused { generation } => line.push_str(&format!(
                ", {} restart paused: canary of gen {generation} ({} worker(s)); resume or roll back",
                r.kind.as_str(),
                self.live_workers_where(|w| w.generation == generation)
            )),
            Phase::Rolling { generation } => {
                let booting: Vec<String> = self
                    .workers
                    .iter()
                    .filter(|w| w.generation == generation && matches!(w.state, WorkerState::Booting { .. }))
                    .map(|w| w.slot.to_string())
                    .collect();
                if booting.is_empty() {
                    line.push_str(", rolling");
                } else {
                    line.push_str(&format!(", rolling slot {}", booting.join(",")));
                }
            }
        }
        line
    }

    /// What sup's own supervisor should hear, derived from the state.
    fn report_upward(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.started {
            return;
        }
        let announced = self.ready_announced || self.restart.ready_sent;
        let idle = self.restart.current().is_none() && self.stopping.is_none();
        if !announced && idle && self.ready_slots() == self.target {
            self.ready_announced = true;
            out.push(Action::Upward(Upward::Ready));
        }
        let status = self.status_line();
        if status != self.last_status {
            self.last_status = status.clone();
            out.push(Action::Upward(Upward::Status(status)));
        }
        // The keep-alive's first beat; then its timer ([`timers::Timer::Upward`]).
        if let Some(every) = self.settings.upward_watchdog
            && self.next_upward_watchdog.is_none()
            && self.stopping.is_none()
        {
            out.push(Action::Upward(Upward::Watchdog));
            self.next_upward_watchdog = Some(now + every);
        }
    }

    fn on_intent(&mut self, intent: Intent, now: Instant, out: &mut Vec<Action>) {
        match intent {
            Intent::Stop => self.begin_graceful(now, out),
            Intent::Interrupt => match self.stopping.as_ref().map(|s| s.mode) {
                None => self.begin_graceful(now, out),
                Some(state::Mode::Graceful) => {
                    log(out, Level::Warn, "second INT: stopping at once".to_string());
                    self.begin_immediate(now, out);
                }
                Some(state::Mode::Immediate { .. }) => {}
            },
            Intent::Halt => {
                if !matches!(
                    self.stopping.as_ref().map(|s| s.mode),
                    Some(state::Mode::Immediate { .. })
                ) {
                    log(out, Level::Info, "QUIT: stopping at once".to_string());
                    self.begin_immediate(now, out);
                }
            }
            Intent::Incr => self.scale(self.target + 1, "TTIN", now, out),
            Intent::Decr => self.scale(self.target.saturating_sub(1), "TTOU", now, out),
            Intent::Scale(n) => self.scale(n, "workers", now, out),
            Intent::Worker { target, action } => {
                if let Err(why) = self.on_worker(target, action, now, out) {
                    log(out, Level::Info, format!("worker request refused: {why}"));
                }
            }
            Intent::ReopenLogs => out.push(Action::ReopenLogs),
            Intent::Rolling => self.request_restart(RestartKind::Rolling, now, out),
            Intent::Canary(n) => {
                let plan = restart::Rollout {
                    canary: Some(n.max(1)),
                    ..restart::Rollout::default()
                };
                self.request_planned(RestartKind::Rolling, plan, now, out);
            }
            Intent::Resume => {
                if let Err(why) = self.restart.resume_paused(out) {
                    log(out, Level::Info, format!("resume refused: {why}"));
                }
            }
            Intent::Rollback { pinned } => {
                if let Err(why) = self.rollback(pinned, now, out) {
                    log(out, Level::Info, format!("rollback refused: {why}"));
                }
            }
            Intent::Hot => self.request_restart(RestartKind::Hot, now, out),
            Intent::Reexec => self.request_restart(RestartKind::Reexec, now, out),
        }
    }

    /// A control request: act as for the same signal, but answer with what
    /// was done. Returns the restart a request started (`Ok(None)` for the
    /// others), or why it was refused; `handle` turns it into the [`Reply`].
    fn on_control(
        &mut self,
        intent: Intent,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<Option<RestartRef>, String> {
        let kind = match intent {
            Intent::Hot => Some(RestartKind::Hot),
            Intent::Reexec => Some(RestartKind::Reexec),
            Intent::Rolling | Intent::Canary(_) => Some(RestartKind::Rolling),
            Intent::Resume => {
                let (id, kind) = self.restart.resume_paused(out)?;
                return Ok(Some(RestartRef { id, kind }));
            }
            Intent::Rollback { pinned } => {
                self.rollback(pinned, now, out)?;
                return Ok(Some(RestartRef {
                    id: self.restart.id(),
                    kind: RestartKind::Rollback,
                }));
            }
            _ => None,
        };
        if let Some(kind) = kind {
            let refusal = match &self.stopping {
                Some(_) => Some("sup is stopping".to_string()),
                None => self.restart.refusal(kind),
            };
            if let Some(reason) = refusal {
                log(out, Level::Info, format!("{} restart refused: {reason}", kind.as_str()));
                return Err(reason);
            }
            self.on_intent(intent, now, out);
            return Ok(Some(RestartRef {
                id: self.restart.id(),
                kind,
            }));
        }
        match intent {
            Intent::Incr | Intent::Decr | Intent::Scale(_) if self.stopping.is_some() => {
                Err("sup is stopping".to_string())
            }
            Intent::Decr if self.target <= 1 => Err("already at 1 worker, the fewest there can be".to_string()),
            Intent::Worker { target, action } => self.on_worker(target, action, now, out).map(|()| None),
            _ => {
                self.on_intent(intent, now, out);
                Ok(None)
            }
        }
    }

    fn request_restart(&mut self, kind: RestartKind, now: Instant, out: &mut Vec<Action>) {
        self.request_planned(kind, restart::Rollout::default(), now, out);
    }

    fn request_planned(&mut self, kind: RestartKind, plan: restart::Rollout, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            log(
                out,
                Level::Info,
                format!("{} restart ignored: sup is stopping", kind.as_str()),
            );
            return;
        }
        let follow = self.restart.request(kind, plan, now, &mut self.counters, out);
        self.follow(follow, now, out);
    }

    /// Change the worker count to `n` (never below one): new slots are
    /// filled; workers in removed slots are stopped gracefully.
    fn scale(&mut self, n: usize, what: &str, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        if n < 1 {
            log(out, Level::Info, format!("{what} ignored: already at 1 worker"));
            return;
        }
        if n == self.target {
            return;
        }
        log(out, Level::Info, format!("{what}: workers {} → {n}", self.target));
        if n > self.slots.len() {
            self.slots.resize(n, Slot::default());
        }
        for slot in n..self.target {
            self.slots[slot].forget();
        }
        self.target = n;
        self.keep_retiring();
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if w.slot >= self.target && !w.is_stopping() && !self.is_retiring(w.pid) {
                // With per-slot sockets, what waits in the slot's own queue
                // is served before its worker stops.
                if self.settings.balance {
                    self.retire(i, now, out);
                } else {
                    self.stop_worker(i, now, out);
                }
            }
        }
    }

    /// The rollout of a new generation begins (rolling restart after its
    /// hook; overlap hot restart in the new image; a rollback).
    fn start_rollout(&mut self, now: Instant, out: &mut Vec<Action>) {
        let before = self.generation;
        self.generation += 1;
        self.refill = None;
        self.roll_cursor = 0;
        let generation = self.generation;
        let plan = self.restart.current().map(|r| r.plan).unwrap_or_default();
        let kind = self.restart.roll_out(generation).as_str();
        match plan.like {
            // A rollback: the new generation runs the pinned release; there
            // is nothing further back to roll back to.
            Some(like) => {
                out.push(Action::PinRecipe { generation, like });
                self.rollback_target = None;
                log(
                    out,
                    Level::Info,
                    format!(
                        "rollback to gen {like}'s release as gen {generation}: the workers of gen {} are replaced, {} at a time",
                        plan.only.unwrap_or(before),
                        self.settings.max_surge.min(self.target)
                    ),
                );
            }
            None => {
                // The target is what served when this rollout began: after a
                // failed rollout, the generation before it, not the one that
                // never came up.
                if self.workers.iter().any(|w| !w.is_stopping() && w.generation == before) {
                    self.rollback_target = Some(before);
                }
                let how = if kind == "rolling" { "" } else { ", rolling" };
                let canary = plan
                    .canary
                    .map(|n| format!(", a canary of {n} first"))
                    .unwrap_or_default();
                log(
                    out,
                    Level::Info,
                    format!(
                        "{kind} restart to gen {generation}{how}: {} worker(s), {} at a time{canary}",
                        self.target,
                        self.settings.max_surge.min(self.target)
                    ),
                );
            }
        }
        // Replacements still booting from a superseded rollout are not
        // serving yet: stop them, the new rollout replaces their slot.
        self.stop_replacements(|w| w.generation < generation, now, out);
    }

    /// Stop mode: the preflight passed. Stop every worker (old and new code
    /// never serve at once); the exec follows once they are all gone.
    fn begin_drain(&mut self, now: Instant, out: &mut Vec<Action>) {
        log(
            out,
            Level::Info,
            format!(
                "hot restart: the new sup checked out; stopping {} worker(s), then re-executing",
                self.live_workers()
            ),
        );
        for i in 0..self.workers.len() {
            if !self.workers[i].is_stopping() {
                self.stop_worker(i, now, out);
            }
        }
    }

    /// Stop the booting replacements (an older worker still serves their
    /// slot) that `which` picks.
    fn stop_replacements(&mut self, which: impl Fn(&Worker) -> bool, now: Instant, out: &mut Vec<Action>) {
        let doomed: Vec<usize> = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Replacing {
                    new: crate::worker::Replacement::Started { pid },
                    ..
                } => self.find(pid),
                _ => None,
            })
            .filter(|&i| matches!(self.workers[i].state, WorkerState::Booting { .. }) && which(&self.workers[i]))
            .collect();
        for i in doomed {
            self.stop_worker(i, now, out);
        }
    }

    /// A booting worker of the generation being brought up failed.
    fn replacement_failed(
        &mut self,
        slot: usize,
        generation: u64,
        reason: String,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if self.restart.rolling_generation() != Some(generation) {
            return;
        }
        let failures = self.slots.get(slot).map_or(0, |s| s.failures);
        let serving = self.live_workers();
        let follow = self
            .restart
            .replacement_failed(slot, reason, failures, serving, now, &mut self.counters, out);
        self.follow(follow, now, out);
    }

    fn on_spawned(&mut self, slot: usize, generation: u64, pid: Pid, now: Instant, out: &mut Vec<Action>) {
        if slot >= self.slots.len() {
            self.slots.resize(slot + 1, Slot::default());
        }
        // A replacement is kept only for the rollout (or recycling) that
        // asked for it: one that ended or started over no longer wants it.
        let replacement = matches!(self.slots[slot].state, SlotState::Replacing { .. });
        let recycled = self.recycling.is_recycling(slot) && generation == self.spawn_generation();
        let wanted = !replacement || recycled || self.restart.rolling_generation() == Some(generation);
        let taken = self.slots[slot].take(pid);
        let (delay, timeout) = (self.settings.ready_delay, self.settings.boot_timeout);
        let worker = Worker::booting(slot, generation, pid, now, delay, timeout);
        log(out, Level::Info, format!("{} started", worker.label()));
        let i = self.push_worker(worker);
        self.note_replacing(slot);
        // A spawn can only be requested while running, but a stop may have
        // been decided in the same batch of events: stop the newcomer too.
        if self.stopping.is_some() || slot >= self.target || !taken || !wanted {
            self.stop_worker(i, now, out);
        }
    }

    /// Count a failed run of `slot` and schedule its next spawn.
    fn record_failure(&mut self, slot: usize, healthy_run: bool, status: Option<ExitStatus>, now: Instant) -> Duration {
        let backoff = self.settings.backoff;
        let Some(s) = self.slots.get_mut(slot) else {
            return Duration::ZERO;
        };
        s.failures = if healthy_run { 1 } else { s.failures.saturating_add(1) };
        if status.is_some() {
            s.restarts = s.restarts.saturating_add(1);
            s.last_exit = status;
        }
        let delay = backoff.delay(s.failures);
        // No delay is no deadline: the slot is filled by the next pass
        // that may fill it.
        if !delay.is_zero() {
            s.back_off_until(now + delay);
        }
        delay
    }

    fn on_spawn_failed(&mut self, slot: usize, generation: u64, reason: &str, now: Instant, out: &mut Vec<Action>) {
        self.counters.spawn_failures += 1;
        let Some(s) = self.slots.get_mut(slot) else { return };
        s.spawn_failed();
        let delay = self.record_failure(slot, false, None, now);
        let failures = self.slots[slot].failures;
        log(
            out,
            Level::Error,
            format!(
                "worker {slot} (gen {generation}) failed to start: {reason}; {}",
                retry_text(delay, failures)
            ),
        );
        self.replacement_failed(slot, generation, format!("failed to start: {reason}"), now, out);
    }

    fn on_exited(&mut self, pid: Pid, status: ExitStatus, group_alive: bool, now: Instant, out: &mut Vec<Action>) {
        let Some(i) = self.find(pid) else {
            self.on_other_exited(pid, status, out);
            return;
        };
        let w = self.remove_worker(i);
        let label = w.label();
        let cause = if w.is_stopping() {
            ExitCause::Stopped
        } else {
            ExitCause::Crashed
        };
        self.counters.exits.bump(cause);
        if let WorkerState::Stopping { kill_at, .. } = w.state {
            let clean = matches!(status, ExitStatus::Code(0))
                || status == ExitStatus::Signaled(self.settings.stop_signal as i32)
                || status == ExitStatus::Signaled(nix::sys::signal::Signal::SIGKILL as i32);
            let level = if clean { Level::Info } else { Level::Warn };
            log(out, level, format!("{label} stopped ({status})"));
            if group_alive {
                self.linger(Pgid::led_by(w.pid), w.slot, kill_at, now, &label, out);
            }
            return;
        }
        // An unexpected exit: whatever else is left of its group is an orphan
        // of a dead worker and would hold the sockets; kill it now.
        if group_alive {
            out.push(Action::KillGroup {
                pgid: Pgid::led_by(w.pid),
            });
        }
        let booting = matches!(w.state, WorkerState::Booting { .. });
        let healthy = now.saturating_duration_since(w.spawned_at) >= self.settings.backoff.reset_after;
        let delay = self.record_failure(w.slot, healthy, Some(status), now);
        let failures = self.slots.get(w.slot).map_or(0, |s| s.failures);
        let vacant = self.slots.get(w.slot).is_some_and(|s| s.live().next().is_none());
        let replaced = self.stopping.is_none() && w.slot < self.target && vacant;
        let when = if replaced {
            retry_text(delay, failures)
        } else {
            "not replaced".to_string()
        };
        let phase = if booting { " before becoming ready" } else { "" };
        log(out, Level::Warn, format!("{label} exited with {status}{phase}; {when}"));
        if let WorkerState::Ready { since } = w.state
            && replaced
        {
            self.served_and_exited(w.slot, since, now, out);
        }
        if booting {
            let reason = format!("(pid {pid}) exited with {status} before becoming ready");
            self.replacement_failed(w.slot, w.generation, reason, now, out);
        }
    }

    /// Which worker a notify message is about: the sender itself, a process
    /// in a worker's process group (a child such as systemd-notify), or a
    /// worker named by `MAINPID=` from a trusted user. A worker that is
    /// stopping is still itself: servers say `STOPPING=1` (gunicorn, Puma)
    /// or a last `STATUS=` after the stop signal.
    fn attribute(&self, sender: Option<Sender>, message: &Message) -> Option<usize> {
        let sender = sender?;
        self.find(sender.pid)
            .or_else(|| sender.pgid.and_then(|g| self.find(g.leader())))
            .or_else(|| {
                let trusted = self.settings.trusted_uids.contains(&sender.uid);
                message.mainpid.filter(|_| trusted).and_then(|p| self.find(p))
            })
    }

    /// `--ready fd:N`: a newline on the worker's readiness fd makes it
    /// ready; the fd closed without one is a failed boot.
    fn on_ready_fd(&mut self, pid: Pid, ready: bool, now: Instant, out: &mut Vec<Action>) {
        let Some(i) = self.find(pid) else { return };
        let w = &mut self.workers[i];
        if !matches!(w.state, WorkerState::Booting { .. }) {
            return;
        }
        if ready {
            w.state = WorkerState::Ready { since: now };
            log(out, Level::Info, format!("{} is ready", w.label()));
            return;
        }
        let (label, slot, generation) = (w.label(), w.slot, w.generation);
        log(
            out,
            Level::Error,
            format!("{label} closed its readiness fd without writing a newline: a failed boot; killing it"),
        );
        self.kill_worker(i, now, out);
        self.record_failure(slot, false, None, now);
        let reason = format!("(pid {pid}) closed its readiness fd without a newline");
        self.replacement_failed(slot, generation, reason, now, out);
    }

    fn on_notify(&mut self, sender: Option<Sender>, message: &Message, now: Instant, out: &mut Vec<Action>) {
        if message.is_empty() {
            return;
        }
        let Some(i) = self.attribute(sender, message) else {
            let who = match sender {
                Some(s) => format!("pid {} (uid {})", s.pid, s.uid),
                None => "a sender without credentials".to_string(),
            };
            log(
                out,
                Level::Warn,
                format!("dropped a notify message from {who}: not a worker nor in a worker's process group"),
            );
            return;
        };
        let watchdog = self.settings.watchdog;
        let w = &mut self.workers[i];
        let stopping = if w.is_stopping() { " (stopping)" } else { "" };
        if let Some(status) = &message.status {
            log(out, Level::Debug, format!("{}{stopping}: STATUS={status}", w.label()));
            w.status = Some(status.clone());
        }
        if message.stopping {
            log(out, Level::Info, format!("{} says it is stopping", w.label()));
        }
        // A stopping worker is on its way out: neither readiness nor a
        // watchdog ping brings it back.
        if w.is_stopping() {
            return;
        }
        if message.watchdog
            && let Some(d) = watchdog
        {
            w.watchdog_deadline = Some(now + d);
        }
        if message.ready && matches!(w.state, WorkerState::Booting { .. }) {
            w.state = WorkerState::Ready { since: now };
            log(out, Level::Info, format!("{} is ready", w.label()));
        }
        if message.recycle && !w.recycle_asked {
            w.recycle_asked = true;
            self.recycling.asked = true;
            log(out, Level::Info, format!("{} asks to be recycled", w.label()));
        }
    }
}

/// The most spawns one event leads to (see `fill`).
const SPAWN_BATCH: usize = 32;

fn retry_text(delay: Duration, failures: u32) -> String {
    if delay.is_zero() {
        "restarting".to_string()
    } else {
        format!("restarting in {delay:?} ({failures} failures in a row)")
    }
}

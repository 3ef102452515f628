//! The supervisor's decisions: `(event, now) → actions`, and the next deadline.
//!
//! Everything sup decides happens here — when to spawn, when to stop or
//! kill, how long to back off, when to exit — so it is tested by feeding
//! events and asserting actions, without processes. The core makes no
//! syscalls, never reads the clock (callers pass `now`), and does not log:
//! it returns [`Action::Log`] lines for the shell to write. It must not
//! import the shell (`event_loop`, `spawn`, `sockets`).
//!
//! Idle means no deadline: a steady sup sets no timer at all.

use std::time::{Duration, Instant};

use log::Level;

use crate::worker::{Backoff, ExitStatus, Lingering, SlotState, Worker, WorkerState};

/// What the signal handlers (and later the control server) ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// TERM: graceful stop.
    Stop,
    /// INT: graceful stop; a second one stops at once.
    Interrupt,
    /// QUIT: immediate stop.
    Halt,
    /// TTIN: one worker more.
    Incr,
    /// TTOU: one worker fewer (never below one).
    Decr,
    /// HUP: reopen the log file.
    ReopenLogs,
}

/// Something that happened, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// sup has bound its sockets and is ready to start workers.
    Started,
    Intent(Intent),
    /// The spawn the core asked for produced a process.
    Spawned {
        slot: usize,
        generation: u64,
        pid: i32,
    },
    /// The spawn the core asked for failed before the program ran.
    SpawnFailed {
        slot: usize,
        generation: u64,
        reason: String,
    },
    /// `waitpid` reaped `pid`; `group_alive` says whether its process group
    /// still has members.
    Exited {
        pid: i32,
        status: ExitStatus,
        group_alive: bool,
    },
    /// A deadline passed (the poll timed out).
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn {
        slot: usize,
        generation: u64,
    },
    /// Send `signal` to one live worker's pid.
    Signal {
        pid: i32,
        signal: i32,
    },
    /// SIGKILL a whole process group.
    KillGroup {
        pgid: i32,
    },
    ReopenLogs,
    Log {
        level: Level,
        message: String,
    },
    /// Clean up and exit with this status.
    Exit(i32),
}

/// The fixed settings the core decides with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workers: usize,
    pub stop_signal: i32,
    pub graceful_timeout: Duration,
    pub ready_delay: Duration,
    pub backoff: Backoff,
    /// After an immediate stop, how long to wait for reaping before exiting anyway.
    pub halt_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    Graceful,
    Immediate { exit_by: Instant },
}

/// The supervisor's whole state.
#[derive(Debug)]
pub struct Core {
    settings: Settings,
    target: usize,
    generation: u64,
    workers: Vec<Worker>,
    lingering: Vec<Lingering>,
    slots: Vec<SlotState>,
    shutdown: Option<Shutdown>,
    started: bool,
    exited: bool,
}

const SIGKILL: i32 = 9;
const SIGCONT: i32 = 18;

impl Core {
    pub fn new(settings: Settings) -> Core {
        let target = settings.workers.max(1);
        Core {
            settings,
            target,
            generation: 0,
            workers: Vec::new(),
            lingering: Vec::new(),
            slots: vec![SlotState::default(); target],
            shutdown: None,
            started: false,
            exited: false,
        }
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn slot(&self, slot: usize) -> Option<&SlotState> {
        self.slots.get(slot)
    }

    /// Decide what to do about `event` at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.exited {
            return out;
        }
        match event {
            Event::Started => self.started = true,
            Event::Intent(intent) => self.on_intent(intent, now, &mut out),
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
            } => self.on_exited(pid, status, group_alive, now, &mut out),
            Event::Tick => {}
        }
        self.on_deadlines(now, &mut out);
        self.reconcile(now, &mut out);
        self.check_done(now, &mut out);
        out
    }

    /// The earliest instant at which [`Event::Tick`] has something to do;
    /// `None` when nothing is timed (an idle sup sleeps until an event).
    pub fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.iter().filter_map(|w| match w.state {
            WorkerState::Booting { ready_at } => Some(ready_at),
            WorkerState::Stopping { kill_at, killed: false } => Some(kill_at),
            _ => None,
        });
        let lingering = self.lingering.iter().map(|l| l.kill_at);
        let backoff = self
            .slots
            .iter()
            .enumerate()
            .filter(|_| self.shutdown.is_none())
            .filter(|(i, s)| *i < self.target && !s.spawning && !self.slot_occupied(*i))
            .filter_map(|(_, s)| s.not_before);
        let exit = match self.shutdown {
            Some(Shutdown::Immediate { exit_by }) => Some(exit_by),
            _ => None,
        };
        workers.chain(lingering).chain(backoff).chain(exit).min()
    }

    fn on_intent(&mut self, intent: Intent, now: Instant, out: &mut Vec<Action>) {
        match intent {
            Intent::Stop => self.begin_graceful(now, out),
            Intent::Interrupt => match self.shutdown {
                None => self.begin_graceful(now, out),
                Some(Shutdown::Graceful) => {
                    log(out, Level::Warn, "second INT: stopping at once".to_string());
                    self.begin_immediate(now, out);
                }
                Some(Shutdown::Immediate { .. }) => {}
            },
            Intent::Halt => {
                if !matches!(self.shutdown, Some(Shutdown::Immediate { .. })) {
                    log(out, Level::Info, "QUIT: stopping at once".to_string());
                    self.begin_immediate(now, out);
                }
            }
            Intent::Incr => {
                if self.shutdown.is_some() {
                    return;
                }
                self.target += 1;
                if self.slots.len() < self.target {
                    self.slots.resize(self.target, SlotState::default());
                }
                log(
                    out,
                    Level::Info,
                    format!("TTIN: workers {} → {}", self.target - 1, self.target),
                );
            }
            Intent::Decr => {
                if self.shutdown.is_some() {
                    return;
                }
                if self.target <= 1 {
                    log(out, Level::Info, "TTOU ignored: already at 1 worker".to_string());
                    return;
                }
                self.target -= 1;
                log(
                    out,
                    Level::Info,
                    format!("TTOU: workers {} → {}", self.target + 1, self.target),
                );
                let removed = self.target;
                self.slots[removed] = SlotState::default();
                for i in 0..self.workers.len() {
                    if self.workers[i].slot >= self.target && !self.workers[i].is_stopping() {
                        self.stop_worker(i, now, out);
                    }
                }
            }
            Intent::ReopenLogs => out.push(Action::ReopenLogs),
        }
    }

    fn begin_graceful(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(Shutdown::Graceful);
        let live = self.workers.iter().filter(|w| !w.is_stopping()).count();
        log(
            out,
            Level::Info,
            format!(
                "stopping: {live} worker(s) get the stop signal, {:?} to finish",
                self.settings.graceful_timeout
            ),
        );
        for i in 0..self.workers.len() {
            if !self.workers[i].is_stopping() {
                self.stop_worker(i, now, out);
            }
        }
    }

    fn begin_immediate(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.shutdown = Some(Shutdown::Immediate {
            exit_by: now + self.settings.halt_timeout,
        });
        for w in &mut self.workers {
            out.push(Action::KillGroup { pgid: w.pid });
            w.state = WorkerState::Stopping {
                kill_at: now,
                killed: true,
            };
        }
        for l in self.lingering.drain(..) {
            out.push(Action::KillGroup { pgid: l.pgid });
        }
    }

    /// Send the stop signal to worker `i` and start its graceful deadline.
    fn stop_worker(&mut self, i: usize, now: Instant, out: &mut Vec<Action>) {
        let w = &mut self.workers[i];
        out.push(Action::Signal {
            pid: w.pid,
            signal: self.settings.stop_signal,
        });
        // A stopped (SIGSTOP) process cannot act on the stop signal until continued.
        out.push(Action::Signal {
            pid: w.pid,
            signal: SIGCONT,
        });
        w.state = WorkerState::Stopping {
            kill_at: now + self.settings.graceful_timeout,
            killed: false,
        };
    }

    fn on_spawned(&mut self, slot: usize, generation: u64, pid: i32, now: Instant, out: &mut Vec<Action>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.spawning = false;
        }
        let worker = Worker {
            slot,
            generation,
            pid,
            spawned_at: now,
            state: WorkerState::Booting {
                ready_at: now + self.settings.ready_delay,
            },
        };
        log(out, Level::Info, format!("{} started", worker.label()));
        self.workers.push(worker);
        // A spawn can only be requested while running, but a stop may have
        // been decided in the same batch of events: stop the newcomer too.
        if self.shutdown.is_some() || slot >= self.target {
            let i = self.workers.len() - 1;
            self.stop_worker(i, now, out);
        }
    }

    fn on_spawn_failed(&mut self, slot: usize, generation: u64, reason: &str, now: Instant, out: &mut Vec<Action>) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        s.spawning = false;
        s.failures = s.failures.saturating_add(1);
        let delay = self.settings.backoff.delay(s.failures);
        s.not_before = Some(now + delay);
        log(
            out,
            Level::Error,
            format!(
                "worker {slot} (gen {generation}) failed to start: {reason}; {}",
                retry_text(delay, s.failures)
            ),
        );
    }

    fn on_exited(&mut self, pid: i32, status: ExitStatus, group_alive: bool, now: Instant, out: &mut Vec<Action>) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            // An orphan that was re-parented to sup (it is a subreaper), or a
            // member of a lingering group.
            log(out, Level::Debug, format!("reaped process {pid} ({status})"));
            return;
        };
        let w = self.workers.remove(i);
        let label = w.label();
        let expected = match w.state {
            WorkerState::Stopping { kill_at, .. } => {
                let clean = matches!(status, ExitStatus::Code(0))
                    || status == ExitStatus::Signaled(self.settings.stop_signal)
                    || status == ExitStatus::Signaled(SIGKILL);
                let level = if clean { Level::Info } else { Level::Warn };
                log(out, level, format!("{label} stopped ({status})"));
                if group_alive {
                    self.linger(w.pid, w.slot, kill_at, &label, out);
                }
                true
            }
            WorkerState::Booting { .. } | WorkerState::Ready { .. } => false,
        };
        if expected {
            return;
        }
        // An unexpected exit: whatever else is left of its group is an orphan
        // of a dead worker and would hold the sockets; kill it now.
        if group_alive {
            out.push(Action::KillGroup { pgid: w.pid });
        }
        let backoff = self.settings.backoff;
        let Some(s) = self.slots.get_mut(w.slot) else { return };
        let healthy = now.saturating_duration_since(w.spawned_at) >= backoff.reset_after;
        s.failures = if healthy { 1 } else { s.failures.saturating_add(1) };
        s.restarts = s.restarts.saturating_add(1);
        s.last_exit = Some(status);
        let delay = backoff.delay(s.failures);
        s.not_before = Some(now + delay);
        let when = if self.shutdown.is_some() || w.slot >= self.target {
            "not replaced".to_string()
        } else {
            retry_text(delay, s.failures)
        };
        let phase = match w.state {
            WorkerState::Booting { .. } => " before becoming ready",
            _ => "",
        };
        log(out, Level::Warn, format!("{label} exited with {status}{phase}; {when}"));
    }

    fn linger(&mut self, pgid: i32, slot: usize, kill_at: Instant, label: &str, out: &mut Vec<Action>) {
        if matches!(self.shutdown, Some(Shutdown::Immediate { .. })) {
            out.push(Action::KillGroup { pgid });
            return;
        }
        log(
            out,
            Level::Info,
            format!("{label}: other processes remain in its group; they are killed if still there at the deadline"),
        );
        self.lingering.push(Lingering { pgid, slot, kill_at });
    }

    fn on_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        let graceful = self.settings.graceful_timeout;
        for w in &mut self.workers {
            match w.state {
                WorkerState::Booting { ready_at } if ready_at <= now => {
                    w.state = WorkerState::Ready { since: now };
                    log(out, Level::Info, format!("{} is ready", w.label()));
                }
                WorkerState::Stopping { kill_at, killed: false } if kill_at <= now => {
                    log(
                        out,
                        Level::Warn,
                        format!(
                            "{} did not stop within {graceful:?}: killing its process group",
                            w.label()
                        ),
                    );
                    out.push(Action::KillGroup { pgid: w.pid });
                    w.state = WorkerState::Stopping { kill_at, killed: true };
                }
                _ => {}
            }
        }
        let (due, keep): (Vec<_>, Vec<_>) = self.lingering.drain(..).partition(|l| l.kill_at <= now);
        self.lingering = keep;
        for l in due {
            log(
                out,
                Level::Warn,
                format!("killing what remains of worker {}'s process group {}", l.slot, l.pgid),
            );
            out.push(Action::KillGroup { pgid: l.pgid });
        }
    }

    fn slot_occupied(&self, slot: usize) -> bool {
        self.workers.iter().any(|w| w.slot == slot && !w.is_stopping())
    }

    /// Bring the table towards `target` live workers: spawn into every empty
    /// slot whose backoff has passed.
    fn reconcile(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.started || self.shutdown.is_some() {
            return;
        }
        for slot in 0..self.target {
            let s = &self.slots[slot];
            let waiting = s.not_before.is_some_and(|t| t > now);
            if s.spawning || waiting || self.slot_occupied(slot) {
                continue;
            }
            self.slots[slot].spawning = true;
            self.slots[slot].not_before = None;
            out.push(Action::Spawn {
                slot,
                generation: self.generation,
            });
        }
    }

    fn check_done(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(shutdown) = self.shutdown else { return };
        let drained = self.workers.is_empty() && self.lingering.is_empty();
        let out_of_time = matches!(shutdown, Shutdown::Immediate { exit_by } if exit_by <= now);
        if drained || out_of_time {
            if !drained {
                let left: Vec<String> = self.workers.iter().map(Worker::label).collect();
                log(
                    out,
                    Level::Error,
                    format!("exiting with unreaped workers: {}", left.join(", ")),
                );
            }
            self.exited = true;
            out.push(Action::Exit(0));
        }
    }
}

fn log(out: &mut Vec<Action>, level: Level, message: String) {
    out.push(Action::Log { level, message });
}

fn retry_text(delay: Duration, failures: u32) -> String {
    if delay.is_zero() {
        "restarting".to_string()
    } else {
        format!("restarting in {delay:?} ({failures} failures in a row)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: i32 = 15;

    fn settings(workers: usize) -> Settings {
        Settings {
            workers,
            stop_signal: TERM,
            graceful_timeout: Duration::from_secs(30),
            ready_delay: Duration::from_secs(1),
            backoff: Backoff::default(),
            halt_timeout: Duration::from_secs(5),
        }
    }

    /// Drives a core like the shell does: spawns get pids 100, 101, …
    struct Harness {
        core: Core,
        t0: Instant,
        next_pid: i32,
        fail_spawns: bool,
        signals: Vec<(i32, i32)>,
        killed_groups: Vec<i32>,
        exit: Option<i32>,
        logs: Vec<String>,
        spawns: usize,
    }

    impl Harness {
        fn new(workers: usize) -> Harness {
            let mut h = Harness {
                core: Core::new(settings(workers)),
                t0: Instant::now(),
                next_pid: 100,
                fail_spawns: false,
                signals: vec![],
                killed_groups: vec![],
                exit: None,
                logs: vec![],
                spawns: 0,
            };
            h.send(Event::Started, 0);
            h
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn send(&mut self, event: Event, ms: u64) {
            let now = self.at(ms);
            let mut queue = std::collections::VecDeque::from([event]);
            while let Some(ev) = queue.pop_front() {
                for action in self.core.handle(ev, now) {
                    match action {
                        Action::Spawn { slot, generation } => {
                            self.spawns += 1;
                            if self.fail_spawns {
                                queue.push_back(Event::SpawnFailed {
                                    slot,
                                    generation,
                                    reason: "boom".into(),
                                });
                            } else {
                                queue.push_back(Event::Spawned {
                                    slot,
                                    generation,
                                    pid: self.next_pid,
                                });
                                self.next_pid += 1;
                            }
                        }
                        Action::Signal { pid, signal } => self.signals.push((pid, signal)),
                        Action::KillGroup { pgid } => self.killed_groups.push(pgid),
                        Action::ReopenLogs => {}
                        Action::Log { message, .. } => self.logs.push(message),
                        Action::Exit(code) => self.exit = Some(code),
                    }
                }
            }
        }

        fn exit(&mut self, pid: i32, status: ExitStatus, ms: u64) {
            self.send(
                Event::Exited {
                    pid,
                    status,
                    group_alive: false,
                },
                ms,
            );
        }

        fn pids(&self) -> Vec<i32> {
            let mut p: Vec<i32> = self.core.workers().iter().map(|w| w.pid).collect();
            p.sort();
            p
        }

        fn tick_until(&mut self, ms: u64) {
            while let Some(d) = self.core.next_deadline() {
                let at = d.duration_since(self.t0).as_millis() as u64;
                if at > ms {
                    break;
                }
                self.send(Event::Tick, at);
            }
        }
    }

    #[test]
    fn starts_one_worker_per_slot() {
        let h = Harness::new(4);
        assert_eq!(h.pids(), [100, 101, 102, 103]);
        let slots: Vec<usize> = h.core.workers().iter().map(|w| w.slot).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
    }

    #[test]
    fn nothing_spawns_before_started() {
        let mut core = Core::new(settings(2));
        assert_eq!(core.handle(Event::Tick, Instant::now()), vec![]);
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn ready_after_delay_then_idle_has_no_deadline() {
        let mut h = Harness::new(2);
        assert_eq!(h.core.next_deadline(), Some(h.at(1000)));
        h.send(Event::Tick, 1000);
        assert!(
            h.core
                .workers()
                .iter()
                .all(|w| matches!(w.state, WorkerState::Ready { .. }))
        );
        assert_eq!(h.core.next_deadline(), None);
    }

    #[test]
    fn a_crashed_worker_is_replaced_in_its_slot() {
        let mut h = Harness::new(2);
        h.send(Event::Tick, 1000);
        h.exit(101, ExitStatus::Signaled(9), 20_000);
        assert_eq!(h.pids(), [100, 102]);
        let w = h.core.workers().iter().find(|w| w.pid == 102).unwrap();
        assert_eq!(w.slot, 1);
        let s = h.core.slot(1).unwrap();
        assert_eq!((s.restarts, s.last_exit), (1, Some(ExitStatus::Signaled(9))));
    }

    #[test]
    fn a_crash_loop_backs_off_exponentially() {
        let mut h = Harness::new(1);
        // The command exits as soon as it starts, for 10 simulated seconds.
        let mut now = 0;
        while now < 10_000 {
            let pid = h.pids()[0];
            h.exit(pid, ExitStatus::Code(1), now + 10);
            match h.core.next_deadline() {
                Some(d) if h.pids().is_empty() => {
                    now = d.duration_since(h.t0).as_millis() as u64;
                    h.send(Event::Tick, now);
                }
                _ => now += 10,
            }
        }
        // Spawns at ~0, 10, 520, 1530, 3540, 7550 ms: six, not thousands.
        assert!(h.spawns <= 7, "spawned {} times", h.spawns);
        assert!(
            h.logs
                .iter()
                .any(|l| l.contains("restarting in 8s (6 failures in a row)")),
            "{:?}",
            h.logs
        );
    }

    #[test]
    fn a_healthy_run_resets_the_backoff() {
        let mut h = Harness::new(1);
        h.exit(100, ExitStatus::Code(1), 10);
        h.exit(101, ExitStatus::Code(1), 20);
        assert_eq!(h.core.slot(0).unwrap().failures, 2);
        h.tick_until(600);
        assert_eq!(h.pids(), [102]);
        h.exit(102, ExitStatus::Code(1), 60_000);
        assert_eq!(h.core.slot(0).unwrap().failures, 1);
        assert_eq!(h.pids(), [103], "replaced at once after a long run");
    }

    #[test]
    fn failed_spawns_back_off_too() {
        let mut h = Harness::new(1);
        h.exit(100, ExitStatus::Code(1), 10);
        // pid 101 was spawned at once; now make spawns fail.
        h.fail_spawns = true;
        h.exit(101, ExitStatus::Code(1), 20);
        let before = h.spawns;
        h.tick_until(5_000);
        assert!(h.spawns - before <= 4, "{} spawns", h.spawns - before);
        assert!(h.logs.iter().any(|l| l.contains("failed to start: boom")));
        h.fail_spawns = false;
        h.tick_until(60_000);
        assert_eq!(h.pids().len(), 1);
    }

    #[test]
    fn graceful_stop_signals_then_kills_then_exits() {
        let mut h = Harness::new(2);
        h.send(Event::Intent(Intent::Stop), 5_000);
        assert_eq!(h.signals, [(100, TERM), (100, SIGCONT), (101, TERM), (101, SIGCONT)]);
        assert_eq!(h.core.next_deadline(), Some(h.at(35_000)));
        h.exit(100, ExitStatus::Signaled(TERM), 6_000);
        assert_eq!(h.exit, None);
        assert_eq!(h.pids(), [101], "no replacement while stopping");
        h.send(Event::Tick, 35_000);
        assert_eq!(h.killed_groups, [101]);
        h.exit(101, ExitStatus::Signaled(9), 35_001);
        assert_eq!(h.exit, Some(0));
    }

    #[test]
    fn second_int_is_immediate_and_quit_is_immediate() {
        let mut h = Harness::new(2);
        h.send(Event::Intent(Intent::Interrupt), 10);
        assert!(h.killed_groups.is_empty());
        h.send(Event::Intent(Intent::Interrupt), 20);
        assert_eq!(h.killed_groups, [100, 101]);
        h.exit(100, ExitStatus::Signaled(9), 30);
        h.exit(101, ExitStatus::Signaled(9), 30);
        assert_eq!(h.exit, Some(0));

        let mut q = Harness::new(1);
        q.send(Event::Intent(Intent::Halt), 10);
        assert_eq!(q.killed_groups, [100]);
        // A process that never dies (D state) does not keep sup forever.
        q.send(Event::Tick, 5_010);
        assert_eq!(q.exit, Some(0));
    }

    #[test]
    fn a_repeated_term_does_not_escalate() {
        let mut h = Harness::new(1);
        h.send(Event::Intent(Intent::Stop), 10);
        h.send(Event::Intent(Intent::Stop), 20);
        assert!(h.killed_groups.is_empty());
        assert_eq!(h.signals.len(), 2);
    }

    #[test]
    fn stop_with_no_workers_exits_at_once() {
        let mut h = Harness::new(1);
        h.exit(100, ExitStatus::Code(1), 10);
        h.exit(101, ExitStatus::Code(1), 20); // now backing off, no worker
        assert!(h.pids().is_empty());
        h.send(Event::Intent(Intent::Stop), 30);
        assert_eq!(h.exit, Some(0));
    }

    #[test]
    fn lingering_group_members_are_killed_at_the_deadline() {
        let mut h = Harness::new(1);
        h.send(Event::Intent(Intent::Stop), 0);
        h.send(
            Event::Exited {
                pid: 100,
                status: ExitStatus::Signaled(TERM),
                group_alive: true,
            },
            100,
        );
        assert_eq!(h.exit, None, "waits for the group");
        assert_eq!(h.core.next_deadline(), Some(h.at(30_000)));
        h.send(Event::Tick, 30_000);
        assert_eq!(h.killed_groups, [100]);
        assert_eq!(h.exit, Some(0));
    }

    #[test]
    fn an_unexpected_exit_kills_the_rest_of_the_group_now() {
        let mut h = Harness::new(1);
        h.send(
            Event::Exited {
                pid: 100,
                status: ExitStatus::Code(1),
                group_alive: true,
            },
            100,
        );
        assert_eq!(h.killed_groups, [100]);
        assert_eq!(h.pids(), [101]);
    }

    #[test]
    fn ttin_and_ttou_scale_never_below_one() {
        let mut h = Harness::new(2);
        h.send(Event::Intent(Intent::Incr), 10);
        assert_eq!(h.pids(), [100, 101, 102]);
        h.send(Event::Intent(Intent::Decr), 20);
        assert_eq!(h.signals, [(102, TERM), (102, SIGCONT)]);
        h.exit(102, ExitStatus::Signaled(TERM), 30);
        assert_eq!(h.pids(), [100, 101], "slot 2 is not refilled");
        h.send(Event::Intent(Intent::Decr), 40);
        h.exit(101, ExitStatus::Code(0), 50);
        h.send(Event::Intent(Intent::Decr), 60);
        assert_eq!(h.core.target(), 1);
        assert_eq!(h.pids(), [100]);
        assert!(h.logs.iter().any(|l| l.contains("already at 1 worker")));
    }

    #[test]
    fn a_scaled_down_slot_that_crashes_is_not_replaced() {
        let mut h = Harness::new(2);
        h.send(Event::Intent(Intent::Decr), 10);
        // Worker 101 crashes instead of stopping cleanly: still not refilled.
        h.exit(101, ExitStatus::Code(3), 20);
        assert_eq!(h.pids(), [100]);
    }

    #[test]
    fn unknown_pids_are_only_logged() {
        let mut h = Harness::new(1);
        h.exit(4242, ExitStatus::Code(0), 10);
        assert_eq!(h.pids(), [100]);
        assert!(h.logs.iter().any(|l| l.contains("reaped process 4242")));
    }
}

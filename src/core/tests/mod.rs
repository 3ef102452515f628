//! The core's tests: a harness that drives a core like the shell does, and
//! one file per concern.

use super::*;
use crate::message::{Message, Sender};
use crate::worker::{Backoff, Replacement};
use nix::sys::signal::Signal;

/// A pid, as the kernel would report it.
fn p(pid: i32) -> Pid {
    Pid::from_raw(pid)
}

/// A new image that may adopt every pid it is handed.
fn anyone(_: Pid) -> Result<(), String> {
    Ok(())
}

/// The wall clock the tests' snapshots are taken and restored at.
const WALL: u64 = 1_700_000_000_000;

const TERM: i32 = libc::SIGTERM;
const SIGCONT: i32 = libc::SIGCONT;

pub(crate) fn settings(workers: usize) -> Settings {
    Settings {
        workers,
        stop_signal: Signal::SIGTERM,
        graceful_timeout: Duration::from_secs(30),
        stop_delay: Duration::ZERO,
        ready_delay: Some(Duration::from_secs(1)),
        boot_timeout: Duration::from_secs(60),
        watchdog: None,
        dump_signal: None,
        dump_grace: Duration::from_secs(2),
        max_surge: 1,
        max_memory: None,
        max_age: None,
        recycle_check: Duration::from_secs(5),
        hook: false,
        hot_overlap: false,
        hook_timeout: Duration::from_secs(60),
        trusted_uids: vec![0],
        backoff: Backoff::default(),
        halt_timeout: Duration::from_secs(5),
        upward_watchdog: None,
        balance: false,
        stall_timeout: None,
    }
}

/// Drives a core like the shell does: spawns get pids 100, 101, …
struct Harness {
    core: Core,
    hooks: Vec<RestartKind>,
    preflights: usize,
    reexec: Option<u64>,
    upward: Vec<Upward>,
    t0: Instant,
    next_pid: i32,
    fail_spawns: bool,
    signals: Vec<(i32, i32)>,
    killed_groups: Vec<i32>,
    probed_groups: Vec<i32>,
    exit: Option<i32>,
    logs: Vec<String>,
    spawns: usize,
    replies: Vec<(usize, Intent, Reply)>,
    adopting: bool,
    strays_signalled: Vec<i32>,
    /// Whether a probe finds strays (processes left to sup) alive.
    strays_alive: bool,
    /// What a memory sample finds, by pid.
    memory_of: std::collections::HashMap<i32, u64>,
    /// Signals sent to whole groups (`sup ctl worker … signal`).
    signalled_groups: Vec<(i32, i32)>,
    /// Generations told to run another's pinned preparation (rollbacks).
    pins: Vec<(u64, u64)>,
    /// The listeners were closed to new connections (a drain).
    closed: bool,
    /// What a look at the accept queues finds.
    queued: u32,
    /// How many looks at the accept queues there were.
    queue_probes: usize,
    /// Per-slot sockets: every steering, in order.
    steered: Vec<Vec<usize>>,
    /// What a look at the slots' queues finds, by slot.
    slot_depths: Vec<u32>,
    /// How many looks at the slots' queues there were.
    slot_probes: usize,
    /// What sockets a worker holds, by pid (the stall watch asks).
    held: std::collections::HashMap<i32, Vec<u64>>,
}

impl Harness {
    fn new(workers: usize) -> Harness {
        Harness::with(settings(workers))
    }

    fn with(settings: Settings) -> Harness {
        let mut h = Harness::before_start(settings);
        h.send(Event::Started, 0);
        h
    }

    /// The new image after a stop-mode hot restart, as the old one hands
    /// it over: restart `id` at its exec, into `generation` (`pending`: a
    /// restart asked for meanwhile); its spawns get pids 200, 201, … Not
    /// told `Started` yet.
    fn resumed(settings: Settings, id: u64, generation: u64, pending: Option<RestartKind>) -> Harness {
        let mut snap = Core::new(settings.clone()).snapshot(Instant::now(), WALL);
        snap.generation = generation;
        snap.restarts_begun = id;
        snap.pending = pending;
        snap.restart = Some(crate::core::snapshot::RestartSnap {
            id,
            kind: RestartKind::Hot,
            started: -100,
            phase: crate::core::snapshot::PhaseSnap::Exec { adopt: false },
            plan: Default::default(),
        });
        let (h, actions) = Harness::restored(settings, snap, 0);
        assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
        h
    }

    /// The new image: `snap` restored at `ms` of this harness's clock, as
    /// the shell does before `Started`; its spawns get pids 200, 201, …
    fn restored(settings: Settings, snap: Snapshot, ms: u64) -> (Harness, Vec<Action>) {
        let mut h = Harness::before_start(settings.clone());
        let (core, actions) = Core::restore(settings, snap, h.at(ms), WALL, anyone);
        h.core = core;
        h.next_pid = 200;
        (h, actions)
    }

    /// This core handed over at `ms`, restored in a new image with `settings`.
    fn new_image(&self, ms: u64, settings: Settings) -> (Harness, Vec<Action>) {
        let snap = self.core.snapshot(self.at(ms), WALL);
        let (mut h, actions) = Harness::restored(settings, snap, 0);
        h.t0 = self.t0 + Duration::from_millis(ms);
        (h, actions)
    }

    /// A core that has not been told `Started` yet.
    fn before_start(settings: Settings) -> Harness {
        Harness {
            core: Core::new(settings),
            hooks: vec![],
            preflights: 0,
            reexec: None,
            upward: vec![],
            t0: Instant::now(),
            next_pid: 100,
            fail_spawns: false,
            signals: vec![],
            killed_groups: vec![],
            probed_groups: vec![],
            exit: None,
            logs: vec![],
            spawns: 0,
            replies: vec![],
            adopting: false,
            strays_signalled: vec![],
            strays_alive: false,
            memory_of: std::collections::HashMap::new(),
            signalled_groups: vec![],
            pins: vec![],
            closed: false,
            queued: 0,
            queue_probes: 0,
            steered: vec![],
            slot_depths: vec![],
            slot_probes: 0,
            held: std::collections::HashMap::new(),
        }
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
                                pid: p(self.next_pid),
                            });
                            self.next_pid += 1;
                        }
                    }
                    Action::Signal { pid, signal } => self.signals.push((pid.raw(), signal as i32)),
                    Action::KillGroup { pgid } => self.killed_groups.push(pgid.raw()),
                    Action::SignalGroup { pgid, signal } => self.signalled_groups.push((pgid.raw(), signal as i32)),
                    Action::ProbeGroup { pgid } => self.probed_groups.push(pgid.raw()),
                    Action::SignalStrays { signal } => self.strays_signalled.push(signal as i32),
                    Action::ProbeStrays => {
                        if !self.strays_alive {
                            queue.push_back(Event::StraysGone);
                        }
                    }
                    Action::RunHook { kind } => self.hooks.push(kind),
                    Action::RunPreflight => self.preflights += 1,
                    Action::ReExec { generation, adopt } => {
                        self.reexec = Some(generation);
                        self.adopting = adopt;
                    }
                    Action::ReopenLogs => {}
                    Action::Log { message, .. } => self.logs.push(message),
                    Action::Upward(u) => self.upward.push(u),
                    Action::Exit(code) => self.exit = Some(code),
                    Action::Reply { conn, intent, reply } => self.replies.push((conn, intent, reply)),
                    Action::CloseListeners => self.closed = true,
                    Action::PinRecipe { generation, like } => self.pins.push((generation, like)),
                    Action::ProbeQueues => {
                        self.queue_probes += 1;
                        queue.push_back(Event::Queued {
                            connections: self.queued,
                        });
                    }
                    Action::ProbeSlotQueues { pids } => {
                        self.slot_probes += 1;
                        let held = pids
                            .into_iter()
                            .map(|p| (p, self.held.get(&p.raw()).cloned().unwrap_or_default()))
                            .collect();
                        queue.push_back(Event::SlotQueues {
                            depths: self.slot_depths.clone(),
                            held,
                        });
                    }
                    Action::Steer { slots } => self.steered.push(slots),
                    Action::SampleMemory => {
                        let samples = self
                            .core
                            .workers()
                            .iter()
                            .filter_map(|w| Some((w.pid, *self.memory_of.get(&w.pid.raw())?)))
                            .collect();
                        queue.push_back(Event::Memory { samples });
                    }
                }
            }
        }
    }

    /// Send a control request; the core's one reply to it.
    fn control(&mut self, intent: Intent, ms: u64) -> Reply {
        let before = self.replies.len();
        self.send(Event::Control { conn: 7, intent }, ms);
        let new: Vec<_> = self.replies.drain(before..).collect();
        assert_eq!(new.len(), 1, "exactly one reply: {new:?}");
        let (conn, echoed, reply) = new.into_iter().next().unwrap();
        assert_eq!((conn, echoed), (7, intent));
        reply
    }

    fn exit(&mut self, pid: i32, status: ExitStatus, ms: u64) {
        self.send(
            Event::Exited {
                pid: p(pid),
                status,
                group_alive: false,
            },
            ms,
        );
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.core.workers().iter().map(|w| w.pid.raw()).collect();
        pids.sort();
        pids
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

impl Harness {
    fn ready_serving(&self) -> usize {
        self.core
            .workers()
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Ready { .. }))
            .count()
    }

    fn gens(&self) -> Vec<u64> {
        let mut g: Vec<u64> = self
            .core
            .workers()
            .iter()
            .filter(|w| !w.is_stopping())
            .map(|w| w.generation)
            .collect();
        g.sort();
        g
    }

    /// Like the shell: exit every stopping worker shortly after it was signalled.
    fn reap_stopping(&mut self, ms: u64) {
        let stopping: Vec<i32> = self
            .core
            .workers()
            .iter()
            .filter(|w| w.is_stopping())
            .map(|w| w.pid.raw())
            .collect();
        for pid in stopping {
            self.exit(pid, ExitStatus::Signaled(TERM), ms);
        }
    }

    /// Run time forward to `end_ms`, reaping stopped workers, asserting
    /// the capacity floor at every step.
    fn run_checking_capacity(&mut self, end_ms: u64, floor: usize) {
        loop {
            assert!(
                self.ready_serving() >= floor,
                "capacity fell to {} < {floor}",
                self.ready_serving()
            );
            let Some(d) = self.core.next_deadline() else { break };
            let at = d.duration_since(self.t0).as_millis() as u64;
            if at > end_ms {
                break;
            }
            self.send(Event::Tick, at);
            assert!(
                self.ready_serving() >= floor,
                "capacity fell to {} < {floor}",
                self.ready_serving()
            );
            self.reap_stopping(at);
        }
    }

    fn outcome(&self) -> Option<Outcome> {
        self.core.restart_record().map(|r| r.outcome)
    }
}

fn ready_harness(workers: usize, s: impl FnOnce(&mut Settings)) -> Harness {
    let mut settings = settings(workers);
    s(&mut settings);
    let mut h = Harness::with(settings);
    h.tick_until(1_000);
    h
}

/// Every state the core can be in when a control request comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Stopping,
    Halting,
    Hook,
    Preflight,
    Rolling,
    Draining,
    Exec,
    /// The new image of a hot restart, its first workers booting.
    Starting,
    Exited,
}

const STATES: [State; 10] = [
    State::Idle,
    State::Stopping,
    State::Halting,
    State::Hook,
    State::Preflight,
    State::Rolling,
    State::Draining,
    State::Exec,
    State::Starting,
    State::Exited,
];

/// Two ready workers (restart 1 done before, so ids are visible), then `state`.
fn in_state(state: State) -> Harness {
    let mut h = ready_harness(2, |s| s.hook = state == State::Hook);
    if state == State::Hook {
        h.send(Event::Intent(Intent::Rolling), 1_000);
        assert_eq!(h.hooks, [RestartKind::Rolling]);
        return h;
    }
    match state {
        State::Idle | State::Hook => {}
        State::Stopping => h.send(Event::Intent(Intent::Stop), 1_000),
        State::Halting => h.send(Event::Intent(Intent::Halt), 1_000),
        State::Preflight => h.send(Event::Intent(Intent::Hot), 1_000),
        State::Rolling => h.send(Event::Intent(Intent::Rolling), 1_000),
        State::Draining | State::Exec => {
            h.send(Event::Intent(Intent::Hot), 1_000);
            h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
            h.exit(900, ExitStatus::Code(0), 1_002);
            if state == State::Exec {
                for pid in h.pids() {
                    h.exit(pid, ExitStatus::Signaled(TERM), 1_003);
                }
                assert_eq!(h.reexec, Some(1));
            }
        }
        State::Starting => {
            // As the shell does in the new image: resume, then start.
            let mut fresh = Harness::resumed(settings(2), 1, 1, None);
            fresh.send(Event::Started, 0);
            assert_eq!(fresh.gens(), [1, 1], "the new image's first workers boot");
            assert!(fresh.core.restart_busy());
            return fresh;
        }
        State::Exited => {
            h.send(Event::Intent(Intent::Halt), 1_000);
            for pid in h.pids() {
                h.exit(pid, ExitStatus::Signaled(9), 1_001);
            }
            assert_eq!(h.exit, Some(0));
        }
    }
    h
}

fn notify(pid: i32, text: &str) -> Event {
    Event::Notify {
        sender: Some(Sender {
            pid: p(pid),
            pgid: Some(Pgid::from_raw(pid)),
            uid: 1000,
        }),
        message: Message::parse(text.as_bytes()),
    }
}

fn upward_kinds(h: &Harness) -> Vec<&'static str> {
    h.upward
        .iter()
        .map(|u| match u {
            Upward::Ready => "ready",
            Upward::Reloading => "reloading",
            Upward::Stopping => "stopping",
            Upward::Status(_) => "status",
            Upward::Watchdog => "watchdog",
        })
        .filter(|k| *k != "status")
        .collect()
}

fn spawns(actions: &[Action]) -> Vec<(usize, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { slot, generation } => Some((*slot, *generation)),
            _ => None,
        })
        .collect()
}

const MIB: u64 = 1 << 20;

fn recycling_harness(workers: usize, s: impl FnOnce(&mut Settings)) -> Harness {
    ready_harness(workers, |st| {
        st.recycle_check = Duration::from_secs(1);
        s(st);
    })
}

mod balance;
mod control;
mod deploy;
mod hot;
mod notify;
mod one_worker;
mod property;
mod recycling;
mod rolling;
mod snapshot;
mod stopping;
mod supervision;
mod timers;

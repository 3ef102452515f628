use super::*;
use crate::message::{Message, Sender};
use crate::worker::{Backoff, Replacement};
use nix::sys::signal::Signal;

/// A pid, as the kernel would report it.
fn p(pid: i32) -> Pid {
    Pid::from_raw(pid)
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
        ready_delay: Some(Duration::from_secs(1)),
        boot_timeout: Duration::from_secs(60),
        watchdog: None,
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
        snap.restart = Some(snapshot::RestartSnap {
            id,
            kind: RestartKind::Hot,
            started: -100,
            phase: snapshot::PhaseSnap::Exec { adopt: false },
        });
        let (h, actions) = Harness::restored(settings, snap, 0);
        assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
        h
    }

    /// The new image: `snap` restored at `ms` of this harness's clock, as
    /// the shell does before `Started`; its spawns get pids 200, 201, …
    fn restored(settings: Settings, snap: Snapshot, ms: u64) -> (Harness, Vec<Action>) {
        let mut h = Harness::before_start(settings.clone());
        let (core, actions) = Core::restore(settings, snap, h.at(ms), WALL, |_| Ok(()));
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
fn a_thousand_workers_start_in_batches_and_a_stop_between_batches_ends_it() {
    let t0 = Instant::now();
    let mut core = Core::new(settings(1000));
    assert_eq!(
        spawns(&core.handle(Event::Started, t0)).len(),
        SPAWN_BATCH,
        "one batch per event"
    );
    assert_eq!(core.next_deadline(), Some(t0), "the next batch is due at once");
    assert_eq!(spawns(&core.handle(Event::Tick, t0)).len(), SPAWN_BATCH);
    // A TERM read between batches: no further spawn, and no more hurry.
    core.handle(Event::Intent(Intent::Stop), t0);
    assert!(spawns(&core.handle(Event::Tick, t0)).is_empty());
    assert_ne!(core.next_deadline(), Some(t0));
    // Without one, they all start (every spawn's outcome is an event too).
    let mut all = Harness::before_start(settings(1000));
    all.send(Event::Started, 0);
    all.tick_until(0);
    assert_eq!(all.pids().len(), 1000);
}

#[test]
fn a_crashed_worker_is_replaced_in_its_slot() {
    let mut h = Harness::new(2);
    h.send(Event::Tick, 1000);
    h.exit(101, ExitStatus::Signaled(9), 20_000);
    assert_eq!(h.pids(), [100, 102]);
    let w = h.core.workers().iter().find(|w| w.pid == p(102)).unwrap();
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
fn processes_left_to_sup_are_stopped_then_killed_and_waited_for() {
    let mut h = Harness::new(1);
    h.strays_alive = true;
    h.send(Event::Intent(Intent::Stop), 100);
    assert_eq!(h.strays_signalled, [TERM], "the stop signal, with the workers'");
    h.exit(100, ExitStatus::Signaled(TERM), 200);
    assert_eq!(h.exit, None, "a stray is still alive: sup waits");
    assert_eq!(
        h.strays_signalled,
        [TERM, TERM],
        "and those left by the worker's exit get it too"
    );
    h.tick_until(30_100);
    assert_eq!(
        h.strays_signalled,
        [TERM, TERM, libc::SIGKILL],
        "SIGKILL at the graceful deadline"
    );
    assert_eq!(h.exit, None);
    // The stray is reaped (an unknown pid): sup looks again and exits.
    h.strays_alive = false;
    h.exit(4242, ExitStatus::Signaled(libc::SIGKILL), 30_150);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn a_graceful_stop_gives_the_running_hook_the_stop_then_kills_its_group_at_the_deadline() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Stop), 2_100);
    assert!(h.signals.contains(&(900, TERM)), "{:?}", h.signals);
    assert!(!h.killed_groups.contains(&900), "not killed at once");
    h.exit(100, ExitStatus::Signaled(TERM), 2_200);
    // The hook's shell is gone, something of its group is not.
    h.exit(900, ExitStatus::Signaled(TERM), 2_300);
    assert_eq!(h.exit, None, "sup waits for the hook's group");
    h.tick_until(32_200);
    assert!(h.killed_groups.contains(&900), "SIGKILL at the graceful deadline");
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::from_raw(900),
        },
        32_300,
    );
    assert_eq!(h.exit, Some(0));
}

#[test]
fn an_immediate_stop_kills_what_was_left_to_sup_at_once() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Halt), 100);
    assert_eq!(h.strays_signalled, [libc::SIGKILL]);
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
            pid: p(100),
            status: ExitStatus::Signaled(TERM),
            group_alive: true,
        },
        100,
    );
    assert_eq!(h.exit, None, "waits for the group");
    // It looks again every second (a member may leave by setsid)...
    assert_eq!(h.core.next_deadline(), Some(h.at(1_100)));
    h.tick_until(29_999);
    assert_eq!(h.probed_groups.len(), 30, "{:?}", h.probed_groups);
    assert!(h.killed_groups.is_empty());
    // ...and kills it at the deadline.
    h.tick_until(30_000);
    assert_eq!(h.killed_groups, [100]);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn a_lingering_group_that_empties_by_itself_is_not_waited_for() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Stop), 0);
    let leader_gone = Event::Exited {
        pid: p(100),
        status: ExitStatus::Code(0),
        group_alive: true,
    };
    h.send(leader_gone, 100);
    assert_eq!(h.probed_groups, [100], "asked at once");
    assert_eq!(h.exit, None);
    // A helper of the server (hypercorn's resource tracker) is reaped as
    // an orphan: the core asks again, and the shell finds the group empty.
    let orphan = Event::Exited {
        pid: p(4242),
        status: ExitStatus::Code(0),
        group_alive: false,
    };
    h.send(orphan, 120);
    assert_eq!(h.probed_groups, [100, 100]);
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::from_raw(100),
        },
        121,
    );
    assert_eq!(h.exit, Some(0), "stopped without waiting for the deadline");
    assert!(h.killed_groups.is_empty(), "nothing left to kill");
}

#[test]
fn a_hot_restart_drain_goes_on_when_the_last_group_empties() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.send(
        Event::Exited {
            pid: p(900),
            status: ExitStatus::Code(0),
            group_alive: false,
        },
        1_010,
    );
    let pid = p(h.pids()[0]);
    h.send(
        Event::Exited {
            pid,
            status: ExitStatus::Signaled(TERM),
            group_alive: true,
        },
        1_100,
    );
    assert_eq!(h.reexec, None, "waits for the group");
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::led_by(pid),
        },
        1_150,
    );
    assert_eq!(h.reexec, Some(1), "re-executes as soon as nothing is left");
}

#[test]
fn an_unexpected_exit_kills_the_rest_of_the_group_now() {
    let mut h = Harness::new(1);
    h.send(
        Event::Exited {
            pid: p(100),
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

#[test]
fn every_control_request_in_every_state_gets_the_answer_of_what_was_done() {
    let requests = [
        Intent::Hot,
        Intent::Rolling,
        Intent::Reexec,
        Intent::Stop,
        Intent::Halt,
        Intent::Incr,
        Intent::Decr,
        Intent::Scale(3),
        Intent::ReopenLogs,
    ];
    for state in STATES {
        for intent in requests {
            let mut h = in_state(state);
            let begun = h.core.restart_id();
            let reply = h.control(intent, 1_100);
            let ctx = format!("{intent:?} in {state:?}: {reply:?}");
            let restart = matches!(intent, Intent::Hot | Intent::Rolling | Intent::Reexec);
            let resize = matches!(intent, Intent::Incr | Intent::Decr | Intent::Scale(_));
            let stopping = matches!(state, State::Stopping | State::Halting);
            let refusal = match state {
                State::Exited => Some("sup is exiting"),
                _ if stopping && (restart || resize) => Some("sup is stopping"),
                State::Hook if restart => Some("the restart hook of rolling restart 1 is running"),
                State::Preflight if restart => Some("hot restart 1 is checking the new sup"),
                State::Draining | State::Exec if restart => {
                    Some("hot restart 1 is stopping the workers to re-execute sup")
                }
                // A rollout cannot be handed over half done.
                State::Rolling if intent == Intent::Reexec => Some("rolling restart 1 is running"),
                State::Starting if intent == Intent::Reexec => Some("hot restart 1 is running"),
                _ => None,
            };
            match (&reply, refusal) {
                (Reply::Refused { reason }, Some(want)) => assert!(reason.starts_with(want), "{ctx}"),
                (
                    Reply::Accepted {
                        restart: started,
                        target_workers,
                        generation,
                    },
                    None,
                ) => {
                    assert_eq!(*generation, h.core.generation(), "{ctx}");
                    assert_eq!(*target_workers, h.core.target(), "{ctx}");
                    if restart {
                        let r = started.unwrap_or_else(|| panic!("a restart id: {ctx}"));
                        assert_eq!(r.id, begun + 1, "the id of the restart it started: {ctx}");
                        assert_eq!(h.core.restart_id(), r.id, "{ctx}");
                        let kind = match intent {
                            Intent::Hot => RestartKind::Hot,
                            Intent::Reexec => RestartKind::Reexec,
                            _ => RestartKind::Rolling,
                        };
                        assert_eq!(r.kind, kind, "{ctx}");
                    } else {
                        assert_eq!(*started, None, "{ctx}");
                    }
                    match intent {
                        Intent::Incr => assert_eq!(*target_workers, 3, "{ctx}"),
                        Intent::Decr => assert_eq!(*target_workers, 1, "{ctx}"),
                        Intent::Scale(n) => assert_eq!(*target_workers, n, "{ctx}"),
                        _ => {}
                    }
                }
                _ => panic!(
                    "expected {}: {ctx}",
                    refusal.map_or("accepted".into(), |r| format!("refused ({r})"))
                ),
            }
            if let Reply::Refused { .. } = reply {
                assert_eq!(h.core.restart_id(), begun, "a refusal starts nothing: {ctx}");
            }
        }
    }
}

#[test]
fn fewer_than_one_worker_is_refused_and_a_stop_asked_twice_is_still_accepted() {
    let mut h = ready_harness(1, |_| {});
    assert!(matches!(h.control(Intent::Decr, 1_000), Reply::Refused { reason } if reason.contains("1 worker")));
    assert_eq!(h.core.target(), 1);
    assert!(matches!(h.control(Intent::Stop, 1_100), Reply::Accepted { .. }));
    assert!(matches!(h.control(Intent::Stop, 1_200), Reply::Accepted { .. }));
}

/// Hot restart in overlap mode up to the exec: hook-less, preflight passes.
fn overlap_to_exec(h: &mut Harness, intent: Intent) {
    h.send(Event::Intent(intent), 1_000);
    assert_eq!(h.preflights, 1, "the new sup is checked first");
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.exit(900, ExitStatus::Code(0), 1_002);
}

#[test]
fn an_overlap_hot_restart_re_executes_with_every_worker_serving() {
    let mut h = ready_harness(2, |s| s.hot_overlap = true);
    let before = h.pids();
    overlap_to_exec(&mut h, Intent::Hot);
    assert_eq!(h.reexec, Some(0), "the workers' own generation crosses");
    assert!(h.adopting);
    assert!(h.signals.is_empty(), "no worker was stopped: {:?}", h.signals);
    assert_eq!(h.pids(), before);
    assert!(h.core.exec_due());
    assert_eq!(h.core.workers().iter().filter(|w| w.is_stopping()).count(), 0);
}

#[test]
fn a_failed_overlap_exec_leaves_the_workers_untouched() {
    let mut h = ready_harness(2, |s| s.hot_overlap = true);
    let before = h.pids();
    overlap_to_exec(&mut h, Intent::Hot);
    h.send(Event::ReExecFailed { reason: "gone".into() }, 1_010);
    assert_eq!(h.pids(), before);
    assert!(h.signals.is_empty());
    assert_eq!(h.core.generation(), 0, "nothing new runs");
    assert!(matches!(
        h.core.restart_record().map(|r| r.outcome),
        Some(Outcome::Abandoned { .. })
    ));
    assert!(
        h.logs.iter().any(|l| l.contains("the workers were not touched")),
        "{:?}",
        h.logs
    );
}

#[test]
fn the_new_image_adopts_the_workers_then_rolls_them_make_before_break() {
    // The old image.
    let mut old = ready_harness(2, |s| s.hot_overlap = true);
    overlap_to_exec(&mut old, Intent::Hot);
    // The new image: restored before Started, as the shell does.
    let (mut h, actions) = old.new_image(
        1_003,
        Settings {
            hot_overlap: true,
            ..settings(2)
        },
    );
    assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
    assert_eq!(h.core.generation(), 1);
    h.send(Event::Started, 0);
    assert_eq!(
        h.gens(),
        [0, 0, 1],
        "one replacement first, the adopted ones still serving"
    );
    h.run_checking_capacity(20_000, 2);
    assert_eq!(h.gens(), [1, 1]);
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Completed));
    assert!(
        h.logs.iter().any(|l| l.contains("hot restart to gen 1 complete")),
        "{:?}",
        h.logs
    );
}

#[test]
fn reexec_adopts_everything_and_touches_nothing() {
    let mut old = ready_harness(3, |_| {});
    let reply = old.control(Intent::Reexec, 1_000);
    assert!(matches!(
        reply,
        Reply::Accepted {
            restart: Some(RestartRef {
                kind: RestartKind::Reexec,
                ..
            }),
            ..
        }
    ));
    assert!(old.hooks.is_empty());
    old.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    old.exit(900, ExitStatus::Code(0), 1_002);
    assert_eq!((old.reexec, old.adopting), (Some(0), true));
    let pids = old.pids();
    let (mut h, _) = old.new_image(1_003, settings(3));
    h.send(Event::Started, 0);
    assert_eq!(h.pids(), pids, "the same workers");
    assert_eq!(h.spawns, 0, "nothing started");
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Completed));
    // They are its own now: a crash is replaced, a stop stops them.
    h.exit(pids[0], ExitStatus::Code(1), 2_000);
    assert_eq!(h.spawns, 1);
    h.send(Event::Intent(Intent::Stop), 3_000);
    assert_eq!(h.signals.len(), 3 * 2, "TERM and CONT to each: {:?}", h.signals);
}

#[test]
fn a_rolling_signal_during_a_hot_preflight_runs_after_it_in_the_new_image() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.send(Event::Intent(Intent::Rolling), 1_001);
    assert!(
        h.logs.iter().any(|l| l.contains(
            "rolling restart requested while hot restart 1 runs: a rolling restart will run when it has ended"
        )),
        "{:?}",
        h.logs
    );
    assert_eq!(h.core.restart_id(), 1, "no second restart has begun yet");
    h.send(Event::HelperSpawned { pid: p(800) }, 1_002);
    h.exit(800, ExitStatus::Code(0), 1_100);
    h.reap_stopping(1_200);
    assert_eq!(h.reexec, Some(1));
    assert_eq!(h.core.pending(), Some(RestartKind::Rolling), "handed to the new image");
    // The new image: the hot restart completes, then the rolling one runs.
    let (mut new, carried) = h.new_image(1_200, settings(2));
    assert!(carried.iter().all(|a| matches!(a, Action::Log { .. })), "{carried:?}");
    assert_eq!(new.core.pending(), Some(RestartKind::Rolling));
    new.send(Event::Started, 0);
    new.run_checking_capacity(60_000, 0);
    let record = new.core.restart_record().unwrap();
    assert_eq!(
        (record.id, record.kind, record.generation, record.outcome),
        (2, RestartKind::Rolling, Some(2), Outcome::Completed)
    );
    assert_eq!(new.gens(), [2, 2]);
}

#[test]
fn a_rolling_signal_during_the_hook_runs_a_second_rollout_after_the_first() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Rolling), 2_002);
    h.exit(900, ExitStatus::Code(0), 2_100);
    assert_eq!(h.core.pending(), Some(RestartKind::Rolling));
    h.run_checking_capacity(30_000, 2);
    assert_eq!(h.hooks.len(), 2, "the second restart runs its own hook");
    h.send(Event::HelperSpawned { pid: p(901) }, 30_001);
    h.exit(901, ExitStatus::Code(0), 30_100);
    h.run_checking_capacity(60_000, 2);
    let record = h.core.restart_record().unwrap();
    assert_eq!(
        (record.id, record.generation, record.outcome),
        (2, Some(2), Outcome::Completed)
    );
    assert_eq!(h.core.pending(), None);
}

#[test]
fn the_worker_count_set_at_runtime_survives_a_hot_restart_unless_the_configuration_changes_it() {
    let mut old = ready_harness(2, |_| {});
    old.send(Event::Intent(Intent::Scale(5)), 2_000);
    let (new, log) = old.new_image(2_000, settings(2));
    assert_eq!(new.core.target(), 5);
    assert!(format!("{log:?}").contains("keeping the worker count set at runtime: 5"));
    let (new, log) = old.new_image(2_000, settings(3));
    assert_eq!(new.core.target(), 3, "the configuration changed: it wins");
    assert!(format!("{log:?}").contains("the count set at runtime (5) is dropped"));
}

#[test]
fn a_restart_signal_during_a_reexec_is_ignored_out_loud() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Reexec), 1_000);
    h.send(Event::Intent(Intent::Rolling), 1_001);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("rolling restart ignored: sup is re-executing itself (reexec 1)")),
        "{:?}",
        h.logs
    );
    h.send(Event::HelperSpawned { pid: p(900) }, 1_002);
    h.exit(900, ExitStatus::Code(0), 1_003);
    assert_eq!((h.reexec, h.adopting), (Some(0), true), "the reexec goes on, unchanged");
}

#[test]
fn reexec_is_refused_while_a_restart_runs() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 1_000);
    assert!(
        matches!(h.control(Intent::Reexec, 1_001), Reply::Refused { reason } if reason.contains("rolling restart 1 is running"))
    );
}

#[test]
fn a_handed_worker_from_a_future_generation_is_not_adopted_nor_signalled() {
    let old = ready_harness(2, |_| {});
    let mut snap = old.core.snapshot(old.at(1_000), WALL);
    snap.workers[1].generation = 7;
    let (h, actions) = Harness::restored(settings(2), snap, 0);
    assert_eq!(h.pids(), [100]);
    assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Log { message, .. } if message.contains("generation is from the future")))
    );
}

#[test]
fn adopted_workers_beyond_the_new_count_are_stopped() {
    let old = ready_harness(3, |_| {});
    let (_, actions) = old.new_image(1_000, settings(2));
    let stopped: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, .. } => Some(pid.raw()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, [102, 102], "slot 2's worker gets TERM and CONT");
}

#[test]
fn a_rolling_restart_is_make_before_break() {
    let mut h = ready_harness(4, |_| {});
    assert_eq!(h.ready_serving(), 4);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.generation(), 1);
    assert_eq!(h.spawns, 5, "one replacement at a time");
    assert!(h.signals.is_empty(), "nothing stopped before a replacement is ready");
    h.run_checking_capacity(60_000, 4);
    assert_eq!(h.gens(), [1, 1, 1, 1]);
    assert_eq!(h.ready_serving(), 4);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
    // Each old worker got exactly one stop signal, after its replacement was ready.
    let stopped: Vec<i32> = h.signals.iter().filter(|(_, s)| *s == TERM).map(|(p, _)| *p).collect();
    assert_eq!(stopped, [100, 101, 102, 103]);
    assert!(
        h.logs.iter().any(|l| l.contains("rolling restart to gen 1 complete")),
        "{:?}",
        h.logs
    );
    assert_eq!(h.core.next_deadline(), None, "idle again");
}

#[test]
fn a_rollout_is_complete_only_when_the_old_workers_have_exited() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::Tick, 3_000);
    assert_eq!(h.signals[0], (100, TERM), "old worker asked to stop");
    assert_eq!(h.outcome(), Some(Outcome::Running), "still draining");
    h.exit(100, ExitStatus::Code(0), 3_500);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn a_rolling_restart_of_one_worker_keeps_it_serving() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(60_000, 1);
    assert_eq!(h.gens(), [1]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn max_surge_boots_several_replacements_at_once() {
    let mut h = ready_harness(4, |s| s.max_surge = 3);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.spawns, 7, "three replacements booting");
    h.run_checking_capacity(60_000, 4);
    assert_eq!(h.gens(), [1, 1, 1, 1]);
}

#[test]
fn a_replacement_that_exits_stops_the_rollout_and_old_workers_keep_serving() {
    let mut h = ready_harness(4, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    let new = 104;
    h.exit(new, ExitStatus::Code(1), 2_100);
    assert!(
        matches!(h.outcome(), Some(Outcome::Failed { slot: 0, .. })),
        "{:?}",
        h.outcome()
    );
    let spawns = h.spawns;
    h.run_checking_capacity(120_000, 4);
    assert_eq!(h.spawns, spawns, "no further replacement of the broken release");
    assert_eq!(h.pids(), [100, 101, 102, 103]);
    assert!(h.signals.is_empty(), "no old worker was stopped");
    let line = h
        .logs
        .iter()
        .find(|l| l.contains("rolling restart to gen 1 failed"))
        .unwrap();
    assert!(
        line.contains("worker 0 (pid 104) exited with status 1 before becoming ready"),
        "{line}"
    );
    assert!(line.contains("4 worker(s) keep serving"), "{line}");
}

#[test]
fn a_replacement_that_never_gets_ready_times_out_and_stops_the_rollout() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        ..settings(2)
    });
    for pid in [100, 101] {
        h.send(notify(pid, "READY=1"), 10);
    }
    assert_eq!(h.ready_serving(), 2);
    h.send(Event::Intent(Intent::Rolling), 1_000);
    h.tick_until(61_000);
    assert_eq!(h.killed_groups, [102]);
    assert!(
        matches!(h.outcome(), Some(Outcome::Failed { slot: 0, ref reason }) if reason.contains("not ready within 60s"))
    );
    h.exit(102, ExitStatus::Signaled(9), 61_001);
    assert_eq!(h.pids(), [100, 101]);
    assert_eq!(h.ready_serving(), 2);
}

#[test]
fn a_restart_during_a_rollout_starts_over_with_the_newest_code() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.pids(), [100, 101, 102]);
    h.send(Event::Intent(Intent::Rolling), 2_100);
    assert_eq!(h.core.generation(), 2);
    // The gen-1 replacement, not serving yet, is stopped; gen 2 boots.
    assert_eq!(h.signals[0], (102, TERM));
    h.reap_stopping(2_200);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [2, 2]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn a_storm_of_restart_requests_ends_with_one_generation() {
    let mut h = ready_harness(3, |_| {});
    for i in 0..50 {
        h.send(Event::Intent(Intent::Rolling), 2_000 + i);
        h.reap_stopping(2_000 + i);
    }
    h.run_checking_capacity(120_000, 3);
    let gens = h.gens();
    assert_eq!(gens.len(), 3);
    assert!(gens.iter().all(|g| *g == gens[0]), "{gens:?}");
    assert_eq!(h.ready_serving(), 3);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
    assert!(h.core.workers().iter().all(|w| !w.is_stopping()));
}

#[test]
fn an_old_worker_that_crashes_mid_rollout_is_replaced_by_the_new_generation() {
    let mut h = ready_harness(3, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.exit(102, ExitStatus::Code(1), 2_100);
    let w = h.core.workers().iter().find(|w| w.slot == 2).unwrap();
    assert_eq!(w.generation, 1);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [1, 1, 1]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn term_during_a_rollout_stops_everything() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::Intent(Intent::Stop), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { .. })));
    let spawns = h.spawns;
    h.reap_stopping(2_200);
    assert_eq!(h.exit, Some(0));
    assert_eq!(h.spawns, spawns);
}

#[test]
fn a_failing_hook_vetoes_the_restart() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.hooks, [RestartKind::Rolling]);
    assert_eq!(h.spawns, 2, "nothing starts before the hook passes");
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(3), 2_500);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("status 3")));
    assert_eq!((h.spawns, h.core.generation()), (2, 0));
    assert!(h.signals.is_empty());
}

#[test]
fn a_passing_hook_lets_the_rollout_run() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(0), 2_500);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [1, 1]);
}

#[test]
fn a_hook_that_runs_too_long_is_killed_and_the_restart_abandoned() {
    let mut h = ready_harness(1, |s| {
        s.hook = true;
        s.hook_timeout = Duration::from_secs(5);
    });
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.tick_until(7_000);
    assert_eq!(h.killed_groups, [900]);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("within 5s")));
    assert_eq!(h.core.generation(), 0);
}

#[test]
fn a_request_during_a_failing_hook_is_not_lost() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Rolling), 2_002);
    h.exit(900, ExitStatus::Code(1), 2_500);
    assert_eq!(h.hooks.len(), 2, "the hook runs again for the pending request");
    h.send(Event::HelperSpawned { pid: p(901) }, 2_501);
    h.exit(901, ExitStatus::Code(0), 2_600);
    h.run_checking_capacity(60_000, 1);
    assert_eq!(h.gens(), [1]);
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

#[test]
fn notify_messages_are_attributed_by_pid_group_or_trusted_mainpid() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        trusted_uids: vec![0],
        ..settings(3)
    });
    // The worker itself.
    h.send(notify(100, "READY=1\nSTATUS=booted"), 10);
    // A child in worker 101's process group (systemd-notify).
    let child = Event::Notify {
        sender: Some(Sender {
            pid: p(5000),
            pgid: Some(Pgid::from_raw(101)),
            uid: 1000,
        }),
        message: Message::parse(b"READY=1"),
    };
    h.send(child, 20);
    // MAINPID from an untrusted stranger: dropped; from root: believed.
    let stranger = |uid| Event::Notify {
        sender: Some(Sender {
            pid: p(6000),
            pgid: Some(Pgid::from_raw(6000)),
            uid,
        }),
        message: Message::parse(b"READY=1\nMAINPID=102"),
    };
    h.send(stranger(1000), 30);
    assert_eq!(h.ready_serving(), 2);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("dropped a notify message from pid 6000"))
    );
    h.send(stranger(0), 40);
    assert_eq!(h.ready_serving(), 3);
    let w = h.core.workers().iter().find(|w| w.pid == p(100)).unwrap();
    assert_eq!(w.status.as_deref(), Some("booted"));
}

#[test]
fn a_stopping_worker_is_still_itself_to_notify_messages() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        watchdog: Some(Duration::from_secs(1)),
        ..settings(1)
    });
    h.send(notify(100, "READY=1"), 10);
    h.send(Event::Intent(Intent::Stop), 20);
    h.logs.clear();
    // gunicorn and Puma say so on their way out; a group member too.
    h.send(notify(100, "STOPPING=1\nSTATUS=Gunicorn arbiter shutting down"), 30);
    let child = Event::Notify {
        sender: Some(Sender {
            pid: p(5000),
            pgid: Some(Pgid::from_raw(100)),
            uid: 1000,
        }),
        message: Message::parse(b"STATUS=bye\nWATCHDOG=1\nREADY=1"),
    };
    h.send(child, 40);
    assert!(!h.logs.iter().any(|l| l.contains("dropped")), "{:?}", h.logs);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("worker 0 (pid 100, gen 0) says it is stopping")),
        "{:?}",
        h.logs
    );
    let w = &h.core.workers()[0];
    assert_eq!(w.status.as_deref(), Some("bye"));
    assert!(w.is_stopping(), "READY=1 does not bring a stopping worker back");
    assert_eq!(w.watchdog_deadline, None, "nor does a watchdog ping arm the watchdog");
}

#[test]
fn in_notify_mode_a_worker_is_ready_only_on_ready_1() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        boot_timeout: Duration::from_secs(10),
        ..settings(1)
    });
    h.tick_until(9_000);
    assert_eq!(h.ready_serving(), 0);
    // Never ready: killed at the boot timeout and started again with backoff.
    h.tick_until(10_000);
    assert_eq!(h.killed_groups, [100]);
    h.exit(100, ExitStatus::Signaled(9), 10_001);
    assert_eq!(h.pids(), [101]);
    h.send(notify(101, "READY=1"), 10_500);
    assert_eq!(h.ready_serving(), 1);
}

#[test]
fn a_silent_watchdog_gets_the_worker_replaced() {
    let mut h = ready_harness(1, |s| s.watchdog = Some(Duration::from_secs(5)));
    assert_eq!(h.core.next_deadline(), None, "no watchdog before the first ping");
    h.send(notify(100, "WATCHDOG=1"), 2_000);
    h.send(notify(100, "WATCHDOG=1"), 6_000);
    h.tick_until(10_999);
    assert!(h.killed_groups.is_empty());
    h.tick_until(11_000);
    assert_eq!(h.killed_groups, [100]);
    h.exit(100, ExitStatus::Signaled(9), 11_001);
    assert_eq!(h.pids(), [101]);
}

#[test]
fn a_hot_restart_checks_then_stops_everything_then_execs() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    assert_eq!(h.preflights, 1);
    assert!(h.signals.is_empty(), "nothing stops before the new sup checked out");
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT), (101, TERM), (101, SIGCONT)]);
    let spawns = h.spawns;
    h.exit(100, ExitStatus::Code(0), 2_200);
    assert_eq!(h.reexec, None, "waits for every worker");
    h.exit(101, ExitStatus::Code(0), 2_300);
    assert_eq!(h.reexec, Some(1));
    assert_eq!(h.spawns, spawns, "no worker starts in the old image");
}

#[test]
fn a_failed_preflight_abandons_the_hot_restart() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(2), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("failed its check")));
    assert!(h.signals.is_empty());
    assert_eq!(h.pids(), [100, 101]);
    assert_eq!(h.reexec, None);
}

#[test]
fn a_hot_restart_runs_the_hook_first() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Hot), 2_000);
    assert_eq!((h.hooks.as_slice(), h.preflights), ([RestartKind::Hot].as_slice(), 0));
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(0), 2_100);
    assert_eq!(h.preflights, 1);
}

#[test]
fn term_during_a_hot_restart_is_honoured() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    h.send(Event::Intent(Intent::Stop), 2_150);
    h.reap_stopping(2_200);
    assert_eq!(h.reexec, None, "a stop wins over the exec");
    assert_eq!(h.exit, Some(0));
}

#[test]
fn requests_during_a_hot_restart_coalesce_and_hot_supersedes_rolling() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.generation(), 1);
    h.send(Event::Intent(Intent::Hot), 2_010);
    assert_eq!(h.preflights, 1, "hot supersedes the rollout");
    h.send(Event::HelperSpawned { pid: p(800) }, 2_011);
    h.exit(800, ExitStatus::Code(0), 2_100);
    for i in 0..5 {
        h.send(Event::Intent(Intent::Hot), 2_101 + i);
        h.send(Event::Intent(Intent::Rolling), 2_101 + i);
    }
    assert_eq!(h.preflights, 1, "the storm coalesced");
    h.reap_stopping(2_200);
    assert_eq!(h.reexec, Some(2));
}

#[test]
fn a_failed_exec_starts_workers_again() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    h.reap_stopping(2_200);
    assert!(h.pids().is_empty());
    h.send(Event::ReExecFailed { reason: "gone".into() }, 2_300);
    assert_eq!(h.gens(), [1, 1]);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { .. })));
}

#[test]
fn a_new_image_whose_workers_cannot_start_keeps_trying_and_says_so() {
    let mut h = Harness::resumed(settings(2), 7, 3, None);
    h.fail_spawns = true;
    h.send(Event::Started, 0);
    h.tick_until(20_000);
    assert!(h.spawns > 6, "it kept trying, with backoff: {} spawns", h.spawns);
    assert!(h.spawns < 30, "with backoff, not in a loop: {} spawns", h.spawns);
    let record = h.core.restart_record().unwrap();
    assert_eq!((record.kind, record.outcome), (RestartKind::Hot, Outcome::Running));
    assert!(
        h.core
            .status_line()
            .contains("hot restart: gen 3 failing to start in 2 slot(s), retrying"),
        "{}",
        h.core.status_line()
    );
    assert!(h.logs.iter().any(|l| l.contains("no old worker is left to serve")));
    assert!(
        !h.logs.iter().any(|l| l.contains("rolling")),
        "a hot restart is never called rolling: {:?}",
        h.logs
    );
    // The release is fixed: the next attempts start, and the restart ends.
    h.fail_spawns = false;
    h.tick_until(60_000);
    let record = h.core.restart_record().unwrap();
    assert_eq!((record.generation, record.outcome), (Some(3), Outcome::Completed));
}

#[test]
fn the_new_image_completes_the_hot_restart_when_its_workers_are_ready() {
    let mut h = Harness::resumed(settings(2), 7, 3, None);
    h.send(Event::Started, 0);
    assert_eq!(h.gens(), [3, 3]);
    h.tick_until(2_000);
    let record = h.core.restart_record().unwrap();
    assert_eq!(
        (record.kind, record.generation, record.outcome),
        (RestartKind::Hot, Some(3), Outcome::Completed)
    );
    assert!(
        h.logs.iter().any(|l| l.contains("hot restart to gen 3 complete")),
        "{:?}",
        h.logs
    );
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

#[test]
fn the_supervisor_hears_ready_reloading_ready_stopping() {
    let mut h = ready_harness(2, |_| {});
    assert_eq!(upward_kinds(&h), ["ready"], "READY=1 once all workers are ready");
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(upward_kinds(&h), ["ready", "reloading", "ready"]);
    // A failed restart ends the reload too.
    h.send(Event::Intent(Intent::Rolling), 70_000);
    let new = h.core.workers().iter().find(|w| w.generation == 2).unwrap().pid;
    h.exit(new.raw(), ExitStatus::Code(1), 70_100);
    assert_eq!(upward_kinds(&h)[3..], ["reloading", "ready"]);
    h.send(Event::Intent(Intent::Stop), 80_000);
    assert_eq!(upward_kinds(&h).last(), Some(&"stopping"));
    let statuses: Vec<&String> = h
        .upward
        .iter()
        .filter_map(|u| if let Upward::Status(s) = u { Some(s) } else { None })
        .collect();
    assert!(
        statuses.iter().any(|s| s.as_str() == "gen 1: 2/2 ready"),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|s| s.contains("rolling slot 0")), "{statuses:?}");
}

#[test]
fn the_supervisor_watchdog_is_the_only_periodic_timer() {
    let mut h = ready_harness(1, |s| s.upward_watchdog = Some(Duration::from_secs(10)));
    // The first keep-alive went out at start; then one every 10 s.
    assert_eq!(h.core.next_deadline(), Some(h.at(10_000)));
    h.tick_until(31_000);
    assert_eq!(upward_kinds(&h).iter().filter(|k| **k == "watchdog").count(), 4);
    let idle = ready_harness(1, |_| {});
    assert_eq!(idle.core.next_deadline(), None);
}

#[test]
fn restarts_are_numbered_and_scale_sets_the_count() {
    let mut h = ready_harness(2, |_| {});
    assert_eq!(h.core.restart_id(), 0);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.restart_id(), 1);
    assert!(h.core.restart_busy());
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.core.restart_record().unwrap().id, 1);
    h.send(Event::Intent(Intent::Scale(4)), 61_000);
    assert_eq!(h.core.target(), 4);
    assert_eq!(h.pids().len(), 4);
    h.send(Event::Intent(Intent::Scale(1)), 62_000);
    h.reap_stopping(62_100);
    assert_eq!((h.core.target(), h.pids().len()), (1, 1));
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

#[test]
fn a_slot_scaled_away_and_back_while_its_spawn_is_in_flight_gets_one_worker() {
    let t0 = Instant::now();
    let mut core = Core::new(settings(2));
    assert_eq!(spawns(&core.handle(Event::Started, t0)), [(0, 0), (1, 0)]);
    // Slot 1's spawn has not come back when TTOU and then TTIN arrive.
    assert_eq!(
        core.slot(1).map(|s| s.state),
        Some(SlotState::Spawning { generation: 0 })
    );
    assert!(spawns(&core.handle(Event::Intent(Intent::Decr), t0)).is_empty());
    assert!(
        spawns(&core.handle(Event::Intent(Intent::Incr), t0)).is_empty(),
        "the spawn under way fills the slot: no second one"
    );
    for (slot, pid) in [(0, 100), (1, 101)] {
        let out = core.handle(
            Event::Spawned {
                slot,
                generation: 0,
                pid: p(pid),
            },
            t0,
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Signal { .. })), "{out:?}");
    }
    assert_eq!(core.workers().len(), 2);
    assert_eq!(core.check_invariants(), Ok(()));
}

#[test]
fn a_replacement_that_arrives_after_its_rollout_ended_is_stopped() {
    let t0 = Instant::now();
    let mut s = settings(1);
    s.ready_delay = None;
    let mut core = Core::new(s);
    core.handle(Event::Started, t0);
    core.handle(
        Event::Spawned {
            slot: 0,
            generation: 0,
            pid: p(100),
        },
        t0,
    );
    core.handle(notify(100, "READY=1"), t0);
    assert_eq!(spawns(&core.handle(Event::Intent(Intent::Rolling), t0)), [(0, 1)]);
    assert_eq!(
        core.slot(0).map(|s| s.state),
        Some(SlotState::Replacing {
            old: p(100),
            new: Replacement::Spawning { generation: 1 }
        })
    );
    // A hot restart supersedes the rollout (its preflight runs now): the
    // rolling replacement comes back to a sup that no longer wants it.
    core.handle(Event::Intent(Intent::Hot), t0);
    let out = core.handle(
        Event::Spawned {
            slot: 0,
            generation: 1,
            pid: p(101),
        },
        t0,
    );
    assert!(out.contains(&Action::Signal {
        pid: p(101),
        signal: Signal::SIGTERM
    }));
    assert_eq!(core.slot(0).map(|s| s.state), Some(SlotState::Running { pid: p(100) }));
    assert_eq!(core.check_invariants(), Ok(()));
}

const MIB: u64 = 1 << 20;

fn recycling_harness(workers: usize, s: impl FnOnce(&mut Settings)) -> Harness {
    ready_harness(workers, |st| {
        st.recycle_check = Duration::from_secs(1);
        s(st);
    })
}

#[test]
fn a_worker_whose_memory_stays_high_is_replaced_make_before_break() {
    let mut h = recycling_harness(2, |s| s.max_memory = Some(100 * MIB));
    // One sample above is a spike; three in a row are not.
    h.memory_of.insert(100, 200 * MIB);
    h.tick_until(1_500);
    assert_eq!(h.spawns, 2, "not after one sample");
    h.memory_of.insert(100, 50 * MIB);
    h.tick_until(2_500);
    h.memory_of.insert(100, 200 * MIB);
    h.tick_until(4_500);
    assert_eq!(h.spawns, 2, "two samples above, then below: still not");
    h.tick_until(5_500);
    assert_eq!(h.spawns, 3, "the third sample in a row above starts a replacement");
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("recycling worker 0 (pid 100, gen 0): its memory (200.0 MiB PSS)"))
    );
    assert!(
        h.signals.is_empty(),
        "nothing is stopped before the replacement is ready"
    );
    h.run_checking_capacity(7_000, 2);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT)], "then the old one stops");
    h.reap_stopping(7_100);
    assert_eq!(h.pids(), [101, 102]);
    assert_eq!(h.gens(), [0, 0], "a recycled worker runs the same generation");
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Memory), 1);
    assert_eq!(h.core.check_invariants(), Ok(()));
}

#[test]
fn recycling_waits_for_a_running_restart_and_respects_the_surge() {
    let mut h = recycling_harness(3, |s| {
        s.max_memory = Some(100 * MIB);
        s.hook = true;
    });
    for pid in [100, 101, 102] {
        h.memory_of.insert(pid, 500 * MIB);
    }
    h.send(Event::Intent(Intent::Rolling), 1_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.tick_until(10_000);
    assert_eq!(h.spawns, 3, "nothing recycles while the hook of a restart runs");
    h.exit(900, ExitStatus::Code(1), 10_001);
    h.tick_until(12_000);
    let replacing = |h: &Harness| {
        (0..3)
            .filter(|k| matches!(h.core.slot(*k).unwrap().state, SlotState::Replacing { .. }))
            .count()
    };
    assert_eq!(replacing(&h), 1, "one at a time with --max-surge 1");
    h.run_checking_capacity(30_000, 3);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Memory), 3);
}

#[test]
fn workers_reaching_max_age_are_recycled_one_by_one_with_jitter() {
    let mut h = recycling_harness(3, |s| s.max_age = Some(Duration::from_secs(100)));
    let deadlines: Vec<Instant> = h
        .core
        .workers()
        .iter()
        .filter_map(|w| h.core.recycling.age_deadline(w, &h.core.settings))
        .collect();
    let distinct: std::collections::HashSet<_> = deadlines.iter().collect();
    assert_eq!(distinct.len(), 3, "workers started together get different deadlines");
    for d in &deadlines {
        let after = d.duration_since(h.t0);
        assert!(
            after >= Duration::from_secs(100) && after <= Duration::from_millis(110_100),
            "{after:?}"
        );
    }
    assert_eq!(h.core.next_deadline(), deadlines.iter().min().copied());
    h.run_checking_capacity(200_000, 3);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Age), 3);
    assert!(h.logs.iter().any(|l| l.contains("past --max-age")));
    assert_eq!(h.pids(), [103, 104, 105]);
}

#[test]
fn a_recycling_whose_replacement_fails_keeps_the_old_worker_and_waits() {
    let mut h = recycling_harness(1, |s| s.max_memory = Some(100 * MIB));
    h.memory_of.insert(100, 500 * MIB);
    h.tick_until(4_500);
    assert_eq!(h.spawns, 2);
    h.exit(101, ExitStatus::Code(1), 4_600);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("recycling worker 0 (pid 100, memory) failed"))
    );
    assert_eq!(h.pids(), [100], "the old worker keeps serving");
    h.tick_until(5_500);
    assert_eq!(h.spawns, 2, "no retry before the wait");
    h.tick_until(10_000);
    assert_eq!(h.spawns, 3, "then it tries again");
}

#[test]
fn without_the_flags_recycling_sets_no_timer() {
    let h = ready_harness(2, |_| {});
    assert_eq!(h.core.next_deadline(), None);
    let with = recycling_harness(2, |s| s.max_memory = Some(100 * MIB));
    assert!(
        with.core.next_deadline().is_some(),
        "with --max-memory, the next sample"
    );
}

/// splitmix64: a deterministic generator for the property tests, so a
/// failing sequence is named by its seed and replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

/// Feeds a core random events the way the world could order them: spawn
/// outcomes arrive late and in any order, helpers answer late, workers
/// crash, get ready, are reaped; signals and control requests interleave.
/// After every event the core's invariants must hold: the slot table and
/// the worker table agree, and never more than target + max-surge
/// workers are live.
fn random_run(seed: u64, steps: usize, recycling: bool) {
    let mut rng = Rng(seed);
    let mut st = settings(1 + rng.below(5));
    st.max_surge = 1 + rng.below(3);
    st.hook = rng.below(2) == 0;
    st.hot_overlap = rng.below(2) == 0;
    st.ready_delay = match rng.below(3) {
        0 => None,
        _ => Some(Duration::from_millis(rng.below(400) as u64)),
    };
    st.boot_timeout = Duration::from_millis(500 + rng.below(3000) as u64);
    st.graceful_timeout = Duration::from_millis(100 + rng.below(2000) as u64);
    st.watchdog = (rng.below(4) == 0).then_some(Duration::from_millis(700));
    st.max_memory = (recycling || rng.below(3) == 0).then_some(100);
    st.max_age = (recycling || rng.below(3) == 0).then(|| Duration::from_millis(1000 + rng.below(4000) as u64));
    st.recycle_check = Duration::from_millis(200 + rng.below(800) as u64);
    let mut core = Core::new(st);
    let t0 = Instant::now();
    let mut ms: u64 = 0;
    let mut in_flight: Vec<(usize, u64)> = Vec::new();
    let mut helper_asked = false;
    let mut helper: Option<i32> = None;
    let mut exec_asked = false;
    let mut next_pid = 100;
    let mut queue = std::collections::VecDeque::from([Event::Started]);
    for step in 0..steps {
        let now = t0 + Duration::from_millis(ms);
        while let Some(event) = queue.pop_front() {
            let what = format!("{event:?}");
            for action in core.handle(event, now) {
                match action {
                    Action::Spawn { slot, generation } => in_flight.push((slot, generation)),
                    Action::RunHook { .. } | Action::RunPreflight => helper_asked = true,
                    Action::ReExec { .. } => exec_asked = true,
                    Action::ProbeGroup { pgid } if rng.below(2) == 0 => {
                        queue.push_back(Event::GroupEmpty { pgid });
                    }
                    Action::ProbeStrays if rng.below(2) == 0 => queue.push_back(Event::StraysGone),
                    Action::SampleMemory => {
                        let samples = core
                            .workers()
                            .iter()
                            .map(|w| (w.pid, if rng.below(5) == 0 { 50 } else { 150 }))
                            .collect();
                        queue.push_back(Event::Memory { samples });
                    }
                    Action::Exit(_) => return,
                    _ => {}
                }
            }
            if let Err(e) = core.check_invariants() {
                panic!("seed {seed}, step {step}, after {what}: {e}");
            }
        }
        let pids: Vec<i32> = core.workers().iter().map(|w| w.pid.raw()).collect();
        // With recycling on, restarts and stops are rare, so that the
        // workers live long enough to be recycled, several at once.
        let pick = match rng.below(14) {
            9 | 10 | 13 if recycling && rng.below(10) > 0 => 7,
            n => n,
        };
        let event = match pick {
            0..=2 if !in_flight.is_empty() => {
                let (slot, generation) = in_flight.remove(rng.below(in_flight.len()));
                if rng.below(6) == 0 {
                    Event::SpawnFailed {
                        slot,
                        generation,
                        reason: "boom".into(),
                    }
                } else {
                    next_pid += 1;
                    Event::Spawned {
                        slot,
                        generation,
                        pid: p(next_pid),
                    }
                }
            }
            3 | 4 => match rng.pick(&pids) {
                Some(pid) => Event::Exited {
                    pid: p(pid),
                    status: if rng.below(2) == 0 {
                        ExitStatus::Code(1)
                    } else {
                        ExitStatus::Signaled(TERM)
                    },
                    group_alive: rng.below(4) == 0,
                },
                None => Event::Tick,
            },
            5 | 6 => match rng.pick(&pids) {
                Some(pid) => notify(pid, if rng.below(3) == 0 { "WATCHDOG=1" } else { "READY=1" }),
                None => Event::Tick,
            },
            7 => {
                ms += rng.below(1500) as u64;
                Event::Tick
            }
            8 => Event::Intent(match rng.below(3) {
                0 => Intent::Incr,
                1 => Intent::Decr,
                _ => Intent::Scale(1 + rng.below(7)),
            }),
            9 => Event::Intent(if rng.below(3) == 0 {
                Intent::Hot
            } else {
                Intent::Rolling
            }),
            10 => Event::Control {
                conn: 1,
                intent: [Intent::Rolling, Intent::Hot, Intent::Incr, Intent::Decr, Intent::Reexec][rng.below(5)],
            },
            11 if helper_asked => {
                helper_asked = false;
                next_pid += 1;
                helper = Some(next_pid);
                Event::HelperSpawned { pid: p(next_pid) }
            }
            11 => match helper.take() {
                Some(pid) => Event::Exited {
                    pid: p(pid),
                    status: ExitStatus::Code(if rng.below(4) == 0 { 1 } else { 0 }),
                    group_alive: false,
                },
                None => Event::Tick,
            },
            12 if exec_asked => {
                // The old image carries on (the exec failed), which is
                // the only way the same core sees what follows.
                exec_asked = false;
                Event::ReExecFailed {
                    reason: "ENOEXEC".into(),
                }
            }
            13 if rng.below(20) == 0 => Event::Intent(if rng.below(2) == 0 { Intent::Stop } else { Intent::Halt }),
            _ => {
                ms += rng.below(200) as u64;
                Event::Tick
            }
        };
        queue.push_back(event);
    }
}

#[test]
fn random_event_sequences_keep_the_slot_table_whole_and_the_surge_bounded() {
    for seed in 0..400 {
        random_run(seed, 600, false);
    }
}

#[test]
fn random_event_sequences_with_recycling_never_exceed_the_surge() {
    for seed in 0..300 {
        random_run(1_000 + seed, 600, true);
    }
}

//! The core's vocabulary: what the shell tells it ([`Event`], [`Intent`]),
//! what it asks of the shell ([`Action`]), how it answers a control request
//! ([`Reply`]), what it tells sup's own supervisor ([`Upward`]), and the
//! fixed [`Settings`] it decides with. Plain data, no behaviour.

use std::time::Duration;

use log::Level;
use nix::sys::signal::Signal;

use crate::message::{Message, Sender};
use crate::pid::{Pgid, Pid};
use crate::worker::{Backoff, ExitStatus};

/// Which restart (`rolling` or `hot` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartKind {
    Rolling,
    Hot,
    /// sup re-executes itself and adopts its workers; no worker changes.
    Reexec,
    /// The newer generation's workers replaced by the previous release, as
    /// it was pinned (`sup ctl rollback`).
    Rollback,
}

impl RestartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartKind::Rolling => "rolling",
            RestartKind::Hot => "hot",
            RestartKind::Reexec => "reexec",
            RestartKind::Rollback => "rollback",
        }
    }
}

/// How a restart ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    Completed,
    /// A replacement failed to boot; the old workers kept serving.
    Failed,
    /// Nothing was stopped: the hook or the preflight failed, or sup began
    /// stopping, or another restart superseded it.
    Abandoned,
}

/// What the signal handlers (and the control server) ask for.
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
    /// USR1: rolling restart.
    Rolling,
    /// USR2: hot restart.
    Hot,
    /// Re-execute sup and adopt every worker, touching none (`sup ctl reexec`).
    Reexec,
    /// Set the worker count (control server); never below one.
    Scale(usize),
    /// Act on one worker (control server: `sup ctl worker`).
    Worker { target: WorkerRef, action: WorkerAction },
    /// A rolling restart that replaces this many slots, then pauses.
    Canary(usize),
    /// Finish the paused rollout.
    Resume,
    /// Replace the newer generation's workers by the previous release, as
    /// it was pinned; `pinned` is what the shell found of it.
    Rollback { pinned: Pinned },
}

/// What the shell found of the release a rollback would restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// Its preparation is kept and its directory is still there.
    Ready,
    /// Nothing is kept of it (sup was started since, or nothing rolled out).
    Unknown,
    /// Its release directory is gone.
    Gone,
}

/// Which worker a one-worker request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerRef {
    /// The serving worker of this slot (`slot:N`).
    Slot(usize),
    /// The worker with this pid (`pid:N`).
    Pid(Pid),
    /// A bare number: a slot, or a pid; refused if it could be two workers.
    Either(u32),
}

/// What to do to one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAction {
    /// A replacement first, then the worker stops (make-before-break).
    Replace,
    /// Send this signal to the worker's process group.
    Signal(Signal),
    /// Stop it gracefully; its slot gets a new worker.
    Stop,
}

/// Something that happened, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// sup has bound its sockets and is ready to start workers.
    Started,
    Intent(Intent),
    /// A control request (`--control`) on connection `conn`; the core
    /// answers it with [`Action::Reply`].
    Control {
        conn: usize,
        intent: Intent,
    },
    /// The spawn the core asked for produced a process.
    Spawned {
        slot: usize,
        generation: u64,
        pid: Pid,
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
        pid: Pid,
        status: ExitStatus,
        group_alive: bool,
    },
    /// The process group the core asked about ([`Action::ProbeGroup`]) has
    /// no member left, not even a zombie.
    GroupEmpty {
        pgid: Pgid,
    },
    /// sup has no child left but its workers and helper ([`Action::ProbeStrays`]).
    StraysGone,
    /// The answer to [`Action::ProbeQueues`]: connections waiting in the
    /// listeners' accept queues, all listeners together.
    Queued {
        connections: u32,
    },
    /// The answer to [`Action::ProbeSlotQueues`]: with per-slot sockets,
    /// the connections waiting in each slot's own accept queue, by slot
    /// (all of its binds together); and for each worker asked about, the
    /// inodes of the sockets it holds (a new one is a connection it
    /// accepted).
    SlotQueues {
        depths: Vec<u32>,
        held: Vec<(Pid, Vec<u64>)>,
    },
    /// The answer to [`Action::SampleMemory`]: (worker pid, bytes).
    Memory {
        samples: Vec<(Pid, u64)>,
    },
    /// `--ready fd:N`: worker `pid` wrote a newline to its readiness fd
    /// (`ready`), or closed it without one.
    ReadyFd {
        pid: Pid,
        ready: bool,
    },
    /// An sd_notify datagram (or an Einhorn ack, as `READY=1` + `MAINPID`).
    Notify {
        sender: Option<Sender>,
        message: Message,
    },
    /// The helper the core asked for (restart hook, preflight check) is
    /// running as `pid`.
    HelperSpawned {
        pid: Pid,
    },
    /// The helper could not be started.
    HelperFailed {
        reason: String,
    },
    /// The re-exec the core asked for failed; sup runs on in this image.
    ReExecFailed {
        reason: String,
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
    /// Send `signal` to one live worker's (or helper's) pid.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    /// SIGKILL a whole process group.
    KillGroup {
        pgid: Pgid,
    },
    /// Generation `generation` runs generation `like`'s pinned preparation
    /// (a rollback), not what the release directory holds now.
    PinRecipe {
        generation: u64,
        like: u64,
    },
    /// Send `signal` to a whole process group (`sup ctl worker … signal`).
    SignalGroup {
        pgid: Pgid,
        signal: Signal,
    },
    /// Find out whether a lingering process group still has members; answer
    /// with [`Event::GroupEmpty`] if it has none.
    ProbeGroup {
        pgid: Pgid,
    },
    /// Send `signal` to every child of sup that is neither a worker nor the
    /// helper: processes that escaped a worker's or the hook's group and
    /// were reparented to sup (it is a subreaper). At a stop only.
    SignalStrays {
        signal: Signal,
    },
    /// Find out whether such strays remain; answer [`Event::StraysGone`]
    /// if none does.
    ProbeStrays,
    /// Keep new connections out of the listeners' queues (a graceful stop,
    /// once the stop delay is over): TCP listeners drop new SYNs, which
    /// clients retry; a unix listener's path is removed. What is queued
    /// stays, for the workers to take.
    CloseListeners,
    /// Count the connections waiting in the listeners' accept queues and
    /// answer with [`Event::Queued`].
    ProbeQueues,
    /// With per-slot sockets: read each slot's accept queue and answer with
    /// [`Event::SlotQueues`], with the sockets each of `pids` holds.
    ProbeSlotQueues {
        pids: Vec<Pid>,
    },
    /// With per-slot sockets: new connections go only to these slots' sockets
    /// from now on (the reuseport selection program is swapped). Never
    /// empty.
    Steer {
        slots: Vec<usize>,
    },
    /// Measure every worker's memory (PSS summed over its process group)
    /// and answer with [`Event::Memory`]. Only with `--max-memory`.
    SampleMemory,
    /// Start the `--on-restart` hook for this kind of restart.
    RunHook {
        kind: RestartKind,
    },
    /// Start the new sup with `--check` (hot restart preflight).
    RunPreflight,
    /// Re-execute sup in place, handing over [`super::Core::snapshot`].
    /// `adopt`: the workers keep running and the new image adopts them
    /// (overlap, reexec); otherwise they are all gone and the new image
    /// starts `generation`.
    ReExec {
        generation: u64,
        adopt: bool,
    },
    ReopenLogs,
    Log {
        level: Level,
        message: String,
    },
    /// Tell sup's own supervisor (systemd's NOTIFY_SOCKET), if it has one.
    Upward(Upward),
    /// Answer the control request on connection `conn`.
    Reply {
        conn: usize,
        intent: Intent,
        reply: Reply,
    },
    /// Clean up and exit with this status.
    Exit(i32),
}

/// The core's answer to a control request: what it did, never what it
/// hopes will happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done or under way. `restart` is the restart this request started.
    Accepted {
        restart: Option<RestartRef>,
        generation: u64,
        target_workers: usize,
    },
    /// Nothing was done, for this reason.
    Refused { reason: String },
}

/// A restart a control request started, for `sup ctl --wait` to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRef {
    pub id: u64,
    pub kind: RestartKind,
}

/// What sup reports to its own supervisor (sd_notify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upward {
    /// Every worker is ready (first start, or a restart has ended).
    Ready,
    /// A restart began (`RELOADING=1` with `MONOTONIC_USEC`).
    Reloading,
    Stopping,
    Status(String),
    /// Keep-alive, every half `WATCHDOG_USEC`.
    Watchdog,
}

/// The fixed settings the core decides with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workers: usize,
    pub stop_signal: Signal,
    pub graceful_timeout: Duration,
    /// `--stop-delay`: at a graceful stop, how long sup reports not ready
    /// and keeps serving before it drains.
    pub stop_delay: Duration,
    /// `Some(d)`: ready after `d` up (or READY=1); `None`: only on READY=1.
    pub ready_delay: Option<Duration>,
    pub boot_timeout: Duration,
    pub watchdog: Option<Duration>,
    /// `--dump-signal`: a worker about to be killed for a timeout (boot,
    /// watchdog, graceful) gets this first, then `dump_grace` to write its
    /// dump, then SIGKILL to its group.
    pub dump_signal: Option<Signal>,
    pub dump_grace: Duration,
    pub max_surge: usize,
    /// `--max-memory` (bytes): a worker whose process group's PSS stays
    /// above it is recycled. Sampled every `recycle_check`.
    pub max_memory: Option<u64>,
    /// `--max-age`: a worker this old (plus up to 10% jitter) is recycled.
    pub max_age: Option<Duration>,
    pub recycle_check: Duration,
    /// Whether an `--on-restart` hook runs before each restart.
    pub hook: bool,
    /// `--hot-restart overlap`: a hot restart re-executes with the workers
    /// still serving and then rolls them, instead of stopping them first.
    pub hot_overlap: bool,
    /// How long the hook, and the hot restart's preflight, may run.
    pub hook_timeout: Duration,
    /// Senders whose `MAINPID=` naming a worker is believed (root, sup's
    /// user, the workers' user).
    pub trusted_uids: Vec<u32>,
    pub backoff: Backoff,
    /// After an immediate stop, how long to wait for reaping before exiting anyway.
    pub halt_timeout: Duration,
    /// Some bind has per-slot sockets (`--balance reuseport`, and the kernel
    /// took them): the core steers connections and retires slot sockets.
    pub balance: bool,
    /// `--stall-timeout`: with per-slot sockets, a ready worker whose own
    /// queue has not shrunk for this long is hung and replaced.
    pub stall_timeout: Option<Duration>,
    /// sup's own supervisor asked for a keep-alive this often (half of
    /// `WATCHDOG_USEC`); the only periodic timer sup ever sets.
    pub upward_watchdog: Option<Duration>,
}

/// Append a log line to the actions.
pub(super) fn log(out: &mut Vec<Action>, level: Level, message: String) {
    out.push(Action::Log { level, message });
}

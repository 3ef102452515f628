//! The control protocol as it is on the wire: the commands, the answers to
//! them, and `GET /stats`. One set of types, shared by the server, the stats
//! builder and `sup ctl`, so that neither side picks JSON apart by string
//! keys. Wire values are stable and snake_case (the README documents them).
//!
//! Answers carry an `outcome`:
//! - `accepted` (202): done or under way; `restart` is the restart this
//!   request started (its `id` is what `sup ctl --wait` follows);
//! - `refused` (409): sup's state does not allow it now, with the `reason`;
//! - `rejected` (4xx): the request itself is wrong (bad path, method,
//!   token, parameters, framing), with the `error`.

use serde::{Deserialize, Serialize};

use crate::core::{Intent, Reply, RestartKind};

/// `GET /stats`: the JSON [`Stats`].
pub const STATS_PATH: &str = "/stats";
/// `GET /metrics`: Prometheus text.
pub const METRICS_PATH: &str = "/metrics";
/// `GET /health`: 200 when every slot serves, 503 otherwise (starting,
/// stopping); read-only, so it needs no token (a load balancer's probe).
pub const HEALTH_PATH: &str = "/health";

/// A command, named by its endpoint (`POST /phased-restart` is `phased_restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Hot restart.
    Restart,
    /// Rolling restart.
    PhasedRestart,
    Stop,
    Halt,
    Incr,
    Decr,
    /// Set the worker count (`?count=N`).
    Workers,
    ReopenLogs,
    /// Re-execute sup and adopt every worker.
    Reexec,
    /// Act on one worker (`?target=SLOT|PID|slot:N|pid:N&action=replace|stop|signal&signal=SIG`).
    Worker,
    /// Finish a paused canary's rollout.
    Resume,
    /// Go back to the previous release, as it was pinned.
    Rollback,
}

impl Command {
    pub const ALL: [Command; 12] = [
        Command::Restart,
        Command::PhasedRestart,
        Command::Stop,
        Command::Halt,
        Command::Incr,
        Command::Decr,
        Command::Workers,
        Command::ReopenLogs,
        Command::Reexec,
        Command::Worker,
        Command::Resume,
        Command::Rollback,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Command::Restart => "/restart",
            Command::PhasedRestart => "/phased-restart",
            Command::Stop => "/stop",
            Command::Halt => "/halt",
            Command::Incr => "/incr",
            Command::Decr => "/decr",
            Command::Workers => "/workers",
            Command::ReopenLogs => "/reopen-logs",
            Command::Reexec => "/reexec",
            Command::Worker => "/worker",
            Command::Resume => "/resume",
            Command::Rollback => "/rollback",
        }
    }

    pub fn from_path(path: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.path() == path)
    }

    /// The request target: the path, with `?count=N` for `workers`.
    pub fn target(self, count: usize) -> String {
        match self {
            Command::Workers => format!("{}?count={count}", self.path()),
            Command::PhasedRestart if count > 0 => format!("{}?canary={count}", self.path()),
            _ => self.path().to_string(),
        }
    }

    /// What it asks of the core (`count` only for `workers`); `None` for
    /// `worker`, whose parameters the route reads.
    pub fn intent(self, count: usize) -> Option<Intent> {
        Some(match self {
            Command::Restart => Intent::Hot,
            // `count`: a canary's size.
            Command::PhasedRestart if count > 0 => Intent::Canary(count),
            Command::PhasedRestart => Intent::Rolling,
            Command::Stop => Intent::Stop,
            Command::Halt => Intent::Halt,
            Command::Incr => Intent::Incr,
            Command::Decr => Intent::Decr,
            Command::Workers => Intent::Scale(count),
            Command::ReopenLogs => Intent::ReopenLogs,
            Command::Reexec => Intent::Reexec,
            Command::Resume => Intent::Resume,
            // The shell says what it keeps of the release (see `Pinned`).
            Command::Rollback => Intent::Rollback {
                pinned: crate::core::Pinned::Unknown,
            },
            Command::Worker => return None,
        })
    }

    /// The command an intent came from (INT is a stop).
    pub fn of(intent: Intent) -> Command {
        match intent {
            Intent::Hot => Command::Restart,
            Intent::Rolling | Intent::Canary(_) => Command::PhasedRestart,
            Intent::Resume => Command::Resume,
            Intent::Rollback { .. } => Command::Rollback,
            Intent::Stop | Intent::Interrupt => Command::Stop,
            Intent::Halt => Command::Halt,
            Intent::Incr => Command::Incr,
            Intent::Decr => Command::Decr,
            Intent::Scale(_) => Command::Workers,
            Intent::ReopenLogs => Command::ReopenLogs,
            Intent::Reexec => Command::Reexec,
            Intent::Worker { .. } => Command::Worker,
        }
    }
}

/// `target` of `/worker` and `sup ctl worker`: `slot:N`, `pid:N`, or a bare
/// number (a slot or a pid).
pub fn parse_worker_ref(text: &str) -> Option<crate::core::WorkerRef> {
    use crate::core::WorkerRef;
    if let Some(n) = text.strip_prefix("slot:") {
        return n.parse().ok().map(WorkerRef::Slot);
    }
    if let Some(n) = text.strip_prefix("pid:") {
        return n
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| WorkerRef::Pid(crate::pid::Pid::from_raw(p)));
    }
    text.parse().ok().map(WorkerRef::Either)
}

/// `action` (and `signal`) of `/worker`.
pub fn parse_worker_action(action: &str, signal: Option<&str>) -> Option<crate::core::WorkerAction> {
    use crate::core::WorkerAction;
    match (action, signal) {
        ("replace", None) => Some(WorkerAction::Replace),
        ("stop", None) => Some(WorkerAction::Stop),
        ("signal", Some(sig)) => crate::config::parse_signal(sig).map(WorkerAction::Signal),
        _ => None,
    }
}

/// A generation: its live workers and the release directory it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStats {
    pub generation: u64,
    pub workers: usize,
    pub release: Option<String>,
}

/// A restart that a command started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRestart {
    pub id: u64,
    pub kind: RestartKind,
}

/// The answer to every request but `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Answer {
    Accepted {
        command: Command,
        restart: Option<StartedRestart>,
        generation: u64,
        target_workers: usize,
    },
    Refused {
        command: Command,
        reason: String,
    },
    Rejected {
        error: String,
    },
}

impl Answer {
    /// The core's reply to `intent`, as it goes on the wire.
    pub fn from_reply(intent: Intent, reply: Reply) -> Answer {
        let command = Command::of(intent);
        match reply {
            Reply::Accepted {
                restart,
                generation,
                target_workers,
            } => Answer::Accepted {
                command,
                restart: restart.map(|r| StartedRestart { id: r.id, kind: r.kind }),
                generation,
                target_workers,
            },
            Reply::Refused { reason } => Answer::Refused { command, reason },
        }
    }

    pub fn rejected(error: impl Into<String>) -> Answer {
        Answer::Rejected { error: error.into() }
    }

    /// The HTTP status it goes with (`rejected` ones carry their own).
    pub fn status(&self, rejected_status: u16) -> u16 {
        match self {
            Answer::Accepted { .. } => 202,
            Answer::Refused { .. } => 409,
            Answer::Rejected { .. } => rejected_status,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data of strings and numbers: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `GET /stats`: sup's own fields, then the ones `pumactl stats` users read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub pid: u32,
    pub version: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub generation: u64,
    pub target_workers: usize,
    pub status: String,
    pub binds: Vec<Bind>,
    /// The restart in progress, or else the last one.
    pub restart: Option<RestartStats>,
    /// The last restart that ended (a reexec during a paused canary ends
    /// while the canary is the one in progress).
    #[serde(default)]
    pub last_restart: Option<RestartStats>,
    /// What `sup ctl rollback` would bring back: the generation and the
    /// release it was pinned to.
    #[serde(default)]
    pub rollback_target: Option<GenerationStats>,
    /// Each generation with live workers, and the release directory it runs.
    #[serde(default)]
    pub generations: Vec<GenerationStats>,
    /// A restart is running or waiting to run.
    pub restart_busy: bool,
    /// Puma's: live (not stopping) workers.
    pub workers: usize,
    /// Puma's: live workers that are ready.
    pub booted_workers: usize,
    /// Puma's: live workers of an older generation.
    pub old_workers: usize,
    /// Puma's name for the generation.
    pub phase: u64,
    pub worker_status: Vec<WorkerStats>,
    /// Workers replaced outside a restart, by reason (`memory`, `age`).
    #[serde(default)]
    pub recycled: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub name: String,
    pub address: String,
    pub fd: usize,
    /// `shared` or `reuseport` (one socket per worker slot).
    #[serde(default)]
    pub balance: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartOutcome {
    /// A canary is up; the rollout waits for `resume` or `rollback`.
    Paused,
    Running,
    Completed,
    /// A replacement failed to boot; the old workers kept serving.
    Failed,
    /// Given up before anything was stopped (hook, preflight, superseded).
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartStats {
    pub id: u64,
    pub kind: RestartKind,
    pub generation: Option<u64>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: RestartOutcome,
    pub failed_slot: Option<usize>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerPhase {
    Booting,
    Ready,
    Stopping,
}

/// Puma's `last_status`, which sup has nothing to put in: `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastStatus {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    // Puma's keys.
    pub index: usize,
    pub pid: i32,
    pub phase: u64,
    pub booted: bool,
    pub started_at: String,
    pub last_checkin: String,
    pub last_status: LastStatus,
    // sup's.
    pub slot: usize,
    pub generation: u64,
    pub state: WorkerPhase,
    /// Seconds since it was started.
    #[serde(default)]
    pub age_seconds: f64,
    pub ready_at: Option<String>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub failures_in_a_row: u32,
    pub rss_bytes: Option<u64>,
    /// With --max-memory: the last sample of its process group's PSS.
    #[serde(default)]
    pub pss_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub status: Option<String>,
    /// With `--balance reuseport`: connections waiting in its slot's own
    /// accept queue (every such bind together).
    #[serde(default)]
    pub queue: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> String {
        let text = serde_json::to_string(value).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), value, "{text}");
        text
    }

    #[test]
    fn every_type_round_trips_with_stable_snake_case_values() {
        for c in Command::ALL {
            let text = round_trip(&c);
            assert_eq!(Command::from_path(c.path()), Some(c));
            assert_eq!(text.trim_matches('"').replace('_', "-"), c.path()[1..]);
            if let Some(intent) = c.intent(3) {
                assert_eq!(Command::of(intent), c);
            }
        }
        let accepted = Answer::Accepted {
            command: Command::PhasedRestart,
            restart: Some(StartedRestart {
                id: 4,
                kind: RestartKind::Rolling,
            }),
            generation: 3,
            target_workers: 2,
        };
        assert_eq!(
            round_trip(&accepted),
            r#"{"outcome":"accepted","command":"phased_restart","restart":{"id":4,"kind":"rolling"},"generation":3,"target_workers":2}"#
        );
        let refused = Answer::Refused {
            command: Command::Restart,
            reason: "sup is stopping".into(),
        };
        assert_eq!(
            round_trip(&refused),
            r#"{"outcome":"refused","command":"restart","reason":"sup is stopping"}"#
        );
        assert_eq!(
            round_trip(&Answer::rejected("no such endpoint: /x")),
            r#"{"outcome":"rejected","error":"no such endpoint: /x"}"#
        );
        assert_eq!((accepted.status(400), refused.status(400)), (202, 409));

        let stats = Stats {
            last_restart: None,
            rollback_target: None,
            generations: Vec::new(),
            pid: 7,
            version: "0.1.0".into(),
            started_at: "2026-12-03T01:00:00.000Z".into(),
            uptime_seconds: 5,
            generation: 2,
            target_workers: 1,
            status: "1/1 ready".into(),
            binds: vec![Bind {
                name: "web".into(),
                address: "tcp://127.0.0.1:3000".into(),
                fd: 3,
                balance: "reuseport".into(),
            }],
            restart: Some(RestartStats {
                id: 2,
                kind: RestartKind::Hot,
                generation: Some(2),
                started_at: "2026-12-03T01:00:01.000Z".into(),
                finished_at: None,
                outcome: RestartOutcome::Running,
                failed_slot: None,
                error: None,
            }),
            restart_busy: true,
            workers: 1,
            booted_workers: 0,
            old_workers: 0,
            phase: 2,
            worker_status: vec![WorkerStats {
                index: 0,
                pid: 42,
                phase: 2,
                booted: false,
                started_at: "2026-12-03T01:00:01.000Z".into(),
                last_checkin: "2026-12-03T01:00:05.000Z".into(),
                last_status: LastStatus {},
                slot: 0,
                generation: 2,
                state: WorkerPhase::Booting,
                age_seconds: 4.0,
                ready_at: None,
                restarts: 1,
                last_exit: Some("status 1".into()),
                failures_in_a_row: 0,
                rss_bytes: Some(1 << 20),
                pss_bytes: Some(900_000),
                cpu_percent: Some(0.5),
                status: None,
                queue: Some(2),
            }],
            recycled: [("memory".to_string(), 2)].into(),
        };
        let text = round_trip(&stats);
        for wire in [
            r#""kind":"hot""#,
            r#""outcome":"running""#,
            r#""state":"booting""#,
            r#""last_status":{}"#,
            r#""worker_status":[{"index":0"#,
        ] {
            assert!(text.contains(wire), "{wire} in {text}");
        }
    }
}

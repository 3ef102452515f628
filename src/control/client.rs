//! `sup ctl`: drive a running sup through its control server, or, without
//! one, through signals to the pid in its pidfile.
//!
//! `--wait` follows a restart to its end — printing a line as each new
//! worker comes up — and exits non-zero if it failed or was abandoned: what
//! a deploy task needs to fail a deploy. A refusal (sup is stopping, a hook
//! or a hot restart is in flight) exits non-zero with sup's reason. The
//! control socket is handed over across a hot restart, so a request waits in
//! its backlog during the exec; `--wait` still retries until its deadline if
//! a connection fails.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ControlAddr;
use nix::sys::signal::Signal;

use super::protocol::{Answer, Command, HEALTH_PATH, RestartOutcome, STATS_PATH, Stats, WorkerPhase};
use crate::cli::{CtlArgs, CtlCommand};
use crate::signals::SignalEvent;

fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Run `sup ctl`; returns the exit status.
pub fn run(args: CtlArgs) -> u8 {
    match execute(&args) {
        Ok(code) => code,
        Err((code, message)) => {
            crate::exit::say(&format!("error: {message}"));
            code
        }
    }
}

type Failure = (u8, String);

fn usage(msg: impl Into<String>) -> Failure {
    (crate::exit::EXIT_USAGE, msg.into())
}

fn runtime(msg: impl Into<String>) -> Failure {
    (crate::exit::EXIT_RUNTIME, msg.into())
}

struct Target {
    control: Option<ControlAddr>,
    token: Option<String>,
    pidfile: Option<PathBuf>,
}

fn target(args: &CtlArgs) -> Result<Target, Failure> {
    let file = match &args.config {
        Some(path) => {
            Some(crate::config_file::read(path).map_err(|why| usage(format!("--config {}: {why}", path.display())))?)
        }
        None => None,
    };
    let control = args
        .control
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.control.clone()));
    let control = control
        .map(|c| ControlAddr::parse(&c))
        .transpose()
        .map_err(|e| usage(e.to_string()))?;
    Ok(Target {
        control,
        token: args
            .control_token
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.control_token.clone())),
        pidfile: args.pidfile.clone().or_else(|| file.and_then(|f| f.pidfile)),
    })
}

/// What a `sup ctl` subcommand asks of sup: `GET /stats`, or one
/// [`Command`] posted to its path. Everything the client sends derives from
/// this, so a command is named in `protocol` and in the clap definitions and
/// nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// Shown as a table (`status`) or as the raw JSON (`stats`).
    Stats { raw: bool },
    /// `GET /health`: the exit status says whether sup serves.
    Health,
    /// `POST /worker?…`: one worker.
    Worker { query: String },
    /// `count` is the argument of `workers` (0 for the others).
    Send { command: Command, count: usize },
}

impl Ask {
    /// Exhaustive on purpose: a subcommand added to the CLI does not compile
    /// until it says what it sends.
    fn of(command: &CtlCommand) -> Ask {
        let send = |command| Ask::Send { command, count: 0 };
        match *command {
            CtlCommand::Status => Ask::Stats { raw: false },
            CtlCommand::Health => Ask::Health,
            CtlCommand::Stats => Ask::Stats { raw: true },
            CtlCommand::Restart => send(Command::Restart),
            CtlCommand::PhasedRestart { canary } => Ask::Send {
                command: Command::PhasedRestart,
                count: canary.unwrap_or(0),
            },
            CtlCommand::Resume => send(Command::Resume),
            CtlCommand::Rollback => send(Command::Rollback),
            CtlCommand::Stop => send(Command::Stop),
            CtlCommand::Halt => send(Command::Halt),
            CtlCommand::Incr => send(Command::Incr),
            CtlCommand::Decr => send(Command::Decr),
            CtlCommand::Workers { count } => Ask::Send {
                command: Command::Workers,
                count,
            },
            CtlCommand::ReopenLogs => send(Command::ReopenLogs),
            CtlCommand::Worker { .. } => Ask::Worker {
                query: worker_query(command),
            },
            CtlCommand::Reexec => send(Command::Reexec),
        }
    }
}

/// The query of `POST /worker` for `sup ctl worker TARGET ACTION`.
fn worker_query(command: &CtlCommand) -> String {
    let CtlCommand::Worker { target, action } = command else {
        return String::new();
    };
    let action = match action {
        crate::cli::WorkerCtl::Replace => "action=replace".to_string(),
        crate::cli::WorkerCtl::Stop => "action=stop".to_string(),
        crate::cli::WorkerCtl::Signal { signal } => format!("action=signal&signal={signal}"),
    };
    format!("target={target}&{action}")
}

/// Whether sup answers `command` with a restart that `--wait` can follow.
fn starts_restart(command: Command) -> bool {
    match command {
        Command::Restart | Command::PhasedRestart | Command::Reexec | Command::Resume | Command::Rollback => true,
        Command::Stop
        | Command::Halt
        | Command::Incr
        | Command::Decr
        | Command::Workers
        | Command::ReopenLogs
        | Command::Worker => false,
    }
}

/// The signal that asks sup for what `command` does, if one does: read from
/// sup's own table of what each handled signal means.
fn signal_for(command: Command, count: usize) -> Option<Signal> {
    let intent = command.intent(count)?;
    crate::signals::HANDLED
        .into_iter()
        .find(|s| crate::signals::translate(*s as i32) == Some(SignalEvent::Intent(intent)))
}

fn execute(args: &CtlArgs) -> Result<u8, Failure> {
    let t = target(args)?;
    let ask = Ask::of(&args.command);
    let Some(control) = &t.control else {
        return by_signal(args, ask, t.pidfile.as_deref());
    };
    let token = t.token.as_deref();
    let (method, path) = match &ask {
        Ask::Stats { .. } => ("GET", STATS_PATH.to_string()),
        Ask::Health => ("GET", HEALTH_PATH.to_string()),
        Ask::Worker { query } => ("POST", format!("{}?{query}", Command::Worker.path())),
        Ask::Send { command, count } => ("POST", command.target(*count)),
    };
    if args.wait && !matches!(ask, Ask::Send { command, .. } if starts_restart(command)) {
        return Err(usage("--wait goes with restart, phased-restart and reexec"));
    }
    let timeout = crate::config::parse_duration(&args.timeout).map_err(|e| usage(format!("--timeout: {e}")))?;
    let (status, body) = request(control, token, method, &path).map_err(|e| runtime(format!("{control}: {e}")))?;
    if ask == Ask::Health {
        let health: crate::core::Health = serde_json::from_str(&body).map_err(|e| {
            runtime(format!(
                "{control} answered {status} to /health with something sup ctl cannot read: {e}"
            ))
        })?;
        let word = serde_json::to_string(&health.status).unwrap_or_default();
        out(&format!(
            "sup: {} ({}/{} ready)",
            word.trim_matches('"').replace('_', " "),
            health.ready,
            health.target
        ));
        return Ok(if health.serving() { 0 } else { crate::exit::EXIT_RUNTIME });
    }
    if let Ask::Stats { raw } = ask {
        let stats = parse_stats(status, &body).map_err(|e| runtime(format!("{control}: {e}")))?;
        if raw {
            out(&serde_json::to_string_pretty(&stats).unwrap_or_default());
        } else {
            print_status(&stats);
        }
        return Ok(0);
    }
    let answer: Answer = serde_json::from_str(&body).map_err(|e| {
        runtime(format!(
            "{control} answered {status} with something sup ctl cannot read: {e}"
        ))
    })?;
    match answer {
        Answer::Accepted {
            command,
            restart,
            generation,
            target_workers,
        } => {
            let name = serde_json::to_string(&command).unwrap_or_default();
            match restart {
                Some(r) if r.kind == crate::core::RestartKind::Reexec => {
                    out(&format!("sup: reexec {} started", r.id));
                }
                Some(r) => out(&format!("sup: {} restart {} started", r.kind.as_str(), r.id)),
                None => out(&format!(
                    "sup: {} accepted ({target_workers} worker(s), gen {generation})",
                    name.trim_matches('"')
                )),
            }
            match restart {
                Some(r) if args.wait => wait(control, token, r.id, Instant::now() + timeout),
                _ => Ok(0),
            }
        }
        Answer::Refused { reason, .. } => Err(runtime(format!("refused: {reason}"))),
        Answer::Rejected { error } => Err(runtime(format!("{control} answered {status}: {error}"))),
    }
}

/// Why a request got no usable answer. The caller names the server.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Nothing listening, or the connection failed: sup may be between
    /// two images, so `--wait` tries again.
    #[error("{}", crate::files::os_error(.0))]
    Io(#[from] std::io::Error),
    #[error("not an HTTP answer")]
    NotHttp,
    /// `/stats` answered something else than 200, with sup's reason when
    /// it gave one.
    #[error("answered {status}{}", .error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Status { status: u16, error: Option<String> },
    #[error("cannot read its /stats: {0}")]
    Stats(serde_json::Error),
}

fn parse_stats(status: u16, body: &str) -> Result<Stats, RequestError> {
    if status != 200 {
        let error = match serde_json::from_str::<Answer>(body) {
            Ok(Answer::Rejected { error }) => Some(error),
            _ => None,
        };
        return Err(RequestError::Status { status, error });
    }
    serde_json::from_str(body).map_err(RequestError::Stats)
}

/// Follow restart `id` to its end. If a newer restart superseded it (a
/// rollout asked for again starts over), say so and follow that one: it is
/// the one that puts the newest code in place.
fn wait(control: &ControlAddr, token: Option<&str>, mut id: u64, deadline: Instant) -> Result<u8, Failure> {
    let mut announced = std::collections::HashSet::new();
    let mut last_error = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(runtime(format!(
                "gave up waiting for restart {id} to finish ({last_error})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
        // A connection can still fail (sup killed and restarted by systemd,
        // a request cut at the exec): retry until the deadline.
        let stats = match request(control, token, "GET", STATS_PATH).and_then(|(st, body)| parse_stats(st, &body)) {
            Ok(stats) => stats,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        // Ours has ended while an older one (a paused canary) is the one in
        // progress again: its end is the last restart, and that paused one
        // keeps sup "busy" without being anything to wait for.
        let older_paused = matches!(&stats.restart, Some(r) if r.id < id && r.outcome == RestartOutcome::Paused);
        let busy = stats.restart_busy && !older_paused;
        let ended = stats.last_restart.filter(|l| l.id == id);
        let restart = match (stats.restart, ended) {
            (Some(r), _) if r.id >= id => r,
            (_, Some(l)) => l,
            _ => continue,
        };
        if restart.id < id {
            continue;
        }
        if restart.id > id {
            out(&format!(
                "sup: restart {id} was superseded by {} restart {}; following it",
                restart.kind.as_str(),
                restart.id
            ));
            id = restart.id;
        }
        for w in &stats.worker_status {
            let fresh = restart.generation == Some(w.generation);
            if w.state == WorkerPhase::Ready && fresh && announced.insert(w.pid) {
                out(&format!(
                    "worker {} (pid {}, gen {}) is ready",
                    w.slot, w.pid, w.generation
                ));
            }
        }
        if restart.outcome == RestartOutcome::Paused {
            out(&format!(
                "sup: {} restart {id} paused with its canary of gen {} ready (sup ctl resume, or sup ctl rollback)",
                restart.kind.as_str(),
                restart.generation.unwrap_or(0)
            ));
            return Ok(0);
        }
        if restart.outcome == RestartOutcome::Running || busy {
            continue;
        }
        let kind = restart.kind.as_str();
        let error = restart.error.unwrap_or_default();
        return match restart.outcome {
            RestartOutcome::Completed if restart.kind == crate::core::RestartKind::Reexec => {
                out(&format!("sup: reexec complete, every worker adopted (restart {id})"));
                Ok(0)
            }
            RestartOutcome::Completed => {
                out(&format!(
                    "sup: {kind} restart to gen {} complete (restart {id})",
                    restart.generation.unwrap_or(0)
                ));
                Ok(0)
            }
            RestartOutcome::Failed => Err(runtime(format!(
                "{kind} restart failed: worker {} {error}; the old workers keep serving (restart {id})",
                restart.failed_slot.unwrap_or(0)
            ))),
            RestartOutcome::Abandoned | RestartOutcome::Running | RestartOutcome::Paused => {
                Err(runtime(format!("{kind} restart abandoned: {error} (restart {id})")))
            }
        };
    }
}

fn print_status(s: &Stats) {
    out(&format!(
        "sup {} (pid {}), up {}s: {}",
        s.version, s.pid, s.uptime_seconds, s.status
    ));
    for b in &s.binds {
        out(&format!("  listening on {} (fd {}, name {})", b.address, b.fd, b.name));
    }
    if let Some(r) = &s.restart {
        let outcome = serde_json::to_string(&r.outcome).unwrap_or_default();
        out(&format!(
            "  last restart: #{} {} {}{}",
            r.id,
            r.kind.as_str(),
            outcome.trim_matches('"'),
            r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    out(&format!(
        "{:<5} {:<8} {:<5} {:<9} {:<9} {:<14} {:>9} {:>6}  {}",
        "SLOT", "PID", "GEN", "STATE", "RESTARTS", "LAST EXIT", "RSS", "CPU%", "STATUS"
    ));
    for w in &s.worker_status {
        let rss = w
            .rss_bytes
            .map_or("-".to_string(), |b| format!("{:.1}M", b as f64 / 1_048_576.0));
        let cpu = w.cpu_percent.map_or("-".to_string(), |c| format!("{c:.1}"));
        let state = serde_json::to_string(&w.state).unwrap_or_default();
        out(&format!(
            "{:<5} {:<8} {:<5} {:<9} {:<9} {:<14} {:>9} {:>6}  {}",
            w.slot,
            w.pid,
            w.generation,
            state.trim_matches('"'),
            w.restarts,
            w.last_exit.as_deref().unwrap_or("-"),
            rss,
            cpu,
            w.status.as_deref().unwrap_or("")
        ));
    }
}

/// Without a control server: the same commands as signals to the pidfile's pid.
fn by_signal(args: &CtlArgs, ask: Ask, pidfile: Option<&Path>) -> Result<u8, Failure> {
    let signal = match ask {
        Ask::Send { command, count } => signal_for(command, count),
        Ask::Stats { .. } | Ask::Health | Ask::Worker { .. } => None,
    };
    let Some(signal) = signal else {
        return Err(usage(
            "this command needs a control server: give --control (or a --config with control:)",
        ));
    };
    if args.wait {
        return Err(usage(
            "--wait needs a control server: give --control (or a --config with control:)",
        ));
    }
    let pidfile = pidfile.ok_or_else(|| usage("no --control and no --pidfile: nothing to talk to"))?;
    let text = std::fs::read_to_string(pidfile).map_err(|e| {
        runtime(format!(
            "cannot read {}: {}",
            pidfile.display(),
            crate::files::os_error(&e)
        ))
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| runtime(format!("{} does not hold a pid", pidfile.display())))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .map_err(|e| runtime(format!("cannot signal sup (pid {pid}): {e}")))?;
    out(&format!("sup: sent {} to pid {pid}", signal.as_str()));
    Ok(0)
}

/// One HTTP request; the status and the body.
pub fn request(
    control: &ControlAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
) -> Result<(u16, String), RequestError> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: sup\r\nConnection: close\r\nContent-Length: 0\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    let mut text = Vec::new();
    let timeout = Some(Duration::from_secs(10));
    match control {
        ControlAddr::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(timeout)?;
            s.write_all(head.as_bytes())?;
            s.read_to_end(&mut text)?;
        }
        ControlAddr::Tcp(a) => {
            let mut s = std::net::TcpStream::connect_timeout(a, Duration::from_secs(5))?;
            s.set_read_timeout(timeout)?;
            s.write_all(head.as_bytes())?;
            s.read_to_end(&mut text)?;
        }
    }
    let text = String::from_utf8_lossy(&text);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(RequestError::NotHttp)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Sub};

    /// Every `sup ctl` subcommand, parsed from its name (and `3` for each
    /// positional argument).
    fn every_subcommand() -> Vec<(String, CtlCommand)> {
        let cli = Cli::command();
        let Some(ctl) = cli.find_subcommand("ctl") else {
            panic!("no `sup ctl`");
        };
        ctl.get_subcommands()
            .filter(|sub| sub.get_name() != "help")
            .map(|sub| {
                let mut argv = vec!["sup".to_string(), "ctl".into(), sub.get_name().into()];
                argv.extend(sub.get_positionals().map(|_| "3".to_string()));
                // A subcommand of its own (`worker 3 replace`): the first.
                argv.extend(sub.get_subcommands().next().map(|a| a.get_name().to_string()));
                let Some(Sub::Ctl(args)) = Cli::try_parse_from(&argv).unwrap().sub else {
                    panic!("{argv:?} is not `sup ctl`");
                };
                (sub.get_name().to_string(), args.command)
            })
            .collect()
    }

    #[test]
    fn every_command_is_reachable_from_the_cli_and_round_trips() {
        let mut reached = Vec::new();
        for (name, sub) in every_subcommand() {
            match Ask::of(&sub) {
                Ask::Stats { .. } => assert!(name == "status" || name == "stats", "{name}"),
                Ask::Health => assert_eq!(name, "health"),
                Ask::Worker { query } => {
                    assert_eq!(name, "worker");
                    assert_eq!(query, "target=3&action=replace");
                    reached.push(Command::Worker);
                }
                Ask::Send { command, count } => {
                    assert_eq!(Command::from_path(command.path()), Some(command));
                    // `sup ctl NAME` posts to `/NAME`.
                    assert_eq!(command.path(), format!("/{name}"));
                    let target = command.target(count);
                    assert_eq!(target.split('?').next(), Some(command.path()));
                    reached.push(command);
                }
            }
        }
        for c in Command::ALL {
            assert!(reached.contains(&c), "{c:?} has no `sup ctl` subcommand");
        }
        assert_eq!(reached.len(), Command::ALL.len(), "{reached:?}");
        assert_eq!(
            Ask::of(&CtlCommand::Workers { count: 3 }),
            Ask::Send {
                command: Command::Workers,
                count: 3
            }
        );
        assert_eq!(Command::Workers.target(3), "/workers?count=3");
    }

    #[test]
    fn signals_and_waits_are_what_they_were() {
        let by_name: Vec<(String, Option<Signal>, bool)> = every_subcommand()
            .into_iter()
            .map(|(name, sub)| match Ask::of(&sub) {
                Ask::Stats { .. } | Ask::Health | Ask::Worker { .. } => (name, None, false),
                Ask::Send { command, count } => (name, signal_for(command, count), starts_restart(command)),
            })
            .collect();
        let expected = [
            ("status", None, false),
            ("health", None, false),
            ("stats", None, false),
            ("restart", Some(Signal::SIGUSR2), true),
            ("phased-restart", Some(Signal::SIGUSR1), true),
            ("stop", Some(Signal::SIGTERM), false),
            ("halt", Some(Signal::SIGQUIT), false),
            ("incr", Some(Signal::SIGTTIN), false),
            ("decr", Some(Signal::SIGTTOU), false),
            ("workers", None, false),
            ("reopen-logs", Some(Signal::SIGHUP), false),
            ("reexec", None, true),
            ("worker", None, false),
            ("resume", None, true),
            ("rollback", None, true),
        ];
        assert_eq!(by_name.len(), expected.len(), "{by_name:?}");
        for (name, signal, waits) in expected {
            assert!(
                by_name.contains(&(name.to_string(), signal, waits)),
                "{name}: {by_name:?}"
            );
        }
    }
}

//! The imperative shell: owns the `mio::Poll`, turns readiness into core
//! events, carries out the core's actions, and reaps children.
//!
//! One thread, one loop. It sleeps in `poll` until a signal arrives or the
//! core's next deadline passes; with nothing timed it sleeps indefinitely.
//! It holds no policy: every decision about workers is the core's. It must
//! not decide anything itself — if a line here contains an `if` about
//! workers, that logic belongs in `core.rs`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook_mio::v1_0::Signals;

use crate::config::{Config, Credentials, Readiness};
use crate::control::http::{self, Parsed};
use crate::control::protocol::Answer;
use crate::control::server::ControlServer;
use crate::control::stats::{self, Usage};
use crate::control::{self, Route};
use crate::core::{Action, Core, Event, Settings};
use crate::handoff::Handoff;
use crate::hot_restart;
use crate::own_sockets::{OwnSocketError, OwnSockets};
use crate::signals::{self, SignalEvent};
use crate::sockets::BoundSocket;
use crate::spawn::{self, HelperRequest, SpawnRequest};
use crate::upward::Notifier;
use crate::worker::{Backoff, ExitStatus};

const SIGNALS: Token = Token(0);
const NOTIFY: Token = Token(1);
const EINHORN: Token = Token(2);
const CONTROL: Token = Token(3);
/// Einhorn connections use tokens from here on.
const EINHORN_CONN: usize = 16;
/// Control connections use tokens from here on.
const CONTROL_CONN: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot set up the event loop")]
    Setup(#[source] std::io::Error),
    #[error(transparent)]
    OwnSockets(#[from] OwnSocketError),
    #[error("cannot serve the control API on {0}: {1}")]
    Control(String, String),
    #[error("the event loop failed")]
    Poll(#[source] std::io::Error),
}

/// The loop's resources, created before the sockets are bound so that a
/// signal arriving during startup is already caught.
pub struct EventLoop {
    poll: Poll,
    signals: Signals,
    own: OwnSockets,
    control: Option<ControlServer>,
    upward: Option<Notifier>,
}

impl EventLoop {
    pub fn new(
        config: &Config,
        credentials: Option<&Credentials>,
        handoff: Option<&Handoff>,
    ) -> Result<EventLoop, LoopError> {
        let poll = Poll::new().map_err(LoopError::Setup)?;
        let mut signals = Signals::new(signals::HANDLED.map(|s| s as i32)).map_err(LoopError::Setup)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(LoopError::Setup)?;
        let owner = credentials.map(|c| (c.uid, c.gid));
        let mut own = OwnSockets::open(config.notify_socket, config.einhorn_ack, owner, handoff)?;
        poll.registry()
            .register(&mut SourceFd(&own.notify.raw_fd()), NOTIFY, Interest::READABLE)
            .map_err(LoopError::Setup)?;
        if let Some(e) = &mut own.einhorn {
            poll.registry()
                .register(e.listener(), EINHORN, Interest::READABLE)
                .map_err(LoopError::Setup)?;
        }
        let control = match &config.control {
            Some(addr) => {
                let mut server =
                    ControlServer::bind(addr, CONTROL_CONN).map_err(|why| LoopError::Control(addr.to_string(), why))?;
                server
                    .register(poll.registry(), CONTROL)
                    .map_err(|e| LoopError::Control(addr.to_string(), e.to_string()))?;
                log::info!("control server on {}", server.addr);
                Some(server)
            }
            None => None,
        };
        Ok(EventLoop {
            poll,
            signals,
            own,
            control,
            upward: Notifier::from_env(),
        })
    }

    /// Run until the core says exit; returns the exit status.
    pub fn run(
        mut self,
        config: &Config,
        credentials: Option<&Credentials>,
        ctx: Context<'_>,
    ) -> Result<i32, LoopError> {
        let Context {
            sockets,
            devnull,
            exe,
            origin,
            resume,
        } = ctx;
        let mut trusted_uids = vec![0, nix::unistd::Uid::effective().as_raw()];
        trusted_uids.extend(credentials.map(|c| c.uid));
        let mut core = Core::new(Settings {
            workers: config.workers,
            stop_signal: config.stop_signal as i32,
            graceful_timeout: config.graceful_timeout,
            ready_delay: match config.ready {
                Readiness::Notify => None,
                Readiness::Delay(d) => Some(d),
            },
            boot_timeout: config.boot_timeout,
            watchdog: config.watchdog,
            max_surge: config.max_surge,
            hook: config.on_restart.is_some(),
            hook_timeout: config.hook_timeout,
            trusted_uids,
            backoff: Backoff::default(),
            halt_timeout: Duration::from_secs(5),
            upward_watchdog: self.upward.as_ref().and_then(|_| crate::upward::watchdog_interval()),
        });
        if let Some(r) = resume {
            core.resume_hot(r.restart_id, r.generation, r.elapsed, Instant::now());
        }
        let started = Instant::now();
        let mut usage = Usage::new();
        let sup_pid = std::process::id() as i32;
        let notify_socket = self.own.notify.name.to_string();
        log::info!("notify socket for workers: {notify_socket}");
        let einhorn_path = self.own.einhorn.as_ref().map(|e| e.name.to_string());
        let mut events = Events::with_capacity(64);
        let mut pending = VecDeque::from([Event::Started]);
        let status = loop {
            let mut exit = None;
            while let Some(event) = pending.pop_front() {
                for action in core.handle(event, Instant::now()) {
                    match action {
                        Action::Spawn { slot, generation } => {
                            let req = SpawnRequest {
                                slot,
                                generation,
                                config,
                                sockets,
                                credentials,
                                sup_pid,
                                devnull: devnull.as_raw_fd(),
                                notify_socket: &notify_socket,
                                einhorn_socket: einhorn_path.as_deref(),
                            };
                            pending.push_back(match spawn::spawn(&req) {
                                Ok(pid) => Event::Spawned { slot, generation, pid },
                                Err(reason) => Event::SpawnFailed {
                                    slot,
                                    generation,
                                    reason,
                                },
                            });
                        }
                        Action::RunHook { kind } => {
                            let command = config.on_restart.as_deref().unwrap_or("true");
                            log::info!("running the restart hook: {command}");
                            let req = HelperRequest {
                                program: Path::new("/bin/sh"),
                                argv: vec!["sh".into(), "-c".into(), command.into()],
                                env: vec![
                                    ("SUP_RESTART".into(), kind.as_str().into()),
                                    ("SUP_PID".into(), sup_pid.to_string()),
                                ],
                                config,
                                credentials,
                                devnull: devnull.as_raw_fd(),
                            };
                            pending.push_back(helper_event(spawn::spawn_helper(&req)));
                        }
                        Action::RunPreflight => {
                            pending.push_back(helper_event(preflight(exe, config, devnull.as_raw_fd())));
                        }
                        Action::ReExec { generation } => {
                            let record = core.restart_record();
                            let mut handoff = Handoff::new(generation, exe.to_string(), origin.to_path_buf());
                            handoff.restart_id = record.as_ref().map_or(0, |r| r.id);
                            handoff.started_ms = wall_ms(record.map(|r| r.started_at));
                            handoff.sockets = sockets.iter().map(BoundSocket::handed).collect();
                            self.own.hand_over(&mut handoff);
                            let mut fds: Vec<i32> = sockets.iter().map(BoundSocket::raw_fd).collect();
                            fds.extend(self.own.fds());
                            log::info!("hot restart: re-executing {exe} to start gen {generation}");
                            let reason = hot_restart::reexec(&handoff, &fds, config.directory.as_deref());
                            pending.push_back(Event::ReExecFailed { reason });
                        }
                        Action::Signal { pid, signal } => send(pid, signal),
                        Action::KillGroup { pgid } => send(-pgid, Signal::SIGKILL as i32),
                        Action::ProbeGroup { pgid } => {
                            if matches!(kill(Pid::from_raw(-pgid), None), Err(Errno::ESRCH)) {
                                pending.push_back(Event::GroupEmpty { pgid });
                            }
                        }
                        Action::ReopenLogs => reopen_log(config.log_file.as_deref()),
                        Action::Upward(what) => {
                            if let Some(n) = &self.upward {
                                n.send(&what);
                            }
                        }
                        Action::Reply { conn, intent, reply } => {
                            if let Some(server) = &mut self.control {
                                let answer = Answer::from_reply(intent, reply);
                                server.respond(conn, http::response(answer.status(500), &answer.to_json(), &[]));
                            }
                        }
                        Action::Log { level, message } => log::log!(level, "{message}"),
                        Action::Exit(code) => exit = Some(code),
                    }
                }
            }
            if let Some(code) = exit {
                break code;
            }

            let deadline = [
                core.next_deadline(),
                self.control.as_ref().and_then(ControlServer::next_deadline),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                // A signal handler ran: epoll_wait is never restarted.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LoopError::Poll(e)),
            }
            for ev in events.iter() {
                match ev.token() {
                    SIGNALS => {}
                    NOTIFY => {
                        for r in self.own.notify.drain() {
                            if r.fds_closed > 0 {
                                log::debug!("closed {} fd(s) sent with a notify message", r.fds_closed);
                            }
                            pending.push_back(Event::Notify {
                                sender: r.sender,
                                message: r.message,
                            });
                        }
                    }
                    EINHORN => self.accept_einhorn(),
                    CONTROL => {
                        if let Some(server) = &mut self.control {
                            server.accept(self.poll.registry(), Instant::now());
                        }
                    }
                    Token(t) if t >= CONTROL_CONN => {
                        let Some(server) = &mut self.control else { continue };
                        let Some(slot) = server.slot_of(Token(t)) else { continue };
                        match server.read(slot) {
                            None => {}
                            Some(Parsed::Incomplete) => {}
                            Some(Parsed::Error(status, why)) => {
                                let body = Answer::rejected(why).to_json();
                                server.respond(slot, http::response(status, &body, &[]));
                            }
                            Some(Parsed::Request(req)) => match control::route(&req, config.control_token.as_deref()) {
                                Route::Stats => {
                                    let body = stats::build(&core, sockets, &mut usage, started, Instant::now());
                                    let json = serde_json::to_string(&body).unwrap_or_default();
                                    server.respond(slot, http::response(200, &json, &[]));
                                }
                                // The core decides and answers (Action::Reply);
                                // the connection waits until then.
                                Route::Intent(intent) => pending.push_back(Event::Control { conn: slot, intent }),
                                Route::Refuse(status, why) => {
                                    let body = Answer::rejected(why).to_json();
                                    server.respond(slot, http::response(status, &body, &[]));
                                }
                                Route::WrongMethod { allow } => {
                                    let body = Answer::rejected(format!("use {allow} {}", req.path)).to_json();
                                    server.respond(slot, http::response(405, &body, &[("Allow", allow)]));
                                }
                            },
                        }
                    }
                    Token(t) if t >= EINHORN_CONN => {
                        if let Some(e) = &mut self.own.einhorn {
                            for (sender, message) in e.read(t - EINHORN_CONN) {
                                pending.push_back(Event::Notify { sender, message });
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(server) = &mut self.control {
                server.expire(Instant::now());
            }
            let mut reap = false;
            for signal in self.signals.pending() {
                match signals::translate(signal) {
                    Some(SignalEvent::Intent(intent)) => pending.push_back(Event::Intent(intent)),
                    Some(SignalEvent::Child) => reap = true,
                    None => {}
                }
            }
            if reap {
                reap_all(&mut pending);
            }
            if core.next_deadline().is_some_and(|d| d <= Instant::now()) {
                pending.push_back(Event::Tick);
            }
        };
        if let Some(c) = &self.control {
            c.remove_file();
        }
        Ok(status)
    }

    fn accept_einhorn(&mut self) {
        let Some(e) = &mut self.own.einhorn else { return };
        for slot in e.accept() {
            if let Some(stream) = e.stream(slot) {
                let token = Token(EINHORN_CONN + slot);
                if let Err(err) = self.poll.registry().register(stream, token, Interest::READABLE) {
                    log::warn!("cannot watch an Einhorn connection: {err}");
                }
            }
        }
    }
}

/// HUP: reopen `--log-file` onto sup's stdout and stderr (for logrotate).
/// Workers started from now on inherit the new file.
fn reopen_log(path: Option<&Path>) {
    let Some(path) = path else {
        log::info!("HUP: no --log-file is in use, nothing to reopen");
        return;
    };
    match crate::logging::redirect_to(path) {
        Ok(()) => log::info!("reopened the log file {}", path.display()),
        Err(e) => log::error!(
            "cannot reopen the log file {}: {e}; still writing to the old one",
            path.display()
        ),
    }
}

/// What the loop runs with besides the configuration.
pub struct Context<'a> {
    pub sockets: &'a [BoundSocket],
    pub devnull: &'a OwnedFd,
    /// How sup was started, re-resolved at each hot restart.
    pub exe: &'a str,
    /// The directory the first image started in (see `Config::anchor_paths`).
    pub origin: &'a Path,
    /// After a hot restart: where to carry on from.
    pub resume: Option<Resume>,
}

/// What the new image carries on from after a hot restart.
pub struct Resume {
    pub restart_id: u64,
    pub generation: u64,
    /// How long ago the restart began, in the old image.
    pub elapsed: Duration,
}

fn helper_event(result: Result<i32, String>) -> Event {
    match result {
        Ok(pid) => Event::HelperSpawned { pid },
        Err(reason) => Event::HelperFailed { reason },
    }
}

/// Start the new sup (the program at sup's path now) with `--check` and
/// sup's own arguments, in the resolved directory, as sup's user.
fn preflight(exe: &str, config: &Config, devnull: std::os::fd::RawFd) -> Result<i32, String> {
    let program = hot_restart::resolve_exe(exe)?;
    log::info!("hot restart: checking the new sup: {} --check", program.display());
    let mut argv = vec![program.clone().into_os_string(), "--check".into()];
    argv.extend(hot_restart::own_args());
    spawn::spawn_helper(&HelperRequest {
        program: &program,
        argv,
        env: Vec::new(),
        config,
        credentials: None,
        devnull,
    })
}

/// Wall-clock milliseconds at `instant` (now if unknown).
fn wall_ms(instant: Option<Instant>) -> u64 {
    let ago = instant.map_or(Duration::ZERO, |i| i.elapsed());
    let at = std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or_else(std::time::SystemTime::now);
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Collect every child that has exited (signals coalesce: one SIGCHLD may
/// stand for many). Also reaps orphans re-parented to sup.
fn reap_all(pending: &mut VecDeque<Event>) {
    loop {
        let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("waitpid failed: {e}");
                return;
            }
        };
        // Does anything of its process group remain (a wrapper's children)?
        // Only meaningful for workers, which lead their own group.
        let group_alive = !matches!(kill(Pid::from_raw(-pid.as_raw()), None), Err(Errno::ESRCH));
        pending.push_back(Event::Exited {
            pid: pid.as_raw(),
            status,
            group_alive,
        });
    }
}

/// Send a signal; a target that is already gone is not an error.
fn send(target: i32, signal: i32) {
    let Ok(sig) = Signal::try_from(signal) else { return };
    match kill(Pid::from_raw(target), sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("cannot send {sig} to {}: {e}", describe_target(target)),
    }
}

fn describe_target(target: i32) -> String {
    if target < 0 {
        format!("process group {}", -target)
    } else {
        format!("pid {target}")
    }
}

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
use nix::unistd::Pid as NixPid;
use signal_hook_mio::v1_0::Signals;

use crate::children::{self, NotAdoptable};
use crate::command;
use crate::config::{self, Config, Credentials};
use crate::control::http::{self, Parsed};
use crate::control::metrics;
use crate::control::protocol::Answer;
use crate::control::server::ControlServer;
use crate::control::stats::{self, Usage};
use crate::control::{self, Route};
use crate::core::{Action, Core, Event};
use crate::handoff::Handoff;
use crate::hot_restart;
use crate::output::{self, Output};
use crate::own_sockets::{OwnSocketError, OwnSockets};
use crate::pid::{Pgid, Pid};
use crate::procfs;
use crate::signals::{self, SignalEvent};
use crate::sockets::{BoundSocket, KeptOut};
use crate::spawn::{self, HelperRequest, SpawnRequest};
use crate::upward::Notifier;
use crate::worker::ExitStatus;

// Tokens: 0-3 are the fixed sources; connections get a range each, indexed
// by their slot in a bounded table (64 at most), so a token maps back to its
// connection with a subtraction.
/// The signal self-pipe (signal-hook).
const SIGNALS: Token = Token(0);
/// The sd_notify datagram socket.
const NOTIFY: Token = Token(1);
/// The Einhorn command socket's listener.
const EINHORN: Token = Token(2);
/// The control server's listener.
const CONTROL: Token = Token(3);
/// Einhorn connections: `EINHORN_CONN + slot`, up to `CONTROL_CONN`.
const EINHORN_CONN: usize = 16;
/// Control connections: `CONTROL_CONN + slot`.
const CONTROL_CONN: usize = 1 << 20;
/// Readiness pipes (`--ready fd:N`): `READY_PIPE + index`, below `OUTPUT_PIPE`.
const READY_PIPE: usize = 1 << 22;
/// sup's stdout and stderr, while worker lines wait for them (`--worker-output`).
const OUTPUT_SINKS: [Token; 2] = [Token(4), Token(5)];
/// Workers' output pipes: `OUTPUT_PIPE + index` (see `output`).
const OUTPUT_PIPE: usize = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot set up the event loop")]
    Setup(#[source] std::io::Error),
    #[error(transparent)]
    OwnSockets(#[from] OwnSocketError),
    /// The control error's words say it all (they carry the OS's).
    #[error("cannot serve the control API on {0}: {1}")]
    Control(String, crate::control::server::ControlError),
    #[error("cannot watch the control API on {0}")]
    ControlPoll(String, #[source] std::io::Error),
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
    /// The workers' output pipes, with `--worker-output`.
    output: Output,
}

impl EventLoop {
    pub fn new(
        config: &Config,
        credentials: Option<&Credentials>,
        handoff: Option<&Handoff>,
        stored_control: Option<crate::sockets::Activated>,
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
        // After a hot restart the control listener is the one handed over,
        // if the configuration still names it: no gap for `sup ctl`.
        // Or, under systemd, the one its fd store kept across a restart.
        let stored = config
            .control
            .as_ref()
            .zip(stored_control)
            .and_then(|(addr, a)| crate::control::server::from_store(a.fd, addr));
        let handed = handoff.and_then(|h| h.control.as_ref()).or(stored.as_ref());
        let control = match &config.control {
            Some(addr) => {
                let adopted = match handed {
                    Some(h) if h.configured == addr.to_string() => ControlServer::adopt(h, CONTROL_CONN)
                        .inspect_err(|why| log::error!("not adopting the control socket: {why}"))
                        .ok(),
                    Some(h) => {
                        crate::control::server::discard(h);
                        None
                    }
                    None => None,
                };
                let mut server = match adopted {
                    Some(s) => s,
                    None => ControlServer::listen(addr, CONTROL_CONN)
                        .map_err(|why| LoopError::Control(addr.to_string(), why))?,
                };
                server
                    .register(poll.registry(), CONTROL)
                    .map_err(|e| LoopError::ControlPoll(addr.to_string(), e))?;
                log::info!("control server on {}", server.addr);
                Some(server)
            }
            None => {
                if let Some(h) = handed {
                    crate::control::server::discard(h);
                }
                None
            }
        };
        let output = Output::new(
            output::Format::of(config.worker_output, config.worker_output_timestamps),
            handoff.and_then(|h| h.worker_output.as_ref()),
            output::Tokens {
                pipes: OUTPUT_PIPE,
                sinks: OUTPUT_SINKS,
            },
            poll.registry(),
        )
        .map_err(LoopError::Setup)?;
        Ok(EventLoop {
            poll,
            signals,
            own,
            control,
            upward: Notifier::from_env(),
            output,
        })
    }

    /// Run until the core says exit; returns the exit status.
    pub fn run(
        self,
        config: &Config,
        credentials: Option<&Credentials>,
        mut ctx: Context<'_>,
    ) -> Result<i32, LoopError> {
        let upward_watchdog = self.upward.as_ref().and_then(|_| crate::upward::watchdog_interval());
        let mut settings = config.core_settings(credentials, upward_watchdog);
        settings.balance = ctx.slot_sockets.any();
        let (core, first) = match ctx.resume.take() {
            Some(snapshot) => Core::restore(settings, snapshot, Instant::now(), wall_ms(None), our_worker),
            None => (Core::new(settings), Vec::new()),
        };
        let notify_socket = self.own.notify.name.to_string();
        log::info!("notify socket for workers: {notify_socket}");
        let fd_store = self.upward.as_ref().filter(|_| crate::upward::fd_store_in_use());
        if let Some(n) = fd_store {
            hand_to_fd_store(n, &ctx, self.control.as_ref());
        }
        let fd_store = fd_store.is_some();
        let prepared = command::PreparedCache::restore(std::mem::take(&mut ctx.pins));
        let mut ready_pipes = crate::ready_fd::ReadyPipes::default();
        for (fd, pid) in std::mem::take(&mut ctx.ready_pipes) {
            if let Err(e) = ready_pipes.adopt(self.poll.registry(), READY_PIPE, pid, fd) {
                log::error!(
                    "cannot watch pid {pid}'s readiness pipe: {}",
                    crate::files::os_error(&e)
                );
            }
        }
        let mut shell = Shell {
            einhorn_socket: self.own.einhorn.as_ref().map(|e| e.name.to_string()),
            notify_socket,
            res: self,
            config,
            credentials,
            ctx,
            core,
            pending: VecDeque::from([Event::Started]),
            usage: Usage::new(),
            started: Instant::now(),
            sup_pid: Pid::this(),
            exit: None,
            exec_due: None,
            strays_seen: children::Seen::default(),
            strays_check_at: None,
            fd_store,
            stored_slots: Vec::new(),
            ready_pipes,
            reap_due: false,
            prepared,
        };
        shell.store_slot_sockets();
        for action in first {
            shell.execute(action);
        }
        let status = shell.run();
        if let Some(c) = &shell.res.control
            && !shell.fd_store
        {
            c.remove_file();
        }
        status
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

/// One run of the loop: the resources, the core, and the queue of events
/// between them.
struct Shell<'a> {
    res: EventLoop,
    config: &'a Config,
    credentials: Option<&'a Credentials>,
    ctx: Context<'a>,
    core: Core,
    /// Events waiting for the core, oldest first.
    pending: VecDeque<Event>,
    usage: Usage,
    started: Instant,
    sup_pid: Pid,
    notify_socket: String,
    einhorn_socket: Option<String>,
    /// Set by [`Action::Exit`].
    exit: Option<i32>,
    /// Set by [`Action::ReExec`]: the generation, and whether the workers
    /// are handed over.
    exec_due: Option<(u64, bool)>,
    /// Strays already logged (see [`Shell::note_strays`]).
    strays_seen: children::Seen,
    /// When to look for strays, after a reap.
    strays_check_at: Option<Instant>,
    /// The listeners are in systemd's fd store (they outlive this sup).
    fd_store: bool,
    /// The per-slot sockets in systemd's fd store, by name.
    stored_slots: Vec<String>,
    /// `--ready fd:N`: the booting workers' readiness pipes.
    ready_pipes: crate::ready_fd::ReadyPipes,
    /// A SIGCHLD read between events: reap after the next poll.
    reap_due: bool,
    /// What the workers of the generation being spawned run.
    prepared: command::PreparedCache,
}

/// How long after a reap sup looks for processes left to it.
const STRAYS_CHECK: Duration = Duration::from_millis(200);

/// How long a re-exec waits for control requests already accepted to be
/// complete, so that they are answered rather than cut off.
const QUIESCE: Duration = Duration::from_millis(50);

impl Shell<'_> {
    /// The loop. Within one wake-up the order is fixed:
    /// 1. every pending event goes to the core, and each action it returns
    ///    is carried out at once; events those actions cause (a spawn's pid,
    ///    a control reply's follow-ups) queue behind and are handled in the
    ///    same pass, so a control request is answered before the next poll;
    ///    after each event the signals are read, and an intent goes to the
    ///    front of the queue (the core spawns at most a batch per event, so
    ///    a TERM during the start of a thousand workers acts at once);
    ///    a re-exec the core asked for runs only then, once nothing is left
    ///    queued, and only if the core still wants it;
    /// 2. worker lines (`--worker-output`) are written to sup's stdout and
    ///    stderr as far as they take them without blocking; then sleep in
    ///    `poll` until readiness or the earliest deadline (the core's, a
    ///    control connection's, the busy output pipes' timer); none means
    ///    sleep indefinitely;
    /// 3. readiness becomes events in the order epoll reports it
    ///    ([`Shell::dispatch`]; a worker's output pipe is read at once, by
    ///    `output`); the busy output pipes are read if their timer is due;
    ///    then control connections past their read deadline are cut off;
    ///    then signals are read — intents queue, and a SIGCHLD reaps every
    ///    exited child; last, a `Tick` if a core deadline has passed.
    fn run(&mut self) -> Result<i32, LoopError> {
        let mut events = Events::with_capacity(64);
        loop {
            while let Some(event) = self.pending.pop_front() {
                for action in self.core.handle(event, Instant::now()) {
                    self.execute(action);
                }
                // Between events too (a thousand spawns are many events):
                // a TERM goes first, before what is still queued.
                self.take_signals(true);
            }
            if let Some(code) = self.exit {
                self.res.output.finish(self.res.poll.registry());
                return Ok(code);
            }
            // The core may have changed its mind since it asked (a TERM in
            // the same wake-up ends the restart): it is asked again.
            if let Some((generation, adopt)) = self.exec_due.take()
                && self.core.exec_due()
            {
                let reason = self.reexec(generation, adopt);
                self.pending.push_back(Event::ReExecFailed { reason });
                continue;
            }
            // One O(workers) look at the core's deadlines per wake-up: the
            // core does not change between here and the Tick check below.
            if self.strays_check_at.is_some_and(|t| t <= Instant::now()) {
                self.strays_check_at = None;
                self.note_strays();
            }
            // Worker lines go out to sup's stdout and stderr as far as they
            // take them now (also what a previous image left queued).
            self.res.output.flush(self.res.poll.registry());
            let core_deadline = self.core.next_deadline();
            let deadline = [
                core_deadline,
                self.res.control.as_ref().and_then(ControlServer::next_deadline),
                self.strays_check_at,
                self.res.output.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = if self.reap_due {
                Some(Duration::ZERO)
            } else {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            match self.res.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                // A signal handler ran: epoll_wait is never restarted.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LoopError::Poll(e)),
            }
            let now = Instant::now();
            for token in events.iter().map(mio::event::Event::token) {
                if !self.res.output.ready(token, self.res.poll.registry(), now) {
                    self.dispatch(token);
                }
            }
            // Worker lines: the busy pipes on their timer (written out
            // before the next poll).
            self.res.output.tick(Instant::now(), self.res.poll.registry());
            if let Some(server) = &mut self.res.control {
                server.expire(Instant::now());
            }
            self.take_signals(false);
            if core_deadline.is_some_and(|d| d <= Instant::now()) {
                self.pending.push_back(Event::Tick);
            }
        }
    }

    /// Turn one token's readiness into events (see the token ranges above).
    fn dispatch(&mut self, token: Token) {
        match token {
            // Read after every wake-up, in `run`.
            SIGNALS => {}
            NOTIFY => {
                for r in self.res.own.notify.drain() {
                    if r.fds_closed > 0 {
                        log::debug!("closed {} fd(s) sent with a notify message", r.fds_closed);
                    }
                    self.pending.push_back(Event::Notify {
                        sender: r.sender,
                        message: r.message,
                    });
                }
            }
            EINHORN => self.res.accept_einhorn(),
            CONTROL => {
                if let Some(server) = &mut self.res.control {
                    server.accept(self.res.poll.registry(), Instant::now());
                }
            }
            Token(t) if t >= READY_PIPE => {
                if let Some((pid, ready)) = self.ready_pipes.read(self.res.poll.registry(), t - READY_PIPE) {
                    self.pending.push_back(Event::ReadyFd { pid, ready });
                }
            }
            Token(t) if t >= CONTROL_CONN => self.control_readable(Token(t)),
            Token(t) if t >= EINHORN_CONN => {
                if let Some(e) = &mut self.res.own.einhorn {
                    for (sender, message) in e.read(t - EINHORN_CONN) {
                        self.pending.push_back(Event::Notify { sender, message });
                    }
                }
            }
            Token(_) => {}
        }
    }

    /// A control connection has data: once its request is whole, either
    /// reject it (its form is wrong), answer `/stats`, or hand the command
    /// to the core, whose [`Action::Reply`] answers it.
    fn control_readable(&mut self, token: Token) {
        let Some(server) = &mut self.res.control else { return };
        let Some(slot) = server.slot_of(token) else { return };
        let req = match server.read(slot) {
            None | Some(Parsed::Incomplete) => return,
            Some(Parsed::Error(status, why)) => {
                server.respond(slot, http::response(status, &Answer::rejected(why).to_json(), &[]));
                return;
            }
            Some(Parsed::Request(req)) => req,
        };
        match control::route(&req, self.config.control_token.as_deref()) {
            Route::Health => server.respond(slot, health_response(&self.core)),
            Route::Stats => {
                let prepared = &self.prepared;
                let releases = |g: u64| prepared.release(g).map(|p| p.display().to_string());
                let body = stats::build(
                    &self.core,
                    self.ctx.sockets,
                    &self.ctx.slot_sockets,
                    &mut self.usage,
                    self.started,
                    Instant::now(),
                    &releases,
                );
                let json = serde_json::to_string(&body).unwrap_or_default();
                server.respond(slot, http::response(200, &json, &[]));
            }
            Route::Metrics => {
                let mut text = metrics::render(
                    &self.core,
                    self.ctx.sockets,
                    &self.ctx.slot_sockets,
                    &mut self.usage,
                    self.started,
                    Instant::now(),
                );
                text.push_str(&metrics::worker_output(&self.res.output.counters()));
                server.respond(slot, http::typed_response(200, metrics::CONTENT_TYPE, &text, &[]));
            }
            Route::Intent(crate::core::Intent::Rollback { .. }) => {
                // What this sup keeps of the release a rollback restores:
                // facts for the core, which decides.
                let pinned = match self.core.rollback_target().map(|g| self.prepared.release(g)) {
                    Some(Some(dir)) if dir.is_dir() => crate::core::Pinned::Ready,
                    Some(Some(dir)) => {
                        log::warn!("rollback: the pinned release {} is gone", dir.display());
                        crate::core::Pinned::Gone
                    }
                    Some(None) | None => crate::core::Pinned::Unknown,
                };
                let intent = crate::core::Intent::Rollback { pinned };
                self.pending.push_back(Event::Control { conn: slot, intent });
            }
            Route::Intent(intent) => self.pending.push_back(Event::Control { conn: slot, intent }),
            Route::Refuse(status, why) => {
                server.respond(slot, http::response(status, &Answer::rejected(why).to_json(), &[]));
            }
            Route::WrongMethod { allow } => {
                let body = Answer::rejected(format!("use {allow} {}", req.path)).to_json();
                server.respond(slot, http::response(405, &body, &[("Allow", allow)]));
            }
        }
    }

    /// Answer what the control server has accepted before the exec closes
    /// it: `/stats` as usual; a command the core has not seen is refused
    /// (nothing was done), and its client asks the next image again.
    fn quiesce_control(&mut self) {
        let Some(server) = &mut self.res.control else { return };
        let token = self.config.control_token.as_deref();
        let (core, sockets, usage, started) = (&self.core, self.ctx.sockets, &mut self.usage, self.started);
        let slot_sockets = &self.ctx.slot_sockets;
        let prepared = &self.prepared;
        let releases = |g: u64| prepared.release(g).map(|p| p.display().to_string());
        let output = self.res.output.counters();
        server.quiesce(QUIESCE, |req| {
            let refused = |command| {
                let answer = Answer::Refused {
                    command,
                    reason: "sup is re-executing itself; ask again".to_string(),
                };
                http::response(409, &answer.to_json(), &[])
            };
            match control::route(req, token) {
                Route::Health => health_response(core),
                Route::Stats => {
                    let body = stats::build(core, sockets, slot_sockets, usage, started, Instant::now(), &releases);
                    http::response(200, &serde_json::to_string(&body).unwrap_or_default(), &[])
                }
                Route::Metrics => {
                    let mut text = metrics::render(core, sockets, slot_sockets, usage, started, Instant::now());
                    text.push_str(&metrics::worker_output(&output));
                    http::typed_response(200, metrics::CONTENT_TYPE, &text, &[])
                }
                Route::Intent(intent) => refused(crate::control::protocol::Command::of(intent)),
                Route::Refuse(status, why) => http::response(status, &Answer::rejected(why).to_json(), &[]),
                Route::WrongMethod { allow } => {
                    let body = Answer::rejected(format!("use {allow} {}", req.path)).to_json();
                    http::response(405, &body, &[("Allow", allow)])
                }
            }
        });
    }

    /// Read the signals that have arrived (a non-blocking read of the
    /// self-pipe): intents queue (`first`: ahead of what is queued, between
    /// events). A SIGCHLD reaps every exited child, but only after a poll
    /// has read the notify socket: a worker's last `STOPPING=1` or
    /// `STATUS=`, sent before it exited, must reach the core before its exit.
    fn take_signals(&mut self, first: bool) {
        let mut reap = std::mem::take(&mut self.reap_due);
        let mut intents = Vec::new();
        for signal in self.res.signals.pending() {
            match signals::translate(signal) {
                Some(SignalEvent::Intent(intent)) => intents.push(Event::Intent(intent)),
                Some(SignalEvent::Child) => reap = true,
                None => {}
            }
        }
        if first {
            // Ahead of what is queued, but behind the outcomes of the forks
            // already made: the core must know every process it started
            // before it acts on a TERM (which stops them all).
            let at = self
                .pending
                .iter()
                .rposition(|e| {
                    matches!(
                        e,
                        Event::Spawned { .. }
                            | Event::SpawnFailed { .. }
                            | Event::HelperSpawned { .. }
                            | Event::HelperFailed { .. }
                    )
                })
                .map_or(0, |i| i + 1);
            for (k, event) in intents.into_iter().enumerate() {
                self.pending.insert(at + k, event);
            }
        } else {
            self.pending.extend(intents);
        }
        if reap && first {
            self.reap_due = true;
        } else if reap {
            reap_all(&mut self.pending);
            // Looked for shortly after, not at every reap: reading the child
            // list costs O(children), and a rollout reaps once per worker.
            self.strays_check_at.get_or_insert(Instant::now() + STRAYS_CHECK);
        }
    }

    /// sup's children in no worker's or helper's group (the core says which).
    fn strays(&self) -> Vec<Pid> {
        let children = procfs::own_children().unwrap_or_default();
        self.core.strays(children, group_of)
    }

    /// sup's children that are in no worker's or helper's group: processes
    /// that escaped one (a `setsid` daemon, a double fork) and were left to
    /// sup, a subreaper, when their parent exited. Each is logged once, when
    /// sup first sees it after a reap, saying whether it holds one of sup's
    /// listening sockets (then the port keeps accepting connections nobody
    /// answers); they are stopped with sup. One read of the child list.
    fn note_strays(&mut self) {
        let now = self.strays();
        let listening = socket_inodes(self.ctx.sockets, &self.ctx.slot_sockets);
        for pid in self.strays_seen.fresh(&now) {
            match holds_socket(pid, &listening) {
                Some(ino) => log::warn!(
                    "pid {pid} ({}) escaped a worker's or the hook's process group and was left to sup; it holds \
                     one of sup's listening sockets (inode {ino}), so that port keeps accepting connections it \
                     may never answer; it is stopped with sup",
                    cmdline(pid)
                ),
                None => log::info!(
                    "pid {pid} ({}) escaped a worker's or the hook's process group and was left to sup; it is \
                     stopped with sup",
                    cmdline(pid)
                ),
            }
        }
    }

    /// Carry out one of the core's actions; what it leads to queues as events.
    fn execute(&mut self, action: Action) {
        let config = self.config;
        let devnull = self.ctx.devnull.as_raw_fd();
        match action {
            Action::Spawn { slot, generation } => {
                let stdio = match self.res.output.pipes_for_worker() {
                    Ok(pipes) => pipes,
                    Err(e) => {
                        self.pending.push_back(Event::SpawnFailed {
                            slot,
                            generation,
                            reason: format!("cannot create the output pipes: {e}"),
                        });
                        return;
                    }
                };
                let fds = match self.ctx.slot_sockets.fds_for(slot, self.ctx.sockets) {
                    Ok(fds) => fds,
                    Err(e) => {
                        self.pending.push_back(Event::SpawnFailed {
                            slot,
                            generation,
                            reason: format!("cannot bind the slot's own socket: {}", crate::files::os_error(&e)),
                        });
                        return;
                    }
                };
                self.store_slot_sockets();
                let req = SpawnRequest {
                    slot,
                    generation,
                    sockets: self.ctx.sockets,
                    fds,
                    credentials: self.credentials,
                    sup_pid: self.sup_pid,
                    devnull,
                    notify_socket: &self.notify_socket,
                    einhorn_socket: self.einhorn_socket.as_deref(),
                    watchdog: config.watchdog,
                    stop_signal: config.stop_signal as i32,
                    ready_fd: None,
                    stdio: stdio.as_ref().map(output::WorkerPipes::write_ends),
                };
                let mut req = req;
                let ready_pipe = match config.ready {
                    crate::config::Readiness::Fd(n) => match crate::ready_fd::Pending::new() {
                        Ok(p) => {
                            req.ready_fd = Some((p.child_end.as_raw_fd(), n));
                            Some(p)
                        }
                        Err(e) => {
                            log::error!("cannot make a readiness pipe: {}", crate::files::os_error(&e));
                            None
                        }
                    },
                    _ => None,
                };
                // The release directory is looked up at every spawn; the
                // rest is reused while the generation and the release are
                // the same.
                let release = command::resolve_directory(config.directory.as_deref());
                let credentials = self.credentials;
                let outcome = self
                    .prepared
                    .get(generation, release.ok(), || {
                        command::prepare(&config.recipe(&config::run_as(credentials)))
                            .map_err(|errors| errors.join("; "))
                    })
                    .and_then(|p| spawn::start(&req, p).map_err(|e| crate::exit::chain(&e)));
                if let (Ok(pid), Some(pipe)) = (&outcome, ready_pipe) {
                    let registry = self.res.poll.registry();
                    if let Err(e) = self.ready_pipes.watch(registry, READY_PIPE, Pid::from_raw(*pid), pipe) {
                        log::error!(
                            "cannot watch worker {slot}'s readiness pipe: {}",
                            crate::files::os_error(&e)
                        );
                    }
                }
                if let (Ok(pid), Some(pipes)) = (&outcome, stdio) {
                    self.res
                        .output
                        .attach(pipes, slot, *pid, generation, self.res.poll.registry());
                }
                self.pending.push_back(match outcome {
                    Ok(pid) => Event::Spawned {
                        slot,
                        generation,
                        pid: Pid::from_raw(pid),
                    },
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
                    argv: vec!["sh".into(), "-c".into(), spawn::hook_script(command).into()],
                    env: vec![
                        ("SUP_RESTART".into(), kind.as_str().into()),
                        ("SUP_PID".into(), self.sup_pid.to_string()),
                    ],
                    config,
                    credentials: self.credentials,
                    devnull,
                };
                self.pending.push_back(helper_event(spawn::start_helper(&req)));
            }
            Action::RunPreflight => {
                self.pending
                    .push_back(helper_event(preflight(self.ctx.exe, config, devnull)));
            }
            // Carried out once every event already queued has reached the
            // core (a READY=1 read with it must not be lost), in `run`.
            Action::ReExec { generation, adopt } => self.exec_due = Some((generation, adopt)),
            Action::Signal { pid, signal } => send(pid, signal),
            Action::PinRecipe { generation, like } => {
                if !self.prepared.pin_like(generation, like) {
                    log::error!("gen {generation} should run gen {like}'s release, which is no longer pinned");
                }
            }
            Action::SignalGroup { pgid, signal } => {
                let _ = send_group(pgid, Some(signal));
            }
            Action::KillGroup { pgid } => {
                let _ = send_group(pgid, Some(Signal::SIGKILL));
            }
            Action::ProbeGroup { pgid } => {
                if send_group(pgid, None) == Err(Errno::ESRCH) {
                    self.pending.push_back(Event::GroupEmpty { pgid });
                }
            }
            Action::SignalStrays { signal } => {
                let listening = socket_inodes(self.ctx.sockets, &self.ctx.slot_sockets);
                for pid in self.strays() {
                    let holds = holds_socket(pid, &listening)
                        .map(|ino| format!(", holding one of sup's listening sockets (inode {ino})"))
                        .unwrap_or_default();
                    log::warn!(
                        "sending {} to pid {pid} ({}): it escaped a worker's or the hook's process group and was \
                         left to sup{holds}",
                        signal.as_str().trim_start_matches("SIG"),
                        cmdline(pid)
                    );
                    // A daemon that made its own group takes it with it.
                    if group_of(pid) == Some(Pgid::led_by(pid)) {
                        let _ = send_group(Pgid::led_by(pid), Some(signal));
                    } else {
                        send(pid, signal);
                    }
                }
            }
            Action::CloseListeners => {
                // systemd restarting the unit keeps the listeners in its fd
                // store for the next sup: nothing is kept out then.
                let restarting = self.fd_store && crate::upward::unit_restarting();
                if restarting {
                    log::info!(
                        "stopping: systemd is restarting this unit and keeps the listeners in its fd store, so \
                         connections keep queueing for the next sup; the workers take what is queued now"
                    );
                }
                if !restarting {
                    for fd in self.ctx.slot_sockets.extra_fds() {
                        if let Err(e) = crate::sockets::drop_all_packets(fd) {
                            log::warn!(
                                "a slot's socket: cannot keep new connections out ({})",
                                crate::files::os_error(&e)
                            );
                        }
                    }
                }
                for socket in self.ctx.sockets {
                    match socket.keep_out_new(restarting) {
                        Ok(KeptOut::Filtered) => log::info!(
                            "{}: new connections are dropped (clients retry); the queued ones stay",
                            socket.local
                        ),
                        Ok(KeptOut::Unlinked(path)) => {
                            log::info!(
                                "{}: removed {} so that nobody new connects",
                                socket.local,
                                path.display()
                            );
                        }
                        Ok(KeptOut::Untouched) => {}
                        Err(e) => log::warn!(
                            "{}: cannot keep new connections out ({}); they may be reset when sup exits",
                            socket.local,
                            crate::files::os_error(&e)
                        ),
                    }
                }
            }
            Action::ProbeQueues => {
                let slots = self
                    .ctx
                    .slot_sockets
                    .extra_fds()
                    .filter_map(crate::sockets::tcp_accept_queue);
                let connections = self
                    .ctx
                    .sockets
                    .iter()
                    .filter_map(BoundSocket::accept_queue)
                    .chain(slots)
                    .map(|(queued, _)| queued)
                    .sum();
                self.pending.push_back(Event::Queued { connections });
            }
            Action::ProbeSlotQueues { pids } => {
                let depths = self.ctx.slot_sockets.depths();
                let held = pids
                    .into_iter()
                    .filter_map(|pid| Some((pid, procfs::socket_inodes(pid).ok()?)))
                    .collect();
                self.pending.push_back(Event::SlotQueues { depths, held });
            }
            Action::Steer { slots } => self.ctx.slot_sockets.steer(&slots),
            Action::SampleMemory => {
                let groups: Vec<Pgid> = self.core.workers().iter().map(|w| Pgid::led_by(w.pid)).collect();
                let samples = procfs::pss_by_group(&groups)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(group, bytes)| (group.leader(), bytes))
                    .collect();
                self.pending.push_back(Event::Memory { samples });
            }
            Action::ProbeStrays => {
                if procfs::own_children().unwrap_or_default().is_empty() {
                    self.pending.push_back(Event::StraysGone);
                }
            }
            Action::ReopenLogs => {
                if reopen_log(config.log_file.as_deref()) {
                    self.res.output.reopen(self.res.poll.registry());
                }
            }
            Action::Upward(what) => {
                if let Some(n) = &self.res.upward {
                    n.send(&what);
                }
            }
            Action::Reply { conn, intent, reply } => {
                if let Some(server) = &mut self.res.control {
                    let answer = Answer::from_reply(intent, reply);
                    server.respond(conn, http::response(answer.status(500), &answer.to_json(), &[]));
                }
            }
            Action::Log { level, message } => log::log!(level, "{message}"),
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    /// Under systemd's fd store: hand it the per-slot sockets bound since the
    /// last look (`NAME.slotK`), and take out the ones closed, so that a
    /// crash or a restart of sup keeps every slot's queue, not only slot 0's.
    fn store_slot_sockets(&mut self) {
        let Some(n) = self.res.upward.as_ref().filter(|_| self.fd_store) else {
            return;
        };
        let now = self.ctx.slot_sockets.store_names();
        for (name, fd) in &now {
            if self.stored_slots.contains(name) {
                continue;
            }
            match n.store(name, *fd) {
                Ok(()) => self.stored_slots.push(name.clone()),
                Err(e) => log::warn!("fd store: cannot hand `{name}` over: {}", crate::files::os_error(&e)),
            }
        }
        self.stored_slots.retain(|name| {
            let open = now.iter().any(|(n, _)| n == name);
            if !open && let Err(e) = n.unstore(name) {
                log::warn!("fd store: cannot remove `{name}`: {}", crate::files::os_error(&e));
            }
            open
        });
    }

    /// Hand everything over and re-execute sup; returns only on failure.
    fn reexec(&mut self, generation: u64, adopt: bool) -> String {
        self.quiesce_control();
        let Context {
            sockets, exe, origin, ..
        } = &self.ctx;
        let snapshot = self.core.snapshot(Instant::now(), wall_ms(None));
        let mut handoff = Handoff::new(exe.to_string(), origin.to_path_buf(), snapshot);
        handoff.ready_pipes = self.ready_pipes.handed();
        handoff.pins = self.prepared.pins();
        handoff.sockets = sockets.iter().map(BoundSocket::handed).collect();
        handoff.slot_sockets = self.ctx.slot_sockets.handed();
        self.res.own.hand_over(&mut handoff);
        if let (Some(server), Some(configured)) = (&self.res.control, &self.config.control) {
            handoff.control = Some(server.handed(configured));
        }
        // The workers' lines: what their pipes hold now is read and written
        // as far as sup's output takes it; the pipes, the partial lines and
        // what is still queued cross the exec (the spill file is closed here
        // if the exec fails).
        let registry = self.res.poll.registry();
        self.res.output.drain_all(registry);
        self.res.output.flush(registry);
        let _spill = match self.res.output.hand_over() {
            Ok(Some((handed, spill))) => {
                handoff.worker_output = Some(handed);
                spill
            }
            Ok(None) => None,
            Err(e) => return format!("cannot hand the workers' output over: {e}"),
        };
        let fds = handoff.fds();
        if adopt {
            log::info!(
                "re-executing {exe}, handing over {} worker(s)",
                handoff.core.workers.len()
            );
        } else {
            log::info!("hot restart: re-executing {exe} to start gen {generation}");
        }
        hot_restart::reexec(&handoff, &fds, self.config.directory.as_deref())
    }
}

/// `GET /health`: the core's word, 200 or 503, with what it counted.
fn health_response(core: &Core) -> Vec<u8> {
    let health = core.health();
    let status = if health.serving() { 200 } else { 503 };
    http::response(status, &serde_json::to_string(&health).unwrap_or_default(), &[])
}

/// Under systemd: hand every listener (by its bind's name) and the control
/// socket to the fd store, so that a `systemctl restart` or a crash of sup
/// refuses nothing; names passed back that nothing took are removed from it.
fn hand_to_fd_store(n: &Notifier, ctx: &Context<'_>, control: Option<&ControlServer>) {
    for name in &ctx.unstore {
        match n.unstore(name) {
            Ok(()) => log::info!("fd store: removed `{name}`, which no bind takes any more"),
            Err(e) => log::warn!("fd store: cannot remove `{name}`: {}", crate::files::os_error(&e)),
        }
    }
    let mut stored = Vec::new();
    let control = control.map(|c| (crate::upward::CONTROL_FDNAME, c.raw_fd()));
    for (name, fd) in ctx
        .sockets
        .iter()
        .map(|s| (s.spec.name.as_str(), s.raw_fd()))
        .chain(control)
    {
        match n.store(name, fd) {
            Ok(()) => stored.push(name),
            Err(e) => log::warn!(
                "fd store: cannot hand `{name}` to the service manager: {}",
                crate::files::os_error(&e)
            ),
        }
    }
    if !stored.is_empty() {
        log::info!(
            "fd store: handed {} to the service manager, which keeps them across a restart (FileDescriptorStoreMax= must allow {})",
            stored.join(", "),
            stored.len()
        );
    }
}

/// HUP: reopen `--log-file` onto sup's stdout and stderr (for logrotate).
/// Workers started from now on inherit the new file (with
/// `--worker-output`, the lines of running ones follow too). Whether it was
/// reopened.
fn reopen_log(path: Option<&Path>) -> bool {
    let Some(path) = path else {
        log::info!("HUP: no --log-file is in use, nothing to reopen");
        return false;
    };
    match crate::logging::redirect_to(path) {
        Ok(()) => {
            log::info!("reopened the log file {}", path.display());
            true
        }
        Err(e) => {
            log::error!(
                "cannot reopen the log file {}: {e}; still writing to the old one",
                path.display()
            );
            false
        }
    }
}

/// What the loop runs with besides the configuration.
pub struct Context<'a> {
    pub sockets: &'a [BoundSocket],
    /// `--balance reuseport`: the binds' per-slot sockets.
    pub slot_sockets: crate::slot_sockets::SlotSockets,
    pub devnull: &'a OwnedFd,
    /// How sup was started, re-resolved at each hot restart.
    pub exe: &'a str,
    /// The directory the first image started in (see `Config::anchor_paths`).
    pub origin: &'a Path,
    /// After a hot restart: the old image's core, to carry on from.
    pub resume: Option<crate::core::Snapshot>,
    /// Names systemd passed back that no bind took: out of its fd store.
    pub unstore: Vec<String>,
    /// After a hot restart: the readiness pipes of workers still booting.
    pub ready_pipes: Vec<(std::os::fd::RawFd, Pid)>,
    /// After a hot restart: the preparations the old image pinned.
    pub pins: crate::command::Pins,
}

/// Whether `pid` is a worker this sup may take over (see
/// [`children::adoptable`]).
fn our_worker(pid: Pid) -> Result<(), NotAdoptable> {
    children::adoptable(&procfs::stat(pid)?, Pid::this())
}

fn helper_event<E: std::error::Error>(result: Result<i32, E>) -> Event {
    match result {
        Ok(pid) => Event::HelperSpawned {
            pid: Pid::from_raw(pid),
        },
        Err(e) => Event::HelperFailed {
            reason: crate::exit::chain(&e),
        },
    }
}

/// Why the preflight could not start.
#[derive(Debug, thiserror::Error)]
enum PreflightError {
    #[error(transparent)]
    Exe(#[from] hot_restart::ExecError),
    #[error(transparent)]
    Spawn(#[from] spawn::SpawnError),
}

/// Start the new sup (the program at sup's path now) with `--check` and
/// sup's own arguments, in the resolved directory, as sup's user.
fn preflight(exe: &str, config: &Config, devnull: std::os::fd::RawFd) -> Result<i32, PreflightError> {
    let program = hot_restart::resolve_exe(exe)?;
    log::info!("checking the new sup: {} --check", program.display());
    let mut argv = vec![program.clone().into_os_string(), "--check".into()];
    argv.extend(hot_restart::own_args());
    Ok(spawn::start_helper(&HelperRequest {
        program: &program,
        argv,
        env: Vec::new(),
        config,
        credentials: None,
        devnull,
    })?)
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
        let pid = Pid::from_raw(pid.as_raw());
        let group_alive = send_group(Pgid::led_by(pid), None) != Err(Errno::ESRCH);
        pending.push_back(Event::Exited {
            pid,
            status,
            group_alive,
        });
    }
}

/// A process's group, if it can be read.
fn group_of(pid: Pid) -> Option<Pgid> {
    let group = nix::unistd::getpgid(Some(NixPid::from_raw(pid.raw()))).ok()?;
    Some(Pgid::from_raw(group.as_raw()))
}

/// The inodes of sup's listening sockets.
fn socket_inodes(sockets: &[BoundSocket], slots: &crate::slot_sockets::SlotSockets) -> Vec<u64> {
    let fds = sockets.iter().map(BoundSocket::raw_fd).chain(slots.extra_fds());
    fds.filter_map(|fd| {
        // SAFETY: every fd here is one of sup's own listening sockets,
        // open for the whole call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
    })
    .collect()
}

/// The inode of one of `inodes` that `pid` holds an fd on, if any.
fn holds_socket(pid: Pid, inodes: &[u64]) -> Option<u64> {
    procfs::socket_inodes(pid)
        .ok()?
        .into_iter()
        .find(|ino| inodes.contains(ino))
}

/// A process's command line, for the log.
fn cmdline(pid: Pid) -> String {
    let args: Vec<String> = procfs::cmdline(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.is_empty())
        .collect();
    if args.is_empty() {
        "?".to_string()
    } else {
        args.join(" ")
    }
}

/// Send a signal to one process; one that is already gone is not an error.
fn send(pid: Pid, signal: Signal) {
    match kill(NixPid::from_raw(pid.raw()), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!("cannot send {signal} to pid {pid}: {e}"),
    }
}

/// Send a signal to a whole process group, or with `None` only ask whether
/// it has members (ESRCH: none). The only place a kill goes to `-pgid`.
fn send_group(pgid: Pgid, signal: Option<Signal>) -> Result<(), Errno> {
    let result = kill(NixPid::from_raw(-pgid.raw()), signal);
    if let (Some(sig), Err(e)) = (signal, result)
        && e != Errno::ESRCH
    {
        log::warn!("cannot send {sig} to process group {pgid}: {e}");
    }
    result
}

//! sup: a language-agnostic supervisor for network servers.
//!
//! sup binds the listening sockets once, starts N copies of any command that
//! inherit them, and keeps them running. The decisions live in [`core`] (a
//! pure state machine); the I/O lives in [`event_loop`], [`spawn`] and
//! [`sockets`]. [`run`] wires them together for `main`.

pub mod bind;
pub mod children;
pub mod cli;
pub mod command;
pub mod config;
pub mod config_file;
pub mod control;
pub mod core;
pub mod einhorn;
pub mod envfile;
pub mod event_loop;
pub mod exit;
pub mod files;
pub mod handoff;
pub mod hot_restart;
pub mod logging;
pub mod message;
pub mod notify;
pub mod output;
pub mod own_sockets;
pub mod pid;
pub mod procfs;
pub mod ready_fd;
pub mod runtime_dir;
pub mod signals;
pub mod slot_sockets;
pub mod slots;
pub mod sockets;
pub mod spawn;
pub mod upward;
pub mod worker;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use clap::Parser;

pub use exit::{EXIT_RUNTIME, EXIT_USAGE, chain, say};

/// Why sup could not start. Every variant happens before any worker
/// exists (rule 8): sup says why and exits.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot set up file descriptors")]
    Fds(#[source] std::io::Error),
    /// Usage and configuration problems, every one of them (exit 2).
    #[error("{} configuration problem(s)", .0.len())]
    Config(Vec<config::ConfigError>),
    #[error("cannot open --log-file {}", .0.display())]
    LogFile(PathBuf, #[source] std::io::Error),
    #[error("cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error(transparent)]
    Loop(#[from] event_loop::LoopError),
    #[error("cannot unblock signals")]
    Unblock(#[source] nix::Error),
    #[error(transparent)]
    Sockets(#[from] sockets::SocketError),
    #[error("cannot write pidfile {}", .0.display())]
    Pidfile(PathBuf, #[source] std::io::Error),
    #[error("pidfile {} belongs to a running sup (pid {pid}); stop it first, or give this one another --pidfile", path.display())]
    PidfileTaken { path: PathBuf, pid: pid::Pid },
}

impl StartupError {
    fn status(&self) -> u8 {
        match self {
            StartupError::Config(_) => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        }
    }

    /// One line per problem on stderr.
    fn report(&self) {
        match self {
            StartupError::Config(errors) => {
                for e in errors {
                    say(&format!("error: {e}"));
                }
            }
            other => say(&format!("error: {}", chain(other))),
        }
    }
}

/// Parse, validate, bind, supervise. Returns the process exit status.
pub fn run() -> u8 {
    match start() {
        Ok(status) => status,
        Err(e) => {
            e.report();
            e.status()
        }
    }
}

fn start() -> Result<u8, StartupError> {
    // A hot restart hands its sockets over as fds named in SUP_HANDOFF:
    // those survive the sweep of inherited fds, nothing else does.
    let mut handoff = match handoff::Handoff::from_env() {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            say(&format!(
                "error: ignoring a {} this version cannot read: {e}",
                handoff::VAR
            ));
            None
        }
        None => None,
    };
    // Without a handoff, systemd may have passed sockets (socket activation).
    let activation = if handoff.is_none() {
        sockets::activation_from_env()
    } else {
        Vec::new()
    };
    let mut keep = handoff.as_ref().map(handoff::Handoff::fds).unwrap_or_default();
    keep.extend(activation.iter().map(|(fd, _)| *fd));
    sanitize_fds(&keep).map_err(StartupError::Fds)?;
    let mut cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return Ok(clap_error(e)),
    };
    match cli.sub.take() {
        Some(cli::Sub::Ctl(args)) => return Ok(control::client::run(args)),
        Some(cli::Sub::Completions { shell }) => return Ok(completions(shell)),
        None => {}
    }
    // Every problem is reported, the flags' and the system's, then exit 2.
    let (mut config, mut errors) = config::Config::parse(cli);
    let origin = match &handoff {
        Some(h) => h.origin.clone(),
        None => std::env::current_dir().unwrap_or_default(),
    };
    config.anchor_paths(&origin);
    logging::init(config.verbosity);
    let credentials = config.check_startup().unwrap_or_else(|more| {
        // The flags' own checks and a spawn's overlap ({fd:NAME}): once each.
        for e in more {
            if !errors.iter().any(|seen| seen.to_string() == e.to_string()) {
                errors.push(e);
            }
        }
        None
    });
    if !errors.is_empty() {
        return Err(StartupError::Config(errors));
    }
    if config.check {
        let _ = writeln!(
            std::io::stdout().lock(),
            "sup: ok: {} worker(s), {} socket(s), command {}",
            config.workers,
            config.binds.len(),
            Path::new(&config.command[0]).display()
        );
        return Ok(0);
    }
    if let Some(path) = &config.log_file {
        logging::redirect_to(path).map_err(|e| StartupError::LogFile(path.clone(), e))?;
    }
    let devnull = open_devnull().map_err(StartupError::DevNull)?;
    // From the moment the pidfile names sup, a signal sent to that pid must
    // reach the loop, not kill sup by its default action before the
    // handlers exist: held (blocked) until `unblock_handled` below.
    signals::block_handled_until_unblocked().map_err(StartupError::Unblock)?;
    // Claimed before anything is bound: a second sup on the same pidfile
    // stops here, and an unwritable one is found before a socket exists.
    let _pidfile = match &config.pidfile {
        Some(path) => Some(PidFile::claim(path)?),
        None => None,
    };
    // What systemd passed: sockets of a .socket unit, or sup's own from its
    // fd store (a restart, a crash): the control socket goes to the control
    // server, the rest to the binds.
    let mut activated = sockets::take_activated(activation);
    let stored_control = activated
        .iter()
        .position(|a| a.name.as_deref() == Some(upward::CONTROL_FDNAME))
        .map(|i| activated.remove(i));
    // Handlers first: a TERM during startup must not kill sup with its
    // sockets half made.
    let event_loop = event_loop::EventLoop::new(&config, credentials.as_ref(), handoff.as_ref(), stored_control)?;
    // Handlers are in place: whatever arrived blocked across a hot
    // restart's exec is delivered now, into the loop.
    signals::unblock_handled().map_err(StartupError::Unblock)?;
    // Names systemd passed that no bind took: out of its fd store.
    let mut unstore = Vec::new();
    // Per-slot sockets (`--balance reuseport`) systemd kept, by bind.
    let (stored_slots, gaps) = slot_sockets::from_store(&mut activated);
    unstore.extend(gaps);
    let sockets = match &handoff {
        // After a hot restart a bind that cannot be made is a runtime error:
        // the sockets that were handed over keep serving.
        Some(h) => {
            let (sockets, errors) = sockets::adopt_and_bind(&config.binds, h.sockets.clone());
            for e in errors {
                log::error!("hot restart: {}; serving without it", chain(&e));
            }
            sockets
        }
        None if !activated.is_empty() => {
            let (sockets, not_taken) = sockets::adopt_activated(&config.binds, activated)?;
            unstore = not_taken;
            sockets
        }
        None => sockets::bind_all(&config.binds)?,
    };
    for (i, s) in sockets.iter().enumerate() {
        let balance = match (s.spec.balance, config.balance) {
            (Some(bind::Balance::Reuseport), _) => ", one socket per worker slot (--balance reuseport)",
            (_, bind::Balance::Reuseport) => ", shared (--balance reuseport applies to TCP binds only)",
            _ => "",
        };
        log::info!(
            "listening on {} (fd {} in workers, name {}{balance})",
            s.local,
            3 + i,
            s.spec.name
        );
    }
    let mut handed_slots = handoff
        .as_mut()
        .map(|h| std::mem::take(&mut h.slot_sockets))
        .unwrap_or_default();
    let from_store: Vec<String> = stored_slots
        .iter()
        .flat_map(|h| (1..=h.fds.len()).map(|k| slot_sockets::store_name(&h.name, k)))
        .collect();
    handed_slots.extend(stored_slots);
    let slot_sockets = slot_sockets::SlotSockets::new(&sockets, handed_slots, config.workers);
    // What systemd kept of per-slot sockets that no bind took any more.
    let kept: Vec<String> = slot_sockets.store_names().into_iter().map(|(n, _)| n).collect();
    unstore.extend(from_store.into_iter().filter(|n| !kept.contains(n)));
    become_subreaper();
    log::info!(
        "sup {} (pid {}) supervising {} worker(s) of {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.workers,
        config
            .command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let exe = match &handoff {
        Some(h) => h.exe.clone(),
        None => {
            let argv0 = std::env::args_os().next().unwrap_or_else(|| "sup".into());
            let cwd = std::env::current_dir().unwrap_or_default();
            hot_restart::exe_spec(&argv0, &cwd)
        }
    };
    // The core the old image handed over: restored in the loop.
    let mut ready_pipes = Vec::new();
    let mut pins = command::Pins::default();
    let resume = handoff.map(|h| {
        log::info!(
            "this is the new sup: adopting {} socket(s) and {} worker(s)",
            h.sockets.len(),
            h.core.workers.len()
        );
        ready_pipes = h.ready_pipes;
        pins = h.pins;
        h.core
    });
    let ctx = event_loop::Context {
        ready_pipes,
        pins,
        unstore,
        sockets: &sockets,
        slot_sockets,
        devnull: &devnull,
        exe: &exe,
        origin: &origin,
        resume,
    };
    // From here on a failure is the loop's, after workers existed: logged.
    let status = match event_loop.run(&config, credentials.as_ref(), ctx) {
        Ok(code) => code as u8,
        Err(e) => {
            log::error!("{}", chain(&e));
            EXIT_RUNTIME
        }
    };
    // Under systemd, the listeners live on in its fd store for the next
    // sup: their files stay with them (a stale one is replaced at start).
    if !upward::fd_store_in_use() {
        sockets::remove_files(&sockets);
    }
    log::info!("sup stopped");
    Ok(status)
}

/// A clap error as one line (help and version print as usual).
fn clap_error(e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    let rendered = e.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let tip = lines
        .find(|l| l.starts_with("tip:"))
        .map(|t| format!("; {t}"))
        .unwrap_or_default();
    say(&format!("error: {first}{tip} (see `sup --help`)"));
    EXIT_USAGE
}

/// Make sure fds 0-2 are open (so nothing sup opens lands there and is
/// then handed to a worker as its stdio), and close every other fd sup
/// inherited: a worker must see nothing of the shell that started sup.
fn sanitize_fds(keep: &[i32]) -> std::io::Result<()> {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: open with a static NUL-terminated path; the lowest free
            // fd is `fd`, which is exactly the gap being filled. Deliberately
            // not CLOEXEC: it stands in for stdio.
            let got = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
            if got < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    close_inherited_fds(keep)
}

/// Close every fd above 2 except `keep`.
fn close_inherited_fds(keep: &[i32]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut keep: Vec<u32> = keep
            .iter()
            .filter_map(|k| u32::try_from(*k).ok())
            .filter(|k| *k > 2)
            .collect();
        keep.sort_unstable();
        let mut ranges = Vec::new();
        let mut from = 3u32;
        for k in keep {
            if k > from {
                ranges.push((from, k - 1));
            }
            from = from.max(k + 1);
        }
        ranges.push((from, u32::MAX));
        // SAFETY: closing fds that nothing in this process owns yet (this
        // runs first thing in main, before any fd is opened).
        let closed = ranges
            .iter()
            .all(|(lo, hi)| unsafe { libc::syscall(libc::SYS_close_range, *lo, *hi, 0u32) } == 0);
        if closed {
            return Ok(());
        }
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .or_else(|_| std::fs::read_dir("/dev/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory fd used for the listing is already
        // closed, and closing a stale number is harmless (EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn open_devnull() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new().read(true).open("/dev/null")?.into())
}

/// sup adopts orphaned grandchildren so that it reaps them (as PID 1 it
/// would anyway); a worker's leftovers never become someone else's zombies.
fn become_subreaper() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with an integer argument; no memory is passed.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            log::debug!("cannot become a child subreaper: {}", std::io::Error::last_os_error());
        }
    }
}

/// sup's pidfile, held from before anything is bound until sup stops (it
/// stays across a hot restart: the pid does not change, and an `execve` runs
/// no destructor). Dropping it removes the file if it still holds our pid.
struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Take `path`: refused if it names another sup that is running; a
    /// stale file (its process gone, or a pid now reused by something that
    /// is not sup) is replaced.
    fn claim(path: &Path) -> Result<PidFile, StartupError> {
        let me = pid::Pid::this();
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse::<pid::Pid>()
            && pid != me
            && pid.raw() > 0
            && is_running_sup(pid)
        {
            return Err(StartupError::PidfileTaken {
                path: path.to_path_buf(),
                pid,
            });
        }
        write_pidfile(path).map_err(|e| StartupError::Pidfile(path.to_path_buf(), e))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        remove_pidfile(&self.path);
    }
}

/// Whether `pid` is alive and is a sup: the same program as this one, or a
/// process named `sup`.
fn is_running_sup(pid: pid::Pid) -> bool {
    use nix::sys::signal::kill;
    match kill(nix::unistd::Pid::from_raw(pid.raw()), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    let same_exe = match (std::fs::read_link(format!("/proc/{pid}/exe")), std::env::current_exe()) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    };
    let named_sup = std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sup");
    same_exe || named_sup
}

fn write_pidfile(path: &Path) -> std::io::Result<()> {
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Remove the pidfile only if it still holds our pid.
fn remove_pidfile(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path)
        && text.trim() == std::process::id().to_string()
    {
        let _ = std::fs::remove_file(path);
    }
}

/// `sup completions SHELL`: the completion script, generated from the same
/// clap definitions as `--help` and the man pages. Built in memory first, so
/// that a closed stdout is an exit status, not a panic.
fn completions(shell: clap_complete::Shell) -> u8 {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli::Cli::command(), "sup", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

//! Flags and `SUP_*` environment values → one validated [`Config`].
//!
//! Defaults live here and only here. Parsing is pure; the startup checks in
//! [`Config::check_startup`] look at the file system (the directory, the
//! command, the env file, user and group names) but never bind, spawn or
//! change global state. Every problem found is reported, not just the first.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::bind::BindSpec;
use crate::cli::Cli;
use crate::command;
use crate::config_file::FileConfig;

/// Credentials workers run with (`--user` / `--group`), resolved at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's, from the group database).
    pub groups: Vec<u32>,
    pub description: String,
}

/// When a freshly started worker counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It sends `READY=1` on `NOTIFY_SOCKET` (or an Einhorn ack).
    Notify,
    /// It has stayed up this long (or sent `READY=1` sooner).
    Delay(Duration),
    /// It writes a newline to this fd (the s6 `notification-fd`
    /// convention); closing it without one is a failed boot.
    Fd(i32),
}

/// Where the notify and Einhorn sockets live (`--notify-socket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketPlace {
    /// Files in a private directory: every sd_notify client can reach a path.
    Path,
    /// Linux abstract addresses (`@name`): no file at all, for read-only file
    /// systems; some clients cannot reach them (Ruby's sd_notify gem, Rust's
    /// `sd-notify` crate).
    Abstract,
}

/// Everything sup runs with, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub binds: Vec<BindSpec>,
    pub workers: usize,
    pub command: Vec<OsString>,
    pub directory: Option<PathBuf>,
    pub stop_signal: Signal,
    /// `--dump-signal`, `--dump-grace`.
    pub dump_signal: Option<Signal>,
    pub dump_grace: Duration,
    pub graceful_timeout: Duration,
    /// `--stop-delay`: at a stop, how long sup reports not ready while serving.
    pub stop_delay: Duration,
    pub pidfile: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub env_file: Option<PathBuf>,
    pub ready: Readiness,
    pub boot_timeout: Duration,
    pub watchdog: Option<Duration>,
    pub max_surge: usize,
    /// `--max-memory`, in bytes.
    pub max_memory: Option<u64>,
    pub max_age: Option<Duration>,
    pub recycle_check: Duration,
    pub on_restart: Option<String>,
    pub hook_timeout: Duration,
    pub einhorn_ack: bool,
    pub notify_socket: SocketPlace,
    /// `--hot-restart overlap`: hot restarts keep the workers serving.
    pub hot_overlap: bool,
    /// `--balance`, as given (each TCP bind's own is in its spec).
    pub balance: crate::bind::Balance,
    /// `--stall-timeout`: with per-slot sockets, how long a worker may
    /// leave its own queue unserved before it is replaced.
    pub stall_timeout: Option<Duration>,
    /// `-v` count minus `-q` count; `None` when neither was given.
    pub verbosity: Option<i8>,
    /// `--check`: validate and exit.
    pub check: bool,
    pub control: Option<crate::bind::ControlAddr>,
    pub control_token: Option<String>,
    pub log_file: Option<PathBuf>,
    /// `--worker-output`: who writes the workers' stdout and stderr.
    pub worker_output: WorkerOutput,
    /// `--worker-output-timestamps`.
    pub worker_output_timestamps: bool,
}

/// Who writes the workers' output (`--worker-output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerOutput {
    /// The workers inherit sup's stdout and stderr (sup's behaviour before the flag).
    Inherit,
    /// sup writes each line whole, as it was written.
    Plain,
    /// sup writes each line after `worker 3 (pid 4121, gen 7) stdout: `.
    Prefix,
    /// sup writes each line as a JSON object.
    Json,
}

/// A usage or configuration error: reported as one line, exit status 2.
/// They are shown one per line with `{}` (a list of problems, not a chain),
/// so a variant that wraps another error puts its text in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Bind(#[from] crate::bind::BindParseError),
    #[error("invalid --workers `{0}`: expected a whole number from 1 to 10000")]
    Workers(String),
    #[error("invalid --max-surge `{0}`: expected a whole number from 1 to 10000")]
    MaxSurge(String),
    #[error("invalid --max-memory `{0}`: expected a size such as 512M or 2G (at least 1M)")]
    MaxMemory(String),
    #[error("invalid --ready `{0}`: expected notify, delay:DURATION (e.g. delay:2s) or fd:N (e.g. fd:5)")]
    Ready(String),
    #[error("--ready fd:{fd} would be one of the listeners' fds (3 to {last}): use fd:{free} or higher")]
    ReadyFdTaken { fd: i32, last: i32, free: i32 },
    #[error("invalid --notify-socket `{0}`: expected path or abstract")]
    NotifySocket(String),
    #[error("invalid --balance `{0}`: expected shared or reuseport")]
    Balance(String),
    #[error("--stall-timeout needs --balance reuseport on a TCP bind: it watches each slot's own queue")]
    StallNeedsReuseport,
    #[error("invalid --hot-restart `{0}`: expected stop or overlap")]
    HotRestart(String),
    #[error("--on-restart is empty")]
    EmptyHook,
    #[error("invalid --{flag} `{value}`: {why}")]
    Duration {
        flag: &'static str,
        value: String,
        why: DurationError,
    },
    #[error("invalid --stop-signal `{0}`: not a signal name or number (e.g. TERM, SIGINT, QUIT, 15)")]
    Signal(String),
    #[error("invalid --dump-signal `{0}`: not a signal name or number (e.g. ABRT, QUIT, USR1)")]
    DumpSignal(String),
    #[error("no command given: put the command after `--`, e.g. sup --bind :3000 -- ./app")]
    NoCommand,
    #[error("socket name `{0}` is used by more than one --bind")]
    DuplicateName(String),
    #[error("--bind `{0}` is given twice")]
    DuplicateBind(String),
    #[error(transparent)]
    Placeholder(#[from] command::PlaceholderError),
    /// A check a spawn would make failed (directory, env file, program).
    #[error("{0}")]
    Unrunnable(String),
    #[error("{}", crate::exit::chain(.0))]
    Credentials(CredentialsError),
    #[error("--config {}: {why}", path.display())]
    File {
        path: PathBuf,
        why: crate::config_file::FileError,
    },
    #[error(transparent)]
    Control(#[from] crate::bind::ControlAddrError),
    #[error("--control on TCP needs --control-token: anyone who can reach the port could stop sup")]
    ControlToken,
    #[error("invalid --worker-output `{0}`: expected inherit, plain, prefix or json")]
    WorkerOutput(String),
    #[error(
        "--worker-output-timestamps needs --worker-output plain, prefix or json: with inherit sup does not see the lines"
    )]
    TimestampsNeedOutput,
}

const MAX_WORKERS: usize = 10_000;

impl Config {
    /// Build a config from parsed flags (clap has already merged `SUP_*`
    /// environment values under the flags).
    pub fn from_cli(cli: Cli) -> Result<Config, Vec<ConfigError>> {
        let (config, errors) = Config::parse(cli);
        if errors.is_empty() { Ok(config) } else { Err(errors) }
    }

    /// Like [`Config::from_cli`], but always returns a config (with
    /// defaults where a value was invalid) together with every problem, so
    /// that the system checks can run and report theirs too.
    pub fn parse(mut cli: Cli) -> (Config, Vec<ConfigError>) {
        let mut errors = Vec::new();
        if let Some(path) = cli.config.clone() {
            match crate::config_file::read(&path) {
                Ok(file) => merge_file(&mut cli, file),
                Err(why) => errors.push(ConfigError::File { path, why }),
            }
        }
        let mut binds = Vec::new();
        for raw in &cli.bind {
            match BindSpec::parse(raw) {
                Ok(spec) => binds.push(spec),
                Err(e) => errors.push(e.into()),
            }
        }
        let balance = match cli.balance.as_deref() {
            None => crate::bind::Balance::Shared,
            Some(s) => crate::bind::Balance::parse(s).unwrap_or_else(|| {
                errors.push(ConfigError::Balance(s.to_string()));
                crate::bind::Balance::Shared
            }),
        };
        // `--balance reuseport` applies to the TCP binds: unix and UDP
        // sockets stay shared (said when sup starts).
        for spec in &mut binds {
            let tcp = matches!(spec.addr, crate::bind::BindAddr::Tcp(_));
            let wanted = spec.balance.unwrap_or(balance);
            spec.balance = Some(if tcp { wanted } else { crate::bind::Balance::Shared });
        }
        for (i, spec) in binds.iter().enumerate() {
            if binds[..i].iter().any(|b| b.addr == spec.addr) {
                errors.push(ConfigError::DuplicateBind(spec.raw.clone()));
            } else if binds[..i].iter().any(|b| b.name == spec.name) {
                errors.push(ConfigError::DuplicateName(spec.name.clone()));
            }
        }
        let workers = match cli.workers.as_deref() {
            None => 1,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
                _ => {
                    errors.push(ConfigError::Workers(s.to_string()));
                    1
                }
            },
        };
        let stop_signal = match cli.stop_signal.as_deref() {
            None => Signal::SIGTERM,
            Some(s) => parse_signal(s).unwrap_or_else(|| {
                errors.push(ConfigError::Signal(s.to_string()));
                Signal::SIGTERM
            }),
        };
        let dump_signal = cli.dump_signal.as_deref().and_then(|s| {
            let parsed = parse_signal(s);
            if parsed.is_none() {
                errors.push(ConfigError::DumpSignal(s.to_string()));
            }
            parsed
        });
        let graceful_timeout = match cli.graceful_timeout.as_deref() {
            None => Duration::from_secs(30),
            Some(s) => parse_duration(s).unwrap_or_else(|why| {
                errors.push(ConfigError::Duration {
                    flag: "graceful-timeout",
                    value: s.to_string(),
                    why,
                });
                Duration::from_secs(30)
            }),
        };
        let mut duration = |flag: &'static str, value: Option<&str>, default: Duration| match value {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|why| {
                errors.push(ConfigError::Duration {
                    flag,
                    value: s.to_string(),
                    why,
                });
                default
            }),
        };
        let boot_timeout = duration("boot-timeout", cli.boot_timeout.as_deref(), Duration::from_secs(60));
        let stop_delay = duration("stop-delay", cli.stop_delay.as_deref(), Duration::ZERO);
        let stall_timeout = cli
            .stall_timeout
            .as_deref()
            .map(|d| duration("stall-timeout", Some(d), Duration::from_secs(10)))
            .filter(|d| !d.is_zero());
        let dump_grace = duration("dump-grace", cli.dump_grace.as_deref(), Duration::from_secs(5));
        let hook_timeout = duration("hook-timeout", cli.hook_timeout.as_deref(), Duration::from_secs(60));
        let watchdog = cli
            .watchdog
            .as_deref()
            .map(|w| duration("watchdog", Some(w), Duration::from_secs(30)));
        let max_age = cli
            .max_age
            .as_deref()
            .map(|a| duration("max-age", Some(a), Duration::from_secs(3600)));
        let recycle_check = duration("recycle-check", cli.recycle_check.as_deref(), Duration::from_secs(5));
        let ready = match cli.ready.as_deref() {
            None => Readiness::Delay(Duration::from_secs(1)),
            Some("notify") => Readiness::Notify,
            Some(s) if s.starts_with("fd:") => match s["fd:".len()..].parse::<i32>() {
                Ok(fd) if (3..=1023).contains(&fd) => {
                    // The listeners are 3.., in --bind order.
                    let free = 3 + binds.len() as i32;
                    if fd < free {
                        errors.push(ConfigError::ReadyFdTaken {
                            fd,
                            last: free - 1,
                            free,
                        });
                    }
                    Readiness::Fd(fd)
                }
                _ => {
                    errors.push(ConfigError::Ready(s.to_string()));
                    Readiness::Notify
                }
            },
            Some(s) => match s.strip_prefix("delay:").map(parse_duration) {
                Some(Ok(d)) => Readiness::Delay(d),
                _ => {
                    errors.push(ConfigError::Ready(s.to_string()));
                    Readiness::Notify
                }
            },
        };
        let max_surge = match cli.max_surge.as_deref() {
            None => 1,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_WORKERS).contains(&n) => n,
                _ => {
                    errors.push(ConfigError::MaxSurge(s.to_string()));
                    1
                }
            },
        };
        let max_memory = cli.max_memory.as_deref().and_then(|s| match parse_size(s) {
            Some(n) if n >= 1 << 20 => Some(n),
            _ => {
                errors.push(ConfigError::MaxMemory(s.to_string()));
                None
            }
        });
        let notify_socket = match cli.notify_socket.as_deref() {
            None | Some("path") => SocketPlace::Path,
            Some("abstract") => SocketPlace::Abstract,
            Some(s) => {
                errors.push(ConfigError::NotifySocket(s.to_string()));
                SocketPlace::Path
            }
        };
        let reuseport = binds.iter().any(|b| b.balance == Some(crate::bind::Balance::Reuseport));
        if stall_timeout.is_some() && !reuseport {
            errors.push(ConfigError::StallNeedsReuseport);
        }
        let hot_overlap = match cli.hot_restart.as_deref() {
            None | Some("stop") => false,
            Some("overlap") => true,
            Some(s) => {
                errors.push(ConfigError::HotRestart(s.to_string()));
                false
            }
        };
        if cli.on_restart.as_deref().is_some_and(|h| h.trim().is_empty()) {
            errors.push(ConfigError::EmptyHook);
        }
        // With an unreadable config file the command may be in it: that error
        // says what is wrong; "no command" would only be its echo.
        let file_failed = errors.iter().any(|e| matches!(e, ConfigError::File { .. }));
        if cli.command.is_empty() && !file_failed {
            errors.push(ConfigError::NoCommand);
        }
        for arg in &cli.command {
            if let Err(why) = command::expand_placeholders(arg, &binds) {
                errors.push(why.into());
            }
        }
        let control = match cli.control.as_deref().map(crate::bind::ControlAddr::parse) {
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                errors.push(e.into());
                None
            }
            None => None,
        };
        let token = cli.control_token.clone().filter(|t| !t.is_empty());
        if matches!(control, Some(crate::bind::ControlAddr::Tcp(_))) && token.is_none() {
            errors.push(ConfigError::ControlToken);
        }
        let worker_output = match cli.worker_output.as_deref() {
            None | Some("inherit") => WorkerOutput::Inherit,
            Some("plain") => WorkerOutput::Plain,
            Some("prefix") => WorkerOutput::Prefix,
            Some("json") => WorkerOutput::Json,
            Some(s) => {
                errors.push(ConfigError::WorkerOutput(s.to_string()));
                WorkerOutput::Inherit
            }
        };
        if cli.worker_output_timestamps && matches!(cli.worker_output.as_deref(), None | Some("inherit")) {
            errors.push(ConfigError::TimestampsNeedOutput);
        }
        let verbosity = match (cli.verbose, cli.quiet) {
            (0, 0) => None,
            (v, q) => Some(v.min(4) as i8 - q.min(4) as i8),
        };
        let config = Config {
            binds,
            workers,
            command: cli.command,
            directory: cli.directory,
            stop_signal,
            dump_signal,
            dump_grace,
            graceful_timeout,
            pidfile: cli.pidfile,
            user: cli.user,
            group: cli.group,
            env_file: cli.env_file,
            ready,
            boot_timeout,
            stop_delay,
            watchdog,
            max_surge,
            max_memory,
            max_age,
            recycle_check,
            on_restart: cli.on_restart,
            hook_timeout,
            einhorn_ack: cli.einhorn_ack,
            notify_socket,
            hot_overlap,
            balance,
            stall_timeout,
            verbosity,
            check: cli.check,
            control,
            control_token: token,
            log_file: cli.log_file,
            worker_output,
            worker_output_timestamps: cli.worker_output_timestamps,
        };
        (config, errors)
    }

    /// The checks that look at the system: user and group exist, and every
    /// check a spawn makes ([`command::prepare`], the same code): the
    /// directory, the env file, the program and its interpreter as the
    /// workers' user, the exec size limit. Returns the resolved credentials
    /// when `--user`/`--group` are given.
    pub fn check_startup(&self) -> Result<Option<Credentials>, Vec<ConfigError>> {
        let creds = match credentials(self.user.as_deref(), self.group.as_deref()) {
            Ok(c) => c,
            Err(e) => return Err(vec![ConfigError::Credentials(e)]),
        };
        // No command is a usage error, reported by the parse already.
        if self.command.is_empty() {
            return Ok(creds);
        }
        match command::prepare(&self.recipe(&run_as(creds.as_ref()))) {
            Ok(_) => Ok(creds),
            Err(errors) => Err(errors.into_iter().map(ConfigError::Unrunnable).collect()),
        }
    }

    /// What [`command::prepare`] needs, for workers running as `who`.
    pub fn recipe<'a>(&'a self, who: &'a command::RunAs) -> command::Recipe<'a> {
        command::Recipe {
            directory: self.directory.as_deref(),
            env_file: self.env_file.as_deref(),
            command: &self.command,
            binds: &self.binds,
            run_as: who,
        }
    }
}

/// Who the workers run as: `--user`'s credentials, or sup's own.
pub fn run_as(credentials: Option<&Credentials>) -> command::RunAs {
    match credentials {
        Some(c) => command::RunAs {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.clone(),
            name: format!("the workers' user ({})", c.description),
        },
        None => command::RunAs::current(),
    }
}

impl Config {
    /// What the core decides with: these settings, and the defaults that
    /// have no flag (the crash backoff, the halt timeout, whose `MAINPID=`
    /// is believed). `upward_watchdog` is half of sup's own supervisor's
    /// `WATCHDOG_USEC`, when it has one.
    pub fn core_settings(
        &self,
        credentials: Option<&Credentials>,
        upward_watchdog: Option<Duration>,
    ) -> crate::core::Settings {
        // root, sup's own user and the workers' user.
        let mut trusted_uids = vec![0, nix::unistd::Uid::effective().as_raw()];
        trusted_uids.extend(credentials.map(|c| c.uid));
        crate::core::Settings {
            workers: self.workers,
            stop_signal: self.stop_signal,
            dump_signal: self.dump_signal,
            dump_grace: self.dump_grace,
            graceful_timeout: self.graceful_timeout,
            stop_delay: self.stop_delay,
            ready_delay: match self.ready {
                Readiness::Notify | Readiness::Fd(_) => None,
                Readiness::Delay(d) => Some(d),
            },
            boot_timeout: self.boot_timeout,
            watchdog: self.watchdog,
            max_surge: self.max_surge,
            max_memory: self.max_memory,
            max_age: self.max_age,
            recycle_check: self.recycle_check,
            hook: self.on_restart.is_some(),
            hot_overlap: self.hot_overlap,
            stall_timeout: self.stall_timeout,
            // Set by the shell once it knows which binds got per-slot
            // sockets (a kernel may refuse them: then they stay shared).
            balance: false,
            hook_timeout: self.hook_timeout,
            trusted_uids,
            backoff: crate::worker::Backoff::default(),
            // After an immediate stop, how long to wait for reaping before
            // exiting anyway.
            halt_timeout: Duration::from_secs(5),
            upward_watchdog,
        }
    }

    /// Make relative pidfile, log file and socket paths absolute against
    /// `origin`, the directory sup was first started in. A hot restart
    /// changes into the release directory before re-executing; without this
    /// the new image would write its pidfile, log and sockets somewhere else.
    /// (A relative `--config` and `--env-file` deliberately follow the release.)
    pub fn anchor_paths(&mut self, origin: &std::path::Path) {
        let anchor = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = origin.join(&*p);
            }
        };
        if let Some(p) = &mut self.pidfile {
            anchor(p);
        }
        if let Some(p) = &mut self.log_file {
            anchor(p);
        }
        if let Some(crate::bind::ControlAddr::Unix(p)) = &mut self.control {
            anchor(p);
        }
        for b in &mut self.binds {
            if let crate::bind::BindAddr::Unix(p) = &mut b.addr {
                anchor(p);
            }
        }
    }
}

/// Fill what neither a flag nor a `SUP_*` variable set from the file:
/// flag > environment > file > default.
fn merge_file(cli: &mut Cli, file: FileConfig) {
    fn fill<T>(slot: &mut Option<T>, from: Option<T>) {
        if slot.is_none() {
            *slot = from;
        }
    }
    if cli.bind.is_empty() {
        cli.bind = file.bind.unwrap_or_default();
    }
    if cli.command.is_empty() {
        cli.command = file
            .command
            .unwrap_or_default()
            .into_iter()
            .map(OsString::from)
            .collect();
    }
    fill(&mut cli.workers, file.workers.map(|n| n.to_string()));
    fill(&mut cli.directory, file.directory);
    fill(&mut cli.stop_signal, file.stop_signal);
    fill(&mut cli.dump_signal, file.dump_signal);
    fill(&mut cli.dump_grace, file.dump_grace);
    fill(&mut cli.graceful_timeout, file.graceful_timeout);
    fill(&mut cli.stop_delay, file.stop_delay);
    fill(&mut cli.balance, file.balance);
    fill(&mut cli.stall_timeout, file.stall_timeout);
    fill(&mut cli.pidfile, file.pidfile);
    fill(&mut cli.user, file.user);
    fill(&mut cli.group, file.group);
    fill(&mut cli.env_file, file.env_file);
    fill(&mut cli.ready, file.ready);
    fill(&mut cli.boot_timeout, file.boot_timeout);
    fill(&mut cli.watchdog, file.watchdog);
    fill(&mut cli.max_surge, file.max_surge.map(|n| n.to_string()));
    fill(&mut cli.max_memory, file.max_memory);
    fill(&mut cli.max_age, file.max_age);
    fill(&mut cli.recycle_check, file.recycle_check);
    fill(&mut cli.on_restart, file.on_restart);
    fill(&mut cli.hook_timeout, file.hook_timeout);
    cli.einhorn_ack |= file.einhorn_ack.unwrap_or(false);
    fill(&mut cli.notify_socket, file.notify_socket);
    fill(&mut cli.hot_restart, file.hot_restart);
    fill(&mut cli.control, file.control);
    fill(&mut cli.control_token, file.control_token);
    fill(&mut cli.log_file, file.log_file);
    fill(&mut cli.worker_output, file.worker_output);
    cli.worker_output_timestamps |= file.worker_output_timestamps.unwrap_or(false);
}

/// Why a duration does not parse; the caller names the flag and value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("expected a duration such as 500ms, 30s or 2m")]
    NotANumber,
    #[error("unknown unit `{0}` (use ms, s, m or h)")]
    Unit(String),
    #[error("duration out of range")]
    OutOfRange,
}

/// Parse `500ms`, `30s`, `2m`, `1h` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| DurationError::NotANumber)?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" => 3600.0,
        other => return Err(DurationError::Unit(other.to_string())),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(DurationError::OutOfRange);
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().ok()
}

/// A size: bytes, or a number with K, M, G or T (powers of 1024; `512M`,
/// `1.5G`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&s[..i], s[i..].trim_end_matches(['B', 'b', 'i'])),
        None => (s, ""),
    };
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let n: f64 = number.trim().parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * scale as f64) as u64)
}

/// Why `--user` / `--group` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("cannot look up {what} `{name}`")]
    Lookup {
        /// `user` or `group`.
        what: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("--user `{0}`: no such user")]
    NoSuchUser(String),
    #[error("--group `{0}`: no such group")]
    NoSuchGroup(String),
    #[error("user name contains NUL")]
    NulInName,
    #[error("cannot list the groups of `{user}`")]
    Groups {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("--user and --group need sup to run as root")]
    NotRoot,
}

/// Resolve `--user` / `--group` into ids. Without root, only the current
/// user is accepted (a no-op), since setuid would fail at every spawn.
fn credentials(user: Option<&str>, group: Option<&str>) -> Result<Option<Credentials>, CredentialsError> {
    use nix::unistd::{Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    fn lookup(what: &'static str, name: &str) -> impl FnOnce(nix::Error) -> CredentialsError {
        let name = name.to_string();
        move |source| CredentialsError::Lookup { what, name, source }
    }
    let lookup_user = |name: &str| -> Result<User, CredentialsError> {
        let found = match name.parse::<u32>() {
            Ok(id) => User::from_uid(Uid::from_raw(id)),
            Err(_) => User::from_name(name),
        };
        found
            .map_err(lookup("user", name))?
            .ok_or_else(|| CredentialsError::NoSuchUser(name.to_string()))
    };
    let lookup_group = |name: &str| -> Result<Group, CredentialsError> {
        let found = match name.parse::<u32>() {
            Ok(id) => Group::from_gid(Gid::from_raw(id)),
            Err(_) => Group::from_name(name),
        };
        found
            .map_err(lookup("group", name))?
            .ok_or_else(|| CredentialsError::NoSuchGroup(name.to_string()))
    };
    let user = user.map(lookup_user).transpose()?;
    let group = group.map(lookup_group).transpose()?;
    let (uid, mut gid) = match &user {
        Some(u) => (u.uid.as_raw(), u.gid.as_raw()),
        None => (Uid::current().as_raw(), Gid::current().as_raw()),
    };
    if let Some(g) = &group {
        gid = g.gid.as_raw();
    }
    let groups = match &user {
        Some(u) => {
            let cname = std::ffi::CString::new(u.name.as_str()).map_err(|_| CredentialsError::NulInName)?;
            nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
                .map_err(|source| CredentialsError::Groups {
                    user: u.name.clone(),
                    source,
                })?
                .into_iter()
                .map(|g| g.as_raw())
                .collect()
        }
        None => vec![gid],
    };
    let is_root = Uid::effective().is_root();
    if !is_root && (uid != Uid::current().as_raw() || gid != Gid::current().as_raw()) {
        return Err(CredentialsError::NotRoot);
    }
    let description = match (&user, &group) {
        (Some(u), Some(g)) => format!("{}:{}", u.name, g.name),
        (Some(u), None) => u.name.clone(),
        (None, Some(g)) => format!(":{}", g.name),
        (None, None) => String::new(),
    };
    Ok(Some(Credentials {
        uid,
        gid,
        groups,
        description,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(args: &[&str]) -> Result<Config, Vec<ConfigError>> {
        let mut v = vec!["sup"];
        v.extend_from_slice(args);
        Config::from_cli(Cli::try_parse_from(v).unwrap())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("300k"), Some(300 << 10));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("-1M"), None);
        assert!(cfg(&["--max-memory", "100K", "--", "x"]).is_err(), "under 1M");
        let c = cfg(&["--max-memory", "64M", "--max-age", "1h", "--", "x"]).unwrap();
        assert_eq!(
            (c.max_memory, c.max_age),
            (Some(64 << 20), Some(Duration::from_secs(3600)))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigint"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("3"), Some(Signal::SIGQUIT));
        assert_eq!(parse_signal("USR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn defaults() {
        let c = cfg(&["--", "app"]).unwrap();
        assert_eq!(c.workers, 1);
        assert_eq!(c.stop_signal, Signal::SIGTERM);
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.verbosity, None);
    }

    #[test]
    fn every_problem_is_reported() {
        let errs = cfg(&["--workers", "0", "--stop-signal", "NOPE", "--bind", "nonsense"]).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{text:?}");
        assert!(text.iter().any(|t| t.contains("--workers `0`")));
        assert!(text.iter().any(|t| t.contains("--stop-signal `NOPE`")));
        assert!(text.iter().any(|t| t.contains("--bind `nonsense`")));
        assert!(text.iter().any(|t| t.contains("no command given")));
    }

    #[test]
    fn duplicate_binds_and_names() {
        let e = cfg(&["-b", "127.0.0.1:1", "-b", "tcp://127.0.0.1:1", "--", "x"]).unwrap_err();
        assert!(
            matches!(e.as_slice(), [ConfigError::DuplicateBind(b)] if b == "tcp://127.0.0.1:1"),
            "{e:?}"
        );
        let e = cfg(&["-b", "127.0.0.1:1?name=a", "-b", "127.0.0.1:2?name=a", "--", "x"]).unwrap_err();
        assert!(
            matches!(e.as_slice(), [ConfigError::DuplicateName(n)] if n == "a"),
            "{e:?}"
        );
    }

    #[test]
    fn placeholders_are_checked_against_binds() {
        assert!(cfg(&["-b", "127.0.0.1:0?name=web", "--", "x", "--fd={fd:web}"]).is_ok());
        let e = cfg(&["-b", "127.0.0.1:0", "--", "x", "{fd:nope}"]).unwrap_err();
        assert!(e[0].to_string().contains("{fd:nope}"), "{e:?}");
    }

    #[test]
    fn readiness_and_restart_settings() {
        let c = cfg(&["--", "x"]).unwrap();
        assert_eq!(c.ready, Readiness::Delay(Duration::from_secs(1)));
        assert_eq!(
            (c.boot_timeout, c.hook_timeout, c.max_surge),
            (Duration::from_secs(60), Duration::from_secs(60), 1)
        );
        let c = cfg(&[
            "--ready",
            "notify",
            "--boot-timeout",
            "5s",
            "--watchdog",
            "2s",
            "--max-surge",
            "3",
            "--",
            "x",
        ])
        .unwrap();
        assert_eq!(c.ready, Readiness::Notify);
        assert_eq!(
            (c.boot_timeout, c.watchdog, c.max_surge),
            (Duration::from_secs(5), Some(Duration::from_secs(2)), 3)
        );
        assert_eq!(
            cfg(&["--ready", "delay:250ms", "--", "x"]).unwrap().ready,
            Readiness::Delay(Duration::from_millis(250))
        );
        let e = cfg(&[
            "--ready",
            "sometimes",
            "--max-surge",
            "0",
            "--on-restart",
            " ",
            "--",
            "x",
        ])
        .unwrap_err();
        assert!(
            matches!(
                e.as_slice(),
                [ConfigError::Ready(r), ConfigError::MaxSurge(m), ConfigError::EmptyHook] if r == "sometimes" && m == "0"
            ),
            "{e:?}"
        );
    }

    #[test]
    fn the_file_fills_what_flags_do_not_set() {
        let dir = std::env::temp_dir().join(format!("sup-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sup.yml");
        std::fs::write(
            &file,
            "bind: [127.0.0.1:0]\nworkers: 3\ncommand: [app, --port, \"{fd}\"]\nready: notify\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let c = cfg(&["--config", &path]).unwrap();
        assert_eq!((c.workers, c.ready, c.command.len()), (3, Readiness::Notify, 3));
        let c = cfg(&["--config", &path, "--workers", "5", "--", "other"]).unwrap();
        assert_eq!(c.workers, 5, "a flag overrides the file");
        assert_eq!(c.command, ["other"]);
        std::fs::write(&file, "workers: 2\nwrkers: 3\n").unwrap();
        let e = cfg(&["--config", &path, "--", "x"]).unwrap_err();
        assert!(
            e[0].to_string().contains("line 2 column 1: unknown field `wrkers`"),
            "{e:?}"
        );
        let e = cfg(&["--config", "/no/such.yml", "--", "x"]).unwrap_err();
        assert_eq!(e[0].to_string(), "--config /no/such.yml: no such file or directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_are_anchored_at_the_origin() {
        let mut c = cfg(&[
            "--pidfile",
            "tmp/sup.pid",
            "-b",
            "unix:app.sock",
            "--log-file",
            "/var/log/a",
            "--",
            "x",
        ])
        .unwrap();
        c.anchor_paths(std::path::Path::new("/srv/app"));
        assert_eq!(c.pidfile.unwrap(), PathBuf::from("/srv/app/tmp/sup.pid"));
        assert_eq!(c.binds[0].addr, crate::bind::BindAddr::Unix("/srv/app/app.sock".into()));
        assert_eq!(c.log_file.unwrap(), PathBuf::from("/var/log/a"));
    }

    #[test]
    fn verbosity() {
        assert_eq!(cfg(&["-vv", "--", "x"]).unwrap().verbosity, Some(2));
        assert_eq!(cfg(&["-q", "--", "x"]).unwrap().verbosity, Some(-1));
    }
}

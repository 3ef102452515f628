//! The command line: every flag defined once, with a one-line and a long help.
//!
//! These definitions are the single source of `sup --help` (and, later, of
//! the man page). Values stay raw here (`Option<String>`), so that defaults
//! and validation live in one place, `config.rs`, where flag, environment and
//! (later) config-file values meet. This module must not read files or
//! validate anything that needs a syscall.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Signals (to sup's pid or --pidfile):
  USR1        rolling restart: each worker's replacement starts and is ready before the old one stops
  USR2        hot restart: old workers stop, sup re-executes itself in place (same pid), new workers start
  TERM, INT   graceful stop: after --stop-delay, drain the accept queues, then the stop signal to every worker, KILL after --graceful-timeout; a second INT stops at once
  QUIT        immediate stop: KILL to every worker's process group
  TTIN, TTOU  one worker more / fewer (never below 1)
  HUP         reopen --log-file
  CHLD        reap; sup never leaves a zombie

Workers receive fds 0-2 and the sockets at fd 3, 4, ... in --bind order, plus LISTEN_FDS,
LISTEN_PID, LISTEN_FDNAMES (systemd), EINHORN_* (Einhorn), SERVER_STARTER_PORT
(server::Starter), SUP_WORKER, SUP_GENERATION, SUP_PID and PWD.

Example:
  sup --bind 0.0.0.0:3000 --workers 4 -- bundle exec puma -C config/puma.rb";

/// sup: bind the listening sockets once, run N copies of any command that
/// inherit them, keep them running.
#[derive(Debug, Parser)]
#[command(
    name = "sup",
    version,
    about = "Supervise N workers of any command that share listening sockets sup binds once",
    long_about = "sup binds the listening sockets itself, then starts N copies of COMMAND (\"workers\") \
                  that inherit those sockets as file descriptors 3, 4, ... with the systemd, Einhorn and \
                  server::Starter environment conventions, so servers written in any language run unchanged. \
                  A worker that exits is replaced in its slot, with exponential backoff when it keeps crashing.",
        after_help = AFTER_HELP,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,

    /// Read settings from a YAML FILE (flags and SUP_* variables override it)
    ///
    /// Keys are the long flags with `_` for `-`: bind (a list), workers, command (a list of
    /// strings), directory, ready, graceful_timeout, on_restart, ... Unknown keys are errors
    /// with their line and column; booleans are true or false only. A relative FILE is read
    /// from sup's working directory, which after a hot restart is the resolved --directory:
    /// each release brings its own. The new sup reads it again at every hot restart.
    #[arg(short, long, value_name = "FILE", env = "SUP_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listen on ADDR (repeatable; order is the fd order)
    ///
    /// Forms: HOST:PORT, tcp://HOST:PORT, [::1]:PORT, unix:/path/app.sock, unix:///path,
    /// udp://HOST:PORT. Options as a query string: ?backlog=N (default 1024 or somaxconn,
    /// whichever is smaller), name=NAME (for LISTEN_FDNAMES and {fd:NAME}),
    /// balance=shared|reuseport (this bind's --balance), reuseport=1, ipv6only=1, and for unix sockets mode=0660, owner=USER, group=GROUP. Port 0 binds a
    /// free port; the address actually bound is logged.
    #[arg(short, long = "bind", value_name = "ADDR", env = "SUP_BIND", value_delimiter = ',')]
    pub bind: Vec<String>,

    /// Number of workers [default: 1]
    ///
    /// Each worker runs in a numbered slot 0..N-1 (SUP_WORKER, EINHORN_CHILD_INDEX).
    /// SIGTTIN and SIGTTOU change the count while sup runs.
    #[arg(short, long, value_name = "N", env = "SUP_WORKERS")]
    pub workers: Option<String>,

    /// Run workers in DIR, re-resolved at every spawn
    ///
    /// DIR is kept as written (e.g. a Capistrano `current` symlink) and resolved each time a
    /// worker starts, so a worker started after the symlink moved runs in the new release:
    /// its cwd and PWD are the resolved path. A relative command path is resolved against it.
    #[arg(short = 'd', long, value_name = "DIR", env = "SUP_DIRECTORY")]
    pub directory: Option<PathBuf>,

    /// Signal that asks a worker to stop gracefully [default: TERM]
    ///
    /// Sent to the worker's pid. When --graceful-timeout runs out, SIGKILL goes to the
    /// worker's whole process group. Names with or without SIG, or numbers.
    #[arg(long, value_name = "SIGNAL", env = "SUP_STOP_SIGNAL")]
    pub stop_signal: Option<String>,

    /// How long a worker may take to stop before it is killed [default: 30s]
    ///
    /// Durations read as 500ms, 30s, 2m or 1h; a bare number is seconds.
    #[arg(long, value_name = "DURATION", env = "SUP_GRACEFUL_TIMEOUT")]
    pub graceful_timeout: Option<String>,

    /// How a TCP bind's connections reach the workers: shared or reuseport [default: shared]
    ///
    /// shared: one listening socket every worker accepts from; an idle worker takes the next
    /// connection, the best balance for one-request-at-a-time workers (Unicorn, gunicorn sync,
    /// Puma with 1 thread). reuseport: one SO_REUSEPORT socket per worker slot, held by sup, at
    /// the same fd with the same variables; new connections are spread evenly over the slots
    /// whose worker serves (the kernel's selection program, swapped as workers come and go), so
    /// event-loop servers (Node, uvicorn, Go, Rust) share the load instead of a few taking most
    /// of it. A slot's socket outlives its workers: a crash or a replacement loses nothing queued
    /// there. Unix and UDP binds stay shared. Per bind: ?balance=.
    #[arg(long, value_name = "MODE", env = "SUP_BALANCE")]
    pub balance: Option<String>,

    /// With --balance reuseport: replace a worker whose own queue holds connections it has not
    /// accepted for DURATION
    ///
    /// sup reads each slot's accept queue from the kernel. A slot whose queue has not shrunk
    /// for half of DURATION gets no new connections; if at DURATION it still has not, and the
    /// worker holds no connection it did not hold before (it accepted none), the worker is hung:
    /// it is replaced make-before-break (with --dump-signal first, if set), and the replacement
    /// serves what is queued. A worker that keeps accepting, however busy, is never replaced.
    /// Off by default.
    #[arg(long, value_name = "DURATION", env = "SUP_STALL_TIMEOUT")]
    pub stall_timeout: Option<String>,

    /// At a stop, report not ready for DURATION while still serving [default: 0s]
    ///
    /// TERM, INT, `sup ctl stop`: GET /health answers 503 at once and the workers keep
    /// serving for DURATION, so a load balancer or a Kubernetes readiness probe takes sup out
    /// of rotation first. Then new connections are kept out (TCP SYNs are dropped, which
    /// clients retry; a unix socket's path is removed), the workers take what is already
    /// queued, and only then get the stop signal.
    #[arg(long, value_name = "DURATION", env = "SUP_STOP_DELAY")]
    pub stop_delay: Option<String>,

    /// Write sup's pid to FILE (removed when sup stops)
    ///
    /// The pid never changes while sup runs, so FILE stays valid for `kill -USR1 $(cat FILE)`.
    #[arg(long, value_name = "FILE", env = "SUP_PIDFILE")]
    pub pidfile: Option<PathBuf>,

    /// Run workers as USER (sup must run as root)
    ///
    /// Sockets are bound before workers start, so an unprivileged worker can serve port 80.
    /// The worker's group is the user's primary group unless --group is given; its
    /// supplementary groups are the user's.
    #[arg(short, long, value_name = "USER", env = "SUP_USER")]
    pub user: Option<String>,

    /// Run workers with primary group GROUP (sup must run as root)
    #[arg(short, long, value_name = "GROUP", env = "SUP_GROUP")]
    pub group: Option<String>,

    /// Add the variables of a dotenv FILE to the workers' environment, re-read at every spawn
    ///
    /// A relative FILE is read from the resolved --directory, so each release can bring its
    /// own environment. Lines are KEY=VALUE, optionally `export`ed and quoted; # starts a comment.
    #[arg(long, value_name = "FILE", env = "SUP_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    /// When a new worker counts as ready: notify, delay:DURATION or fd:N [default: delay:1s]
    ///
    /// notify: when it sends READY=1 on NOTIFY_SOCKET (the sd_notify protocol; Puma and
    /// gunicorn already do). delay:DURATION: once it has stayed up that long. fd:N: when it
    /// writes a newline to its fd N, a pipe sup makes (s6's notification-fd; N above the
    /// listeners); closing it without a newline is a failed boot. A rolling restart stops an
    /// old worker only after its replacement is ready.
    #[arg(long, value_name = "MODE", env = "SUP_READY")]
    pub ready: Option<String>,

    /// A worker not ready within DURATION has failed to boot [default: 60s]
    ///
    /// It is killed; during a rolling restart, the restart stops there and the old
    /// workers keep serving.
    #[arg(long, value_name = "DURATION", env = "SUP_BOOT_TIMEOUT")]
    pub boot_timeout: Option<String>,

    /// Kill and replace a worker that sent WATCHDOG=1 once, then went silent this long
    ///
    /// Each worker gets WATCHDOG_USEC and WATCHDOG_PID (its own pid), so
    /// sd_notify libraries that ping by themselves do so unchanged.
    #[arg(long, value_name = "DURATION", env = "SUP_WATCHDOG")]
    pub watchdog: Option<String>,

    /// Before killing a worker for a timeout, send it SIGNAL for a dump
    ///
    /// A worker about to be killed because it was not ready within --boot-timeout, went
    /// silent past --watchdog or did not stop within --graceful-timeout first gets SIGNAL
    /// (ABRT, QUIT, USR1: what its runtime dumps its stacks on), then --dump-grace to write
    /// the dump, then SIGKILL to its process group. The log says which timeout.
    #[arg(long, value_name = "SIGNAL", env = "SUP_DUMP_SIGNAL")]
    pub dump_signal: Option<String>,

    /// How long a worker has to write its dump after --dump-signal [default: 5s]
    #[arg(long, value_name = "DURATION", env = "SUP_DUMP_GRACE")]
    pub dump_grace: Option<String>,

    /// Replace a worker whose memory stays above SIZE (e.g. 512M, 2G)
    ///
    /// Memory is PSS summed over the worker's process group (smaps_rollup), so
    /// pages shared with a preloading parent are not counted once per worker. It is
    /// sampled every --recycle-check; above SIZE three samples in a row, the worker
    /// is replaced like one slot of a rolling restart: its replacement first, ready,
    /// then the old one stopped; never while a restart runs, never more than
    /// --max-surge at once.
    #[arg(long, value_name = "SIZE", env = "SUP_MAX_MEMORY")]
    pub max_memory: Option<String>,

    /// Replace a worker once it has run this long, plus a jitter of up to 10%
    ///
    /// The jitter spreads workers that started together; the replacement is
    /// make-before-break, like --max-memory's.
    #[arg(long, value_name = "DURATION", env = "SUP_MAX_AGE")]
    pub max_age: Option<String>,

    /// How often --max-memory samples the workers' memory [default: 5s]
    #[arg(long, value_name = "DURATION", env = "SUP_RECYCLE_CHECK")]
    pub recycle_check: Option<String>,

    /// How many replacements may boot at once during a rolling restart [default: 1]
    ///
    /// Capacity never drops below --workers ready workers, whatever the value.
    #[arg(long, value_name = "K", env = "SUP_MAX_SURGE")]
    pub max_surge: Option<String>,

    /// Run `sh -c CMD` before every restart; a failure abandons the restart
    ///
    /// Runs in the resolved --directory with SUP_RESTART=rolling (or hot) in its
    /// environment and its output in sup's log. A non-zero exit, or running longer than
    /// --hook-timeout, abandons the restart: nothing is stopped.
    #[arg(long, value_name = "CMD", env = "SUP_ON_RESTART")]
    pub on_restart: Option<String>,

    /// How long --on-restart may run [default: 60s]
    #[arg(long, value_name = "DURATION", env = "SUP_HOOK_TIMEOUT")]
    pub hook_timeout: Option<String>,

    /// Also accept Einhorn's worker:ack on an Einhorn command socket (EINHORN_SOCK_PATH)
    ///
    /// A {"command":"worker:ack","pid":N} line counts as READY=1 for that worker, so apps
    /// built on Einhorn client libraries (goji/bind, go-einhorn, the einhorn gem) report
    /// readiness unchanged. Messages are parsed as JSON only.
    #[arg(long, env = "SUP_EINHORN_ACK")]
    pub einhorn_ack: bool,

    /// Where NOTIFY_SOCKET (and EINHORN_SOCK_PATH) live: path or abstract [default: path]
    ///
    /// path: files in a private directory (mode 0700, given to the --user of the workers)
    /// under $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR, else the temp directory; removed
    /// when sup stops, kept across hot restarts. Every sd_notify client can reach a path.
    /// abstract: Linux abstract addresses (@name), for read-only file systems; Ruby's
    /// sd_notify gem (Puma) and Rust's sd-notify crate cannot reach them.
    #[arg(long, value_name = "MODE", env = "SUP_NOTIFY_SOCKET")]
    pub notify_socket: Option<String>,

    /// How a hot restart (USR2) replaces the workers: stop or overlap [default: stop]
    ///
    /// stop: every worker stops before sup re-executes and new ones start after, so two
    /// versions never serve at once (for deploys that migrate a database); connections wait
    /// in the backlog for the whole boot. overlap: sup re-executes with the workers still
    /// serving, adopts them, then rolls them make-before-break like USR1: no pause, but old
    /// and new code serve side by side for a while.
    #[arg(long, value_name = "MODE", env = "SUP_HOT_RESTART")]
    pub hot_restart: Option<String>,

    /// Check the configuration, the directory and the command, then exit
    ///
    /// Exits 0 when sup could start with these arguments, or 2 after listing every problem.
    /// Binds nothing and starts nothing. A hot restart runs the new sup this way first.
    #[arg(long)]
    pub check: bool,

    /// Serve the control API on ADDR: unix:PATH (mode 0600) or tcp://HOST:PORT
    ///
    /// HTTP/1.1 with JSON answers (curl --unix-socket works): GET /stats; POST /restart,
    /// /phased-restart, /stop, /halt, /workers?count=N, /incr, /decr, /reopen-logs. TCP needs
    /// --control-token. `sup ctl` is its client.
    #[arg(long, value_name = "ADDR", env = "SUP_CONTROL")]
    pub control: Option<String>,

    /// Require this token (Authorization: Bearer TOKEN) on the control API
    #[arg(long, value_name = "TOKEN", env = "SUP_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,

    /// Send sup's and the workers' output to FILE, reopened on SIGHUP
    ///
    /// Appended to; reopened by sup on HUP (for logrotate). Workers started after the reopen
    /// write to the new file; running ones keep theirs until they are replaced, unless
    /// --worker-output has sup write their lines (then they follow at once).
    #[arg(long, value_name = "FILE", env = "SUP_LOG_FILE")]
    pub log_file: Option<PathBuf>,

    /// Who writes the workers' output: inherit, plain, prefix or json [default: inherit]
    ///
    /// inherit: workers write to sup's stdout and stderr themselves. Otherwise sup reads each
    /// worker's stdout and stderr through pipes and writes every line whole, to its own stdout
    /// or stderr (or --log-file): plain as written; prefix after `worker 3 (pid 4121, gen 7)
    /// stdout: `; json as one object per line with slot, pid, generation, stream and line. The
    /// pipes cross hot restarts and reexecs, so no line is lost or torn. A line over 64 KiB is
    /// cut into pieces; when sup's output cannot keep up, sup buffers 4 MiB per stream, then
    /// drops whole lines and counts them (sup_worker_output_dropped_lines_total) rather than
    /// block the workers.
    #[arg(long, value_name = "MODE", env = "SUP_WORKER_OUTPUT")]
    pub worker_output: Option<String>,

    /// Start each worker line with the time sup read it (RFC 3339, UTC; "time" in json)
    #[arg(long, env = "SUP_WORKER_OUTPUT_TIMESTAMPS")]
    pub worker_output_timestamps: bool,

    /// Log more (-v debug, -vv trace); RUST_LOG is used when neither -v nor -q is given
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log less (-q warnings and errors only, -qq errors only)
    #[arg(short, long, action = ArgAction::Count)]
    pub quiet: u8,

    /// The command each worker runs, after `--`
    ///
    /// A name without a slash is looked up in PATH, a relative path against the worker's
    /// directory, both at every spawn. An argument containing {fd}, {fd:N} or {fd:NAME} gets
    /// the fd number of the first, the Nth (from 0) or the named socket.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Drive a running sup: status, stats, restart, phased-restart, stop, ...
    Ctl(CtlArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    ///
    /// bash: `source <(sup completions bash)`, or save it as
    /// /usr/share/bash-completion/completions/sup. zsh: save it as `_sup` in a
    /// directory of $fpath. fish: save it as ~/.config/fish/completions/sup.fish.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// `sup ctl`: talk to a running sup through its control server, or by
/// signals through its pidfile when it has none.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control server: unix:PATH or tcp://HOST:PORT
    #[arg(long, value_name = "ADDR", env = "SUP_CONTROL", global = true)]
    pub control: Option<String>,

    /// Token for a control server that requires one
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SUP_CONTROL_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub control_token: Option<String>,

    /// Without a control server, signal the pid in FILE instead
    #[arg(long, value_name = "FILE", env = "SUP_PIDFILE", global = true)]
    pub pidfile: Option<PathBuf>,

    /// Read control, control_token and pidfile from sup's config FILE
    #[arg(short, long, value_name = "FILE", env = "SUP_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Block until the restart has finished; exit non-zero if it failed
    ///
    /// Prints a line as each new worker comes up. For deploy tools: a broken release fails
    /// the deploy while the old workers keep serving.
    #[arg(long, global = true)]
    pub wait: bool,

    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = "10m", global = true)]
    pub timeout: String,

    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CtlCommand {
    /// Workers, binds and the last restart, as a table
    Status,
    /// Whether sup serves: exit 0 when every worker slot is ready, 1 when not (starting,
    /// stopping); GET /health, which needs no token
    Health,
    /// The raw /stats JSON
    Stats,
    /// Hot restart (like SIGUSR2)
    Restart,
    /// Rolling restart (like SIGUSR1); with --canary N, N slots and then a pause
    PhasedRestart {
        /// Replace N slots, then pause: `sup ctl resume` finishes the rollout, `sup ctl
        /// rollback` undoes it; with --wait, returns once the canary serves
        #[arg(long, value_name = "N")]
        canary: Option<usize>,
    },
    /// Finish a rolling restart paused at its canary
    Resume,
    /// Replace the newer generation's workers by the previous release, as it was pinned
    /// when it started (its directory, command and env file), make-before-break
    ///
    /// From a paused canary or after a completed rollout (one step back). Refused, with the
    /// reason, when that release's directory is gone.
    Rollback,
    /// Graceful stop (like SIGTERM)
    Stop,
    /// Immediate stop (like SIGQUIT)
    Halt,
    /// One worker more (like SIGTTIN)
    Incr,
    /// One worker fewer (like SIGTTOU)
    Decr,
    /// Set the number of workers
    Workers {
        /// The new count (at least 1)
        count: usize,
    },
    /// Reopen the log file (like SIGHUP)
    ReopenLogs,
    /// Act on one worker: replace it (make-before-break), send its process group a signal,
    /// or stop it (its slot gets a new worker)
    ///
    /// TARGET is a slot or a pid (`slot:N` or `pid:N` where a number could be both).
    Worker {
        /// The worker: SLOT, PID, slot:N or pid:N
        target: String,
        #[command(subcommand)]
        action: WorkerCtl,
    },
    /// Re-execute sup itself and adopt every worker, touching none
    ///
    /// For upgrading the sup binary or its own settings (log level, control token, …). The
    /// new sup is checked with --check first; the workers keep serving throughout.
    Reexec,
}

/// What `sup ctl worker TARGET` does.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum WorkerCtl {
    /// Start its replacement; it stops once the replacement is ready
    Replace,
    /// Send SIGNAL to its process group (e.g. USR1 for a thread dump)
    Signal {
        /// A signal name, with or without SIG, or a number
        signal: String,
    },
    /// Stop it gracefully; its slot gets a new worker
    Stop,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_typical_line() {
        let cli = Cli::try_parse_from([
            "sup",
            "--bind",
            "0.0.0.0:3000",
            "-b",
            "unix:/tmp/a.sock",
            "--workers",
            "4",
            "--",
            "ruby",
            "app.rb",
        ])
        .unwrap();
        assert_eq!(cli.bind, ["0.0.0.0:3000", "unix:/tmp/a.sock"]);
        assert_eq!(cli.workers.as_deref(), Some("4"));
        assert_eq!(cli.command, ["ruby", "app.rb"]);
    }

    #[test]
    fn command_arguments_are_not_flags() {
        let cli = Cli::try_parse_from(["sup", "--", "app", "--workers", "9", "-v"]).unwrap();
        assert_eq!(cli.workers, None);
        assert_eq!(cli.verbose, 0);
        assert_eq!(cli.command, ["app", "--workers", "9", "-v"]);
    }

    #[test]
    fn ctl_parses_with_wait_after_the_command() {
        let cli = Cli::try_parse_from(["sup", "ctl", "--control", "unix:/tmp/s", "phased-restart", "--wait"]).unwrap();
        let Some(Sub::Ctl(ctl)) = cli.sub else { panic!("no ctl") };
        assert_eq!(ctl.command, CtlCommand::PhasedRestart { canary: None });
        assert!(ctl.wait);
        let cli = Cli::try_parse_from(["sup", "ctl", "workers", "3"]).unwrap();
        assert!(matches!(
            cli.sub,
            Some(Sub::Ctl(CtlArgs {
                command: CtlCommand::Workers { count: 3 },
                ..
            }))
        ));
        // A worker command named `ctl` is still a command.
        let cli = Cli::try_parse_from(["sup", "--", "ctl", "status"]).unwrap();
        assert!(cli.sub.is_none());
        assert_eq!(cli.command, ["ctl", "status"]);
    }

    #[test]
    fn unknown_flags_are_rejected() {
        assert!(Cli::try_parse_from(["sup", "--wrokers", "2", "--", "app"]).is_err());
    }
}

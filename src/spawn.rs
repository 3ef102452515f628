//! The only code that forks. A worker is planned completely before `fork`
//! and the child branch is a straight line of async-signal-safe calls.
//!
//! Why raw `fork`/`execve` and not `std::process::Command`:
//! 1. `LISTEN_PID` must equal the worker's own pid, and `Command` fixes the
//!    environment before it forks. Here the environment holds a
//!    `LISTEN_PID=` entry with room for the digits, and the child writes its
//!    own pid into it without allocating.
//! 2. sup reaps with `waitpid(-1)`, which `Child::wait` cannot share.
//! 3. Since 2022 `Command` lets the child inherit the parent's signal mask;
//!    sup blocks its handled signals around fork and the child must start
//!    with an empty mask and default dispositions.
//!
//! The child, in order: move the error pipe out of the way; `setpgid(0,0)`;
//! every signal back to SIG_DFL; stdin from /dev/null; with
//! `--worker-output`, stdout and stderr onto the write ends of sup's pipes
//! (before the sockets move: the pipes are ≥ 3 and may sit where a socket
//! goes, while fds 1 and 2 hold nothing a later move needs); the sockets moved to
//! fds 3, 4, … (first duplicated above the target range with
//! `F_DUPFD_CLOEXEC`, then `dup2`ed into place, so no move can clobber a
//! source); every other fd marked CLOEXEC (`close_range`, a backstop: sup
//! opens everything CLOEXEC already); credentials; the parent-death signal
//! (after setuid, which clears it); `chdir`; the `LISTEN_PID` digits; an
//! empty signal mask; `execve`. A failure writes (stage, errno) to a CLOEXEC
//! pipe and exits 127 (126 for a permission error on exec); an exec that
//! succeeds closes the pipe, which is how the parent knows.
//!
//! This module must not log in the child, allocate in the child, reap, or
//! touch the worker table.

use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use libc::{c_char, c_int};

use crate::command::{self, DirectoryError, FIRST_SOCKET_FD, Prepared};
use crate::config::{Config, Credentials};
use crate::signals::BlockedSignals;
use crate::sockets::{BoundSocket, LocalAddr};

/// What one spawn needs to know.
pub struct SpawnRequest<'a> {
    pub slot: usize,
    pub generation: u64,
    pub sockets: &'a [BoundSocket],
    /// What each bind's fd is in this worker, in bind order: the bind's
    /// socket, or the slot's own (`--balance reuseport`).
    pub fds: Vec<RawFd>,
    pub credentials: Option<&'a Credentials>,
    pub sup_pid: crate::pid::Pid,
    /// An fd open on /dev/null: the worker's stdin.
    pub devnull: RawFd,
    /// sup's notify socket address, handed over as NOTIFY_SOCKET.
    pub notify_socket: &'a str,
    /// The Einhorn command socket path (`--einhorn-ack`).
    pub einhorn_socket: Option<&'a str>,
    /// `--watchdog`: the worker gets `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub watchdog: Option<std::time::Duration>,
    /// `--stop-signal`: what the worker gets if sup dies.
    pub stop_signal: c_int,
    /// `--ready fd:N`: the write end of the readiness pipe, and N.
    pub ready_fd: Option<(RawFd, c_int)>,
    /// `--worker-output`: the write ends of the pipes that become the
    /// worker's stdout and stderr; `None`: it inherits sup's.
    pub stdio: Option<[RawFd; 2]>,
}

/// A helper process sup runs for itself: the restart hook, the hot
/// restart's preflight check.
pub struct HelperRequest<'a> {
    pub program: &'a Path,
    pub argv: Vec<OsString>,
    /// Variables added to sup's environment (SUP_RESTART, ...).
    pub env: Vec<(String, String)>,
    pub config: &'a Config,
    pub credentials: Option<&'a Credentials>,
    pub devnull: RawFd,
}

/// Why a worker or a helper did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `--directory` no longer resolves (a release removed, a symlink
    /// re-pointed at nothing).
    #[error("--directory {} {why}", path.display())]
    Directory { path: PathBuf, why: DirectoryError },
    /// sup's own working directory is gone.
    #[error(transparent)]
    OwnDirectory(DirectoryError),
    /// An argument, a variable, the directory or the program path.
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cannot create a pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot block signals")]
    BlockSignals(#[source] nix::Error),
    /// Out of processes or memory: worth retrying later.
    #[error("fork failed")]
    Fork(#[source] std::io::Error),
    #[error("cannot read the spawn error pipe")]
    ErrorPipe(#[source] nix::Error),
    /// The child reported a failure before exec: where, on what, and the
    /// errno (`Stage::Exec` with ENOENT or EACCES is the program itself).
    #[error("{stage}{}", .path.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    Child {
        stage: Stage,
        path: Option<String>,
        #[source]
        error: std::io::Error,
    },
}

/// Where the child failed, reported through the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    ErrorPipe = 1,
    ProcessGroup,
    Stdin,
    Sockets,
    Credentials,
    Directory,
    Exec,
    Output,
}

impl Stage {
    fn from_u32(n: u32) -> Stage {
        match n {
            1 => Stage::ErrorPipe,
            2 => Stage::ProcessGroup,
            3 => Stage::Stdin,
            4 => Stage::Sockets,
            5 => Stage::Credentials,
            6 => Stage::Directory,
            8 => Stage::Output,
            _ => Stage::Exec,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::ErrorPipe => "cannot set up the error pipe",
            Stage::ProcessGroup => "cannot create a process group",
            Stage::Stdin => "cannot redirect stdin",
            Stage::Sockets => "cannot pass the sockets",
            Stage::Credentials => "cannot switch user or group",
            Stage::Directory => "cannot change into the directory",
            Stage::Exec => "cannot execute",
            Stage::Output => "cannot redirect stdout and stderr",
        })
    }
}

/// Start a worker of the prepared command (resolved and checked once for
/// its generation): the prepared environment plus this worker's own
/// variables. Returns its pid, or why it could not run.
pub fn start(req: &SpawnRequest<'_>, prepared: &Prepared) -> Result<i32, SpawnError> {
    let mut env = prepared.env.clone();
    for (k, v) in protocol_env(req, &prepared.cwd) {
        set_var(&mut env, k.into(), v.into());
    }
    let mut plan = Plan::new(
        &prepared.argv,
        env,
        &prepared.cwd,
        req.fds.clone(),
        req.credentials,
        req.devnull,
        if req.watchdog.is_some() {
            &[LISTEN_PID, WATCHDOG_PID]
        } else {
            &[LISTEN_PID]
        },
    )?;
    // A worker gets the stop signal when sup dies: it finishes what it has in
    // hand (a crash of sup resets no request) and exits; under systemd the
    // next sup takes the listeners back from the fd store meanwhile.
    plan.death_signal = req.stop_signal;
    plan.extra = req.ready_fd;
    plan.stdio = req.stdio.unwrap_or([-1, -1]);
    plan.fork_exec(&prepared.program)
}

/// The restart hook's shell script: `command` runs as a job the shell waits
/// for, and a TERM to the shell (its parent-death signal when sup dies, or
/// sup's stop) is passed to the whole process group, so the hook's children
/// do not outlive it. The exit status is the command's.
pub fn hook_script(command: &str) -> String {
    format!("trap 'trap - TERM; kill 0' TERM\n{{\n{command}\n}} &\nwait $!")
}

/// Start a helper through the same fork path as workers: no fd of sup's
/// reaches it, it gets its own process group (so a timeout kills all of
/// it), and it runs in the resolved directory. Its output goes where sup's
/// goes, so it lands in sup's log.
pub fn start_helper(req: &HelperRequest<'_>) -> Result<i32, SpawnError> {
    let cwd = resolve_directory(req.config)?;
    let mut env = command::base_env();
    set_var(&mut env, "PWD".into(), cwd.as_os_str().to_os_string());
    for (k, v) in &req.env {
        set_var(&mut env, k.into(), v.into());
    }
    let plan = Plan::new(&req.argv, env, &cwd, Vec::new(), req.credentials, req.devnull, &[])?;
    plan.fork_exec(req.program)
}

fn resolve_directory(config: &Config) -> Result<PathBuf, SpawnError> {
    command::resolve_directory(config.directory.as_deref()).map_err(|why| match &config.directory {
        Some(d) => SpawnError::Directory { path: d.clone(), why },
        None => SpawnError::OwnDirectory(why),
    })
}

/// The variables every worker gets (systemd, Einhorn, server::Starter, sup).
fn protocol_env(req: &SpawnRequest<'_>, cwd: &Path) -> Vec<(String, String)> {
    let n = req.sockets.len();
    let fds: Vec<usize> = (0..n).map(|i| FIRST_SOCKET_FD + i).collect();
    let mut env = vec![
        ("LISTEN_FDS".to_string(), n.to_string()),
        (
            "LISTEN_FDNAMES".to_string(),
            req.sockets
                .iter()
                .map(|s| s.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(":"),
        ),
        ("EINHORN_MASTER_PID".to_string(), req.sup_pid.to_string()),
        ("EINHORN_CHILD_INDEX".to_string(), req.slot.to_string()),
        ("EINHORN_FD_COUNT".to_string(), n.to_string()),
        (
            "EINHORN_FDS".to_string(),
            fds.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" "),
        ),
    ];
    for (i, fd) in fds.iter().enumerate() {
        env.push((format!("EINHORN_FD_{i}"), fd.to_string()));
    }
    let starter: Vec<String> = req
        .sockets
        .iter()
        .zip(&fds)
        .filter_map(|(s, fd)| match &s.local {
            LocalAddr::Tcp(a) => Some(format!("{a}={fd}")),
            LocalAddr::Unix(p) => Some(format!("{}={fd}", p.display())),
            LocalAddr::Udp(_) => None,
        })
        .collect();
    if !starter.is_empty() {
        env.push(("SERVER_STARTER_PORT".to_string(), starter.join(";")));
    }
    env.push(("SERVER_STARTER_GENERATION".to_string(), req.generation.to_string()));
    env.push(("SUP_WORKER".to_string(), req.slot.to_string()));
    env.push(("SUP_GENERATION".to_string(), req.generation.to_string()));
    env.push(("SUP_PID".to_string(), req.sup_pid.to_string()));
    env.push(("PWD".to_string(), cwd.display().to_string()));
    env.push(("NOTIFY_SOCKET".to_string(), req.notify_socket.to_string()));
    if let Some(path) = req.einhorn_socket {
        env.push(("EINHORN_SOCK_PATH".to_string(), path.to_string()));
    }
    if let Some(d) = req.watchdog {
        env.push(("WATCHDOG_USEC".to_string(), d.as_micros().to_string()));
    }
    env
}

fn set_var(env: &mut Vec<(OsString, OsString)>, key: OsString, value: OsString) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

/// Variables whose value is the worker's own pid, known only after fork:
/// each is planned as its prefix followed by room for any pid's digits and
/// a NUL, and the child writes the digits in.
const LISTEN_PID: &[u8] = b"LISTEN_PID=";
const WATCHDOG_PID: &[u8] = b"WATCHDOG_PID=";
const PID_DIGITS: usize = 12;
/// At most this many own-pid variables.
const PID_VARS: usize = 2;

/// Everything the child needs, allocated before `fork`.
struct Plan {
    argv: Vec<CString>,
    /// Environment entries, each NUL-terminated; the last `pid_vars.len()`
    /// are the own-pid variables, with room for the digits.
    env: Vec<Vec<u8>>,
    /// Empty for a helper; `LISTEN_PID=` (and `WATCHDOG_PID=`) for a worker.
    pid_vars: &'static [&'static [u8]],
    cwd: CString,
    sources: Vec<RawFd>,
    creds: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    devnull: RawFd,
    /// What the child gets when sup dies (`PR_SET_PDEATHSIG`).
    death_signal: c_int,
    /// One more fd to put in place (source, target), above the sockets:
    /// the readiness pipe of `--ready fd:N`.
    extra: Option<(RawFd, c_int)>,
    /// What becomes fds 1 and 2 (-1: sup's own, inherited).
    stdio: [RawFd; 2],
}

impl Plan {
    fn new(
        argv: &[OsString],
        env: Vec<(OsString, OsString)>,
        cwd: &Path,
        sources: Vec<RawFd>,
        credentials: Option<&Credentials>,
        devnull: RawFd,
        pid_vars: &'static [&'static [u8]],
    ) -> Result<Plan, SpawnError> {
        let argv = argv
            .iter()
            .map(|a| cstring(a.as_bytes(), "an argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut entries = Vec::with_capacity(env.len() + 1);
        for (k, v) in env {
            let mut e = k.into_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            if e.contains(&0) {
                return Err(SpawnError::Nul {
                    what: "an environment variable",
                });
            }
            e.push(0);
            entries.push(e);
        }
        for prefix in pid_vars.iter().take(PID_VARS) {
            let mut entry = prefix.to_vec();
            entry.resize(prefix.len() + PID_DIGITS + 1, 0);
            entries.push(entry);
        }
        Ok(Plan {
            argv,
            env: entries,
            pid_vars,
            cwd: cstring(cwd.as_os_str().as_bytes(), "the directory")?,
            sources,
            creds: credentials.map(|c| (c.uid, c.gid, c.groups.clone())),
            devnull,
            // A helper (the hook's shell) gets TERM, which it turns into a
            // TERM to its whole process group (see `hook_script`).
            death_signal: libc::SIGTERM,
            extra: None,
            stdio: [-1, -1],
        })
    }

    fn fork_exec(mut self, program: &Path) -> Result<i32, SpawnError> {
        let path = cstring(program.as_os_str().as_bytes(), "the program path")?;
        let mut argv_ptrs: Vec<*const c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp: Vec<*mut c_char> = self.env.iter_mut().map(|e| e.as_mut_ptr().cast::<c_char>()).collect();
        // The last entries are the own-pid variables; the digits go right
        // after each prefix.
        let mut pid_digits = [std::ptr::null_mut::<u8>(); PID_VARS];
        let first = envp.len() - self.pid_vars.len().min(PID_VARS);
        for (k, prefix) in self.pid_vars.iter().take(PID_VARS).enumerate() {
            pid_digits[k] = envp[first + k].wrapping_add(prefix.len()).cast::<u8>();
        }
        envp.push(std::ptr::null_mut());
        let mut scratch: Vec<c_int> = vec![-1; self.sources.len()];
        // SAFETY: sigemptyset only writes the set we own.
        let empty_mask = unsafe {
            let mut set = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut set);
            set
        };
        let (groups_ptr, groups_len) = match &self.creds {
            Some((_, _, g)) => (g.as_ptr(), g.len()),
            None => (std::ptr::null(), 0),
        };
        let child = Child {
            path: path.as_ptr(),
            argv: argv_ptrs.as_ptr(),
            envp: envp.as_ptr().cast::<*const c_char>(),
            pid_digits,
            cwd: self.cwd.as_ptr(),
            sources: self.sources.as_ptr(),
            scratch: scratch.as_mut_ptr(),
            count: self.sources.len(),
            devnull: self.devnull,
            creds: self.creds.as_ref().map(|(u, g, _)| (*u, *g)),
            groups: groups_ptr,
            groups_len,
            empty_mask,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            death_signal: self.death_signal,
            extra: self.extra,
            stdio: self.stdio,
        };

        let (err_read, err_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
        let guard = BlockedSignals::block_handled().map_err(SpawnError::BlockSignals)?;
        // SAFETY: sup is single-threaded, so no lock can be held by another
        // thread at fork. The child branch runs only `Child::exec`, which uses
        // async-signal-safe calls on memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: we are the freshly forked child; see `Child::exec`.
            unsafe { child.exec(err_write.as_raw_fd()) }
        }
        drop(guard);
        drop(err_write);
        if pid < 0 {
            return Err(SpawnError::Fork(std::io::Error::last_os_error()));
        }
        // Keep the buffers the child pointed into alive until after fork
        // (the child has its own copy; this is for the reader).
        drop(scratch);
        drop(argv_ptrs);
        drop(envp);

        let mut report = [0u8; 8];
        let mut got = 0;
        while got < report.len() {
            match nix::unistd::read(&err_read, &mut report[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(SpawnError::ErrorPipe(e)),
            }
        }
        if got == 0 {
            return Ok(pid);
        }
        // The child failed before exec and is exiting: collect it now, so
        // that no zombie is left and the reaper never sees an unknown pid.
        loop {
            // SAFETY: waitpid on our own child with a null status pointer.
            let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            if r >= 0 || nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                break;
            }
        }
        let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        let stage = Stage::from_u32(stage);
        let path = match stage {
            Stage::Exec => Some(program.display().to_string()),
            Stage::Directory => Some(self.cwd.to_string_lossy().into_owned()),
            _ => None,
        };
        Err(SpawnError::Child {
            stage,
            path,
            error: std::io::Error::from_raw_os_error(errno),
        })
    }
}

/// Raw pointers into a [`Plan`], all the child touches.
struct Child {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// Where the child writes its pid's digits (null: unused).
    pid_digits: [*mut u8; PID_VARS],
    cwd: *const c_char,
    sources: *const RawFd,
    scratch: *mut c_int,
    count: usize,
    devnull: RawFd,
    creds: Option<(libc::uid_t, libc::gid_t)>,
    groups: *const libc::gid_t,
    groups_len: usize,
    empty_mask: libc::sigset_t,
    parent: libc::pid_t,
    death_signal: c_int,
    extra: Option<(RawFd, c_int)>,
    stdio: [RawFd; 2],
}

/// `close_range(2)` flag: mark CLOEXEC instead of closing (Linux 5.11).
#[cfg(target_os = "linux")]
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

impl Child {
    /// The child branch. Only async-signal-safe libc calls; the only memory
    /// written is the scratch fd array and the LISTEN_PID digits, both
    /// allocated before fork (this process has its own copy of them).
    ///
    /// # Safety
    /// Must be called only in the child right after `fork`, with every
    /// pointer in `self` valid (they point into the parent's `Plan`, which
    /// the child's copy of memory still holds).
    unsafe fn exec(&self, err_fd: RawFd) -> ! {
        let n = self.count as c_int;
        // Above the sockets and the extra fd's place.
        let first_free = (FIRST_SOCKET_FD as c_int + n).max(self.extra.map_or(0, |(_, to)| to + 1));
        // SAFETY: every call below is async-signal-safe and only reads or
        // writes memory prepared before fork; see the function's contract.
        unsafe {
            // The error pipe must survive the socket moves: put it above them.
            let err = libc::fcntl(err_fd, libc::F_DUPFD_CLOEXEC, first_free);
            if err < 0 {
                fail(err_fd, Stage::ErrorPipe);
            }
            if libc::setpgid(0, 0) != 0 {
                fail(err, Stage::ProcessGroup);
            }
            reset_signal_dispositions();
            if libc::dup2(self.devnull, 0) < 0 {
                fail(err, Stage::Stdin);
            }
            // The pipes' write ends are ≥ 3 (sup keeps 0-2 open) and no
            // socket source is 1 or 2: nothing is clobbered. dup2 clears
            // CLOEXEC on 1 and 2; the originals close at exec.
            for (target, source) in [(1, self.stdio[0]), (2, self.stdio[1])] {
                if source >= 0 && libc::dup2(source, target) < 0 {
                    fail(err, Stage::Output);
                }
            }
            for i in 0..self.count {
                let tmp = libc::fcntl(*self.sources.add(i), libc::F_DUPFD_CLOEXEC, first_free);
                if tmp < 0 {
                    fail(err, Stage::Sockets);
                }
                *self.scratch.add(i) = tmp;
            }
            // The extra fd is out of the way before any socket lands (its
            // source may sit where a socket goes).
            let extra = match self.extra {
                Some((from, to)) => {
                    let tmp = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, first_free);
                    if tmp < 0 {
                        fail(err, Stage::Sockets);
                    }
                    Some((tmp, to))
                }
                None => None,
            };
            for i in 0..self.count {
                // dup2 clears CLOEXEC on the target: exactly these survive exec.
                if libc::dup2(*self.scratch.add(i), FIRST_SOCKET_FD as c_int + i as c_int) < 0 {
                    fail(err, Stage::Sockets);
                }
            }
            if let Some((tmp, to)) = extra
                && libc::dup2(tmp, to) < 0
            {
                fail(err, Stage::Sockets);
            }
            #[cfg(target_os = "linux")]
            libc::syscall(
                libc::SYS_close_range,
                first_free as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if let Some((uid, gid)) = self.creds
                && (libc::setgroups(self.groups_len as _, self.groups) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                fail(err, Stage::Credentials);
            }
            // After setuid, which clears it. If sup died before this point
            // the signal would never come: check the parent is still there.
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, self.death_signal as libc::c_ulong, 0, 0, 0);
                if libc::getppid() != self.parent {
                    libc::_exit(1);
                }
            }
            if libc::chdir(self.cwd) != 0 {
                fail(err, Stage::Directory);
            }
            let pid = libc::getpid();
            for dst in self.pid_digits {
                if !dst.is_null() {
                    write_pid(dst, pid);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, &self.empty_mask, std::ptr::null_mut());
            libc::execve(self.path, self.argv, self.envp);
            fail(err, Stage::Exec)
        }
    }
}

/// Every signal back to SIG_DFL, in the child.
///
/// On Linux this uses the raw `rt_sigaction` system call: glibc's wrapper
/// refuses signals 32 and 33 (reserved for its threads), yet a sup started
/// by a process that ignores them would otherwise pass that on, since an
/// ignored disposition survives `execve`. An all-zero kernel `sigaction` is
/// SIG_DFL with no flags and an empty mask on every architecture.
///
/// # Safety
/// Child side of fork only.
unsafe fn reset_signal_dispositions() {
    #[cfg(target_os = "linux")]
    {
        // Larger than any architecture's kernel sigaction; the kernel reads
        // only its own size.
        let dfl = [0u64; 8];
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: rt_sigaction reads `dfl` and writes nothing (null old
                // action); 8 is the kernel's sigset size on Linux.
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        dfl.as_ptr(),
                        std::ptr::null_mut::<u8>(),
                        8usize,
                    )
                };
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    // SAFETY: sigaction with a zeroed struct whose handler is SIG_DFL.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..libc::NSIG {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Report (stage, errno) to the parent and exit: 126 when exec was refused
/// for permissions, 127 otherwise (the shell's convention).
///
/// # Safety
/// Child side of fork only.
unsafe fn fail(err_fd: RawFd, stage: Stage) -> ! {
    // SAFETY: errno location, write and _exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        let s = (stage as u32).to_ne_bytes();
        let e = errno.to_ne_bytes();
        let mut i = 0;
        while i < 4 {
            msg[i] = s[i];
            msg[4 + i] = e[i];
            i += 1;
        }
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        let code = if stage == Stage::Exec && errno == libc::EACCES {
            126
        } else {
            127
        };
        libc::_exit(code)
    }
}

/// Write `pid` as decimal digits and a NUL at `dst`, without allocating.
///
/// # Safety
/// `dst` must have room for `PID_DIGITS + 1` bytes.
unsafe fn write_pid(dst: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = pid.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    // SAFETY: the caller guarantees room for PID_DIGITS + 1 bytes; len <= PID_DIGITS.
    unsafe {
        std::ptr::copy_nonoverlapping(digits.as_ptr().add(i), dst, len);
        *dst.add(len) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_digits() {
        for pid in [1, 9, 10, 4242, i32::MAX] {
            let mut buf = [0xffu8; PID_DIGITS + 1];
            // SAFETY: buf has PID_DIGITS + 1 bytes.
            unsafe { write_pid(buf.as_mut_ptr(), pid) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), pid.to_string());
        }
    }
}

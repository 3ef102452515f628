//! What a worker runs: its directory, environment, program and arguments,
//! resolved and checked once per generation by [`prepare`].
//!
//! These functions read the file system (symlinks, PATH, modes) but change
//! nothing. The shell prepares before the first spawn of each generation;
//! `--check` (so startup, and a hot restart's preflight) runs the very same
//! [`prepare`], so what the check passes, a spawn does not refuse.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bind::BindSpec;
use crate::files::os_error;

/// Variables sup itself may have been given that belong to sup, not to its
/// workers: its own socket activation, notify socket and watchdog, and any
/// protocol variable sup sets itself.
pub const STRIPPED: [&str; 12] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "SUP_WORKER",
    "SUP_GENERATION",
    "SUP_PID",
    "PWD",
    "SERVER_STARTER_GENERATION",
    // The hot restart's handoff (`handoff::VAR`), checked by a test there.
    "SUP_HANDOFF",
];
const STRIPPED_PREFIXES: [&str; 2] = ["EINHORN_", "SERVER_STARTER_"];

/// Room kept for the variables each worker gets on top of the prepared
/// environment (`LISTEN_*`, `EINHORN_*`, `SUP_*`, `NOTIFY_SOCKET`, …).
const PER_WORKER_ROOM: usize = 4096;
/// The kernel's limit on one argument or variable (`MAX_ARG_STRLEN`).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Who the workers run as, for the permission checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// `user app` or `sup's user`, for messages.
    pub name: String,
}

impl RunAs {
    /// sup's own effective user and groups.
    pub fn current() -> RunAs {
        RunAs {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
            name: "sup's user".to_string(),
        }
    }

    /// Whether this user may read (4), write (2) or execute/search (1) a
    /// file with metadata `m`, by its mode bits. A file with an ACL is
    /// given the benefit of the doubt: only the kernel evaluates those.
    fn may(&self, m: &std::fs::Metadata, path: &Path, bit: u32) -> bool {
        if self.uid == 0 {
            return bit != 1 || m.is_dir() || m.permissions().mode() & 0o111 != 0;
        }
        let shift = if m.uid() == self.uid {
            6
        } else if m.gid() == self.gid || self.groups.contains(&m.gid()) {
            3
        } else {
            0
        };
        (m.permissions().mode() >> shift) & bit != 0 || has_acl(path)
    }
}

fn has_acl(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and outlive the call; a null
    // buffer of size 0 asks only for the attribute's size.
    let n = unsafe { libc::getxattr(c.as_ptr(), c"system.posix_acl_access".as_ptr(), std::ptr::null_mut(), 0) };
    n > 0
}

/// The worker directory cannot be used. Shown whole (with `{}`) by callers
/// outside this module, so the OS error is part of the message.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("does not resolve: {}", os_error(.0))]
    Unresolved(std::io::Error),
    #[error("cannot read the current directory: {}", os_error(.0))]
    Current(std::io::Error),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
}

/// A directory on the way down that the workers' user cannot enter.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{}: {}", dir.display(), os_error(error))]
    Unreadable { dir: PathBuf, error: std::io::Error },
    #[error("{}: {who} (uid {uid}) may not enter it (mode {mode:o})", dir.display())]
    Denied {
        dir: PathBuf,
        who: String,
        uid: u32,
        mode: u32,
    },
}

/// Which program a [`ProgramError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Command,
    /// A script's `#!` interpreter.
    Interpreter,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Command => "command",
            Role::Interpreter => "interpreter",
        })
    }
}

/// The command, or its `#!` interpreter, cannot be run as the workers' user.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("command `{name}` not found in PATH ({search})")]
    NotInPath { name: String, search: String },
    #[error("{role} {}: {}", path.display(), os_error(error))]
    Missing {
        role: Role,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{role} {}: {why}", path.display())]
    Unreachable {
        role: Role,
        path: PathBuf,
        why: SearchError,
    },
    #[error("{role} {} is not a file", path.display())]
    NotAFile { role: Role, path: PathBuf },
    #[error("{role} {} is not executable by {who} (uid {uid}, mode {mode:o})", path.display())]
    NotExecutable {
        role: Role,
        path: PathBuf,
        who: String,
        uid: u32,
        mode: u32,
    },
    #[error("{role} {} is a script that {who} (uid {uid}) may not read (mode {mode:o})", path.display())]
    Unreadable {
        role: Role,
        path: PathBuf,
        who: String,
        uid: u32,
        mode: u32,
    },
    #[error("{role} {} has an empty #! line", path.display())]
    EmptyShebang { role: Role, path: PathBuf },
    /// The script's interpreter is what fails (`command X: #! interpreter Y …`).
    #[error("{role} {}: #! {interpreter}", path.display())]
    Interpreter {
        role: Role,
        path: PathBuf,
        interpreter: Box<ProgramError>,
    },
}

/// The arguments and environment do not fit what `execve` takes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecSizeError {
    #[error("an argument is {} KiB, over the kernel's {} KiB for one", .len / 1024, MAX_ARG_STRLEN / 1024)]
    Argument { len: usize },
    #[error(
        "environment variable {name} is {} KiB, over the kernel's {} KiB for one",
        .len / 1024,
        MAX_ARG_STRLEN / 1024
    )]
    Variable { name: String, len: usize },
    #[error(
        "the command's arguments and environment take {} KiB, over the {} KiB exec allows (\"argument list too long\"); {vars} variables",
        .total / 1024,
        .arg_max / 1024
    )]
    Total { total: usize, arg_max: usize, vars: usize },
}

/// An argument's `{fd:…}` names a socket there is not.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceholderError {
    #[error("argument `{arg}` names socket {index}, but there are {count} --bind sockets (counted from 0)")]
    NoSuchIndex { arg: String, index: usize, count: usize },
    #[error("argument `{arg}` names socket `{name}`, but no --bind has that name")]
    NoSuchName { arg: String, name: String },
    #[error("argument `{arg}` needs a --bind socket")]
    NoSockets { arg: String },
}

/// Every worker of a generation runs this: resolved and checked once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    pub cwd: PathBuf,
    /// sup's environment without its own variables, plus the env file.
    pub env: Vec<(OsString, OsString)>,
    pub program: PathBuf,
    /// The command with its `{fd}` placeholders replaced.
    pub argv: Vec<OsString>,
}

/// The [`Prepared`] command of the generation being spawned, kept between
/// its spawns so that [`prepare`] runs once per generation, not once per
/// worker. A failed preparation is not kept: the next attempt, after the
/// backoff, looks again.
#[derive(Debug, Default)]
pub struct PreparedCache {
    kept: Option<(u64, Prepared)>,
    /// The first preparation of each recent generation, pinned as it was
    /// when the generation started (resolved directory, command, the env
    /// file's contents): what a rollback runs again.
    pinned: std::collections::BTreeMap<u64, Prepared>,
    /// Generations that run another's pinned preparation (rollbacks).
    like: std::collections::BTreeMap<u64, u64>,
}

/// How many generations' preparations are kept pinned.
const PINNED: usize = 4;

/// What a cache hands the next sup image: the pinned preparations and the
/// generations that run another's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pins {
    pub pinned: Vec<(u64, Prepared)>,
    pub like: Vec<(u64, u64)>,
}

impl PreparedCache {
    /// What a worker of `generation` runs: the kept preparation if it is
    /// `generation`'s and `release` (the directory as resolved for this
    /// spawn, so that a `current` symlink re-pointed since is followed) is
    /// still its directory; otherwise `prepare()` afresh, which also reports
    /// a directory that no longer resolves.
    pub fn get<E>(
        &mut self,
        generation: u64,
        release: Option<PathBuf>,
        prepare: impl FnOnce() -> Result<Prepared, E>,
    ) -> Result<&Prepared, E> {
        if let Some(like) = self.like.get(&generation).copied()
            && self.pinned.contains_key(&like)
        {
            // A rollback: the pinned release, not whatever `current` is now.
            return Ok(&self.pinned[&like]);
        }
        let prepared = match (self.kept.take(), release) {
            (Some((g, p)), Some(dir)) if g == generation && p.cwd == dir => p,
            _ => prepare()?,
        };
        if let std::collections::btree_map::Entry::Vacant(e) = self.pinned.entry(generation) {
            e.insert(prepared.clone());
            self.prune(generation);
        }
        Ok(&self.kept.insert((generation, prepared)).1)
    }

    /// The release directory `generation` was pinned to, if it is known.
    pub fn release(&self, generation: u64) -> Option<&Path> {
        let g = self.like.get(&generation).copied().unwrap_or(generation);
        self.pinned.get(&g).map(|p| p.cwd.as_path())
    }

    /// Generation `generation` runs `like`'s pinned preparation (a rollback);
    /// false if that one is not pinned.
    pub fn pin_like(&mut self, generation: u64, like: u64) -> bool {
        let like = self.like.get(&like).copied().unwrap_or(like);
        if !self.pinned.contains_key(&like) {
            return false;
        }
        self.like.insert(generation, like);
        self.prune(generation);
        true
    }

    /// Keep what the last few generations run, and nothing older: a
    /// rollback goes one step back, so older pins are never needed again.
    fn prune(&mut self, newest: u64) {
        let oldest = newest.saturating_sub(PINNED as u64);
        self.like.retain(|g, _| *g >= oldest);
        let keep: Vec<u64> = self.like.values().copied().collect();
        self.pinned.retain(|g, _| *g >= oldest || keep.contains(g));
    }

    /// For the next sup image.
    pub fn pins(&self) -> Pins {
        Pins {
            pinned: self.pinned.iter().map(|(g, p)| (*g, p.clone())).collect(),
            like: self.like.iter().map(|(a, b)| (*a, *b)).collect(),
        }
    }

    /// What the previous image pinned.
    pub fn restore(pins: Pins) -> PreparedCache {
        PreparedCache {
            kept: None,
            pinned: pins.pinned.into_iter().collect(),
            like: pins.like.into_iter().collect(),
        }
    }
}

/// What [`prepare`] needs from the configuration.
pub struct Recipe<'a> {
    pub directory: Option<&'a Path>,
    pub env_file: Option<&'a Path>,
    pub command: &'a [OsString],
    pub binds: &'a [BindSpec],
    pub run_as: &'a RunAs,
}

/// Resolve and check everything a spawn needs, as the workers' user would
/// meet it: the directory (every component searchable), the env file (size,
/// NUL bytes, syntax), the program (found, executable, its `#!`
/// interpreter too), and the size of the arguments and environment against
/// the kernel's exec limit. Every problem found, one line each.
pub fn prepare(recipe: &Recipe<'_>) -> Result<Prepared, Vec<String>> {
    let who = recipe.run_as;
    let shown_dir = |why: String| match recipe.directory {
        Some(d) => format!("--directory {}: {why}", d.display()),
        None => why,
    };
    let cwd = resolve_directory(recipe.directory).map_err(|why| vec![shown_dir(why.to_string())])?;
    if let Err(why) = searchable(&cwd, who) {
        return Err(vec![shown_dir(why.to_string())]);
    }
    let mut errors = Vec::new();
    let mut env = base_env();
    if let Some(file) = recipe.env_file {
        let path = cwd.join(file);
        match crate::envfile::read(&path) {
            Ok(vars) => {
                let mut at: HashMap<OsString, usize> =
                    env.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
                for (k, v) in vars {
                    let (k, v) = (OsString::from(k), OsString::from(v));
                    match at.get(&k) {
                        Some(&i) => env[i].1 = v,
                        None => {
                            at.insert(k.clone(), env.len());
                            env.push((k, v));
                        }
                    }
                }
            }
            Err(why) => errors.push(format!("--env-file {}: {why}", file.display())),
        }
    }
    let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
    let program = match recipe.command.first() {
        Some(p) => {
            match resolve_program(p, &cwd, path_var).and_then(|prog| runnable(&prog, &cwd, who).map(|()| prog)) {
                Ok(prog) => Some(prog),
                Err(e) => {
                    errors.push(e.to_string());
                    None
                }
            }
        }
        None => {
            errors.push("no command".to_string());
            None
        }
    };
    let argv = recipe
        .command
        .iter()
        .map(|arg| expand_placeholders(arg, recipe.binds))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| errors.push(e.to_string()))
        .unwrap_or_default();
    if let Err(e) = fits_exec(&argv, &env) {
        errors.push(e.to_string());
    }
    match program {
        Some(program) if errors.is_empty() => Ok(Prepared {
            cwd,
            env,
            program,
            argv,
        }),
        _ => Err(errors),
    }
}

/// sup's environment without what belongs to sup itself.
pub fn base_env() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            !STRIPPED.contains(&k.as_ref()) && !STRIPPED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .collect()
}

/// Every directory from `/` down to `dir` can be searched by `who`.
fn searchable(dir: &Path, who: &RunAs) -> Result<(), SearchError> {
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for d in chain {
        let m = std::fs::metadata(d).map_err(|error| SearchError::Unreadable {
            dir: d.to_path_buf(),
            error,
        })?;
        if !who.may(&m, d, 1) {
            return Err(SearchError::Denied {
                dir: d.to_path_buf(),
                who: who.name.clone(),
                uid: who.uid,
                mode: m.permissions().mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// The kernel would execute `program` for `who`: reachable, executable, and
/// a script's `#!` interpreter too (a script must also be readable).
fn runnable(program: &Path, cwd: &Path, who: &RunAs) -> Result<(), ProgramError> {
    runnable_at(program, cwd, who, 0)
}

fn runnable_at(program: &Path, cwd: &Path, who: &RunAs, depth: usize) -> Result<(), ProgramError> {
    let role = if depth == 0 { Role::Command } else { Role::Interpreter };
    let path = || program.to_path_buf();
    let m = std::fs::metadata(program).map_err(|error| ProgramError::Missing {
        role,
        path: path(),
        error,
    })?;
    if let Some(parent) = program.parent() {
        searchable(parent, who).map_err(|why| ProgramError::Unreachable {
            role,
            path: path(),
            why,
        })?;
    }
    let mode = m.permissions().mode() & 0o7777;
    if !m.is_file() {
        return Err(ProgramError::NotAFile { role, path: path() });
    }
    if !who.may(&m, program, 1) {
        return Err(ProgramError::NotExecutable {
            role,
            path: path(),
            who: who.name.clone(),
            uid: who.uid,
            mode,
        });
    }
    let mut head = [0u8; 256];
    let n = {
        use std::io::Read;
        // sup may be unable to read what only the workers' user can; the
        // exec bit was the check that matters then.
        match std::fs::File::open(program) {
            Ok(mut f) => f.read(&mut head).unwrap_or(0),
            Err(_) => return Ok(()),
        }
    };
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return Ok(());
    };
    if !who.may(&m, program, 4) {
        return Err(ProgramError::Unreadable {
            role,
            path: path(),
            who: who.name.clone(),
            uid: who.uid,
            mode,
        });
    }
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .ok_or_else(|| ProgramError::EmptyShebang { role, path: path() })?;
    let interpreter = cwd.join(OsStr::from_bytes(interpreter));
    // The kernel follows up to 4 levels of interpreters; 2 is plenty here.
    if depth >= 2 {
        return Ok(());
    }
    runnable_at(&interpreter, cwd, who, depth + 1).map_err(|why| ProgramError::Interpreter {
        role,
        path: path(),
        interpreter: Box::new(why),
    })
}

/// The arguments and environment (and room for the per-worker variables)
/// fit what `execve` takes: each string under 128 KiB, all of them under
/// the system's `ARG_MAX`.
fn fits_exec(argv: &[OsString], env: &[(OsString, OsString)]) -> Result<(), ExecSizeError> {
    let arg_max = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .map_or(128 * 1024, |n| n as usize);
    let pointer = std::mem::size_of::<usize>();
    let mut total = PER_WORKER_ROOM;
    for a in argv {
        if a.len() >= MAX_ARG_STRLEN {
            return Err(ExecSizeError::Argument { len: a.len() });
        }
        total += a.len() + 1 + pointer;
    }
    for (k, v) in env {
        let len = k.len() + 1 + v.len();
        if len >= MAX_ARG_STRLEN {
            return Err(ExecSizeError::Variable {
                name: k.to_string_lossy().into_owned(),
                len,
            });
        }
        total += len + 1 + pointer;
    }
    if total > arg_max {
        return Err(ExecSizeError::Total {
            total,
            arg_max,
            vars: env.len(),
        });
    }
    Ok(())
}

/// The first fd a worker's sockets occupy (`SD_LISTEN_FDS_START`).
pub const FIRST_SOCKET_FD: usize = 3;

/// Resolve the worker directory: `--directory` followed through every
/// symlink now (a Capistrano `current` that was re-pointed resolves to the
/// new release), or sup's own working directory.
pub fn resolve_directory(dir: Option<&Path>) -> Result<PathBuf, DirectoryError> {
    let resolved = match dir {
        Some(d) => std::fs::canonicalize(d).map_err(DirectoryError::Unresolved)?,
        None => std::env::current_dir().map_err(DirectoryError::Current)?,
    };
    if !resolved.is_dir() {
        return Err(DirectoryError::NotADirectory(resolved));
    }
    Ok(resolved)
}

/// Resolve the program: a name without a slash through PATH, a relative
/// path against the worker's directory, an absolute path as it is.
pub fn resolve_program(program: &OsStr, cwd: &Path, path_var: Option<&OsStr>) -> Result<PathBuf, ProgramError> {
    if program.as_bytes().contains(&b'/') {
        // `components()` drops `.` segments: report /srv/app/bin/run, not /srv/app/./bin/run.
        let path: PathBuf = cwd.join(program).components().collect();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(ProgramError::NotAFile {
                role: Role::Command,
                path,
            }),
            Err(error) => Err(ProgramError::Missing {
                role: Role::Command,
                path,
                error,
            }),
        }
    } else {
        let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
        which::which_in(program, Some(path_var), cwd).map_err(|_| ProgramError::NotInPath {
            name: Path::new(program).display().to_string(),
            search: Path::new(path_var).display().to_string(),
        })
    }
}

/// Replace `{fd}`, `{fd:N}` and `{fd:NAME}` inside an argument with the fd
/// number the worker will find that socket at. Other braces are left alone.
pub fn expand_placeholders(arg: &OsStr, binds: &[BindSpec]) -> Result<OsString, PlaceholderError> {
    let bytes = arg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(start) = find(rest, b"{fd") {
        let after = &rest[start + 3..];
        let (index, consumed) = if after.first() == Some(&b'}') {
            (Some(0), 1)
        } else if after.first() == Some(&b':') {
            let Some(end) = after.iter().position(|&b| b == b'}') else {
                out.extend_from_slice(&rest[..start + 3]);
                rest = after;
                continue;
            };
            let key = String::from_utf8_lossy(&after[1..end]).into_owned();
            let index = match key.parse::<usize>() {
                Ok(n) if n < binds.len() => n,
                Ok(index) => {
                    return Err(PlaceholderError::NoSuchIndex {
                        arg: arg.to_string_lossy().into_owned(),
                        index,
                        count: binds.len(),
                    });
                }
                Err(_) => binds
                    .iter()
                    .position(|b| b.name == key)
                    .ok_or_else(|| PlaceholderError::NoSuchName {
                        arg: arg.to_string_lossy().into_owned(),
                        name: key.clone(),
                    })?,
            };
            (Some(index), end + 1)
        } else {
            (None, 0)
        };
        match index {
            Some(i) => {
                if binds.is_empty() {
                    return Err(PlaceholderError::NoSockets {
                        arg: arg.to_string_lossy().into_owned(),
                    });
                }
                out.extend_from_slice(&rest[..start]);
                out.extend_from_slice((FIRST_SOCKET_FD + i).to_string().as_bytes());
                rest = &after[consumed..];
            }
            None => {
                out.extend_from_slice(&rest[..start + 3]);
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
    Ok(OsString::from_vec(out))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binds() -> Vec<BindSpec> {
        vec![
            BindSpec::parse("127.0.0.1:0?name=web").unwrap(),
            BindSpec::parse("unix:/tmp/x.sock?name=admin").unwrap(),
        ]
    }

    fn expand(s: &str) -> Result<String, String> {
        expand_placeholders(OsStr::new(s), &binds())
            .map(|o| o.into_string().unwrap())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn placeholders() {
        assert_eq!(expand("{fd}").unwrap(), "3");
        assert_eq!(expand("--fd={fd:1}").unwrap(), "--fd=4");
        assert_eq!(expand("{fd:admin},{fd:web}").unwrap(), "4,3");
        assert_eq!(expand("{fdx} {f} {fd:").unwrap(), "{fdx} {f} {fd:");
        assert_eq!(expand("plain").unwrap(), "plain");
        assert!(expand("{fd:2}").unwrap_err().contains("there are 2 --bind sockets"));
        assert!(expand("{fd:nope}").unwrap_err().contains("no --bind has that name"));
        assert_eq!(
            expand_placeholders(OsStr::new("{fd}"), &[]).unwrap_err(),
            PlaceholderError::NoSockets { arg: "{fd}".into() }
        );
        assert_eq!(
            expand_placeholders(OsStr::new("{fd:7}"), &binds()).unwrap_err(),
            PlaceholderError::NoSuchIndex {
                arg: "{fd:7}".into(),
                index: 7,
                count: 2
            }
        );
    }

    #[test]
    fn programs() {
        let tmp = std::env::temp_dir();
        assert!(resolve_program(OsStr::new("sh"), &tmp, None).unwrap().ends_with("sh"));
        let e = resolve_program(OsStr::new("no-such-program-xyz"), &tmp, Some(OsStr::new("/usr/bin"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "command `no-such-program-xyz` not found in PATH (/usr/bin)"
        );
        let e = resolve_program(OsStr::new("./nope"), Path::new("/"), None).unwrap_err();
        assert_eq!(e.to_string(), "command /nope: no such file or directory");
        assert!(
            matches!(&e, ProgramError::Missing { role: Role::Command, error, .. } if error.kind() == std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn directories() {
        assert!(resolve_directory(None).is_ok());
        let e = resolve_directory(Some(Path::new("/no/such/release"))).unwrap_err();
        assert_eq!(e.to_string(), "does not resolve: no such file or directory");
        assert!(matches!(e, DirectoryError::Unresolved(_)));
    }

    #[test]
    fn a_generation_is_prepared_once_per_release() {
        let prepared = |cwd: &str| Prepared {
            cwd: PathBuf::from(cwd),
            env: Vec::new(),
            program: PathBuf::from("/bin/true"),
            argv: Vec::new(),
        };
        let calls = std::cell::Cell::new(0);
        let fresh = |cwd: &'static str| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                Ok::<_, String>(prepared(cwd))
            }
        };
        let mut cache = PreparedCache::default();
        let r1 = || Some(PathBuf::from("/srv/r1"));
        assert_eq!(cache.get(1, r1(), fresh("/srv/r1")).unwrap().cwd, Path::new("/srv/r1"));
        cache.get(1, r1(), fresh("/srv/r1")).unwrap();
        assert_eq!(calls.get(), 1, "same generation, same release: kept");
        cache.get(2, r1(), fresh("/srv/r1")).unwrap();
        assert_eq!(calls.get(), 2, "a new generation is prepared");
        let r2 = cache.get(2, Some(PathBuf::from("/srv/r2")), fresh("/srv/r2")).unwrap();
        assert_eq!(
            (calls.get(), r2.cwd.as_path()),
            (3, Path::new("/srv/r2")),
            "re-pointed release"
        );
        cache.get(2, None, fresh("/srv/r2")).unwrap();
        assert_eq!(
            calls.get(),
            4,
            "a release that does not resolve is prepared (and reported) again"
        );
        assert_eq!(
            cache
                .get(2, r1(), || Err::<Prepared, _>("no such program"))
                .unwrap_err(),
            "no such program"
        );
        cache.get(2, r1(), fresh("/srv/r1")).unwrap();
        assert_eq!(calls.get(), 5, "a failed preparation is not kept");
    }
}

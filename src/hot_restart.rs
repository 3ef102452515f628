//! The hot restart's last step: sup re-executes itself in place.
//!
//! Same pid, so the pidfile and systemd's MAINPID stay true. The program is
//! the one sup was started as, re-resolved now (an upgraded binary at the
//! same path takes over), with the same arguments, in the freshly resolved
//! `--directory` (so relative paths in the arguments are read from the new
//! release). Only the sockets named in the handoff cross the exec — the
//! listeners, the notify socket, the Einhorn socket: their CLOEXEC flag is
//! cleared just before it; everything else sup holds is CLOEXEC by
//! construction and closes. Handled signals are blocked first: across
//! `execve` a caught signal reverts to its default action (USR2's kills),
//! while a blocked one stays pending until the new image has installed its
//! handlers and unblocks. If `execve` fails, every step is undone and sup
//! carries on in the old image.
//!
//! This module must not decide anything: the core has already stopped the
//! workers when it asks for the exec.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::handoff::{self, Handoff};
use crate::signals::BlockedSignals;
use std::os::fd::RawFd;

/// How sup was started, to re-resolve at every hot restart: argv[0] made
/// absolute against the directory sup started in (sup changes directory
/// later), or a bare name to look up in PATH then.
pub fn exe_spec(argv0: &OsStr, startup_cwd: &Path) -> String {
    let path = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        startup_cwd
            .join(path)
            .components()
            .collect::<PathBuf>()
            .display()
            .to_string()
    } else {
        path.display().to_string()
    }
}

/// Why the new image cannot be started; the old one serves on.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0} is not a file")]
    NotAFile(String),
    #[error("{spec}: {}", crate::files::os_error(.error))]
    Missing { spec: String, error: std::io::Error },
    #[error("`{0}` is no longer in PATH")]
    NotInPath(String),
    #[error("an argument or variable contains a NUL byte")]
    Nul,
    #[error("--directory {}: {why}", .directory.display())]
    Directory { directory: PathBuf, why: String },
    #[error("cannot block signals: {0}")]
    Signals(nix::Error),
    #[error("cannot change into {}: {error}", .directory.display())]
    Chdir { directory: PathBuf, error: std::io::Error },
    #[error("cannot execute {}: {}", .program.display(), crate::files::os_error(.error))]
    Exec { program: PathBuf, error: std::io::Error },
}

/// The program to run now for `spec`.
pub fn resolve_exe(spec: &str) -> Result<PathBuf, ExecError> {
    if spec.contains('/') {
        let path = PathBuf::from(spec);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(ExecError::NotAFile(spec.to_string())),
            Err(error) => Err(ExecError::Missing {
                spec: spec.to_string(),
                error,
            }),
        }
    } else {
        which::which(spec).map_err(|_| ExecError::NotInPath(spec.to_string()))
    }
}

/// sup's own arguments (without argv[0]).
pub fn own_args() -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

fn cstring(bytes: &[u8]) -> Result<CString, ExecError> {
    CString::new(bytes).map_err(|_| ExecError::Nul)
}

/// Replace this process with a new sup image. Returns only on failure,
/// with the reason, having undone everything.
pub fn reexec(handoff: &Handoff, fds: &[RawFd], directory: Option<&Path>) -> String {
    match try_reexec(handoff, fds, directory) {
        Ok(never) => match never {},
        Err(e) => e.to_string(),
    }
}

enum Never {}

fn try_reexec(handoff: &Handoff, fds: &[RawFd], directory: Option<&Path>) -> Result<Never, ExecError> {
    let exe = resolve_exe(&handoff.exe)?;
    let cwd = match directory {
        Some(d) => Some(
            crate::command::resolve_directory(Some(d)).map_err(|why| ExecError::Directory {
                directory: d.to_path_buf(),
                why: why.to_string(),
            })?,
        ),
        None => None,
    };
    let path = cstring(exe.as_os_str().as_bytes())?;
    let mut argv = vec![cstring(
        std::env::args_os()
            .next()
            .unwrap_or_else(|| exe.clone().into())
            .as_bytes(),
    )?];
    for a in own_args() {
        argv.push(cstring(a.as_bytes())?);
    }
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        // systemd's socket activation variables were for the first image:
        // its sockets now travel in the handoff.
        let activation = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"].iter().any(|a| k == *a);
        if k != handoff::VAR && !activation {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            env.push(cstring(&e)?);
        }
    }
    env.push(cstring(format!("{}={}", handoff::VAR, handoff.encode()).as_bytes())?);
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let previous_cwd = std::env::current_dir().ok();

    let guard = BlockedSignals::block_handled().map_err(ExecError::Signals)?;
    for fd in fds {
        // SAFETY: clearing FD_CLOEXEC on a socket sup owns; the only place
        // besides a worker's child branch where CLOEXEC is cleared.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) };
    }
    if let Some(dir) = &cwd
        && let Err(e) = std::env::set_current_dir(dir)
    {
        restore(fds, None);
        drop(guard);
        return Err(ExecError::Chdir {
            directory: dir.clone(),
            error: e,
        });
    }
    // SAFETY: every pointer refers to a NUL-terminated string that lives
    // until this call returns; both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    let err = std::io::Error::last_os_error();
    restore(fds, previous_cwd.as_deref());
    drop(guard);
    Err(ExecError::Exec {
        program: exe,
        error: err,
    })
}

/// Undo the exec preparations after a failed exec.
fn restore(fds: &[i32], cwd: Option<&Path>) {
    for fd in fds {
        // SAFETY: setting FD_CLOEXEC back on sockets sup owns.
        unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if let Some(dir) = cwd {
        let _ = std::env::set_current_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_specs() {
        assert_eq!(exe_spec(OsStr::new("sup"), Path::new("/srv")), "sup");
        assert_eq!(
            exe_spec(OsStr::new("./bin/sup"), Path::new("/srv/app")),
            "/srv/app/bin/sup"
        );
        assert_eq!(exe_spec(OsStr::new("/usr/bin/sup"), Path::new("/srv")), "/usr/bin/sup");
        assert!(resolve_exe("sh").is_ok());
        let missing = resolve_exe("/no/such/sup").unwrap_err();
        assert!(matches!(missing, ExecError::Missing { .. }));
        assert!(missing.to_string().contains("no such file"), "{missing}");
    }
}

//! sup's private runtime directory, where the notify socket and the Einhorn
//! command socket live as files.
//!
//! Why files and not abstract addresses: several widely used sd_notify
//! clients can only connect to a path — Ruby's `sd_notify` gem (so Debian's
//! Puma exits at boot), Puma's and Sidekiq's vendored copies, Rust's
//! `sd-notify` crate — because systemd itself always gives services one
//! (`/run/systemd/notify`). The abstract namespace has no permissions either:
//! any local user could bind a predictable name first.
//!
//! The directory is made by `mkdtemp` (a random name, mode 0700, never an
//! entry that already exists), so another user can neither predict nor
//! pre-create it, under `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR`, else
//! the temp directory — the first where it can be made with a socket path
//! that fits `sun_path`. When workers run as another user (`--user`) it is
//! given to that user, who must be able to reach the sockets in it.
//!
//! It is removed when its [`RuntimeDir`] is dropped: on every way out of sup
//! but SIGKILL. A hot restart's `execve` runs no destructor, so the directory
//! and its sockets pass to the next image, which adopts them by path.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes, the terminating NUL included.
const SUN_PATH_MAX: usize = 107;
/// The name mkdtemp completes (six random characters).
const TEMPLATE: &str = "sup.XXXXXX";
/// The longest file name sup puts in the directory (the Einhorn socket's).
pub const LONGEST_ENTRY: &str = "einhorn.sock";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error(
        "cannot make a private directory for the notify socket ({tried}); set RUNTIME_DIRECTORY or TMPDIR to a writable directory with a short path, or use --notify-socket abstract"
    )]
    Create { tried: String },
    #[error("cannot give {} to the workers' user", path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a handed-over directory, or a socket in it (notify, Einhorn), is
/// not adopted: the caller logs it and makes a new one.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("{}: {error}", path.display())]
    Inspect { path: PathBuf, error: std::io::Error },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} belongs to uid {uid}", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is open to others (mode {mode:o})", path.display())]
    OpenToOthers { path: PathBuf, mode: u32 },
    /// The fd failed the handoff's checks (not a unix socket of that kind,
    /// not bound where the handoff says).
    #[error("{0}")]
    Handed(String),
    #[error("fd {fd}: {}", crate::files::os_error(error))]
    Fd { fd: i32, error: std::io::Error },
}

/// The private directory; removed on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Make a fresh directory, owned by `owner` (uid, gid) when given.
    pub fn create(owner: Option<(u32, u32)>) -> Result<RuntimeDir, RuntimeDirError> {
        let mut tried = Vec::new();
        for base in candidates() {
            let room = base.as_os_str().len() + 1 + TEMPLATE.len() + 1 + LONGEST_ENTRY.len();
            if room > SUN_PATH_MAX {
                tried.push(format!("{}: path too long for a socket", base.display()));
                continue;
            }
            match mkdtemp(&base) {
                Ok(path) => {
                    let dir = RuntimeDir { path };
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::chown(&dir.path, Some(uid), Some(gid)).map_err(|source| {
                            RuntimeDirError::Chown {
                                path: dir.path.clone(),
                                source,
                            }
                        })?;
                    }
                    return Ok(dir);
                }
                Err(e) => tried.push(format!("{}: {}", base.display(), crate::files::os_error(&e))),
            }
        }
        Err(RuntimeDirError::Create {
            tried: tried.join("; "),
        })
    }

    /// Take over the directory a previous sup image made, after checking it
    /// is still what sup made: a real directory (not a link), owned by sup's
    /// user or the workers', closed to everyone else.
    pub fn adopt(path: &Path, owner: Option<(u32, u32)>) -> Result<RuntimeDir, AdoptError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).map_err(|error| AdoptError::Inspect {
            path: path.to_path_buf(),
            error,
        })?;
        if !meta.file_type().is_dir() {
            return Err(AdoptError::NotADirectory(path.to_path_buf()));
        }
        let me = nix::unistd::Uid::effective().as_raw();
        if meta.uid() != me && Some(meta.uid()) != owner.map(|o| o.0) {
            return Err(AdoptError::Owner {
                path: path.to_path_buf(),
                uid: meta.uid(),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(AdoptError::OpenToOthers {
                path: path.to_path_buf(),
                mode: meta.mode() & 0o777,
            });
        }
        Ok(RuntimeDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // remove_dir_all does not follow links inside the directory.
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The address of one of sup's own unix sockets (notify, Einhorn): a file,
/// or a Linux abstract name. Displayed as workers see it: the path, or
/// `@name` as in systemd's `NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    Path(PathBuf),
    Abstract(String),
}

impl UnixName {
    /// An abstract name nobody can guess ahead of time (the abstract
    /// namespace has no permissions: a predictable name could be taken).
    pub fn random_abstract(what: &str) -> UnixName {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        UnixName::Abstract(format!("sup/{}/{what}/{:016x}", std::process::id(), h.finish()))
    }

    /// Read back what [`Display`](std::fmt::Display) wrote.
    pub fn parse(text: &str) -> UnixName {
        match text.strip_prefix('@') {
            Some(name) => UnixName::Abstract(name.to_string()),
            None => UnixName::Path(PathBuf::from(text)),
        }
    }

    pub fn is_abstract(&self) -> bool {
        matches!(self, UnixName::Abstract(_))
    }

    pub fn to_addr(&self) -> std::io::Result<nix::sys::socket::UnixAddr> {
        match self {
            UnixName::Path(p) => Ok(nix::sys::socket::UnixAddr::new(p.as_path())?),
            UnixName::Abstract(n) => Ok(nix::sys::socket::UnixAddr::new_abstract(n.as_bytes())?),
        }
    }

    /// Whether `addr` (from getsockname) is this name.
    pub fn is(&self, addr: &nix::sys::socket::UnixAddr) -> bool {
        match self {
            UnixName::Path(p) => addr.path() == Some(p.as_path()),
            UnixName::Abstract(n) => addr.as_abstract() == Some(n.as_bytes()),
        }
    }
}

impl std::fmt::Display for UnixName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "{}", p.display()),
            UnixName::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

/// Where to try, in order: systemd's `RuntimeDirectory=` (the first of a
/// `:`-separated list), the user's runtime directory, the temp directory,
/// and /tmp (when TMPDIR is too long for a socket path). Relative entries
/// are skipped.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let runtime = std::env::var_os("RUNTIME_DIRECTORY").and_then(|v| {
        let first = v.as_bytes().split(|b| *b == b':').next()?.to_vec();
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(&first)))
    });
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    for p in [runtime, xdg, Some(std::env::temp_dir()), Some(PathBuf::from("/tmp"))]
        .into_iter()
        .flatten()
    {
        if p.is_absolute() && !p.as_os_str().is_empty() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn mkdtemp(base: &Path) -> std::io::Result<PathBuf> {
    let template = base.join(TEMPLATE);
    let c = CString::new(template.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL byte in path"))?;
    let mut bytes = c.into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated, writable buffer that mkdtemp
    // completes in place; it outlives the call.
    let got = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if got.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_directory_that_goes_away() {
        let dir = RuntimeDir::create(None).unwrap();
        let path = dir.path().to_path_buf();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert!(dir.join(LONGEST_ENTRY).as_os_str().len() <= SUN_PATH_MAX);
        std::fs::write(dir.join("x"), b"x").unwrap();
        let again = RuntimeDir::create(None).unwrap();
        assert_ne!(again.path(), dir.path(), "every sup gets its own");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn adopt_checks_what_it_takes_over() {
        let dir = RuntimeDir::create(None).unwrap();
        let adopted = RuntimeDir::adopt(dir.path(), None).unwrap();
        assert_eq!(adopted.path(), dir.path());
        std::mem::forget(adopted);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RuntimeDir::adopt(dir.path(), None).unwrap_err();
        assert!(matches!(e, AdoptError::OpenToOthers { mode: 0o755, .. }), "{e:?}");
        assert!(e.to_string().ends_with("is open to others (mode 755)"), "{e}");
        let link = dir.path().with_extension("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(matches!(
            RuntimeDir::adopt(&link, None).unwrap_err(),
            AdoptError::NotADirectory(_)
        ));
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn names_read_back_as_written() {
        for n in [
            UnixName::Path("/run/sup.abc/notify".into()),
            UnixName::random_abstract("notify"),
        ] {
            assert_eq!(UnixName::parse(&n.to_string()), n);
        }
        assert_ne!(UnixName::random_abstract("x"), UnixName::random_abstract("x"));
    }
}

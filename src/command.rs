//! What a worker runs, resolved at every spawn: its directory, its program,
//! its `{fd}` placeholders.
//!
//! These functions read the file system (symlinks, PATH) but change
//! nothing; `spawn.rs` calls them before every fork, and the startup checks
//! call them once so that a typo is a startup error and not a crash loop.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::bind::BindSpec;

/// The first fd a worker's sockets occupy (`SD_LISTEN_FDS_START`).
pub const FIRST_SOCKET_FD: usize = 3;

/// Resolve the worker directory: `--directory` followed through every
/// symlink now (a Capistrano `current` that was re-pointed resolves to the
/// new release), or sup's own working directory.
pub fn resolve_directory(dir: Option<&Path>) -> Result<PathBuf, String> {
    let resolved = match dir {
        Some(d) => std::fs::canonicalize(d).map_err(|e| format!("does not resolve: {}", os_error(&e)))?,
        None => std::env::current_dir().map_err(|e| format!("cannot read the current directory: {}", os_error(&e)))?,
    };
    if !resolved.is_dir() {
        return Err(format!("{} is not a directory", resolved.display()));
    }
    Ok(resolved)
}

/// Resolve the program: a name without a slash through PATH, a relative
/// path against the worker's directory, an absolute path as it is.
pub fn resolve_program(program: &OsStr, cwd: &Path, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    let shown = Path::new(program).display();
    if program.as_bytes().contains(&b'/') {
        // `components()` drops `.` segments: report /srv/app/bin/run, not /srv/app/./bin/run.
        let path: PathBuf = cwd.join(program).components().collect();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(format!("command {} is not a file", path.display())),
            Err(e) => Err(format!("command {}: {}", path.display(), os_error(&e))),
        }
    } else {
        let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
        which::which_in(program, Some(path_var), cwd).map_err(|_| {
            format!(
                "command `{shown}` not found in PATH ({})",
                Path::new(path_var).display()
            )
        })
    }
}

/// Replace `{fd}`, `{fd:N}` and `{fd:NAME}` inside an argument with the fd
/// number the worker will find that socket at. Other braces are left alone.
pub fn expand_placeholders(arg: &OsStr, binds: &[BindSpec]) -> Result<OsString, String> {
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
                Ok(n) => {
                    return Err(format!(
                        "argument `{}` names socket {n}, but there are {} --bind sockets (counted from 0)",
                        arg.to_string_lossy(),
                        binds.len()
                    ));
                }
                Err(_) => binds.iter().position(|b| b.name == key).ok_or_else(|| {
                    format!(
                        "argument `{}` names socket `{key}`, but no --bind has that name",
                        arg.to_string_lossy()
                    )
                })?,
            };
            (Some(index), end + 1)
        } else {
            (None, 0)
        };
        match index {
            Some(i) => {
                if binds.is_empty() {
                    return Err(format!("argument `{}` needs a --bind socket", arg.to_string_lossy()));
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

/// An OS error as a lowercase fragment: `no such file or directory`.
pub fn os_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => errno_text(code),
        None => e.to_string(),
    }
}

/// `errno` as a lowercase fragment.
pub fn errno_text(code: i32) -> String {
    let desc = nix::errno::Errno::from_raw(code).desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("os error {code}"),
    }
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
        expand_placeholders(OsStr::new(s), &binds()).map(|o| o.into_string().unwrap())
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
        assert!(
            expand_placeholders(OsStr::new("{fd}"), &[])
                .unwrap_err()
                .contains("needs a --bind")
        );
    }

    #[test]
    fn programs() {
        let tmp = std::env::temp_dir();
        assert!(resolve_program(OsStr::new("sh"), &tmp, None).unwrap().ends_with("sh"));
        let e = resolve_program(OsStr::new("no-such-program-xyz"), &tmp, Some(OsStr::new("/usr/bin"))).unwrap_err();
        assert_eq!(e, "command `no-such-program-xyz` not found in PATH (/usr/bin)");
        let e = resolve_program(OsStr::new("./nope"), Path::new("/"), None).unwrap_err();
        assert_eq!(e, "command /nope: no such file or directory");
    }

    #[test]
    fn directories() {
        assert!(resolve_directory(None).is_ok());
        let e = resolve_directory(Some(Path::new("/no/such/release"))).unwrap_err();
        assert_eq!(e, "does not resolve: no such file or directory");
    }
}

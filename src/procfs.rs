//! Typed readers of Linux `/proc`: a process's `stat` line, its PSS, its
//! command line, the socket inodes it holds, sup's own children.
//!
//! The one place sup reads `/proc/PID/…`. It reads and parses, and decides
//! nothing: which process is a stray, which may be adopted, what a memory
//! figure means is the caller's business. A read that fails because the
//! process has gone is [`Error::Gone`], told apart from a read or parse
//! failure, since a caller racing against exits usually treats it as normal.
//! [`Stat::parse`] is pure, so the tricky `(comm)` field is tested without
//! processes.

use std::io;
use std::path::{Path, PathBuf};

use crate::pid::{Pgid, Pid};

/// Why a `/proc` read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process exited (or never existed) before or during the read.
    #[error("pid {pid} no longer exists")]
    Gone { pid: Pid },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// What is wrong with a `/proc` file's text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no `(comm)` field")]
    NoComm,
    #[error("the `{0}` field is missing")]
    Missing(&'static str),
    #[error("the `{field}` field is not valid: `{value}`")]
    Invalid { field: &'static str, value: String },
}

/// The fields of `/proc/PID/stat` that sup uses (see proc(5); the field
/// numbers are proc(5)'s, from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// (1) The process id.
    pub pid: Pid,
    /// (2) The executable's name, at most 15 bytes, as the kernel shows it:
    /// it may hold spaces and parentheses.
    pub comm: String,
    /// (3) `R`, `S`, `D`, `Z`, `T`, …
    pub state: char,
    /// (4) The parent's pid (0 for a process whose parent is outside the
    /// pid namespace).
    pub ppid: Pid,
    /// (5) The process group.
    pub pgrp: Pgid,
    /// (6) The session.
    pub session: i32,
    /// (14) User-mode CPU time, in clock ticks.
    pub utime_ticks: u64,
    /// (15) Kernel-mode CPU time, in clock ticks.
    pub stime_ticks: u64,
    /// (22) When the process started, in clock ticks after boot: with the
    /// pid, it names one process even if the pid is reused.
    pub starttime: u64,
    /// (24) Resident set size, in pages.
    pub rss_pages: u64,
}

impl Stat {
    /// Parse one `/proc/PID/stat` line. The `comm` field is the text between
    /// the first `(` and the *last* `)`: a process may name itself
    /// `a) b (c`, and only the last parenthesis is the kernel's.
    pub fn parse(line: &str) -> Result<Stat, ParseError> {
        let (head, rest) = line.rsplit_once(')').ok_or(ParseError::NoComm)?;
        let (pid, comm) = head.split_once('(').ok_or(ParseError::NoComm)?;
        let pid = number("pid", Some(pid.trim()))?;
        // Fields from (3) on; `f[k]` is proc(5)'s field k + 3.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |k: usize| f.get(k).copied();
        let mut state = field(0).ok_or(ParseError::Missing("state"))?.chars();
        let (Some(s), None) = (state.next(), state.next()) else {
            return Err(ParseError::Invalid {
                field: "state",
                value: field(0).unwrap_or_default().to_string(),
            });
        };
        Ok(Stat {
            pid,
            comm: comm.to_string(),
            state: s,
            ppid: number("ppid", field(1))?,
            pgrp: number("pgrp", field(2))?,
            session: number("session", field(3))?,
            utime_ticks: number("utime", field(11))?,
            stime_ticks: number("stime", field(12))?,
            starttime: number("starttime", field(19))?,
            rss_pages: number("rss", field(21))?,
        })
    }
}

/// One numeric field, or why not.
fn number<T: std::str::FromStr>(field: &'static str, text: Option<&str>) -> Result<T, ParseError> {
    let text = text.ok_or(ParseError::Missing(field))?;
    text.parse().map_err(|_| ParseError::Invalid {
        field,
        value: text.to_string(),
    })
}

/// `/proc/PID/stat`, parsed.
pub fn stat(pid: Pid) -> Result<Stat, Error> {
    let path = proc_path(pid, "stat");
    let text = read_to_string(pid, &path)?;
    Stat::parse(&text).map_err(|source| Error::Parse { path, source })
}

/// Every pid in `/proc` (processes, not threads), in directory order. A
/// process may be gone by the time its entry is read.
pub fn pids() -> Result<impl Iterator<Item = Pid>, Error> {
    let path = Path::new("/proc");
    let dir = std::fs::read_dir(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Pid>().ok()))
}

/// The calling thread's children, zombies included:
/// `/proc/thread-self/children`, or, where the kernel lacks that file, a
/// scan of `/proc` for processes whose parent is this process (sup has one
/// thread, so the two agree).
pub fn own_children() -> Result<Vec<Pid>, Error> {
    if let Ok(text) = std::fs::read_to_string("/proc/thread-self/children") {
        return Ok(text.split_whitespace().filter_map(|p| p.parse().ok()).collect());
    }
    let me = Pid::this();
    Ok(pids()?.filter(|&pid| stat(pid).is_ok_and(|s| s.ppid == me)).collect())
}

/// The proportional set size of `pid` in bytes, from the `Pss:` line of
/// `/proc/PID/smaps_rollup` (shared pages divided among their sharers).
pub fn pss_bytes(pid: Pid) -> Result<u64, Error> {
    let path = proc_path(pid, "smaps_rollup");
    let text = read_to_string(pid, &path)?;
    parse_pss_kib(&text)
        .map(|kib| kib * 1024)
        .map_err(|source| Error::Parse { path, source })
}

/// The kB figure of the `Pss:` line of an `smaps_rollup` text.
fn parse_pss_kib(text: &str) -> Result<u64, ParseError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .ok_or(ParseError::Missing("Pss"))?;
    number("Pss", line.split_whitespace().nth(1))
}

/// The summed PSS, in bytes, of every process in each of `groups` (process
/// group ids), in one pass over `/proc` whatever the number of groups: a
/// preloading parent's shared pages count once across the workers, not once
/// per worker as RSS would. A
/// group of which no PSS could be read (it has gone, or it is unreadable)
/// is left out; the rest come sorted by group id.
pub fn pss_by_group(groups: &[Pgid]) -> Result<Vec<(Pgid, u64)>, Error> {
    let mut sums: std::collections::HashMap<Pgid, u64> = groups.iter().map(|&g| (g, 0)).collect();
    for pid in pids()? {
        let Ok(stat) = stat(pid) else { continue };
        let Some(sum) = sums.get_mut(&stat.pgrp) else { continue };
        *sum += pss_bytes(pid).unwrap_or(0);
    }
    let mut out: Vec<(Pgid, u64)> = sums.into_iter().filter(|(_, b)| *b > 0).collect();
    out.sort_unstable_by_key(|(g, _)| g.raw());
    Ok(out)
}

/// The inodes of the sockets `pid` holds open (its `/proc/PID/fd` links
/// that read `socket:[INODE]`), in fd order as the directory lists them.
pub fn socket_inodes(pid: Pid) -> Result<Vec<u64>, Error> {
    let path = proc_path(pid, "fd");
    let dir = std::fs::read_dir(&path).map_err(|source| read_error(pid, path, source))?;
    Ok(dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| parse_socket_link(&link.to_string_lossy()))
        .collect())
}

/// The inode in an fd link's `socket:[INODE]` text.
fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A process's arguments, from `/proc/PID/cmdline` (NUL-separated; not
/// UTF-8 is shown lossily). Empty for a zombie or a kernel thread.
pub fn cmdline(pid: Pid) -> Result<Vec<String>, Error> {
    let path = proc_path(pid, "cmdline");
    let raw = std::fs::read(&path).map_err(|source| read_error(pid, path, source))?;
    Ok(parse_cmdline(&raw))
}

fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn proc_path(pid: Pid, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn read_to_string(pid: Pid, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| read_error(pid, path.to_path_buf(), source))
}

/// ENOENT: no such pid; ESRCH: it exited between the open and the read.
fn read_error(pid: Pid, path: PathBuf, source: io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => Error::Gone { pid },
        _ => Error::Read { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `stat` line as a 6.x kernel writes it, with `comm` spliced in.
    fn line(pid: i32, comm: &str) -> String {
        format!(
            "{pid} ({comm}) S 1 {pid} 77 0 -1 4194560 1180 0 0 0 12 34 0 0 20 0 1 0 98765 \
             12345678 890 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0"
        )
    }

    #[test]
    fn parses_the_fields_sup_uses() {
        let stat = Stat::parse(&line(4121, "ruby")).unwrap();
        assert_eq!(
            stat,
            Stat {
                pid: Pid::from_raw(4121),
                comm: "ruby".into(),
                state: 'S',
                ppid: Pid::from_raw(1),
                pgrp: Pgid::from_raw(4121),
                session: 77,
                utime_ticks: 12,
                stime_ticks: 34,
                starttime: 98765,
                rss_pages: 890,
            }
        );
    }

    #[test]
    fn comm_may_hold_spaces_and_parentheses() {
        for comm in ["a) b (c)", "a b", ") S 2 3 4", "(", ")", ""] {
            let stat = Stat::parse(&line(1234, comm)).unwrap();
            assert_eq!(
                (stat.comm.as_str(), stat.ppid.raw(), stat.pgrp.raw()),
                (comm, 1, 1234),
                "{comm:?}"
            );
        }
        let stat = Stat::parse("1234 (a) b (c)) Z 1 5 6 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 9 0 10").unwrap();
        assert_eq!((stat.comm.as_str(), stat.state, stat.rss_pages), ("a) b (c)", 'Z', 10));
    }

    #[test]
    fn a_damaged_line_is_an_error_not_a_zero() {
        assert_eq!(Stat::parse("1234 ruby S 1 2 3"), Err(ParseError::NoComm));
        assert_eq!(Stat::parse("1234 (ruby)"), Err(ParseError::Missing("state")));
        assert_eq!(Stat::parse("1234 (ruby) S 1 2"), Err(ParseError::Missing("session")));
        assert_eq!(
            Stat::parse("x (ruby) S 1 2 3"),
            Err(ParseError::Invalid {
                field: "pid",
                value: "x".into()
            })
        );
        assert!(matches!(
            Stat::parse(&line(1, "a").replace(" 98765 ", " -5 ")),
            Err(ParseError::Invalid { field: "starttime", .. })
        ));
    }

    #[test]
    fn reads_this_process() {
        let me = Pid::this();
        let stat = stat(me).unwrap();
        assert_eq!(stat.pid, me);
        assert_eq!(stat.ppid.raw(), nix::unistd::getppid().as_raw());
        assert_eq!(stat.pgrp.raw(), nix::unistd::getpgrp().as_raw());
        assert_eq!(stat.session, nix::unistd::getsid(None).unwrap().as_raw());
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(stat.comm, comm.trim_end_matches('\n'));
        assert!(stat.rss_pages > 0);
        assert!(pids().unwrap().any(|p| p == me));
        assert!(!cmdline(me).unwrap().is_empty());
    }

    #[test]
    fn a_process_that_is_gone_is_told_apart() {
        // Above pid_max (at most 2^22): never a process.
        let never = Pid::from_raw(i32::MAX);
        assert!(matches!(stat(never), Err(Error::Gone { pid }) if pid == never));
        assert!(matches!(cmdline(never), Err(Error::Gone { .. })));
        assert!(matches!(socket_inodes(never), Err(Error::Gone { .. })));
        assert!(matches!(pss_bytes(never), Err(Error::Gone { .. })));
    }

    #[test]
    fn sees_its_children_and_the_sockets_it_holds() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        // The test runs on its own thread, the one that forked the child.
        let seen = own_children().unwrap().contains(&pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino = nix::sys::stat::fstat(&listener).unwrap().st_ino;
        assert!(socket_inodes(Pid::this()).unwrap().contains(&ino));
    }

    #[test]
    fn pss_and_cmdline_texts() {
        let rollup = "00400000-7ffd [rollup]\nRss:    2048 kB\nPss:    1536 kB\nPss_Anon: 10 kB\n";
        assert_eq!(parse_pss_kib(rollup), Ok(1536));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), Err(ParseError::Missing("Pss")));
        assert_eq!(parse_cmdline(b"ruby\0-e\0\0puts 1\0"), ["ruby", "-e", "", "puts 1"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]"), None);
    }
}

//! Process ids as types: a [`Pid`] names one process, a [`Pgid`] a process
//! group, so that a pid, a group and a signal number cannot be swapped (a
//! `kill(-pgid)` is spelled by the type, never by a minus sign). Pure: this
//! module makes no syscalls; the shell turns them into `nix` pids where it
//! signals.

use std::fmt;

/// One process, as the kernel numbered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pid(i32);

impl Pid {
    /// A pid the kernel reported (fork, waitpid, SCM_CREDENTIALS, /proc).
    pub const fn from_raw(pid: i32) -> Pid {
        Pid(pid)
    }

    pub const fn raw(self) -> i32 {
        self.0
    }

    /// sup's own pid.
    pub fn this() -> Pid {
        Pid(std::process::id() as i32)
    }
}

impl std::str::FromStr for Pid {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Pid, Self::Err> {
        s.parse().map(Pid)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A process group sup may signal as a whole. Made only from the pid of a
/// process sup started as the leader of its own group (every worker and
/// helper is), so a group kill reaches that group and nothing else — and
/// can never be mistaken for a signal to one pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Pgid(i32);

impl Pgid {
    /// The group led by `pid` (the pid of a process sup started).
    pub const fn led_by(pid: Pid) -> Pgid {
        Pgid(pid.0)
    }

    /// A process group the kernel reported (getpgid, /proc).
    pub const fn from_raw(pgid: i32) -> Pgid {
        Pgid(pgid)
    }

    /// The process that leads (or led) this group.
    pub const fn leader(self) -> Pid {
        Pid(self.0)
    }

    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl std::str::FromStr for Pgid {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Pgid, Self::Err> {
        s.parse().map(Pgid)
    }
}

impl fmt::Display for Pgid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

//! What sup's child processes are, beyond the workers and helpers the core
//! started: strays (processes that escaped a worker's or the hook's process
//! group and were left to sup, a subreaper), and, after a hot restart, which
//! handed-over pids sup may adopt as workers.
//!
//! Pure policy over what the loop read ([`crate::procfs`], `getpgid`) and
//! what the core knows: no `/proc` reads, no signals, no clock. The loop
//! reads, asks here, and acts (logs, signals).

use std::collections::HashSet;

use crate::pid::{Pgid, Pid};
use crate::procfs::{self, Stat};

/// Why a handed-over pid is not adopted as a worker.
#[derive(Debug, thiserror::Error)]
pub enum NotAdoptable {
    #[error(transparent)]
    Unreadable(#[from] procfs::Error),
    #[error("pid {pid} is not sup's child (its parent is {ppid})")]
    NotOurChild { pid: Pid, ppid: Pid },
    #[error("pid {pid} does not lead its own process group")]
    NotGroupLeader { pid: Pid },
}

/// Whether the process `stat` describes is a worker sup (pid `sup_pid`) may
/// take over: still sup's child (a zombie too: it is reaped, with its
/// status, once adopted) and the leader of its own process group, as every
/// worker sup starts is. sup never signals a process it did not start.
pub fn adoptable(stat: &Stat, sup_pid: Pid) -> Result<(), NotAdoptable> {
    if stat.ppid != sup_pid {
        return Err(NotAdoptable::NotOurChild {
            pid: stat.pid,
            ppid: stat.ppid,
        });
    }
    if stat.pgrp != Pgid::led_by(stat.pid) {
        return Err(NotAdoptable::NotGroupLeader { pid: stat.pid });
    }
    Ok(())
}

/// The strays already reported, so that each is reported once.
#[derive(Debug, Default)]
pub struct Seen(HashSet<Pid>);

impl Seen {
    /// Of the strays there are `now`, those not reported before, in the
    /// order given; the ones no longer there are forgotten (a pid reused
    /// later is a new stray).
    pub fn fresh(&mut self, now: &[Pid]) -> Vec<Pid> {
        self.0.retain(|p| now.contains(p));
        now.iter().copied().filter(|&p| self.0.insert(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32, pgrp: i32) -> Stat {
        Stat {
            pid: Pid::from_raw(pid),
            comm: "w".into(),
            state: 'S',
            ppid: Pid::from_raw(ppid),
            pgrp: Pgid::from_raw(pgrp),
            session: 1,
            utime_ticks: 0,
            stime_ticks: 0,
            starttime: 0,
            rss_pages: 0,
        }
    }

    #[test]
    fn adopts_only_its_own_group_leading_children() {
        assert!(adoptable(&stat(42, 7, 42), Pid::from_raw(7)).is_ok());
        let err = adoptable(&stat(42, 1, 42), Pid::from_raw(7)).unwrap_err();
        assert_eq!(err.to_string(), "pid 42 is not sup's child (its parent is 1)");
        let err = adoptable(&stat(42, 7, 40), Pid::from_raw(7)).unwrap_err();
        assert_eq!(err.to_string(), "pid 42 does not lead its own process group");
        let gone = NotAdoptable::from(procfs::Error::Gone { pid: Pid::from_raw(42) });
        assert_eq!(gone.to_string(), "pid 42 no longer exists");
    }

    #[test]
    fn each_stray_is_fresh_once() {
        let mut seen = Seen::default();
        let fresh = |seen: &mut Seen, now: &[i32]| -> Vec<i32> {
            let now: Vec<Pid> = now.iter().copied().map(Pid::from_raw).collect();
            seen.fresh(&now).into_iter().map(Pid::raw).collect()
        };
        assert_eq!(fresh(&mut seen, &[5, 6]), [5, 6]);
        assert_eq!(fresh(&mut seen, &[6, 7]), [7]);
        // 5 went away; its pid coming back is a new stray.
        assert_eq!(fresh(&mut seen, &[5, 6, 7]), [5]);
        assert_eq!(fresh(&mut seen, &[]), [0; 0]);
    }
}

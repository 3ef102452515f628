//! Signals: which ones sup handles, what each means, and the guard that
//! blocks them around `fork`.
//!
//! Handlers (installed by signal-hook-mio) only write to a self-pipe that the
//! event loop polls; the translation into an [`Intent`] happens in the loop,
//! never in a handler. Signals coalesce, so SIGCHLD means "reap until
//! nothing is left", never "one child exited".

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::core::Intent;

/// Every signal sup catches.
pub const HANDLED: [Signal; 9] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGCHLD,
];

/// What a signal means to sup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    Intent(Intent),
    /// A child changed state: reap.
    Child,
}

pub fn translate(signal: i32) -> Option<SignalEvent> {
    let event = match Signal::try_from(signal).ok()? {
        Signal::SIGTERM => SignalEvent::Intent(Intent::Stop),
        Signal::SIGINT => SignalEvent::Intent(Intent::Interrupt),
        Signal::SIGQUIT => SignalEvent::Intent(Intent::Halt),
        Signal::SIGHUP => SignalEvent::Intent(Intent::ReopenLogs),
        Signal::SIGTTIN => SignalEvent::Intent(Intent::Incr),
        Signal::SIGTTOU => SignalEvent::Intent(Intent::Decr),
        Signal::SIGCHLD => SignalEvent::Child,
        Signal::SIGUSR1 => SignalEvent::Intent(Intent::Rolling),
        Signal::SIGUSR2 => SignalEvent::Intent(Intent::Hot),
        _ => return None,
    };
    Some(event)
}

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// Blocks every handled signal while alive and restores the previous mask
/// on drop. Held across `fork` so that a signal arriving in the window can
/// never run sup's handler in the child (it would write to sup's self-pipe,
/// shared with the child until exec).
pub struct BlockedSignals {
    previous: SigSet,
}

impl BlockedSignals {
    pub fn block_handled() -> nix::Result<BlockedSignals> {
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), Some(&mut previous))?;
        Ok(BlockedSignals { previous })
    }
}

/// Block the handled signals until [`unblock_handled`]: at startup, from
/// the pidfile's claim (when a deploy tool may already signal sup) until
/// the handlers are installed, so that an early TERM is delivered to the
/// loop rather than killing sup by its default action.
pub fn block_handled_until_unblocked() -> nix::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)
}

/// Unblock the handled signals. A hot restart execs with them blocked (a
/// caught signal would revert to its default action across `execve`); the
/// new image calls this once its handlers are installed, and whatever
/// arrived in between is delivered then.
pub fn unblock_handled() -> nix::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_set()), None)
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // Restoring a mask we read a moment ago cannot fail (EINVAL is only
        // for a bad `how`); there is nothing useful to do if it did.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_means_something() {
        for s in HANDLED {
            assert!(translate(s as i32).is_some(), "{s}");
        }
        assert_eq!(
            translate(Signal::SIGTERM as i32),
            Some(SignalEvent::Intent(Intent::Stop))
        );
        assert_eq!(translate(Signal::SIGALRM as i32), None);
    }
}

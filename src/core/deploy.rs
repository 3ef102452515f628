//! Deploys an operator can steer: a canary (`--canary N`: N slots, then the
//! rollout pauses), `resume`, and `rollback` — the newer generation's
//! workers replaced, make-before-break, by the previous release as it was
//! pinned when it started (its resolved directory, command and env file,
//! which the shell keeps), never by whatever `current` points at now.

use std::time::Instant;

use super::Core;
use super::restart::{Phase, Rollout};
use super::vocab::RestartKind;
use super::vocab::{Action, Pinned};

impl Core {
    /// The generation `sup ctl rollback` would go back to, if any.
    pub fn rollback_target(&self) -> Option<u64> {
        self.rollback_target
    }

    /// `sup ctl rollback`: refused with the reason, or begun.
    pub(super) fn rollback(&mut self, pinned: Pinned, now: Instant, out: &mut Vec<Action>) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("sup is stopping".to_string());
        }
        let Some(target) = self.rollback_target else {
            return Err("there is no previous generation to roll back to".to_string());
        };
        let newer = self.generation;
        match pinned {
            Pinned::Ready => {}
            Pinned::Unknown => {
                return Err(format!(
                    "gen {target}'s release is not known to this sup (it was started after that release ran)"
                ));
            }
            Pinned::Gone => return Err(format!("gen {target}'s pinned release directory no longer exists")),
        }
        if let Some(r) = self.restart.current()
            && !matches!(
                r.phase,
                Phase::Rolling { .. } | Phase::Paused { .. } | Phase::Starting { .. }
            )
        {
            return Err(format!(
                "{} restart {} is running; roll back once it has finished",
                r.kind.as_str(),
                r.id
            ));
        }
        let plan = Rollout {
            canary: None,
            only: Some(newer),
            like: Some(target),
        };
        self.request_planned(RestartKind::Rollback, plan, now, out);
        Ok(())
    }
}

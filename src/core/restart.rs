//! The restart in progress, as its own type: its state ([`Phase`]) and
//! every transition — the hook, the preflight, the hand-over or the drain,
//! the exec, the finish, the abandon, and the one restart asked for
//! meanwhile ([`Restarts::pending`]). Transitions push the actions that are
//! theirs alone (run the hook, re-exec, the log line, what sup's supervisor
//! hears) and return a [`Follow`]: what must happen to the workers, which
//! the core owns. This type never looks at a worker.
//!
//! ```text
//!            ┌──────────── abandon (hook failed, timed out, stop) ─────────┐
//! request → Hook ─┬─ rolling ───────────────────────────→ Rolling ─→ finish
//!                 └─ hot/reexec → Preflight ─┬─ stop mode → Draining → Exec → (new image) Starting → finish
//!                                            └─ overlap/reexec ───────→ Exec → (new image) Rolling / finish
//! ```

use std::time::{Duration, Instant};

use log::Level;

use super::counters::Counters;
use super::vocab::{Action, Ended, RestartKind, Settings, Upward, log};
use crate::pid::Pid;
use crate::worker::ExitStatus;

/// How a restart ended (or that it has not yet).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Running,
    /// A canary is up; the rollout waits for `resume` or `rollback`.
    Paused,
    Completed,
    Failed {
        slot: usize,
        reason: String,
    },
    Abandoned {
        reason: String,
    },
}

impl Outcome {
    /// Its name in `/stats` and `/metrics`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Paused => "paused",
            Outcome::Completed => "completed",
            Outcome::Failed { .. } => "failed",
            Outcome::Abandoned { .. } => "abandoned",
        }
    }

    /// How it is counted once it has ended.
    pub fn ended(&self) -> Option<Ended> {
        match self {
            Outcome::Running | Outcome::Paused => None,
            Outcome::Completed => Some(Ended::Completed),
            Outcome::Failed { .. } => Some(Ended::Failed),
            Outcome::Abandoned { .. } => Some(Ended::Abandoned),
        }
    }
}

/// The current or last restart, as `/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRecord {
    /// Counts restarts (across hot restarts too), so a client can follow one.
    pub id: u64,
    pub kind: RestartKind,
    /// The generation being rolled out (known once the hook has passed).
    pub generation: Option<u64>,
    pub started_at: Instant,
    pub finished_at: Option<Instant>,
    pub outcome: Outcome,
}

/// Where the restart in progress is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The hook runs (`pid` once it has been spawned).
    Hook { pid: Option<Pid>, deadline: Instant },
    /// Hot and reexec: the new sup checks its configuration.
    Preflight { pid: Option<Pid>, deadline: Instant },
    /// Replacements of `generation` are being started, make-before-break.
    Rolling { generation: u64 },
    /// A canary of `generation` is up; the rest waits for `resume` (or a
    /// `rollback`).
    Paused { generation: u64 },
    /// Hot, stop mode: every worker is stopping; then the exec.
    Draining,
    /// The exec was asked for (it returns only if it failed). `adopt`: the
    /// workers keep serving and the next image adopts them.
    Exec { adopt: bool },
    /// Hot, stop mode, in the new image: the first workers of `generation` boot.
    Starting { generation: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub id: u64,
    pub kind: RestartKind,
    pub started_at: Instant,
    pub phase: Phase,
    pub plan: Rollout,
}

/// What a rollout replaces, and how far it goes before it waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// Replace this many slots, then pause (`--canary N`).
    pub canary: Option<usize>,
    /// Replace only the workers of this generation (a rollback replaces the
    /// newer generation's; the others already run the release it restores).
    pub only: Option<u64>,
    /// The new generation runs this generation's pinned preparation (a
    /// rollback), not what the release directory holds now.
    pub like: Option<u64>,
}

/// What a transition needs done to the workers (the core owns them).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    Nothing,
    /// Roll a new generation out, make-before-break.
    Rollout,
    /// Stop mode: stop every worker; the exec follows once they are gone.
    Drain,
    /// Overlap or reexec: re-execute with every worker serving.
    Handover,
    /// The rollout of `generation` failed: stop its replacements still booting.
    StopReplacements {
        generation: u64,
    },
    /// The helper `pid` (hook, preflight) was given up on: end its group.
    EndHelper(Pid),
}

/// The restart machinery: the one in progress, the one waiting, the last.
#[derive(Debug, Clone)]
pub struct Restarts {
    pub(super) current: Option<Restart>,
    /// A restart asked for while a hook, preflight, drain or exec ran; it
    /// runs when that one has ended (a hot one outranks a rolling one).
    pub(super) pending: Option<RestartKind>,
    pub(super) last: Option<RestartRecord>,
    /// A paused canary, set aside while `sup ctl reexec` runs; it is the
    /// restart in progress again once the reexec has ended.
    pub(super) parked: Option<Restart>,
    /// Restarts begun so far (the next one gets this plus one).
    pub(super) begun: u64,
    /// READY=1 has gone upward at the end of a restart.
    pub(super) ready_sent: bool,
    hook: bool,
    timeout: Duration,
    overlap: bool,
}

impl Restarts {
    pub fn new(settings: &Settings) -> Restarts {
        Restarts {
            current: None,
            pending: None,
            last: None,
            parked: None,
            begun: 0,
            ready_sent: false,
            hook: settings.hook,
            timeout: settings.hook_timeout,
            overlap: settings.hot_overlap,
        }
    }

    pub fn current(&self) -> Option<&Restart> {
        self.current.as_ref()
    }

    pub fn phase(&self) -> Option<Phase> {
        self.current.map(|r| r.phase)
    }

    /// Whether a restart is running or waiting to run.
    pub fn busy(&self) -> bool {
        self.current.is_some() || self.pending.is_some()
    }

    pub fn pending(&self) -> Option<RestartKind> {
        self.pending
    }

    /// The number of the restart in progress, or else of the last one.
    pub fn id(&self) -> u64 {
        self.begun
    }

    /// Whether the exec asked for is still wanted.
    pub fn exec_due(&self) -> bool {
        matches!(self.phase(), Some(Phase::Exec { .. }))
    }

    /// The generation a restart is bringing up, while it does.
    pub fn rolling_generation(&self) -> Option<u64> {
        match self.phase()? {
            Phase::Rolling { generation } | Phase::Starting { generation } | Phase::Paused { generation } => {
                Some(generation)
            }
            Phase::Hook { .. } | Phase::Preflight { .. } | Phase::Draining | Phase::Exec { .. } => None,
        }
    }

    /// The rollout in progress and its plan, unless it is paused.
    pub fn rolling(&self) -> Option<(u64, Rollout)> {
        let r = self.current?;
        match r.phase {
            Phase::Rolling { generation } | Phase::Starting { generation } => Some((generation, r.plan)),
            _ => None,
        }
    }

    /// Whether new workers must wait (the old image is handing over).
    pub fn holds_spawns(&self) -> bool {
        matches!(self.phase(), Some(Phase::Draining | Phase::Exec { .. }))
    }

    /// The helper running (hook or preflight), once it has a pid.
    pub fn helper_pid(&self) -> Option<Pid> {
        match self.phase()? {
            Phase::Hook { pid, .. } | Phase::Preflight { pid, .. } => pid,
            Phase::Rolling { .. }
            | Phase::Paused { .. }
            | Phase::Draining
            | Phase::Exec { .. }
            | Phase::Starting { .. } => None,
        }
    }

    fn helper_name(&self) -> &'static str {
        match self.phase() {
            Some(Phase::Preflight { .. }) => "preflight check",
            Some(_) | None => "restart hook",
        }
    }

    /// Whether the restart hands its workers to the next image (a reexec,
    /// or a hot restart in overlap mode) rather than stopping them.
    fn adopts(&self) -> bool {
        match self.current.map(|r| r.kind) {
            Some(RestartKind::Reexec) => true,
            Some(RestartKind::Hot) => self.overlap,
            Some(RestartKind::Rolling | RestartKind::Rollback) | None => false,
        }
    }

    /// The restart in progress, or else the last one.
    pub fn record(&self) -> Option<RestartRecord> {
        match self.current {
            Some(r) => Some(RestartRecord {
                id: r.id,
                kind: r.kind,
                generation: self.rolling_generation(),
                started_at: r.started_at,
                finished_at: None,
                outcome: match r.phase {
                    Phase::Paused { .. } => Outcome::Paused,
                    _ => Outcome::Running,
                },
            }),
            None => self.last.clone(),
        }
    }

    /// Why a control request for a restart of `kind` cannot start one now.
    /// A request the core would keep as pending is refused instead (the id
    /// it would get is not known yet), so a deploy tool acts on a plain answer.
    pub fn refusal(&self, kind: RestartKind) -> Option<String> {
        let r = self.current?;
        let (id, name) = (r.id, r.kind.as_str());
        let phase = match r.phase {
            Phase::Hook { .. } => Some(format!(
                "the restart hook of {name} restart {id} is running; ask again when it has finished"
            )),
            Phase::Preflight { .. } => Some(format!(
                "hot restart {id} is checking the new sup; ask again when it has finished"
            )),
            Phase::Draining | Phase::Exec { .. } => Some(format!(
                "hot restart {id} is stopping the workers to re-execute sup; ask again when it has finished"
            )),
            Phase::Paused { .. } if kind == RestartKind::Hot => Some(format!(
                "{name} restart {id} is paused at its canary: resume it or roll it back first"
            )),
            // A reexec keeps a paused canary paused.
            Phase::Paused { .. } if kind == RestartKind::Reexec => return None,
            // A rollout in progress starts over with the newest code.
            Phase::Rolling { .. } | Phase::Starting { .. } | Phase::Paused { .. } => None,
        };
        // A rollout in progress cannot be handed over half done.
        phase.or_else(|| {
            (kind == RestartKind::Reexec)
                .then(|| format!("{name} restart {id} is running; re-execute when it has finished"))
        })
    }

    /// A restart of `kind` is asked for (sup is not stopping).
    pub fn request(
        &mut self,
        kind: RestartKind,
        plan: Rollout,
        now: Instant,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let Some(current) = self.current else {
            return self.begin(kind, plan, now, out);
        };
        let name = kind.as_str();
        // A reexec during a paused canary: the canary waits, paused, across it.
        if kind == RestartKind::Reexec && matches!(current.phase, Phase::Paused { .. }) {
            self.parked = self.current.take();
            log(
                out,
                Level::Info,
                format!(
                    "{} restart {} stays paused while sup re-executes itself",
                    current.kind.as_str(),
                    current.id
                ),
            );
            return self.begin(kind, plan, now, out);
        }
        // A reexec changes no worker: joining it would deliver nothing.
        if current.kind == RestartKind::Reexec {
            log(
                out,
                Level::Warn,
                format!(
                    "{name} restart ignored: sup is re-executing itself (reexec {}); ask again once it has finished",
                    current.id
                ),
            );
            return Follow::Nothing;
        }
        match current.phase {
            // Nothing can be joined halfway: the request waits, as the one
            // pending request, and runs when this restart has ended —
            // across the exec, too.
            Phase::Hook { .. } | Phase::Preflight { .. } | Phase::Draining | Phase::Exec { .. } => {
                let stronger = if kind == RestartKind::Hot || self.pending == Some(RestartKind::Hot) {
                    RestartKind::Hot
                } else {
                    kind
                };
                self.pending = Some(stronger);
                log(
                    out,
                    Level::Info,
                    format!(
                        "{name} restart requested while {} restart {} runs: a {} restart will run when it has ended",
                        current.kind.as_str(),
                        current.id,
                        stronger.as_str()
                    ),
                );
                Follow::Nothing
            }
            Phase::Rolling { generation } | Phase::Starting { generation } | Phase::Paused { generation } => {
                log(
                    out,
                    Level::Info,
                    format!("{name} restart requested during the rollout of gen {generation}: starting over"),
                );
                if kind != current.kind || kind == RestartKind::Rollback {
                    let reason = format!("superseded by a {name} restart");
                    self.finish(Outcome::Abandoned { reason }, now, c, out);
                }
                self.begin(kind, plan, now, out)
            }
        }
    }

    fn begin(&mut self, kind: RestartKind, plan: Rollout, now: Instant, out: &mut Vec<Action>) -> Follow {
        self.begun += 1;
        out.push(Action::Upward(Upward::Reloading));
        self.current = Some(Restart {
            id: self.begun,
            kind,
            started_at: now,
            phase: Phase::Hook {
                pid: None,
                deadline: now + self.timeout,
            },
            plan,
        });
        // The hook is for new code; a reexec starts none, a rollback goes
        // back to code that ran.
        if self.hook && !matches!(kind, RestartKind::Reexec | RestartKind::Rollback) {
            out.push(Action::RunHook { kind });
            Follow::Nothing
        } else {
            self.after_hook(now, out)
        }
    }

    /// The hook passed (or there is none): a rolling restart rolls; a hot
    /// one has the new sup check itself first.
    fn after_hook(&mut self, now: Instant, out: &mut Vec<Action>) -> Follow {
        let Some(r) = &mut self.current else {
            return Follow::Nothing;
        };
        match r.kind {
            RestartKind::Rolling | RestartKind::Rollback => Follow::Rollout,
            RestartKind::Hot | RestartKind::Reexec => {
                r.phase = Phase::Preflight {
                    pid: None,
                    deadline: now + self.timeout,
                };
                out.push(Action::RunPreflight);
                Follow::Nothing
            }
        }
    }

    /// The rollout of `generation` begins (the core has bumped it); the
    /// restart's kind, for the log.
    pub fn roll_out(&mut self, generation: u64) -> RestartKind {
        match &mut self.current {
            Some(r) => {
                r.phase = Phase::Rolling { generation };
                r.kind
            }
            None => RestartKind::Rolling,
        }
    }

    pub fn helper_spawned(&mut self, pid: Pid) {
        if let Some(Restart {
            phase: Phase::Hook { pid: p, .. } | Phase::Preflight { pid: p, .. },
            ..
        }) = &mut self.current
        {
            *p = Some(pid);
        }
    }

    pub fn helper_failed(
        &mut self,
        reason: &str,
        now: Instant,
        stopping: bool,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let reason = format!("cannot run the {}: {reason}", self.helper_name());
        self.abandon(reason, now, stopping, c, out)
    }

    /// The helper exited with `status`.
    pub fn helper_exited(
        &mut self,
        status: ExitStatus,
        now: Instant,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let Some(r) = &mut self.current else {
            return Follow::Nothing;
        };
        let preflight = matches!(r.phase, Phase::Preflight { .. });
        match (preflight, status == ExitStatus::Code(0)) {
            (false, true) => {
                log(out, Level::Info, "restart hook succeeded".to_string());
                self.after_hook(now, out)
            }
            (false, false) => self.abandon(format!("the restart hook exited with {status}"), now, false, c, out),
            (true, true) => {
                let adopt = self.adopts();
                if let Some(r) = &mut self.current {
                    r.phase = if adopt { Phase::Exec { adopt } } else { Phase::Draining };
                }
                if adopt { Follow::Handover } else { Follow::Drain }
            }
            (true, false) => self.abandon(
                format!("the new sup failed its check ({status}; its errors are logged above)"),
                now,
                false,
                c,
                out,
            ),
        }
    }

    /// The hook's or the preflight's deadline passed: give up the restart.
    pub fn helper_timed_out(&mut self, now: Instant, c: &mut Counters, out: &mut Vec<Action>) -> Follow {
        let t = self.timeout;
        let reason = match self.phase() {
            Some(Phase::Hook { .. }) => format!("the restart hook did not finish within {t:?}"),
            Some(Phase::Preflight { .. }) => {
                format!("the new sup's check did not finish within {t:?} (--hook-timeout); it is killed")
            }
            Some(_) | None => return Follow::Nothing,
        };
        self.abandon(reason, now, false, c, out)
    }

    /// Give up the restart in progress before anything was stopped.
    /// `stopping`: sup is stopping (a line at Info, not an error).
    pub fn abandon(
        &mut self,
        reason: String,
        now: Instant,
        stopping: bool,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let Some(r) = self.current else {
            return Follow::Nothing;
        };
        let helper = self.helper_pid();
        let kind = r.kind.as_str();
        if stopping {
            log(out, Level::Info, format!("{kind} restart interrupted: {reason}"));
        } else {
            log(
                out,
                Level::Error,
                format!("{kind} restart abandoned: {reason}; the running workers keep serving"),
            );
        }
        self.finish(Outcome::Abandoned { reason }, now, c, out);
        helper.map_or(Follow::Nothing, Follow::EndHelper)
    }

    /// End the restart in progress with `outcome`, keeping it as the last.
    /// Whatever the outcome, sup's supervisor hears READY=1 again: the
    /// reload it was told about is over.
    pub fn finish(&mut self, outcome: Outcome, now: Instant, c: &mut Counters, out: &mut Vec<Action>) {
        let Some(r) = self.current else { return };
        let generation = self.rolling_generation();
        // A paused canary set aside for a reexec is the one in progress again.
        self.current = self.parked.take();
        self.ready_sent = true;
        out.push(Action::Upward(Upward::Ready));
        if let Some(ended) = outcome.ended() {
            c.count_restart(r.kind, ended);
        }
        self.last = Some(RestartRecord {
            id: r.id,
            kind: r.kind,
            generation,
            started_at: r.started_at,
            finished_at: Some(now),
            outcome,
        });
    }

    /// A replacement of the generation being brought up failed to boot in
    /// `slot` (`failures` in a row there; `serving` workers are left).
    #[expect(clippy::too_many_arguments, reason = "each is one fact the log line states")]
    pub fn replacement_failed(
        &mut self,
        slot: usize,
        reason: String,
        failures: u32,
        serving: usize,
        now: Instant,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let Some(r) = self.current else {
            return Follow::Nothing;
        };
        match r.phase {
            Phase::Starting { generation } => {
                // Stop mode: the old workers are gone, there is nothing to
                // fall back to. The preflight was the guard; sup keeps trying.
                log(
                    out,
                    Level::Error,
                    format!(
                        "hot restart {} to gen {generation}: worker {slot} {reason}; no old worker is left to serve, \
                         so sup keeps starting gen {generation} with backoff ({failures} failure(s) in a row in this slot)",
                        r.id
                    ),
                );
                Follow::Nothing
            }
            Phase::Rolling { generation } | Phase::Paused { generation } => {
                log(
                    out,
                    Level::Error,
                    format!(
                        "{} restart to gen {generation} failed: worker {slot} {reason}; stopped there, {serving} worker(s) keep serving",
                        r.kind.as_str()
                    ),
                );
                self.finish(Outcome::Failed { slot, reason }, now, c, out);
                // Other replacements still booting (max surge > 1) go too,
                // where an older worker still holds their slot.
                Follow::StopReplacements { generation }
            }
            Phase::Hook { .. } | Phase::Preflight { .. } | Phase::Draining | Phase::Exec { .. } => Follow::Nothing,
        }
    }

    /// The canary is up: the rollout waits for `resume` or `rollback`.
    pub fn pause(&mut self, target: usize, out: &mut Vec<Action>) {
        let Some(r) = &mut self.current else { return };
        let Phase::Rolling { generation } = r.phase else { return };
        r.phase = Phase::Paused { generation };
        let canary = r.plan.canary.unwrap_or(0).min(target);
        log(
            out,
            Level::Info,
            format!(
                "{} restart {} to gen {generation}: the canary of {canary} worker(s) is ready; paused (sup ctl resume finishes it, sup ctl rollback undoes it)",
                r.kind.as_str(),
                r.id
            ),
        );
    }

    /// `sup ctl resume`: the paused rollout goes on; the restart it is.
    pub fn resume_paused(&mut self, out: &mut Vec<Action>) -> Result<(u64, RestartKind), String> {
        let Some(r) = &mut self.current else {
            return Err("no restart is paused".to_string());
        };
        let Phase::Paused { generation } = r.phase else {
            return Err(format!("{} restart {} is not paused", r.kind.as_str(), r.id));
        };
        r.phase = Phase::Rolling { generation };
        r.plan.canary = None;
        log(
            out,
            Level::Info,
            format!("{} restart {} to gen {generation}: resumed", r.kind.as_str(), r.id),
        );
        Ok((r.id, r.kind))
    }

    /// The re-exec failed; sup runs on in this image.
    pub fn exec_failed(&mut self, reason: String, now: Instant, c: &mut Counters, out: &mut Vec<Action>) {
        let Some(r) = self.current else { return };
        let line = match r.phase {
            Phase::Exec { adopt: true } => format!(
                "{} restart failed: {reason}; the workers were not touched and keep serving",
                r.kind.as_str()
            ),
            _ => format!("hot restart failed: {reason}; starting workers again in this sup"),
        };
        log(out, Level::Error, line);
        self.finish(Outcome::Abandoned { reason }, now, c, out);
    }

    /// Stop mode: every worker is gone; the exec (into `generation`) is next.
    pub fn drained(&mut self) -> bool {
        match &mut self.current {
            Some(r) if r.phase == Phase::Draining => {
                r.phase = Phase::Exec { adopt: false };
                true
            }
            _ => false,
        }
    }

    /// Every worker of the rollout's generation is ready and the old are
    /// gone: the restart is complete.
    pub fn complete(&mut self, target: usize, now: Instant, c: &mut Counters, out: &mut Vec<Action>) {
        let (Some(r), Some(generation)) = (self.current, self.rolling_generation()) else {
            return;
        };
        let took = now.saturating_duration_since(r.started_at);
        log(
            out,
            Level::Info,
            format!(
                "{} restart to gen {generation} complete in {took:.1?}: {target} worker(s) ready",
                r.kind.as_str()
            ),
        );
        self.finish(Outcome::Completed, now, c, out);
    }

    /// The restart asked for meanwhile, if the last one has ended.
    pub fn take_pending(&mut self, now: Instant, out: &mut Vec<Action>) -> Follow {
        if self.current.is_some() {
            return Follow::Nothing;
        }
        let Some(kind) = self.pending.take() else {
            return Follow::Nothing;
        };
        log(
            out,
            Level::Info,
            format!("starting the {} restart requested meanwhile", kind.as_str()),
        );
        self.begin(kind, Rollout::default(), now, out)
    }

    /// A stop ends any restart in progress and forgets the pending one.
    pub fn stop(&mut self, now: Instant, c: &mut Counters, out: &mut Vec<Action>) -> Follow {
        self.pending = None;
        self.abandon("sup is stopping".to_string(), now, true, c, out)
    }

    /// The new image, restored from a snapshot taken at the exec: carry on.
    /// Stop mode: the first workers of the new generation boot. Overlap:
    /// roll the adopted workers. Reexec: done.
    pub fn resume(
        &mut self,
        generation: u64,
        adopted: usize,
        now: Instant,
        c: &mut Counters,
        out: &mut Vec<Action>,
    ) -> Follow {
        let Some(r) = &mut self.current else {
            return Follow::Nothing;
        };
        let Phase::Exec { adopt } = r.phase else {
            return Follow::Nothing;
        };
        match (r.kind, adopt) {
            (RestartKind::Reexec | RestartKind::Rolling | RestartKind::Rollback, _) => {
                let took = now.saturating_duration_since(r.started_at);
                log(
                    out,
                    Level::Info,
                    format!("reexec complete in {took:.1?}: {adopted} worker(s) adopted"),
                );
                self.finish(Outcome::Completed, now, c, out);
                Follow::Nothing
            }
            (RestartKind::Hot, true) => Follow::Rollout,
            (RestartKind::Hot, false) => {
                r.phase = Phase::Starting { generation };
                Follow::Nothing
            }
        }
    }
}

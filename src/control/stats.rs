//! `GET /stats`: sup's state as JSON.
//!
//! sup's own fields (pid, version, uptime, generation, binds with the
//! addresses actually bound, each worker with slot, pid, generation, state,
//! ready time, restarts, last exit, RSS, CPU% and its latest `STATUS=`, and
//! the current or last restart with its outcome), plus the fields
//! `pumactl stats` users read (`workers`, `booted_workers`, `old_workers`,
//! `phase`, `worker_status[]`). Puma's `workers` is a count, so sup's
//! per-worker list lives in `worker_status[]`, each entry carrying both
//! Puma's keys and sup's. Resource use comes from sysinfo, refreshing only
//! the workers' pids, never the whole process table.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use super::protocol::{
    Bind, GenerationStats, LastStatus, RestartOutcome, RestartStats, Stats, WorkerPhase, WorkerStats,
};
use crate::core::{Core, Key, Outcome, RestartRecord};
use crate::output::lines::Stamp;
use crate::slot_sockets::SlotSockets;
use crate::sockets::BoundSocket;
use crate::worker::WorkerState;

/// Wall-clock time of `at`, as RFC 3339 UTC (`2026-11-22T03:25:51Z`).
pub fn iso(at: Instant, now: Instant) -> String {
    let wall = SystemTime::now()
        .checked_sub(now.saturating_duration_since(at))
        .unwrap_or(UNIX_EPOCH);
    format_utc(wall.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Time since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`: the worker-output
/// timestamp, as text.
pub fn format_utc(since_epoch: Duration) -> String {
    let stamp = Stamp::at_ms(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX));
    String::from_utf8_lossy(stamp.as_bytes()).into_owned()
}

/// Resource use of the workers, refreshed for their pids only.
pub struct Usage {
    system: Option<System>,
}

impl Usage {
    pub fn new() -> Usage {
        Usage { system: None }
    }

    pub fn refresh(&mut self, pids: &[Pid]) -> Option<&System> {
        if self.system.is_none() {
            self.system = System::new().ok();
        }
        let system = self.system.as_mut()?;
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(pids),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        Some(system)
    }
}

impl Default for Usage {
    fn default() -> Self {
        Usage::new()
    }
}

pub fn build(
    core: &Core,
    sockets: &[BoundSocket],
    slot_sockets: &SlotSockets,
    usage: &mut Usage,
    started: Instant,
    now: Instant,
    releases: &dyn Fn(u64) -> Option<String>,
) -> Stats {
    let pids: Vec<Pid> = core
        .workers()
        .iter()
        .map(|w| Pid::from_u32(w.pid.raw() as u32))
        .collect();
    let system = usage.refresh(&pids);
    let generation = core.generation();
    let slot_queues = slot_sockets.any().then(|| slot_sockets.depths());
    let mut worker_status = Vec::new();
    let (mut live, mut booted, mut old) = (0, 0, 0);
    for w in core.workers() {
        let (state, ready_at) = match w.state {
            WorkerState::Booting { .. } => (WorkerPhase::Booting, None),
            WorkerState::Ready { since } => (WorkerPhase::Ready, Some(iso(since, now))),
            WorkerState::Stopping { .. } => (WorkerPhase::Stopping, None),
        };
        let ready = state == WorkerPhase::Ready;
        if !w.is_stopping() {
            live += 1;
            booted += usize::from(ready);
            old += usize::from(w.generation < generation);
        }
        let slot = core.slot(w.slot);
        let process = system.and_then(|s| s.process(Pid::from_u32(w.pid.raw() as u32)));
        worker_status.push(WorkerStats {
            index: w.slot,
            pid: w.pid.raw(),
            phase: w.generation,
            booted: ready,
            started_at: iso(w.spawned_at, now),
            last_checkin: iso(now, now),
            last_status: LastStatus {},
            slot: w.slot,
            generation: w.generation,
            state,
            age_seconds: (now.saturating_duration_since(w.spawned_at).as_secs_f64() * 10.0).round() / 10.0,
            ready_at,
            restarts: slot.map_or(0, |s| s.restarts),
            last_exit: slot.and_then(|s| s.last_exit).map(|e| e.to_string()),
            failures_in_a_row: slot.map_or(0, |s| s.failures),
            rss_bytes: process.map(|p| p.memory()),
            pss_bytes: w.memory,
            cpu_percent: process.map(|p| (f64::from(p.cpu_usage()) * 10.0).round() / 10.0),
            status: w.status.clone(),
            queue: slot_queues.as_ref().map(|d| d.get(w.slot).copied().unwrap_or(0)),
        });
    }
    let restart = core.restart_record().map(|r| restart_stats(r, now));
    let last_restart = core.last_restart().map(|r| restart_stats(r, now));
    let binds = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| Bind {
            name: s.spec.name.clone(),
            address: s.local.to_string(),
            fd: 3 + i,
            balance: if slot_sockets.has(i) { "reuseport" } else { "shared" }.to_string(),
        })
        .collect();
    Stats {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: iso(started, now),
        uptime_seconds: now.saturating_duration_since(started).as_secs(),
        generation,
        target_workers: core.target(),
        status: core.status_line(),
        binds,
        restart,
        last_restart,
        rollback_target: core.rollback_target().map(|generation| GenerationStats {
            generation,
            workers: 0,
            release: releases(generation),
        }),
        generations: generations(core, releases),
        recycled: core
            .counters()
            .recycled
            .all()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name().to_string(), n))
            .collect(),
        restart_busy: core.restart_busy(),
        workers: live,
        booted_workers: booted,
        old_workers: old,
        phase: generation,
        worker_status,
    }
}

/// Each generation that has live workers, with the release it runs.
fn generations(core: &Core, releases: &dyn Fn(u64) -> Option<String>) -> Vec<GenerationStats> {
    let mut counts = std::collections::BTreeMap::new();
    for w in core.workers().iter().filter(|w| !w.is_stopping()) {
        *counts.entry(w.generation).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .map(|(generation, workers)| GenerationStats {
            generation,
            workers,
            release: releases(generation),
        })
        .collect()
}

fn restart_stats(r: RestartRecord, now: Instant) -> RestartStats {
    let (outcome, failed_slot, error) = match &r.outcome {
        Outcome::Running => (RestartOutcome::Running, None, None),
        Outcome::Paused => (RestartOutcome::Paused, None, None),
        Outcome::Completed => (RestartOutcome::Completed, None, None),
        Outcome::Failed { slot, reason } => (RestartOutcome::Failed, Some(*slot), Some(reason.clone())),
        Outcome::Abandoned { reason } => (RestartOutcome::Abandoned, None, Some(reason.clone())),
    };
    RestartStats {
        id: r.id,
        kind: r.kind,
        generation: r.generation,
        started_at: iso(r.started_at, now),
        finished_at: r.finished_at.map(|f| iso(f, now)),
        outcome,
        failed_slot,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(Duration::from_millis(951_782_400_250)),
            "2000-02-29T00:00:00.250Z"
        );
        assert_eq!(
            format_utc(Duration::from_secs(1_795_318_751)),
            "2026-11-22T03:39:11.000Z"
        );
    }
}

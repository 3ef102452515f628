//! The parts of the core's state that are not the worker and slot tables:
//! the stop's progress, the recycling book, sup's health, and the pid
//! index's hash. Plain data with the few questions they answer alone; the
//! decisions about them are `impl Core` in `stop`, `recycle`, `timers`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::counters::RecycleReason;
use super::vocab::Settings;
use crate::pid::{Pgid, Pid};
use crate::worker::Worker;

/// How sup is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Graceful,
    /// Everything was killed; sup exits at `exit_by` whatever is left.
    Immediate {
        exit_by: Instant,
    },
}

/// Where a graceful stop is, before the workers are asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drain {
    /// `--stop-delay`: sup reports not ready (`GET /health` → 503) and the
    /// workers keep serving until then, so load balancers stop sending.
    Delay { until: Instant },
    /// New connections are kept out; the workers take what is queued.
    /// `queued`: the last count; the next look at `probe` (none while one
    /// is out); the workers get the stop signal at `deadline` whatever is left.
    Queue {
        deadline: Instant,
        probe: Option<Instant>,
        queued: u32,
    },
    /// The workers have the stop signal.
    Workers,
}

/// At a stop, what is known of sup's other children (strays): like a
/// systemd unit's control group, nothing of the service outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strays {
    /// Not signalled yet: they go with the workers.
    Later,
    /// They got the stop signal; SIGKILL at `kill_at`.
    Signalled { kill_at: Instant },
    /// They got SIGKILL.
    Killed,
    /// None is left (the shell looked).
    Gone,
}

/// sup's own stop, once begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stopping {
    pub(super) mode: Mode,
    pub(super) drain: Drain,
    pub(super) strays: Strays,
    /// The group of the helper (hook, preflight) that was running: SIGKILL
    /// at the deadline, and sup waits for it.
    pub(super) helper: Option<(Pgid, Instant)>,
    /// A [`Action::ProbeStrays`] is out, not answered by a reap since.
    pub(super) strays_probed: bool,
}

/// What `GET /health` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Every slot serves: 200.
    Serving,
    /// Starting, or a slot has no ready worker: 503.
    NotReady,
    /// sup is stopping (the stop delay, the drain, the workers' stop): 503.
    Stopping,
}

/// sup's readiness, for a load balancer or a Kubernetes probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Slots whose worker is ready, of `target`.
    pub ready: usize,
    pub target: usize,
}

impl Health {
    pub fn serving(&self) -> bool {
        self.status == HealthStatus::Serving
    }
}

#[derive(Debug, Clone, Default)]
pub struct Recycling {
    /// Slots whose worker is being recycled: why, and the pid replaced.
    pub(super) active: BTreeMap<usize, (RecycleReason, Pid)>,
    /// A slot whose recycling failed waits until then before another try.
    pub(super) after: BTreeMap<usize, Instant>,
    /// When `--max-memory` next samples.
    pub(super) next_memory_check: Option<Instant>,
    /// A worker asked to be recycled and has not been yet.
    pub(super) asked: bool,
}

impl Recycling {
    pub(super) fn is_recycling(&self, slot: usize) -> bool {
        self.active.contains_key(&slot)
    }

    /// When a worker is due for recycling by age: its start, plus
    /// `--max-age`, plus a jitter of up to a tenth of it, fixed per pid
    /// (spreads workers started together; the core has no randomness).
    pub(super) fn age_deadline(&self, w: &Worker, settings: &Settings) -> Option<Instant> {
        let max_age = settings.max_age?;
        let mut z = (w.pid.raw() as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let fraction = ((z ^ (z >> 31)) % 1000) as f64 / 1000.0;
        Some(w.spawned_at + max_age + (max_age / 10).mul_f64(fraction))
    }

    pub(super) fn on_memory(
        &mut self,
        samples: &[(Pid, u64)],
        index: &HashMap<Pid, usize, PidHash>,
        workers: &mut [Worker],
        settings: &Settings,
    ) {
        let Some(limit) = settings.max_memory else { return };
        for &(pid, bytes) in samples {
            if let Some(&i) = index.get(&pid) {
                let w = &mut workers[i];
                w.memory = Some(bytes);
                w.over_memory = if bytes > limit {
                    w.over_memory.saturating_add(1)
                } else {
                    0
                };
            }
        }
    }
}

/// Pids are small, distinct and chosen by the kernel, not by an attacker:
/// a multiplicative hash spreads them, at a fraction of SipHash's cost.
pub(super) type PidHash = BuildHasherDefault<PidHasher>;

#[derive(Default)]
pub(super) struct PidHasher(u64);

impl Hasher for PidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, pid: i32) {
        self.0 = u64::from(pid as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

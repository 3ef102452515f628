//! What sup has counted since it first started: the counters of
//! `GET /metrics`. They cross hot restarts and `sup ctl reexec` in the
//! core's snapshot, so they reset only when sup itself is started anew.
//! Every key is an enum: a name is spelled once, here, and `/metrics`
//! iterates the variants instead of repeating the strings.

use std::collections::BTreeMap;

use super::vocab::{Ended, RestartKind};

/// Why a worker was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitCause {
    /// sup asked it to stop, or killed it.
    Stopped,
    /// It exited on its own.
    Crashed,
}

/// Why sup killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    BootTimeout,
    Watchdog,
    GracefulTimeout,
}

/// Why a worker was replaced outside a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecycleReason {
    /// `--max-memory`.
    Memory,
    /// `--max-age`.
    Age,
    /// The worker asked for it (`X_SUP_RECYCLE=1`).
    Requested,
    /// An operator asked for it (`sup ctl worker … replace`).
    Operator,
    /// Its own queue did not shrink for `--stall-timeout` (a hung worker).
    Stall,
}

/// A counter key: every variant, and its name on the wire.
pub trait Key: Copy + Ord + 'static {
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
}

impl Key for ExitCause {
    const ALL: &'static [Self] = &[ExitCause::Stopped, ExitCause::Crashed];
    fn name(self) -> &'static str {
        match self {
            ExitCause::Stopped => "stopped",
            ExitCause::Crashed => "crashed",
        }
    }
}

impl Key for KillReason {
    const ALL: &'static [Self] = &[
        KillReason::BootTimeout,
        KillReason::Watchdog,
        KillReason::GracefulTimeout,
    ];
    fn name(self) -> &'static str {
        match self {
            KillReason::BootTimeout => "boot_timeout",
            KillReason::Watchdog => "watchdog",
            KillReason::GracefulTimeout => "graceful_timeout",
        }
    }
}

impl Key for RecycleReason {
    const ALL: &'static [Self] = &[
        RecycleReason::Memory,
        RecycleReason::Age,
        RecycleReason::Requested,
        RecycleReason::Operator,
        RecycleReason::Stall,
    ];
    fn name(self) -> &'static str {
        match self {
            RecycleReason::Memory => "memory",
            RecycleReason::Age => "age",
            RecycleReason::Requested => "requested",
            RecycleReason::Operator => "operator",
            RecycleReason::Stall => "stall",
        }
    }
}

impl Key for RestartKind {
    const ALL: &'static [Self] = &[RestartKind::Rolling, RestartKind::Hot, RestartKind::Reexec];
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Key for Ended {
    const ALL: &'static [Self] = &[Ended::Completed, Ended::Failed, Ended::Abandoned];
    fn name(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Failed => "failed",
            Ended::Abandoned => "abandoned",
        }
    }
}

/// Counts by key; a key never counted reads 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Tally<K: Ord>(BTreeMap<K, u64>);

impl<K: Ord> Default for Tally<K> {
    fn default() -> Self {
        Tally(BTreeMap::new())
    }
}

impl<K: Key> Tally<K> {
    pub fn bump(&mut self, key: K) {
        *self.0.entry(key).or_default() += 1;
    }

    pub fn get(&self, key: K) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    /// Every key with its count, zeros included, in declaration order.
    pub fn all(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        K::ALL.iter().map(|&k| (k, self.get(k)))
    }
}

/// Everything `/metrics` counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Restarts that ended, by kind and how.
    pub restarts: BTreeMap<RestartKind, Tally<Ended>>,
    pub exits: Tally<ExitCause>,
    pub kills: Tally<KillReason>,
    pub recycled: Tally<RecycleReason>,
    /// Spawns that failed before the program ran.
    pub spawn_failures: u64,
}

impl Counters {
    pub fn count_restart(&mut self, kind: RestartKind, ended: Ended) {
        self.restarts.entry(kind).or_default().bump(ended);
    }

    /// How many restarts of `kind` ended so.
    pub fn restarts_of(&self, kind: RestartKind, ended: Ended) -> u64 {
        self.restarts.get(&kind).map_or(0, |t| t.get(ended))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_zero_until_counted_and_cross_json() {
        let mut c = Counters::default();
        assert_eq!(c.restarts_of(RestartKind::Hot, Ended::Failed), 0);
        c.count_restart(RestartKind::Hot, Ended::Failed);
        c.kills.bump(KillReason::Watchdog);
        c.recycled.bump(RecycleReason::Age);
        c.recycled.bump(RecycleReason::Age);
        let back: Counters = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.restarts_of(RestartKind::Hot, Ended::Failed), 1);
        let names: Vec<(&str, u64)> = back.recycled.all().map(|(k, n)| (k.name(), n)).collect();
        assert_eq!(
            names,
            [
                ("memory", 0),
                ("age", 2),
                ("requested", 0),
                ("operator", 0),
                ("stall", 0)
            ]
        );
    }
}

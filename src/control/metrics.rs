//! `GET /metrics`: Prometheus text exposition (version 0.0.4).
//!
//! Names follow Prometheus conventions: the `sup_` prefix, `_total` on
//! counters, units in the name (`_bytes`, `_seconds`). Counters live in the
//! core ([`crate::core::Counters`]) and cross hot restarts, so they only reset when sup
//! itself does. Every family is written even when it has nothing to count
//! yet (`0`), so a dashboard's series exist from the first scrape. The
//! README lists every metric.

use std::fmt::Write;
use std::time::Instant;

use sysinfo::Pid;

use super::stats::Usage;
use crate::core::counters::Tally;
use crate::core::{Core, Ended, Key, RestartKind};
use crate::slot_sockets::SlotSockets;
use crate::sockets::BoundSocket;
use crate::worker::WorkerState;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole exposition, as of `now`.
pub fn render(
    core: &Core,
    sockets: &[BoundSocket],
    slot_sockets: &SlotSockets,
    usage: &mut Usage,
    started: Instant,
    now: Instant,
) -> String {
    let mut m = Metrics::default();
    m.family("sup_info", "gauge", "sup's version; always 1.");
    m.sample("sup_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    m.family(
        "sup_uptime_seconds",
        "gauge",
        "Seconds since sup started, or since its last hot restart.",
    );
    m.sample(
        "sup_uptime_seconds",
        &[],
        now.saturating_duration_since(started).as_secs_f64(),
    );
    m.family(
        "sup_generation",
        "gauge",
        "The generation of the workers' code (the newest being started).",
    );
    m.sample("sup_generation", &[], core.generation() as f64);
    if let Some(target) = core.rollback_target() {
        m.family(
            "sup_rollback_target_generation",
            "gauge",
            "The generation `sup ctl rollback` goes back to (absent when there is none).",
        );
        m.sample("sup_rollback_target_generation", &[], target as f64);
    }
    m.family(
        "sup_workers_target",
        "gauge",
        "The number of workers sup keeps running.",
    );
    m.sample("sup_workers_target", &[], core.target() as f64);

    let (mut booting, mut ready, mut stopping) = (0, 0, 0);
    for w in core.workers() {
        match w.state {
            WorkerState::Booting { .. } => booting += 1,
            WorkerState::Ready { .. } => ready += 1,
            WorkerState::Stopping { .. } => stopping += 1,
        }
    }
    m.family("sup_workers", "gauge", "Live worker processes by state.");
    for (state, n) in [("booting", booting), ("ready", ready), ("stopping", stopping)] {
        m.sample("sup_workers", &[("state", state)], f64::from(n));
    }

    let record = core.restart_record();
    m.family(
        "sup_restart_running",
        "gauge",
        "1 while a restart of this kind is under way (rolling, hot, reexec).",
    );
    for &kind in RestartKind::ALL {
        let running = record
            .as_ref()
            .is_some_and(|r| r.kind == kind && r.finished_at.is_none());
        m.sample(
            "sup_restart_running",
            &[("kind", kind.as_str())],
            f64::from(u8::from(running)),
        );
    }

    let c = core.counters();
    m.family(
        "sup_restarts_total",
        "counter",
        "Restarts that ended, by kind and outcome (completed, failed, abandoned).",
    );
    for &kind in RestartKind::ALL {
        for &ended in Ended::ALL {
            let n = c.restarts_of(kind, ended);
            m.sample(
                "sup_restarts_total",
                &[("kind", kind.as_str()), ("outcome", ended.name())],
                n as f64,
            );
        }
    }
    counted(
        &mut m,
        "sup_worker_exits_total",
        "Workers reaped, by cause: stopped (by sup) or crashed (on their own).",
        "cause",
        &c.exits,
    );
    counted(
        &mut m,
        "sup_workers_killed_total",
        "Workers sup killed, by reason.",
        "reason",
        &c.kills,
    );
    counted(
        &mut m,
        "sup_workers_recycled_total",
        "Workers replaced outside a restart, by reason (--max-memory, --max-age).",
        "reason",
        &c.recycled,
    );
    m.family(
        "sup_worker_spawn_failures_total",
        "counter",
        "Spawns that failed before the program ran.",
    );
    m.sample("sup_worker_spawn_failures_total", &[], c.spawn_failures as f64);

    // Per worker: the leader's memory and CPU (sysinfo, these pids only).
    let pids: Vec<Pid> = core
        .workers()
        .iter()
        .map(|w| Pid::from_u32(w.pid.raw() as u32))
        .collect();
    let system = usage.refresh(&pids);
    m.family(
        "sup_worker_resident_memory_bytes",
        "gauge",
        "Resident memory of each worker process.",
    );
    let mut cpu = Vec::new();
    for w in core.workers() {
        let Some(p) = system.and_then(|s| s.process(Pid::from_u32(w.pid.raw() as u32))) else {
            continue;
        };
        let (slot, pid, generation) = (w.slot.to_string(), w.pid.to_string(), w.generation.to_string());
        let labels = [
            ("slot", slot.as_str()),
            ("pid", pid.as_str()),
            ("generation", generation.as_str()),
        ];
        m.sample("sup_worker_resident_memory_bytes", &labels, p.memory() as f64);
        cpu.push((slot, pid, generation, p.accumulated_cpu_time() as f64 / 1000.0));
    }
    m.family(
        "sup_worker_pss_bytes",
        "gauge",
        "With --max-memory: each worker's process group's PSS at the last sample.",
    );
    for w in core.workers() {
        if let Some(bytes) = w.memory {
            let (slot, pid, generation) = (w.slot.to_string(), w.pid.to_string(), w.generation.to_string());
            let labels = [
                ("slot", slot.as_str()),
                ("pid", pid.as_str()),
                ("generation", generation.as_str()),
            ];
            m.sample("sup_worker_pss_bytes", &labels, bytes as f64);
        }
    }
    m.family(
        "sup_worker_cpu_seconds_total",
        "counter",
        "CPU time (user and system) of each worker process.",
    );
    for (slot, pid, generation, seconds) in &cpu {
        let labels = [
            ("slot", slot.as_str()),
            ("pid", pid.as_str()),
            ("generation", generation.as_str()),
        ];
        m.sample("sup_worker_cpu_seconds_total", &labels, *seconds);
    }

    // Per listener: what waits to be accepted, and how much can.
    m.family(
        "sup_listener_queue_length",
        "gauge",
        "Connections the kernel has completed on this listener that no worker has accepted yet (with --balance reuseport: every slot's socket together).",
    );
    let per_slot = slot_sockets.queues();
    let slots_of = |name: &str| per_slot.iter().find(|(n, _)| *n == name).map(|(_, q)| q);
    let queues: Vec<_> = sockets
        .iter()
        .map(|s| {
            let q = match slots_of(&s.spec.name) {
                Some(q) => Some(q.iter().fold((0, 0), |(a, b), (x, y)| (a + x, b + y))),
                None => s.accept_queue(),
            };
            (s, q)
        })
        .collect();
    for (s, q) in &queues {
        if let Some((len, _)) = q {
            let addr = s.local.to_string();
            m.sample(
                "sup_listener_queue_length",
                &[("listener", &s.spec.name), ("address", &addr)],
                f64::from(*len),
            );
        }
    }
    m.family(
        "sup_listener_queue_limit",
        "gauge",
        "The listener's accept-queue limit (its backlog).",
    );
    for (s, q) in &queues {
        if let Some((_, limit)) = q {
            let addr = s.local.to_string();
            m.sample(
                "sup_listener_queue_limit",
                &[("listener", &s.spec.name), ("address", &addr)],
                f64::from(*limit),
            );
        }
    }
    if !per_slot.is_empty() {
        m.family(
            "sup_slot_queue_length",
            "gauge",
            "With --balance reuseport: connections waiting in one worker slot's own socket.",
        );
        for (name, q) in &per_slot {
            for (slot, (len, _)) in q.iter().enumerate() {
                let slot = slot.to_string();
                m.sample(
                    "sup_slot_queue_length",
                    &[("listener", name), ("slot", &slot)],
                    f64::from(*len),
                );
            }
        }
    }
    m.out
}

/// The worker-output families (`--worker-output`), kept by the shell's
/// output module rather than the core (they cross hot restarts in the
/// handoff); appended to [`render`]'s text.
pub fn worker_output(c: &crate::output::Counters) -> String {
    let mut m = Metrics::default();
    let streams = ["stdout", "stderr"];
    m.family(
        "sup_worker_output_lines_total",
        "counter",
        "Worker lines sup wrote to its stdout or stderr (--worker-output), by sup's stream.",
    );
    for (k, stream) in streams.iter().enumerate() {
        m.sample(
            "sup_worker_output_lines_total",
            &[("stream", stream)],
            c.lines[k] as f64,
        );
    }
    m.family(
        "sup_worker_output_dropped_lines_total",
        "counter",
        "Worker lines dropped because sup's stdout or stderr did not keep up.",
    );
    for (k, stream) in streams.iter().enumerate() {
        m.sample(
            "sup_worker_output_dropped_lines_total",
            &[("stream", stream)],
            c.dropped[k] as f64,
        );
    }
    m.family(
        "sup_worker_output_cut_lines_total",
        "counter",
        "Pieces of worker lines longer than 64 KiB, written cut.",
    );
    m.sample("sup_worker_output_cut_lines_total", &[], c.cut as f64);
    m.family(
        "sup_worker_output_queued_bytes",
        "gauge",
        "Worker output waiting for sup's stdout or stderr.",
    );
    for (k, stream) in streams.iter().enumerate() {
        m.sample(
            "sup_worker_output_queued_bytes",
            &[("stream", stream)],
            c.queued[k] as f64,
        );
    }
    m.family("sup_worker_output_pipes", "gauge", "Worker output pipes sup reads.");
    m.sample("sup_worker_output_pipes", &[], c.pipes as f64);
    m.out
}

fn counted<K: Key>(m: &mut Metrics, name: &str, help: &str, label: &str, counts: &Tally<K>) {
    m.family(name, "counter", help);
    for (key, n) in counts.all() {
        m.sample(name, &[(label, key.name())], n as f64);
    }
}

#[derive(Default)]
struct Metrics {
    out: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_samples_are_one_line_each() {
        let mut m = Metrics::default();
        m.family("sup_x_total", "counter", "A test.");
        m.sample("sup_x_total", &[("path", "a\"b\\c\nd")], 3.0);
        m.sample("sup_x_total", &[], 0.5);
        assert_eq!(
            m.out,
            "# HELP sup_x_total A test.\n# TYPE sup_x_total counter\nsup_x_total{path=\"a\\\"b\\\\c\\nd\"} 3\nsup_x_total 0.5\n"
        );
    }

    #[test]
    fn every_family_is_there_before_anything_happened() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["sup", "--", "x"]).unwrap();
        let config = crate::config::Config::from_cli(cli).unwrap();
        let core = Core::new(config.core_settings(None, None));
        let text = render(
            &core,
            &[],
            &SlotSockets::default(),
            &mut Usage::new(),
            Instant::now(),
            Instant::now(),
        );
        for family in [
            "sup_info",
            "sup_generation",
            "sup_workers",
            "sup_restarts_total",
            "sup_worker_exits_total",
            "sup_workers_killed_total",
            "sup_worker_spawn_failures_total",
            "sup_listener_queue_length",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}:\n{text}");
        }
        assert!(text.contains("sup_restarts_total{kind=\"rolling\",outcome=\"completed\"} 0"));
    }

    #[test]
    fn worker_output_families() {
        let text = worker_output(&crate::output::Counters {
            dropped: [3, 0],
            ..Default::default()
        });
        assert!(
            text.contains("sup_worker_output_dropped_lines_total{stream=\"stdout\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sup_worker_output_lines_total counter"));
    }
}

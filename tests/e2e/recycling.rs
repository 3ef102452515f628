//! Recycling: `--max-memory` and `--max-age` replace a worker make-before-
//! break, under load, with no failed request.

use crate::harness::*;

/// Wait until /stats counts `n` workers recycled for `reason` (`memory`, `age`).
fn wait_recycled(sup: &Sup, reason: &str, n: u64) {
    sup.wait_stats(&format!("{n} recyclings ({reason})"), secs(60), |s| {
        (s.recycled.get(reason).copied().unwrap_or(0) >= n).then_some(())
    });
}

#[test]
fn a_worker_that_grows_past_max_memory_is_replaced_again_and_again_with_no_failed_request() {
    let dir = TestDir::new();
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--max-memory",
            "48M",
            "--recycle-check",
            "100ms",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
            "--grow-kb",
            "1024",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let load = Load::start(addr);
    wait_recycled(&sup, "memory", 4);
    load.finish_without_failures(&sup);
    let log = sup.log();
    // Each one: the replacement first, then the old worker stopped.
    assert!(!log.contains("failed"), "{log}");
    let first = log.lines().position(|l| l.contains("recycling worker")).unwrap();
    let replaced = log
        .lines()
        .skip(first)
        .position(|l| l.contains(" replaces worker"))
        .unwrap();
    let stopped = log.lines().skip(first).position(|l| l.contains(") stopped")).unwrap();
    assert!(replaced < stopped, "{log}");
}

#[test]
fn max_age_recycles_on_schedule_with_jitter() {
    let dir = TestDir::new();
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "3",
            "--ready",
            "notify",
            "--max-age",
            "2s",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(3);
    let load = Load::start(addr);
    wait_recycled(&sup, "age", 6);
    load.finish_without_failures(&sup);
    // "it has run 2.07s, past --max-age": each at 2 s plus at most 10% and
    // the time it waited for the one before (one at a time).
    let ages: Vec<f64> = sup
        .log()
        .lines()
        .filter(|l| l.contains("past --max-age"))
        .filter_map(|l| l.split("it has run ").nth(1)?.split("s,").next()?.parse().ok())
        .collect();
    assert!(ages.len() >= 6, "{ages:?}");
    assert!(ages.iter().all(|a| (2.0..4.0).contains(a)), "{ages:?}");
    let distinct: std::collections::HashSet<u64> = ages.iter().map(|a| (a * 100.0) as u64).collect();
    assert!(distinct.len() > 1, "jitter: not all at the same age {ages:?}");
}

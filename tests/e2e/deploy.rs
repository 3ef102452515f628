//! Deploys an operator can steer: a canary that pauses, resume, and a
//! rollback to the previous release as it was pinned — not to whatever
//! `current` points at now.

use std::collections::BTreeMap;

use sup::control::protocol::{RestartOutcome, Stats};

use crate::harness::*;

/// A release that boots in `boot_ms`, then serves (ready on READY=1).
fn app(dir: &TestDir, name: &str, boot_ms: u64) -> std::path::PathBuf {
    release(
        dir,
        name,
        &format!("exec {WORKER} --serve --boot {boot_ms} --ready-after 0"),
    )
}

fn releases(s: &Stats) -> BTreeMap<String, usize> {
    let mut by_release = BTreeMap::new();
    for g in &s.generations {
        *by_release.entry(g.release.clone().unwrap_or_default()).or_insert(0) += g.workers;
    }
    by_release
}

struct Deploy {
    dir: TestDir,
    sock: std::path::PathBuf,
    control: String,
    sup: Sup,
}

impl Deploy {
    fn start(workers: &str, boot_ms: u64) -> Deploy {
        let dir = TestDir::new();
        let old = app(&dir, "r1", boot_ms);
        point(&dir, &old);
        let sock = dir.join("c.sock");
        let control = format!("unix:{}", sock.display());
        let current = dir.s("current");
        let sup = Sup::serving(
            &dir,
            &[
                "--workers",
                workers,
                "--max-surge",
                "2",
                "--ready",
                "notify",
                "--directory",
                &current,
                "--control",
                &control,
                "--",
                "./run",
            ],
        );
        let d = Deploy {
            dir,
            sock,
            control,
            sup,
        };
        let n: usize = workers.parse().unwrap();
        wait_until("every worker ready", secs(60), || {
            (d.sock.exists() && stats(&d.sock).booted_workers == n).then_some(())
        });
        d
    }

    fn ctl(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut all = vec!["--control", self.control.as_str()];
        all.extend_from_slice(args);
        let (code, stdout, stderr) = ctl(&all);
        (code, format!("{stdout}{stderr}"))
    }

    fn stats(&self) -> Stats {
        stats(&self.sock)
    }
}

/// 8 workers that boot in 1 s, `--max-surge 2`: a canary of 2 pauses with
/// exactly 2 workers on the new release; a rollback brings all 8 back to
/// the old one while `current` points at the new one; no request fails.
#[test]
fn a_canary_pauses_and_a_rollback_restores_the_pinned_release_under_load() {
    let d = Deploy::start("8", 1_000);
    let old = d.dir.join("r1").canonicalize().unwrap().display().to_string();
    let load = Load::start(d.sup.tcp_addr(0));
    let new = app(&d.dir, "r2", 1_000);
    point(&d.dir, &new);
    let (code, out) = d.ctl(&["phased-restart", "--canary", "2", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("paused"), "{out}");
    let s = d.stats();
    assert_eq!(s.restart.as_ref().map(|r| r.outcome), Some(RestartOutcome::Paused));
    let new_dir = new.display().to_string();
    assert_eq!(releases(&s), [(new_dir.clone(), 2), (old.clone(), 6)].into(), "{s:?}");
    assert_eq!(
        s.rollback_target.as_ref().and_then(|t| t.release.clone()),
        Some(old.clone())
    );
    let metrics = metrics_text(&d.sock);
    assert!(metrics.contains("sup_rollback_target_generation 0"), "{metrics}");
    let (code, out) = d.ctl(&["status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("paused"), "{out}");
    let (code, out) = d.ctl(&["rollback", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    let s = d.stats();
    assert_eq!(releases(&s), [(old.clone(), 8)].into(), "{s:?}");
    assert_eq!(
        std::fs::canonicalize(d.dir.join("current")).unwrap(),
        new,
        "current still points at the new release"
    );
    load.finish_without_failures(&d.sup);
}

#[test]
fn a_completed_rollout_is_rolled_back_and_a_paused_canary_survives_a_reexec() {
    let d = Deploy::start("3", 100);
    let old = d.dir.join("r1").canonicalize().unwrap().display().to_string();
    let new = app(&d.dir, "r2", 100);
    point(&d.dir, &new);
    let (code, out) = d.ctl(&["phased-restart", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(releases(&d.stats()), [(new.display().to_string(), 3)].into());
    let (code, out) = d.ctl(&["rollback", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(releases(&d.stats()), [(old.clone(), 3)].into());
    // A canary, then sup re-executes itself: still paused, still resumable.
    let newer = app(&d.dir, "r3", 100);
    point(&d.dir, &newer);
    let (code, out) = d.ctl(&["phased-restart", "--canary", "1", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = d.ctl(&["reexec", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    let s = d.stats();
    assert_eq!(
        s.restart.as_ref().map(|r| r.outcome),
        Some(RestartOutcome::Paused),
        "{s:?}"
    );
    assert_eq!(releases(&s).get(&newer.display().to_string()), Some(&1));
    let (code, out) = d.ctl(&["resume", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(releases(&d.stats()), [(newer.display().to_string(), 3)].into());
}

#[test]
fn a_rollback_whose_pinned_release_was_deleted_is_refused_and_stops_nothing() {
    let d = Deploy::start("2", 100);
    let new = app(&d.dir, "r2", 100);
    point(&d.dir, &new);
    let (code, out) = d.ctl(&["phased-restart", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    let before: Vec<i32> = d.stats().worker_status.iter().map(|w| w.pid).collect();
    std::fs::remove_dir_all(d.dir.join("r1")).unwrap();
    let (code, out) = d.ctl(&["rollback", "--wait"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no longer exists"), "{out}");
    let after: Vec<i32> = d.stats().worker_status.iter().map(|w| w.pid).collect();
    assert_eq!(before, after, "nothing stopped");
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Twenty deploys, each a canary then a rollback, leave sup's open fds the
/// same and its memory within a page or so of where it was.
#[test]
fn twenty_canary_and_rollback_cycles_leak_nothing() {
    let d = Deploy::start("4", 0);
    let mut seen = Vec::new();
    for k in 0..20 {
        let next = app(&d.dir, &format!("c{k}"), 0);
        point(&d.dir, &next);
        let (code, out) = d.ctl(&["phased-restart", "--canary", "2", "--wait"]);
        assert_eq!(code, Some(0), "cycle {k}: {out}");
        let (code, out) = d.ctl(&["rollback", "--wait"]);
        assert_eq!(code, Some(0), "cycle {k}: {out}");
        seen.push((fd_count(d.sup.pid()), rss_kib(d.sup.pid())));
    }
    let (fds2, rss2) = seen[1];
    let (fds20, rss20) = seen[19];
    assert_eq!(fds20, fds2, "fds after each cycle: {seen:?}");
    assert!(rss20 <= rss2 + 512, "RSS grew from {rss2} KiB to {rss20} KiB: {seen:?}");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("sup after 2 and 20 canary+rollback cycles: {fds2}/{fds20} fds, {rss2}/{rss20} KiB RSS\n").as_bytes(),
    );
}

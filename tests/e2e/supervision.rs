//! Keeping workers running: replacement, backoff, scaling, the release
//! directory.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn a_killed_worker_is_replaced_in_its_slot() {
    let dir = TestDir::new();
    let sup = Sup::serving(&dir, &["--workers", "2", "--", WORKER, "--serve"]);
    let addr = sup.tcp_addr(0);
    let workers = sup.wait_stats("two workers", secs(10), |s| {
        (s.worker_status.len() == 2).then(|| s.worker_status.clone())
    });
    let (victim, slot) = (workers[1].pid, workers[1].slot);
    // SAFETY: the victim is a worker of our sup.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let replacement = sup.wait_stats("a replacement in the victim's slot", secs(10), |s| {
        let w = s.worker_status.iter().find(|w| w.slot == slot && w.pid != victim)?;
        Some(w.clone())
    });
    assert_eq!(
        (replacement.generation, replacement.last_exit.as_deref()),
        (0, Some("signal KILL")),
        "{replacement:?}"
    );
    let replacement = replacement.pid;
    // The replacement serves: within a few requests it answers.
    wait_until("the replacement to answer", secs(10), || {
        let v = get(addr).ok()?;
        (v["pid"].as_i64()? == replacement as i64).then_some(())
    });
}

#[test]
fn a_crash_looping_command_backs_off_and_sup_survives() {
    let dir = TestDir::new();
    let mut sup = Sup::serving(&dir, &["--", WORKER, "--exit", "1"]);
    let window = Duration::from_secs(10);
    let start = Instant::now();
    // Observe for a fixed window: this measures a rate, it does not wait for
    // an event, so it polls liveness until the window has passed.
    while start.elapsed() < window {
        assert!(sup.is_running(), "sup died during a crash loop:\n{}", sup.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let spawns = sup.started_pids().len();
    // Backoff 0, 0.5, 1, 2, 4 s ... gives 6 spawns in 10 s; a tight loop
    // would give thousands.
    assert!((3..=10).contains(&spawns), "{spawns} spawns in 10 s:\n{}", sup.log());
    assert!(sup.log().contains("failures in a row"), "{}", sup.log());
    sup.signal(libc::SIGTERM);
    assert!(sup.wait_exit(secs(10)).success());
}

#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let dir = TestDir::new();
    let sup = Sup::serving(&dir, &["--workers", "2", "--", WORKER, "--serve"]);
    sup.wait_stats("two workers", secs(10), |s| (s.worker_status.len() == 2).then_some(()));
    sup.signal(libc::SIGTTIN);
    let third = sup.wait_stats("worker 2", secs(10), |s| {
        s.worker_status.iter().find(|w| w.slot == 2).map(|w| w.pid)
    });
    sup.signal(libc::SIGTTOU);
    sup.wait_stats("worker 2 stopped and reaped", secs(10), |s| {
        let gone = !s.worker_status.iter().any(|w| w.pid == third);
        (s.target_workers == 2 && gone).then_some(())
    });
    sup.signal(libc::SIGTTOU);
    sup.wait_stats("1 worker wanted", secs(10), |s| (s.target_workers == 1).then_some(()));
    sup.signal(libc::SIGTTOU);
    // A TTOU at 1 changes nothing: only the log shows it was taken.
    sup.wait_log("TTOU ignored: already at 1 worker", secs(10));
    assert_eq!(sup.started_pids().len(), 3, "nothing was respawned:\n{}", sup.log());
}

/// A release with a relative `./run` that execs the helper worker with its arguments.
fn release_of(dir: &TestDir, name: &str) -> std::path::PathBuf {
    release(dir, name, &format!("exec {WORKER} \"$@\""))
}

#[test]
fn the_directory_is_resolved_at_every_spawn() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let r1 = release_of(&dir, "r1");
    let r2 = release_of(&dir, "r2");
    point(&dir, &r1);
    let current = dir.s("current");
    let reports = dir.s("reports");
    let sup = Sup::serving(
        &dir,
        &[
            "--directory",
            &current,
            "--",
            "./run",
            "--serve",
            "--report-dir",
            &reports,
        ],
    );
    let first = wait_until("the first report", secs(10), || {
        dir.reports("reports").into_iter().next()
    });
    assert_eq!(first["cwd"], r1.display().to_string());
    assert_eq!(first["env"]["PWD"], r1.display().to_string());

    point(&dir, &r2);
    let pid = first["pid"].as_i64().unwrap() as i32;
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let second = wait_until("the replacement's report", secs(10), || {
        dir.reports("reports")
            .into_iter()
            .find(|r| r["pid"].as_i64() != Some(pid as i64))
    });
    assert_eq!(second["cwd"], r2.display().to_string());
    assert_eq!(second["env"]["PWD"], r2.display().to_string());
    assert_eq!(
        second["env"]["LISTEN_PID"],
        second["pid"].to_string(),
        "exec through a script keeps LISTEN_PID true"
    );
    drop(sup);
}

#[test]
fn a_dangling_release_is_a_failed_boot_and_running_workers_keep_serving() {
    let dir = TestDir::new();
    let r1 = release_of(&dir, "r1");
    point(&dir, &r1);
    let current = dir.s("current");
    let sup = Sup::serving(
        &dir,
        &["--workers", "2", "--directory", &current, "--", "./run", "--serve"],
    );
    let addr = sup.tcp_addr(0);
    wait_until("two workers", secs(10), || {
        (sup.started_pids().len() == 2).then_some(())
    });
    point(&dir, &dir.join("removed-release"));
    let victim = sup.started_pids()[0];
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    // Why the spawn failed is in the log only.
    let line = sup.wait_log("failed to start", secs(10));
    assert!(line.contains("does not resolve"), "{line}");
    // The other worker keeps serving.
    let survivor = sup.started_pids()[1];
    let mut seen = HashSet::new();
    for _ in 0..5 {
        seen.insert(get(addr).unwrap()["pid"].as_i64().unwrap());
    }
    assert_eq!(seen, HashSet::from([survivor as i64]));
    // Once the release is back, the slot is refilled (after its backoff).
    point(&dir, &r1);
    wait_until("the slot to be refilled", secs(40), || {
        (sup.started_pids().len() == 3).then_some(())
    });
}

#[test]
fn env_file_is_read_from_the_release_at_every_spawn() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let r1 = release_of(&dir, "r1");
    std::fs::write(r1.join(".env"), "export RELEASE=one\nQUOTED=\"a b\"\n").unwrap();
    point(&dir, &r1);
    let (current, reports) = (dir.s("current"), dir.s("reports"));
    let _sup = Sup::start(
        &dir,
        &[
            "--directory",
            &current,
            "--env-file",
            ".env",
            "--",
            "./run",
            "--report-dir",
            &reports,
        ],
    );
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    assert_eq!(r["env"]["RELEASE"], "one");
    assert_eq!(r["env"]["QUOTED"], "a b");
}

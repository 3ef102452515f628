//! Rolling restarts (SIGUSR1) under load, broken releases, readiness
//! attribution, the restart hook.

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use crate::harness::*;

fn roll_under_load(workers: &str, n: usize) {
    let dir = TestDir::new();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            workers,
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "200",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(n);
    let first: HashSet<i64> = answering_pids(addr, n);
    let load = Load::start(addr);
    for generation in 1..=3 {
        sup.signal(libc::SIGUSR1);
        sup.wait_restart_complete(RestartKind::Rolling, generation, secs(60));
    }
    load.finish_without_failures(&sup);
    let last = answering(addr, n);
    assert!(
        last.iter()
            .all(|(pid, generation)| *generation == 3 && !first.contains(pid)),
        "{last:?} vs {first:?}"
    );
    assert!(sup.is_running());
}

#[test]
fn three_rolling_restarts_of_four_workers_fail_no_request() {
    roll_under_load("4", 4);
}

#[test]
fn a_rolling_restart_of_one_worker_fails_no_request() {
    roll_under_load("1", 1);
}

#[test]
fn a_broken_release_stops_the_rollout_and_the_old_workers_keep_serving() {
    let dir = TestDir::new();
    point(&dir, &good(&dir, "r1"));
    let broken = release(&dir, "r2", "echo 'release 2 cannot boot' >&2; exit 1");
    let current = dir.s("current");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "3",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(3);
    let old: HashSet<i64> = answering_pids(addr, 3);

    point(&dir, &broken);
    let load = Load::start(addr);
    sup.signal(libc::SIGUSR1);
    let (s, error) = sup.wait_restart_ended(1, RestartKind::Rolling, RestartOutcome::Failed, secs(30));
    assert_eq!(s.restart.as_ref().map(|r| r.generation), Some(Some(1)));
    assert!(error.contains("exited with status 1 before becoming ready"), "{error}");
    assert_eq!(
        (s.workers, s.booted_workers),
        (3, 3),
        "3 workers keep serving: {}",
        summary(&s)
    );
    load.finish_without_failures(&sup);
    let still: HashSet<i64> = answering_pids(addr, 3);
    assert_eq!(still, old, "the same old workers serve");
    assert!(sup.is_running());
    assert!(
        !sup.log().contains("stopped (signal TERM)"),
        "no old worker was stopped:\n{}",
        sup.log()
    );

    // An old worker dies while `current` still names the broken release:
    // its slot gets gen 0 again, from r1 as it was pinned, not a crash loop.
    let victim = *old.iter().next().unwrap() as i32;
    // SAFETY: killing a worker of the sup this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let s = sup.wait_stats("the slot refilled from r1", secs(30), |s| {
        let live: Vec<&WorkerStats> = s.worker_status.iter().filter(|w| w.pid != victim).collect();
        (live.len() == 3 && live.iter().all(|w| w.state == WorkerPhase::Ready)).then(|| s.clone())
    });
    assert!(s.worker_status.iter().all(|w| w.generation == 0), "{}", summary(&s));
    let r1 = std::fs::canonicalize(dir.join("r1")).unwrap().display().to_string();
    assert!(
        s.generations.iter().all(|g| g.release.as_deref() == Some(r1.as_str())),
        "{:?}",
        s.generations
    );
    assert_eq!(
        sup.log().matches("release 2 cannot boot").count(),
        1,
        "only the rollout's replacement ran r2:\n{}",
        sup.log()
    );

    point(&dir, &good(&dir, "r3"));
    sup.signal(libc::SIGUSR1);
    sup.wait_restart_complete(RestartKind::Rolling, 2, secs(60));
    let new = answering(addr, 3);
    assert!(new.iter().all(|(pid, g)| *g == 2 && !old.contains(pid)), "{new:?}");
}

#[test]
fn a_replacement_that_never_sends_ready_times_out_and_the_rollout_stops() {
    let dir = TestDir::new();
    point(&dir, &good(&dir, "r1"));
    let silent = release(&dir, "r2", &format!("exec {WORKER} --serve"));
    let current = dir.s("current");
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--boot-timeout",
            "2s",
            "--directory",
            &current,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let old: HashSet<i64> = answering_pids(addr, 2);
    point(&dir, &silent);
    sup.signal(libc::SIGUSR1);
    let (s, error) = sup.wait_restart_ended(1, RestartKind::Rolling, RestartOutcome::Failed, secs(30));
    assert_eq!(s.restart.as_ref().map(|r| r.generation), Some(Some(1)));
    assert!(error.contains("was not ready within 2s"), "{error}");
    // The silent replacement is killed and reaped (how it ended is only in
    // the log); the old ones still serve.
    sup.wait_log("stopped (signal KILL)", secs(10));
    let still: HashSet<i64> = answering_pids(addr, 2);
    assert_eq!(still, old);
}

#[test]
fn ready_from_a_child_in_the_group_counts_and_strangers_are_dropped() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    // Worker 0's readiness comes from systemd-notify, a child process; the
    // worker itself never sends anything.
    let script = format!("systemd-notify --ready --status=child; exec {WORKER} --report-dir {reports}");
    let sup = Sup::controlled(&dir, &["--ready", "notify", "--", "sh", "-c", &script]);
    sup.wait_workers_ready(1);
    let report = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let address = report["env"]["NOTIFY_SOCKET"].as_str().unwrap().to_string();
    assert!(address.starts_with('/') && address.ends_with("/notify"), "{address}");

    // A stranger (this test process) claims readiness and passes an fd.
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    client.send_to(b"READY=1\nSTATUS=impostor", &address).unwrap();
    // Dropping changes no state: the log line is all there is to see.
    sup.wait_log(
        &format!("dropped a notify message from pid {}", std::process::id()),
        secs(10),
    );

    let (r, w) = nix::unistd::pipe().unwrap();
    let fds = [w.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"BARRIER=1")];
    let addr = nix::sys::socket::UnixAddr::new(address.as_str()).unwrap();
    nix::sys::socket::sendmsg(
        client.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        Some(&addr),
    )
    .unwrap();
    drop(w);
    // sup closed its copy: the pipe's read end sees EOF (poll, not sleep).
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, secs(10).as_millis() as i32) };
    assert_eq!(n, 1, "sup closed the fd sent with the message");
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 0);
}

#[test]
fn a_failing_hook_vetoes_and_a_passing_one_runs_in_the_release() {
    let dir = TestDir::new();
    let r1 = good(&dir, "r1");
    point(&dir, &r1);
    let current = dir.s("current");
    let flag = dir.join("hook-may-pass");
    let seen = dir.s("hook-saw");
    let hook = format!(
        "echo \"$SUP_RESTART $(pwd)\" > {seen}; test -e {} || {{ echo 'migrations pending' >&2; exit 3; }}",
        flag.display()
    );
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--on-restart",
            &hook,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let old: HashSet<i64> = answering_pids(addr, 2);

    let r2 = good(&dir, "r2");
    point(&dir, &r2);
    sup.signal(libc::SIGUSR1);
    let (_, error) = sup.wait_restart_ended(1, RestartKind::Rolling, RestartOutcome::Abandoned, secs(30));
    assert!(error.contains("the restart hook exited with status 3"), "{error}");
    assert!(sup.log().contains("migrations pending"), "hook output is in sup's log");
    assert_eq!(answering_pids(addr, 2), old);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("rolling {}", r2.display())
    );

    std::fs::write(&flag, "").unwrap();
    sup.signal(libc::SIGUSR1);
    sup.wait_restart_complete(RestartKind::Rolling, 1, secs(60));
    let new = answering(addr, 2);
    assert!(new.iter().all(|(pid, _)| !old.contains(pid)), "{new:?}");
}

#[test]
fn a_storm_of_usr1_ends_with_n_ready_workers_of_one_generation() {
    let dir = TestDir::new();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "3",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "50",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(3);
    for _ in 0..50 {
        sup.signal(libc::SIGUSR1);
    }
    // Quiet: the last restart is completed, none waits to run, and three
    // workers are left.
    let live = sup.wait_stats("the storm to settle", secs(60), |s| {
        let done = s
            .restart
            .as_ref()
            .is_some_and(|r| r.outcome == RestartOutcome::Completed)
            && !s.restart_busy;
        (done && s.worker_status.len() == 3).then(|| s.worker_status.clone())
    });
    let gens: HashSet<u64> = live.iter().map(|w| w.generation).collect();
    assert_eq!(gens.len(), 1, "one generation: {live:?}");
    let answering: HashSet<i64> = answering_pids(addr, 3);
    let live_pids: HashSet<i64> = live.iter().map(|w| i64::from(w.pid)).collect();
    assert_eq!(answering, live_pids);
    assert!(sup.is_running());
}

#[test]
fn a_silent_watchdog_gets_a_worker_replaced() {
    let dir = TestDir::new();
    let sup = Sup::start(
        &dir,
        &[
            "--ready",
            "notify",
            "--watchdog",
            "1s",
            "--",
            WORKER,
            "--ready-after",
            "0",
            "--watchdog-once",
        ],
    );
    let first = wait_until("a worker", secs(10), || sup.started_pids().first().copied());
    // Why it was killed is in the log only.
    let line = sup.wait_log("sent no WATCHDOG=1 for 1s: killing it", secs(20));
    assert!(line.contains(&format!("(pid {first},")), "{line}");
    wait_until("a replacement", secs(20), || {
        (sup.started_pids().len() >= 2).then_some(())
    });
}

#[test]
fn an_einhorn_ack_counts_as_ready() {
    let dir = TestDir::new();
    let sup = Sup::controlled(
        &dir,
        &[
            "--ready",
            "notify",
            "--einhorn-ack",
            "--",
            WORKER,
            "--einhorn-ack-after",
            "100",
        ],
    );
    let pid = wait_until("a worker", secs(10), || sup.started_pids().first().copied());
    sup.wait_stats(&format!("worker 0 (pid {pid}) ready"), secs(20), |s| {
        let ready = |w: &WorkerStats| w.slot == 0 && w.pid == pid && w.state == WorkerPhase::Ready;
        s.worker_status.iter().any(ready).then_some(())
    });
}

#[test]
fn each_worker_gets_watchdog_usec_and_its_own_pid_as_watchdog_pid() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let _sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--watchdog",
            "3s",
            "--",
            WORKER,
            "--serve",
            "--report-dir",
            &reports,
        ],
    );
    let all = wait_until("two reports", secs(10), || {
        let r = dir.reports("reports");
        (r.len() == 2).then_some(r)
    });
    for r in all {
        assert_eq!(r["env"]["WATCHDOG_PID"], r["pid"].to_string(), "{r}");
        assert_eq!(r["env"]["WATCHDOG_USEC"], "3000000", "{r}");
        assert_eq!(r["env"]["LISTEN_PID"], r["pid"].to_string(), "{r}");
    }
}

#[test]
fn a_rust_sd_notify_worker_pings_on_its_own_and_is_replaced_when_it_stops() {
    // examples/listenfd.rs: the sd-notify crate's `watchdog_enabled()`, which
    // trusts WATCHDOG_USEC only when WATCHDOG_PID is the process's own pid.
    let example = std::path::Path::new(SUP).parent().unwrap().join("examples/listenfd");
    let dir = TestDir::new();
    let sup = Sup::serving(
        &dir,
        &["--ready", "notify", "--watchdog", "1s", "--", example.to_str().unwrap()],
    );
    sup.wait_workers_ready(1);
    let pid = sup.started_pids()[0];
    // Three watchdog periods: its own pings keep it alive.
    std::thread::sleep(secs(3));
    assert_eq!(sup.started_pids(), [pid], "{}", sup.log());
    assert!(!sup.log().contains("sent no WATCHDOG=1"), "{}", sup.log());
    // Frozen, it goes silent: sup kills and replaces it, which it would not
    // do to a worker that never pinged.
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // As above: the reason is in the log.
    let line = sup.wait_log("sent no WATCHDOG=1 for 1s: killing it", secs(20));
    assert!(line.contains(&format!("(pid {pid},")), "{line}");
    wait_until("a replacement", secs(20), || {
        (sup.started_pids().len() >= 2).then_some(())
    });
}

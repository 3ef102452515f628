//! Stopping: graceful, escalated, immediate, and sup's own death.

use crate::harness::*;

#[test]
fn a_graceful_stop_lets_an_in_flight_request_finish() {
    let dir = TestDir::new();
    let pidfile = dir.s("sup.pid");
    let sock = dir.s("s.sock");
    let unix_bind = format!("unix:{sock}");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--bind",
            &unix_bind,
            "--pidfile",
            &pidfile,
            "--",
            WORKER,
            "--serve",
            "--delay-response",
            "1500",
        ],
    );
    let addr = sup.tcp_addr(0);
    wait_until("the pidfile", secs(10), || {
        std::fs::read_to_string(&pidfile).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), sup.pid().to_string());
    let client = std::thread::spawn(move || get(addr));
    // The worker's own line: only it knows the request is in flight.
    sup.wait_log("request received", secs(10));
    sup.signal(libc::SIGTERM);
    let answer = client.join().unwrap().expect("the in-flight request is answered");
    assert!(answer["pid"].is_number());
    let status = sup.wait_exit(secs(20));
    assert_eq!(status.code(), Some(0), "{}", sup.log());
    assert!(sup.log().contains("exiting gracefully"));
    assert!(!std::path::Path::new(&sock).exists(), "unix socket file removed");
    assert!(!std::path::Path::new(&pidfile).exists(), "pidfile removed");
}

#[test]
fn a_term_ignoring_worker_and_its_grandchild_are_killed_after_the_timeout() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--graceful-timeout",
            "1s",
            "--",
            WORKER,
            "--ignore-term",
            "--grandchild",
            "--report-dir",
            &reports,
        ],
    );
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let worker = r["pid"].as_i64().unwrap() as i32;
    let grandchild = r["grandchild"].as_i64().unwrap() as i32;
    assert!(alive(worker) && alive(grandchild));
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(secs(20));
    assert_eq!(status.code(), Some(0), "{}", sup.log());
    assert!(
        sup.log().contains("did not stop within 1s: killing its process group"),
        "{}",
        sup.log()
    );
    wait_until("worker and grandchild gone", secs(5), || {
        (!alive(worker) && !alive(grandchild)).then_some(())
    });
}

#[test]
fn a_wrapper_that_exits_leaves_no_child_behind() {
    // `sh -c 'child & wait'` dies of TERM; its child ignores TERM and stays
    // in the group until the graceful deadline, then is killed.
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let script = format!("{WORKER} --ignore-term --report-dir {reports} & wait");
    let mut sup = Sup::start(&dir, &["--graceful-timeout", "1s", "--", "sh", "-c", &script]);
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let inner = r["pid"].as_i64().unwrap() as i32;
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(20)).code(), Some(0), "{}", sup.log());
    wait_until("the wrapper's child gone", secs(5), || (!alive(inner)).then_some(()));
}

#[test]
fn a_second_int_stops_at_once() {
    let dir = TestDir::new();
    // Ready (READY=1) comes after the worker ignores TERM: no race with the first INT.
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--graceful-timeout",
            "60s",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--ignore-term",
            "--ready-after",
            "0",
        ],
    );
    sup.wait_workers_ready(1);
    let pid = sup.started_pids()[0];
    sup.signal(libc::SIGINT);
    // The first INT is taken before the second is sent (two pending INTs are one).
    sup.wait_stats("the worker to be stopping", secs(10), |s| {
        let stopping = |w: &WorkerStats| w.pid == pid && w.state == WorkerPhase::Stopping;
        s.worker_status.iter().any(stopping).then_some(())
    });
    sup.signal(libc::SIGINT);
    assert_eq!(sup.wait_exit(secs(10)).code(), Some(0), "{}", sup.log());
    assert!(sup.log().contains("second INT: stopping at once"));
    wait_until("the worker gone", secs(5), || (!alive(pid)).then_some(()));
}

#[test]
fn quit_stops_at_once() {
    let dir = TestDir::new();
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--workers",
            "2",
            "--graceful-timeout",
            "60s",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--ignore-term",
            "--ready-after",
            "0",
        ],
    );
    sup.wait_workers_ready(2);
    let pids = sup.started_pids();
    sup.signal(libc::SIGQUIT);
    assert_eq!(sup.wait_exit(secs(10)).code(), Some(0), "{}", sup.log());
    wait_until("the workers gone", secs(5), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn sigkill_of_sup_takes_its_workers_down() {
    let dir = TestDir::new();
    let mut sup = Sup::serving(&dir, &["--workers", "3", "--", WORKER, "--serve"]);
    let pids = wait_until("three workers", secs(10), || {
        let p = sup.started_pids();
        (p.len() == 3).then_some(p)
    });
    for p in &pids {
        assert_eq!(ppid(*p), Some(sup.pid()));
    }
    sup.signal(libc::SIGKILL);
    sup.wait_exit(secs(5));
    wait_until("workers gone after sup's death", secs(5), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn sup_reaps_every_child_and_leaves_no_zombie() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    // The worker's grandchild is orphaned when the worker is killed; sup,
    // a subreaper, adopts and reaps it after killing the group.
    let sup = Sup::start(
        &dir,
        &[
            "--graceful-timeout",
            "1s",
            "--",
            WORKER,
            "--grandchild",
            "--report-dir",
            &reports,
        ],
    );
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let (worker, grandchild) = (
        r["pid"].as_i64().unwrap() as i32,
        r["grandchild"].as_i64().unwrap() as i32,
    );
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    wait_until("the replacement", secs(10), || {
        (sup.started_pids().len() == 2).then_some(())
    });
    wait_until("no zombie or orphan left", secs(10), || {
        let gone = |p: i32| !std::path::Path::new(&format!("/proc/{p}")).exists();
        (gone(worker) && gone(grandchild)).then_some(())
    });
}

#[test]
fn a_group_member_that_exits_by_itself_after_its_worker_is_not_waited_for() {
    // hypercorn's resource tracker and spawned child follow its main process
    // out a few milliseconds later; here a subshell plays that part: it
    // waits until the worker has been reaped (`kill -0` still reaches a
    // zombie), then lingers a little and exits. sup used to wait for the
    // graceful deadline whenever any member was still there at the moment
    // the worker was reaped (and a hot restart waited with it).
    let dir = TestDir::new();
    let script = format!(
        "p=$$; (while kill -0 $p 2>/dev/null; do sleep 0.05; done; sleep 0.3) & exec {WORKER} --serve --ready-after 0"
    );
    let mut sup = Sup::serving(
        &dir,
        &[
            "--graceful-timeout",
            "600s",
            // Ready once the worker itself runs: the subshell exists by then.
            "--ready",
            "notify",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    sup.wait_workers_ready(1);
    sup.signal(libc::SIGTERM);
    // The case under test happened: members were left when the worker was
    // reaped (/stats does not show a group's members).
    sup.wait_log("other processes remain in its group", secs(10));
    // Far less than the 600 s deadline: a liveness bound, not a speed test.
    assert_eq!(sup.wait_exit(secs(60)).code(), Some(0), "{}", sup.log());
    let log = sup.log();
    assert!(!log.contains("killing what remains"), "{log}");
}

/// Poll a pid file a shell wrote.
fn pid_in(dir: &TestDir, name: &str) -> i32 {
    wait_until(name, secs(10), || {
        std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    })
}

#[test]
fn a_daemon_that_escaped_a_worker_is_stopped_with_sup() {
    let dir = TestDir::new();
    // The worker's shell starts a daemon in its own session (it escapes the
    // worker's process group, and holds the listening socket, fd 3), then
    // becomes the server.
    let script = format!("setsid sleep 300 & echo $! > daemon.pid; exec {WORKER} --serve --ready-after 0");
    let mut sup = Sup::serving(&dir, &["--ready", "notify", "--", "sh", "-c", &script]);
    sup.wait_workers_ready(1);
    let daemon = pid_in(&dir, "daemon.pid");
    assert!(alive(daemon));
    // Its worker dies: the daemon is left to sup, which says so at once.
    std::fs::remove_file(dir.join("daemon.pid")).unwrap();
    let worker = sup.started_pids()[0];
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    // What sup says about an escaped process is the subject here.
    let line = sup.wait_log(&format!("pid {daemon} (sleep 300) escaped"), secs(10));
    assert!(line.contains("it holds one of sup's listening sockets"), "{line}");
    let second = pid_in(&dir, "daemon.pid");
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(secs(20));
    assert_eq!(status.code(), Some(0), "{}", sup.log());
    assert!(!alive(daemon), "the daemon outlived sup:\n{}", sup.log());
    assert!(!alive(second), "the second daemon outlived sup:\n{}", sup.log());
    let line = sup.wait_log("sending TERM to pid", secs(1));
    assert!(line.contains("holding one of sup's listening sockets"), "{line}");
}

#[test]
fn a_daemon_that_ignores_the_stop_signal_is_killed_at_the_deadline() {
    let dir = TestDir::new();
    let script = format!(
        "setsid sh -c 'trap \"\" TERM; echo $$ > daemon.pid; while :; do sleep 1; done' & exec {WORKER} --serve --ready-after 0"
    );
    let mut sup = Sup::serving(
        &dir,
        &[
            "--ready",
            "notify",
            "--graceful-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    sup.wait_workers_ready(1);
    let daemon = pid_in(&dir, "daemon.pid");
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(20)).code(), Some(0), "{}", sup.log());
    assert!(!alive(daemon), "the daemon outlived sup:\n{}", sup.log());
    assert!(sup.log().contains("killing what is left of the processes that escaped"));
}

#[test]
fn the_hooks_children_die_with_a_killed_sup() {
    let dir = TestDir::new();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--ready",
            "notify",
            "--on-restart",
            "sleep 300 & echo $! > hook-child.pid; wait",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    sup.wait_workers_ready(1);
    sup.signal(libc::SIGUSR1);
    let child = pid_in(&dir, "hook-child.pid");
    assert!(alive(child));
    sup.signal(libc::SIGKILL);
    sup.wait_exit(secs(10));
    wait_until("the hook's child to die with sup", secs(10), || {
        (!alive(child)).then_some(())
    });
}

//! Hot restarts (SIGUSR2): sup re-executes itself in place; the sockets
//! never close; a preflight guards it; nothing leaks.

use std::collections::HashSet;

use crate::harness::*;
use sup::control::protocol::RestartOutcome;

#[test]
fn three_hot_restarts_of_four_workers_refuse_no_connection() {
    let dir = TestDir::new();
    let pidfile = dir.s("sup.pid");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "4",
            "--ready",
            "notify",
            "--pidfile",
            &pidfile,
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "100",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(4);
    let first: HashSet<i64> = answering_pids(addr, 4);
    let load = Load::start(addr);
    for generation in 1..=3 {
        sup.signal(libc::SIGUSR2);
        sup.wait_restart_complete(RestartKind::Hot, generation, secs(60));
    }
    load.finish_without_failures(&sup);
    assert!(sup.is_running());
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        sup.pid().to_string(),
        "same pid, pidfile true"
    );
    let last = answering(addr, 4);
    assert!(last.iter().all(|(pid, g)| *g == 3 && !first.contains(pid)), "{last:?}");
}

#[test]
fn twenty_hot_restarts_leak_nothing() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let unix = format!("unix:{}", dir.s("s.sock"));
    let sup = Sup::serving(
        &dir,
        &[
            "--bind",
            &unix,
            "--workers",
            "2",
            "--ready",
            "notify",
            "--einhorn-ack",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
            "--report-dir",
            &reports,
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let fds_before = fd_count(sup.pid());
    let worker_fds = |r: &serde_json::Value| r["fds"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let before = worker_fds(&dir.reports("reports")[0]);
    for n in 1..=20 {
        sup.signal(libc::SIGUSR2);
        sup.wait_restart_complete(RestartKind::Hot, n, secs(60));
    }
    assert_eq!(fd_count(sup.pid()), fds_before, "sup holds as many fds as before");
    assert_eq!(children_of(sup.pid()).1, Vec::<i32>::new());
    let gen20: Vec<serde_json::Value> = dir
        .reports("reports")
        .into_iter()
        .filter(|r| r["env"]["SUP_GENERATION"] == "20")
        .collect();
    assert_eq!(gen20.len(), 2);
    for r in &gen20 {
        assert_eq!(worker_fds(r), before, "workers get exactly the same fds");
        assert!(
            r["env"].get("SUP_HANDOFF").is_none(),
            "the handoff never reaches a worker"
        );
    }
    let answers = answering(addr, 2);
    assert!(answers.iter().all(|(_, g)| *g == 20), "{answers:?}");
}

#[test]
fn a_release_that_fails_the_preflight_is_not_started_and_the_old_workers_serve() {
    let dir = TestDir::new();
    point(&dir, &good(&dir, "r1"));
    let current = dir.s("current");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let old: HashSet<i64> = answering_pids(addr, 2);
    // The new release has no ./run: the new sup's --check fails on it.
    let empty = dir.join("r2");
    std::fs::create_dir(&empty).unwrap();
    point(&dir, &std::fs::canonicalize(&empty).unwrap());
    sup.signal(libc::SIGUSR2);
    let (_, error) = sup.wait_restart_ended(1, RestartKind::Hot, RestartOutcome::Abandoned, secs(30));
    assert!(error.contains("the new sup failed its check (status 2"), "{error}");
    assert!(
        sup.log().contains("sup: error: command"),
        "the check's reason is in the log:\n{}",
        sup.log()
    );
    assert_eq!(answering_pids(addr, 2), old);
    assert!(sup.is_running());
}

#[test]
fn an_upgraded_binary_at_the_same_path_takes_over() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("bin")).unwrap();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let installed = dir.join("bin/sup");
    std::fs::copy(SUP, &installed).unwrap();
    let reports = dir.s("reports");
    let control = format!("unix:{}", dir.s("ctl.sock"));
    let mut cmd = std::process::Command::new(&installed);
    cmd.args([
        "--control",
        &control,
        "--bind",
        ANY_PORT,
        "--ready",
        "notify",
        "--",
        WORKER,
        "--serve",
        "--ready-after",
        "0",
    ])
    .args(["--report-dir", &reports]);
    let sup = Sup::launch(&dir, cmd);
    sup.wait_workers_ready(1);
    // "Upgrade" in place: the new program at the same path is a build that
    // announces itself (through the environment its workers inherit).
    let staged = dir.join("bin/sup.new");
    std::fs::write(&staged, format!("#!/bin/sh\nSUP_UPGRADED=yes exec {SUP} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    let upgraded = dir
        .reports("reports")
        .into_iter()
        .find(|r| r["env"]["SUP_GENERATION"] == "1")
        .unwrap();
    assert_eq!(upgraded["env"]["SUP_UPGRADED"], "yes", "the new program ran");
    assert_eq!(upgraded["ppid"].as_i64().unwrap(), sup.pid() as i64, "same sup pid");
}

#[test]
fn a_usr2_storm_and_a_term_during_the_exec_never_kill_sup() {
    let dir = TestDir::new();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    // USR2s land in every phase, the exec window included.
    for _ in 0..30 {
        sup.signal(libc::SIGUSR2);
        std::thread::sleep(std::time::Duration::from_millis(7));
    }
    sup.wait_stats("the storm to settle", secs(60), |s| {
        let done = s
            .restart
            .as_ref()
            .is_some_and(|r| r.outcome == RestartOutcome::Completed)
            && !s.restart_busy;
        (done && s.worker_status.len() == 2).then_some(())
    });
    assert!(sup.is_running(), "{}", sup.log());
    let gens: HashSet<i64> = answering(addr, 2).into_iter().map(|(_, g)| g).collect();
    assert_eq!(gens.len(), 1);

    // A TERM right behind a USR2 is honoured (during or after the restart).
    sup.signal(libc::SIGUSR2);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(60)).code(), Some(0), "{}", sup.log());
    assert!(live_workers(&sup.log()).is_empty(), "{}", sup.log());
}

#[test]
fn check_validates_without_binding_or_starting() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(SUP)
            .args(args)
            .current_dir(&dir.path)
            .output()
            .unwrap()
    };
    // The port is in use, but --check binds nothing, so it passes.
    let ok = run(&["--check", "--bind", &addr, "--workers", "3", "--", WORKER]);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok: 3 worker(s)"));
    let bad = run(&[
        "--check",
        "--workers",
        "0",
        "--directory",
        "/no/such",
        "--",
        "no-such-program",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 2, "every problem, one per line: {stderr}");
    assert!(
        stderr.contains("--workers `0`") && stderr.contains("/no/such"),
        "{stderr}"
    );
}

#[test]
fn relative_pidfile_and_socket_paths_stay_put_across_a_hot_restart() {
    let dir = TestDir::new();
    let r1 = good(&dir, "r1");
    point(&dir, &r1);
    let current = dir.s("current");
    // Relative to where sup starts (the test dir), not to the release.
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--bind",
            "unix:app.sock",
            "--pidfile",
            "sup.pid",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--",
            "./run",
        ],
    );
    sup.wait_workers_ready(1);
    assert!(dir.join("sup.pid").exists() && dir.join("app.sock").exists());
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    assert!(get_unix(&dir.join("app.sock")).is_ok(), "the same socket path serves");
    assert!(
        !r1.join("sup.pid").exists() && !r1.join("app.sock").exists(),
        "nothing moved into the release"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0));
    assert!(!dir.join("sup.pid").exists(), "pidfile removed on stop");
    assert!(!dir.join("app.sock").exists(), "socket file removed on stop");
}

#[test]
fn a_release_a_spawn_would_refuse_fails_the_preflight_and_the_old_workers_serve() {
    let dir = TestDir::new();
    let r1 = good(&dir, "r1");
    std::fs::write(r1.join(".env"), "A=1\n").unwrap();
    point(&dir, &r1);
    let current = dir.s("current");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--env-file",
            ".env",
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let old: HashSet<i64> = answering_pids(addr, 2);
    let run = r1.join("run");
    let mode = |m: u32| std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    // The release's program lost its exec bit.
    mode(0o644);
    sup.signal(libc::SIGUSR2);
    let abandoned = |id: u64| {
        let (_, error) = sup.wait_restart_ended(id, RestartKind::Hot, RestartOutcome::Abandoned, secs(30));
        assert!(error.contains("the new sup failed its check"), "{error}");
    };
    abandoned(1);
    // The check's own reason is in the log, where the new sup wrote it.
    assert!(sup.log().contains("is not executable by"), "{}", sup.log());
    assert_eq!(answering_pids(addr, 2), old);
    // Its env file gained a NUL byte.
    mode(0o755);
    std::fs::write(r1.join(".env"), "A=1\nB=\0\n").unwrap();
    sup.signal(libc::SIGUSR2);
    abandoned(2);
    assert!(sup.log().contains("line 2: contains a NUL byte"), "{}", sup.log());
    assert_eq!(answering_pids(addr, 2), old, "the old workers serve on");
    assert!(sup.is_running());
}

#[test]
fn a_new_generation_that_cannot_boot_after_the_exec_retries_and_says_so() {
    let dir = TestDir::new();
    point(&dir, &good(&dir, "r1"));
    let current = dir.s("current");
    let control = format!("unix:{}", dir.s("control.sock"));
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--control",
            &control,
            "--directory",
            &current,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    // Passes every check (an executable script), then exits at boot.
    point(&dir, &release(&dir, "r2", "exit 3"));
    sup.signal(libc::SIGUSR2);
    // What the test is about: sup says so.
    sup.wait_log("no old worker is left to serve", secs(30));
    let (code, stdout, stderr) = ctl(&["--control", &control, "status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("failing to start"), "{stdout}");
    assert!(
        !sup.log().contains("rolling restart"),
        "a hot restart is not called rolling:\n{}",
        sup.log()
    );
    // The release is fixed: the retries pick it up and the restart completes.
    point(&dir, &good(&dir, "r3"));
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    assert_eq!(answering_pids(addr, 2).len(), 2);
    assert!(sup.is_running());
}

#[test]
fn a_worker_count_changed_by_ttin_survives_a_hot_restart() {
    let dir = TestDir::new();
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    // One signal at a time: two pending TTINs would be one.
    sup.signal(libc::SIGTTIN);
    sup.wait_stats("3 workers wanted", secs(10), |s| (s.target_workers == 3).then_some(()));
    sup.signal(libc::SIGTTIN);
    sup.wait_workers_ready(4);
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(30));
    assert!(
        sup.log()
            .contains("keeping the worker count set at runtime: 4 (the configuration says 2)"),
        "{}",
        sup.log()
    );
    let answers = answering(addr, 4);
    assert!(answers.iter().all(|(_, g)| *g == 1), "{answers:?}");
}

/// The clock ticks sup has used (user + system), from `/proc/PID/stat`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_preflight_that_never_exits_is_abandoned_at_the_hook_timeout_without_spinning() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("bin")).unwrap();
    let installed = dir.join("bin/sup");
    std::fs::copy(SUP, &installed).unwrap();
    let sock = dir.join("c.sock");
    let mut cmd = std::process::Command::new(&installed);
    cmd.args(["--bind", ANY_PORT, "--workers", "2", "--hook-timeout", "2s"])
        .args([
            "--control",
            &format!("unix:{}", dir.s("c.sock")),
            "--",
            WORKER,
            "--serve",
        ]);
    let sup = Sup::launch(&dir, cmd);
    wait_until("2 workers ready", secs(20), || {
        (sock.exists() && stats(&sock).booted_workers == 2).then_some(())
    });
    let before = answering_pids(sup.tcp_addr(0), 2);
    // The program at sup's path is now one whose check never ends.
    let staged = dir.join("bin/sup.new");
    std::fs::write(&staged, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    sup.signal(libc::SIGUSR2);
    wait_until("the preflight to run", secs(10), || {
        stats(&sock).status.contains("checking the new sup").then_some(())
    });
    let ticks = cpu_ticks(sup.pid());
    let abandoned = wait_until("the restart to be abandoned", secs(30), || {
        let s = stats(&sock);
        s.restart.filter(|r| r.outcome == RestartOutcome::Abandoned)
    });
    // A spinning loop uses every tick (100 a second); a waiting one, next to none.
    let used = cpu_ticks(sup.pid()) - ticks;
    assert!(used < 50, "sup used {used} clock ticks while the preflight hung");
    assert!(
        abandoned
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("did not finish within 2s"),
        "{abandoned:?}"
    );
    assert!(sup.log().contains("hot restart abandoned"), "{}", sup.log());
    assert_eq!(answering_pids(sup.tcp_addr(0), 2), before, "the old workers serve on");
    // The next restart is accepted.
    let answer = raw(
        &sock,
        b"POST /phased-restart HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
}

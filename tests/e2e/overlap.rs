//! `--hot-restart overlap` and `sup ctl reexec`: sup re-executes with its
//! workers still serving and adopts them (they stay its children: the pid
//! does not change); an overlap hot restart then rolls them
//! make-before-break, a reexec touches none.

use std::collections::{BTreeSet, HashSet};

use std::os::unix::fs::MetadataExt;

use crate::harness::*;

/// The inode of the socket sup holds at `fd`.
fn socket_inode(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn reexec_keeps_every_worker_and_listener_and_sup_goes_on_supervising_them() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "3",
            "--ready",
            "notify",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(3);
    let (workers, _) = children_of(sup.pid());
    assert_eq!(workers.len(), 3);
    let listener = socket_inode(sup.pid(), 3);
    let control_inode = std::fs::metadata(&sock).unwrap().ino();
    let load = Load::start(addr);
    let (code, stdout, stderr) = ctl(&["--control", &control, "reexec", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}\n{}", sup.log());
    assert!(stdout.contains("reexec complete, every worker adopted"), "{stdout}");
    load.finish_without_failures(&sup);
    let s = sup.stats();
    let r = s.restart.as_ref().unwrap();
    assert_eq!(
        (r.kind, r.outcome),
        (RestartKind::Reexec, RestartOutcome::Completed),
        "{r:?}"
    );
    let adopted: std::collections::BTreeSet<i32> = s.worker_status.iter().map(|w| w.pid).collect();
    assert_eq!(
        (s.binds.len(), &adopted),
        (1, &workers),
        "the new sup has the socket and the 3 workers"
    );
    assert!(sup.is_running(), "the same sup pid, re-executed in place");
    assert_eq!(children_of(sup.pid()).0, workers, "every worker kept, none started");
    assert_eq!(socket_inode(sup.pid(), 3), listener, "the same listening socket");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        control_inode,
        "the same control socket"
    );
    assert!(
        !sup.log().contains("stopped ("),
        "no worker was stopped:\n{}",
        sup.log()
    );

    // The new image supervises them: a killed worker is replaced…
    let victim = *workers.iter().next().unwrap();
    // SAFETY: killing one of sup's workers, by pid, as the test's point.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let slot = s.worker_status.iter().find(|w| w.pid == victim).unwrap().slot;
    sup.wait_stats("a replacement in the victim's slot", secs(20), |s| {
        let w = s.worker_status.iter().find(|w| w.slot == slot && w.pid != victim)?;
        assert_eq!(w.last_exit.as_deref(), Some("signal KILL"), "{}", summary(s));
        Some(())
    });
    wait_until("a replacement", secs(20), || {
        let (now, _) = children_of(sup.pid());
        (now.len() == 3 && !now.contains(&victim)).then_some(())
    });
    // …TTIN and TTOU work…
    sup.signal(libc::SIGTTIN);
    wait_until("4 workers", secs(20), || {
        (children_of(sup.pid()).0.len() == 4).then_some(())
    });
    sup.signal(libc::SIGTTOU);
    wait_until("3 workers", secs(20), || {
        (children_of(sup.pid()).0.len() == 3).then_some(())
    });
    // …and TERM stops them all.
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived sup");
    }
}

#[test]
fn an_overlap_hot_restart_keeps_the_old_workers_serving_while_the_new_ones_boot() {
    // Workers take 4 s to boot and serve nothing meanwhile: in stop mode
    // every request would wait that long; here the adopted workers answer
    // throughout.
    let dir = TestDir::new();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--max-surge",
            "2",
            "--ready",
            "notify",
            "--hot-restart",
            "overlap",
            "--",
            WORKER,
            "--serve",
            "--boot",
            "4000",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let old: HashSet<i64> = answering_pids(addr, 2);
    let load = Load::start(addr);
    sup.signal(libc::SIGUSR2);
    // The new image answers: it has adopted the workers and rolls to gen 1.
    sup.wait_stats("the new sup to roll to gen 1", secs(30), |s| {
        let r = s.restart.as_ref()?;
        (r.kind == RestartKind::Hot && r.generation == Some(1)).then_some(())
    });
    // The new sup runs, the replacements are still booting: the old
    // workers answer.
    for _ in 0..10 {
        let answer = get(addr).expect("answered during the boot of the replacements");
        assert!(old.contains(&answer["pid"].as_i64().unwrap()), "{answer}");
        assert_eq!(answer["generation"], 0);
    }
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    load.finish_without_failures(&sup);
    let now = answering(addr, 2);
    assert!(now.iter().all(|(pid, g)| *g == 1 && !old.contains(pid)), "{now:?}");
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
}

#[test]
fn twenty_overlap_restarts_leak_nothing_and_orphan_nothing() {
    let dir = TestDir::new();
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--hot-restart",
            "overlap",
            "--einhorn-ack",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_workers_ready(2);
    let fds = fd_count(sup.pid());
    let load = Load::start(addr);
    for n in 1..=20 {
        sup.signal(libc::SIGUSR2);
        sup.wait_restart_complete(RestartKind::Hot, n, secs(60));
    }
    load.finish_without_failures(&sup);
    assert_eq!(fd_count(sup.pid()), fds, "sup holds as many fds as before");
    let (children, zombies) = wait_until("the old workers reaped", secs(30), || {
        let (live, zombies) = children_of(sup.pid());
        (live.len() == 2 && zombies.is_empty()).then_some((live, zombies))
    });
    assert!(zombies.is_empty());
    let answers = answering(addr, 2);
    assert!(answers.iter().all(|(_, g)| *g == 20), "{answers:?}");
    let answering: BTreeSet<i32> = answers.iter().map(|(p, _)| *p as i32).collect();
    assert_eq!(children, answering, "no orphaned worker besides the two serving");
}

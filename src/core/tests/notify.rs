use super::*;

#[test]
fn notify_messages_are_attributed_by_pid_group_or_trusted_mainpid() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        trusted_uids: vec![0],
        ..settings(3)
    });
    // The worker itself.
    h.send(notify(100, "READY=1\nSTATUS=booted"), 10);
    // A child in worker 101's process group (systemd-notify).
    let child = Event::Notify {
        sender: Some(Sender {
            pid: p(5000),
            pgid: Some(Pgid::from_raw(101)),
            uid: 1000,
        }),
        message: Message::parse(b"READY=1"),
    };
    h.send(child, 20);
    // MAINPID from an untrusted stranger: dropped; from root: believed.
    let stranger = |uid| Event::Notify {
        sender: Some(Sender {
            pid: p(6000),
            pgid: Some(Pgid::from_raw(6000)),
            uid,
        }),
        message: Message::parse(b"READY=1\nMAINPID=102"),
    };
    h.send(stranger(1000), 30);
    assert_eq!(h.ready_serving(), 2);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("dropped a notify message from pid 6000"))
    );
    h.send(stranger(0), 40);
    assert_eq!(h.ready_serving(), 3);
    let w = h.core.workers().iter().find(|w| w.pid == p(100)).unwrap();
    assert_eq!(w.status.as_deref(), Some("booted"));
}

#[test]
fn a_stopping_worker_is_still_itself_to_notify_messages() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        watchdog: Some(Duration::from_secs(1)),
        ..settings(1)
    });
    h.send(notify(100, "READY=1"), 10);
    h.send(Event::Intent(Intent::Stop), 20);
    h.logs.clear();
    // gunicorn and Puma say so on their way out; a group member too.
    h.send(notify(100, "STOPPING=1\nSTATUS=Gunicorn arbiter shutting down"), 30);
    let child = Event::Notify {
        sender: Some(Sender {
            pid: p(5000),
            pgid: Some(Pgid::from_raw(100)),
            uid: 1000,
        }),
        message: Message::parse(b"STATUS=bye\nWATCHDOG=1\nREADY=1"),
    };
    h.send(child, 40);
    assert!(!h.logs.iter().any(|l| l.contains("dropped")), "{:?}", h.logs);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("worker 0 (pid 100, gen 0) says it is stopping")),
        "{:?}",
        h.logs
    );
    let w = &h.core.workers()[0];
    assert_eq!(w.status.as_deref(), Some("bye"));
    assert!(w.is_stopping(), "READY=1 does not bring a stopping worker back");
    assert_eq!(w.watchdog_deadline, None, "nor does a watchdog ping arm the watchdog");
}

#[test]
fn in_notify_mode_a_worker_is_ready_only_on_ready_1() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        boot_timeout: Duration::from_secs(10),
        ..settings(1)
    });
    h.tick_until(9_000);
    assert_eq!(h.ready_serving(), 0);
    // Never ready: killed at the boot timeout and started again with backoff.
    h.tick_until(10_000);
    assert_eq!(h.killed_groups, [100]);
    h.exit(100, ExitStatus::Signaled(9), 10_001);
    assert_eq!(h.pids(), [101]);
    h.send(notify(101, "READY=1"), 10_500);
    assert_eq!(h.ready_serving(), 1);
}

#[test]
fn a_silent_watchdog_gets_the_worker_replaced() {
    let mut h = ready_harness(1, |s| s.watchdog = Some(Duration::from_secs(5)));
    assert_eq!(h.core.next_deadline(), None, "no watchdog before the first ping");
    h.send(notify(100, "WATCHDOG=1"), 2_000);
    h.send(notify(100, "WATCHDOG=1"), 6_000);
    h.tick_until(10_999);
    assert!(h.killed_groups.is_empty());
    h.tick_until(11_000);
    assert_eq!(h.killed_groups, [100]);
    h.exit(100, ExitStatus::Signaled(9), 11_001);
    assert_eq!(h.pids(), [101]);
}

#[test]
fn the_supervisor_hears_ready_reloading_ready_stopping() {
    let mut h = ready_harness(2, |_| {});
    assert_eq!(upward_kinds(&h), ["ready"], "READY=1 once all workers are ready");
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(upward_kinds(&h), ["ready", "reloading", "ready"]);
    // A failed restart ends the reload too.
    h.send(Event::Intent(Intent::Rolling), 70_000);
    let new = h.core.workers().iter().find(|w| w.generation == 2).unwrap().pid;
    h.exit(new.raw(), ExitStatus::Code(1), 70_100);
    assert_eq!(upward_kinds(&h)[3..], ["reloading", "ready"]);
    h.send(Event::Intent(Intent::Stop), 80_000);
    assert_eq!(upward_kinds(&h).last(), Some(&"stopping"));
    let statuses: Vec<&String> = h
        .upward
        .iter()
        .filter_map(|u| if let Upward::Status(s) = u { Some(s) } else { None })
        .collect();
    assert!(
        statuses.iter().any(|s| s.as_str() == "gen 1: 2/2 ready"),
        "{statuses:?}"
    );
    assert!(statuses.iter().any(|s| s.contains("rolling slot 0")), "{statuses:?}");
}

#[test]
fn the_supervisor_watchdog_is_the_only_periodic_timer() {
    let mut h = ready_harness(1, |s| s.upward_watchdog = Some(Duration::from_secs(10)));
    // The first keep-alive went out at start; then one every 10 s.
    assert_eq!(h.core.next_deadline(), Some(h.at(10_000)));
    h.tick_until(31_000);
    assert_eq!(upward_kinds(&h).iter().filter(|k| **k == "watchdog").count(), 4);
    let idle = ready_harness(1, |_| {});
    assert_eq!(idle.core.next_deadline(), None);
}

#[test]
fn a_readiness_fd_makes_a_worker_ready_or_fails_its_boot() {
    let mut st = settings(2);
    st.ready_delay = None;
    let mut h = Harness::with(st);
    h.send(
        Event::ReadyFd {
            pid: p(100),
            ready: true,
        },
        100,
    );
    assert!(
        h.logs.iter().any(|l| l == "worker 0 (pid 100, gen 0) is ready"),
        "{:?}",
        h.logs
    );
    h.send(
        Event::ReadyFd {
            pid: p(101),
            ready: false,
        },
        200,
    );
    assert_eq!(h.killed_groups, [101], "a failed boot");
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("closed its readiness fd without writing a newline")),
        "{:?}",
        h.logs
    );
    // A late word about a worker that is ready already, or gone, changes nothing.
    h.send(
        Event::ReadyFd {
            pid: p(100),
            ready: false,
        },
        300,
    );
    h.send(
        Event::ReadyFd {
            pid: p(999),
            ready: true,
        },
        300,
    );
    assert_eq!(h.killed_groups, [101]);
}

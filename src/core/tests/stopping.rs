use super::*;

#[test]
fn graceful_stop_signals_then_kills_then_exits() {
    let mut h = Harness::new(2);
    h.send(Event::Intent(Intent::Stop), 5_000);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT), (101, TERM), (101, SIGCONT)]);
    assert_eq!(h.core.next_deadline(), Some(h.at(35_000)));
    h.exit(100, ExitStatus::Signaled(TERM), 6_000);
    assert_eq!(h.exit, None);
    assert_eq!(h.pids(), [101], "no replacement while stopping");
    h.send(Event::Tick, 35_000);
    assert_eq!(h.killed_groups, [101]);
    h.exit(101, ExitStatus::Signaled(9), 35_001);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn second_int_is_immediate_and_quit_is_immediate() {
    let mut h = Harness::new(2);
    h.send(Event::Intent(Intent::Interrupt), 10);
    assert!(h.killed_groups.is_empty());
    h.send(Event::Intent(Intent::Interrupt), 20);
    assert_eq!(h.killed_groups, [100, 101]);
    h.exit(100, ExitStatus::Signaled(9), 30);
    h.exit(101, ExitStatus::Signaled(9), 30);
    assert_eq!(h.exit, Some(0));

    let mut q = Harness::new(1);
    q.send(Event::Intent(Intent::Halt), 10);
    assert_eq!(q.killed_groups, [100]);
    // A process that never dies (D state) does not keep sup forever.
    q.send(Event::Tick, 5_010);
    assert_eq!(q.exit, Some(0));
}

#[test]
fn a_repeated_term_does_not_escalate() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Stop), 10);
    h.send(Event::Intent(Intent::Stop), 20);
    assert!(h.killed_groups.is_empty());
    assert_eq!(h.signals.len(), 2);
}

#[test]
fn processes_left_to_sup_are_stopped_then_killed_and_waited_for() {
    let mut h = Harness::new(1);
    h.strays_alive = true;
    h.send(Event::Intent(Intent::Stop), 100);
    assert_eq!(h.strays_signalled, [TERM], "the stop signal, with the workers'");
    h.exit(100, ExitStatus::Signaled(TERM), 200);
    assert_eq!(h.exit, None, "a stray is still alive: sup waits");
    assert_eq!(
        h.strays_signalled,
        [TERM, TERM],
        "and those left by the worker's exit get it too"
    );
    h.tick_until(30_100);
    assert_eq!(
        h.strays_signalled,
        [TERM, TERM, libc::SIGKILL],
        "SIGKILL at the graceful deadline"
    );
    assert_eq!(h.exit, None);
    // The stray is reaped (an unknown pid): sup looks again and exits.
    h.strays_alive = false;
    h.exit(4242, ExitStatus::Signaled(libc::SIGKILL), 30_150);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn a_graceful_stop_gives_the_running_hook_the_stop_then_kills_its_group_at_the_deadline() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Stop), 2_100);
    assert!(h.signals.contains(&(900, TERM)), "{:?}", h.signals);
    assert!(!h.killed_groups.contains(&900), "not killed at once");
    h.exit(100, ExitStatus::Signaled(TERM), 2_200);
    // The hook's shell is gone, something of its group is not.
    h.exit(900, ExitStatus::Signaled(TERM), 2_300);
    assert_eq!(h.exit, None, "sup waits for the hook's group");
    h.tick_until(32_200);
    assert!(h.killed_groups.contains(&900), "SIGKILL at the graceful deadline");
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::from_raw(900),
        },
        32_300,
    );
    assert_eq!(h.exit, Some(0));
}

#[test]
fn an_immediate_stop_kills_what_was_left_to_sup_at_once() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Halt), 100);
    assert_eq!(h.strays_signalled, [libc::SIGKILL]);
}

#[test]
fn stop_with_no_workers_exits_at_once() {
    let mut h = Harness::new(1);
    h.exit(100, ExitStatus::Code(1), 10);
    h.exit(101, ExitStatus::Code(1), 20); // now backing off, no worker
    assert!(h.pids().is_empty());
    h.send(Event::Intent(Intent::Stop), 30);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn lingering_group_members_are_killed_at_the_deadline() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Stop), 0);
    h.send(
        Event::Exited {
            pid: p(100),
            status: ExitStatus::Signaled(TERM),
            group_alive: true,
        },
        100,
    );
    assert_eq!(h.exit, None, "waits for the group");
    // It looks again every second (a member may leave by setsid)...
    assert_eq!(h.core.next_deadline(), Some(h.at(1_100)));
    h.tick_until(29_999);
    assert_eq!(h.probed_groups.len(), 30, "{:?}", h.probed_groups);
    assert!(h.killed_groups.is_empty());
    // ...and kills it at the deadline.
    h.tick_until(30_000);
    assert_eq!(h.killed_groups, [100]);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn a_lingering_group_that_empties_by_itself_is_not_waited_for() {
    let mut h = Harness::new(1);
    h.send(Event::Intent(Intent::Stop), 0);
    let leader_gone = Event::Exited {
        pid: p(100),
        status: ExitStatus::Code(0),
        group_alive: true,
    };
    h.send(leader_gone, 100);
    assert_eq!(h.probed_groups, [100], "asked at once");
    assert_eq!(h.exit, None);
    // A helper of the server (hypercorn's resource tracker) is reaped as
    // an orphan: the core asks again, and the shell finds the group empty.
    let orphan = Event::Exited {
        pid: p(4242),
        status: ExitStatus::Code(0),
        group_alive: false,
    };
    h.send(orphan, 120);
    assert_eq!(h.probed_groups, [100, 100]);
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::from_raw(100),
        },
        121,
    );
    assert_eq!(h.exit, Some(0), "stopped without waiting for the deadline");
    assert!(h.killed_groups.is_empty(), "nothing left to kill");
}

#[test]
fn a_hot_restart_drain_goes_on_when_the_last_group_empties() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.send(
        Event::Exited {
            pid: p(900),
            status: ExitStatus::Code(0),
            group_alive: false,
        },
        1_010,
    );
    let pid = p(h.pids()[0]);
    h.send(
        Event::Exited {
            pid,
            status: ExitStatus::Signaled(TERM),
            group_alive: true,
        },
        1_100,
    );
    assert_eq!(h.reexec, None, "waits for the group");
    h.send(
        Event::GroupEmpty {
            pgid: Pgid::led_by(pid),
        },
        1_150,
    );
    assert_eq!(h.reexec, Some(1), "re-executes as soon as nothing is left");
}

#[test]
fn an_unexpected_exit_kills_the_rest_of_the_group_now() {
    let mut h = Harness::new(1);
    h.send(
        Event::Exited {
            pid: p(100),
            status: ExitStatus::Code(1),
            group_alive: true,
        },
        100,
    );
    assert_eq!(h.killed_groups, [100]);
    assert_eq!(h.pids(), [101]);
}

#[test]
fn a_stray_is_a_child_in_no_worker_s_or_helper_s_group() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    // Workers 100 and 101, the preflight 900; 150 is in worker 100's group,
    // 901 in the helper's; 40 left its group; 50's group is unreadable.
    let group_of = |pid: Pid| match pid.raw() {
        150 => Some(Pgid::from_raw(100)),
        901 => Some(Pgid::from_raw(900)),
        40 => Some(Pgid::from_raw(40)),
        _ => None,
    };
    let children = [100, 150, 101, 900, 901, 40, 50].map(p);
    assert_eq!(h.core.strays(children, group_of), [p(40), p(50)]);
    let no_lookup = |_| panic!("a worker needs no lookup");
    assert_eq!(h.core.strays([p(100), p(101)], no_lookup), []);
}

/// TERM with `--stop-delay`: not ready at once (health 503) while the
/// workers serve on; then the listeners are closed to new connections and
/// the workers stop only once the accept queues are empty.
#[test]
fn a_stop_reports_not_ready_then_drains_the_queues_then_stops_the_workers() {
    let mut h = ready_harness(2, |s| s.stop_delay = Duration::from_secs(2));
    assert_eq!(h.core.health().status, HealthStatus::Serving);
    h.queued = 3;
    h.send(Event::Intent(Intent::Stop), 1_000);
    assert_eq!(h.core.health().status, HealthStatus::Stopping, "503 at once");
    assert!(h.signals.is_empty(), "the workers serve on during the delay");
    assert!(!h.closed);
    assert_eq!(h.core.next_deadline(), Some(h.at(3_000)));
    h.tick_until(2_999);
    assert!(!h.closed && h.signals.is_empty());
    h.tick_until(3_000);
    assert!(h.closed, "new connections are kept out after the delay");
    assert_eq!(h.queue_probes, 1);
    assert!(h.signals.is_empty(), "three connections still queued");
    h.tick_until(3_050);
    assert!(h.queue_probes >= 5, "looked again every 10 ms: {}", h.queue_probes);
    assert!(h.signals.is_empty());
    h.queued = 0;
    h.tick_until(3_060);
    assert_eq!(
        h.signals.iter().filter(|(_, s)| *s == TERM).count(),
        2,
        "now the workers stop"
    );
    assert!(
        h.logs.iter().any(|l| l.contains("the accept queues are empty")),
        "{:?}",
        h.logs
    );
    h.reap_stopping(3_100);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn queues_that_never_empty_hold_the_workers_at_most_the_graceful_timeout() {
    let mut h = ready_harness(1, |s| s.graceful_timeout = Duration::from_secs(5));
    h.queued = 9;
    h.send(Event::Intent(Intent::Stop), 1_000);
    assert!(h.closed, "no delay: closed at once");
    h.tick_until(5_999);
    assert!(h.signals.is_empty());
    h.tick_until(6_000);
    assert_eq!(h.signals.iter().filter(|(_, s)| *s == TERM).count(), 1);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("9 connection(s) still queued after 5s")),
        "{:?}",
        h.logs
    );
}

#[test]
fn a_second_int_during_the_stop_delay_stops_at_once() {
    let mut h = ready_harness(2, |s| s.stop_delay = Duration::from_secs(10));
    h.send(Event::Intent(Intent::Interrupt), 1_000);
    assert!(h.killed_groups.is_empty());
    h.send(Event::Intent(Intent::Interrupt), 1_500);
    assert_eq!(h.killed_groups.len(), 2, "killed at once");
    h.reap_stopping(1_600);
    assert_eq!(h.exit, Some(0));
}

#[test]
fn health_is_serving_only_when_every_slot_serves() {
    let mut h = Harness::new(2);
    let health = h.core.health();
    assert_eq!(
        (health.status, health.ready, health.target),
        (HealthStatus::NotReady, 0, 2)
    );
    h.tick_until(1_000);
    assert_eq!(h.core.health().status, HealthStatus::Serving);
    h.exit(100, ExitStatus::Code(1), 2_000);
    assert_eq!(
        h.core.health().status,
        HealthStatus::NotReady,
        "a slot without a ready worker"
    );
    h.tick_until(3_100);
    assert_eq!(h.core.health().status, HealthStatus::Serving);
    // A rolling restart keeps every slot serving (make-before-break).
    h.send(Event::Intent(Intent::Rolling), 4_000);
    assert_eq!(h.core.health().status, HealthStatus::Serving);
}

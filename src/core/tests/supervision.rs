use super::*;

#[test]
fn starts_one_worker_per_slot() {
    let h = Harness::new(4);
    assert_eq!(h.pids(), [100, 101, 102, 103]);
    let slots: Vec<usize> = h.core.workers().iter().map(|w| w.slot).collect();
    assert_eq!(slots, [0, 1, 2, 3]);
}

#[test]
fn nothing_spawns_before_started() {
    let mut core = Core::new(settings(2));
    assert_eq!(core.handle(Event::Tick, Instant::now()), vec![]);
    assert_eq!(core.next_deadline(), None);
}

#[test]
fn ready_after_delay_then_idle_has_no_deadline() {
    let mut h = Harness::new(2);
    assert_eq!(h.core.next_deadline(), Some(h.at(1000)));
    h.send(Event::Tick, 1000);
    assert!(
        h.core
            .workers()
            .iter()
            .all(|w| matches!(w.state, WorkerState::Ready { .. }))
    );
    assert_eq!(h.core.next_deadline(), None);
}

#[test]
fn a_thousand_workers_start_in_batches_and_a_stop_between_batches_ends_it() {
    let t0 = Instant::now();
    let mut core = Core::new(settings(1000));
    assert_eq!(
        spawns(&core.handle(Event::Started, t0)).len(),
        SPAWN_BATCH,
        "one batch per event"
    );
    assert_eq!(core.next_deadline(), Some(t0), "the next batch is due at once");
    assert_eq!(spawns(&core.handle(Event::Tick, t0)).len(), SPAWN_BATCH);
    // A TERM read between batches: no further spawn, and no more hurry.
    core.handle(Event::Intent(Intent::Stop), t0);
    assert!(spawns(&core.handle(Event::Tick, t0)).is_empty());
    assert_ne!(core.next_deadline(), Some(t0));
    // Without one, they all start (every spawn's outcome is an event too).
    let mut all = Harness::before_start(settings(1000));
    all.send(Event::Started, 0);
    all.tick_until(0);
    assert_eq!(all.pids().len(), 1000);
}

#[test]
fn a_crashed_worker_is_replaced_in_its_slot() {
    let mut h = Harness::new(2);
    h.send(Event::Tick, 1000);
    h.exit(101, ExitStatus::Signaled(9), 20_000);
    assert_eq!(h.pids(), [100, 102]);
    let w = h.core.workers().iter().find(|w| w.pid == p(102)).unwrap();
    assert_eq!(w.slot, 1);
    let s = h.core.slot(1).unwrap();
    assert_eq!((s.restarts, s.last_exit), (1, Some(ExitStatus::Signaled(9))));
}

#[test]
fn a_crash_loop_backs_off_exponentially() {
    let mut h = Harness::new(1);
    // The command exits as soon as it starts, for 10 simulated seconds.
    let mut now = 0;
    while now < 10_000 {
        let pid = h.pids()[0];
        h.exit(pid, ExitStatus::Code(1), now + 10);
        match h.core.next_deadline() {
            Some(d) if h.pids().is_empty() => {
                now = d.duration_since(h.t0).as_millis() as u64;
                h.send(Event::Tick, now);
            }
            _ => now += 10,
        }
    }
    // Spawns at ~0, 10, 520, 1530, 3540, 7550 ms: six, not thousands.
    assert!(h.spawns <= 7, "spawned {} times", h.spawns);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("restarting in 8s (6 failures in a row)")),
        "{:?}",
        h.logs
    );
}

#[test]
fn a_healthy_run_resets_the_backoff() {
    let mut h = Harness::new(1);
    h.exit(100, ExitStatus::Code(1), 10);
    h.exit(101, ExitStatus::Code(1), 20);
    assert_eq!(h.core.slot(0).unwrap().failures, 2);
    h.tick_until(600);
    assert_eq!(h.pids(), [102]);
    h.exit(102, ExitStatus::Code(1), 60_000);
    assert_eq!(h.core.slot(0).unwrap().failures, 1);
    assert_eq!(h.pids(), [103], "replaced at once after a long run");
}

#[test]
fn failed_spawns_back_off_too() {
    let mut h = Harness::new(1);
    h.exit(100, ExitStatus::Code(1), 10);
    // pid 101 was spawned at once; now make spawns fail.
    h.fail_spawns = true;
    h.exit(101, ExitStatus::Code(1), 20);
    let before = h.spawns;
    h.tick_until(5_000);
    assert!(h.spawns - before <= 4, "{} spawns", h.spawns - before);
    assert!(h.logs.iter().any(|l| l.contains("failed to start: boom")));
    h.fail_spawns = false;
    h.tick_until(60_000);
    assert_eq!(h.pids().len(), 1);
}

#[test]
fn ttin_and_ttou_scale_never_below_one() {
    let mut h = Harness::new(2);
    h.send(Event::Intent(Intent::Incr), 10);
    assert_eq!(h.pids(), [100, 101, 102]);
    h.send(Event::Intent(Intent::Decr), 20);
    assert_eq!(h.signals, [(102, TERM), (102, SIGCONT)]);
    h.exit(102, ExitStatus::Signaled(TERM), 30);
    assert_eq!(h.pids(), [100, 101], "slot 2 is not refilled");
    h.send(Event::Intent(Intent::Decr), 40);
    h.exit(101, ExitStatus::Code(0), 50);
    h.send(Event::Intent(Intent::Decr), 60);
    assert_eq!(h.core.target(), 1);
    assert_eq!(h.pids(), [100]);
    assert!(h.logs.iter().any(|l| l.contains("already at 1 worker")));
}

#[test]
fn a_scaled_down_slot_that_crashes_is_not_replaced() {
    let mut h = Harness::new(2);
    h.send(Event::Intent(Intent::Decr), 10);
    // Worker 101 crashes instead of stopping cleanly: still not refilled.
    h.exit(101, ExitStatus::Code(3), 20);
    assert_eq!(h.pids(), [100]);
}

#[test]
fn unknown_pids_are_only_logged() {
    let mut h = Harness::new(1);
    h.exit(4242, ExitStatus::Code(0), 10);
    assert_eq!(h.pids(), [100]);
    assert!(h.logs.iter().any(|l| l.contains("reaped process 4242")));
}

/// With `--dump-signal`, a worker about to be killed for a timeout first
/// gets the signal, then `--dump-grace`, then SIGKILL to its group; the log
/// says which timeout. Without it, the kill is at once.
#[test]
fn a_timed_out_worker_is_asked_for_a_dump_before_the_kill() {
    let mut h = ready_harness(1, |s| {
        s.watchdog = Some(Duration::from_secs(5));
        s.dump_signal = Some(Signal::SIGUSR1);
        s.dump_grace = Duration::from_secs(2);
    });
    h.send(notify(100, "WATCHDOG=1"), 1_000);
    h.tick_until(6_000);
    assert_eq!(
        h.signals,
        [(100, libc::SIGUSR1), (100, SIGCONT)],
        "the dump signal, to its pid"
    );
    assert!(h.killed_groups.is_empty(), "not killed yet");
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("sent no WATCHDOG=1 for 5s: sent it USR1 for a dump; SIGKILL")),
        "{:?}",
        h.logs
    );
    assert_eq!(h.spawns, 2, "its replacement starts at once");
    h.tick_until(7_999);
    assert!(h.killed_groups.is_empty());
    h.tick_until(8_000);
    assert_eq!(h.killed_groups, [100], "SIGKILL after the grace");
    // A graceful stop that runs out: the dump first there too.
    let mut h = ready_harness(1, |s| {
        s.graceful_timeout = Duration::from_secs(3);
        s.dump_signal = Some(Signal::SIGQUIT);
    });
    h.send(Event::Intent(Intent::Stop), 1_000);
    h.tick_until(4_000);
    assert!(h.signals.contains(&(100, libc::SIGQUIT)), "{:?}", h.signals);
    assert!(h.killed_groups.is_empty());
    h.tick_until(6_000);
    assert_eq!(h.killed_groups, [100]);
    assert_eq!(
        h.core.counters().kills.get(KillReason::GracefulTimeout),
        1,
        "counted once"
    );
}

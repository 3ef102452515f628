use super::*;

#[test]
fn a_rolling_restart_is_make_before_break() {
    let mut h = ready_harness(4, |_| {});
    assert_eq!(h.ready_serving(), 4);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.generation(), 1);
    assert_eq!(h.spawns, 5, "one replacement at a time");
    assert!(h.signals.is_empty(), "nothing stopped before a replacement is ready");
    h.run_checking_capacity(60_000, 4);
    assert_eq!(h.gens(), [1, 1, 1, 1]);
    assert_eq!(h.ready_serving(), 4);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
    // Each old worker got exactly one stop signal, after its replacement was ready.
    let stopped: Vec<i32> = h.signals.iter().filter(|(_, s)| *s == TERM).map(|(p, _)| *p).collect();
    assert_eq!(stopped, [100, 101, 102, 103]);
    assert!(
        h.logs.iter().any(|l| l.contains("rolling restart to gen 1 complete")),
        "{:?}",
        h.logs
    );
    assert_eq!(h.core.next_deadline(), None, "idle again");
}

#[test]
fn a_rollout_is_complete_only_when_the_old_workers_have_exited() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::Tick, 3_000);
    assert_eq!(h.signals[0], (100, TERM), "old worker asked to stop");
    assert_eq!(h.outcome(), Some(Outcome::Running), "still draining");
    h.exit(100, ExitStatus::Code(0), 3_500);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn a_rolling_restart_of_one_worker_keeps_it_serving() {
    let mut h = ready_harness(1, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(60_000, 1);
    assert_eq!(h.gens(), [1]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn max_surge_boots_several_replacements_at_once() {
    let mut h = ready_harness(4, |s| s.max_surge = 3);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.spawns, 7, "three replacements booting");
    h.run_checking_capacity(60_000, 4);
    assert_eq!(h.gens(), [1, 1, 1, 1]);
}

#[test]
fn a_replacement_that_exits_stops_the_rollout_and_old_workers_keep_serving() {
    let mut h = ready_harness(4, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    let new = 104;
    h.exit(new, ExitStatus::Code(1), 2_100);
    assert!(
        matches!(h.outcome(), Some(Outcome::Failed { slot: 0, .. })),
        "{:?}",
        h.outcome()
    );
    let spawns = h.spawns;
    h.run_checking_capacity(120_000, 4);
    assert_eq!(h.spawns, spawns, "no further replacement of the broken release");
    assert_eq!(h.pids(), [100, 101, 102, 103]);
    assert!(h.signals.is_empty(), "no old worker was stopped");
    let line = h
        .logs
        .iter()
        .find(|l| l.contains("rolling restart to gen 1 failed"))
        .unwrap();
    assert!(
        line.contains("worker 0 (pid 104) exited with status 1 before becoming ready"),
        "{line}"
    );
    assert!(line.contains("4 worker(s) keep serving"), "{line}");
}

#[test]
fn a_replacement_that_never_gets_ready_times_out_and_stops_the_rollout() {
    let mut h = Harness::with(Settings {
        ready_delay: None,
        ..settings(2)
    });
    for pid in [100, 101] {
        h.send(notify(pid, "READY=1"), 10);
    }
    assert_eq!(h.ready_serving(), 2);
    h.send(Event::Intent(Intent::Rolling), 1_000);
    h.tick_until(61_000);
    assert_eq!(h.killed_groups, [102]);
    assert!(
        matches!(h.outcome(), Some(Outcome::Failed { slot: 0, ref reason }) if reason.contains("not ready within 60s"))
    );
    h.exit(102, ExitStatus::Signaled(9), 61_001);
    assert_eq!(h.pids(), [100, 101]);
    assert_eq!(h.ready_serving(), 2);
}

#[test]
fn a_restart_during_a_rollout_starts_over_with_the_newest_code() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.pids(), [100, 101, 102]);
    h.send(Event::Intent(Intent::Rolling), 2_100);
    assert_eq!(h.core.generation(), 2);
    // The gen-1 replacement, not serving yet, is stopped; gen 2 boots.
    assert_eq!(h.signals[0], (102, TERM));
    h.reap_stopping(2_200);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [2, 2]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn a_storm_of_restart_requests_ends_with_one_generation() {
    let mut h = ready_harness(3, |_| {});
    for i in 0..50 {
        h.send(Event::Intent(Intent::Rolling), 2_000 + i);
        h.reap_stopping(2_000 + i);
    }
    h.run_checking_capacity(120_000, 3);
    let gens = h.gens();
    assert_eq!(gens.len(), 3);
    assert!(gens.iter().all(|g| *g == gens[0]), "{gens:?}");
    assert_eq!(h.ready_serving(), 3);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
    assert!(h.core.workers().iter().all(|w| !w.is_stopping()));
}

#[test]
fn an_old_worker_that_crashes_mid_rollout_is_replaced_by_the_new_generation() {
    let mut h = ready_harness(3, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.exit(102, ExitStatus::Code(1), 2_100);
    let w = h.core.workers().iter().find(|w| w.slot == 2).unwrap();
    assert_eq!(w.generation, 1);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [1, 1, 1]);
    assert_eq!(h.outcome(), Some(Outcome::Completed));
}

#[test]
fn term_during_a_rollout_stops_everything() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::Intent(Intent::Stop), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { .. })));
    let spawns = h.spawns;
    h.reap_stopping(2_200);
    assert_eq!(h.exit, Some(0));
    assert_eq!(h.spawns, spawns);
}

#[test]
fn a_failing_hook_vetoes_the_restart() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.hooks, [RestartKind::Rolling]);
    assert_eq!(h.spawns, 2, "nothing starts before the hook passes");
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(3), 2_500);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("status 3")));
    assert_eq!((h.spawns, h.core.generation()), (2, 0));
    assert!(h.signals.is_empty());
}

#[test]
fn a_passing_hook_lets_the_rollout_run() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(0), 2_500);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [1, 1]);
}

#[test]
fn a_hook_that_runs_too_long_is_killed_and_the_restart_abandoned() {
    let mut h = ready_harness(1, |s| {
        s.hook = true;
        s.hook_timeout = Duration::from_secs(5);
    });
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.tick_until(7_000);
    assert_eq!(h.killed_groups, [900]);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("within 5s")));
    assert_eq!(h.core.generation(), 0);
}

#[test]
fn a_request_during_a_failing_hook_is_not_lost() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Rolling), 2_002);
    h.exit(900, ExitStatus::Code(1), 2_500);
    assert_eq!(h.hooks.len(), 2, "the hook runs again for the pending request");
    h.send(Event::HelperSpawned { pid: p(901) }, 2_501);
    h.exit(901, ExitStatus::Code(0), 2_600);
    h.run_checking_capacity(60_000, 1);
    assert_eq!(h.gens(), [1]);
}

#[test]
fn a_slot_scaled_away_and_back_while_its_spawn_is_in_flight_gets_one_worker() {
    let t0 = Instant::now();
    let mut core = Core::new(settings(2));
    assert_eq!(spawns(&core.handle(Event::Started, t0)), [(0, 0), (1, 0)]);
    // Slot 1's spawn has not come back when TTOU and then TTIN arrive.
    assert_eq!(
        core.slot(1).map(|s| s.state),
        Some(SlotState::Spawning { generation: 0 })
    );
    assert!(spawns(&core.handle(Event::Intent(Intent::Decr), t0)).is_empty());
    assert!(
        spawns(&core.handle(Event::Intent(Intent::Incr), t0)).is_empty(),
        "the spawn under way fills the slot: no second one"
    );
    for (slot, pid) in [(0, 100), (1, 101)] {
        let out = core.handle(
            Event::Spawned {
                slot,
                generation: 0,
                pid: p(pid),
            },
            t0,
        );
        assert!(!out.iter().any(|a| matches!(a, Action::Signal { .. })), "{out:?}");
    }
    assert_eq!(core.workers().len(), 2);
    assert_eq!(core.check_invariants(), Ok(()));
}

#[test]
fn a_replacement_that_arrives_after_its_rollout_ended_is_stopped() {
    let t0 = Instant::now();
    let mut s = settings(1);
    s.ready_delay = None;
    let mut core = Core::new(s);
    core.handle(Event::Started, t0);
    core.handle(
        Event::Spawned {
            slot: 0,
            generation: 0,
            pid: p(100),
        },
        t0,
    );
    core.handle(notify(100, "READY=1"), t0);
    assert_eq!(spawns(&core.handle(Event::Intent(Intent::Rolling), t0)), [(0, 1)]);
    assert_eq!(
        core.slot(0).map(|s| s.state),
        Some(SlotState::Replacing {
            old: p(100),
            new: Replacement::Spawning { generation: 1 }
        })
    );
    // A hot restart supersedes the rollout (its preflight runs now): the
    // rolling replacement comes back to a sup that no longer wants it.
    core.handle(Event::Intent(Intent::Hot), t0);
    let out = core.handle(
        Event::Spawned {
            slot: 0,
            generation: 1,
            pid: p(101),
        },
        t0,
    );
    assert!(out.contains(&Action::Signal {
        pid: p(101),
        signal: Signal::SIGTERM
    }));
    assert_eq!(core.slot(0).map(|s| s.state), Some(SlotState::Running { pid: p(100) }));
    assert_eq!(core.check_invariants(), Ok(()));
}

#[test]
fn after_a_failed_rollout_an_old_worker_that_exits_is_refilled_from_the_release_that_serves() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.exit(102, ExitStatus::Code(1), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Failed { .. })), "{:?}", h.outcome());
    assert_eq!(h.pins, [(0, 0)], "gen 0's preparation is pinned for refills");
    // An old worker crashes: its slot gets gen 0 again, not the broken gen 1.
    h.exit(101, ExitStatus::Code(3), 5_000);
    h.tick_until(6_100);
    assert_eq!(h.gens(), [0, 0], "{:?}", h.logs);
    assert_eq!(h.core.generation(), 1, "the failed generation is still the newest");
    // The next rollout rolls out a new generation as usual.
    h.send(Event::Intent(Intent::Rolling), 7_000);
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.gens(), [2, 2]);
    // And a crash now refills from it.
    let pid = h.pids()[0];
    h.exit(pid, ExitStatus::Code(3), 70_000);
    h.tick_until(71_100);
    assert_eq!(h.gens(), [2, 2]);
}

#[test]
fn a_hot_restart_after_a_failed_rollout_starts_the_new_generation_not_the_refill() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.exit(102, ExitStatus::Code(1), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Failed { .. })));
    h.send(Event::Intent(Intent::Hot), 3_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 3_001);
    h.exit(800, ExitStatus::Code(0), 3_100);
    h.exit(100, ExitStatus::Code(0), 3_200);
    h.exit(101, ExitStatus::Code(0), 3_300);
    assert_eq!(h.reexec, Some(2));
    // The new image starts gen 2, and the refill is not carried.
    let (mut new, _) = h.new_image(3_400, settings(2));
    new.send(Event::Started, 0);
    new.tick_until(2_000);
    assert_eq!(new.gens(), [2, 2], "{:?}", new.logs);
    assert_eq!(new.outcome(), Some(Outcome::Completed));
    // A crash now is refilled from gen 2, not from the old refill.
    let pid = new.pids()[0];
    new.exit(pid, ExitStatus::Code(3), 20_000);
    new.tick_until(21_100);
    assert_eq!(new.gens(), [2, 2]);
}

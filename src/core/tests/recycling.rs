use super::*;

#[test]
fn a_worker_whose_memory_stays_high_is_replaced_make_before_break() {
    let mut h = recycling_harness(2, |s| s.max_memory = Some(100 * MIB));
    // One sample above is a spike; three in a row are not.
    h.memory_of.insert(100, 200 * MIB);
    h.tick_until(1_500);
    assert_eq!(h.spawns, 2, "not after one sample");
    h.memory_of.insert(100, 50 * MIB);
    h.tick_until(2_500);
    h.memory_of.insert(100, 200 * MIB);
    h.tick_until(4_500);
    assert_eq!(h.spawns, 2, "two samples above, then below: still not");
    h.tick_until(5_500);
    assert_eq!(h.spawns, 3, "the third sample in a row above starts a replacement");
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("recycling worker 0 (pid 100, gen 0): its memory (200.0 MiB PSS)"))
    );
    assert!(
        h.signals.is_empty(),
        "nothing is stopped before the replacement is ready"
    );
    h.run_checking_capacity(7_000, 2);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT)], "then the old one stops");
    h.reap_stopping(7_100);
    assert_eq!(h.pids(), [101, 102]);
    assert_eq!(h.gens(), [0, 0], "a recycled worker runs the same generation");
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Memory), 1);
    assert_eq!(h.core.check_invariants(), Ok(()));
}

#[test]
fn recycling_waits_for_a_running_restart_and_respects_the_surge() {
    let mut h = recycling_harness(3, |s| {
        s.max_memory = Some(100 * MIB);
        s.hook = true;
    });
    for pid in [100, 101, 102] {
        h.memory_of.insert(pid, 500 * MIB);
    }
    h.send(Event::Intent(Intent::Rolling), 1_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.tick_until(10_000);
    assert_eq!(h.spawns, 3, "nothing recycles while the hook of a restart runs");
    h.exit(900, ExitStatus::Code(1), 10_001);
    h.tick_until(12_000);
    let replacing = |h: &Harness| {
        (0..3)
            .filter(|k| matches!(h.core.slot(*k).unwrap().state, SlotState::Replacing { .. }))
            .count()
    };
    assert_eq!(replacing(&h), 1, "one at a time with --max-surge 1");
    h.run_checking_capacity(30_000, 3);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Memory), 3);
}

#[test]
fn workers_reaching_max_age_are_recycled_one_by_one_with_jitter() {
    let mut h = recycling_harness(3, |s| s.max_age = Some(Duration::from_secs(100)));
    let deadlines: Vec<Instant> = h
        .core
        .workers()
        .iter()
        .filter_map(|w| h.core.recycling.age_deadline(w, &h.core.settings))
        .collect();
    let distinct: std::collections::HashSet<_> = deadlines.iter().collect();
    assert_eq!(distinct.len(), 3, "workers started together get different deadlines");
    for d in &deadlines {
        let after = d.duration_since(h.t0);
        assert!(
            after >= Duration::from_secs(100) && after <= Duration::from_millis(110_100),
            "{after:?}"
        );
    }
    assert_eq!(h.core.next_deadline(), deadlines.iter().min().copied());
    h.run_checking_capacity(200_000, 3);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Age), 3);
    assert!(h.logs.iter().any(|l| l.contains("past --max-age")));
    assert_eq!(h.pids(), [103, 104, 105]);
}

#[test]
fn a_recycling_whose_replacement_fails_keeps_the_old_worker_and_waits() {
    let mut h = recycling_harness(1, |s| s.max_memory = Some(100 * MIB));
    h.memory_of.insert(100, 500 * MIB);
    h.tick_until(4_500);
    assert_eq!(h.spawns, 2);
    h.exit(101, ExitStatus::Code(1), 4_600);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("recycling worker 0 (pid 100, memory) failed"))
    );
    assert_eq!(h.pids(), [100], "the old worker keeps serving");
    h.tick_until(5_500);
    assert_eq!(h.spawns, 2, "no retry before the wait");
    h.tick_until(10_000);
    assert_eq!(h.spawns, 3, "then it tries again");
}

#[test]
fn without_the_flags_recycling_sets_no_timer() {
    let h = ready_harness(2, |_| {});
    assert_eq!(h.core.next_deadline(), None);
    let with = recycling_harness(2, |s| s.max_memory = Some(100 * MIB));
    assert!(
        with.core.next_deadline().is_some(),
        "with --max-memory, the next sample"
    );
}

use super::*;
use crate::core::snapshot::PhaseSnap;

/// `restore(snapshot(core))` is the same core, for every phase a restart
/// can be in: what a new image rebuilds is what the old one had.
#[test]
fn a_core_rebuilt_from_its_snapshot_is_the_same_in_every_restart_phase() {
    for state in STATES {
        let h = in_state(state);
        let now = h.at(1_500);
        let snap = h.core.snapshot(now, WALL);
        let json = serde_json::to_string(&snap).unwrap();
        let decoded: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(decoded, snap, "{state:?}: the snapshot crosses JSON whole");
        if h.core.exec_due() {
            continue;
        }
        let (back, _) = Core::restore(h.core.settings.clone(), snap.clone(), now, WALL, anyone);
        assert_eq!(back.snapshot(now, WALL), snap, "{state:?}");
        assert_eq!(back.restart_record(), h.core.restart_record(), "{state:?}");
        assert_eq!(
            back.status_line(),
            h.core.status_line().replace(", stopping", ""),
            "{state:?}"
        );
        back.check_invariants().unwrap();
    }
}

/// Every slot state crosses: empty with its backoff, spawning, running,
/// replacing (the replacement spawning or started), with each slot's
/// history; the workers' deadlines keep the time they had left.
#[test]
fn every_slot_state_and_the_time_left_cross() {
    let mut st = settings(5);
    st.max_surge = 2;
    let t0 = Instant::now();
    let mut core = Core::new(st.clone());
    core.handle(Event::Started, t0);
    for slot in 0..5 {
        core.handle(
            Event::Spawned {
                slot,
                generation: 0,
                pid: p(100 + slot as i32),
            },
            t0,
        );
    }
    let at = |ms| t0 + Duration::from_millis(ms);
    core.handle(Event::Tick, at(1_000));
    // Slot 4 crashes twice: empty, backing off.
    for (pid, ms) in [(104, 1_100), (110, 1_200)] {
        core.handle(
            Event::Exited {
                pid: p(pid),
                status: ExitStatus::Code(1),
                group_alive: false,
            },
            at(ms),
        );
        if pid == 104 {
            core.handle(
                Event::Spawned {
                    slot: 4,
                    generation: 0,
                    pid: p(110),
                },
                at(ms),
            );
        }
    }
    // A rollout: slot 0's replacement started, slot 1's still spawning.
    core.handle(Event::Intent(Intent::Rolling), at(1_300));
    core.handle(
        Event::Spawned {
            slot: 0,
            generation: 1,
            pid: p(200),
        },
        at(1_300),
    );
    let states: Vec<SlotState> = (0..5).map(|k| core.slot(k).unwrap().state).collect();
    assert!(matches!(
        states[0],
        SlotState::Replacing {
            new: Replacement::Started { .. },
            ..
        }
    ));
    assert!(matches!(
        states[1],
        SlotState::Replacing {
            new: Replacement::Spawning { .. },
            ..
        }
    ));
    assert!(matches!(states[2], SlotState::Running { .. }));
    assert!(matches!(states[4], SlotState::Empty { not_before: Some(_) }));
    let now = at(1_400);
    let snap = core.snapshot(now, WALL);
    // Restored 250 ms later on the wall clock, at another instant.
    let later = now + Duration::from_secs(7);
    let (back, _) = Core::restore(st, snap.clone(), later, WALL + 250, anyone);
    back.check_invariants().unwrap();
    let base = later - Duration::from_millis(250);
    let by_pid = |c: &Core| {
        let mut w = c.workers().to_vec();
        w.sort_by_key(|w| w.pid);
        w
    };
    for (w, old) in by_pid(&back).iter().zip(&by_pid(&core)) {
        assert_eq!((w.pid, w.slot, w.generation), (old.pid, old.slot, old.generation));
        let left = |t: Instant, from: Instant| t.checked_duration_since(from).map(|d| d.as_millis());
        match (&w.state, &old.state) {
            (WorkerState::Booting { boot_deadline: a, .. }, WorkerState::Booting { boot_deadline: b, .. }) => {
                assert_eq!(
                    left(*a, base),
                    left(*b, now),
                    "the same time left before the boot timeout"
                );
            }
            (a, b) => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b)),
        }
    }
    assert!(
        matches!(back.slot(0).unwrap().state, SlotState::Replacing { new: Replacement::Started { pid }, .. } if pid == p(200))
    );
    // The spawn in flight will never report to the new image: its slot is
    // as if it had not been asked for, and the rollout asks again.
    assert!(matches!(back.slot(1).unwrap().state, SlotState::Running { .. }));
    let slot4 = back.slot(4).unwrap();
    assert_eq!((slot4.failures, slot4.restarts), (2, 2));
    assert_eq!(
        slot4.not_before().map(|t| t.duration_since(base)),
        core.slot(4).unwrap().not_before().map(|t| t.duration_since(now)),
        "the backoff keeps its time left"
    );
}

/// What the new image may not take over is left alone and said: a pid that
/// is not its child, a generation from the future.
#[test]
fn restore_adopts_only_what_is_sup_s_own() {
    let old = ready_harness(3, |_| {});
    let mut snap = old.core.snapshot(old.at(1_000), WALL);
    snap.workers[2].generation = 9;
    let (core, actions) = Core::restore(settings(3), snap, old.at(1_000), WALL, |pid| {
        if pid == p(100) {
            Err("pid 100 is not sup's child (its parent is 1)".to_string())
        } else {
            Ok(())
        }
    });
    let pids: Vec<i32> = core.workers().iter().map(|w| w.pid.raw()).collect();
    assert_eq!(pids, [101]);
    let logs = format!("{actions:?}");
    assert!(
        logs.contains("not adopting worker 0 (pid 100, gen 0): pid 100 is not sup's child"),
        "{logs}"
    );
    assert!(logs.contains("generation is from the future"), "{logs}");
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Signal { .. } | Action::KillGroup { .. }))
    );
    core.check_invariants().unwrap();
}

/// The counters of `/metrics` cross a reexec and an overlap hot restart.
#[test]
fn counters_cross_a_reexec_and_an_overlap_hot_restart() {
    let mut old = ready_harness(2, |s| s.hot_overlap = true);
    old.exit(100, ExitStatus::Code(1), 1_000);
    old.tick_until(5_000);
    old.send(Event::Intent(Intent::Rolling), 6_000);
    old.run_checking_capacity(60_000, 2);
    let counted = old.core.counters().clone();
    assert_eq!(counted.exits.get(ExitCause::Crashed), 1);
    assert_eq!(counted.restarts_of(RestartKind::Rolling, Ended::Completed), 1);
    old.send(Event::Intent(Intent::Hot), 61_000);
    old.send(Event::HelperSpawned { pid: p(900) }, 61_001);
    old.exit(900, ExitStatus::Code(0), 61_002);
    assert_eq!(old.core.restart_record().map(|r| r.kind), Some(RestartKind::Hot));
    let snap = old.core.snapshot(old.at(61_003), WALL);
    assert_eq!(snap.restart.map(|r| r.phase), Some(PhaseSnap::Exec { adopt: true }));
    let (mut new, _) = old.new_image(61_003, old.core.settings.clone());
    assert_eq!(new.core.counters(), &counted);
    new.send(Event::Started, 0);
    new.run_checking_capacity(60_000, 2);
    assert_eq!(new.core.counters().restarts_of(RestartKind::Hot, Ended::Completed), 1);
    assert_eq!(new.core.counters().exits.get(ExitCause::Crashed), 1, "still counted");
    assert_eq!(new.core.restart_id(), 2, "restart ids go on");
}

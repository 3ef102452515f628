use super::*;

fn canary_harness() -> Harness {
    let mut h = ready_harness(8, |s| s.max_surge = 2);
    let reply = h.control(Intent::Canary(2), 2_000);
    assert!(matches!(reply, Reply::Accepted { restart: Some(_), .. }), "{reply:?}");
    h.run_checking_capacity(30_000, 8);
    h
}

fn by_generation(h: &Harness) -> std::collections::BTreeMap<u64, usize> {
    let mut m = std::collections::BTreeMap::new();
    for w in h.core.workers().iter().filter(|w| !w.is_stopping()) {
        *m.entry(w.generation).or_insert(0) += 1;
    }
    m
}

#[test]
fn a_canary_replaces_n_slots_then_pauses_and_resume_finishes_it() {
    let mut h = canary_harness();
    assert_eq!(by_generation(&h), [(0, 6), (1, 2)].into());
    let record = h.core.restart_record().unwrap();
    assert_eq!((record.outcome, record.generation), (Outcome::Paused, Some(1)));
    assert!(h.core.status_line().contains("paused"), "{}", h.core.status_line());
    let spawned = h.spawns;
    h.tick_until(60_000);
    assert_eq!(h.spawns, spawned, "nothing more while paused");
    assert_eq!(h.core.rollback_target(), Some(0));
    let reply = h.control(Intent::Resume, 61_000);
    assert!(
        matches!(
            reply,
            Reply::Accepted {
                restart: Some(RestartRef { id: 1, .. }),
                ..
            }
        ),
        "{reply:?}"
    );
    h.run_checking_capacity(120_000, 8);
    assert_eq!(by_generation(&h), [(1, 8)].into());
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Completed));
    assert!(matches!(h.control(Intent::Resume, 121_000), Reply::Refused { .. }));
}

#[test]
fn a_rollback_from_a_paused_canary_replaces_only_the_canary_by_the_pinned_release() {
    let mut h = canary_harness();
    let reply = h.control(Intent::Rollback { pinned: Pinned::Ready }, 31_000);
    assert!(
        matches!(
            reply,
            Reply::Accepted {
                restart: Some(RestartRef {
                    kind: RestartKind::Rollback,
                    ..
                }),
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(h.pins, [(2, 0)], "gen 2 runs gen 0's pinned release");
    h.run_checking_capacity(90_000, 8);
    assert_eq!(by_generation(&h), [(0, 6), (2, 2)].into(), "the six old ones untouched");
    let record = h.core.restart_record().unwrap();
    assert_eq!(
        (record.kind, record.outcome),
        (RestartKind::Rollback, Outcome::Completed)
    );
    assert_eq!(h.core.rollback_target(), None, "one step back only");
    assert!(matches!(
        h.control(Intent::Rollback { pinned: Pinned::Ready }, 91_000),
        Reply::Refused { .. }
    ));
}

#[test]
fn a_rollback_after_a_completed_rollout_goes_one_step_back() {
    let mut h = ready_harness(3, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(30_000, 3);
    assert_eq!(by_generation(&h), [(1, 3)].into());
    h.control(Intent::Rollback { pinned: Pinned::Ready }, 31_000);
    h.run_checking_capacity(60_000, 3);
    assert_eq!(by_generation(&h), [(2, 3)].into());
    assert_eq!(h.pins, [(2, 0)]);
}

#[test]
fn a_rollback_is_refused_with_the_reason_and_nothing_is_stopped() {
    let mut h = ready_harness(2, |_| {});
    let reply = h.control(Intent::Rollback { pinned: Pinned::Ready }, 1_000);
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("no previous generation")),
        "{reply:?}"
    );
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.run_checking_capacity(30_000, 2);
    let before = h.signals.len();
    let reply = h.control(Intent::Rollback { pinned: Pinned::Gone }, 31_000);
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("no longer exists")),
        "{reply:?}"
    );
    let reply = h.control(
        Intent::Rollback {
            pinned: Pinned::Unknown,
        },
        31_001,
    );
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("not known")),
        "{reply:?}"
    );
    assert_eq!(h.signals.len(), before, "nothing stopped");
    assert!(h.pins.is_empty());
}

#[test]
fn a_paused_canary_stays_paused_across_a_reexec() {
    let mut old = canary_harness();
    let reply = old.control(Intent::Reexec, 31_000);
    assert!(matches!(reply, Reply::Accepted { .. }), "{reply:?}");
    assert!(
        matches!(old.control(Intent::Hot, 31_001), Reply::Refused { .. }),
        "no hot restart meanwhile"
    );
    old.send(Event::HelperSpawned { pid: p(900) }, 31_002);
    old.exit(900, ExitStatus::Code(0), 31_003);
    assert!(old.adopting);
    let (mut new, _) = old.new_image(31_004, old.core.settings.clone());
    new.send(Event::Started, 0);
    let record = new.core.restart_record().unwrap();
    assert_eq!((record.id, record.outcome), (1, Outcome::Paused), "the canary, paused");
    let last = new.core.last_restart().unwrap();
    assert_eq!((last.kind, last.outcome), (RestartKind::Reexec, Outcome::Completed));
    assert_eq!(by_generation(&new), [(0, 6), (1, 2)].into());
    // It can still be resumed in the new image.
    assert!(matches!(new.control(Intent::Resume, 1_000), Reply::Accepted { .. }));
    new.run_checking_capacity(60_000, 8);
    assert_eq!(by_generation(&new), [(1, 8)].into());
}

/// After a failed rollout, the release a rollback restores is still the one
/// that served, not the one that never came up.
#[test]
fn after_a_failed_rollout_the_rollback_target_is_still_the_release_that_served() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    let new = *h.pids().last().unwrap();
    h.exit(new, ExitStatus::Code(1), 2_100);
    assert!(matches!(
        h.core.restart_record().map(|r| r.outcome),
        Some(Outcome::Failed { .. })
    ));
    assert_eq!(h.core.rollback_target(), Some(0));
    h.control(Intent::Canary(1), 3_000);
    h.run_checking_capacity(30_000, 2);
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Paused));
    assert_eq!(h.core.rollback_target(), Some(0), "gen 1 never served");
    assert_eq!(h.pins, [(0, 0)], "gen 0's release refills slots meanwhile");
    h.control(Intent::Rollback { pinned: Pinned::Ready }, 31_000);
    assert_eq!(h.pins, [(0, 0), (3, 0)], "back to gen 0's release");
}

use super::*;

/// Hot restart in overlap mode up to the exec: hook-less, preflight passes.
fn overlap_to_exec(h: &mut Harness, intent: Intent) {
    h.send(Event::Intent(intent), 1_000);
    assert_eq!(h.preflights, 1, "the new sup is checked first");
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    h.exit(900, ExitStatus::Code(0), 1_002);
}

#[test]
fn an_overlap_hot_restart_re_executes_with_every_worker_serving() {
    let mut h = ready_harness(2, |s| s.hot_overlap = true);
    let before = h.pids();
    overlap_to_exec(&mut h, Intent::Hot);
    assert_eq!(h.reexec, Some(0), "the workers' own generation crosses");
    assert!(h.adopting);
    assert!(h.signals.is_empty(), "no worker was stopped: {:?}", h.signals);
    assert_eq!(h.pids(), before);
    assert!(h.core.exec_due());
    assert_eq!(h.core.workers().iter().filter(|w| w.is_stopping()).count(), 0);
}

#[test]
fn a_failed_overlap_exec_leaves_the_workers_untouched() {
    let mut h = ready_harness(2, |s| s.hot_overlap = true);
    let before = h.pids();
    overlap_to_exec(&mut h, Intent::Hot);
    h.send(Event::ReExecFailed { reason: "gone".into() }, 1_010);
    assert_eq!(h.pids(), before);
    assert!(h.signals.is_empty());
    assert_eq!(h.core.generation(), 0, "nothing new runs");
    assert!(matches!(
        h.core.restart_record().map(|r| r.outcome),
        Some(Outcome::Abandoned { .. })
    ));
    assert!(
        h.logs.iter().any(|l| l.contains("the workers were not touched")),
        "{:?}",
        h.logs
    );
}

#[test]
fn the_new_image_adopts_the_workers_then_rolls_them_make_before_break() {
    // The old image.
    let mut old = ready_harness(2, |s| s.hot_overlap = true);
    overlap_to_exec(&mut old, Intent::Hot);
    // The new image: restored before Started, as the shell does.
    let (mut h, actions) = old.new_image(
        1_003,
        Settings {
            hot_overlap: true,
            ..settings(2)
        },
    );
    assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
    assert_eq!(h.core.generation(), 1);
    h.send(Event::Started, 0);
    assert_eq!(
        h.gens(),
        [0, 0, 1],
        "one replacement first, the adopted ones still serving"
    );
    h.run_checking_capacity(20_000, 2);
    assert_eq!(h.gens(), [1, 1]);
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Completed));
    assert!(
        h.logs.iter().any(|l| l.contains("hot restart to gen 1 complete")),
        "{:?}",
        h.logs
    );
}

#[test]
fn reexec_adopts_everything_and_touches_nothing() {
    let mut old = ready_harness(3, |_| {});
    let reply = old.control(Intent::Reexec, 1_000);
    assert!(matches!(
        reply,
        Reply::Accepted {
            restart: Some(RestartRef {
                kind: RestartKind::Reexec,
                ..
            }),
            ..
        }
    ));
    assert!(old.hooks.is_empty());
    old.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    old.exit(900, ExitStatus::Code(0), 1_002);
    assert_eq!((old.reexec, old.adopting), (Some(0), true));
    let pids = old.pids();
    let (mut h, _) = old.new_image(1_003, settings(3));
    h.send(Event::Started, 0);
    assert_eq!(h.pids(), pids, "the same workers");
    assert_eq!(h.spawns, 0, "nothing started");
    assert_eq!(h.core.restart_record().map(|r| r.outcome), Some(Outcome::Completed));
    // They are its own now: a crash is replaced, a stop stops them.
    h.exit(pids[0], ExitStatus::Code(1), 2_000);
    assert_eq!(h.spawns, 1);
    h.send(Event::Intent(Intent::Stop), 3_000);
    assert_eq!(h.signals.len(), 3 * 2, "TERM and CONT to each: {:?}", h.signals);
}

#[test]
fn a_rolling_signal_during_a_hot_preflight_runs_after_it_in_the_new_image() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.send(Event::Intent(Intent::Rolling), 1_001);
    assert!(
        h.logs.iter().any(|l| l.contains(
            "rolling restart requested while hot restart 1 runs: a rolling restart will run when it has ended"
        )),
        "{:?}",
        h.logs
    );
    assert_eq!(h.core.restart_id(), 1, "no second restart has begun yet");
    h.send(Event::HelperSpawned { pid: p(800) }, 1_002);
    h.exit(800, ExitStatus::Code(0), 1_100);
    h.reap_stopping(1_200);
    assert_eq!(h.reexec, Some(1));
    assert_eq!(h.core.pending(), Some(RestartKind::Rolling), "handed to the new image");
    // The new image: the hot restart completes, then the rolling one runs.
    let (mut new, carried) = h.new_image(1_200, settings(2));
    assert!(carried.iter().all(|a| matches!(a, Action::Log { .. })), "{carried:?}");
    assert_eq!(new.core.pending(), Some(RestartKind::Rolling));
    new.send(Event::Started, 0);
    new.run_checking_capacity(60_000, 0);
    let record = new.core.restart_record().unwrap();
    assert_eq!(
        (record.id, record.kind, record.generation, record.outcome),
        (2, RestartKind::Rolling, Some(2), Outcome::Completed)
    );
    assert_eq!(new.gens(), [2, 2]);
}

#[test]
fn a_rolling_signal_during_the_hook_runs_a_second_rollout_after_the_first() {
    let mut h = ready_harness(2, |s| s.hook = true);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.send(Event::Intent(Intent::Rolling), 2_002);
    h.exit(900, ExitStatus::Code(0), 2_100);
    assert_eq!(h.core.pending(), Some(RestartKind::Rolling));
    h.run_checking_capacity(30_000, 2);
    assert_eq!(h.hooks.len(), 2, "the second restart runs its own hook");
    h.send(Event::HelperSpawned { pid: p(901) }, 30_001);
    h.exit(901, ExitStatus::Code(0), 30_100);
    h.run_checking_capacity(60_000, 2);
    let record = h.core.restart_record().unwrap();
    assert_eq!(
        (record.id, record.generation, record.outcome),
        (2, Some(2), Outcome::Completed)
    );
    assert_eq!(h.core.pending(), None);
}

#[test]
fn the_worker_count_set_at_runtime_survives_a_hot_restart_unless_the_configuration_changes_it() {
    let mut old = ready_harness(2, |_| {});
    old.send(Event::Intent(Intent::Scale(5)), 2_000);
    let (new, log) = old.new_image(2_000, settings(2));
    assert_eq!(new.core.target(), 5);
    assert!(format!("{log:?}").contains("keeping the worker count set at runtime: 5"));
    let (new, log) = old.new_image(2_000, settings(3));
    assert_eq!(new.core.target(), 3, "the configuration changed: it wins");
    assert!(format!("{log:?}").contains("the count set at runtime (5) is dropped"));
}

#[test]
fn a_restart_signal_during_a_reexec_is_ignored_out_loud() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Reexec), 1_000);
    h.send(Event::Intent(Intent::Rolling), 1_001);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("rolling restart ignored: sup is re-executing itself (reexec 1)")),
        "{:?}",
        h.logs
    );
    h.send(Event::HelperSpawned { pid: p(900) }, 1_002);
    h.exit(900, ExitStatus::Code(0), 1_003);
    assert_eq!((h.reexec, h.adopting), (Some(0), true), "the reexec goes on, unchanged");
}

#[test]
fn reexec_is_refused_while_a_restart_runs() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 1_000);
    assert!(
        matches!(h.control(Intent::Reexec, 1_001), Reply::Refused { reason } if reason.contains("rolling restart 1 is running"))
    );
}

#[test]
fn a_handed_worker_from_a_future_generation_is_not_adopted_nor_signalled() {
    let old = ready_harness(2, |_| {});
    let mut snap = old.core.snapshot(old.at(1_000), WALL);
    snap.workers[1].generation = 7;
    let (h, actions) = Harness::restored(settings(2), snap, 0);
    assert_eq!(h.pids(), [100]);
    assert!(actions.iter().all(|a| matches!(a, Action::Log { .. })), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Log { message, .. } if message.contains("generation is from the future")))
    );
}

#[test]
fn adopted_workers_beyond_the_new_count_are_stopped() {
    let old = ready_harness(3, |_| {});
    let (_, actions) = old.new_image(1_000, settings(2));
    let stopped: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Signal { pid, .. } => Some(pid.raw()),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, [102, 102], "slot 2's worker gets TERM and CONT");
}

#[test]
fn a_hot_restart_checks_then_stops_everything_then_execs() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    assert_eq!(h.preflights, 1);
    assert!(h.signals.is_empty(), "nothing stops before the new sup checked out");
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT), (101, TERM), (101, SIGCONT)]);
    let spawns = h.spawns;
    h.exit(100, ExitStatus::Code(0), 2_200);
    assert_eq!(h.reexec, None, "waits for every worker");
    h.exit(101, ExitStatus::Code(0), 2_300);
    assert_eq!(h.reexec, Some(1));
    assert_eq!(h.spawns, spawns, "no worker starts in the old image");
}

#[test]
fn a_failed_preflight_abandons_the_hot_restart() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(2), 2_100);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { ref reason }) if reason.contains("failed its check")));
    assert!(h.signals.is_empty());
    assert_eq!(h.pids(), [100, 101]);
    assert_eq!(h.reexec, None);
}

#[test]
fn a_hot_restart_runs_the_hook_first() {
    let mut h = ready_harness(1, |s| s.hook = true);
    h.send(Event::Intent(Intent::Hot), 2_000);
    assert_eq!((h.hooks.as_slice(), h.preflights), ([RestartKind::Hot].as_slice(), 0));
    h.send(Event::HelperSpawned { pid: p(900) }, 2_001);
    h.exit(900, ExitStatus::Code(0), 2_100);
    assert_eq!(h.preflights, 1);
}

#[test]
fn term_during_a_hot_restart_is_honoured() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    h.send(Event::Intent(Intent::Stop), 2_150);
    h.reap_stopping(2_200);
    assert_eq!(h.reexec, None, "a stop wins over the exec");
    assert_eq!(h.exit, Some(0));
}

#[test]
fn requests_during_a_hot_restart_coalesce_and_hot_supersedes_rolling() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.generation(), 1);
    h.send(Event::Intent(Intent::Hot), 2_010);
    assert_eq!(h.preflights, 1, "hot supersedes the rollout");
    h.send(Event::HelperSpawned { pid: p(800) }, 2_011);
    h.exit(800, ExitStatus::Code(0), 2_100);
    for i in 0..5 {
        h.send(Event::Intent(Intent::Hot), 2_101 + i);
        h.send(Event::Intent(Intent::Rolling), 2_101 + i);
    }
    assert_eq!(h.preflights, 1, "the storm coalesced");
    h.reap_stopping(2_200);
    assert_eq!(h.reexec, Some(2));
}

#[test]
fn a_failed_exec_starts_workers_again() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Hot), 2_000);
    h.send(Event::HelperSpawned { pid: p(800) }, 2_001);
    h.exit(800, ExitStatus::Code(0), 2_100);
    h.reap_stopping(2_200);
    assert!(h.pids().is_empty());
    h.send(Event::ReExecFailed { reason: "gone".into() }, 2_300);
    assert_eq!(h.gens(), [1, 1]);
    assert!(matches!(h.outcome(), Some(Outcome::Abandoned { .. })));
}

#[test]
fn a_new_image_whose_workers_cannot_start_keeps_trying_and_says_so() {
    let mut h = Harness::resumed(settings(2), 7, 3, None);
    h.fail_spawns = true;
    h.send(Event::Started, 0);
    h.tick_until(20_000);
    assert!(h.spawns > 6, "it kept trying, with backoff: {} spawns", h.spawns);
    assert!(h.spawns < 30, "with backoff, not in a loop: {} spawns", h.spawns);
    let record = h.core.restart_record().unwrap();
    assert_eq!((record.kind, record.outcome), (RestartKind::Hot, Outcome::Running));
    assert!(
        h.core
            .status_line()
            .contains("hot restart: gen 3 failing to start in 2 slot(s), retrying"),
        "{}",
        h.core.status_line()
    );
    assert!(h.logs.iter().any(|l| l.contains("no old worker is left to serve")));
    assert!(
        !h.logs.iter().any(|l| l.contains("rolling")),
        "a hot restart is never called rolling: {:?}",
        h.logs
    );
    // The release is fixed: the next attempts start, and the restart ends.
    h.fail_spawns = false;
    h.tick_until(60_000);
    let record = h.core.restart_record().unwrap();
    assert_eq!((record.generation, record.outcome), (Some(3), Outcome::Completed));
}

#[test]
fn the_new_image_completes_the_hot_restart_when_its_workers_are_ready() {
    let mut h = Harness::resumed(settings(2), 7, 3, None);
    h.send(Event::Started, 0);
    assert_eq!(h.gens(), [3, 3]);
    h.tick_until(2_000);
    let record = h.core.restart_record().unwrap();
    assert_eq!(
        (record.kind, record.generation, record.outcome),
        (RestartKind::Hot, Some(3), Outcome::Completed)
    );
    assert!(
        h.logs.iter().any(|l| l.contains("hot restart to gen 3 complete")),
        "{:?}",
        h.logs
    );
}

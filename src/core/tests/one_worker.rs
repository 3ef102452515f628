use super::*;

fn worker(target: WorkerRef, action: WorkerAction) -> Intent {
    Intent::Worker { target, action }
}

#[test]
fn a_replaced_worker_stops_only_once_its_replacement_is_ready() {
    let mut h = ready_harness(3, |_| {});
    let reply = h.control(worker(WorkerRef::Either(1), WorkerAction::Replace), 2_000);
    assert!(matches!(reply, Reply::Accepted { restart: None, .. }), "{reply:?}");
    assert_eq!(h.spawns, 4, "the replacement first");
    assert!(h.signals.is_empty(), "the old one serves on");
    h.tick_until(3_000);
    assert_eq!(h.signals, [(101, TERM), (101, SIGCONT)], "replaced once ready");
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Operator), 1);
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("replacing worker 1 (pid 101, gen 0) as asked")),
        "{:?}",
        h.logs
    );
}

#[test]
fn a_worker_is_named_by_slot_or_pid_and_an_ambiguous_number_is_refused() {
    let mut h = Harness::before_start(settings(3));
    h.next_pid = 1;
    h.send(Event::Started, 0);
    h.tick_until(1_000);
    assert_eq!(h.pids(), [1, 2, 3]);
    // 1 is slot 1 (pid 2) and pid 1 (slot 0).
    let reply = h.control(worker(WorkerRef::Either(1), WorkerAction::Stop), 2_000);
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("say slot:1 or pid:1")),
        "{reply:?}"
    );
    assert!(h.signals.is_empty());
    h.control(
        worker(WorkerRef::Pid(p(1)), WorkerAction::Signal(Signal::SIGUSR1)),
        2_100,
    );
    assert_eq!(h.signalled_groups, [(1, libc::SIGUSR1)], "the group of pid 1 only");
    h.control(worker(WorkerRef::Slot(1), WorkerAction::Stop), 2_200);
    assert_eq!(h.signals[0], (2, TERM), "slot 1's worker, pid 2");
    assert!(h.spawns >= 4, "its slot gets a new worker");
    let reply = h.control(worker(WorkerRef::Either(99), WorkerAction::Stop), 2_300);
    assert!(matches!(reply, Reply::Refused { .. }));
}

#[test]
fn replacing_one_worker_waits_for_a_restart_and_the_surge() {
    let mut h = ready_harness(2, |_| {});
    h.send(Event::Intent(Intent::Rolling), 2_000);
    let reply = h.control(worker(WorkerRef::Slot(0), WorkerAction::Replace), 2_001);
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("replaces every worker")),
        "{reply:?}"
    );
    h.run_checking_capacity(60_000, 2);
    assert!(matches!(
        h.control(worker(WorkerRef::Slot(0), WorkerAction::Replace), 60_001),
        Reply::Accepted { .. }
    ));
    let reply = h.control(worker(WorkerRef::Slot(1), WorkerAction::Replace), 60_002);
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("--max-surge 1")),
        "{reply:?}"
    );
}

#[test]
fn a_worker_that_asks_to_be_recycled_is_replaced_make_before_break() {
    let mut h = ready_harness(2, |_| {});
    h.send(notify(100, "X_SUP_RECYCLE=1"), 2_000);
    assert_eq!(h.spawns, 3, "its replacement starts");
    assert!(h.signals.is_empty());
    h.tick_until(3_000);
    assert_eq!(h.signals, [(100, TERM), (100, SIGCONT)]);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Requested), 1);
    // Asking twice is one recycling; a stopping worker is not recycled again.
    h.send(notify(100, "X_SUP_RECYCLE=1"), 3_001);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Requested), 1);
}

use super::*;

fn balanced(workers: usize, stall: Option<u64>) -> Harness {
    ready_harness(workers, |s| {
        s.balance = true;
        s.stall_timeout = stall.map(Duration::from_millis);
    })
}

#[test]
fn connections_are_steered_to_the_slots_whose_worker_serves() {
    let mut h = Harness::with(Settings {
        balance: true,
        ..settings(3)
    });
    assert_eq!(h.steered, [vec![0, 1, 2]], "nobody serves yet: every slot queues");
    h.tick_until(1_000);
    assert_eq!(h.steered.last().unwrap(), &vec![0, 1, 2]);
    h.exit(101, ExitStatus::Code(3), 2_000);
    assert_eq!(
        h.steered.last().unwrap(),
        &vec![0, 2],
        "slot 1 is empty: nothing new waits there"
    );
    h.tick_until(3_100);
    assert_eq!(h.steered.last().unwrap(), &vec![0, 1, 2], "its new worker is ready");
    // Without --balance reuseport nothing is steered.
    let plain = ready_harness(3, |_| {});
    assert!(plain.steered.is_empty() && plain.slot_probes == 0);
}

#[test]
fn a_worker_whose_queue_does_not_shrink_is_replaced_make_before_break() {
    let mut h = balanced(3, Some(1_000));
    h.slot_depths = vec![0, 4, 0];
    h.tick_until(1_600);
    assert_eq!(
        h.steered.last().unwrap(),
        &vec![0, 2],
        "stuck for half the timeout: steered away"
    );
    assert_eq!(h.spawns, 3, "not replaced yet");
    h.tick_until(2_200);
    assert_eq!(h.spawns, 4, "hung at the full timeout: a replacement starts");
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 1);
    assert!(
        h.signals.is_empty(),
        "the hung worker stays until its replacement is ready"
    );
    assert!(
        h.logs
            .iter()
            .any(|l| l.contains("worker 1 (pid 101, gen 0) is hung: 4 connection(s)")),
        "{:?}",
        h.logs
    );
    assert_eq!(
        h.steered.last().unwrap(),
        &vec![0, 2],
        "still steered away while it is replaced"
    );
    h.slot_depths = vec![0, 0, 0];
    h.tick_until(3_300);
    assert_eq!(
        h.signals,
        [(101, TERM), (101, SIGCONT)],
        "replaced once its replacement is ready"
    );
    assert_eq!(
        h.steered.last().unwrap(),
        &vec![0, 1, 2],
        "the replacement serves the slot"
    );
    h.tick_until(10_000);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 1, "once");
}

#[test]
fn a_busy_worker_that_keeps_accepting_is_never_replaced() {
    let mut h = balanced(2, Some(1_000));
    // Every queue is full at every look (overload), but once steered away
    // from, a queue shrinks: its worker accepts.
    for round in 0..40u64 {
        let base = 1_000 + round * 500;
        h.slot_depths = vec![8, 8];
        h.tick_until(base + 400);
        h.slot_depths = vec![7, 7];
        h.tick_until(base + 500);
    }
    assert_eq!(h.spawns, 2, "nobody replaced");
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 0);
}

#[test]
fn the_dump_signal_goes_to_a_hung_worker_first() {
    let mut h = ready_harness(2, |s| {
        s.balance = true;
        s.stall_timeout = Some(Duration::from_millis(1_000));
        s.dump_signal = Some(Signal::SIGQUIT);
    });
    h.slot_depths = vec![2, 0];
    h.tick_until(2_200);
    assert_eq!(h.signals, [(100, libc::SIGQUIT)]);
}

#[test]
fn a_scaled_down_slot_serves_its_queue_before_its_worker_stops() {
    let mut h = balanced(3, None);
    h.slot_depths = vec![0, 0, 2];
    h.send(Event::Intent(Intent::Decr), 2_000);
    assert!(h.signals.is_empty(), "worker 2 still has connections queued");
    assert_eq!(h.steered.last().unwrap(), &vec![0, 1], "nothing new reaches slot 2");
    h.tick_until(2_100);
    assert!(h.signals.is_empty());
    assert!(h.slot_probes > 0);
    h.slot_depths = vec![0, 0, 0];
    h.tick_until(2_200);
    assert_eq!(h.signals, [(102, TERM), (102, SIGCONT)], "its queue is empty: it stops");
    h.exit(102, ExitStatus::Code(0), 2_300);
    assert_eq!(
        h.steered.last().unwrap(),
        &vec![0, 1],
        "slot 2's socket stays, steered to by nobody"
    );
    assert_eq!(h.core.next_deadline(), None, "idle again: no timer");
}

#[test]
fn a_slot_whose_queue_never_empties_is_retired_at_the_graceful_timeout() {
    let mut h = ready_harness(2, |s| {
        s.balance = true;
        s.graceful_timeout = Duration::from_secs(5);
    });
    h.slot_depths = vec![0, 1];
    h.send(Event::Intent(Intent::Decr), 2_000);
    h.tick_until(6_900);
    assert!(h.signals.is_empty());
    h.tick_until(7_000);
    assert_eq!(h.signals, [(101, TERM), (101, SIGCONT)]);
}

#[test]
fn scaling_back_up_keeps_a_retiring_worker() {
    let mut h = balanced(3, None);
    h.slot_depths = vec![0, 0, 2];
    h.send(Event::Intent(Intent::Decr), 2_000);
    h.send(Event::Intent(Intent::Incr), 2_050);
    h.tick_until(10_000);
    assert!(h.signals.is_empty(), "worker 2 serves on");
    assert_eq!(h.spawns, 3, "no new worker for slot 2: it has one");
    assert_eq!(h.steered.last().unwrap(), &vec![0, 1, 2]);
}

#[test]
fn at_a_stop_connections_queue_on_slot_zero_the_binds_own_socket() {
    let mut h = balanced(3, None);
    h.queued = 0;
    h.send(Event::Intent(Intent::Stop), 2_000);
    assert_eq!(h.steered.last().unwrap(), &vec![0]);
}

#[test]
fn a_slot_whose_queue_holds_connections_skips_the_crash_backoff() {
    let mut h = balanced(2, None);
    h.slot_depths = vec![0, 3];
    // Exits every 2 s: without the queue, the backoff would grow.
    let mut ms = 3_000;
    for _ in 0..5 {
        let pid = h.core.slot(1).and_then(|s| s.live().next()).unwrap().raw();
        let spawns = h.spawns;
        h.exit(pid, ExitStatus::Code(0), ms);
        assert_eq!(h.spawns, spawns + 1, "refilled at once");
        h.tick_until(ms + 1_000);
        ms += 2_000;
    }
    assert!(h.logs.iter().any(|l| l.contains("its slot is refilled at once")));
    // An empty queue keeps the backoff.
    h.slot_depths = vec![0, 0];
    let pid = h.core.slot(1).and_then(|s| s.live().next()).unwrap().raw();
    let spawns = h.spawns;
    h.exit(pid, ExitStatus::Code(0), ms);
    assert_eq!(h.spawns, spawns, "backing off");
}

#[test]
fn under_overload_a_full_queue_that_never_shrinks_is_not_a_hang_while_its_worker_accepts() {
    let mut h = balanced(2, Some(1_000));
    // Both queues full at every look (the backlog refills as fast as it is
    // served), but each worker holds a new connection at each look.
    h.slot_depths = vec![128, 128];
    let mut ms = 1_000;
    for round in 0..100u64 {
        h.held.insert(100, vec![1_000 + round]);
        h.held.insert(101, vec![5_000 + round]);
        ms += 100;
        h.tick_until(ms);
    }
    assert_eq!(h.spawns, 2, "nobody replaced: {:?}", h.logs);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 0);
    // Worker 1 stops accepting (the same socket at every look): hung.
    h.held.insert(101, vec![9_999]);
    for round in 0..30u64 {
        h.held.insert(100, vec![20_000 + round]);
        ms += 100;
        h.tick_until(ms);
        if h.core.counters().recycled.get(RecycleReason::Stall) > 0 {
            // Its replacement takes the queue.
            h.slot_depths = vec![128, 0];
        }
    }
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 1, "{:?}", h.logs);
    assert!(h.logs.iter().any(|l| l.contains("worker 1 (pid 101, gen 0) is hung")));
}

#[test]
fn a_hung_worker_whose_replacement_fails_is_tried_again() {
    let mut h = balanced(2, Some(1_000));
    h.slot_depths = vec![0, 3];
    h.tick_until(2_200);
    assert_eq!(h.core.counters().recycled.get(RecycleReason::Stall), 1);
    let replacement = *h.pids().last().unwrap();
    h.exit(replacement, ExitStatus::Code(1), 2_300);
    h.tick_until(6_000);
    assert!(
        h.core.counters().recycled.get(RecycleReason::Stall) >= 2,
        "tried again: {:?}",
        h.logs
    );
}

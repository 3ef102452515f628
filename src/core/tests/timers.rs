use super::*;
use crate::core::timers::Timer;

/// A hot restart whose preflight (the new sup's `--check`) never exits:
/// abandoned at `--hook-timeout`, its group killed, the workers untouched,
/// and the core idle again — no deadline left in the past to spin on.
#[test]
fn a_hung_preflight_is_abandoned_at_the_hook_timeout_and_the_next_restart_is_accepted() {
    let mut h = ready_harness(2, |s| s.hook_timeout = Duration::from_secs(1));
    let before = h.pids();
    assert!(matches!(h.control(Intent::Hot, 1_000), Reply::Accepted { .. }));
    assert_eq!(h.preflights, 1);
    h.send(Event::HelperSpawned { pid: p(900) }, 1_001);
    let refused = h.control(Intent::Rolling, 1_500);
    assert!(
        matches!(&refused, Reply::Refused { reason } if reason.contains("checking the new sup")),
        "{refused:?}"
    );
    assert_eq!(h.core.next_deadline(), Some(h.at(2_000)), "the preflight's deadline");
    h.tick_until(2_000);
    assert_eq!(h.killed_groups, [900], "the preflight's group is killed");
    let record = h.core.restart_record().unwrap();
    assert!(
        matches!(&record.outcome, Outcome::Abandoned { reason } if reason.contains("did not finish within 1s")),
        "{record:?}"
    );
    assert!(
        h.logs.iter().any(|l| l.contains("hot restart abandoned")),
        "{:?}",
        h.logs
    );
    assert_eq!(h.pids(), before, "the old workers are untouched");
    assert!(h.signals.is_empty());
    assert_eq!(h.core.next_deadline(), None, "idle: nothing is timed");
    // Its exit comes later, as a stranger's; the next restart is accepted.
    h.exit(900, ExitStatus::Signaled(9), 2_010);
    assert!(matches!(
        h.control(Intent::Rolling, 2_100),
        Reply::Accepted {
            restart: Some(RestartRef {
                kind: RestartKind::Rolling,
                ..
            }),
            ..
        }
    ));
}

/// The same for a preflight that never even reports its pid (spawned, but
/// the outcome lost): the deadline still ends it.
#[test]
fn a_preflight_without_a_pid_is_abandoned_at_its_deadline_too() {
    let mut h = ready_harness(1, |s| s.hook_timeout = Duration::from_secs(2));
    h.send(Event::Intent(Intent::Hot), 1_000);
    h.tick_until(3_000);
    assert!(h.killed_groups.is_empty(), "no group to kill");
    assert!(matches!(
        h.core.restart_record().map(|r| r.outcome),
        Some(Outcome::Abandoned { .. })
    ));
    assert_eq!(h.core.next_deadline(), None);
}

/// `next_deadline` is the earliest armed timer, and a `Tick` at it leaves
/// none at or before it: for each kind of timer a scenario arms it, ticks,
/// and checks it moved on.
#[test]
fn every_timer_that_expires_is_disarmed_or_moved_on() {
    let settings = |s: &mut Settings| {
        s.watchdog = Some(Duration::from_secs(5));
        s.max_memory = Some(100 * MIB);
        s.max_age = Some(Duration::from_secs(50));
        s.upward_watchdog = Some(Duration::from_secs(3));
        s.hook = true;
        s.hook_timeout = Duration::from_secs(4);
    };
    let mut h = ready_harness(2, settings);
    let mut seen = std::collections::BTreeSet::new();
    h.send(notify(100, "WATCHDOG=1"), 1_000);
    h.send(Event::Intent(Intent::Rolling), 1_500);
    h.exit(101, ExitStatus::Code(1), 1_600);
    // Its replacement crashes too: the slot backs off.
    let again = *h.pids().last().unwrap();
    h.exit(again, ExitStatus::Code(1), 1_700);
    let mut ms = 1_700;
    while ms < 120_000 {
        let Some(d) = h.core.next_deadline() else { break };
        ms = d.duration_since(h.t0).as_millis() as u64;
        for (_, timer) in h.core.timers() {
            seen.insert(format!("{timer:?}").split('(').next().unwrap_or_default().to_string());
        }
        h.send(Event::Tick, ms);
        let now = h.at(ms);
        for (at, timer) in h.core.timers() {
            assert!(at > now || timer == Timer::Continue, "{timer:?} still due at {ms} ms");
        }
    }
    for kind in [
        "Boot",
        "ReadyDelay",
        "Watchdog",
        "Age",
        "Backoff",
        "Hook",
        "MemorySample",
        "Upward",
    ] {
        assert!(seen.contains(kind), "{kind} was never armed: {seen:?}");
    }
}

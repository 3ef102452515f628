use super::*;

#[test]
fn every_control_request_in_every_state_gets_the_answer_of_what_was_done() {
    let requests = [
        Intent::Hot,
        Intent::Rolling,
        Intent::Reexec,
        Intent::Stop,
        Intent::Halt,
        Intent::Incr,
        Intent::Decr,
        Intent::Scale(3),
        Intent::ReopenLogs,
    ];
    for state in STATES {
        for intent in requests {
            let mut h = in_state(state);
            let begun = h.core.restart_id();
            let reply = h.control(intent, 1_100);
            let ctx = format!("{intent:?} in {state:?}: {reply:?}");
            let restart = matches!(intent, Intent::Hot | Intent::Rolling | Intent::Reexec);
            let resize = matches!(intent, Intent::Incr | Intent::Decr | Intent::Scale(_));
            let stopping = matches!(state, State::Stopping | State::Halting);
            let refusal = match state {
                State::Exited => Some("sup is exiting"),
                _ if stopping && (restart || resize) => Some("sup is stopping"),
                State::Hook if restart => Some("the restart hook of rolling restart 1 is running"),
                State::Preflight if restart => Some("hot restart 1 is checking the new sup"),
                State::Draining | State::Exec if restart => {
                    Some("hot restart 1 is stopping the workers to re-execute sup")
                }
                // A rollout cannot be handed over half done.
                State::Rolling if intent == Intent::Reexec => Some("rolling restart 1 is running"),
                State::Starting if intent == Intent::Reexec => Some("hot restart 1 is running"),
                _ => None,
            };
            match (&reply, refusal) {
                (Reply::Refused { reason }, Some(want)) => assert!(reason.starts_with(want), "{ctx}"),
                (
                    Reply::Accepted {
                        restart: started,
                        target_workers,
                        generation,
                    },
                    None,
                ) => {
                    assert_eq!(*generation, h.core.generation(), "{ctx}");
                    assert_eq!(*target_workers, h.core.target(), "{ctx}");
                    if restart {
                        let r = started.unwrap_or_else(|| panic!("a restart id: {ctx}"));
                        assert_eq!(r.id, begun + 1, "the id of the restart it started: {ctx}");
                        assert_eq!(h.core.restart_id(), r.id, "{ctx}");
                        let kind = match intent {
                            Intent::Hot => RestartKind::Hot,
                            Intent::Reexec => RestartKind::Reexec,
                            _ => RestartKind::Rolling,
                        };
                        assert_eq!(r.kind, kind, "{ctx}");
                    } else {
                        assert_eq!(*started, None, "{ctx}");
                    }
                    match intent {
                        Intent::Incr => assert_eq!(*target_workers, 3, "{ctx}"),
                        Intent::Decr => assert_eq!(*target_workers, 1, "{ctx}"),
                        Intent::Scale(n) => assert_eq!(*target_workers, n, "{ctx}"),
                        _ => {}
                    }
                }
                _ => panic!(
                    "expected {}: {ctx}",
                    refusal.map_or("accepted".into(), |r| format!("refused ({r})"))
                ),
            }
            if let Reply::Refused { .. } = reply {
                assert_eq!(h.core.restart_id(), begun, "a refusal starts nothing: {ctx}");
            }
        }
    }
}

#[test]
fn fewer_than_one_worker_is_refused_and_a_stop_asked_twice_is_still_accepted() {
    let mut h = ready_harness(1, |_| {});
    assert!(matches!(h.control(Intent::Decr, 1_000), Reply::Refused { reason } if reason.contains("1 worker")));
    assert_eq!(h.core.target(), 1);
    assert!(matches!(h.control(Intent::Stop, 1_100), Reply::Accepted { .. }));
    assert!(matches!(h.control(Intent::Stop, 1_200), Reply::Accepted { .. }));
}

#[test]
fn restarts_are_numbered_and_scale_sets_the_count() {
    let mut h = ready_harness(2, |_| {});
    assert_eq!(h.core.restart_id(), 0);
    h.send(Event::Intent(Intent::Rolling), 2_000);
    assert_eq!(h.core.restart_id(), 1);
    assert!(h.core.restart_busy());
    h.run_checking_capacity(60_000, 2);
    assert_eq!(h.core.restart_record().unwrap().id, 1);
    h.send(Event::Intent(Intent::Scale(4)), 61_000);
    assert_eq!(h.core.target(), 4);
    assert_eq!(h.pids().len(), 4);
    h.send(Event::Intent(Intent::Scale(1)), 62_000);
    h.reap_stopping(62_100);
    assert_eq!((h.core.target(), h.pids().len()), (1, 1));
}

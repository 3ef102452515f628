use super::*;

/// splitmix64: a deterministic generator for the property tests, so a
/// failing sequence is named by its seed and replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len())])
    }
}

/// Feeds a core random events the way the world could order them: spawn
/// outcomes arrive late and in any order, helpers answer late, workers
/// crash, get ready, are reaped; signals and control requests interleave.
/// After every event the core's invariants must hold: the slot table and
/// the worker table agree, never more than target + max-surge workers are
/// live, and no deadline is left behind (progress). Every few steps, the
/// core rebuilt from its snapshot is the same core.
fn random_run(seed: u64, steps: usize, recycling: bool) {
    let mut rng = Rng(seed);
    let mut st = settings(1 + rng.below(5));
    st.max_surge = 1 + rng.below(3);
    st.hook = rng.below(2) == 0;
    st.hot_overlap = rng.below(2) == 0;
    st.ready_delay = match rng.below(3) {
        0 => None,
        _ => Some(Duration::from_millis(rng.below(400) as u64)),
    };
    st.boot_timeout = Duration::from_millis(500 + rng.below(3000) as u64);
    st.graceful_timeout = Duration::from_millis(100 + rng.below(2000) as u64);
    st.watchdog = (rng.below(4) == 0).then_some(Duration::from_millis(700));
    st.max_memory = (recycling || rng.below(3) == 0).then_some(100);
    st.max_age = (recycling || rng.below(3) == 0).then(|| Duration::from_millis(1000 + rng.below(4000) as u64));
    st.recycle_check = Duration::from_millis(200 + rng.below(800) as u64);
    st.stop_delay = Duration::from_millis([0, 0, 300][rng.below(3)]);
    st.balance = rng.below(2) == 0;
    st.stall_timeout = (st.balance && rng.below(2) == 0).then(|| Duration::from_millis(300 + rng.below(1000) as u64));
    let mut core = Core::new(st.clone());
    let t0 = Instant::now();
    let mut ms: u64 = 0;
    let mut in_flight: Vec<(usize, u64)> = Vec::new();
    let mut helper_asked = false;
    let mut helper: Option<i32> = None;
    let mut exec_asked = false;
    let mut next_pid = 100;
    let mut queue = std::collections::VecDeque::from([Event::Started]);
    for step in 0..steps {
        let now = t0 + Duration::from_millis(ms);
        while let Some(event) = queue.pop_front() {
            let what = format!("{event:?}");
            let actions = core.handle(event, now);
            // Progress: every deadline due has been acted on. Only the next
            // batch of spawns is due at once, and only after a batch went out.
            for (at, timer) in core.timers() {
                let spawned = actions.iter().any(|a| matches!(a, Action::Spawn { .. }));
                let pending = at <= now && !(timer == crate::core::timers::Timer::Continue && spawned);
                assert!(
                    !pending,
                    "seed {seed}, step {step}, after {what}: {timer:?} is still due"
                );
            }
            for action in actions {
                match action {
                    Action::Spawn { slot, generation } => in_flight.push((slot, generation)),
                    Action::RunHook { .. } | Action::RunPreflight => helper_asked = true,
                    Action::ReExec { .. } => exec_asked = true,
                    Action::ProbeGroup { pgid } if rng.below(2) == 0 => {
                        queue.push_back(Event::GroupEmpty { pgid });
                    }
                    Action::ProbeStrays if rng.below(2) == 0 => queue.push_back(Event::StraysGone),
                    Action::ProbeQueues if rng.below(3) > 0 => queue.push_back(Event::Queued {
                        connections: if rng.below(3) == 0 { 0 } else { 5 },
                    }),
                    Action::ProbeSlotQueues { pids } => {
                        let slots = core.workers().iter().map(|w| w.slot + 1).max().unwrap_or(0);
                        let depths = (0..slots.max(core.target())).map(|_| rng.below(3) as u32).collect();
                        let held = pids.into_iter().map(|p| (p, vec![rng.below(3) as u64])).collect();
                        queue.push_back(Event::SlotQueues { depths, held });
                    }
                    Action::Steer { slots } => assert!(!slots.is_empty(), "seed {seed}: an empty steering"),
                    Action::SampleMemory => {
                        let samples = core
                            .workers()
                            .iter()
                            .map(|w| (w.pid, if rng.below(5) == 0 { 50 } else { 150 }))
                            .collect();
                        queue.push_back(Event::Memory { samples });
                    }
                    Action::Exit(_) => return,
                    _ => {}
                }
            }
            if let Err(e) = core.check_invariants() {
                panic!("seed {seed}, step {step}, after {what}: {e}");
            }
        }
        // What a new image would rebuild is the same core (but a restart
        // at its exec, which the new image carries on).
        if step % 7 == 0 && !core.exec_due() {
            let snap = core.snapshot(now, WALL);
            let (back, _) = Core::restore(st.clone(), snap.clone(), now, WALL, anyone);
            assert_eq!(back.snapshot(now, WALL), snap, "seed {seed}, step {step}");
            if let Err(e) = back.check_invariants() {
                panic!("seed {seed}, step {step}, restored: {e}");
            }
        }
        let pids: Vec<i32> = core.workers().iter().map(|w| w.pid.raw()).collect();
        // With recycling on, restarts and stops are rare, so that the
        // workers live long enough to be recycled, several at once.
        let pick = match rng.below(14) {
            9 | 10 | 13 if recycling && rng.below(10) > 0 => 7,
            n => n,
        };
        let event = match pick {
            0..=2 if !in_flight.is_empty() => {
                let (slot, generation) = in_flight.remove(rng.below(in_flight.len()));
                if rng.below(6) == 0 {
                    Event::SpawnFailed {
                        slot,
                        generation,
                        reason: "boom".into(),
                    }
                } else {
                    next_pid += 1;
                    Event::Spawned {
                        slot,
                        generation,
                        pid: p(next_pid),
                    }
                }
            }
            3 | 4 => match rng.pick(&pids) {
                Some(pid) => Event::Exited {
                    pid: p(pid),
                    status: if rng.below(2) == 0 {
                        ExitStatus::Code(1)
                    } else {
                        ExitStatus::Signaled(TERM)
                    },
                    group_alive: rng.below(4) == 0,
                },
                None => Event::Tick,
            },
            5 | 6 => match rng.pick(&pids) {
                Some(pid) => notify(pid, if rng.below(3) == 0 { "WATCHDOG=1" } else { "READY=1" }),
                None => Event::Tick,
            },
            7 => {
                ms += rng.below(1500) as u64;
                Event::Tick
            }
            8 => Event::Intent(match rng.below(3) {
                0 => Intent::Incr,
                1 => Intent::Decr,
                _ => Intent::Scale(1 + rng.below(7)),
            }),
            9 => Event::Intent(if rng.below(3) == 0 {
                Intent::Hot
            } else {
                Intent::Rolling
            }),
            10 => Event::Control {
                conn: 1,
                intent: [
                    Intent::Rolling,
                    Intent::Hot,
                    Intent::Incr,
                    Intent::Decr,
                    Intent::Reexec,
                    Intent::Canary(1 + rng.below(3)),
                    Intent::Resume,
                    Intent::Rollback { pinned: Pinned::Ready },
                ][rng.below(8)],
            },
            11 if helper_asked => {
                helper_asked = false;
                next_pid += 1;
                helper = Some(next_pid);
                Event::HelperSpawned { pid: p(next_pid) }
            }
            11 => match helper.take() {
                Some(pid) => Event::Exited {
                    pid: p(pid),
                    status: ExitStatus::Code(if rng.below(4) == 0 { 1 } else { 0 }),
                    group_alive: false,
                },
                None => Event::Tick,
            },
            12 if exec_asked => {
                // The old image carries on (the exec failed), which is
                // the only way the same core sees what follows.
                exec_asked = false;
                Event::ReExecFailed {
                    reason: "ENOEXEC".into(),
                }
            }
            13 if rng.below(20) == 0 => Event::Intent(if rng.below(2) == 0 { Intent::Stop } else { Intent::Halt }),
            _ => {
                ms += rng.below(200) as u64;
                Event::Tick
            }
        };
        queue.push_back(event);
    }
}

#[test]
fn random_event_sequences_keep_the_slot_table_whole_and_the_surge_bounded() {
    for seed in 0..400 {
        random_run(seed, 600, false);
    }
}

#[test]
fn random_event_sequences_with_recycling_never_exceed_the_surge() {
    for seed in 0..300 {
        random_run(1_000 + seed, 600, true);
    }
}

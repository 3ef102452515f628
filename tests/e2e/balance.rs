//! `--balance reuseport`: one socket per slot, held by sup. Each worker gets
//! its slot's own socket at the bind's fd; load spreads over every slot;
//! a slot's queue survives its worker (crash, kill -9, replacement, scale
//! down); a hung worker is found from its own queue and replaced; hot
//! restarts and reexec keep every slot's socket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::*;

/// sup with `--balance reuseport` (or `shared`), `workers` test workers
/// serving, and `extra` flags for sup and for the worker.
fn start(dir: &TestDir, balance: &str, workers: usize, sup_extra: &[&str], worker_extra: &[&str]) -> Sup {
    let n = workers.to_string();
    let mut args = vec!["--balance", balance, "--workers", &n, "--ready", "notify"];
    args.extend_from_slice(sup_extra);
    args.extend(["--", WORKER, "--serve", "--ready-after", "0"]);
    args.extend_from_slice(worker_extra);
    let sup = Sup::serving(dir, &args);
    sup.wait_workers_ready(workers);
    sup
}

/// Requests answered per slot, out of `n` sequential ones.
fn shares(addr: SocketAddr, n: usize) -> BTreeMap<i64, usize> {
    let mut by_slot = BTreeMap::new();
    for _ in 0..n {
        let v = get(addr).unwrap();
        *by_slot.entry(v["slot"].as_i64().unwrap()).or_insert(0) += 1;
    }
    by_slot
}

/// Every one of `workers` slots answered at least a fifth of its fair
/// share (random selection over N slots: far below any chance miss).
fn assert_spread(by_slot: &BTreeMap<i64, usize>, workers: usize, n: usize, sup: &Sup) {
    let floor = n / workers / 5;
    assert!(
        by_slot.len() == workers && by_slot.values().all(|&c| c >= floor),
        "{n} requests over {workers} slots: {by_slot:?}\n{}",
        sup.log()
    );
}

/// The serving worker of `slot`, from /stats.
fn worker_of(sup: &Sup, slot: usize) -> WorkerStats {
    sup.stats()
        .worker_status
        .into_iter()
        .find(|w| w.slot == slot && w.state == WorkerPhase::Ready)
        .unwrap()
}

/// Each slot's socket, by the inode its worker reported at fd 3.
fn slot_inodes(dir: &TestDir, pids: &[i32]) -> BTreeMap<u64, u64> {
    dir.reports("reports")
        .into_iter()
        .filter(|r| pids.contains(&(r["pid"].as_i64().unwrap() as i32)))
        .map(|r| {
            let slot: u64 = r["env"]["SUP_WORKER"].as_str().unwrap().parse().unwrap();
            (slot, r["sockets"][0]["inode"].as_u64().unwrap())
        })
        .collect()
}

fn live_pids(sup: &Sup) -> Vec<i32> {
    sup.stats()
        .worker_status
        .iter()
        .filter(|w| w.state != WorkerPhase::Stopping)
        .map(|w| w.pid)
        .collect()
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: signalling a worker of the sup this test started.
    unsafe { libc::kill(pid, sig) };
}

/// SIGSTOP `pid` and wait until every thread of it is stopped (a thread
/// woken in accept() by a connection could otherwise take it first).
fn stop(pid: i32) {
    kill(pid, libc::SIGSTOP);
    wait_until("the worker to be stopped", secs(10), || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let all = tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("T")
        });
        all.then_some(())
    });
}

#[test]
fn each_slot_gets_its_own_socket_at_the_binds_fd_and_a_fair_share() {
    let dir = TestDir::new();
    let reports = dir.s("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let sup = start(&dir, "reuseport", 4, &[], &["--report-dir", &reports]);
    let addr = sup.tcp_addr(0);
    let pids = live_pids(&sup);
    let inodes = slot_inodes(&dir, &pids);
    assert_eq!(inodes.len(), 4, "{inodes:?}");
    let distinct: std::collections::BTreeSet<_> = inodes.values().collect();
    assert_eq!(distinct.len(), 4, "one socket per slot: {inodes:?}");
    for r in dir.reports("reports") {
        assert_eq!(r["env"]["LISTEN_FDS"], "1");
        assert_eq!(r["sockets"][0]["listening"], true);
    }
    assert_spread(&shares(addr, 400), 4, 400, &sup);
    let s = sup.stats();
    assert_eq!(s.binds[0].balance, "reuseport");
    assert!(
        s.worker_status.iter().all(|w| w.queue == Some(0)),
        "{:?}",
        s.worker_status
    );
    let text = metrics_text(sup.control());
    for slot in 0..4 {
        assert!(
            text.contains(&format!(
                "sup_slot_queue_length{{listener=\"tcp-127.0.0.1-0\",slot=\"{slot}\"}} 0"
            )),
            "{text}"
        );
    }
    // Shared mode: one socket for all, no per-slot figures.
    let dir2 = TestDir::new();
    let shared = start(&dir2, "shared", 2, &[], &[]);
    let s = shared.stats();
    assert_eq!(s.binds[0].balance, "shared");
    assert!(s.worker_status.iter().all(|w| w.queue.is_none()));
}

#[test]
fn what_waits_in_a_killed_workers_queue_is_answered_by_the_next_one() {
    let dir = TestDir::new();
    let sup = start(&dir, "reuseport", 8, &[], &[]);
    let addr = sup.tcp_addr(0);
    for round in 0..3 {
        // A stopped worker accepts nothing: some of the next requests queue
        // on its slot's socket (sup keeps steering there: no --stall-timeout).
        let victim = worker_of(&sup, 2);
        stop(victim.pid);
        // New clients until some wait on slot 2 (the others are answered).
        let mut clients = Vec::new();
        wait_until("connections queued on slot 2", secs(30), || {
            clients.extend((0..4).map(|_| std::thread::spawn(move || get(addr))));
            let queued = sup.stats().worker_status.iter().find(|w| w.pid == victim.pid)?.queue?;
            (queued > 0).then_some(())
        });
        kill(victim.pid, libc::SIGKILL);
        for c in clients {
            let answer = c.join().unwrap();
            assert!(answer.is_ok(), "round {round}: {answer:?}\n{}", sup.log());
        }
        sup.wait_workers_ready(8);
    }
    // Then 50 kills of random workers under 2 clients (each one up for 2 s
    // at least, so that the crash backoff does not stretch the test): what
    // a killed worker had in hand is lost (at most one request per client),
    // nothing that waited in its slot's queue.
    let loads: Vec<Load> = (0..2).map(|_| Load::start(addr)).collect();
    let mut seed = 7u64;
    for _ in 0..50 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let pick = (seed >> 33) as usize;
        let w = sup.wait_stats("a ready worker", secs(30), |s| {
            let ready: Vec<&WorkerStats> = s
                .worker_status
                .iter()
                .filter(|w| w.state == WorkerPhase::Ready && w.age_seconds >= 2.0)
                .collect();
            (!ready.is_empty()).then(|| ready[pick % ready.len()].clone())
        });
        kill(w.pid, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut failed = Vec::new();
    let mut ok = 0;
    for l in loads {
        let (o, f) = l.finish();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 0);
    assert!(
        failed.len() <= 2 * 50,
        "{} of {} failed, more than 50 killed workers could have had in hand from 2 clients: {:?}\n{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)],
        sup.log()
    );
    eprintln!("50 kill -9 under 2 clients: {ok} answered, {} failed", failed.len());
}

/// 8 workers that each exit on their own every 1.5–2.25 s, under 4
/// clients for 8 s: (answered, failed, the longest wait).
fn self_exiting(balance: &str) -> (usize, Vec<String>, Duration, String) {
    let dir = TestDir::new();
    let sup = start(&dir, balance, 8, &[], &["--serve-for", "1500"]);
    let addr = sup.tcp_addr(0);
    let loads: Vec<Load> = (0..4).map(|_| Load::start(addr)).collect();
    std::thread::sleep(Duration::from_secs(8));
    let (mut ok, mut failed, mut longest) = (0, Vec::new(), Duration::ZERO);
    for l in loads {
        let (o, f, t) = l.finish_timed();
        ok += o;
        failed.extend(f);
        longest = longest.max(t);
    }
    let exits = sup.log().matches("exited with status 0").count();
    assert!(exits >= 8, "the workers exited on their own: {exits}\n{}", sup.log());
    (ok, failed, longest, sup.log())
}

#[test]
fn workers_that_exit_on_their_own_lose_nothing_and_strand_nothing() {
    let (ok, failed, longest, log) = self_exiting("reuseport");
    let (shared_ok, shared_failed, shared_longest, _) = self_exiting("shared");
    eprintln!(
        "workers exiting every ~2 s: reuseport {ok} answered, longest {longest:?}; shared {shared_ok} answered, \
         longest {shared_longest:?}"
    );
    assert!(failed.is_empty(), "{:?}\n{log}", &failed[..failed.len().min(5)]);
    assert!(
        shared_failed.is_empty(),
        "{:?}",
        &shared_failed[..shared_failed.len().min(5)]
    );
    // What was queued on a slot whose worker left waits only for the slot's
    // next worker (no crash backoff), never for seconds. A liveness bound:
    // the figures themselves are in the output above.
    assert!(
        longest < shared_longest * 2 + Duration::from_millis(500),
        "reuseport longest {longest:?}, shared {shared_longest:?}\n{log}"
    );
}

#[test]
fn rolling_restarts_and_a_scale_down_lose_nothing() {
    let dir = TestDir::new();
    let sup = start(&dir, "reuseport", 8, &[], &[]);
    let addr = sup.tcp_addr(0);
    let loads: Vec<Load> = (0..4).map(|_| Load::start(addr)).collect();
    for generation in 1..=50 {
        sup.signal(libc::SIGUSR1);
        sup.wait_restart_complete(RestartKind::Rolling, generation, secs(60));
    }
    for n in (4..8).rev() {
        sup.signal(libc::SIGTTOU);
        sup.wait_stats(&format!("{n} workers"), secs(30), |s| {
            (s.target_workers == n && s.worker_status.len() == n).then_some(())
        });
    }
    // The retired slots' sockets stay, empty and steered to by nobody.
    let text = metrics_text(sup.control());
    let retired: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("sup_slot_queue_length{")
                && ["4", "5", "6", "7"]
                    .iter()
                    .any(|k| l.contains(&format!("slot=\"{k}\"")))
        })
        .collect();
    assert_eq!(retired.len(), 4, "{text}");
    assert!(retired.iter().all(|l| l.ends_with(" 0")), "{retired:?}");
    for l in loads {
        l.finish_without_failures(&sup);
    }
    assert_spread(&shares(addr, 200), 4, 200, &sup);
}

#[test]
fn a_stopped_worker_is_replaced_and_its_queue_answered() {
    let dir = TestDir::new();
    let sup = start(&dir, "reuseport", 4, &["--stall-timeout", "2s"], &[]);
    let addr = sup.tcp_addr(0);
    let loads: Vec<Load> = (0..2).map(|_| Load::start(addr)).collect();
    let victim = worker_of(&sup, 1);
    let stopped = Instant::now();
    kill(victim.pid, libc::SIGSTOP);
    let replaced = sup.wait_stats("slot 1 served by a new worker", secs(30), |s| {
        s.worker_status
            .iter()
            .find(|w| w.slot == 1 && w.pid != victim.pid && w.state == WorkerPhase::Ready)
            .map(|_| stopped.elapsed())
    });
    sup.wait_log(&format!("(pid {}, gen 0) is hung", victim.pid), secs(5));
    // The stopped worker got CONT with its stop signal: it finishes what it
    // had in hand and exits.
    wait_until("the hung worker to be gone", secs(30), || {
        (!alive(victim.pid)).then_some(())
    });
    for l in loads {
        l.finish_without_failures(&sup);
    }
    assert_eq!(
        metric(sup.control(), "sup_workers_recycled_total{reason=\"stall\"}"),
        Some(1.0),
        "{}",
        metrics_text(sup.control())
    );
    eprintln!("SIGSTOP to replacement serving: {replaced:?} (--stall-timeout 2s)");
}

#[test]
fn a_busy_worker_that_keeps_accepting_is_never_taken_for_hung() {
    let dir = TestDir::new();
    // Two workers that answer one request at a time, 20 ms each, and 8
    // clients: every queue is non-empty most of the time, for 60 s.
    let sup = start(
        &dir,
        "reuseport",
        2,
        &["--stall-timeout", "1s"],
        &["--one-at-a-time", "--delay-response", "20"],
    );
    let addr = sup.tcp_addr(0);
    let pids = live_pids(&sup);
    let loads: Vec<Load> = (0..8).map(|_| Load::start(addr)).collect();
    let mut busy = 0;
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let s = sup.stats();
        busy += usize::from(s.worker_status.iter().any(|w| w.queue.unwrap_or(0) > 0));
        std::thread::sleep(Duration::from_millis(500));
    }
    for l in loads {
        l.finish_without_failures(&sup);
    }
    assert!(
        busy > 10,
        "the queues were rarely non-empty ({busy} looks): not an overload"
    );
    assert_eq!(live_pids(&sup), pids, "nobody replaced\n{}", sup.log());
    assert!(!sup.log().contains("is hung"), "{}", sup.log());
}

#[test]
fn hot_restarts_and_reexec_keep_every_slot_socket() {
    for mode in ["stop", "overlap"] {
        let dir = TestDir::new();
        let reports = dir.s("reports");
        std::fs::create_dir_all(&reports).unwrap();
        let sup = start(
            &dir,
            "reuseport",
            3,
            &["--hot-restart", mode],
            &["--report-dir", &reports],
        );
        let addr = sup.tcp_addr(0);
        let before = slot_inodes(&dir, &live_pids(&sup));
        assert_eq!(before.len(), 3);
        let load = Load::start(addr);
        sup.signal(libc::SIGUSR2);
        sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
        sup.wait_workers_ready(3);
        let after = slot_inodes(&dir, &live_pids(&sup));
        assert_eq!(after, before, "{mode}: every slot kept its socket\n{}", sup.log());
        let (code, out, err) = ctl(&[
            "--control",
            &format!("unix:{}", sup.control().display()),
            "reexec",
            "--wait",
        ]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert_eq!(
            slot_inodes(&dir, &live_pids(&sup)),
            before,
            "reexec adopts the same workers"
        );
        load.finish_without_failures(&sup);
        assert_spread(&shares(addr, 300), 3, 300, &sup);
        assert!(sup.log().contains("adopted 3 per-slot socket(s)"), "{}", sup.log());
    }
}

//! One worker at a time: `sup ctl worker SLOT|PID replace|signal|stop`, and
//! a worker that asks to be recycled itself (`X_SUP_RECYCLE=1`).

use crate::harness::*;

fn control_of(dir: &TestDir) -> (std::path::PathBuf, String) {
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    (sock, control)
}

#[test]
fn one_worker_is_replaced_under_load_and_nothing_fails() {
    let dir = TestDir::new();
    let (sock, control) = control_of(&dir);
    let sup = Sup::serving(
        &dir,
        &["--workers", "3", "--control", &control, "--", WORKER, "--serve"],
    );
    let before = wait_until("3 workers ready", secs(30), || {
        let s = (sock.exists()).then(|| stats(&sock))?;
        (s.booted_workers == 3).then_some(s)
    });
    let old = before.worker_status.iter().find(|w| w.slot == 2).unwrap().pid;
    assert!(before.worker_status.iter().all(|w| w.age_seconds >= 0.0));
    let load = Load::start(sup.tcp_addr(0));
    let (code, stdout, stderr) = ctl(&["--control", &control, "worker", "2", "replace"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let after = wait_until("slot 2 replaced", secs(30), || {
        let s = stats(&sock);
        let w = s.worker_status.iter().find(|w| w.slot == 2 && w.pid != old)?;
        (s.booted_workers == 3 && s.worker_status.len() == 3 && w.generation == 0).then_some(s)
    });
    load.finish_without_failures(&sup);
    let others: Vec<i32> = before
        .worker_status
        .iter()
        .filter(|w| w.slot != 2)
        .map(|w| w.pid)
        .collect();
    for pid in others {
        assert!(after.worker_status.iter().any(|w| w.pid == pid), "only slot 2 changed");
    }
    assert_eq!(
        metric(&sock, r#"sup_workers_recycled_total{reason="operator"}"#),
        Some(1.0)
    );
    // Nonsense is refused with the reason, and nothing happens.
    let (code, _, stderr) = ctl(&["--control", &control, "worker", "7", "stop"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("neither a slot"), "{stderr}");
}

#[test]
fn a_signal_reaches_only_that_worker_s_process_group() {
    let dir = TestDir::new();
    let (sock, control) = control_of(&dir);
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "3",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--say-usr1",
        ],
    );
    let s = wait_until("3 workers ready", secs(30), || {
        let s = (sock.exists()).then(|| stats(&sock))?;
        (s.booted_workers == 3).then_some(s)
    });
    let pids: Vec<i32> = s.worker_status.iter().map(|w| w.pid).collect();
    let got = |pid: i32| sup.log().matches(&format!("worker {pid} got USR1")).count();
    let (code, stdout, stderr) = ctl(&[
        "--control",
        &control,
        "worker",
        &format!("pid:{}", pids[0]),
        "signal",
        "USR1",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    wait_until("the first worker's USR1", secs(10), || {
        (got(pids[0]) == 1).then_some(())
    });
    // A second one, to a second worker: by then the first signal would have
    // reached every worker it was going to.
    ctl(&[
        "--control",
        &control,
        "worker",
        &format!("pid:{}", pids[1]),
        "signal",
        "SIGUSR1",
    ]);
    wait_until("the second worker's USR1", secs(10), || {
        (got(pids[1]) == 1).then_some(())
    });
    assert_eq!((got(pids[0]), got(pids[2])), (1, 0), "{}", sup.log());
    assert!(sup.log().contains("sending USR1 to worker"), "{}", sup.log());
}

/// A worker that asks to be recycled every 1,000 requests, under 200,000
/// requests: none fails, and `/metrics` counts every recycling it asked for.
#[test]
fn a_worker_asking_to_be_recycled_every_thousand_requests_loses_none() {
    let dir = TestDir::new();
    let (sock, control) = control_of(&dir);
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
            "--recycle-every",
            "1000",
        ],
    );
    let addr = sup.tcp_addr(0);
    wait_until("2 workers ready", secs(30), || {
        (sock.exists() && stats(&sock).booted_workers == 2).then_some(())
    });
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                for _ in 0..50_000 {
                    if let Err(e) = get(addr) {
                        failed.push(e.to_string());
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(
        failed.is_empty(),
        "{} of 200000 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Every ask that came in is counted once, once its recycling began.
    let asked = wait_until("the last recycling to begin", secs(30), || {
        let asked = sup.log().matches("asks to be recycled").count();
        let counted = metric(&sock, r#"sup_workers_recycled_total{reason="requested"}"#)? as usize;
        (counted == asked).then_some(asked)
    });
    assert!(asked >= 100, "only {asked} recyclings for 200000 requests");
    assert!(asked <= 200, "{asked} recyclings: more than one per 1000 requests");
}

/// A Python worker that dumps its stacks on USR1 (`faulthandler`) and
/// hangs after its first watchdog ping: with `--dump-signal USR1
/// --dump-grace 2s`, each of 20 hangs leaves its traceback in sup's output
/// before the SIGKILL.
#[test]
fn a_hung_worker_s_dump_is_in_the_output_before_the_kill() {
    let dir = TestDir::new();
    let script = dir.join("hangs.py");
    std::fs::write(
        &script,
        "import faulthandler, os, signal, socket, time\n\
         faulthandler.register(signal.SIGUSR1, all_threads=True)\n\
         def notify(msg):\n\
         \x20   s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         \x20   addr = os.environ['NOTIFY_SOCKET']\n\
         \x20   s.sendto(msg.encode(), '\\0' + addr[1:] if addr.startswith('@') else addr)\n\
         def hang_here():\n\
         \x20   while True:\n\
         \x20       time.sleep(3600)\n\
         notify('READY=1\\nWATCHDOG=1')\n\
         hang_here()\n",
    )
    .unwrap();
    let script = script.display().to_string();
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "4",
            "--ready",
            "notify",
            "--watchdog",
            "1s",
            "--dump-signal",
            "USR1",
            "--dump-grace",
            "2s",
            "--",
            "python3",
            &script,
        ],
    );
    let kills = |log: &str| {
        log.matches("--dump-grace (2s) is over: killing its process group")
            .count()
    };
    wait_until("20 dumps and kills", secs(120), || {
        (kills(&sup.log()) >= 20).then_some(())
    });
    sup.signal(libc::SIGQUIT);
    sup.wait_exit(secs(30));
    let log = sup.log();
    let lines: Vec<&str> = log.lines().collect();
    let asked: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("sent no WATCHDOG=1 for 1s: sent it USR1 for a dump"))
        .collect();
    // Four workers' dumps land in one file, written a piece at a time:
    // lines of two may interleave, so look for the function's name alone.
    let dumps = log.matches("hang_here").count();
    assert!(asked.len() >= 20, "{log}");
    // Every worker asked for a dump wrote one, and before its SIGKILL.
    let mut checked = 0;
    for &i in &asked {
        let head = lines[i].split(" sent no WATCHDOG").next().unwrap();
        let label = &head[head.find("worker ").unwrap()..];
        let Some(k) = (i..lines.len()).find(|&k| lines[k].contains(label) && lines[k].contains("is over: killing"))
        else {
            continue; // killed by the QUIT at the end, after the 20 the test waited for
        };
        checked += 1;
        assert!(
            lines[i..k].iter().any(|l| l.contains("hang_here")),
            "no dump of {label} between its USR1 and its SIGKILL:\n{}",
            lines[i..=k].join("\n")
        );
    }
    assert!(checked >= 20, "only {checked} dumps followed by their kill:\n{log}");
    assert!(dumps >= kills(&log), "{dumps} dumps for {} kills", kills(&log));
}

//! The control server, `sup ctl`, systemd both ways, the log file.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use sup::control::protocol::Answer;

use crate::harness::*;

#[test]
fn stats_reports_the_real_port_and_the_workers_answering_on_it() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let sup = Sup::start(
        &dir,
        &[
            "--bind",
            "127.0.0.1:0?name=web",
            "--workers",
            "3",
            "--ready",
            "notify",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ],
    );
    let addr = sup.tcp_addr(0);
    wait_until("3 ready in /stats", secs(20), || {
        (stats(&sock).booted_workers == 3).then_some(())
    });
    let s = stats(&sock);
    assert_eq!(s.binds[0].address, format!("tcp://{addr}"));
    assert_eq!(s.binds[0].name, "web");
    assert_eq!(s.pid, sup.pid() as u32);
    assert_eq!((s.workers, s.phase, s.old_workers), (3, 0, 0));
    let listed: HashSet<i64> = s.worker_status.iter().map(|w| i64::from(w.pid)).collect();
    let answering: HashSet<i64> = answering_pids(addr, 3);
    assert_eq!(listed, answering);
    for w in &s.worker_status {
        assert_eq!(w.state, WorkerPhase::Ready);
        assert_eq!(w.status.as_deref(), Some("serving"), "the worker's STATUS= text");
        assert!(w.rss_bytes.unwrap() > 0);
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn ctl_phased_restart_wait_passes_a_good_release_and_fails_a_broken_one() {
    let dir = TestDir::new();
    point(&dir, &good(&dir, "r1"));
    let control = format!("unix:{}", dir.s("c.sock"));
    let current = dir.s("current");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--directory",
            &current,
            "--control",
            &control,
            "--",
            "./run",
        ],
    );
    let addr = sup.tcp_addr(0);
    assert_eq!(answering(addr, 2).len(), 2);

    point(&dir, &good(&dir, "r2"));
    let (code, stdout, stderr) = ctl(&["--control", &control, "phased-restart", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("gen 1) is ready"), "progress lines: {stdout}");
    assert!(stdout.contains("rolling restart to gen 1 complete"), "{stdout}");
    let good_pids: HashSet<i64> = answering_pids(addr, 2);

    point(&dir, &release(&dir, "r3", "exit 1"));
    let (code, stdout, stderr) = ctl(&["--control", &control, "phased-restart", "--wait"]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("rolling restart failed: worker 0"), "{stderr}");
    assert_eq!(answering_pids(addr, 2), good_pids, "old workers serve");

    let (code, stdout, _) = ctl(&["--control", &control, "status"]);
    assert_eq!(code, Some(0));
    for pid in &good_pids {
        assert!(
            stdout.contains(&pid.to_string()),
            "status lists worker {pid}:\n{stdout}"
        );
    }
    assert!(stdout.contains("last restart: #2 rolling failed"), "{stdout}");

    let (code, _, _) = ctl(&["--control", &control, "stop"]);
    assert_eq!(code, Some(0));
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0));
    assert!(!dir.join("c.sock").exists(), "the control socket is removed on stop");
}

#[test]
fn ctl_falls_back_to_signals_through_the_pidfile() {
    let dir = TestDir::new();
    let pidfile = dir.s("sup.pid");
    let sup = Sup::start(&dir, &["--pidfile", &pidfile, "--workers", "1", "--", WORKER]);
    wait_until("a worker", secs(10), || sup.started_pids().first().copied());
    let (code, stdout, _) = ctl(&["--pidfile", &pidfile, "incr"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("sent SIGTTIN"), "{stdout}");
    // This sup has no control server (that is the point): its log says
    // what the signal did.
    sup.wait_log("TTIN: workers 1 → 2", secs(10));
    let (code, _, stderr) = ctl(&["--pidfile", &pidfile, "status"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("needs a control server"), "{stderr}");
    let (code, _, stderr) = ctl(&["status"]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn hostile_requests_get_their_4xx_or_are_cut_off_and_stats_still_answers() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let mut sup = Sup::start(&dir, &["--control", &control, "--", WORKER]);
    wait_until("the control socket", secs(10), || sock.exists().then_some(()));

    // A client that sends half a request and stalls holds no one up.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n").unwrap();

    let garbage = raw(&sock, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let huge = format!("GET /stats HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let answer = raw(&sock, huge.as_bytes());
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(raw(&sock, b"GET /restart HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(raw(&sock, b"POST /stats HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(raw(&sock, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(raw(&sock, b"POST /workers?count=zero HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(&sock, b"POST /stop HTTP/1.1\r\nContent-Length: 999999\r\n\r\n").starts_with("HTTP/1.1 413"));
    // /stats answers at once while the stalled client still holds its connection.
    assert_eq!(stats(&sock).pid, sup.pid() as u32);
    // The stalled client is cut off at its read deadline.
    stalled.set_read_timeout(Some(secs(15))).unwrap();
    let mut rest = String::new();
    let _ = stalled.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(sup.is_running(), "sup survived the hostile clients:\n{}", sup.log());
}

#[test]
fn tcp_control_needs_a_token_and_checks_it() {
    let dir = TestDir::new();
    let out = std::process::Command::new(SUP)
        .args(["--control", "tcp://127.0.0.1:0", "--", WORKER])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--control on TCP needs --control-token"), "{err}");

    let sup = Sup::start(
        &dir,
        &[
            "--control",
            "tcp://127.0.0.1:0",
            "--control-token",
            "s3cret",
            "--",
            WORKER,
        ],
    );
    // The port sup picked is in its log (and /stats needs the token).
    let line = sup.wait_log("control server on tcp://", secs(10));
    let addr: std::net::SocketAddr = line.split("tcp://").nth(1).unwrap().trim().parse().unwrap();
    let control = format!("tcp://{addr}");
    let (code, _, stderr) = ctl(&["--control", &control, "--control-token", "wrong", "stats"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("answered 403"), "{stderr}");
    let (code, stdout, _) = ctl(&["--control", &control, "--control-token", "s3cret", "stats"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("\"worker_status\""), "{stdout}");
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
struct FakeSystemd {
    sock: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new(dir: &TestDir) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        FakeSystemd { sock, path }
    }

    /// Messages until one contains `needle`.
    fn until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + secs(20);
        while !seen.iter().any(|m: &String| m.contains(needle)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle} from sup; got {seen:?}"
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }
}

#[test]
fn under_socket_activation_workers_serve_the_activated_socket_and_sup_notifies_systemd() {
    let dir = TestDir::new();
    let activated = dir.join("activated.sock");
    let systemd = FakeSystemd::new(&dir);
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    // systemd-socket-activate passes on only the variables named with --setenv.
    cmd.arg("-l")
        .arg(&activated)
        .arg("--fdname=app")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", systemd.path.display()))
        .args([
            SUP,
            "--workers",
            "2",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
        ]);
    let sup = Sup::launch(&dir, cmd);
    wait_until("the activated socket", secs(10), || activated.exists().then_some(()));
    // systemd-socket-activate starts sup on the first connection.
    let first = get_unix(&activated).unwrap();
    assert_eq!(first["name"], "app", "the fd name from LISTEN_FDNAMES");
    let seen = systemd.until("READY=1");
    assert!(seen.iter().any(|m| m.starts_with("STATUS=gen 0")), "{seen:?}");
    let mut pids = HashSet::new();
    wait_until("both workers answering", secs(20), || {
        pids.insert(get_unix(&activated).ok()?["pid"].as_i64()?);
        (pids.len() == 2).then_some(())
    });
    sup.signal(libc::SIGUSR1);
    let seen = systemd.until("MONOTONIC_USEC=");
    let reloading = seen.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    let usec: u64 = reloading
        .split("MONOTONIC_USEC=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(usec > 0);
    systemd.until("READY=1");
    sup.signal(libc::SIGTERM);
    systemd.until("STOPPING=1");
}

#[test]
fn the_log_file_is_reopened_on_hup() {
    let dir = TestDir::new();
    let log = dir.join("app.log");
    let logpath = dir.s("app.log");
    let sup = Sup::start(&dir, &["--log-file", &logpath, "--", WORKER]);
    wait_until("sup's lines in the log file", secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("worker 0 (pid"))
            .map(|_| ())
    });
    std::fs::rename(&log, dir.join("app.log.1")).unwrap();
    sup.signal(libc::SIGHUP);
    wait_until("a new log file", secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("reopened the log file"))
            .map(|_| ())
    });
    // Later lines land in the new file, not the rotated one.
    sup.signal(libc::SIGTTIN);
    wait_until("the TTIN line in the new file", secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("TTIN: workers 1 → 2"))
            .map(|_| ())
    });
    let rotated = std::fs::read_to_string(dir.join("app.log.1")).unwrap();
    assert!(!rotated.contains("TTIN"), "{rotated}");
}

#[test]
fn ctl_restart_wait_follows_a_hot_restart_across_the_exec() {
    let dir = TestDir::new();
    let control = format!("unix:{}", dir.s("c.sock"));
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
        ],
    );
    let addr = sup.tcp_addr(0);
    assert_eq!(answering(addr, 2).len(), 2);
    let (code, stdout, stderr) = ctl(&["--control", &control, "restart", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("hot restart to gen 1 complete"), "{stdout}");
    let now = answering(addr, 2);
    assert!(now.iter().all(|(_, g)| *g == 1), "{now:?}");
    let (_, status, _) = ctl(&["--control", &control, "status"]);
    assert!(
        status.contains("last restart: #1 hot completed"),
        "the restart's number survived the exec:\n{status}"
    );
}

/// A control server on a unix socket in `dir`, and sup with `args` after it.
fn with_control(dir: &TestDir, args: &[&str]) -> (Sup, std::path::PathBuf) {
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let mut all = vec!["--control", control.as_str()];
    all.extend_from_slice(args);
    let sup = Sup::start(dir, &all);
    wait_until("the control socket", secs(10), || sock.exists().then_some(()));
    (sup, sock)
}

#[test]
fn a_restart_asked_for_while_sup_is_stopping_is_refused_with_the_reason() {
    // Reproduction: the old event loop answered 202 with the id of the
    // previous restart, and `--wait` then printed "complete" and exited 0.
    let dir = TestDir::new();
    let (mut sup, sock) = with_control(
        &dir,
        &[
            "--graceful-timeout",
            "60s",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--ignore-term",
            "--ready-after",
            "0",
        ],
    );
    sup.wait_workers_ready(1);
    let control = format!("unix:{}", sock.display());
    let (code, _, stderr) = ctl(&["--control", &control, "stop"]);
    assert_eq!(code, Some(0), "{stderr}");
    sup.wait_stats("the worker to be stopping", secs(10), |s| {
        let stopping = |w: &WorkerStats| w.state == WorkerPhase::Stopping;
        (s.worker_status.len() == 1 && s.worker_status.iter().all(stopping)).then_some(())
    });
    for command in ["phased-restart", "restart"] {
        let (code, stdout, stderr) = ctl(&["--control", &control, command, "--wait"]);
        assert_eq!(code, Some(1), "{command}: {stdout}{stderr}");
        assert!(stderr.contains("refused: sup is stopping"), "{command}: {stderr}");
        assert!(!stdout.contains("complete"), "{command}: {stdout}");
    }
    let text = raw(&sock, b"POST /workers?count=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"), "{text}");
    let answer: Answer = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(
        answer,
        Answer::Refused {
            command: sup::control::protocol::Command::Workers,
            reason: "sup is stopping".into()
        }
    );
    sup.signal(libc::SIGQUIT);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
}

#[test]
fn a_complete_request_is_answered_after_the_client_half_closes() {
    // Reproduction: `printf 'GET /stats HTTP/1.0\r\n\r\n' | nc -N`; sup took
    // the EOF for a vanished client and answered about 3 times in 10.
    let dir = TestDir::new();
    let (sup, sock) = with_control(&dir, &["--", WORKER]);
    for n in 0..20 {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"GET /stats HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "attempt {n}: {out:?}");
        let body: Stats = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(body.pid, sup.pid() as u32);
    }
    // A command half-closed the same way is decided and answered too.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(b"POST /incr HTTP/1.0\r\n\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 202 Accepted\r\n"), "{out:?}");
    assert!(out.contains(r#""target_workers":2"#), "{out}");
    // An incomplete request followed by a half-close is just closed.
    assert_eq!(raw_half_closed(&sock, b"GET /stats HTTP/1.0\r\n"), "");
}

fn raw_half_closed(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn pipelined_requests_get_the_first_answered_and_the_connection_closed() {
    let dir = TestDir::new();
    let (_sup, sock) = with_control(&dir, &["--", WORKER]);
    let text = raw(
        &sock,
        b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\nPOST /incr HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Connection: close\r\n"),
        "{text}"
    );
    let s = stats(&sock);
    assert_eq!(s.target_workers, 1, "the pipelined POST /incr was not acted on");
}

#[test]
fn the_control_socket_is_handed_over_and_answers_throughout_hot_restarts() {
    control_answers_throughout_hot_restarts("stop");
}

#[test]
fn the_control_socket_answers_throughout_overlap_hot_restarts() {
    control_answers_throughout_hot_restarts("overlap");
}

fn control_answers_throughout_hot_restarts(mode: &str) {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new();
    let (sup, sock) = with_control(
        &dir,
        &[
            "--hot-restart",
            mode,
            "--bind",
            ANY_PORT,
            "--workers",
            "2",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "300",
        ],
    );
    sup.wait_workers_ready(2);
    let inode = std::fs::metadata(&sock).unwrap().ino();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let path = sock.clone();
    let client = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let answer = UnixStream::connect(&path).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /stats HTTP/1.0\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            match answer {
                Ok(text) if text.starts_with("HTTP/1.1 200") => ok += 1,
                Ok(text) => failed.push(format!("answer {text:?}")),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    for n in 1..=2 {
        sup.signal(libc::SIGUSR2);
        sup.wait_restart_complete(RestartKind::Hot, n, secs(60));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} /stats failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 0);
    assert_eq!(
        std::fs::metadata(&sock).unwrap().ino(),
        inode,
        "the same socket, not a new one"
    );
    assert_eq!(stats(&sock).generation, 2);
}

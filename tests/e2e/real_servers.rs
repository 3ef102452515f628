//! Servers nobody here wrote, which check LISTEN_PID strictly, run
//! unchanged under sup.

use crate::harness::*;

/// Whether `program` is on PATH. Locally a missing runtime skips the test
/// with a line saying so; in CI (CI=true) it fails, since .ci/run installs it.
fn have(program: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{program} is required in CI (.ci/run installs it)"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("skipped: {program} is not installed (pip install {program})\n").as_bytes(),
        );
    }
    found
}

const WSGI_APP: &str = r#"
import json, os
def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "master": os.getppid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"#;

#[test]
fn gunicorn_serves_the_socket_sup_passes() {
    if !have("gunicorn") {
        return;
    }
    let dir = TestDir::new();
    std::fs::write(dir.join("wsgi.py"), WSGI_APP).unwrap();
    let chdir = dir.s("");
    // gunicorn uses the inherited socket only when LISTEN_PID equals its own
    // pid; otherwise it would bind 127.0.0.1:8000 and this port would never
    // answer.
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--",
            "gunicorn",
            "--workers",
            "1",
            "--chdir",
            &chdir,
            "wsgi:app",
        ],
    );
    let addr = sup.tcp_addr(0);
    let answer = wait_until("gunicorn to answer on sup's socket", secs(30), || get(addr).ok());
    let masters = sup.started_pids();
    let master = answer["master"].as_i64().unwrap() as i32;
    assert!(
        masters.contains(&master),
        "answered by a gunicorn under sup: {master} in {masters:?}"
    );
    assert!(
        sup.log().contains(&format!("Listening at: http://{addr}")),
        "{}",
        sup.log()
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(40)).code(), Some(0), "{}", sup.log());
}

#[test]
fn the_python_example_from_the_readme_serves_and_stops_gracefully() {
    if !have("python3") {
        return;
    }
    let dir = TestDir::new();
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/hello.py");
    let mut sup = Sup::serving(
        &dir,
        &["--workers", "4", "--graceful-timeout", "10s", "--", "python3", app],
    );
    let addr = sup.tcp_addr(0);
    let fetch = || {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        out.contains("200 OK").then_some(out)
    };
    let text = wait_until("the example to answer", secs(20), fetch);
    assert!(text.contains("hello from worker "), "{text}");
    sup.wait_stats("4 workers", secs(10), |s| (s.worker_status.len() == 4).then_some(()));
    // Every connection wakes every waiting worker; the ones that lose the
    // race must still hear TERM.
    for _ in 0..20 {
        assert!(fetch().is_some());
    }
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
    let log = sup.log();
    assert!(!log.contains("did not stop within"), "a worker needed SIGKILL:\n{log}");
    let clean = log.matches("stopped (status 0)").count() + log.matches("stopped (signal TERM)").count();
    assert_eq!(clean, 4, "{log}");
}

#[test]
fn gunicorn_becomes_readiness_aware_under_ready_notify_and_rolls() {
    if !have("gunicorn") {
        return;
    }
    let dir = TestDir::new();
    std::fs::write(dir.join("wsgi.py"), WSGI_APP).unwrap();
    let chdir = dir.s("");
    // gunicorn sends READY=1 to NOTIFY_SOCKET on its own: no change needed.
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--boot-timeout",
            "30s",
            "--",
            "gunicorn",
            "--workers",
            "1",
            "--chdir",
            &chdir,
            "wsgi:app",
        ],
    );
    let addr = sup.tcp_addr(0);
    sup.wait_stats("both gunicorns ready", secs(30), |s| {
        (s.booted_workers == 2).then_some(())
    });
    let before = sup.started_pids();
    sup.signal(libc::SIGUSR1);
    sup.wait_restart_complete(RestartKind::Rolling, 1, secs(60));
    let answer = get(addr).unwrap();
    let master = answer["master"].as_i64().unwrap() as i32;
    assert!(!before.contains(&master), "a new gunicorn answers");
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(40)).code(), Some(0), "{}", sup.log());
}

//! `--ready fd:N`: a worker is ready when it writes a newline to fd N (s6's
//! notification-fd); closing it without one is a failed boot.

use crate::harness::*;

fn script(dir: &TestDir, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn a_shell_worker_is_ready_when_it_writes_a_newline_to_its_fd() {
    let dir = TestDir::new();
    // Five lines: the listener is fd 3, the readiness pipe fd 4.
    let worker = script(
        &dir,
        "worker.sh",
        "#!/bin/sh\n# takes a moment to boot, then says it is ready\nsleep 0.3\necho >&4\nexec sleep 3600\n",
    );
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "fd:4",
            "--control",
            &control,
            "--",
            &worker,
        ],
    );
    wait_until("2 workers ready", secs(30), || {
        (sock.exists() && stats(&sock).booted_workers == 2).then_some(())
    });
    // A rolling restart waits for the new workers' newlines too.
    let (code, stdout, stderr) = ctl(&["--control", &control, "phased-restart", "--wait"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let s = stats(&sock);
    assert_eq!((s.booted_workers, s.generation), (2, 1));
    sup.signal(libc::SIGTERM);
    sup.wait_exit(secs(30));
}

#[test]
fn closing_the_fd_without_a_newline_is_a_failed_boot() {
    let dir = TestDir::new();
    let worker = script(&dir, "closes.sh", "#!/bin/sh\nexec 4>&-\nexec sleep 3600\n");
    let sup = Sup::serving(&dir, &["--ready", "fd:4", "--", &worker]);
    let line = sup.wait_log("closed its readiness fd without writing a newline", secs(30));
    assert!(line.contains("worker 0 (pid"), "{line}");
    // A failed boot like any other: killed, and its slot tried again.
    wait_until("a second failed boot", secs(30), || {
        (sup.log()
            .matches("closed its readiness fd without writing a newline")
            .count()
            >= 2)
            .then_some(())
    });
}

#[test]
fn a_readiness_fd_on_a_listener_s_number_is_refused() {
    let dir = TestDir::new();
    let out = std::process::Command::new(SUP)
        .args([
            "--bind",
            ANY_PORT,
            "--bind",
            "127.0.0.1:0?name=b",
            "--ready",
            "fd:4",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ready fd:4 would be one of the listeners' fds (3 to 4): use fd:5"),
        "{stderr}"
    );
    drop(dir);
}

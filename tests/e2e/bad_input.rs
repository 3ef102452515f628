//! Bad input: one clear line on stderr, the right exit code, nothing bound,
//! nothing started, nothing left running.

use std::process::{Command, Stdio};

use crate::harness::*;

struct Outcome {
    code: Option<i32>,
    stderr: String,
    stdout: String,
}

fn run(dir: &TestDir, args: &[&str]) -> Outcome {
    let out = Command::new(SUP)
        .args(args)
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn assert_one_line(o: &Outcome, code: i32, needle: &str) {
    assert_eq!(o.code, Some(code), "exit code; stderr: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", o.stderr);
    assert!(lines[0].starts_with("sup: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "`{needle}` in {}", lines[0]);
    assert!(o.stdout.is_empty(), "nothing on stdout: {}", o.stdout);
}

#[test]
fn usage_and_config_errors_exit_2_with_one_line() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let cases: &[(&[&str], &str)] = &[
        (&["--bind", "nonsense", "--", WORKER], "invalid --bind `nonsense`"),
        (&["--bind", "0.0.0.0:3000?backlog=x", "--", WORKER], "backlog `x`"),
        (&["--workers", "0", "--", WORKER], "invalid --workers `0`"),
        (&["--workers", "many", "--", WORKER], "invalid --workers `many`"),
        (&["--wrokers", "2", "--", WORKER], "unexpected argument '--wrokers'"),
        (
            &["--graceful-timeout", "soon", "--", WORKER],
            "invalid --graceful-timeout `soon`",
        ),
        (
            &["--stop-signal", "SIGNOPE", "--", WORKER],
            "invalid --stop-signal `SIGNOPE`",
        ),
        (&["--bind", ANY_PORT], "no command given"),
        (
            &["--notify-socket", "somewhere", "--", WORKER],
            "invalid --notify-socket `somewhere`: expected path or abstract",
        ),
        (
            &["--hot-restart", "sometimes", "--", WORKER],
            "invalid --hot-restart `sometimes`: expected stop or overlap",
        ),
        (
            &["--balance", "fair", "--", WORKER],
            "invalid --balance `fair`: expected shared or reuseport",
        ),
        (
            &["--bind", ANY_PORT, "--stall-timeout", "2s", "--", WORKER],
            "--stall-timeout needs --balance reuseport on a TCP bind",
        ),
        (
            &["--bind", "unix:/tmp/x.sock?balance=reuseport", "--", WORKER],
            "balance=reuseport applies to tcp sockets only",
        ),
        (
            &["--", "no-such-command-anywhere"],
            "command `no-such-command-anywhere` not found in PATH",
        ),
        (&["--", "./missing-script"], "missing-script: no such file or directory"),
        (
            &["--directory", "/no/such/release", "--", WORKER],
            "--directory /no/such/release: does not resolve",
        ),
        (
            &["--bind", ANY_PORT, "--", WORKER, "{fd:nope}"],
            "no --bind has that name",
        ),
        (&["--env-file", "missing.env", "--", WORKER], "--env-file missing.env"),
        // What a spawn would refuse, startup refuses: the same checks.
        (
            &["--", "/etc/passwd"],
            "command /etc/passwd is not executable by sup's user",
        ),
        (
            &["--", "./bad-interpreter"],
            "#! interpreter /no/such/interpreter: no such file",
        ),
        (
            &["--env-file", "nul.env", "--", WORKER],
            "--env-file nul.env: line 2: contains a NUL byte",
        ),
        (
            &["--env-file", "huge.env", "--", WORKER],
            "larger than 1024 KiB, the most sup reads",
        ),
        (&["--config", "huge.yml"], "larger than 64 KiB, the most sup reads"),
        (&["--user", "no-such-user-xyz", "--", WORKER], "no such user"),
    ];
    let script = dir.join("bad-interpreter");
    std::fs::write(&script, "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("nul.env"), "A=1\nB=x\0y\n").unwrap();
    std::fs::write(dir.join("huge.env"), "A=".to_string() + &"x".repeat(1 << 20)).unwrap();
    std::fs::write(dir.join("huge.yml"), format!("# {}\nworkers: 2\n", "x".repeat(70_000))).unwrap();
    for (args, needle) in cases {
        // The worker would write a report if it were ever started.
        let mut full: Vec<&str> = args.to_vec();
        if full.contains(&WORKER) {
            full.extend(["--report-dir", &reports]);
        }
        let o = run(&dir, &full);
        assert_one_line(&o, 2, needle);
    }
    assert!(dir.reports("reports").is_empty(), "no worker was started");
}

#[test]
fn a_port_in_use_exits_1_and_releases_what_was_bound() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sock = dir.s("first.sock");
    let first = format!("unix:{sock}");
    let o = run(&dir, &["--bind", &first, "--bind", &addr, "--", WORKER]);
    assert_one_line(&o, 1, &format!("cannot bind tcp://{addr}: address already in use"));
    assert!(
        !std::path::Path::new(&sock).exists(),
        "the socket bound before the failure was removed"
    );
}

#[test]
fn a_live_unix_socket_is_not_stolen() {
    let dir = TestDir::new();
    let path = dir.join("live.sock");
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let bind = format!("unix:{}", path.display());
    let o = run(&dir, &["--bind", &bind, "--", WORKER]);
    assert_one_line(&o, 1, "is in use by a running server");
    assert!(path.exists());
}

#[test]
fn every_problem_is_listed_one_per_line() {
    let dir = TestDir::new();
    let o = run(
        &dir,
        &["--workers", "0", "--bind", "bad", "--stop-signal", "X", "--", WORKER],
    );
    assert_eq!(o.code, Some(2));
    assert_eq!(o.stderr.lines().count(), 3, "{}", o.stderr);
    assert!(o.stderr.lines().all(|l| l.starts_with("sup: error: ")), "{}", o.stderr);
}

#[test]
fn help_and_version_exit_0() {
    let dir = TestDir::new();
    let help = run(&dir, &["--help"]);
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.contains("--graceful-timeout"));
    let version = run(&dir, &["--version"]);
    assert_eq!(version.code, Some(0));
    assert!(version.stdout.starts_with("sup "));
}

#[test]
fn a_command_that_cannot_exec_is_a_failed_boot_with_its_path_and_error() {
    // Resolves at startup, then loses its execute bit: the spawn reports the
    // path and the OS error, counts as a failed boot, and sup stays up.
    let dir = TestDir::new();
    let script = dir.join("app");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut sup = Sup::start(&dir, &["--", "./app"]);
    let pid = wait_until("a worker", secs(10), || sup.started_pids().first().copied());
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // SAFETY: a worker of our sup.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let line = sup.wait_log("failed to start", secs(10));
    let expected = format!(
        "cannot execute {}: permission denied",
        std::fs::canonicalize(&dir.path).unwrap().join("app").display()
    );
    // execve needs an execute bit even for root, so this holds as root too.
    assert!(line.contains(&expected), "{line}\nexpected: {expected}");
    assert!(sup.is_running());
}

#[test]
fn a_second_sup_on_the_same_pidfile_stops_before_binding_anything() {
    let dir = TestDir::new();
    let pidfile = dir.s("sup.pid");
    let mut first = Sup::serving(&dir, &["--pidfile", &pidfile, "--", WORKER, "--serve"]);
    wait_until("the first sup's pidfile", secs(10), || {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        (text.trim() == first.pid().to_string()).then_some(())
    });
    let sock = dir.s("second.sock");
    let o = run(
        &dir,
        &["--bind", &format!("unix:{sock}"), "--pidfile", &pidfile, "--", WORKER],
    );
    assert_one_line(
        &o,
        1,
        &format!("pidfile {pidfile} belongs to a running sup (pid {})", first.pid()),
    );
    assert!(!std::path::Path::new(&sock).exists(), "nothing was bound");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        first.pid().to_string(),
        "the first sup's pidfile is left as it was"
    );
    assert!(first.is_running());
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(secs(30)).code(), Some(0));
    assert!(!std::path::Path::new(&pidfile).exists());

    // A stale pidfile — its pid now some other program (this test) — is replaced.
    std::fs::write(&pidfile, format!("{}\n", std::process::id())).unwrap();
    let mut third = Sup::serving(&dir, &["--pidfile", &pidfile, "--", WORKER, "--serve"]);
    wait_until("the pidfile taken over", secs(10), || {
        let text = std::fs::read_to_string(&pidfile).ok()?;
        (text.trim() == third.pid().to_string()).then_some(())
    });
    third.signal(libc::SIGTERM);
    assert_eq!(third.wait_exit(secs(30)).code(), Some(0));
}

#[test]
fn an_unwritable_pidfile_is_one_line_before_anything_is_bound() {
    // The port is taken too: the pidfile is what is reported, since it is
    // looked at before any socket is bound (it used to be found only after).
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let o = run(
        &dir,
        &["--bind", &port, "--pidfile", "/no/such/dir/sup.pid", "--", WORKER],
    );
    assert_one_line(
        &o,
        1,
        "cannot write pidfile /no/such/dir/sup.pid: no such file or directory",
    );
}

#[test]
fn arguments_and_environment_over_the_exec_limit_exit_2_before_any_spawn() {
    let dir = TestDir::new();
    // 900 KiB of variables: under the env file's cap, over what exec takes
    // with a 2 MiB stack (ARG_MAX is a quarter of it).
    let body: String = (0..900).map(|i| format!("V{i}={}\n", "x".repeat(1020))).collect();
    std::fs::write(dir.join("big.env"), body).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -s 2048 && exec \"$0\" \"$@\"",
        SUP,
        "--env-file",
        "big.env",
        "--",
        WORKER,
    ]);
    let mut sup = Sup::launch(&dir, cmd);
    let status = sup.wait_exit(secs(10));
    assert_eq!(status.code(), Some(2), "{}", sup.log());
    let log = sup.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("over the 512 KiB exec allows (\"argument list too long\")"),
        "{log}"
    );
}

#[test]
fn a_control_socket_in_a_missing_directory_is_one_line_before_anything_is_bound() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let o = run(
        &dir,
        &["--bind", &port, "--control", "unix:/no/such/dir/c.sock", "--", WORKER],
    );
    assert_one_line(
        &o,
        1,
        "cannot serve the control API on unix:/no/such/dir/c.sock: no such file or directory",
    );
}

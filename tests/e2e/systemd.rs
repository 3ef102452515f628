//! The shipped `sup@.service` under a real systemd: `scripts/systemd-ns`
//! boots this machine's own `/lib/systemd/systemd` as PID 1 in private
//! namespaces, installs the unit with this build as `/usr/bin/sup`, and
//! drives it with `systemctl` under a client loop — start, reload (rolling),
//! `sup ctl reexec`, 20 `kill -9` of the main pid with `Restart=always`,
//! 20 `systemctl restart`, a drained stop — failing on any refused, reset
//! or lost connection, or a listener that changed. The script says
//! `skipped: …` and exits 0 where the machine cannot (not root, no
//! namespaces, no cgroup2); with `CI=true` that is a failure instead.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn the_shipped_unit_under_a_real_systemd() {
    let dir = TestDir::new();
    let out = dir.join("systemd-ns.out");
    let bin = Path::new(WORKER).parent().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd-ns");
    let log = File::create(&out).unwrap();
    let mut child = Command::new(&script)
        .env("SUP_SDNS_BIN", bin)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    // A liveness bound: the script bounds each of its own waits; this only
    // keeps a wedged run from hanging the suite. TERM lets it power its
    // systemd off; SIGKILL to its group after that.
    let deadline = Instant::now() + secs(170);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let pid = child.id() as i32;
            // SAFETY: kill has no memory preconditions; `pid` is our child,
            // not yet reaped, so it names no other process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let grace = Instant::now() + secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: as above; the group is the one the script leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "scripts/systemd-ns still running after {:?}:\n{}",
                secs(170),
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&out).unwrap();
    if status.success() && text.starts_with("skipped:") {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
        return;
    }
    assert!(status.success(), "scripts/systemd-ns failed ({status}):\n{text}");
    assert!(text.contains("systemd-ns: all passed"), "{text}");
    // The figures, for the test's output (`--nocapture`).
    for line in text.lines().filter(|l| l.starts_with("systemd-ns: figures:")) {
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
    }
}

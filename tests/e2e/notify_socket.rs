//! NOTIFY_SOCKET (and EINHORN_SOCK_PATH) are files in a private directory
//! every sd_notify client can reach: 0700, reachable by `--user` workers,
//! the same socket before and after a hot restart, gone when sup stops. The
//! abstract address stays available on request.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::harness::*;

/// The unix socket bound at `path`, by inode, from /proc/net/unix.
fn socket_inode(path: &str) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() >= 8 && cols[7] == path).then(|| cols[6].parse().ok())?
    })
}

/// Whether process `pid` holds the socket with inode `ino`.
fn holds_socket(pid: i32, ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        })
        .unwrap_or(false)
}

fn reports_of_generation(dir: &TestDir, generation: &str) -> Vec<serde_json::Value> {
    dir.reports("reports")
        .into_iter()
        .filter(|r| r["env"]["SUP_GENERATION"] == generation)
        .collect()
}

/// The notify socket sup logged at startup (/stats does not show it).
fn logged_notify_socket(sup: &Sup) -> String {
    let line = sup.wait_log("notify socket for workers: ", secs(10));
    line.split("notify socket for workers: ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn notify_socket_is_a_private_path_kept_across_a_hot_restart_and_removed_at_stop() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--ready",
            "notify",
            "--einhorn-ack",
            "--",
            WORKER,
            "--serve",
            "--ready-after",
            "0",
            "--report-dir",
            &reports,
        ],
    );
    sup.wait_workers_ready(2);
    let gen0 = wait_until("two reports", secs(10), || {
        let r = reports_of_generation(&dir, "0");
        (r.len() == 2).then_some(r)
    });
    let notify = gen0[0]["env"]["NOTIFY_SOCKET"].as_str().unwrap().to_string();
    let einhorn = gen0[0]["env"]["EINHORN_SOCK_PATH"].as_str().unwrap().to_string();
    assert_eq!(logged_notify_socket(&sup), notify);
    let private = Path::new(&notify).parent().unwrap().to_path_buf();
    assert!(notify.starts_with('/'), "a path, not an abstract address: {notify}");
    assert!(notify.len() < 108, "fits sun_path: {notify}");
    assert_eq!(Path::new(&einhorn).parent(), Some(private.as_path()), "{einhorn}");
    let meta = std::fs::symlink_metadata(&private).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{}", private.display());
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    let notify_ino = socket_inode(&notify).expect("the notify socket is bound at that path");
    let einhorn_ino = socket_inode(&einhorn).expect("the Einhorn socket is bound at that path");
    assert!(holds_socket(sup.pid(), notify_ino));

    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    let gen1 = wait_until("two reports of gen 1", secs(10), || {
        let r = reports_of_generation(&dir, "1");
        (r.len() == 2).then_some(r)
    });
    for r in &gen1 {
        assert_eq!(r["env"]["NOTIFY_SOCKET"], notify.as_str(), "the same path");
        assert_eq!(r["env"]["EINHORN_SOCK_PATH"], einhorn.as_str());
    }
    // Not re-created: the very same sockets, still held by sup.
    assert_eq!(socket_inode(&notify), Some(notify_ino));
    assert_eq!(socket_inode(&einhorn), Some(einhorn_ino));
    assert!(holds_socket(sup.pid(), notify_ino));

    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
    assert!(!private.exists(), "{} outlived sup", private.display());
}

#[test]
fn a_worker_running_as_another_user_reaches_the_notify_socket() {
    if !root_or_skip() {
        return;
    }
    let dir = TestDir::new();
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--user",
            "nobody",
            "--ready",
            "notify",
            "--einhorn-ack",
            "--workers",
            "2",
            "--",
            WORKER,
            "--einhorn-ack-after",
            "0",
        ],
    );
    // Worker 0 acks on the Einhorn socket; both are ready only if both
    // sockets are reachable by nobody (READY=1 here comes through Einhorn).
    sup.wait_workers_ready(2);
    let notify = logged_notify_socket(&sup);
    let private = PathBuf::from(&notify).parent().unwrap().to_path_buf();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let meta = std::fs::metadata(&private).unwrap();
    assert_eq!(meta.uid(), nobody.uid.as_raw(), "given to the workers' user");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
    assert!(!private.exists());
}

#[test]
fn a_user_worker_sends_ready_on_the_notify_socket() {
    if !root_or_skip() {
        return;
    }
    let dir = TestDir::new();
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--user",
            "nobody",
            "--ready",
            "notify",
            "--",
            WORKER,
            "--ready-after",
            "0",
        ],
    );
    sup.wait_workers_ready(1);
    assert!(!sup.log().contains("notify: "), "{}", sup.log());
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
}

#[test]
fn the_abstract_address_is_there_on_request() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let reports = dir.s("reports");
    let mut sup = Sup::controlled(
        &dir,
        &[
            "--notify-socket",
            "abstract",
            "--ready",
            "notify",
            "--einhorn-ack",
            "--workers",
            "2",
            "--",
            WORKER,
            "--ready-after",
            "0",
            "--report-dir",
            &reports,
        ],
    );
    sup.wait_workers_ready(2);
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let notify = r["env"]["NOTIFY_SOCKET"].as_str().unwrap();
    let einhorn = r["env"]["EINHORN_SOCK_PATH"].as_str().unwrap();
    assert!(notify.starts_with("@sup/"), "{notify}");
    assert!(einhorn.starts_with("@sup/"), "{einhorn}");
    sup.signal(libc::SIGUSR2);
    sup.wait_restart_complete(RestartKind::Hot, 1, secs(60));
    let r1 = wait_until("a gen 1 report", secs(10), || {
        reports_of_generation(&dir, "1").into_iter().next()
    });
    assert_eq!(
        r1["env"]["NOTIFY_SOCKET"], notify,
        "the same abstract socket after a hot restart"
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
}

/// Start sup with its runtime directory made under `tmp` (TMPDIR), and
/// neither systemd's nor the user's runtime directory in the way.
fn start_in_tmp(dir: &TestDir, tmp: &Path, args: &[&str]) -> Sup {
    std::fs::create_dir_all(tmp).unwrap();
    Sup::start_with(dir, args, |cmd| {
        cmd.env("TMPDIR", tmp)
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("XDG_RUNTIME_DIR");
    })
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_private_directory_goes_after_a_crash_loop_and_after_a_failed_start() {
    let dir = TestDir::new();
    let tmp = dir.join("tmp");
    let mut sup = start_in_tmp(&dir, &tmp, &["--", "sh", "-c", "exit 3"]);
    let notify = logged_notify_socket(&sup);
    assert!(
        notify.starts_with(&format!("{}/sup.", tmp.display())),
        "made under TMPDIR: {notify}"
    );
    // A crash is what this part needs, and the log has it: /stats lists
    // live workers, and these live for an instant.
    sup.wait_log("exited with status 3", secs(10));
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(0), "{}", sup.log());
    assert_eq!(entries(&tmp), Vec::<String>::new());

    // The port is taken: sup exits 1, after it made its notify socket.
    let taken = std::net::TcpListener::bind(ANY_PORT).unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = TestDir::new();
    let tmp = dir.join("tmp");
    let mut sup = start_in_tmp(&dir, &tmp, &["--bind", &port, "--", WORKER]);
    assert_eq!(sup.wait_exit(secs(30)).code(), Some(1), "{}", sup.log());
    assert_eq!(entries(&tmp), Vec::<String>::new(), "{}", sup.log());
}

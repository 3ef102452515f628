//! What a worker inherits: exactly fds 0-2 and the sockets, the protocol
//! environment, a clean signal state, its own process group.

use std::collections::HashSet;

use crate::harness::*;

fn wait_reports(dir: &TestDir, n: usize) -> Vec<serde_json::Value> {
    wait_until(&format!("{n} worker reports"), secs(10), || {
        let r = dir.reports("reports");
        (r.len() >= n).then_some(r)
    })
}

#[test]
fn a_worker_holds_exactly_its_fds_and_the_protocol_env() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let unix = dir.s("admin.sock");
    let tcp_bind = "127.0.0.1:0?name=web";
    let unix_bind = format!("unix:{unix}?name=admin");
    let reports = dir.s("reports");
    // sup is started holding stray fds (7 and 9) from the shell that ran it,
    // and with its own LISTEN_*/NOTIFY_SOCKET/EINHORN_* that must not leak.
    let script = format!(
        "exec 7</dev/null 9>>{}; exec {SUP} --bind {tcp_bind} --bind {unix_bind} --workers 2 -- {WORKER} --report-dir {reports}",
        dir.s("stray")
    );
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&script)
        .env("LISTEN_FDS", "5")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDNAMES", "bogus")
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .env("EINHORN_FD_COUNT", "9")
        .env("KEEP_ME", "yes");
    let mut sup = Sup::launch(&dir, cmd);
    let addr = sup.tcp_addr(0);
    let reports = wait_reports(&dir, 2);
    let sup_pid = sup.pid();
    let mut slots = HashSet::new();
    for r in &reports {
        let pid = r["pid"].as_i64().unwrap();
        let fds: Vec<&str> = r["fds"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(fds, ["0", "1", "2", "3", "4"], "exact fd set: {}", r["fds"]);
        assert_eq!(r["fds"]["0"], "/dev/null");
        assert_eq!(r["ppid"].as_i64().unwrap(), sup_pid as i64, "sup is the direct parent");
        assert_eq!(r["pgid"].as_i64().unwrap(), pid, "own process group");
        assert_eq!(r["sig_blk"], "0000000000000000");
        // The helper is a Rust program, whose runtime ignores SIGPIPE (bit
        // 12) before main; the signal-state test below uses sh instead.
        let ign = u64::from_str_radix(r["sig_ign"].as_str().unwrap(), 16).unwrap();
        assert_eq!(ign & !(1 << 12), 0, "ignored signals: {:x}", ign);
        let env = &r["env"];
        let e = |k: &str| {
            env[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} missing in {env}"))
                .to_string()
        };
        assert_eq!(e("LISTEN_PID"), pid.to_string());
        assert_eq!(e("LISTEN_FDS"), "2");
        assert_eq!(e("LISTEN_FDNAMES"), "web:admin");
        let notify = e("NOTIFY_SOCKET");
        assert!(
            notify.ends_with("/notify") && notify != "/run/systemd/notify",
            "sup's own notify socket, not its parent's: {notify}"
        );
        assert_eq!(e("EINHORN_MASTER_PID"), sup_pid.to_string());
        assert_eq!(e("EINHORN_FD_COUNT"), "2");
        assert_eq!(e("EINHORN_FD_0"), "3");
        assert_eq!(e("EINHORN_FD_1"), "4");
        assert_eq!(e("EINHORN_CHILD_INDEX"), e("SUP_WORKER"));
        assert_eq!(e("SERVER_STARTER_PORT"), format!("{addr}=3;{unix}=4"));
        assert_eq!(e("SERVER_STARTER_GENERATION"), "0");
        assert_eq!(e("SUP_GENERATION"), "0");
        assert_eq!(e("SUP_PID"), sup_pid.to_string());
        assert_eq!(e("KEEP_ME"), "yes");
        let cwd = std::fs::canonicalize(&dir.path).unwrap().display().to_string();
        assert_eq!(e("PWD"), cwd);
        assert_eq!(r["cwd"], cwd.as_str());
        slots.insert(e("SUP_WORKER"));
        let socks = r["sockets"].as_array().unwrap();
        assert_eq!(socks[0]["domain"], "inet");
        assert_eq!(socks[1]["domain"], "unix");
        for s in socks {
            assert_eq!(s["type"], "stream");
            assert_eq!(s["listening"], true);
            assert_eq!(s["nonblocking"], false, "sockets are passed in blocking mode");
        }
    }
    assert_eq!(slots, HashSet::from(["0".to_string(), "1".to_string()]));
    assert!(sup.is_running());
}

#[test]
fn four_workers_accept_from_one_socket() {
    let dir = TestDir::new();
    let sup = Sup::serving(&dir, &["--workers", "4", "--", WORKER, "--serve"]);
    let addr = sup.tcp_addr(0);
    let mut pids = HashSet::new();
    let mut slots = HashSet::new();
    wait_until("answers from 4 distinct workers", secs(20), || {
        if let Ok(v) = get(addr) {
            pids.insert(v["pid"].as_i64().unwrap());
            slots.insert(v["slot"].as_i64().unwrap());
        }
        (pids.len() == 4).then_some(())
    });
    assert_eq!(slots, HashSet::from([0, 1, 2, 3]));
}

#[test]
fn tcp_and_unix_binds_with_names_and_fd_placeholders() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.join("reports")).unwrap();
    let unix = dir.s("app.sock");
    let unix_bind = format!("unix:{unix}?name=admin");
    let reports = dir.s("reports");
    let sup = Sup::start(
        &dir,
        &[
            "--bind",
            "127.0.0.1:0?name=web",
            "--bind",
            &unix_bind,
            "--",
            WORKER,
            "--serve",
            "--report-dir",
            &reports,
            "--admin-fd={fd:admin}",
            "{fd}",
            "{fd:1}",
            "{fd:web}",
        ],
    );
    let addr = sup.tcp_addr(0);
    let r = &wait_reports(&dir, 1)[0];
    let argv: Vec<&str> = r["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(argv[argv.len() - 4..], ["--admin-fd=4", "3", "4", "3"]);
    let via_tcp = get(addr).unwrap();
    assert_eq!(
        (via_tcp["fd"].as_i64(), via_tcp["name"].as_str()),
        (Some(3), Some("web"))
    );
    let via_unix = get_unix(std::path::Path::new(&unix)).unwrap();
    assert_eq!(
        (via_unix["fd"].as_i64(), via_unix["name"].as_str()),
        (Some(4), Some("admin"))
    );
}

#[test]
fn udp_sockets_are_passed_too() {
    let dir = TestDir::new();
    let sup = Sup::start(&dir, &["--bind", "udp://127.0.0.1:0?name=dns", "--", WORKER, "--serve"]);
    let line = sup.wait_log("listening on udp://", secs(10));
    let addr: std::net::SocketAddr = line
        .split("udp://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sock = std::net::UdpSocket::bind(ANY_PORT).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let answer = wait_until("a udp answer", secs(10), || {
        sock.send_to(b"ping", addr).ok()?;
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        serde_json::from_slice::<serde_json::Value>(&buf[..n]).ok()
    });
    assert_eq!(answer["name"], "dns");
}

#[test]
fn a_worker_starts_with_an_empty_mask_and_default_dispositions() {
    // sup is started ignoring HUP, PIPE and a glibc-reserved real-time
    // signal (33). The worker is grep itself, reading its own status, so no
    // shell stands between sup and what is inspected (a shell blocks
    // signals around its own forks).
    let dir = TestDir::new();
    let sup_cmd = format!("trap '' HUP PIPE 33; exec {SUP} -- grep -E '^Sig(Blk|Ign)' /proc/self/status");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(&sup_cmd);
    let sup = Sup::launch(&dir, cmd);
    let lines = wait_until("the worker's signal state", secs(10), || {
        let log = sup.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.starts_with("Sig"))
            .take(2)
            .map(str::to_string)
            .collect();
        (lines.len() == 2).then_some(lines)
    });
    assert_eq!(lines, ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]);
}

#[test]
fn workers_run_as_user_and_group_while_sup_binds_as_root() {
    if !root_or_skip() {
        return;
    }
    let dir = TestDir::new();
    let reports = dir.join("reports");
    std::fs::create_dir(&reports).unwrap();
    std::fs::set_permissions(&dir.path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&reports, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let reports = dir.s("reports");
    let sup = Sup::serving(
        &dir,
        &[
            "--user",
            "nobody",
            "--group",
            "nogroup",
            "--",
            WORKER,
            "--serve",
            "--report-dir",
            &reports,
        ],
    );
    let addr = sup.tcp_addr(0);
    let r = wait_until("a report", secs(10), || dir.reports("reports").into_iter().next());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(r["uid"], nobody.uid.to_string());
    assert_eq!(r["gid"], nogroup.gid.to_string());
    assert!(
        !r["groups"].as_str().unwrap().split_whitespace().any(|g| g == "0"),
        "root's groups dropped: {}",
        r["groups"]
    );
    // The unprivileged worker serves the socket root bound.
    assert_eq!(get(addr).unwrap()["pid"], r["pid"]);
}

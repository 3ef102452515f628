//! The edges of sup's own life: a stop that answers what the kernel already
//! accepted (`--stop-delay`, `GET /health`, the drain), and systemd's fd
//! store, which keeps the listeners across a restart or a crash of sup.

use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;

/// One connection of a client loop: when its handshake completed (if it
/// did), and whether its request was answered.
struct Attempt {
    connected: Option<Instant>,
    answered: bool,
    error: String,
}

/// `clients` threads, each making fresh connections to `addr` in a loop
/// until `stop`, recording every attempt.
fn clients(addr: SocketAddr, clients: usize, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<Attempt>>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut attempts = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    attempts.push(attempt(addr));
                }
                attempts
            })
        })
        .collect()
}

fn attempt(addr: SocketAddr) -> Attempt {
    let mut a = Attempt {
        connected: None,
        answered: false,
        error: String::new(),
    };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => {
            a.error = format!("connect: {e}");
            // Refused once sup is gone: do not spin.
            std::thread::sleep(Duration::from_millis(5));
            return a;
        }
    };
    a.connected = Some(Instant::now());
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut text = String::new();
    let result = s
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .and_then(|()| s.read_to_string(&mut text));
    match result {
        Ok(_) if text.starts_with("HTTP/1.") && text.contains("\"pid\"") => a.answered = true,
        Ok(_) => a.error = format!("no answer ({} bytes)", text.len()),
        Err(e) => a.error = format!("request: {e}"),
    }
    a
}

/// Ten stops of sup under load (2 workers taking 50 ms a request, 16
/// clients): every connection whose handshake completed before the stop
/// began is answered — none is reset or left unanswered.
#[test]
fn a_stop_under_load_answers_every_connection_accepted_before_it() {
    let mut lost = Vec::new();
    let mut before_total = 0;
    for round in 0..10 {
        let dir = TestDir::new();
        let sock = dir.join("c.sock");
        let control = format!("unix:{}", sock.display());
        let mut sup = Sup::serving(
            &dir,
            &[
                "--workers",
                "2",
                "--control",
                &control,
                "--",
                WORKER,
                "--serve",
                "--delay-response",
                "50",
            ],
        );
        let addr = sup.tcp_addr(0);
        wait_until("2 workers ready", secs(30), || {
            (sock.exists() && stats(&sock).booted_workers == 2).then_some(())
        });
        let stop = Arc::new(AtomicBool::new(false));
        let threads = clients(addr, 16, &stop);
        // Under load: connections wait in the accept queue (16 clients, 2
        // workers), which is what the stop must not reset.
        wait_until("connections waiting in the accept queue", secs(30), || {
            let text = metrics_text(&sock);
            text.lines()
                .filter(|l| l.starts_with("sup_listener_queue_length{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .any(|n| n > 0.0)
                .then_some(())
        });
        let stopped_at = Instant::now();
        sup.signal(libc::SIGTERM);
        sup.wait_exit(secs(60));
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            for a in t.join().unwrap() {
                if a.connected.is_some_and(|c| c < stopped_at) {
                    before_total += 1;
                    if !a.answered {
                        lost.push(format!("round {round}: {}", a.error));
                    }
                }
            }
        }
        assert!(
            sup.log().contains("the accept queues are empty") || sup.log().contains("still queued"),
            "{}",
            sup.log()
        );
    }
    assert!(before_total > 100, "the load made only {before_total} connections");
    assert!(
        lost.is_empty(),
        "{} of {before_total} connections accepted before a stop were lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// `--stop-delay`: at TERM, `/health` turns 503 while the workers still
/// serve for the delay; `sup ctl health` says the same by its exit status.
#[test]
fn the_stop_delay_reports_not_ready_while_serving() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let mut sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "2",
            "--stop-delay",
            "2s",
            "--control",
            &control,
            "--control-token",
            "s3cret",
            "--",
            WORKER,
            "--serve",
        ],
    );
    let addr = sup.tcp_addr(0);
    let health = || raw(&sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_until("healthy", secs(30), || {
        (sock.exists() && health().starts_with("HTTP/1.1 200")).then_some(())
    });
    assert!(health().contains("\"status\":\"serving\""), "{}", health());
    let (code, stdout, _) = ctl(&["--control", &control, "health"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("serving (2/2 ready)"), "{stdout}");
    let term_at = Instant::now();
    sup.signal(libc::SIGTERM);
    wait_until("503", secs(10), || health().starts_with("HTTP/1.1 503").then_some(()));
    let turned = term_at.elapsed();
    assert!(health().contains("\"status\":\"stopping\""), "{}", health());
    let (code, stdout, _) = ctl(&["--control", &control, "health"]);
    assert_eq!(code, Some(1), "{stdout}");
    // Still served during the delay (the test's own timing is not asserted:
    // requests keep succeeding until the drain begins).
    let mut served = 0;
    while term_at.elapsed() < Duration::from_millis(1_500) {
        get(addr).unwrap();
        served += 1;
    }
    assert!(served > 0);
    assert!(sup.is_running(), "sup waits out the delay");
    assert!(
        !sup.log().contains("get the stop signal"),
        "no worker is stopped during the delay:\n{}",
        sup.log()
    );
    sup.wait_exit(secs(30));
    assert!(sup.log().contains("--stop-delay"), "{}", sup.log());
    let _ = std::io::stderr().write_all(format!("health turned 503 {turned:?} after TERM\n").as_bytes());
}

/// What a stand-in for systemd received on its NOTIFY_SOCKET: the text and
/// the file descriptors that came with it.
fn receive(sock: &std::os::unix::net::UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            // SAFETY: fds the kernel just passed to this process.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

/// The inode of a socket.
fn inode(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).unwrap().st_ino
}

/// Run sup as systemd would after a restart: the stored sockets as fds 3,
/// 4, … with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set by a shell that
/// then becomes sup, since the pid is known only then).
fn start_with_stored(dir: &TestDir, notify: &str, stored: &[(String, OwnedFd)], args: &[&str]) -> Sup {
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    let raw: Vec<RawFd> = stored.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(SUP)
        .args(args)
        .env("NOTIFY_SOCKET", notify)
        .env("LISTEN_FDS", stored.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    // SAFETY: between fork and exec, only dup2 (async-signal-safe) on fds
    // this process owns; the targets 3.. are above stdio.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so that no dup2 overwrites a source.
            let high: Vec<i32> = raw
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                .collect();
            for (i, fd) in high.into_iter().enumerate() {
                if fd < 0 || libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Sup::launch(dir, cmd)
}

/// A stand-in for systemd's notify socket in `dir`: the socket, and its
/// address for `NOTIFY_SOCKET`.
fn stand_in_systemd(dir: &TestDir) -> (std::os::unix::net::UnixDatagram, String) {
    let path = dir.join("systemd.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    (systemd, path.display().to_string())
}

/// The first `n` fds `sup` hands to the fd store (`FDSTORE=1`), by name.
fn stored_fds(systemd: &std::os::unix::net::UnixDatagram, n: usize, sup: &Sup) -> Vec<(String, OwnedFd)> {
    let mut stored: Vec<(String, OwnedFd)> = Vec::new();
    let deadline = Instant::now() + secs(20);
    while stored.len() < n {
        assert!(Instant::now() < deadline, "sup stored {stored:?}\n{}", sup.log());
        if let Some((text, mut fds)) = receive(systemd)
            && text.starts_with("FDSTORE=1")
        {
            let name = text.split("FDNAME=").nth(1).unwrap().trim().to_string();
            assert_eq!(fds.len(), 1, "{text}");
            stored.push((name, fds.remove(0)));
        }
    }
    stored
}

/// Under systemd (a stand-in here: its NOTIFY_SOCKET, and LISTEN_FDS the
/// way it passes stored fds back), sup hands its listener and control
/// socket to the fd store; after a `kill -9` of sup, the next sup takes
/// them back by name — the same sockets — and the connections made while
/// no sup ran wait in the queue and are answered: none is refused.
#[test]
fn the_fd_store_keeps_the_listeners_across_a_crash_of_sup() {
    let dir = TestDir::new();
    let (systemd, notify) = stand_in_systemd(&dir);
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let args = [
        "--bind",
        "127.0.0.1:0?name=web",
        "--workers",
        "2",
        "--control",
        &control,
        "--",
        WORKER,
        "--serve",
    ];
    let mut cmd = std::process::Command::new(SUP);
    cmd.args(args).env("NOTIFY_SOCKET", &notify);
    let mut first = Sup::launch(&dir, cmd);
    let stored = stored_fds(&systemd, 2, &first);
    let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["web", "sup-control"]);
    let addr = first.tcp_addr(0);
    let port = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(stored[0].1.as_raw_fd())
        .unwrap()
        .port();
    assert_eq!(port, addr.port(), "the stored fd is sup's listener");
    let listener_inode = inode(&stored[0].1);
    wait_until("2 workers ready", secs(30), || {
        (sock.exists() && stats(&sock).booted_workers == 2).then_some(())
    });
    let load = Load::start(addr);
    // A crash: sup and its workers are gone; the sockets live on in "systemd".
    first.signal(libc::SIGKILL);
    first.wait_exit(secs(10));
    let second = start_with_stored(&dir, &notify, &stored, &args);
    wait_until("the new sup's workers ready", secs(30), || {
        (second.log().contains("is ready") && stats(&sock).booted_workers == 2).then_some(())
    });
    load.finish_without_failures(&second);
    assert!(second.log().contains("socket activation"), "{}", second.log());
    // It stores them again: the same sockets (systemd drops duplicates).
    let again = wait_until("the new sup's FDSTORE", secs(10), || {
        receive(&systemd).filter(|(t, _)| t.contains("FDNAME=web"))
    });
    assert_eq!(inode(&again.1[0]), listener_inode, "the same listener, not a new one");
    assert_eq!(second.tcp_addr(0), addr);
}

/// With `--balance reuseport` every slot's socket goes to the fd store too
/// (`web.slotK`); after a `kill -9` of sup, the next sup takes each back —
/// the same sockets, none bound anew — and what queued on any slot while
/// no sup ran is answered.
#[test]
fn the_fd_store_keeps_every_slot_socket_across_a_crash_of_sup() {
    let dir = TestDir::new();
    let (systemd, notify) = stand_in_systemd(&dir);
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let args = [
        "--bind",
        "127.0.0.1:0?name=web",
        "--balance",
        "reuseport",
        "--workers",
        "3",
        "--control",
        &control,
        "--",
        WORKER,
        "--serve",
    ];
    let mut cmd = std::process::Command::new(SUP);
    cmd.args(args).env("NOTIFY_SOCKET", &notify);
    let mut first = Sup::launch(&dir, cmd);
    let stored = stored_fds(&systemd, 4, &first);
    let mut names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["sup-control", "web", "web.slot1", "web.slot2"]);
    let inodes: std::collections::BTreeSet<u64> = stored.iter().map(|(_, fd)| inode(fd)).collect();
    let addr = first.tcp_addr(0);
    wait_until("3 workers ready", secs(30), || {
        (sock.exists() && stats(&sock).booted_workers == 3).then_some(())
    });
    let loads: Vec<Load> = (0..3).map(|_| Load::start(addr)).collect();
    first.signal(libc::SIGKILL);
    first.wait_exit(secs(10));
    let second = start_with_stored(&dir, &notify, &stored, &args);
    wait_until("the new sup's workers ready", secs(30), || {
        (second.log().contains("is ready") && stats(&sock).booted_workers == 3).then_some(())
    });
    for l in loads {
        l.finish_without_failures(&second);
    }
    assert!(
        second.log().contains("adopted 3 per-slot socket(s)"),
        "{}",
        second.log()
    );
    // Stored again: the same sockets, no new one.
    let mut again = std::collections::BTreeSet::new();
    wait_until("the new sup's FDSTOREs", secs(10), || {
        if let Some((t, fds)) = receive(&systemd)
            && t.contains("FDNAME=web")
        {
            again.insert(inode(&fds[0]));
        }
        (again.len() == 3).then_some(())
    });
    assert!(again.is_subset(&inodes), "{again:?} vs {inodes:?}");
}

/// Scaling down stops one worker at a time while the others serve the
/// shared queue: nothing queued is lost.
#[test]
fn scaling_down_under_load_loses_nothing() {
    let dir = TestDir::new();
    let sock = dir.join("c.sock");
    let control = format!("unix:{}", sock.display());
    let sup = Sup::serving(
        &dir,
        &[
            "--workers",
            "4",
            "--control",
            &control,
            "--",
            WORKER,
            "--serve",
            "--delay-response",
            "20",
        ],
    );
    wait_until("4 workers ready", secs(30), || {
        (sock.exists() && stats(&sock).booted_workers == 4).then_some(())
    });
    let loads: Vec<Load> = (0..4).map(|_| Load::start(sup.tcp_addr(0))).collect();
    for n in (1..4).rev() {
        sup.signal(libc::SIGTTOU);
        wait_until("one worker fewer", secs(30), || {
            let s = stats(&sock);
            (s.target_workers == n && s.worker_status.len() == n).then_some(())
        });
    }
    for load in loads {
        load.finish_without_failures(&sup);
    }
}

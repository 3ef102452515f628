//! Test harness: a short temporary directory, a `Sup` process guard whose
//! output goes to a file, polling with deadlines, and a tiny HTTP client.
//!
//! `Sup` runs sup in its own process group. On drop, a sup that is still
//! running gets TERM, then after 5 s SIGKILL to its group and to the group
//! of every worker it logged, so a failing test leaves nothing behind.
//!
//! A test waits for sup's *state* through `GET /stats` on its control
//! socket ([`Sup::wait_stats`] and the waits built on it), typed with the
//! same structs `sup ctl` reads; [`Sup::wait_log`] is for tests whose
//! subject is what sup says, or something /stats does not show.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use sup::control::protocol::{RestartOutcome, RestartStats, Stats, WorkerPhase, WorkerStats};
pub use sup::core::RestartKind;

pub const SUP: &str = env!("CARGO_BIN_EXE_sup");
/// A TCP address on loopback whose port the kernel picks: tests never
/// assume a port is free.
pub const ANY_PORT: &str = "127.0.0.1:0";
pub const WORKER: &str = env!("CARGO_BIN_EXE_sup-test-worker");

/// Liveness bounds, never speed assertions. `SUP_TEST_TIME_SCALE` stretches
/// them on a slow machine.
pub fn secs(n: u64) -> Duration {
    let scale: u64 = std::env::var("SUP_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(n * scale.max(1))
}

/// Poll `probe` until it returns `Some`, or panic after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    poll(what, timeout, probe, String::new)
}

/// [`wait_until`], with `seen()` (what the probe saw last) in the panic.
fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>, seen: impl FnOnce() -> String) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {:?} waiting for {what}{}", start.elapsed(), seen());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A fresh directory under /tmp (unix socket paths must stay short).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from(format!(
            "/tmp/sup-e2e/{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    pub fn s(&self, p: &str) -> String {
        self.join(p).display().to_string()
    }

    /// Every worker report written to `dir` (by `--report-dir`).
    pub fn reports(&self, dir: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.join(dir)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".json") && !name.starts_with('.') {
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    out.push(serde_json::from_str(&text).unwrap());
                }
            }
        }
        out
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub struct Sup {
    pub child: Child,
    pub log: PathBuf,
    /// sup's control socket, when it serves one on a unix path: where the
    /// typed waits read `GET /stats`.
    control: Option<PathBuf>,
    status: Option<ExitStatus>,
}

/// The unix control socket named in `args` (`--control unix:PATH`), with a
/// relative path taken from `cwd`, as sup takes it.
fn control_in<'a>(args: impl IntoIterator<Item = &'a std::ffi::OsStr>, cwd: &Path) -> Option<PathBuf> {
    let args: Vec<&str> = args.into_iter().filter_map(|a| a.to_str()).collect();
    let value = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--control") {
            Some("") => args.get(i + 1).copied(),
            Some(rest) => rest.strip_prefix('='),
            None => None,
        })?;
    Some(cwd.join(value.strip_prefix("unix:")?))
}

impl Sup {
    /// Start sup with exactly `args`, output to `dir/sup.log`.
    pub fn start(dir: &TestDir, args: &[&str]) -> Sup {
        Sup::start_with(dir, args, |_| {})
    }

    /// Start sup serving a fresh TCP port (`--bind 127.0.0.1:0`, read back
    /// with [`Sup::tcp_addr`]) with a control socket (see
    /// [`Sup::controlled`]), then `args`.
    pub fn serving(dir: &TestDir, args: &[&str]) -> Sup {
        let mut all = vec!["--bind", ANY_PORT];
        all.extend_from_slice(args);
        Sup::controlled(dir, &all)
    }

    /// Start sup with `args` and a control socket, `dir/ctl.sock`, for the
    /// typed waits (unless `args` name one: then that one). For a test
    /// whose sup must run exactly as given, use [`Sup::start`].
    pub fn controlled(dir: &TestDir, args: &[&str]) -> Sup {
        let control = format!("unix:{}", dir.s("ctl.sock"));
        let mut all = Vec::new();
        if control_in(args.iter().map(std::ffi::OsStr::new), &dir.path).is_none() {
            all.extend(["--control", control.as_str()]);
        }
        all.extend_from_slice(args);
        Sup::start(dir, &all)
    }

    pub fn start_with(dir: &TestDir, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Sup {
        let mut cmd = Command::new(SUP);
        cmd.args(args);
        tweak(&mut cmd);
        Sup::launch(dir, cmd)
    }

    /// Run `cmd` (sup, or something that execs sup) in its own process
    /// group, in `dir`, with its output appended to `dir/sup.log`. A
    /// `--control unix:PATH` among its arguments is the control socket.
    pub fn launch(dir: &TestDir, cmd: Command) -> Sup {
        Sup::launch_with_stdout(dir, cmd, None)
    }

    /// [`Sup::launch`], with sup's stdout going to `stdout` instead of the
    /// log (its stderr still goes to `dir/sup.log`).
    pub fn launch_with_stdout(dir: &TestDir, mut cmd: Command, stdout: Option<Stdio>) -> Sup {
        let control = control_in(cmd.get_args(), &dir.path);
        let log = dir.join("sup.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let stdout = stdout.unwrap_or_else(|| out.try_clone().unwrap().into());
        cmd.current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(out)
            .process_group(0);
        let child = cmd.spawn().unwrap();
        Sup {
            child,
            log,
            control,
            status: None,
        }
    }

    /// The control socket at `path`, for a sup launched through a shell
    /// (whose arguments [`Sup::launch`] cannot see).
    pub fn control_at(mut self, path: &Path) -> Sup {
        self.control = Some(path.to_path_buf());
        self
    }

    /// sup's control socket.
    pub fn control(&self) -> &Path {
        self.control
            .as_deref()
            .unwrap_or_else(|| panic!("this sup has no control socket: start it with Sup::serving or Sup::controlled"))
    }

    /// `GET /stats` now.
    pub fn stats(&self) -> Stats {
        stats(self.control())
    }

    /// Poll `GET /stats` until `probe` returns `Some`; panic after
    /// `timeout`, or at once if sup exits, with the last answer. A request
    /// that gets no answer counts as "not yet" (its error is shown then).
    pub fn wait_stats<T>(&self, what: &str, timeout: Duration, mut probe: impl FnMut(&Stats) -> Option<T>) -> T {
        let path = self.control();
        let last = std::cell::RefCell::new(String::from("no answer"));
        poll(
            what,
            timeout,
            || {
                assert!(
                    alive(self.pid()),
                    "sup exited while waiting for {what}:\n{}",
                    self.log()
                );
                match try_stats(path) {
                    Ok(s) => {
                        *last.borrow_mut() = summary(&s);
                        probe(&s)
                    }
                    Err(e) => {
                        *last.borrow_mut() = e;
                        None
                    }
                }
            },
            || format!("; /stats last said: {}\n{}", last.borrow(), self.log()),
        )
    }

    /// Wait until `n` live workers are ready.
    pub fn wait_workers_ready(&self, n: usize) {
        self.wait_stats(&format!("{n} workers ready"), secs(20), |s| {
            (s.booted_workers >= n).then_some(())
        });
    }

    /// Wait until restart `id` has ended (sup numbers its restarts from 1,
    /// across hot restarts) and assert that it was a `kind` restart that
    /// ended `outcome`; /stats at that moment, and the reason it gave.
    pub fn wait_restart_ended(
        &self,
        id: u64,
        kind: RestartKind,
        outcome: RestartOutcome,
        timeout: Duration,
    ) -> (Stats, String) {
        let (s, r) = self.wait_stats(&format!("restart #{id} to end"), timeout, |s| {
            let r = s.restart.as_ref()?;
            assert!(r.id <= id, "restart #{id} ended unseen: {}", summary(s));
            (r.id == id && r.outcome != RestartOutcome::Running).then(|| (s.clone(), r.clone()))
        });
        assert_eq!((r.kind, r.outcome), (kind, outcome), "{r:?}\n{}", self.log());
        (s, r.error.unwrap_or_default())
    }

    /// Wait until the `kind` restart to gen `generation` has ended, and
    /// assert that it completed: every worker of the new generation is
    /// ready and no older one is left.
    pub fn wait_restart_complete(&self, kind: RestartKind, generation: u64, timeout: Duration) -> RestartStats {
        let what = format!("{} restart to gen {generation} to complete", kind.as_str());
        let r = self.wait_stats(&what, timeout, |s| {
            s.restart
                .clone()
                .filter(|r| r.kind == kind && r.generation == Some(generation) && r.outcome != RestartOutcome::Running)
        });
        assert_eq!(r.outcome, RestartOutcome::Completed, "{r:?}\n{}", self.log());
        r
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for a log line containing `needle`; returns the line.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_until(&format!("log line `{needle}`"), timeout, || {
            self.log().lines().find(|l| l.contains(needle)).map(str::to_string)
        })
    }

    /// The address sup logged for its `index`th tcp socket.
    pub fn tcp_addr(&self, index: usize) -> SocketAddr {
        wait_until("sup to log its tcp addresses", secs(10), || {
            let log = self.log();
            let addrs: Vec<SocketAddr> = log
                .lines()
                .filter_map(|l| l.split("listening on tcp://").nth(1))
                .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
                .collect();
            addrs.get(index).copied()
        })
    }

    /// Pids of the workers sup has logged as started, in order.
    pub fn started_pids(&self) -> Vec<i32> {
        self.log()
            .lines()
            .filter(|l| l.ends_with(" started"))
            .filter_map(|l| l.split("(pid ").nth(1)?.split(',').next()?.parse().ok())
            .collect()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        self.status
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if start.elapsed() > timeout {
                panic!("sup did not exit within {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for pid in self.started_pids() {
            // SAFETY: killing process groups our sup created; ESRCH is harmless.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // SAFETY: as above, sup's own group.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One HTTP request on a fresh connection; the JSON body of the answer.
pub fn get(addr: SocketAddr) -> std::io::Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    read_body(&mut s)
}

pub fn get_unix(path: &Path) -> std::io::Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    read_body(&mut s)
}

fn read_body(s: &mut impl Read) -> std::io::Result<serde_json::Value> {
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| std::io::Error::other(format!("no HTTP body in {text:?}")))?;
    serde_json::from_str(body).map_err(|e| std::io::Error::other(format!("{e}: {body:?}")))
}

/// Whether `pid` still exists as a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// The parent pid of `pid`, from /proc.
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// A client making fresh connections in a loop until stopped; returns
/// (successful requests, failures with their errors).
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(usize, Vec<String>, Duration)>,
}

impl Load {
    /// Start the client and return once it has made its first request
    /// (answered or failed), so that the loop spans whatever comes next
    /// even on a loaded machine.
    pub fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), made.clone());
        let handle = std::thread::spawn(move || {
            let (mut ok, mut failed, mut longest) = (0, Vec::new(), Duration::ZERO);
            while !flag.load(Ordering::SeqCst) {
                let t = Instant::now();
                match get(addr) {
                    Ok(_) => {
                        ok += 1;
                        longest = longest.max(t.elapsed());
                    }
                    Err(e) => failed.push(e.to_string()),
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
            (ok, failed, longest)
        });
        wait_until("the client's first request", secs(30), || {
            (made.load(Ordering::SeqCst) > 0).then_some(())
        });
        Load { stop, handle }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        let (ok, failed, _) = self.finish_timed();
        (ok, failed)
    }

    /// Stop the client: (answered, failures, the longest answered request).
    pub fn finish_timed(self) -> (usize, Vec<String>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }

    /// Stop the client and assert that it made requests and none failed;
    /// on failure, show a few errors and sup's log.
    pub fn finish_without_failures(self, sup: &Sup) {
        let (ok, failed) = self.finish();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}\n{}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)],
            sup.log()
        );
        assert!(ok > 0, "the client made no request");
    }
}

/// Distinct worker pids answering, with their generation, once `n` are seen.
/// The pids of `n` distinct workers answering on `addr`.
pub fn answering_pids(addr: SocketAddr, n: usize) -> std::collections::HashSet<i64> {
    answering(addr, n).into_iter().map(|(pid, _)| pid).collect()
}

pub fn answering(addr: SocketAddr, n: usize) -> Vec<(i64, i64)> {
    let mut seen = std::collections::BTreeMap::new();
    wait_until(&format!("{n} distinct workers answering"), secs(30), || {
        if let Ok(v) = get(addr) {
            seen.insert(v["pid"].as_i64()?, v["generation"].as_i64()?);
        }
        (seen.len() >= n).then_some(())
    });
    seen.into_iter().collect()
}

/// `dir/NAME/run`: a release whose worker runs `args` (or exits 1 if broken).
pub fn release(dir: &TestDir, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    let run = path.join("run");
    std::fs::write(&run, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::canonicalize(path).unwrap()
}

pub fn point(dir: &TestDir, target: &std::path::Path) {
    let tmp = dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

/// A release whose worker serves and is ready (notify) after 100 ms.
pub fn good(dir: &TestDir, name: &str) -> std::path::PathBuf {
    release(dir, name, &format!("exec {WORKER} --serve --ready-after 100"))
}

/// Workers the log says are alive: started and not since stopped or exited.
pub fn live_workers(log: &str) -> Vec<(i64, String)> {
    let mut live = std::collections::BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("(pid ").nth(1) else {
            continue;
        };
        let Some((pid, rest)) = rest.split_once(", gen ") else {
            continue;
        };
        let Some((generation, what)) = rest.split_once(')') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i64>() else { continue };
        if what.starts_with(" started") {
            live.insert(pid, generation.to_string());
        } else if what.starts_with(" stopped") || what.starts_with(" exited") {
            live.remove(&pid);
        }
    }
    live.into_iter().collect()
}

/// Run `sup ctl ARGS`: exit code, stdout, stderr.
pub fn ctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(SUP).arg("ctl").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// How many fds `pid` holds.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// The children of `pid`: the live ones, and the zombies.
pub fn children_of(pid: i32) -> (std::collections::BTreeSet<i32>, Vec<i32>) {
    let (mut live, mut zombies) = (std::collections::BTreeSet::new(), Vec::new());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (state, parent) = (fields.next(), fields.next().and_then(|p| p.parse::<i32>().ok()));
        if parent == Some(pid) {
            if state == Some("Z") {
                zombies.push(child);
            } else {
                live.insert(child);
            }
        }
    }
    (live, zombies)
}

/// A raw exchange on the control socket: what comes back (possibly empty
/// when the server cut the connection).
pub fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics` on the control socket: the whole response.
pub fn metrics_text(path: &Path) -> String {
    raw(path, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// One sample of `/metrics`, named exactly (labels included).
pub fn metric(path: &Path, sample: &str) -> Option<f64> {
    metrics_text(path)
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// `/stats`, read with the same types `sup ctl` uses.
pub fn stats(path: &Path) -> Stats {
    try_stats(path).unwrap()
}

/// `/stats`, or what went wrong asking for it.
pub fn try_stats(path: &Path) -> Result<Stats, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(secs(15))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))
        }
        _ => Err(format!("answer {text:?}")),
    }
}

/// The parts of /stats a wait looks at, on one line.
pub fn summary(s: &Stats) -> String {
    let workers: Vec<String> = s
        .worker_status
        .iter()
        .map(|w| format!("{}:{}/gen {}/{:?}", w.slot, w.pid, w.generation, w.state))
        .collect();
    format!(
        "gen {}, target {}, {} live ({} ready), restart {:?} (busy {}), workers [{}]",
        s.generation,
        s.target_workers,
        s.workers,
        s.booted_workers,
        s.restart,
        s.restart_busy,
        workers.join(", ")
    )
}

/// Whether this test may use `--user` (it needs root). Locally it skips
/// with a line saying so; in CI, which runs as root, it is never skipped.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var("CI").is_err(), "CI runs as root");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), b"skipped: --user needs root\n");
    false
}

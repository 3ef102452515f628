//! `sup-test-worker`: a worker whose behaviour the end-to-end tests choose
//! with flags, instead of shell scripts.
//!
//!   --report-dir DIR      write DIR/<pid>.json first thing: fds, env,
//!                         signal mask and ignored set, pid/ppid/pgid, cwd,
//!                         argv, and what each inherited socket is
//!   --serve               answer on every inherited socket (LISTEN_FDS,
//!                         checked strictly against LISTEN_PID, as real
//!                         servers do) with one JSON line: pid, slot, gen
//!   --delay-response MS   take this long to answer each request
//!   --one-at-a-time       answer each request before accepting the next
//!                         (a sync worker: Unicorn, gunicorn sync); by
//!                         default each request gets a thread
//!   --grow-kb N           keep N KiB more memory (written, so resident)
//!                         with every request: a leak, for --max-memory
//!   --exit N              exit with status N (at once, or after --exit-after)
//!   --exit-after MS       ... after this long
//!   --ignore-term         ignore SIGTERM
//!   --serve-for MS        with --serve: after MS (plus up to half again,
//!                         drawn from the pid), stop accepting, finish the
//!                         requests in flight and exit 0 on its own, as a
//!                         worker that recycles itself does
//!   --grandchild          start a child of its own in the same process
//!                         group that ignores TERM and sleeps (a wrapper's
//!                         child); its pid goes in the report
//!   --boot MS             take MS to boot, like an app loading its code:
//!                         nothing is served and nothing sent before
//!   --ready-after MS      send READY=1 to NOTIFY_SOCKET after MS
//!   --watchdog-once       send WATCHDOG=1 once (with READY=1), then never again
//!   --einhorn-ack-after MS  send {"command":"worker:ack","pid":PID} to
//!                         EINHORN_SOCK_PATH after MS
//!   --recycle-every N     after every N requests answered, ask sup to be
//!                         recycled (X_SUP_RECYCLE=1 on NOTIFY_SOCKET)
//!   --say-usr1            print `worker <pid> got USR1` at each SIGUSR1
//!   --write-lines N       write N numbered lines, even ones to stdout, odd
//!                         ones to stderr: `L <slot> <gen> <pid> <seq> <len>
//!                         <payload> <fnv32>`, each written whole (one
//!                         write), then `worker <pid> wrote <n> lines` on
//!                         stderr; with --serve in a thread (a TERM stops
//!                         the writing and the marker says how far it got),
//!                         otherwise before anything else --exit asks
//!   --line-bytes B        lines up to B bytes long (default 100); every
//!                         50th is close to B, the others short
//!   --lines-per-sec R     pace the lines (default: as fast as possible)
//!
//! Graceful stop in --serve mode: on TERM it stops accepting, finishes the
//! requests in flight, prints `worker <pid> exiting gracefully` and exits 0.
//! No accepted connection is ever dropped: each accept loop sees the stop
//! itself (accept waits at most 20 ms, through SO_RCVTIMEO on the shared
//! socket) and counts a connection in flight before it looks again.
//! Every request prints `worker <pid> request received` when it is read.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static TERMINATING: AtomicBool = AtomicBool::new(false);
static ACCEPTORS: AtomicUsize = AtomicUsize::new(0);
static ANSWERED: AtomicUsize = AtomicUsize::new(0);
static RECYCLE_EVERY: AtomicUsize = AtomicUsize::new(0);
static WRITER_ACTIVE: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Opts {
    report_dir: Option<String>,
    serve: bool,
    delay_response: u64,
    one_at_a_time: bool,
    exit: Option<i32>,
    exit_after: Option<u64>,
    ignore_term: bool,
    serve_for: Option<u64>,
    grandchild: bool,
    sleep_forever: bool,
    ready_after: Option<u64>,
    boot: u64,
    watchdog_once: bool,
    einhorn_ack_after: Option<u64>,
    grow_kb: usize,
    recycle_every: usize,
    say_usr1: bool,
    write_lines: u64,
    line_bytes: usize,
    lines_per_sec: u64,
}

fn parse() -> Opts {
    let mut o = Opts::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match a.as_str() {
            "--report-dir" => o.report_dir = Some(value("--report-dir")),
            "--serve" => o.serve = true,
            "--one-at-a-time" => o.one_at_a_time = true,
            "--delay-response" => o.delay_response = value("--delay-response").parse().unwrap_or_else(|_| die("ms")),
            "--exit" => o.exit = Some(value("--exit").parse().unwrap_or_else(|_| die("code"))),
            "--exit-after" => o.exit_after = Some(value("--exit-after").parse().unwrap_or_else(|_| die("ms"))),
            "--ignore-term" => o.ignore_term = true,
            "--serve-for" => o.serve_for = Some(value("--serve-for").parse().unwrap_or_else(|_| die("ms"))),
            "--grandchild" => o.grandchild = true,
            "--sleep-forever" => o.sleep_forever = true,
            "--boot" => o.boot = value("--boot").parse().unwrap_or_else(|_| die("ms")),
            "--ready-after" => o.ready_after = Some(value("--ready-after").parse().unwrap_or_else(|_| die("ms"))),
            "--watchdog-once" => o.watchdog_once = true,
            "--grow-kb" => o.grow_kb = value("--grow-kb").parse().unwrap_or_else(|_| die("KiB")),
            "--recycle-every" => o.recycle_every = value("--recycle-every").parse().unwrap_or_else(|_| die("count")),
            "--say-usr1" => o.say_usr1 = true,
            "--write-lines" => o.write_lines = value("--write-lines").parse().unwrap_or_else(|_| die("lines")),
            "--line-bytes" => o.line_bytes = value("--line-bytes").parse().unwrap_or_else(|_| die("bytes")),
            "--lines-per-sec" => o.lines_per_sec = value("--lines-per-sec").parse().unwrap_or_else(|_| die("rate")),
            "--einhorn-ack-after" => {
                o.einhorn_ack_after = Some(value("--einhorn-ack-after").parse().unwrap_or_else(|_| die("ms")))
            }
            // Anything else is just recorded in argv (placeholder tests).
            _ => {}
        }
    }
    o
}

fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "sup-test-worker: {msg}");
    std::process::exit(64)
}

fn main() {
    let opts = parse();
    // Taken before this process opens anything of its own.
    let fds = list_fds();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // Before anything a test can observe (the report, READY=1), so that a
    // test reacting to those never races the disposition.
    if opts.ignore_term {
        ignore(libc::SIGTERM);
    }
    if opts.sleep_forever {
        ignore(libc::SIGTERM);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let grandchild = opts.grandchild.then(|| {
        let exe = std::env::current_exe().unwrap_or_else(|_| die("current_exe"));
        std::process::Command::new(exe)
            .arg("--sleep-forever")
            .spawn()
            .unwrap_or_else(|e| die(&format!("grandchild: {e}")))
            .id()
    });
    if let Some(dir) = &opts.report_dir {
        write_report(dir, &fds, &status, grandchild);
    }
    std::thread::sleep(Duration::from_millis(opts.boot));
    if let Some(ms) = opts.ready_after {
        let watchdog = opts.watchdog_once;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let msg = if watchdog {
                "READY=1\nWATCHDOG=1\nSTATUS=serving"
            } else {
                "READY=1\nSTATUS=serving"
            };
            notify(msg);
        });
    }
    if let Some(ms) = opts.einhorn_ack_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let path = std::env::var("EINHORN_SOCK_PATH").unwrap_or_else(|_| die("no EINHORN_SOCK_PATH"));
            let mut s = std::os::unix::net::UnixStream::connect_addr(&unix_addr(&path))
                .unwrap_or_else(|e| die(&format!("einhorn: {e}")));
            let _ = writeln!(s, "{{\"command\":\"worker:ack\",\"pid\":{}}}", std::process::id());
        });
    }
    if opts.write_lines > 0 {
        let (n, bytes, rate) = (opts.write_lines, opts.line_bytes.max(100), opts.lines_per_sec);
        WRITER_ACTIVE.store(true, Ordering::SeqCst);
        if opts.serve {
            std::thread::spawn(move || write_lines(n, bytes, rate));
        } else {
            write_lines(n, bytes, rate);
        }
    }
    if let Some(code) = opts.exit {
        if let Some(ms) = opts.exit_after {
            std::thread::sleep(Duration::from_millis(ms));
        }
        std::process::exit(code);
    }
    if opts.say_usr1 {
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGUSR1]).unwrap_or_else(|_| die("signals"));
        std::thread::spawn(move || {
            for _ in signals.forever() {
                let _ = writeln!(std::io::stdout(), "worker {} got USR1", std::process::id());
            }
        });
    }
    RECYCLE_EVERY.store(opts.recycle_every, Ordering::SeqCst);
    if opts.serve {
        serve(&opts);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Send an sd_notify message to NOTIFY_SOCKET (`@name` is abstract).
fn notify(msg: &str) {
    let Ok(addr) = std::env::var("NOTIFY_SOCKET") else {
        die("no NOTIFY_SOCKET")
    };
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap_or_else(|_| die("socket"));
    sock.send_to_addr(msg.as_bytes(), &unix_addr(&addr))
        .unwrap_or_else(|e| die(&format!("notify: {e}")));
}

/// A unix socket address as systemd writes it: a path, or `@name` (abstract).
fn unix_addr(text: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    match text.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(text),
    }
    .unwrap_or_else(|_| die(&format!("bad socket address {text}")))
}

fn ignore(sig: libc::c_int) {
    // SAFETY: setting a disposition to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// fd number → what it points at, without the directory handle used to list.
fn list_fds() -> BTreeMap<i32, String> {
    let me = format!("/proc/{}/fd", std::process::id());
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .unwrap_or_else(|_| die("read /proc/self/fd"))
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if target == me || target.is_empty() {
            continue;
        }
        out.insert(fd, target);
    }
    out
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn sockopt(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> i32 {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of an int-sized option.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
    v
}

/// The inode of the socket at `fd` (0 if it cannot be read).
fn inode(fd: RawFd) -> u64 {
    // SAFETY: fstat writes one stat struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is only queried.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        st.st_ino
    } else {
        0
    }
}

fn write_report(dir: &str, fds: &BTreeMap<i32, String>, status: &str, grandchild: Option<u32>) {
    let listen_fds: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let sockets: Vec<serde_json::Value> = (3..3 + listen_fds)
        .map(|fd| {
            // SAFETY: F_GETFL only queries the descriptor.
            let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            serde_json::json!({
                "fd": fd,
                "domain": match sockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) {
                    libc::AF_INET => "inet", libc::AF_INET6 => "inet6", libc::AF_UNIX => "unix", _ => "other" },
                "type": match sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
                    libc::SOCK_STREAM => "stream", libc::SOCK_DGRAM => "dgram", _ => "other" },
                "listening": sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == 1,
                "inode": inode(fd),
                "nonblocking": fl >= 0 && fl & libc::O_NONBLOCK != 0,
            })
        })
        .collect();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let report = serde_json::json!({
        "pid": std::process::id(),
        // SAFETY: getppid and getpgrp have no preconditions.
        "ppid": unsafe { libc::getppid() },
        // SAFETY: as above.
        "pgid": unsafe { libc::getpgrp() },
        "fds": fds.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
                "uid": status_field(status, "Uid:").split_whitespace().next().unwrap_or("").to_string(),
        "gid": status_field(status, "Gid:").split_whitespace().next().unwrap_or("").to_string(),
        "groups": status_field(status, "Groups:"),
        "sig_blk": status_field(status, "SigBlk:"),
        "sig_ign": status_field(status, "SigIgn:"),
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "argv": std::env::args().collect::<Vec<_>>(),
        "env": env,
        "sockets": sockets,
        "grandchild": grandchild,
    });
    let pid = std::process::id();
    let tmp = format!("{dir}/.{pid}.tmp");
    std::fs::write(&tmp, report.to_string()).unwrap_or_else(|e| die(&format!("write report: {e}")));
    std::fs::rename(&tmp, format!("{dir}/{pid}.json")).unwrap_or_else(|e| die(&format!("rename report: {e}")));
}

fn answer(fd: RawFd) -> String {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let name = names.split(':').nth((fd - 3) as usize).unwrap_or("").to_string();
    serde_json::json!({
        "pid": std::process::id(),
        "slot": std::env::var("SUP_WORKER").ok().and_then(|v| v.parse::<u64>().ok()),
        "generation": std::env::var("SUP_GENERATION").ok().and_then(|v| v.parse::<u64>().ok()),
        "fd": fd,
        "name": name,
        "cwd": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
    })
    .to_string()
}

fn serve(opts: &Opts) {
    let pid = std::process::id();
    let ok_pid = std::env::var("LISTEN_PID").ok() == Some(pid.to_string());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !ok_pid || count == 0 {
        die(&format!(
            "no sockets for me: LISTEN_PID={:?}, pid {pid}",
            std::env::var("LISTEN_PID").ok()
        ));
    }
    // Before this process opens anything (the signal thread's socketpair
    // would land on a free fd 3): an fd that is not a listening or datagram
    // socket is a broken handover, and serving it would hang.
    for fd in 3..3 + count {
        let listening = sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == 1;
        let datagram = sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == libc::SOCK_DGRAM;
        if !listening && !datagram {
            die(&format!("fd {fd} is not a listening socket"));
        }
    }
    if !opts.ignore_term {
        // Registered here, before any request can be taken: registered in
        // the thread, a TERM that came before the thread ran (a loaded
        // machine) killed the worker with an answer in hand.
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM]).unwrap_or_else(|_| die("signals"));
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                finish_and_exit("exiting gracefully");
            }
        });
    }
    if let Some(ms) = opts.serve_for {
        let jitter = u64::from(pid) % (ms / 2 + 1);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms + jitter));
            finish_and_exit("served its time");
        });
    }
    let delay = Duration::from_millis(opts.delay_response);
    let grow = opts.grow_kb;
    let serial = opts.one_at_a_time;
    let mut handles = Vec::new();
    for fd in 3..3 + count {
        let stream = sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == libc::SOCK_STREAM;
        handles.push(std::thread::spawn(move || {
            if stream {
                accept_loop(fd, delay, grow, serial)
            } else {
                udp_loop(fd)
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}

/// Stop accepting, let every request in flight finish, say `worker <pid>
/// <what>` and exit 0.
fn finish_and_exit(what: &str) -> ! {
    TERMINATING.store(true, Ordering::SeqCst);
    // Every accept loop has stopped, having counted what it took.
    while ACCEPTORS.load(Ordering::SeqCst) > 0
        || IN_FLIGHT.load(Ordering::SeqCst) > 0
        || WRITER_ACTIVE.load(Ordering::SeqCst)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = writeln!(std::io::stdout(), "worker {} {what}", std::process::id());
    std::process::exit(0);
}

fn accept_loop(fd: RawFd, delay: Duration, grow_kb: usize, serial: bool) {
    ACCEPTORS.fetch_add(1, Ordering::SeqCst);
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: setting a timeval-sized option on our listening socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    loop {
        if TERMINATING.load(Ordering::SeqCst) {
            ACCEPTORS.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // SAFETY: fd is an inherited listening socket; null address pointers are allowed.
        let conn = unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        if conn < 0 {
            continue;
        }
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let handle = std::thread::spawn(move || {
            // SAFETY: conn is a fresh fd owned by this thread from here on.
            let mut s = unsafe { std::net::TcpStream::from_raw_fd(conn) };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = writeln!(std::io::stdout(), "worker {} request received", std::process::id());
            if grow_kb > 0 {
                // Written, so it is resident; never freed: the leak is the point.
                std::mem::forget(vec![1u8; grow_kb * 1024]);
            }
            std::thread::sleep(delay);
            let body = answer(fd);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.flush();
            drop(s);
            let every = RECYCLE_EVERY.load(Ordering::SeqCst);
            if every > 0 && (ANSWERED.fetch_add(1, Ordering::SeqCst) + 1).is_multiple_of(every) {
                notify("X_SUP_RECYCLE=1");
            }
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        });
        if serial {
            let _ = handle.join();
        }
    }
}

fn udp_loop(fd: RawFd) {
    // SAFETY: fd is an inherited datagram socket this thread serves for the process lifetime.
    let sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(answer(fd).as_bytes(), peer);
        }
    }
}

/// `--write-lines`: see the module's header. Stops early at a TERM (in
/// --serve mode), and says how many lines it wrote.
fn write_lines(n: u64, max_bytes: usize, per_sec: u64) {
    // Done, however it ends (a panic too): a TERM must not wait for it forever.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            WRITER_ACTIVE.store(false, Ordering::SeqCst);
        }
    }
    let _done = Done;
    let slot = std::env::var("SUP_WORKER").unwrap_or_default();
    let generation = std::env::var("SUP_GENERATION").unwrap_or_default();
    let pid = std::process::id();
    let start = std::time::Instant::now();
    let mut written = 0;
    for seq in 0..n {
        if TERMINATING.load(Ordering::SeqCst) {
            break;
        }
        if per_sec > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / per_sec as f64);
            let now = std::time::Instant::now();
            if due > now + Duration::from_millis(1) {
                std::thread::sleep(due - now);
            }
        }
        let room = max_bytes - 64;
        let len = if seq % 50 == 7 {
            room - (seq as usize % 97).min(room / 2)
        } else {
            10 + (seq as usize * 7919) % 110
        }
        .min(room);
        let payload: String = (0..len)
            .map(|i| (b'a' + ((seq as usize + i) % 26) as u8) as char)
            .collect();
        let line = format!(
            "L {slot} {generation} {pid} {seq} {len} {payload} {:08x}\n",
            fnv32(payload.as_bytes())
        );
        // One write_all each, under the stream's lock: the line is whole.
        let _ = if seq % 2 == 0 {
            std::io::stdout().lock().write_all(line.as_bytes())
        } else {
            std::io::stderr().lock().write_all(line.as_bytes())
        };
        written = seq + 1;
    }
    let _ = std::io::stdout().lock().flush();
    let _ = writeln!(std::io::stderr(), "worker {pid} wrote {written} lines");
}

/// FNV-1a, 32 bits: the lines' checksum.
fn fnv32(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

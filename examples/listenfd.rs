//! A Rust app under sup, using the `listenfd` crate (which reads
//! LISTEN_FDS/LISTEN_PID) and the `sd-notify` crate (READY=1 and STOPPING=1
//! on NOTIFY_SOCKET, which it reaches by path only; WATCHDOG=1 every half
//! `WATCHDOG_USEC` when `WATCHDOG_PID` is its own pid, as under
//! `sup --watchdog D`), with a graceful stop:
//! on TERM it stops accepting, finishes the request in hand, and exits. (A
//! server that simply dies on TERM resets the connection it was serving.)
//!
//!   cargo build --example listenfd
//!   sup --bind 127.0.0.1:8080 --workers 2 --ready notify -- target/debug/examples/listenfd

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn main() {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = match fds.take_tcp_listener(0) {
        Ok(Some(l)) => l,
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "listenfd: no socket was passed; run me under sup --bind ADDR"
            );
            std::process::exit(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    if signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).is_err() {
        std::process::exit(1);
    }
    // Non-blocking accept after poll: another worker may take a connection first.
    if listener.set_nonblocking(true).is_err() {
        std::process::exit(1);
    }
    // Serving from here on: tell the supervisor (a no-op without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        let _ = writeln!(std::io::stderr(), "listenfd: cannot notify readiness: {e}");
        std::process::exit(1);
    }
    // The crate checks WATCHDOG_PID against our own pid.
    let watchdog = sd_notify::watchdog_enabled();
    let mut pinged = std::time::Instant::now();
    let worker = std::env::var("SUP_WORKER").unwrap_or_default();
    let generation = std::env::var("SUP_GENERATION").unwrap_or_default();
    while !stop.load(Ordering::SeqCst) {
        if let Some(every) = watchdog
            && pinged.elapsed() >= every / 2
        {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            pinged = std::time::Instant::now();
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a signal interrupts it (EINTR) and the loop checks `stop`.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_nonblocking(false);
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        let body = format!(
            "hello from rust worker {worker} (pid {}, generation {generation})\n",
            std::process::id()
        );
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

//! `sup-load`: a load generator for the benchmarks and the systemd test. C
//! client threads each make fresh TCP connections (one HTTP/1.0 request
//! each) to ADDR for a duration; failures are counted by kind. A connection
//! that was never established fails as `refused`, `connect timeout`,
//! `connect reset` or `connect other`; one the server's kernel accepted and
//! then lost fails as `reset`, `timeout`, `empty reply` or `other`, and
//! those are also counted together as `failed_after_connect` (what a drained
//! stop must keep at 0). With `--windows FILE`, the benchmark script appends
//! `start end` lines (CLOCK_MONOTONIC seconds) for its restart windows, and
//! latencies are split into inside and outside them. With `--until FILE`,
//! the clients stop when FILE exists (`--seconds` is then an upper bound).
//! With `--pause MS`, each client waits MS between requests: a steady load
//! that leaves the cores to whatever else the test runs (a deploy tool).
//! Prints one JSON line; `longest_ms` is the longest successful request.
//!
//!   sup-load --addr 127.0.0.1:8080 --clients 8 --seconds 10 [--windows FILE] [--until FILE] [--pause MS]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The kinds of failure that happen after the connection was established.
const AFTER_CONNECT: [&str; 4] = ["reset", "timeout", "empty reply", "other"];

fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn one(addr: SocketAddr) -> Result<(), &'static str> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "connect timeout",
        ErrorKind::ConnectionReset => "connect reset",
        _ => "connect other",
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(|_| "reset")?;
    let mut buf = Vec::with_capacity(512);
    match s.read_to_end(&mut buf) {
        Ok(_) if buf.starts_with(b"HTTP/1.") && buf.windows(3).any(|w| w == b"200") => Ok(()),
        Ok(_) if buf.is_empty() => Err("empty reply"),
        Ok(_) => Err("other"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Err("reset"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err("timeout"),
        Err(_) => Err("other"),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64) as usize;
    sorted[i.min(sorted.len() - 1)] * 1000.0
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({
        "n": v.len(),
        "p50_ms": (pct(&v, 50.0) * 100.0).round() / 100.0,
        "p99_ms": (pct(&v, 99.0) * 100.0).round() / 100.0,
        "max_ms": (v.last().copied().unwrap_or(0.0) * 100_000.0).round() / 100.0,
    })
}

fn main() {
    let mut addr = None;
    let (mut clients, mut seconds, mut windows, mut until, mut pause) = (4usize, 10f64, None, None, 0u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--addr" => addr = v.parse::<SocketAddr>().ok(),
            "--clients" => clients = v.parse().unwrap_or(4),
            "--seconds" => seconds = v.parse().unwrap_or(10.0),
            "--windows" => windows = Some(v),
            "--until" => until = Some(v),
            "--pause" => pause = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    let Some(addr) = addr else {
        let _ = writeln!(
            std::io::stderr(),
            "usage: sup-load --addr HOST:PORT [--clients C] [--seconds S] [--windows FILE] [--until FILE] [--pause MS]"
        );
        std::process::exit(2);
    };
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let done = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while Instant::now() < end && !done.load(Ordering::Relaxed) {
                    let t0 = monotonic();
                    let r = one(addr);
                    samples.push((t0, monotonic() - t0, r));
                    if pause > 0 {
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                }
                samples
            })
        })
        .collect();
    if let Some(until) = until {
        while Instant::now() < end && !std::path::Path::new(&until).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
    }
    let samples: Vec<(f64, f64, Result<(), &str>)> =
        threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
    let windows: Vec<(f64, f64)> = windows
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some((it.next()??, it.next()??))
        })
        .collect();
    let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for (t0, d, r) in &samples {
        match r {
            Ok(()) => {
                if windows.iter().any(|(a, b)| (*a..=*b).contains(t0)) {
                    inside.push(*d);
                } else {
                    outside.push(*d);
                }
            }
            Err(kind) => *failures.entry(kind).or_default() += 1,
        }
    }
    let ok = inside.len() + outside.len();
    let longest = inside.iter().chain(&outside).fold(0f64, |a, b| a.max(*b));
    let after_connect: usize = AFTER_CONNECT.iter().filter_map(|k| failures.get(k)).sum();
    let elapsed = started.elapsed().as_secs_f64().min(seconds);
    let report = serde_json::json!({
        "requests": samples.len(),
        "ok": ok,
        "failed": samples.len() - ok,
        "failed_after_connect": after_connect,
        "failures": failures,
        "longest_ms": (longest * 100_000.0).round() / 100.0,
        "requests_per_second": (ok as f64 / elapsed.max(1e-3)).round(),
        "inside_restarts": summary(inside),
        "outside_restarts": summary(outside),
    });
    let _ = writeln!(std::io::stdout(), "{report}");
}

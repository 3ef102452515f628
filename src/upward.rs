//! sd_notify to sup's own supervisor (systemd's `NOTIFY_SOCKET`).
//!
//! `READY=1` once every worker is ready, `RELOADING=1` with
//! `MONOTONIC_USEC` when a restart begins (so `Type=notify-reload` units
//! work: systemd 257+ waits forever without it) and `READY=1` when it ends,
//! `STOPPING=1`, `STATUS=`, and `WATCHDOG=1` when `WATCHDOG_USEC` asks for
//! it. The core decides when; this module only sends. sup's pid never
//! changes (a hot restart re-executes in place), so `MAINPID` stays true.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::core::Upward;

pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, if sup was given one.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty())?;
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name).ok()?,
            None => SocketAddr::from_pathname(&path).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier { sock, addr })
    }

    pub fn send(&self, what: &Upward) {
        let text = match what {
            Upward::Ready => "READY=1".to_string(),
            Upward::Reloading => format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
            Upward::Stopping => "STOPPING=1".to_string(),
            Upward::Status(s) => format!("STATUS={s}"),
            Upward::Watchdog => "WATCHDOG=1".to_string(),
        };
        if let Err(e) = self.sock.send_to_addr(text.as_bytes(), &self.addr) {
            log::debug!("cannot notify sup's supervisor: {e}");
        }
    }
}

/// Half of `WATCHDOG_USEC`, when it is meant for sup (`WATCHDOG_PID` unset
/// or sup's pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

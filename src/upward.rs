//! sd_notify to sup's own supervisor (systemd's `NOTIFY_SOCKET`).
//!
//! `READY=1` once every worker is ready, `RELOADING=1` with
//! `MONOTONIC_USEC` when a restart begins (so `Type=notify-reload` units
//! work: systemd 257+ waits forever without it) and `READY=1` when it ends,
//! `STOPPING=1`, `STATUS=`, and `WATCHDOG=1` when `WATCHDOG_USEC` asks for
//! it. The core decides when; this module only sends. sup's pid never
//! changes (a hot restart re-executes in place), so `MAINPID` stays true.
//!
//! The fd store: sup hands its listening sockets to systemd (`FDSTORE=1`
//! with `FDNAME=` and the fd as `SCM_RIGHTS`), which keeps them across a
//! `systemctl restart` or a crash of sup and passes them back to the next
//! sup as `LISTEN_FDS`/`LISTEN_FDNAMES`: connections wait in the kernel's
//! queue meanwhile instead of being refused. systemd drops a duplicate
//! (the same socket sent again, after a hot restart) by itself.

use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr};

use crate::core::Upward;

pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// The same address, for `sendmsg` with file descriptors.
    raw_addr: Option<UnixAddr>,
}

/// The name of the control socket in systemd's fd store (bind names are
/// the binds' own).
pub const CONTROL_FDNAME: &str = "sup-control";

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, if sup was given one.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty())?;
        let (addr, raw_addr) = match path.strip_prefix('@') {
            Some(name) => (
                SocketAddr::from_abstract_name(name).ok()?,
                UnixAddr::new_abstract(name.as_bytes()).ok(),
            ),
            None => (
                SocketAddr::from_pathname(&path).ok()?,
                UnixAddr::new(path.as_str()).ok(),
            ),
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier { sock, addr, raw_addr })
    }

    /// Hand `fd` to systemd's fd store under `name`.
    pub fn store(&self, name: &str, fd: RawFd) -> std::io::Result<()> {
        let text = format!("FDSTORE=1\nFDNAME={name}");
        let fds = [fd];
        let cmsgs = [ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(text.as_bytes())];
        let addr = self
            .raw_addr
            .as_ref()
            .ok_or_else(|| std::io::Error::other("unusable NOTIFY_SOCKET"))?;
        nix::sys::socket::sendmsg(self.sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), Some(addr))
            .map(|_| ())
            .map_err(std::io::Error::from)
    }

    /// Take what is stored under `name` out of systemd's fd store (a bind
    /// the configuration no longer has, or a socket sup did not take).
    pub fn unstore(&self, name: &str) -> std::io::Result<()> {
        let text = format!("FDSTOREREMOVE=1\nFDNAME={name}");
        self.sock.send_to_addr(text.as_bytes(), &self.addr).map(|_| ())
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

/// Whether sup hands its sockets to its supervisor's fd store: it runs
/// under a service manager (`NOTIFY_SOCKET` is set).
pub fn fd_store_in_use() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Whether systemd is restarting the unit sup runs as (a `systemctl
/// restart`, a `try-restart` at a package upgrade): its job for the unit,
/// named by sup's control group, is a restart. systemd 252 tells a service
/// nothing of the kind, so sup asks `systemctl list-jobs`; anything else,
/// or no answer, is a stop.
pub fn unit_restarting() -> bool {
    let Some(unit) = own_unit() else { return false };
    let Ok(out) = std::process::Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--no-pager", "--plain", &unit])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.get(1) == Some(&unit.as_str()) && cols.get(2).is_some_and(|t| t.contains("restart"))
    })
}

/// The service unit sup runs in, from its control group (`…/sup@web.service`).
fn own_unit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .filter_map(|l| l.rsplit(':').next())
        .flat_map(|path| path.rsplit('/'))
        .find(|c| c.ends_with(".service"))
        .map(str::to_string)
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

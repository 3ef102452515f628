//! What one sup image hands the next across a hot restart's `execve`.
//!
//! The state travels in one versioned environment variable, `SUP_HANDOFF`
//! (JSON): the generation to start, the program to re-resolve, when the
//! restart began, and each listening socket by fd, address and name — so
//! the new image matches sockets to its `--bind` entries by address, never
//! by position. Workers never see the variable (spawn strips it). Inherited
//! fds are validated before they are trusted: a socket, of the kind and
//! family its address says.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::SockType;
use serde::{Deserialize, Serialize};

use crate::worker::{Lingering, Pgid, Worker, WorkerState};

pub const VAR: &str = "SUP_HANDOFF";
/// Fields added since version 1 are optional, so a newer sup still adopts
/// what an older one hands over (an upgrade of sup by hot restart).
const VERSION: u64 = 1;

/// One listening socket handed across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedSocket {
    pub fd: RawFd,
    /// The configured address (`BindAddr` display form, e.g. `tcp://127.0.0.1:0`).
    pub addr: String,
    pub name: String,
    /// The unix socket file sup created: (path, device, inode).
    #[serde(default)]
    pub created: Option<(PathBuf, u64, u64)>,
}

/// One of sup's own unix sockets (notify, Einhorn) handed across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedUnix {
    pub fd: RawFd,
    /// The path, or `@name` for an abstract address.
    pub addr: String,
}

/// The control server's listener handed across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedControl {
    pub fd: RawFd,
    /// `--control` as configured (matched against the new configuration).
    pub configured: String,
    /// The unix socket file sup created: (path, device, inode).
    pub created: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub version: u64,
    /// The restart's number, so `sup ctl --wait` can follow it across the exec.
    #[serde(default)]
    pub restart_id: u64,
    pub generation: u64,
    /// How sup was started (argv[0] made absolute, or a bare name for PATH).
    pub exe: String,
    /// Wall-clock milliseconds since the epoch when the restart was asked for.
    #[serde(default)]
    pub started_ms: u64,
    /// The directory the first sup image started in: relative pidfile, log
    /// file and socket paths stay anchored there across restarts.
    pub origin: PathBuf,
    pub sockets: Vec<HandedSocket>,
    /// sup's private runtime directory, if it has one.
    #[serde(default)]
    pub runtime_dir: Option<PathBuf>,
    #[serde(default)]
    pub notify: Option<HandedUnix>,
    #[serde(default)]
    pub einhorn: Option<HandedUnix>,
    #[serde(default)]
    pub control: Option<HandedControl>,
    /// Overlap and reexec: the restart's kind and the workers the next image
    /// adopts (they keep running across the exec). None: stop mode, where
    /// every worker is gone before the exec.
    #[serde(default)]
    pub kind: Option<crate::core::RestartKind>,
    #[serde(default)]
    pub workers: Option<Vec<HandedWorker>>,
    #[serde(default)]
    pub lingering: Vec<HandedLingering>,
    /// A restart requested while this one ran; the new image runs it next.
    #[serde(default)]
    pub pending: Option<crate::core::RestartKind>,
    /// The worker count at the exec and what the configuration said then:
    /// a count changed at runtime (TTIN, TTOU, `sup ctl workers`) survives
    /// unless the new configuration changes it.
    #[serde(default)]
    pub workers_target: Option<(usize, usize)>,
    /// What `/metrics` has counted so far.
    #[serde(default)]
    pub counters: Option<crate::core::Counters>,
}

/// A worker handed across the exec. Instants do not cross an exec: every
/// time is in milliseconds relative to the moment of the handoff (negative
/// in the past).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedWorker {
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub spawned_ms: i64,
    pub state: HandedState,
    pub status: Option<String>,
    pub watchdog_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HandedState {
    Booting {
        ready_at_ms: Option<i64>,
        boot_deadline_ms: i64,
    },
    Ready {
        since_ms: i64,
    },
    Stopping {
        kill_at_ms: i64,
        killed: bool,
    },
}

/// A process group whose leader is gone and whose members are awaited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedLingering {
    pub pgid: i32,
    pub slot: usize,
    pub kill_at_ms: i64,
}

fn rel(at: Instant, now: Instant) -> i64 {
    match at.checked_duration_since(now) {
        Some(ahead) => ahead.as_millis() as i64,
        None => -(now.saturating_duration_since(at).as_millis() as i64),
    }
}

fn abs(ms: i64, now: Instant) -> Instant {
    if ms >= 0 {
        now + Duration::from_millis(ms as u64)
    } else {
        now.checked_sub(Duration::from_millis(ms.unsigned_abs())).unwrap_or(now)
    }
}

impl HandedWorker {
    pub fn from_worker(w: &Worker, now: Instant) -> HandedWorker {
        HandedWorker {
            pid: w.pid,
            slot: w.slot,
            generation: w.generation,
            spawned_ms: rel(w.spawned_at, now),
            state: match w.state {
                WorkerState::Booting {
                    ready_at,
                    boot_deadline,
                } => HandedState::Booting {
                    ready_at_ms: ready_at.map(|r| rel(r, now)),
                    boot_deadline_ms: rel(boot_deadline, now),
                },
                WorkerState::Ready { since } => HandedState::Ready {
                    since_ms: rel(since, now),
                },
                WorkerState::Stopping { kill_at, killed } => HandedState::Stopping {
                    kill_at_ms: rel(kill_at, now),
                    killed,
                },
            },
            status: w.status.clone(),
            watchdog_ms: w.watchdog_deadline.map(|d| rel(d, now)),
        }
    }

    pub fn to_worker(&self, now: Instant) -> Worker {
        Worker {
            slot: self.slot,
            generation: self.generation,
            pid: self.pid,
            spawned_at: abs(self.spawned_ms, now),
            state: match self.state {
                HandedState::Booting {
                    ready_at_ms,
                    boot_deadline_ms,
                } => WorkerState::Booting {
                    ready_at: ready_at_ms.map(|r| abs(r, now)),
                    boot_deadline: abs(boot_deadline_ms, now),
                },
                HandedState::Ready { since_ms } => WorkerState::Ready {
                    since: abs(since_ms, now),
                },
                HandedState::Stopping { kill_at_ms, killed } => WorkerState::Stopping {
                    kill_at: abs(kill_at_ms, now),
                    killed,
                },
            },
            status: self.status.clone(),
            watchdog_deadline: self.watchdog_ms.map(|d| abs(d, now)),
            memory: None,
            over_memory: 0,
        }
    }
}

impl HandedLingering {
    pub fn from_lingering(l: &Lingering, now: Instant) -> HandedLingering {
        HandedLingering {
            pgid: l.pgid.raw(),
            slot: l.slot,
            kill_at_ms: rel(l.kill_at, now),
        }
    }

    pub fn to_lingering(&self, now: Instant) -> Lingering {
        Lingering {
            pgid: Pgid::led_by(self.pgid),
            slot: self.slot,
            kill_at: abs(self.kill_at_ms, now),
        }
    }
}

impl Handoff {
    pub fn new(generation: u64, exe: String, origin: PathBuf) -> Handoff {
        Handoff {
            version: VERSION,
            restart_id: 0,
            generation,
            exe,
            started_ms: 0,
            origin,
            sockets: Vec::new(),
            runtime_dir: None,
            notify: None,
            einhorn: None,
            control: None,
            kind: None,
            workers: None,
            lingering: Vec::new(),
            pending: None,
            workers_target: None,
            counters: None,
        }
    }

    pub fn encode(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<Handoff, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let v: Version = serde_json::from_str(text).map_err(|e| format!("not JSON with a version: {e}"))?;
        if v.version != VERSION {
            return Err(format!("version {} is not understood (expected {VERSION})", v.version));
        }
        let h: Handoff = serde_json::from_str(text).map_err(|e| format!("malformed: {e}"))?;
        if h.fds().iter().any(|fd| *fd <= 2) {
            return Err("bad fd".into());
        }
        Ok(h)
    }

    /// The handoff this image was started with, if any.
    pub fn from_env() -> Option<Result<Handoff, String>> {
        let text = std::env::var(VAR).ok()?;
        Some(Handoff::decode(&text))
    }

    /// Every fd it hands over.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.fd).collect();
        fds.extend(self.notify.iter().chain(&self.einhorn).map(|u| u.fd));
        fds.extend(self.control.iter().map(|c| c.fd));
        fds
    }
}

/// What an fd sup did not open itself is, after checking that it is an
/// open socket: its type and address family. The one place every inherited
/// fd is looked at (hot-restart handoff, socket activation).
pub fn inspect_socket(fd: RawFd, what: &str) -> Result<(SockType, i32), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    // SAFETY: fstat on a number; an invalid fd is reported as EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!("fd {fd} for {what} is not open"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("fd {fd} for {what} is not a socket"));
    }
    // SAFETY: the fd is open (fstat succeeded) and stays open for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&borrowed, sockopt::SockType).map_err(|e| format!("fd {fd}: {e}"))?;
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reading an int-sized option into `domain`.
    if unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(format!("fd {fd}: cannot read its address family"));
    }
    Ok((ty, domain))
}

/// Check that a handed or inherited fd is an open socket of type `ty` and
/// one of `domains`.
pub fn check_socket(fd: RawFd, ty: SockType, domains: &[i32], what: &str) -> Result<(), String> {
    let (got_ty, domain) = inspect_socket(fd, what)?;
    if got_ty != ty || !domains.contains(&domain) {
        return Err(format!("fd {fd} is not a socket of the kind {what} needs"));
    }
    Ok(())
}

/// Own `fd` from here on, CLOEXEC again (it was cleared for the exec).
fn own(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: the caller checked that the fd is open, and it was handed to
    // this image for sup alone: nothing else in the process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("fd {}: {e}", owned.as_raw_fd()))?;
    Ok(owned)
}

/// Take ownership of a handed listener after checking it is what the
/// handoff says: stream for tcp/unix or datagram for udp, of the right
/// address family.
pub fn adopt(s: &HandedSocket) -> Result<OwnedFd, String> {
    let (ty, domains): (SockType, &[i32]) = if s.addr.starts_with("udp://") {
        (SockType::Datagram, &[libc::AF_INET, libc::AF_INET6])
    } else if s.addr.starts_with("unix:") {
        (SockType::Stream, &[libc::AF_UNIX])
    } else {
        (SockType::Stream, &[libc::AF_INET, libc::AF_INET6])
    };
    check_socket(s.fd, ty, domains, &s.addr).inspect_err(|_| close(s.fd))?;
    own(s.fd)
}

/// Take ownership of one of sup's own unix sockets after checking its type
/// and that it is bound where the handoff says. On error the fd is closed.
pub fn adopt_unix(h: &HandedUnix, ty: SockType) -> Result<OwnedFd, String> {
    let checked = check_socket(h.fd, ty, &[libc::AF_UNIX], &h.addr).and_then(|()| {
        let bound: nix::sys::socket::UnixAddr =
            nix::sys::socket::getsockname(h.fd).map_err(|e| format!("fd {}: {e}", h.fd))?;
        if crate::runtime_dir::UnixName::parse(&h.addr).is(&bound) {
            Ok(())
        } else {
            Err(format!("fd {} is not bound to {}", h.fd, h.addr))
        }
    });
    checked.inspect_err(|_| close(h.fd))?;
    own(h.fd)
}

/// Close a handed fd that this image does not adopt (the configuration no
/// longer asks for it, or it failed its checks).
pub fn close(fd: RawFd) {
    // SAFETY: an fd named in the handoff, which nothing in this image owns;
    // closing a number that is not open is a harmless EBADF.
    unsafe { libc::close(fd) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_worker_ever_sees_the_handoff() {
        assert!(crate::command::STRIPPED.contains(&VAR));
    }

    #[test]
    fn round_trips() {
        let h = Handoff {
            version: VERSION,
            restart_id: 3,
            generation: 7,
            exe: "/usr/local/bin/sup".into(),
            started_ms: 1_700_000_000_000,
            origin: "/srv/app".into(),
            runtime_dir: Some("/run/sup.x1y2z3".into()),
            notify: Some(HandedUnix {
                fd: 7,
                addr: "/run/sup.x1y2z3/notify".into(),
            }),
            einhorn: None,
            control: Some(HandedControl {
                fd: 8,
                configured: "unix:/run/app/sup.sock".into(),
                created: Some(("/run/app/sup.sock".into(), 64769, 99)),
            }),
            kind: Some(crate::core::RestartKind::Hot),
            workers: Some(vec![HandedWorker {
                pid: 4121,
                slot: 0,
                generation: 6,
                spawned_ms: -5_000,
                state: HandedState::Booting {
                    ready_at_ms: Some(250),
                    boot_deadline_ms: 55_000,
                },
                status: Some("booting".into()),
                watchdog_ms: None,
            }]),
            lingering: vec![HandedLingering {
                pgid: 4000,
                slot: 1,
                kill_at_ms: 12_000,
            }],
            pending: Some(crate::core::RestartKind::Rolling),
            workers_target: Some((5, 2)),
            counters: Some(crate::core::Counters::default()),
            sockets: vec![
                HandedSocket {
                    fd: 5,
                    addr: "tcp://127.0.0.1:0".into(),
                    name: "web".into(),
                    created: None,
                },
                HandedSocket {
                    fd: 6,
                    addr: "unix:/tmp/a.sock".into(),
                    name: "admin".into(),
                    created: Some(("/tmp/a.sock".into(), 64769, 1234)),
                },
            ],
        };
        assert_eq!(Handoff::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.fds(), vec![5, 6, 7, 8]);
    }

    #[test]
    fn a_worker_crosses_with_its_deadlines_as_time_left() {
        let now = Instant::now();
        let w = Worker {
            slot: 2,
            generation: 3,
            pid: 77,
            spawned_at: now.checked_sub(Duration::from_secs(4)).unwrap(),
            state: WorkerState::Stopping {
                kill_at: now + Duration::from_secs(9),
                killed: false,
            },
            status: Some("draining".into()),
            watchdog_deadline: Some(now + Duration::from_millis(1500)),
            memory: None,
            over_memory: 0,
        };
        let handed = HandedWorker::from_worker(&w, now);
        assert_eq!((handed.spawned_ms, handed.watchdog_ms), (-4_000, Some(1_500)));
        let later = now + Duration::from_secs(1);
        let back = handed.to_worker(later);
        assert_eq!(
            back.state,
            WorkerState::Stopping {
                kill_at: later + Duration::from_secs(9),
                killed: false
            }
        );
        assert_eq!(back.spawned_at, later.checked_sub(Duration::from_secs(4)).unwrap());
        assert_eq!(
            (back.pid, back.slot, back.generation, back.status),
            (77, 2, 3, w.status)
        );
    }

    #[test]
    fn reads_what_the_previous_version_wrote() {
        // A sup from before the notify socket was handed over: upgrading sup
        // by hot restart must still adopt its listeners.
        let old = r#"{"version":1,"restart_id":2,"generation":3,"exe":"/usr/bin/sup","started_ms":5,"origin":"/srv","sockets":[{"fd":3,"addr":"tcp://127.0.0.1:0","name":"web","created":null}]}"#;
        let h = Handoff::decode(old).unwrap();
        assert_eq!((h.generation, h.sockets.len(), h.notify.clone()), (3, 1, None));
        assert_eq!(h.fds(), vec![3]);
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(Handoff::decode("nope").unwrap_err().contains("not JSON"));
        let low_notify =
            r#"{"version":1,"generation":1,"exe":"sup","origin":"/","sockets":[],"notify":{"fd":2,"addr":"@x"}}"#;
        assert_eq!(Handoff::decode(low_notify).unwrap_err(), "bad fd");
        assert!(Handoff::decode(r#"{"version":2}"#).unwrap_err().contains("version 2"));
        let bad_fd =
            r#"{"version":1,"generation":1,"exe":"sup","origin":"/","sockets":[{"fd":1,"addr":"tcp://x","name":"n"}]}"#;
        assert_eq!(Handoff::decode(bad_fd).unwrap_err(), "bad fd");
    }

    #[test]
    fn adopt_checks_the_fd() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = nix::unistd::dup(&l).unwrap();
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        let wrong = HandedSocket {
            fd: raw,
            addr: "udp://127.0.0.1:0".into(),
            name: "x".into(),
            created: None,
        };
        assert!(adopt(&wrong).unwrap_err().contains("not a socket of the kind"));
        // A failed adoption closes the fd: hand it over as a bare number.
        let file = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let raw_file = file.as_raw_fd();
        std::mem::forget(file);
        let not_sock = HandedSocket {
            fd: raw_file,
            addr: "tcp://127.0.0.1:0".into(),
            name: "x".into(),
            created: None,
        };
        assert!(adopt(&not_sock).unwrap_err().contains("is not a socket"));
    }
}

//! What one sup image hands the next across a hot restart's `execve`.
//!
//! The state travels in one versioned environment variable, `SUP_HANDOFF`
//! (JSON): the program to re-resolve, each listening socket by fd, address
//! and name — so the new image matches sockets to its `--bind` entries by
//! address, never by position —, sup's own sockets, and the core's
//! [`Snapshot`] (workers, slots, the restart, counters), written by one
//! function (`Core::snapshot`) and read by one (`Core::restore`). Workers never see the variable (spawn strips it). Inherited
//! fds are validated before they are trusted: a socket, of the kind and
//! family its address says.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::SockType;
use serde::{Deserialize, Serialize};

use crate::core::Snapshot;
use crate::output::HandedOutput;

pub const VAR: &str = "SUP_HANDOFF";
/// Version 2 carries the core's snapshot; version 1 (sup 0.1 before it) is
/// still read, so upgrading sup by a hot restart adopts the old image.
const VERSION: u64 = 2;

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
    /// How sup was started (argv[0] made absolute, or a bare name for PATH).
    pub exe: String,
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
    #[serde(default)]
    pub worker_output: Option<HandedOutput>,
    /// Everything the core carries: workers, slots, the restart in
    /// progress, counters, the worker count (`Core::snapshot`).
    pub core: Snapshot,
    /// `--ready fd:N`: the readiness pipes of workers still booting, by
    /// worker pid.
    #[serde(default)]
    pub ready_pipes: Vec<(RawFd, crate::pid::Pid)>,
    /// Each recent generation's preparation, pinned (what a rollback runs).
    #[serde(default)]
    pub pins: crate::command::Pins,
    /// `--balance reuseport`: each bind's per-slot sockets.
    #[serde(default)]
    pub slot_sockets: Vec<HandedSlots>,
}

/// One bind's per-slot sockets (slot 0's is the bind's own socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedSlots {
    /// The bind's name.
    pub name: String,
    /// Slot k's socket at `fds[k - 1]`.
    pub fds: Vec<RawFd>,
}

impl HandedSlots {
    /// Close them all (nothing adopts them).
    pub fn close(self) {
        for fd in self.fds {
            close(fd);
        }
    }

    /// Take them after checking that each is a TCP listener on `local`; on
    /// any failure every one is closed.
    pub fn adopt(self, local: &std::net::SocketAddr) -> Result<Vec<OwnedFd>, FdError> {
        let mut owned = Vec::new();
        let mut fds = self.fds.into_iter();
        for fd in fds.by_ref() {
            let checked = check_socket(fd, SockType::Stream, &[libc::AF_INET, libc::AF_INET6], "a slot socket")
                .and_then(|()| {
                    let addr: nix::sys::socket::SockaddrStorage =
                        nix::sys::socket::getsockname(fd).map_err(|source| FdError::Os { fd, source })?;
                    let same = match local {
                        std::net::SocketAddr::V4(a) => addr.as_sockaddr_in().is_some_and(|b| *a == (*b).into()),
                        std::net::SocketAddr::V6(a) => addr.as_sockaddr_in6().is_some_and(|b| *a == (*b).into()),
                    };
                    if same {
                        Ok(())
                    } else {
                        Err(FdError::NotBound {
                            fd,
                            addr: local.to_string(),
                        })
                    }
                });
            // `own` closes the fd itself when it fails.
            let taken = checked.inspect_err(|_| close(fd)).and_then(|()| own(fd));
            match taken {
                Ok(o) => owned.push(o),
                Err(e) => {
                    for rest in fds {
                        close(rest);
                    }
                    return Err(e);
                }
            }
        }
        Ok(owned)
    }
}

impl Handoff {
    pub fn new(exe: String, origin: PathBuf, core: Snapshot) -> Handoff {
        Handoff {
            version: VERSION,
            exe,
            origin,
            sockets: Vec::new(),
            runtime_dir: None,
            notify: None,
            einhorn: None,
            control: None,
            worker_output: None,
            core,
            ready_pipes: Vec::new(),
            pins: Default::default(),
            slot_sockets: Vec::new(),
        }
    }

    pub fn encode(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<Handoff, HandoffError> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let v: Version = serde_json::from_str(text).map_err(|e| HandoffError::NotJson(e.to_string()))?;
        let h: Handoff = match v.version {
            VERSION => serde_json::from_str(text).map_err(|e| HandoffError::Malformed(e.to_string()))?,
            1 => v1::read(text).map_err(|e| HandoffError::Malformed(e.to_string()))?,
            other => return Err(HandoffError::Version(other)),
        };
        if let Some(fd) = h.fds().into_iter().find(|fd| *fd <= 2) {
            return Err(HandoffError::BadFd(fd));
        }
        Ok(h)
    }

    /// The handoff this image was started with, if any.
    pub fn from_env() -> Option<Result<Handoff, HandoffError>> {
        let text = std::env::var(VAR).ok()?;
        Some(Handoff::decode(&text))
    }

    /// Every fd it hands over.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.fd).collect();
        fds.extend(self.notify.iter().chain(&self.einhorn).map(|u| u.fd));
        fds.extend(self.control.iter().map(|c| c.fd));
        fds.extend(self.ready_pipes.iter().map(|(fd, _)| *fd));
        fds.extend(self.slot_sockets.iter().flat_map(|g| g.fds.iter().copied()));
        if let Some(o) = &self.worker_output {
            fds.extend(o.pipes.iter().map(|p| p.fd));
            fds.extend(o.spill);
        }
        fds
    }
}

/// Why a handoff cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    #[error("not JSON with a version: {0}")]
    NotJson(String),
    #[error("version {0} is not understood (expected {VERSION} or 1)")]
    Version(u64),
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("fd {0} is one of stdin, stdout and stderr")]
    BadFd(RawFd),
}

/// The handoff of sup 0.1 before the core's snapshot (version 1): its
/// sockets, and whatever of its core state maps onto a snapshot, so that
/// upgrading sup by a hot restart adopts the old image's sockets and workers.
mod v1 {
    use serde::Deserialize;

    use super::{HandedControl, HandedSocket, HandedUnix, Handoff, VERSION};
    use crate::core::RestartKind;
    use crate::core::snapshot::{PhaseSnap, RestartSnap, SlotSnap, Snapshot, StateSnap, WorkerSnap};
    use crate::pid::{Pgid, Pid};

    #[derive(Deserialize)]
    struct V1 {
        #[serde(default)]
        restart_id: u64,
        #[serde(default)]
        started_ms: u64,
        generation: u64,
        exe: String,
        origin: std::path::PathBuf,
        sockets: Vec<HandedSocket>,
        #[serde(default)]
        runtime_dir: Option<std::path::PathBuf>,
        #[serde(default)]
        notify: Option<HandedUnix>,
        #[serde(default)]
        einhorn: Option<HandedUnix>,
        #[serde(default)]
        control: Option<HandedControl>,
        #[serde(default)]
        kind: Option<RestartKind>,
        #[serde(default)]
        workers: Option<Vec<Worker>>,
        #[serde(default)]
        lingering: Vec<Lingering>,
        #[serde(default)]
        pending: Option<RestartKind>,
        #[serde(default)]
        workers_target: Option<(usize, usize)>,
        #[serde(default)]
        counters: Option<serde_json::Value>,
    }

    #[derive(Deserialize)]
    struct Worker {
        pid: i32,
        slot: usize,
        generation: u64,
        spawned_ms: i64,
        state: State,
        status: Option<String>,
        watchdog_ms: Option<i64>,
    }

    #[derive(Deserialize)]
    #[serde(tag = "state", rename_all = "snake_case")]
    enum State {
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

    #[derive(Deserialize)]
    struct Lingering {
        pgid: i32,
        slot: usize,
        kill_at_ms: i64,
    }

    pub fn read(text: &str) -> Result<Handoff, serde_json::Error> {
        let old: V1 = serde_json::from_str(text)?;
        let adopt = old.workers.is_some();
        // Version 1 handed the workers relative to the exec, and the
        // generation to start (stop mode) or to adopt at (overlap).
        let workers: Vec<WorkerSnap> = old
            .workers
            .unwrap_or_default()
            .into_iter()
            .map(|w| WorkerSnap {
                pid: Pid::from_raw(w.pid),
                slot: w.slot,
                generation: w.generation,
                spawned: w.spawned_ms,
                state: match w.state {
                    State::Booting {
                        ready_at_ms,
                        boot_deadline_ms,
                    } => StateSnap::Booting {
                        ready_at: ready_at_ms,
                        boot_deadline: boot_deadline_ms,
                    },
                    State::Ready { since_ms } => StateSnap::Ready { since: since_ms },
                    State::Stopping { kill_at_ms, killed } => StateSnap::Stopping {
                        kill_at: kill_at_ms,
                        killed,
                        dumped: false,
                    },
                },
                status: w.status,
                watchdog: w.watchdog_ms,
                memory: None,
                over_memory: 0,
                age_due: false,
                recycle_asked: false,
            })
            .collect();
        let (target, configured) = old.workers_target.unwrap_or((0, 0));
        // Its times were relative to the exec, which is about now.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let core = Snapshot {
            taken_ms: now_ms,
            generation: old.generation,
            target,
            configured,
            slots: Vec::<SlotSnap>::new(),
            workers,
            lingering: old
                .lingering
                .into_iter()
                .map(|l| crate::core::snapshot::LingeringSnap {
                    pgid: Pgid::from_raw(l.pgid),
                    slot: l.slot,
                    kill_at: l.kill_at_ms,
                })
                .collect(),
            restart: Some(RestartSnap {
                id: old.restart_id,
                kind: old.kind.unwrap_or(RestartKind::Hot),
                started: -(now_ms.saturating_sub(old.started_ms).min(i64::MAX as u64) as i64),
                phase: PhaseSnap::Exec { adopt },
                plan: Default::default(),
            }),
            parked: None,
            rollback_target: None,
            refill: None,
            pending: old.pending,
            last_restart: None,
            restarts_begun: old.restart_id,
            ready_announced: false,
            // Its counters were keyed by strings: they start again.
            counters: {
                let _ = old.counters;
                crate::core::Counters::default()
            },
            recycling: Vec::new(),
            recycle_after: Vec::new(),
        };
        Ok(Handoff {
            version: VERSION,
            exe: old.exe,
            origin: old.origin,
            sockets: old.sockets,
            runtime_dir: old.runtime_dir,
            notify: old.notify,
            einhorn: old.einhorn,
            control: old.control,
            worker_output: None,
            core,
            ready_pipes: Vec::new(),
            pins: Default::default(),
            slot_sockets: Vec::new(),
        })
    }
}

/// Why a handed or inherited fd is not taken.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("fd {fd} for {what} is not open")]
    NotOpen { fd: RawFd, what: String },
    #[error("fd {fd} for {what} is not a socket")]
    NotSocket { fd: RawFd, what: String },
    #[error("fd {fd} is not a socket of the kind {what} needs")]
    WrongKind { fd: RawFd, what: String },
    #[error("fd {fd} is not a TCP, UDP or unix socket")]
    Unsupported { fd: RawFd },
    #[error("fd {fd} is not bound to {addr}")]
    NotBound { fd: RawFd, addr: String },
    #[error("fd {fd}: {source}")]
    Os {
        fd: RawFd,
        #[source]
        source: nix::Error,
    },
}

/// What an fd sup did not open itself is, after checking that it is an
/// open socket: its type and address family. The one place every inherited
/// fd is looked at (hot-restart handoff, socket activation).
pub fn inspect_socket(fd: RawFd, what: &str) -> Result<(SockType, i32), FdError> {
    use nix::sys::socket::{getsockopt, sockopt};
    // SAFETY: fstat on a number; an invalid fd is reported as EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let what = what.to_string();
        return Err(FdError::NotOpen { fd, what });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        let what = what.to_string();
        return Err(FdError::NotSocket { fd, what });
    }
    // SAFETY: the fd is open (fstat succeeded) and stays open for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let ty = getsockopt(&borrowed, sockopt::SockType).map_err(|source| FdError::Os { fd, source })?;
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
        let source = nix::Error::last();
        return Err(FdError::Os { fd, source });
    }
    Ok((ty, domain))
}

/// Check that a handed or inherited fd is an open socket of type `ty` and
/// one of `domains`.
pub fn check_socket(fd: RawFd, ty: SockType, domains: &[i32], what: &str) -> Result<(), FdError> {
    let (got_ty, domain) = inspect_socket(fd, what)?;
    if got_ty != ty || !domains.contains(&domain) {
        let what = what.to_string();
        return Err(FdError::WrongKind { fd, what });
    }
    Ok(())
}

/// Own `fd` from here on, CLOEXEC again (it was cleared for the exec).
fn own(fd: RawFd) -> Result<OwnedFd, FdError> {
    // SAFETY: the caller checked that the fd is open, and it was handed to
    // this image for sup alone: nothing else in the process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|source| FdError::Os { fd, source })?;
    Ok(owned)
}

/// Take ownership of a handed listener after checking it is what the
/// handoff says: stream for tcp/unix or datagram for udp, of the right
/// address family.
pub fn adopt(s: &HandedSocket) -> Result<OwnedFd, FdError> {
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
pub fn adopt_unix(h: &HandedUnix, ty: SockType) -> Result<OwnedFd, FdError> {
    let fd = h.fd;
    let checked = check_socket(fd, ty, &[libc::AF_UNIX], &h.addr).and_then(|()| {
        let bound: nix::sys::socket::UnixAddr =
            nix::sys::socket::getsockname(fd).map_err(|source| FdError::Os { fd, source })?;
        if crate::runtime_dir::UnixName::parse(&h.addr).is(&bound) {
            Ok(())
        } else {
            let addr = h.addr.clone();
            Err(FdError::NotBound { fd, addr })
        }
    });
    checked.inspect_err(|_| close(fd))?;
    own(fd)
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
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    #[test]
    fn no_worker_ever_sees_the_handoff() {
        assert!(crate::command::STRIPPED.contains(&VAR));
    }

    fn snapshot() -> Snapshot {
        let mut settings = crate::core::tests::settings(2);
        settings.hot_overlap = true;
        let core = crate::core::Core::new(settings);
        core.snapshot(Instant::now(), 1_700_000_000_000)
    }

    #[test]
    fn round_trips() {
        let mut h = Handoff::new("/usr/local/bin/sup".into(), "/srv/app".into(), snapshot());
        h.runtime_dir = Some("/run/sup.x1y2z3".into());
        h.notify = Some(HandedUnix {
            fd: 7,
            addr: "/run/sup.x1y2z3/notify".into(),
        });
        h.control = Some(HandedControl {
            fd: 8,
            configured: "unix:/run/app/sup.sock".into(),
            created: Some(("/run/app/sup.sock".into(), 64769, 99)),
        });
        h.sockets = vec![
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
        ];
        assert_eq!(Handoff::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.fds(), vec![5, 6, 7, 8]);
    }

    #[test]
    fn worker_output_pipes_and_the_spill_file_cross_with_the_rest() {
        let mut h = Handoff::new("sup".into(), "/".into(), snapshot());
        h.sockets = vec![HandedSocket {
            fd: 5,
            addr: "tcp://127.0.0.1:0".into(),
            name: "web".into(),
            created: None,
        }];
        h.worker_output = Some(HandedOutput {
            mode: crate::config::WorkerOutput::Prefix,
            timestamps: false,
            pipes: vec![crate::output::HandedPipe {
                fd: 9,
                slot: 1,
                pid: 4121,
                generation: 7,
                stream: crate::output::Stream::Stderr,
                partial: (0, 3),
            }],
            spill: Some(10),
            queued: [(3, 0), (3, 40)],
            lines: [5, 6],
            dropped: [0, 2],
            cut: 1,
        });
        assert_eq!(Handoff::decode(&h.encode()).unwrap(), h);
        assert_eq!(
            h.fds(),
            vec![5, 9, 10],
            "sanitize_fds keeps them, the exec clears their CLOEXEC"
        );
        // A handoff written before worker output still reads.
        let before = h.encode().replace(r#","worker_output":"#, r#","ignored":"#);
        assert_eq!(Handoff::decode(&before).unwrap().worker_output, None);
    }

    #[test]
    fn reads_what_the_previous_version_wrote() {
        // sup 0.1 before the snapshot: upgrading sup by hot restart must
        // still adopt its listeners, and in overlap mode its workers.
        let old = r#"{"version":1,"restart_id":2,"generation":3,"exe":"/usr/bin/sup","started_ms":5,"origin":"/srv","sockets":[{"fd":3,"addr":"tcp://127.0.0.1:0","name":"web","created":null}]}"#;
        let h = Handoff::decode(old).unwrap();
        assert_eq!((h.core.generation, h.sockets.len(), h.notify.clone()), (3, 1, None));
        assert_eq!(h.fds(), vec![3]);
        let overlap = r#"{"version":1,"restart_id":4,"generation":6,"exe":"sup","origin":"/","sockets":[],"kind":"hot",
            "workers":[{"pid":4121,"slot":0,"generation":6,"spawned_ms":-5000,"state":{"state":"ready","since_ms":-4000},"status":null,"watchdog_ms":null}],
            "workers_target":[3,2]}"#;
        let h = Handoff::decode(overlap).unwrap();
        let w = &h.core.workers[0];
        assert_eq!((w.pid.raw(), w.slot, w.generation, w.spawned), (4121, 0, 6, -5000));
        assert_eq!((h.core.target, h.core.configured, h.core.restarts_begun), (3, 2, 4));
        assert_eq!(
            h.core.restart.map(|r| r.phase),
            Some(crate::core::snapshot::PhaseSnap::Exec { adopt: true })
        );
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(matches!(Handoff::decode("nope"), Err(HandoffError::NotJson(_))));
        let mut h = Handoff::new("sup".into(), "/".into(), snapshot());
        h.notify = Some(HandedUnix {
            fd: 2,
            addr: "@x".into(),
        });
        assert_eq!(Handoff::decode(&h.encode()).unwrap_err(), HandoffError::BadFd(2));
        assert_eq!(
            Handoff::decode(r#"{"version":3}"#).unwrap_err(),
            HandoffError::Version(3)
        );
        assert!(matches!(
            Handoff::decode(r#"{"version":2}"#),
            Err(HandoffError::Malformed(_))
        ));
        let bad_fd =
            r#"{"version":1,"generation":1,"exe":"sup","origin":"/","sockets":[{"fd":1,"addr":"tcp://x","name":"n"}]}"#;
        assert_eq!(Handoff::decode(bad_fd).unwrap_err(), HandoffError::BadFd(1));
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
        assert!(matches!(adopt(&wrong), Err(FdError::WrongKind { .. })));
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
        assert!(matches!(adopt(&not_sock), Err(FdError::NotSocket { .. })));
    }
}

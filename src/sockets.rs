//! Binding the listening sockets, once, before any worker starts.
//!
//! Every socket is created CLOEXEC and in blocking mode (the O_NONBLOCK flag
//! lives on the open file description, shared with every worker, and
//! systemd passes sockets blocking). sup keeps its own copy of each for its
//! whole life: while no worker accepts, the kernel queues connections in the
//! backlog instead of refusing them. Unix socket files sup created are
//! removed when it stops, and only if they are still the ones it created.
//! This module must not fork, know about workers, or clear CLOEXEC.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, UnixAddr, sockopt,
};

use crate::bind::{BindAddr, BindSpec};
use crate::files::errno_text;
use crate::handoff::HandedSocket;

/// The address a socket is actually bound to (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddr {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Tcp(a) => write!(f, "tcp://{a}"),
            LocalAddr::Udp(a) => write!(f, "udp://{a}"),
            LocalAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One bound socket and what sup knows about it.
#[derive(Debug)]
pub struct BoundSocket {
    pub spec: BindSpec,
    pub fd: OwnedFd,
    pub local: LocalAddr,
    /// For a unix socket sup created: the file's (device, inode) right after
    /// bind, so that sup never removes a file someone else put there later.
    created: Option<(PathBuf, u64, u64)>,
}

impl BoundSocket {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl BoundSocket {
    /// The listener's accept queue: connections the kernel has completed
    /// that no worker has accepted yet, and the most it holds (the backlog).
    /// TCP from `TCP_INFO` (in the LISTEN state the kernel reports the queue
    /// in `tcpi_unacked` and its limit in `tcpi_sacked`); a unix stream
    /// socket from sock_diag (`UNIX_DIAG_RQLEN`). `None` for UDP, or if the
    /// kernel will not say.
    pub fn accept_queue(&self) -> Option<(u32, u32)> {
        match self.local {
            LocalAddr::Tcp(_) => tcp_accept_queue(self.fd.as_raw_fd()),
            LocalAddr::Unix(_) => {
                let ino = nix::sys::stat::fstat(&self.fd).ok()?.st_ino;
                unix_accept_queue(ino)
            }
            LocalAddr::Udp(_) => None,
        }
    }
}

/// What [`BoundSocket::keep_out_new`] did to a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptOut {
    /// A socket filter drops every new SYN (clients retry them).
    Filtered,
    /// The unix socket's path was removed (new clients find nothing there).
    Unlinked(PathBuf),
    /// Nothing could be done for this one: UDP, a unix socket whose path
    /// sup did not create or must keep (the fd store hands it on).
    Untouched,
}

impl BoundSocket {
    /// Keep new connections out of this listener's queue, leaving what is
    /// queued for the workers. TCP: a socket filter that drops every packet
    /// the listener sees — the SYNs of new connections (clients retry them
    /// for a while) and the last ACK of a handshake still under way; the
    /// connections already in the queue have sockets of their own, which
    /// the filter does not reach. Unprivileged: a socket's owner may filter
    /// it. A unix socket: its path is removed. With `restarting` (systemd
    /// restarts the unit and keeps the socket in its fd store), nothing is
    /// kept out: what comes in meanwhile waits for the next sup.
    pub fn keep_out_new(&self, restarting: bool) -> std::io::Result<KeptOut> {
        match &self.local {
            _ if restarting => Ok(KeptOut::Untouched),
            LocalAddr::Tcp(_) => {
                drop_all_packets(self.fd.as_raw_fd())?;
                Ok(KeptOut::Filtered)
            }
            LocalAddr::Unix(path) if self.created.is_some() => {
                remove_created(self.created.as_ref());
                Ok(KeptOut::Unlinked(path.clone()))
            }
            LocalAddr::Unix(_) | LocalAddr::Udp(_) => Ok(KeptOut::Untouched),
        }
    }
}

/// Attach a classic BPF socket filter that accepts nothing (`ret #0`).
pub(crate) fn drop_all_packets(fd: RawFd) -> std::io::Result<()> {
    let code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    attach_program(fd, libc::SO_ATTACH_FILTER, &code)
}

/// Attach the classic BPF program `code` to socket `fd` with `option`
/// (`SO_ATTACH_FILTER`, `SO_ATTACH_REUSEPORT_CBPF`). Unprivileged: a
/// socket's owner may.
pub(crate) fn attach_program(fd: RawFd, option: libc::c_int, code: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `code`, which lives across the call (the
    // kernel copies it and never writes through the pointer); `fd` is a
    // socket sup owns.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw const prog).cast::<libc::c_void>(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Remove a socket filter a previous sup left on an inherited listener (it
/// drained before it stopped, and systemd's fd store kept the socket): the
/// listener takes connections again. A socket with no filter is left as is.
pub fn let_in_new(fd: RawFd) {
    // The kernel ignores the value but refuses an option shorter than an int.
    let zero: libc::c_int = 0;
    // SAFETY: `zero` is an int that lives across the call; `fd` is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DETACH_FILTER,
            (&raw const zero).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        log::info!("fd {fd}: removed the filter a previous sup left to drain it; taking connections again");
    }
}

pub(crate) fn tcp_accept_queue(fd: RawFd) -> Option<(u32, u32)> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes, and `len` a valid
    // in/out length; `fd` is a socket sup owns.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    const TCP_LISTEN: u8 = 10;
    (r == 0 && info.tcpi_state == TCP_LISTEN).then_some((info.tcpi_unacked, info.tcpi_sacked))
}

/// Ask sock_diag about the unix socket with inode `ino`: for a listening
/// socket, `UNIX_DIAG_RQLEN` is (queued connections, backlog).
fn unix_accept_queue(ino: u64) -> Option<(u32, u32)> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    const UNIX_DIAG_RQLEN: u16 = 4;
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[16] = libc::AF_UNIX as u8; // sdiag_family
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: any
    req[24..28].copy_from_slice(&(ino as u32).to_ne_bytes()); // udiag_ino
    req[28..32].copy_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes()); // udiag_show
    req[32..36].copy_from_slice(&u32::MAX.to_ne_bytes()); // udiag_cookie: none
    req[36..40].copy_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl
    // addresses the kernel.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent != req.len() as isize {
        return None;
    }
    let mut buf = [0u8; 512];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let reply = buf.get(..usize::try_from(n).ok()?)?;
    // nlmsghdr, then unix_diag_msg (16 bytes), then attributes (len u16, type u16, data, padded to 4).
    let msg_type = u16::from_ne_bytes([*reply.get(4)?, *reply.get(5)?]);
    if msg_type != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let mut at = 32;
    while at + 4 <= reply.len() {
        let len = u16::from_ne_bytes([reply[at], reply[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([reply[at + 2], reply[at + 3]]);
        if len < 4 {
            return None;
        }
        if kind == UNIX_DIAG_RQLEN && len >= 12 {
            let word = |i: usize| u32::from_ne_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
            return Some((word(at + 4), word(at + 8)));
        }
        at += (len + 3) & !3;
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl BoundSocket {
    /// This socket as the next image will receive it.
    pub fn handed(&self) -> HandedSocket {
        HandedSocket {
            fd: self.raw_fd(),
            addr: self.spec.addr.to_string(),
            name: self.spec.name.clone(),
            created: self.created.clone(),
        }
    }
}

/// After a hot restart: adopt the handed sockets whose configured address
/// is still bound, bind the new ones, and close the ones no longer wanted
/// (removing their files). A new address that cannot be bound is a runtime
/// error here, not a reason to stop serving the others: it is returned in
/// the second list and left out.
pub fn adopt_and_bind(specs: &[BindSpec], handed: Vec<HandedSocket>) -> (Vec<BoundSocket>, Vec<SocketError>) {
    let mut handed = handed;
    let mut bound = Vec::with_capacity(specs.len());
    let mut errors = Vec::new();
    for spec in specs {
        let addr = spec.addr.to_string();
        let result = match handed.iter().position(|h| h.addr == addr) {
            Some(i) => {
                let h = handed.remove(i);
                crate::handoff::adopt(&h).map_err(std::io::Error::other).and_then(|fd| {
                    let local = local_of(&fd, &spec.addr)?;
                    Ok(BoundSocket {
                        spec: spec.clone(),
                        fd,
                        local,
                        created: h.created,
                    })
                })
            }
            None => bind_one(spec),
        };
        match result {
            Ok(s) => bound.push(s),
            Err(source) => errors.push(SocketError::Bind { addr, source }),
        }
    }
    for h in handed {
        // No longer configured: close it, and remove its file if it is ours.
        drop(crate::handoff::adopt(&h));
        remove_created(h.created.as_ref());
    }
    (bound, errors)
}

fn local_of(fd: &OwnedFd, addr: &BindAddr) -> Result<LocalAddr, std::io::Error> {
    Ok(match addr {
        BindAddr::Tcp(_) => LocalAddr::Tcp(local_inet(fd)?),
        BindAddr::Udp(_) => LocalAddr::Udp(local_inet(fd)?),
        BindAddr::Unix(p) => LocalAddr::Unix(std::path::absolute(p)?),
    })
}

/// A socket sup was handed by systemd socket activation.
#[derive(Debug)]
pub struct Activated {
    pub fd: OwnedFd,
    pub name: Option<String>,
}

/// The sockets systemd passed to sup (`LISTEN_FDS` with `LISTEN_PID` equal
/// to sup's pid), as fd numbers and names, before sup sweeps stray fds.
pub fn activation_from_env() -> Vec<(RawFd, Option<String>)> {
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || n <= 0 {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..n)
        .map(|i| (3 + i, names.get(i as usize).filter(|s| !s.is_empty()).cloned()))
        .collect()
}

/// Take ownership of activated fds after checking, as for a hot restart's
/// handoff, that each is a stream or datagram socket of a family sup can
/// pass on (IPv4, IPv6, unix); anything else is closed and ignored.
pub fn take_activated(fds: Vec<(RawFd, Option<String>)>) -> Vec<Activated> {
    let mut out = Vec::new();
    for (fd, name) in fds {
        let what = format!("activated fd {fd}");
        let usable = crate::handoff::inspect_socket(fd, &what).and_then(|(ty, domain)| {
            let kinds = matches!(ty, SockType::Stream | SockType::Datagram)
                && [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX].contains(&domain);
            if kinds {
                Ok(())
            } else {
                Err(crate::handoff::FdError::Unsupported { fd })
            }
        });
        if let Err(why) = usable {
            log::warn!("socket activation: {why}; ignored");
            crate::handoff::close(fd);
            continue;
        }
        let_in_new(fd);
        // SAFETY: systemd handed this fd to sup and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
        out.push(Activated { fd, name });
    }
    out
}

/// Where an activated socket listens, read from the socket itself.
fn activated_addr(fd: &OwnedFd) -> Result<BindAddr, std::io::Error> {
    let ty = socket::getsockopt(fd, sockopt::SockType).map_err(err)?;
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(err)?;
    if let Some(path) = addr.as_unix_addr().and_then(|u| u.path()) {
        return Ok(BindAddr::Unix(path.to_path_buf()));
    }
    let inet = local_inet(fd)?;
    Ok(if ty == SockType::Datagram {
        BindAddr::Udp(inet)
    } else {
        BindAddr::Tcp(inet)
    })
}

/// Socket activation, and sockets back from systemd's fd store: each
/// `--bind` takes the passed socket with the same address, or else with its
/// name if that socket is of the same kind and port (or unix path) — one
/// whose name matches but whose address does not is not taken, with a line
/// saying why; the rest are bound as usual. With no `--bind`, every passed
/// socket is passed on, in order, with its name. Also returns the names of
/// the passed sockets no bind took (closed here), for the fd store.
pub fn adopt_activated(
    specs: &[BindSpec],
    activated: Vec<Activated>,
) -> Result<(Vec<BoundSocket>, Vec<String>), SocketError> {
    let mut pool: Vec<(Activated, BindAddr)> = Vec::new();
    for a in activated {
        match activated_addr(&a.fd) {
            Ok(addr) => pool.push((a, addr)),
            Err(e) => log::warn!(
                "socket activation: cannot read an activated socket's address ({}); ignored",
                crate::files::os_error(&e)
            ),
        }
    }
    let mut bound = Vec::new();
    if specs.is_empty() {
        for (a, addr) in pool {
            let local = local_of(&a.fd, &addr).map_err(|source| SocketError::Bind {
                addr: addr.to_string(),
                source,
            })?;
            let mut spec = BindSpec::parse(&addr.to_string()).map_err(|e| SocketError::Bind {
                addr: addr.to_string(),
                source: other(e.to_string()),
            })?;
            if let Some(name) = a.name {
                spec.name = name;
            }
            bound.push(BoundSocket {
                spec,
                fd: a.fd,
                local,
                created: None,
            });
        }
        return Ok((bound, Vec::new()));
    }
    let mut not_taken = Vec::new();
    for spec in specs {
        let named = pool
            .iter()
            .position(|(a, _)| a.name.as_deref() == Some(spec.name.as_str()));
        if let Some(i) = named
            && pool[i].1 != spec.addr
            && !same_place(&pool[i].1, &spec.addr)
        {
            let (a, addr) = pool.remove(i);
            log::error!(
                "the socket systemd passed as `{}` listens on {addr}, but the configuration binds `{}` to {}: \
                 not taken; binding the configured address",
                spec.name,
                spec.name,
                spec.addr
            );
            not_taken.extend(a.name);
        }
        let found = pool.iter().position(|(_, addr)| *addr == spec.addr).or_else(|| {
            pool.iter()
                .position(|(a, _)| a.name.as_deref() == Some(spec.name.as_str()))
        });
        match found {
            Some(i) => {
                let (a, addr) = pool.remove(i);
                let local = local_of(&a.fd, &addr).map_err(|source| SocketError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
                log::info!("socket activation: {} is the activated {local}", spec.raw);
                bound.push(BoundSocket {
                    spec: spec.clone(),
                    fd: a.fd,
                    local,
                    created: None,
                });
            }
            None => match bind_one(spec) {
                Ok(s) => bound.push(s),
                Err(source) => {
                    remove_files(&bound);
                    return Err(SocketError::Bind {
                        addr: spec.addr.to_string(),
                        source,
                    });
                }
            },
        }
    }
    for (a, addr) in pool {
        log::warn!("socket activation: {addr} matches no --bind; closed");
        not_taken.extend(a.name);
    }
    Ok((bound, not_taken))
}

/// Whether a passed socket at `passed` can serve a bind to `configured`:
/// the same kind, and the same port (any host: `0.0.0.0` and `[::]` are
/// both "every address") or a configured port 0; the same unix path.
fn same_place(passed: &BindAddr, configured: &BindAddr) -> bool {
    match (passed, configured) {
        (BindAddr::Tcp(a), BindAddr::Tcp(b)) | (BindAddr::Udp(a), BindAddr::Udp(b)) => {
            b.port() == 0 || a.port() == b.port()
        }
        (BindAddr::Unix(a), BindAddr::Unix(b)) => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
        _ => false,
    }
}

/// Bind every spec, in order. On failure, whatever was bound is released
/// (and its files removed) before the error is returned.
pub fn bind_all(specs: &[BindSpec]) -> Result<Vec<BoundSocket>, SocketError> {
    let mut bound: Vec<BoundSocket> = Vec::with_capacity(specs.len());
    for spec in specs {
        match bind_one(spec) {
            Ok(s) => bound.push(s),
            Err(source) => {
                remove_files(&bound);
                return Err(SocketError::Bind {
                    addr: spec.addr.to_string(),
                    source,
                });
            }
        }
    }
    Ok(bound)
}

/// Remove the unix socket files sup created, if they are still its own.
pub fn remove_files(sockets: &[BoundSocket]) {
    for s in sockets {
        remove_created(s.created.as_ref());
    }
}

/// Remove a unix socket file sup created, if it is still that file (same
/// device and inode): never someone else's.
pub fn remove_created(created: Option<&(PathBuf, u64, u64)>) {
    if let Some((path, dev, ino)) = created
        && let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.dev() == *dev
        && meta.ino() == *ino
    {
        let _ = std::fs::remove_file(path);
    }
}

/// The default backlog: 1024 or the system's somaxconn, whichever is smaller.
pub(crate) fn default_backlog() -> i32 {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(4096);
    somaxconn.clamp(1, 1024)
}

/// An errno from nix as the `io::Error` it is (rendered `address already
/// in use` by `exit::chain`).
fn err(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A cause that is not an OS error, with its message.
fn other(message: impl Into<String>) -> std::io::Error {
    std::io::Error::other(message.into())
}

fn bind_one(spec: &BindSpec) -> Result<BoundSocket, std::io::Error> {
    let backlog = Backlog::new(spec.backlog.unwrap_or_else(default_backlog)).map_err(err)?;
    match &spec.addr {
        BindAddr::Tcp(addr) | BindAddr::Udp(addr) => {
            let stream = matches!(spec.addr, BindAddr::Tcp(_));
            // Per-slot sockets join the bind's own in one reuseport group.
            let reuseport = spec.reuseport || spec.balance == Some(crate::bind::Balance::Reuseport);
            let fd = inet_socket(addr, stream, reuseport, spec.ipv6only)?;
            if stream {
                socket::listen(&fd, backlog).map_err(err)?;
            }
            let local = local_inet(&fd)?;
            let local = if stream {
                LocalAddr::Tcp(local)
            } else {
                LocalAddr::Udp(local)
            };
            Ok(BoundSocket {
                spec: spec.clone(),
                fd,
                local,
                created: None,
            })
        }
        BindAddr::Unix(path) => {
            let path = std::path::absolute(path)?;
            clear_stale(&path)?;
            let fd =
                socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
            let addr = UnixAddr::new(&path).map_err(|_| other("path too long for a unix socket (108 bytes)"))?;
            socket::bind(fd.as_raw_fd(), &addr).map_err(err)?;
            let meta = std::fs::symlink_metadata(&path)?;
            let created = Some((path.clone(), meta.dev(), meta.ino()));
            let result = finish_unix(spec, &path, &fd, backlog);
            let sock = BoundSocket {
                spec: spec.clone(),
                fd,
                local: LocalAddr::Unix(path),
                created,
            };
            if let Err(e) = result {
                remove_files(std::slice::from_ref(&sock));
                return Err(e);
            }
            Ok(sock)
        }
    }
}

/// A bound (not yet listening) TCP or UDP socket, CLOEXEC and blocking.
fn inet_socket(addr: &SocketAddr, stream: bool, reuseport: bool, ipv6only: bool) -> Result<OwnedFd, std::io::Error> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let ty = if stream { SockType::Stream } else { SockType::Datagram };
    let fd = socket::socket(family, ty, SockFlag::SOCK_CLOEXEC, None).map_err(err)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    if reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true).map_err(err)?;
    }
    if addr.is_ipv6() {
        // Explicit either way: the system default (bindv6only) varies.
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &ipv6only).map_err(err)?;
    }
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a)),
    }
    .map_err(err)?;
    Ok(fd)
}

/// One more listener in a bind's reuseport group (`--balance reuseport`):
/// `SO_REUSEPORT` on `addr` (the bind's resolved address), listening.
pub fn bind_reuseport(addr: &SocketAddr, backlog: i32, ipv6only: bool) -> Result<OwnedFd, std::io::Error> {
    let fd = inet_socket(addr, true, true, ipv6only)?;
    socket::listen(&fd, Backlog::new(backlog).map_err(err)?).map_err(err)?;
    Ok(fd)
}

/// Whether a socket has `SO_REUSEPORT` set (it can share its port with
/// more listeners of the same user).
pub fn has_reuseport(fd: &OwnedFd) -> bool {
    socket::getsockopt(fd, sockopt::ReusePort).unwrap_or(false)
}

fn finish_unix(spec: &BindSpec, path: &Path, fd: &OwnedFd, backlog: Backlog) -> Result<(), std::io::Error> {
    use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
    use nix::unistd::{Group, User, chown};
    if let Some(mode) = spec.mode {
        fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| other(format!("cannot set mode {mode:o}: {}", errno_text(e as i32))))?;
    }
    if spec.owner.is_some() || spec.group.is_some() {
        let uid = match &spec.owner {
            Some(name) => Some(
                User::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| other(format!("owner `{name}`: no such user")))?
                    .uid,
            ),
            None => None,
        };
        let gid = match &spec.group {
            Some(name) => Some(
                Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| other(format!("group `{name}`: no such group")))?
                    .gid,
            ),
            None => None,
        };
        chown(path, uid, gid).map_err(|e| other(format!("cannot change owner: {}", errno_text(e as i32))))?;
    }
    socket::listen(&fd.as_fd(), backlog).map_err(err)
}

/// A socket file left by a dead server is removed; one a live server
/// answers on is an error; anything that is not a socket is never touched.
pub fn clear_stale(path: &Path) -> Result<(), std::io::Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(other(format!("{} exists and is not a socket", path.display())));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(other(format!("{} is in use by a running server", path.display()))),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .map_err(|e| other(format!("cannot remove stale socket: {}", crate::files::os_error(&e)))),
        Err(e) => Err(other(format!(
            "cannot check existing socket {}: {}",
            path.display(),
            crate::files::os_error(&e)
        ))),
    }
}

pub(crate) fn local_inet(fd: &OwnedFd) -> Result<SocketAddr, std::io::Error> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(err)?;
    if let Some(v4) = addr.as_sockaddr_in() {
        Ok(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = addr.as_sockaddr_in6() {
        Ok(SocketAddr::V6((*v6).into()))
    } else {
        Err(other("unexpected address family"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> BindSpec {
        BindSpec::parse(s).unwrap()
    }

    #[test]
    fn binds_port_zero_and_reports_the_real_port() {
        let s = bind_all(&[spec("127.0.0.1:0")]).unwrap();
        let LocalAddr::Tcp(a) = s[0].local else { panic!() };
        assert_ne!(a.port(), 0);
        // CLOEXEC by construction, blocking mode.
        let fdflags = nix::fcntl::fcntl(&s[0].fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(fdflags & libc::FD_CLOEXEC, 0);
        let flflags = nix::fcntl::fcntl(&s[0].fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flflags & libc::O_NONBLOCK, 0);
        // The kernel queues a connection while nobody accepts.
        std::net::TcpStream::connect(a).unwrap();
    }

    #[test]
    fn the_accept_queue_and_its_limit_are_read_from_the_kernel() {
        let s = bind_all(&[spec("127.0.0.1:0?backlog=50")]).unwrap();
        let LocalAddr::Tcp(a) = s[0].local else { panic!() };
        assert_eq!(s[0].accept_queue(), Some((0, 50)));
        let held: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(a).unwrap()).collect();
        assert_eq!(s[0].accept_queue(), Some((3, 50)), "three completed, none accepted");
        drop(held);
        let dir = std::env::temp_dir().join(format!("sup-queue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.sock");
        let u = bind_all(&[spec(&format!("unix:{}?backlog=20", path.display()))]).unwrap();
        assert_eq!(u[0].accept_queue(), Some((0, 20)));
        let held: Vec<_> = (0..2)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        assert_eq!(u[0].accept_queue(), Some((2, 20)));
        drop(held);
        drop(u);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_port_in_use_is_one_clear_error() {
        let first = bind_all(&[spec("127.0.0.1:0")]).unwrap();
        let LocalAddr::Tcp(a) = first[0].local else { panic!() };
        let e = crate::exit::chain(&bind_all(&[spec(&a.to_string())]).unwrap_err());
        assert_eq!(e, format!("cannot bind tcp://{a}: address already in use"));
    }

    #[test]
    fn unix_sockets_stale_live_and_cleanup() {
        let dir = std::env::temp_dir().join(format!("sup-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        // A stale socket file (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let s = bind_all(&[spec(&format!("unix:{}?mode=600", path.display()))]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // A live one is an error, and the live file is left alone.
        let e = crate::exit::chain(&bind_all(&[spec(&format!("unix:{}", path.display()))]).unwrap_err());
        assert!(e.contains("in use by a running server"), "{e}");
        assert!(path.exists());
        remove_files(&s);
        assert!(!path.exists());
        // A regular file is never removed.
        std::fs::write(&path, "x").unwrap();
        let e = crate::exit::chain(&bind_all(&[spec(&format!("unix:{}", path.display()))]).unwrap_err());
        assert!(e.contains("is not a socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_releases_what_was_bound() {
        let dir = std::env::temp_dir().join(format!("sup-sock2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.sock");
        let taken = bind_all(&[spec("127.0.0.1:0")]).unwrap();
        let LocalAddr::Tcp(a) = taken[0].local else { panic!() };
        assert!(bind_all(&[spec(&format!("unix:{}", path.display())), spec(&a.to_string())]).is_err());
        assert!(!path.exists(), "the unix socket bound first was removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn udp_and_v6() {
        let s = bind_all(&[spec("udp://127.0.0.1:0")]).unwrap();
        assert!(matches!(s[0].local, LocalAddr::Udp(a) if a.port() != 0));
        if let Ok(v6) = bind_all(&[spec("[::1]:0")]) {
            assert!(matches!(v6[0].local, LocalAddr::Tcp(a) if a.is_ipv6()));
        }
    }
}

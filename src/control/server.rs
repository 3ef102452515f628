//! The control server's I/O: accept, read with a deadline, answer, close.
//!
//! Non-blocking, in sup's loop. At most [`MAX_CONNECTIONS`] are open (the
//! oldest is dropped beyond that); each must send a complete request within
//! [`READ_DEADLINE`] or it is cut off; one request per connection, answered
//! and closed (`Connection: close`): pipelined requests after the first are
//! not read. A client that sends its request and then shuts down its writing
//! side (`nc -N`, socat, many scripts) still gets its answer. What a request
//! means is `route`'s business, and the answer to a command the core's.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::sys::socket::SockType;

use super::ControlAddr;
use super::http::{self, Parsed};
use crate::handoff::HandedControl;
use crate::slots::Slots;

/// Why the control socket cannot be listened on or taken over.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The OS refused (`address already in use`, `permission denied`):
    /// its words are the whole message.
    #[error("{}", crate::files::os_error(.0))]
    Io(#[from] std::io::Error),
    /// The address handed over is not one this version can read.
    #[error(transparent)]
    Address(#[from] crate::bind::ControlAddrError),
    /// The handed fd is not the socket the handoff says.
    #[error("{0}")]
    Handed(String),
    #[error("fd {fd}: {}", crate::files::os_error(error))]
    Fd { fd: i32, error: std::io::Error },
}

pub const MAX_CONNECTIONS: usize = 64;
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Its one request has been handed on; the answer is awaited.
    taken: bool,
    /// The answer, once there is one; the connection closes when it is out.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

pub struct ControlServer {
    listener: Listener,
    conns: Slots<Conn>,
    /// The unix socket file sup created (path, device, inode).
    created: Option<(PathBuf, u64, u64)>,
    /// The address actually listened on (a TCP port 0 resolved).
    pub addr: ControlAddr,
    base: usize,
}

impl ControlServer {
    /// Bind `addr`. A unix socket gets mode 0600; a stale file is replaced
    /// and a live one is an error, as for `--bind`.
    pub fn listen(addr: &ControlAddr, base: usize) -> Result<ControlServer, ControlError> {
        let (listener, created, actual) = match addr {
            ControlAddr::Unix(path) => {
                let path = std::path::absolute(path)?;
                crate::sockets::clear_stale(&path)?;
                let l = UnixListener::bind(&path)?;
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                let meta = std::fs::symlink_metadata(&path)?;
                (
                    Listener::Unix(l),
                    Some((path.clone(), meta.dev(), meta.ino())),
                    ControlAddr::Unix(path),
                )
            }
            ControlAddr::Tcp(a) => {
                let l = TcpListener::bind(*a)?;
                let actual = l.local_addr()?;
                (Listener::Tcp(l), None, ControlAddr::Tcp(actual))
            }
        };
        Ok(ControlServer {
            listener,
            conns: Slots::new(MAX_CONNECTIONS),
            created,
            addr: actual,
            base,
        })
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        match &mut self.listener {
            Listener::Unix(l) => registry.register(l, token, Interest::READABLE),
            Listener::Tcp(l) => registry.register(l, token, Interest::READABLE),
        }
    }

    /// Accept every pending connection.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let stream = match &self.listener {
                Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            };
            let Ok(stream) = stream else { return };
            let slot = self.conns.insert(Conn {
                stream,
                buf: Vec::new(),
                taken: false,
                out: None,
                deadline: now + READ_DEADLINE,
            });
            let token = Token(self.base + slot);
            let registered = match self.conns.get_mut(slot) {
                Some(c) => registry.register(c.stream.source(), token, Interest::READABLE | Interest::WRITABLE),
                None => continue,
            };
            if registered.is_err() {
                self.conns.remove(slot);
            }
        }
    }

    /// The connection slot a token belongs to, if it is one of ours.
    pub fn slot_of(&self, token: Token) -> Option<usize> {
        token.0.checked_sub(self.base).filter(|s| *s < self.conns.bound())
    }

    /// Read what arrived on `slot`. Returns its request (or a parse error to
    /// answer) once, when it is complete.
    pub fn read(&mut self, slot: usize) -> Option<Parsed> {
        let conn = self.conns.get_mut(slot)?;
        if conn.out.is_some() {
            self.flush(slot);
            return None;
        }
        let mut chunk = [0u8; 4096];
        let mut eof = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if conn.taken {
                        // A pipelined request: not answered (Connection: close).
                        continue;
                    }
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > http::MAX_HEAD + http::MAX_BODY + 4 {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(slot);
                    return None;
                }
            }
        }
        if conn.taken {
            return None;
        }
        match http::parse(&conn.buf) {
            // The client is gone before its request was whole.
            Parsed::Incomplete if eof => {
                self.close(slot);
                None
            }
            Parsed::Incomplete => None,
            // Complete, even if the client has shut down its writing side:
            // its reading side still waits for the answer.
            done => {
                conn.taken = true;
                Some(done)
            }
        }
    }

    /// Queue `response` on `slot` and send what the socket takes now.
    pub fn respond(&mut self, slot: usize, response: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.out = Some((response, 0));
            self.flush(slot);
        }
    }

    /// Send more of the answer; close once it is all out.
    pub fn flush(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let Some((out, sent)) = &mut conn.out else { return };
        while *sent < out.len() {
            match conn.stream.write(&out[*sent..]) {
                Ok(0) => break,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.close(slot);
    }

    fn close(&mut self, slot: usize) {
        self.conns.remove(slot);
    }

    /// The earliest read deadline of a connection still waiting for its
    /// request; none when no connection is open (no idle timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .filter(|c| c.out.is_none() && !c.taken)
            .map(|c| c.deadline)
            .min()
    }

    /// Cut off connections that did not send a whole request in time.
    pub fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.bound() {
            let late = matches!(self.conns.get_mut(slot), Some(c) if c.out.is_none() && !c.taken && c.deadline <= now);
            if late {
                let body = super::protocol::Answer::rejected("request timeout").to_json();
                self.respond(slot, http::response(408, &body, &[]));
                self.close(slot);
            }
        }
    }

    /// Before a re-exec, which closes every accepted connection: give each
    /// connection still waiting for its answer up to `grace` to complete its
    /// request, answer it with `answer`, and flush. A request whose bytes
    /// never come in time is closed unanswered. The listener itself is
    /// handed over, so connections not yet accepted wait for the next image.
    pub fn quiesce(&mut self, grace: Duration, mut answer: impl FnMut(&http::Request) -> Vec<u8>) {
        let deadline = Instant::now() + grace;
        loop {
            let mut waiting = false;
            for slot in 0..self.conns.bound() {
                let Some(conn) = self.conns.get_mut(slot) else { continue };
                if conn.out.is_some() {
                    self.flush(slot);
                    continue;
                }
                if conn.taken {
                    // Handed on, but its answer will not come before the exec.
                    if let Parsed::Request(req) = http::parse(&conn.buf) {
                        let reply = answer(&req);
                        self.respond(slot, reply);
                    }
                    continue;
                }
                match self.read(slot) {
                    Some(Parsed::Request(req)) => {
                        let reply = answer(&req);
                        self.respond(slot, reply);
                    }
                    Some(Parsed::Error(status, why)) => {
                        let body = super::protocol::Answer::rejected(why).to_json();
                        self.respond(slot, http::response(status, &body, &[]));
                    }
                    Some(Parsed::Incomplete) | None => waiting |= self.conns.get_mut(slot).is_some(),
                }
            }
            if !waiting || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Remove the unix socket file, if it is still the one sup created.
    /// The listener's fd (for systemd's fd store).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        match &self.listener {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    pub fn remove_file(&self) {
        crate::sockets::remove_created(self.created.as_ref());
    }

    /// What the next image needs to adopt it (`configured` is `--control`
    /// as given, which the next configuration is matched against).
    pub fn handed(&self, configured: &ControlAddr) -> HandedControl {
        let fd = match &self.listener {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        };
        HandedControl {
            fd,
            configured: configured.to_string(),
            created: self.created.clone(),
        }
    }

    /// Take over the listener a previous sup image handed across its exec:
    /// connections queued in its backlog meanwhile are answered now, and a
    /// client never finds the socket missing.
    pub fn adopt(h: &HandedControl, base: usize) -> Result<ControlServer, ControlError> {
        let configured = ControlAddr::parse(&h.configured)?;
        let (ty, domains): (SockType, &[i32]) = match configured {
            ControlAddr::Unix(_) => (SockType::Stream, &[libc::AF_UNIX]),
            ControlAddr::Tcp(_) => (SockType::Stream, &[libc::AF_INET, libc::AF_INET6]),
        };
        crate::handoff::check_socket(h.fd, ty, domains, &h.configured).map_err(|e| {
            crate::handoff::close(h.fd);
            ControlError::Handed(e.to_string())
        })?;
        // SAFETY: checked open just above; handed to this image for sup alone.
        let fd = unsafe { OwnedFd::from_raw_fd(h.fd) };
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).map_err(|errno| {
            ControlError::Fd {
                fd: h.fd,
                error: errno.into(),
            }
        })?;
        let (listener, addr) = match configured {
            ControlAddr::Unix(path) => {
                let l = std::os::unix::net::UnixListener::from(fd);
                l.set_nonblocking(true)?;
                (Listener::Unix(UnixListener::from_std(l)), ControlAddr::Unix(path))
            }
            ControlAddr::Tcp(_) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                let actual = l.local_addr()?;
                (Listener::Tcp(TcpListener::from_std(l)), ControlAddr::Tcp(actual))
            }
        };
        Ok(ControlServer {
            listener,
            conns: Slots::new(MAX_CONNECTIONS),
            created: h.created.clone(),
            addr,
            base,
        })
    }
}

/// The control socket systemd's fd store kept across a restart, as if it had
/// been handed over, if it still is what `configured` names: a unix socket
/// whose path still leads to it, or a TCP socket on the configured port.
/// Otherwise it is closed (and a new one is bound).
pub fn from_store(fd: OwnedFd, configured: &ControlAddr) -> Option<HandedControl> {
    use std::os::fd::IntoRawFd;
    let created = match configured {
        ControlAddr::Unix(path) => {
            // The socket is still bound to the configured path, and that path
            // is still a socket file: the one the previous sup created.
            let path = std::path::absolute(path).ok()?;
            let bound: Option<nix::sys::socket::UnixAddr> = nix::sys::socket::getsockname(fd.as_raw_fd()).ok();
            let same_path = bound.as_ref().and_then(|a| a.path()) == Some(path.as_path());
            match std::fs::symlink_metadata(&path) {
                Ok(m) if same_path && m.file_type().is_socket() => Some((path, m.dev(), m.ino())),
                _ => {
                    log::warn!(
                        "the control socket systemd kept is no longer at {}: binding a new one",
                        path.display()
                    );
                    return None;
                }
            }
        }
        ControlAddr::Tcp(want) => {
            let local: Option<nix::sys::socket::SockaddrStorage> = nix::sys::socket::getsockname(fd.as_raw_fd()).ok();
            let port = local.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| v4.port())
                    .or_else(|| a.as_sockaddr_in6().map(|v6| v6.port()))
            });
            if want.port() != 0 && port != Some(want.port()) {
                log::warn!("the control socket systemd kept is not on {want}: binding a new one");
                return None;
            }
            None
        }
    };
    Some(HandedControl {
        fd: fd.into_raw_fd(),
        configured: configured.to_string(),
        created,
    })
}

/// Close a handed control listener the new configuration does not use, and
/// remove its file if it is still the one sup created.
pub fn discard(h: &HandedControl) {
    crate::handoff::close(h.fd);
    crate::sockets::remove_created(h.created.as_ref());
}

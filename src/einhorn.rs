//! `--einhorn-ack`: an Einhorn-compatible command socket, for readiness.
//!
//! Apps built on Einhorn client libraries (goji/bind, go-einhorn, the
//! einhorn gem) report readiness by connecting to `EINHORN_SOCK_PATH` and
//! writing `{"command":"worker:ack","pid":N}` on a line. sup reads those
//! lines as JSON only — Einhorn's own server parses YAML, which sup never
//! does — and turns each ack into `READY=1` with `MAINPID=N`, attributed
//! like a notify datagram by the connecting process's credentials
//! (SO_PEERCRED). Other commands are ignored. Connections are bounded in
//! number and in line length; the oldest is dropped when too many are open.
//!
//! The socket lives next to the notify socket (sup's private runtime
//! directory, or an abstract name) and is handed across hot restarts the
//! same way; connections in progress are not.

use std::io::Read;
use std::os::fd::AsRawFd;

use mio::net::{UnixListener, UnixStream};

use crate::handoff::HandedUnix;
use crate::message::{Message, Sender};
use crate::runtime_dir::{AdoptError, UnixName};
use crate::slots::Slots;

const MAX_CONNECTIONS: usize = 64;
const MAX_LINE: usize = 64 * 1024;

struct Conn {
    stream: UnixStream,
    sender: Option<Sender>,
    buf: Vec<u8>,
}

pub struct EinhornSocket {
    listener: UnixListener,
    /// What workers get as EINHORN_SOCK_PATH.
    pub name: UnixName,
    conns: Slots<Conn>,
}

impl EinhornSocket {
    /// Bind at `name` (a file is made mode 0600 and given to `owner` when
    /// workers run as another user). sup's private directory is fresh, so
    /// nothing is ever unlinked to make room.
    pub fn bind(name: UnixName, owner: Option<(u32, u32)>) -> std::io::Result<EinhornSocket> {
        let listener = match &name {
            UnixName::Path(path) => {
                let l = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
                }
                l
            }
            UnixName::Abstract(n) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(n.as_bytes())?;
                let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                l.set_nonblocking(true)?;
                UnixListener::from_std(l)
            }
        };
        Ok(EinhornSocket::with(listener, name))
    }

    /// Take over the listener a previous sup image handed across its exec.
    pub fn adopt(handed: &HandedUnix) -> Result<EinhornSocket, AdoptError> {
        let fd = crate::handoff::adopt_unix(handed, nix::sys::socket::SockType::Stream)
            .map_err(|e| AdoptError::Handed(e.to_string()))?;
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)
            .map_err(|error| AdoptError::Fd { fd: handed.fd, error })?;
        Ok(EinhornSocket::with(
            UnixListener::from_std(l),
            UnixName::parse(&handed.addr),
        ))
    }

    fn with(listener: UnixListener, name: UnixName) -> EinhornSocket {
        EinhornSocket {
            listener,
            name,
            conns: Slots::new(MAX_CONNECTIONS),
        }
    }

    /// What the next image needs to adopt it.
    pub fn handed(&self) -> HandedUnix {
        HandedUnix {
            fd: self.listener.as_raw_fd(),
            addr: self.name.to_string(),
        }
    }

    pub fn listener(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    /// Accept every pending connection; returns the slots of new ones so the
    /// caller can register them.
    pub fn accept(&mut self) -> Vec<usize> {
        let mut new = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            let sender = peer(&stream);
            new.push(self.conns.insert(Conn {
                stream,
                sender,
                buf: Vec::new(),
            }));
        }
        new
    }

    pub fn stream(&mut self, slot: usize) -> Option<&mut UnixStream> {
        self.conns.get_mut(slot).map(|c| &mut c.stream)
    }

    /// Read what connection `slot` sent; returns acks as notify messages.
    pub fn read(&mut self, slot: usize) -> Vec<(Option<Sender>, Message)> {
        let mut out = Vec::new();
        let Some(conn) = self.conns.get_mut(slot) else {
            return out;
        };
        let mut chunk = [0u8; 4096];
        let mut close = false;
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        while let Some(end) = conn.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=end).collect();
            let message = match parse_command(&line) {
                Some(Command::Ack(pid)) => Message {
                    ready: true,
                    mainpid: Some(crate::pid::Pid::from_raw(pid)),
                    ..Message::default()
                },
                Some(Command::Recycle(pid)) => Message {
                    recycle: true,
                    mainpid: Some(crate::pid::Pid::from_raw(pid)),
                    ..Message::default()
                },
                None => continue,
            };
            out.push((conn.sender, message));
        }
        if conn.buf.len() > MAX_LINE {
            close = true;
        }
        if close {
            self.conns.remove(slot);
        }
        out
    }
}

fn peer(stream: &UnixStream) -> Option<Sender> {
    let fd = stream.as_raw_fd();
    // SAFETY: fd is a connected unix socket owned by `stream` for this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let cred = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some(Sender {
        pid: crate::pid::Pid::from_raw(cred.pid()),
        pgid: nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(cred.pid())))
            .ok()
            .map(|p| crate::pid::Pgid::from_raw(p.as_raw())),
        uid: cred.uid(),
    })
}

/// What a worker says on the Einhorn socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `{"command":"worker:ack","pid":N}`: worker N is ready (Einhorn's own).
    Ack(i32),
    /// `{"command":"worker:recycle","pid":N}`: worker N asks to be replaced
    /// (sup's; the Einhorn socket's twin of `X_SUP_RECYCLE=1`).
    Recycle(i32),
}

/// One line of the Einhorn socket. Einhorn clients escape `%` and newlines
/// inside a message as `%25` and `%0A`; undo that first.
pub fn parse_command(line: &[u8]) -> Option<Command> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim().replace("%0A", "\n").replace("%25", "%");
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = value.get("pid")?.as_i64()?;
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    match value.get("command")?.as_str()? {
        "worker:ack" => Some(Command::Ack(pid)),
        "worker:recycle" => Some(Command::Recycle(pid)),
        _ => None,
    }
}

/// `{"command":"worker:ack","pid":N}` → N.
pub fn parse_ack(line: &[u8]) -> Option<i32> {
    match parse_command(line)? {
        Command::Ack(pid) => Some(pid),
        Command::Recycle(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_json_only() {
        assert_eq!(parse_ack(br#"{"command":"worker:ack","pid":42}"#), Some(42));
        assert_eq!(parse_ack(b"{\"command\": \"worker:ack\", \"pid\": 7}\n"), Some(7));
        assert_eq!(parse_ack(br#"{"command":"worker:ping","pid":42}"#), None);
        assert_eq!(
            parse_command(br#"{"command":"worker:recycle","pid":42}"#),
            Some(Command::Recycle(42))
        );
        assert_eq!(parse_ack(br#"{"command":"worker:ack","pid":-1}"#), None);
        // YAML that Einhorn itself would accept is not parsed.
        assert_eq!(parse_ack(b"command: worker:ack\npid: 42"), None);
        assert_eq!(parse_ack(b"--- !ruby/object:Foo {}"), None);
    }
}

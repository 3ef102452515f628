//! The sd_notify datagram socket workers report readiness on.
//!
//! sup binds a unix datagram socket and hands its address to workers as
//! `NOTIFY_SOCKET`, as systemd does: by default a file in sup's private
//! runtime directory (see [`crate::runtime_dir`] for why not an abstract
//! address), or an abstract `@name` when asked. Across a hot restart the
//! socket itself is handed over (same fd, same address), so a message sent
//! during the exec waits in its buffer instead of being lost.
//!
//! `SO_PASSCRED` makes the kernel attach the sender's pid, uid and gid to
//! every datagram, which is what attribution rests on: the core decides
//! whether a sender is a worker, a process in a worker's group, or a
//! stranger. File descriptors that arrive with a message (systemd-notify
//! sends `BARRIER=1` with a pipe and waits for it to close) are closed at
//! once. This module parses and receives; it decides nothing.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, sockopt};

use crate::handoff::HandedUnix;
pub use crate::message::{Message, Sender};
use crate::runtime_dir::{AdoptError, UnixName};

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    pub sender: Option<Sender>,
    pub message: Message,
    /// How many fds arrived with it (already closed).
    pub fds_closed: usize,
}

/// sup's notify socket.
pub struct NotifySocket {
    fd: OwnedFd,
    /// What workers get as NOTIFY_SOCKET.
    pub name: UnixName,
}

impl NotifySocket {
    /// Bind at `name`; a socket file is given to `owner` (the workers'
    /// uid and gid) so that workers running as another user can send.
    pub fn bind(name: UnixName, owner: Option<(u32, u32)>) -> std::io::Result<NotifySocket> {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::setsockopt(&fd, sockopt::PassCred, &true)?;
        // Big enough for a burst of messages from many workers at once.
        let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
        socket::bind(fd.as_raw_fd(), &name.to_addr()?)?;
        if let UnixName::Path(path) = &name {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
        }
        Ok(NotifySocket { fd, name })
    }

    /// Take over the socket a previous sup image handed across its exec,
    /// after checking that the fd is a unix datagram socket bound there.
    pub fn adopt(handed: &HandedUnix) -> Result<NotifySocket, AdoptError> {
        let fd =
            crate::handoff::adopt_unix(handed, SockType::Datagram).map_err(|e| AdoptError::Handed(e.to_string()))?;
        let failed = |errno: nix::Error| AdoptError::Fd {
            fd: handed.fd,
            error: errno.into(),
        };
        // SO_PASSCRED is a property of the socket and survived the exec;
        // set it again in case an older image did not.
        socket::setsockopt(&fd, sockopt::PassCred, &true).map_err(failed)?;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).map_err(failed)?;
        Ok(NotifySocket {
            fd,
            name: UnixName::parse(&handed.addr),
        })
    }

    /// What the next image needs to adopt it.
    pub fn handed(&self) -> HandedUnix {
        HandedUnix {
            fd: self.fd.as_raw_fd(),
            addr: self.name.to_string(),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Read every pending datagram (the socket is edge-triggered in mio).
    pub fn drain(&self) -> Vec<Received> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; 32]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            let mut sender = None;
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => {
                            let pid = cred.pid();
                            sender = Some(Sender {
                                pid: crate::pid::Pid::from_raw(pid),
                                pgid: nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
                                    .ok()
                                    .map(|p| crate::pid::Pgid::from_raw(p.as_raw())),
                                uid: cred.uid(),
                            });
                        }
                        ControlMessageOwned::ScmRights(received) => fds.extend(received),
                        _ => {}
                    }
                }
            }
            let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
            let len = msg.bytes;
            // Close what came with the message only now, after the sender's
            // group was looked up: systemd-notify stays alive until then.
            let fds_closed = fds.len();
            for fd in fds {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let message = if truncated {
                Message::default()
            } else {
                Message::parse(&buf[..len])
            };
            out.push(Received {
                sender,
                message,
                fds_closed,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_credentials_and_closes_passed_fds() {
        let dir = crate::runtime_dir::RuntimeDir::create(None).unwrap();
        let on_path = NotifySocket::bind(UnixName::Path(dir.join("notify")), None).unwrap();
        let abstract_ = NotifySocket::bind(UnixName::random_abstract("notify"), None).unwrap();
        assert!(abstract_.name.to_string().starts_with('@'));
        for sock in [on_path, abstract_] {
            receives_from(&sock);
        }
    }

    #[test]
    fn an_adopted_socket_keeps_what_was_waiting_in_it() {
        let dir = crate::runtime_dir::RuntimeDir::create(None).unwrap();
        let sock = NotifySocket::bind(UnixName::Path(dir.join("notify")), None).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", dir.join("notify")).unwrap();
        let handed = sock.handed();
        let dup = nix::unistd::dup(&sock.fd).unwrap();
        drop(sock);
        let other = nix::unistd::dup(&dup).unwrap();
        let wrong = HandedUnix {
            fd: other.as_raw_fd(),
            addr: dir.join("elsewhere").display().to_string(),
        };
        // A failed adoption closes the fd.
        std::mem::forget(other);
        assert!(matches!(
            crate::handoff::adopt_unix(&wrong, SockType::Datagram),
            Err(crate::handoff::FdError::NotBound { .. })
        ));
        let again = NotifySocket::adopt(&HandedUnix {
            fd: dup.as_raw_fd(),
            addr: handed.addr.clone(),
        })
        .unwrap();
        std::mem::forget(dup);
        assert_eq!(again.name.to_string(), handed.addr);
        assert!(again.drain()[0].message.ready);
    }

    fn receives_from(sock: &NotifySocket) {
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let addr = sock.name.to_addr().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let iov = [std::io::IoSlice::new(b"READY=1\nSTATUS=up")];
        let fds = [w.as_raw_fd()];
        let cmsg = [socket::ControlMessage::ScmRights(&fds)];
        socket::sendmsg(client.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&addr)).unwrap();
        drop(w);
        let got = sock.drain();
        assert_eq!(got.len(), 1);
        assert!(got[0].message.ready);
        assert_eq!(got[0].fds_closed, 1);
        let sender = got[0].sender.unwrap();
        assert_eq!(sender.pid, crate::pid::Pid::this());
        // Every write end is closed now: the read end sees EOF.
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 0);
    }
}

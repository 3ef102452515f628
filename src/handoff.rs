//! What one sup image hands the next across a hot restart's `execve`.
//!
//! The state travels in one versioned environment variable, `SUP_HANDOFF`
//! (JSON): the generation to start, the program to re-resolve, when the
//! restart began, and each listening socket by fd, address and name — so
//! the new image matches sockets to its `--bind` entries by address, never
//! by position. Workers never see the variable (spawn strips it). Inherited
//! fds are validated before they are trusted: a socket, of the kind and
//! family its address says.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde_json::{Value, json};

pub const VAR: &str = "SUP_HANDOFF";
const VERSION: u64 = 1;

/// One socket handed across.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedSocket {
    pub fd: RawFd,
    /// The configured address (`BindAddr` display form, e.g. `tcp://127.0.0.1:0`).
    pub addr: String,
    pub name: String,
    /// The unix socket file sup created: (path, device, inode).
    pub created: Option<(PathBuf, u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The restart's number, so `sup ctl --wait` can follow it across the exec.
    pub restart_id: u64,
    pub generation: u64,
    /// How sup was started (argv[0] made absolute, or a bare name for PATH).
    pub exe: String,
    /// Wall-clock milliseconds since the epoch when the restart was asked for.
    pub started_ms: u64,
    /// The directory the first sup image started in: relative pidfile, log
    /// file and socket paths stay anchored there across restarts.
    pub origin: PathBuf,
    pub sockets: Vec<HandedSocket>,
}

impl Handoff {
    pub fn encode(&self) -> String {
        let sockets: Vec<Value> = self
            .sockets
            .iter()
            .map(|s| {
                json!({
                    "fd": s.fd,
                    "addr": s.addr,
                    "name": s.name,
                    "created": s.created.as_ref().map(|(p, dev, ino)| json!([p, dev, ino])),
                })
            })
            .collect();
        json!({
                        "version": VERSION,
            "restart_id": self.restart_id,
            "generation": self.generation,
            "exe": self.exe,
                        "started_ms": self.started_ms,
            "origin": self.origin,
            "sockets": sockets,
        })
        .to_string()
    }

    pub fn decode(text: &str) -> Result<Handoff, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let version = v["version"].as_u64().ok_or("no version")?;
        if version != VERSION {
            return Err(format!("version {version} is not understood (expected {VERSION})"));
        }
        let mut sockets = Vec::new();
        for s in v["sockets"].as_array().ok_or("no sockets")? {
            let created = match &s["created"] {
                Value::Null => None,
                c => Some((
                    PathBuf::from(c[0].as_str().ok_or("bad created path")?),
                    c[1].as_u64().ok_or("bad created device")?,
                    c[2].as_u64().ok_or("bad created inode")?,
                )),
            };
            sockets.push(HandedSocket {
                fd: s["fd"]
                    .as_i64()
                    .and_then(|f| i32::try_from(f).ok())
                    .filter(|f| *f > 2)
                    .ok_or("bad fd")?,
                addr: s["addr"].as_str().ok_or("bad addr")?.to_string(),
                name: s["name"].as_str().ok_or("bad name")?.to_string(),
                created,
            });
        }
        Ok(Handoff {
            restart_id: v["restart_id"].as_u64().unwrap_or(0),
            generation: v["generation"].as_u64().ok_or("no generation")?,
            exe: v["exe"].as_str().ok_or("no exe")?.to_string(),
            started_ms: v["started_ms"].as_u64().unwrap_or(0),
            origin: PathBuf::from(v["origin"].as_str().ok_or("no origin")?),
            sockets,
        })
    }

    /// The handoff this image was started with, if any.
    pub fn from_env() -> Option<Result<Handoff, String>> {
        let text = std::env::var(VAR).ok()?;
        Some(Handoff::decode(&text))
    }

    pub fn fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(|s| s.fd).collect()
    }
}

/// Take ownership of a handed fd after checking it is what the handoff
/// says: a socket, stream for tcp/unix or datagram for udp, of the right
/// address family. Marks it CLOEXEC again.
pub fn adopt(s: &HandedSocket) -> Result<OwnedFd, String> {
    use nix::sys::socket::{SockType, getsockopt, sockopt};
    let fd = s.fd;
    // SAFETY: fstat on a number; an invalid fd is reported as EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!("fd {fd} for {} is not open", s.addr));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("fd {fd} for {} is not a socket", s.addr));
    }
    // SAFETY: the fd is open (fstat succeeded) and sup owns it from here on:
    // it was handed to this image and nothing else in it refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let ty = getsockopt(&owned, sockopt::SockType).map_err(|e| format!("fd {fd}: {e}"))?;
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
    let (want_ty, want_domains): (SockType, &[i32]) = if s.addr.starts_with("udp://") {
        (SockType::Datagram, &[libc::AF_INET, libc::AF_INET6])
    } else if s.addr.starts_with("unix:") {
        (SockType::Stream, &[libc::AF_UNIX])
    } else {
        (SockType::Stream, &[libc::AF_INET, libc::AF_INET6])
    };
    if ty != want_ty || !want_domains.contains(&domain) {
        return Err(format!("fd {fd} is not a socket of the kind {} needs", s.addr));
    }
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("fd {}: {e}", owned.as_raw_fd()))?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = Handoff {
            restart_id: 3,
            generation: 7,
            exe: "/usr/local/bin/sup".into(),
            started_ms: 1_700_000_000_000,
            origin: "/srv/app".into(),
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
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        assert!(Handoff::decode("nope").unwrap_err().contains("not JSON"));
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
        let file = std::fs::File::open("/dev/null").unwrap();
        let not_sock = HandedSocket {
            fd: file.as_raw_fd(),
            addr: "tcp://127.0.0.1:0".into(),
            name: "x".into(),
            created: None,
        };
        assert!(adopt(&not_sock).unwrap_err().contains("is not a socket"));
    }
}

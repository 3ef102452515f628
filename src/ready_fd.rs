//! `--ready fd:N`: the readiness pipes (s6's `notification-fd`). For each
//! booting worker sup makes a pipe; the worker gets the write end as fd N
//! and writes a newline when it is ready. This module owns the read ends,
//! in a bounded table whose index is the mio token's offset, and turns what
//! arrives into one answer per worker: ready (a newline), or not (the pipe
//! closed without one). It decides nothing else: the core does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::pid::Pid;

/// How many readiness pipes may be open at once (booting workers).
pub const MAX_PIPES: usize = 1 << 16;

/// A pipe made for a worker about to be spawned: the child's end (moved to
/// fd N in the child) and sup's end.
pub struct Pending {
    pub child_end: OwnedFd,
    read_end: OwnedFd,
}

impl Pending {
    /// A new pipe, both ends CLOEXEC, sup's end non-blocking.
    pub fn new() -> std::io::Result<Pending> {
        let (read_end, child_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&read_end, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        Ok(Pending { child_end, read_end })
    }
}

/// sup's ends of the readiness pipes of booting workers.
#[derive(Default)]
pub struct ReadyPipes {
    slots: Vec<Option<(Pid, OwnedFd)>>,
    free: Vec<usize>,
}

impl ReadyPipes {
    /// Watch `pending`'s read end for worker `pid` (the write end is closed
    /// here: only the worker holds one now).
    pub fn watch(&mut self, registry: &Registry, base: usize, pid: Pid, pending: Pending) -> std::io::Result<()> {
        drop(pending.child_end);
        self.insert(registry, base, pid, pending.read_end)
    }

    /// Take over a read end handed across a hot restart.
    pub fn adopt(&mut self, registry: &Registry, base: usize, pid: Pid, fd: RawFd) -> std::io::Result<()> {
        // SAFETY: the fd was handed to this image in the handoff for sup
        // alone; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
        self.insert(registry, base, pid, fd)
    }

    fn insert(&mut self, registry: &Registry, base: usize, pid: Pid, fd: OwnedFd) -> std::io::Result<()> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.slots.len() < MAX_PIPES => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(std::io::Error::other("too many readiness pipes open")),
        };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), Token(base + index), Interest::READABLE)?;
        self.slots[index] = Some((pid, fd));
        Ok(())
    }

    /// Read what arrived on pipe `index`: `Some((pid, ready))` once it says
    /// (a newline: ready; end of file first: not), and the pipe is closed.
    pub fn read(&mut self, registry: &Registry, index: usize) -> Option<(Pid, bool)> {
        let (pid, fd) = self.slots.get(index)?.as_ref()?;
        let pid = *pid;
        let mut buf = [0u8; 256];
        let answer = loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break false,
                Ok(n) if buf[..n].contains(&b'\n') => break true,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return None,
                Err(_) => break false,
            }
        };
        if let Some((_, fd)) = self.slots[index].take() {
            let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        self.free.push(index);
        Some((pid, answer))
    }

    /// Every open pipe, for the next image: (fd, worker pid). CLOEXEC is
    /// cleared by the exec's preparation like the sockets'.
    pub fn handed(&self) -> Vec<(RawFd, Pid)> {
        self.slots
            .iter()
            .flatten()
            .map(|(pid, fd)| (fd.as_raw_fd(), *pid))
            .collect()
    }
}

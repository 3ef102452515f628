//! sup's own stdout or stderr as the destination of worker lines: a bounded
//! queue of whole lines, written without ever blocking the loop for long.
//!
//! sup writes through an fd of its own for each, chosen by what fd 1 or 2
//! is, because `O_NONBLOCK` is a flag of the open file, shared with every
//! process holding it (the shell's terminal, the hook): it must not be set
//! on fd 1 itself.
//! - a regular file (`--log-file`, `sup >> app.log`): a duplicate; writes to
//!   a file do not wait for a reader;
//! - a socket (systemd's journal stream): a duplicate, written with
//!   `MSG_DONTWAIT`;
//! - anything else (a pipe, a terminal): the same pipe or device opened
//!   anew through `/proc/self/fd/N`, non-blocking, so that only sup's own
//!   open file is; where that cannot be done, a duplicate that is written
//!   only after `poll` says it can take a write of `PIPE_BUF` bytes.
//!
//! Writes to anything but a file are at most `PIPE_BUF` bytes and end at a
//! line's end, so that each is atomic on a pipe: a worker line and one of
//! sup's own log lines (written to fd 2 directly) never interleave on a
//! shared pipe; only a line longer than `PIPE_BUF` may, where the kernel
//! itself guarantees nothing.
//!
//! When the queue holds [`CAPACITY`] bytes, whole lines are dropped and
//! counted: a slow reader of sup's output slows nobody down. A log line says
//! when dropping begins and, with the count, when the destination has
//! caught up.

use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;

/// The most worker output waiting for one of sup's streams.
pub const CAPACITY: usize = 4 << 20;
/// The largest write to a file.
const FILE_CHUNK: usize = 1 << 20;
/// The largest write to anything else: atomic on a pipe.
const ATOMIC: usize = libc::PIPE_BUF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Socket,
    /// A non-blocking open file of sup's own.
    NonBlocking,
    /// A blocking duplicate: `poll` before each write.
    Polled,
}

pub struct Sink {
    /// `stdout` or `stderr`, for the log.
    name: &'static str,
    /// sup's fd this stands for (1 or 2).
    target: RawFd,
    fd: OwnedFd,
    kind: Kind,
    /// Whole lines waiting, from `start`.
    queue: Vec<u8>,
    start: usize,
    /// Lines dropped, in all.
    pub dropped: u64,
    /// Lines dropped since dropping began (`None`: not dropping).
    episode: Option<u64>,
    /// Registered for writability (only while a write would block).
    watching: bool,
}

impl Sink {
    /// A sink for sup's fd `target` as it is now.
    pub fn open(target: RawFd, name: &'static str) -> std::io::Result<Sink> {
        let (fd, kind) = open_for(target)?;
        Ok(Sink {
            name,
            target,
            fd,
            kind,
            queue: Vec::new(),
            start: 0,
            dropped: 0,
            episode: None,
            watching: false,
        })
    }

    /// Point at what fd `target` is now (after `--log-file` was reopened),
    /// keeping what is queued.
    pub fn reopen(&mut self, registry: &Registry) -> std::io::Result<()> {
        let (fd, kind) = open_for(self.target)?;
        self.unwatch(registry);
        self.fd = fd;
        self.kind = kind;
        Ok(())
    }

    /// Bytes waiting.
    pub fn queued(&self) -> usize {
        self.queue.len() - self.start
    }

    /// What is waiting (handed to the next image across an exec).
    pub fn pending(&self) -> &[u8] {
        &self.queue[self.start..]
    }

    /// Queue one line, which `render` appends; `false` if it was dropped
    /// because the queue is full.
    pub fn push(&mut self, render: impl FnOnce(&mut Vec<u8>)) -> bool {
        let before = self.queue.len();
        render(&mut self.queue);
        if self.queue.len() - self.start <= CAPACITY {
            return true;
        }
        self.queue.truncate(before);
        self.drop_lines(1, None);
        false
    }

    /// Queue bytes that are whole lines already (from the previous image).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.queue.extend_from_slice(bytes);
    }

    fn drop_lines(&mut self, n: u64, why: Option<&str>) {
        self.dropped += n;
        match &mut self.episode {
            Some(count) => *count += n,
            None => {
                self.episode = Some(n);
                match why {
                    Some(why) => log::warn!(
                        "worker output: cannot write to sup's {}: {why}; dropping worker lines",
                        self.name
                    ),
                    None => log::warn!(
                        "worker output: sup's {} is not keeping up ({} MiB waiting); dropping worker lines until \
                         it does",
                        self.name,
                        CAPACITY >> 20
                    ),
                }
            }
        }
    }

    /// Write what can be written now; if the rest would block, watch for
    /// writability with `token`.
    pub fn flush(&mut self, registry: &Registry, token: Token) {
        loop {
            if self.start == self.queue.len() {
                self.emptied(registry);
                return;
            }
            let chunk = &self.queue[self.start..];
            let len = self.chunk_len(chunk);
            match self.write(&chunk[..len]) {
                Ok(0) | Err(Errno::EAGAIN) => {
                    self.watch(registry, token);
                    break;
                }
                Ok(n) => self.start += n,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    self.fail(e);
                    self.emptied(registry);
                    return;
                }
            }
        }
        // Keep the queue from creeping: move what waits to the front once
        // the written part is the larger.
        if self.start > self.queue.len() / 2 {
            self.queue.drain(..self.start);
            self.start = 0;
        }
    }

    /// Before sup exits: write what is queued, waiting until `deadline` at
    /// most for a slow reader; what is left then is dropped and counted.
    pub fn flush_until(&mut self, registry: &Registry, token: Token, deadline: Instant) {
        loop {
            self.flush(registry, token);
            if self.queued() == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let lines = memchr::memchr_iter(b'\n', self.pending()).count().max(1) as u64;
                self.drop_lines(lines, Some("sup is exiting and it does not take more"));
                self.queue.clear();
                self.start = 0;
                self.emptied(registry);
                return;
            }
            let ms = left.as_millis().min(1000) as libc::c_int;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        }
    }

    /// The length of the next write: whole lines up to the kind's limit, or
    /// one long line alone.
    fn chunk_len(&self, chunk: &[u8]) -> usize {
        let limit = if self.kind == Kind::File { FILE_CHUNK } else { ATOMIC };
        if chunk.len() <= limit {
            return chunk.len();
        }
        match memchr::memrchr(b'\n', &chunk[..limit]) {
            Some(i) => i + 1,
            None => memchr::memchr(b'\n', chunk).map_or(chunk.len(), |i| i + 1),
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<usize, Errno> {
        let fd = self.fd.as_raw_fd();
        let n = match self.kind {
            // SAFETY: sending from a live buffer on an fd sup owns.
            Kind::Socket => unsafe {
                libc::send(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
            Kind::Polled => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one pollfd, valid for the call; no waiting.
                if unsafe { libc::poll(&mut pfd, 1, 0) } != 1 || pfd.revents & libc::POLLOUT == 0 {
                    return Err(Errno::EAGAIN);
                }
                // SAFETY: writing from a live buffer to an fd sup owns.
                unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
            }
            // SAFETY: as above.
            Kind::File | Kind::NonBlocking => unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) },
        };
        if n < 0 { Err(Errno::last()) } else { Ok(n as usize) }
    }

    /// A write failed for good (the reader is gone): what waits is dropped.
    fn fail(&mut self, e: Errno) {
        let lines = memchr::memchr_iter(b'\n', self.pending()).count().max(1) as u64;
        self.queue.clear();
        self.start = 0;
        self.drop_lines(lines, Some(&crate::files::os_error(&std::io::Error::from(e))));
    }

    fn emptied(&mut self, registry: &Registry) {
        self.queue.clear();
        self.start = 0;
        if self.queue.capacity() > CAPACITY / 4 {
            self.queue.shrink_to(64 << 10);
        }
        self.unwatch(registry);
        if let Some(n) = self.episode.take() {
            log::warn!(
                "worker output: sup's {} has caught up; {n} worker line(s) were dropped meanwhile",
                self.name
            );
        }
    }

    fn watch(&mut self, registry: &Registry, token: Token) {
        if self.watching || self.kind == Kind::File {
            return;
        }
        let raw = self.fd.as_raw_fd();
        match registry.register(&mut SourceFd(&raw), token, Interest::WRITABLE) {
            Ok(()) => self.watching = true,
            Err(e) => log::debug!("worker output: cannot watch sup's {}: {e}", self.name),
        }
    }

    fn unwatch(&mut self, registry: &Registry) {
        if self.watching {
            let raw = self.fd.as_raw_fd();
            let _ = registry.deregister(&mut SourceFd(&raw));
            self.watching = false;
        }
    }
}

/// sup's own fd for writing to what `target` is (see the module's header).
fn open_for(target: RawFd) -> std::io::Result<(OwnedFd, Kind)> {
    // SAFETY: fd 1 and 2 are always open in sup (`sanitize_fds`); borrowed
    // for the length of this function only.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(target) };
    let mode = nix::sys::stat::fstat(borrowed).map_or(0, |st| st.st_mode) & libc::S_IFMT;
    let dup = || borrowed.try_clone_to_owned();
    Ok(match mode {
        libc::S_IFREG | libc::S_IFBLK => (dup()?, Kind::File),
        libc::S_IFSOCK => (dup()?, Kind::Socket),
        _ => match reopen_nonblocking(target) {
            Ok(fd) => (fd, Kind::NonBlocking),
            Err(_) => (dup()?, Kind::Polled),
        },
    })
}

/// The pipe or device at fd `target`, opened anew for writing, non-blocking.
fn reopen_nonblocking(target: RawFd) -> std::io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{target}")).map_err(std::io::Error::other)?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A file holding `bytes`, to hand across an exec (memory only, on Linux).
pub fn spill(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::Write;
    let fd = anonymous_file()?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(file.into())
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    // SAFETY: a static NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"sup-worker-output".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("sup-worker-output.{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file.into())
}

/// What a handed spill file holds (at most `limit` bytes); the fd is closed.
pub fn read_spill(fd: OwnedFd, limit: u64) -> std::io::Result<Vec<u8>> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(std::io::Error::other("not a file"));
    }
    let mut file = std::fs::File::from(fd);
    file.rewind()?;
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn a_pipe_nobody_reads_fills_then_lines_are_dropped_and_counted_never_blocking() {
        let (r, w) = pipe();
        // Stand the pipe in for fd `target` (a number of our own, not 1).
        let target = w.as_raw_fd();
        let mut sink = Sink::open(target, "stdout").unwrap();
        assert_eq!(sink.kind, Kind::NonBlocking);
        let poll = mio::Poll::new().unwrap();
        let line = vec![b'x'; 999];
        let mut accepted = 0u64;
        let n = (CAPACITY + (1 << 20)) / 1000 + 10;
        for _ in 0..n {
            if sink.push(|q| {
                q.extend_from_slice(&line);
                q.push(b'\n');
            }) {
                accepted += 1;
            }
            sink.flush(poll.registry(), Token(9));
        }
        assert!(sink.dropped > 0, "the queue is bounded");
        assert_eq!(accepted + sink.dropped, n as u64);
        assert!(sink.queued() <= CAPACITY);
        // What reached the pipe is whole lines.
        drop(w);
        nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(k) = nix::unistd::read(&r, &mut buf) {
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
        }
        assert!(!got.is_empty());
        assert!(
            got.chunks(1000)
                .all(|c| c.len() == 1000 && c[999] == b'\n' && c[..999] == line[..])
        );
    }

    #[test]
    fn spills_round_trip() {
        let fd = spill(b"partial line\nand more").unwrap();
        assert_eq!(read_spill(fd, 1 << 20).unwrap(), b"partial line\nand more");
    }
}

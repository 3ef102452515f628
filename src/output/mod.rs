//! Named log lines (`--worker-output plain|prefix|json`): sup owns each
//! worker's stdout and stderr pipes and writes every line whole, with whose
//! it is, to its own stdout or stderr.
//!
//! This module owns the read ends of the pipes (one per worker and stream,
//! tied to the worker's slot, pid and generation from the spawn until the
//! pipe's end-of-file, which may come after the worker was reaped: a child
//! of the worker can hold it), what is left of a line not yet ended, and
//! the two [`Sink`]s. It makes no decision about workers: the core never
//! hears of pipes. The shell calls it: a pipe for each spawn, readiness,
//! a timer, a flush after every wake-up, the hand-over before an exec.
//!
//! Reading keeps the loop cheap at a high line rate without delaying a
//! quiet worker: a pipe is read as soon as it is readable, and then, if the
//! read was small, it is read on a timer every [`TICK`] instead (taken out
//! of epoll) for as long as it has something each time, so that a worker
//! writing one line at a time does not cost sup one wake-up per line; a
//! pipe that is found empty goes back to epoll, and one that brings half a
//! pipe's worth stays there (a timer would let it fill). A read takes at
//! most [`BUDGET`] bytes from one pipe per wake-up, so one worker cannot
//! starve the loop. Nothing waits on sup's output (see [`sink`]): reading
//! keeps up however slow the reader of sup's stdout is, so a worker never
//! blocks on its pipe for longer than sup takes to come round.
//!
//! Across a hot restart or a reexec the read ends cross the `execve` like
//! the listening sockets, with the partial lines and the queued output in
//! a spill file ([`Output::hand_over`]); the new image carries on reading
//! where the old one stopped, so no line is lost, doubled or torn.

pub mod handed;
pub mod lines;
pub mod sink;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::errno::Errno;

pub use handed::{HandedOutput, HandedPipe};
pub use lines::{Format, Stream, Who};
use lines::{Piece, Stamp};
use sink::Sink;

/// How often a busy pipe is read while it stays busy.
pub const TICK: Duration = Duration::from_millis(2);
/// The most read from one pipe in one go.
const BUDGET: usize = 256 << 10;
/// One read.
const CHUNK: usize = 64 << 10;
/// A read this large means a fast writer: it is read on readiness.
const BUSY: usize = 32 << 10;
/// The largest spill file a new image reads.
const SPILL_LIMIT: u64 = 256 << 20;

/// The tokens the event loop gives this module.
#[derive(Debug, Clone, Copy)]
pub struct Tokens {
    /// Pipe `i` is `Token(pipes + i)`.
    pub pipes: usize,
    /// sup's stdout and stderr, while a write to them would block.
    pub sinks: [Token; 2],
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Lines written (queued) to sup's stdout and stderr.
    pub lines: [u64; 2],
    /// Lines dropped because sup's stdout or stderr did not keep up.
    pub dropped: [u64; 2],
    /// Pieces of lines longer than the cap.
    pub cut: u64,
    /// Bytes waiting for sup's stdout and stderr.
    pub queued: [usize; 2],
    /// Pipes open.
    pub pipes: usize,
}

struct Pipe {
    fd: OwnedFd,
    who: Who,
    /// What goes before each line (see [`lines::head`]).
    head: Vec<u8>,
    /// A line not yet ended.
    partial: Vec<u8>,
    /// Registered in epoll (otherwise read on the timer).
    watched: bool,
}

/// A new worker's pipes: the parent keeps the read ends, the child gets the
/// write ends as its fds 1 and 2.
pub struct WorkerPipes {
    read: [OwnedFd; 2],
    write: [OwnedFd; 2],
}

impl WorkerPipes {
    /// The write ends, for stdout and stderr (the spawn's plan).
    pub fn write_ends(&self) -> [RawFd; 2] {
        [self.write[0].as_raw_fd(), self.write[1].as_raw_fd()]
    }
}

/// What came of reading one pipe.
#[derive(Debug, Clone, Copy, Default)]
struct Drained {
    bytes: usize,
    /// The budget ran out before the pipe was empty.
    more: bool,
    /// The pipe was closed (end of file, or an error).
    closed: bool,
}

pub struct Output {
    /// `None`: `inherit`, and nothing handed over.
    format: Option<Format>,
    pipes: Vec<Option<Pipe>>,
    free: Vec<usize>,
    /// Pipes read on the timer.
    polled: Vec<usize>,
    next_tick: Option<Instant>,
    /// sup's stdout and stderr (by [`Stream::index`]); none with `inherit`
    /// and nothing handed over, so that sup then opens nothing at all.
    sinks: Vec<Sink>,
    buf: Vec<u8>,
    lines: [u64; 2],
    cut: u64,
    tokens: Tokens,
}

impl Output {
    /// The output as configured, carrying on with what a previous image
    /// handed over: its pipes are adopted (each checked to be a pipe) and
    /// read from where it stopped, its queued lines written first.
    pub fn new(
        format: Option<Format>,
        handed: Option<&HandedOutput>,
        tokens: Tokens,
        registry: &Registry,
    ) -> std::io::Result<Output> {
        let sinks = if format.is_some() || handed.is_some() {
            vec![Sink::open(1, "stdout")?, Sink::open(2, "stderr")?]
        } else {
            Vec::new()
        };
        let mut out = Output {
            format,
            pipes: Vec::new(),
            free: Vec::new(),
            polled: Vec::new(),
            next_tick: None,
            sinks,
            buf: Vec::new(),
            lines: [0; 2],
            cut: 0,
            tokens,
        };
        if let Some(h) = handed {
            out.adopt(h, registry);
        }
        Ok(out)
    }

    fn adopt(&mut self, h: &HandedOutput, registry: &Registry) {
        // The new configuration's format applies to the adopted workers'
        // lines too; with `inherit` they go on in the old one until they end.
        let handed_format = Format::of(h.mode, h.timestamps).unwrap_or(Format {
            style: lines::Style::Prefix,
            timestamps: h.timestamps,
        });
        let format = *self.format.get_or_insert(handed_format);
        let spill = match h.spill {
            // SAFETY: an fd named in the handoff, for this image alone; it is
            // checked to be a file before it is read, and closed after.
            Some(fd) => sink::read_spill(unsafe { OwnedFd::from_raw_fd(fd) }, SPILL_LIMIT).unwrap_or_else(|e| {
                log::error!("worker output: cannot read what the previous image left unwritten: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let range = |(at, len): (u64, u64)| spill.get(at as usize..(at + len) as usize).unwrap_or_default();
        for (k, sink) in self.sinks.iter_mut().enumerate() {
            sink.push_raw(range(h.queued[k]));
            sink.dropped = h.dropped[k];
        }
        self.lines = h.lines;
        self.cut = h.cut;
        for p in &h.pipes {
            match adopt_pipe(p) {
                Ok(fd) => {
                    let who = Who {
                        slot: p.slot,
                        pid: p.pid,
                        generation: p.generation,
                        stream: p.stream,
                    };
                    let i = self.insert(fd, who, format);
                    if let Some(pipe) = self.pipes[i].as_mut() {
                        pipe.partial.extend_from_slice(range(p.partial));
                    }
                    self.watch(i, registry);
                }
                Err(e) => {
                    log::error!(
                        "worker output: not adopting the {} pipe of worker {} (pid {}, gen {}): {e}",
                        p.stream.as_str(),
                        p.slot,
                        p.pid,
                        p.generation
                    );
                    p.close();
                }
            }
        }
    }

    /// Pipes for a new worker, or `None` when workers inherit sup's output.
    pub fn pipes_for_worker(&self) -> Result<Option<WorkerPipes>, nix::Error> {
        if self.format.is_none() {
            return Ok(None);
        }
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Only sup's end is non-blocking: O_NONBLOCK belongs to the open
        // file, and each end is an open file of its own.
        for r in [&out_r, &err_r] {
            nix::fcntl::fcntl(r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        }
        Ok(Some(WorkerPipes {
            read: [out_r, err_r],
            write: [out_w, err_w],
        }))
    }

    /// The worker is running: keep the read ends (the write ends close here,
    /// so that the worker's end of file is the pipe's).
    pub fn attach(&mut self, pipes: WorkerPipes, slot: usize, pid: i32, generation: u64, registry: &Registry) {
        let Some(format) = self.format else { return };
        let WorkerPipes { read, write } = pipes;
        drop(write);
        for (fd, stream) in read.into_iter().zip(Stream::BOTH) {
            let who = Who {
                slot,
                pid,
                generation,
                stream,
            };
            let i = self.insert(fd, who, format);
            self.watch(i, registry);
        }
    }

    fn insert(&mut self, fd: OwnedFd, who: Who, format: Format) -> usize {
        let pipe = Pipe {
            fd,
            who,
            head: lines::head(format, who),
            partial: Vec::new(),
            watched: false,
        };
        match self.free.pop() {
            Some(i) => {
                self.pipes[i] = Some(pipe);
                i
            }
            None => {
                self.pipes.push(Some(pipe));
                self.pipes.len() - 1
            }
        }
    }

    /// Whether `token` is one of this module's, and then handle its
    /// readiness (a pipe to read; a sink is written by [`Output::flush`]).
    pub fn ready(&mut self, token: Token, registry: &Registry, now: Instant) -> bool {
        if self.tokens.sinks.contains(&token) {
            return true;
        }
        let Some(i) = token.0.checked_sub(self.tokens.pipes) else {
            return false;
        };
        if !self.pipes.get(i).is_some_and(|p| p.as_ref().is_some_and(|p| p.watched)) {
            // A pipe on the timer (or closed since): nothing to do now.
            return true;
        }
        let d = self.read_pipe(i, registry, None);
        if d.closed || d.bytes == 0 || (d.bytes >= BUSY && !d.more) {
            return true;
        }
        // A small read, or more than the budget: the timer takes over.
        self.unwatch(i, registry);
        self.polled.push(i);
        self.schedule(if d.more { now } else { now + TICK });
        true
    }

    /// When the timer wants to read the busy pipes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Read the pipes on the timer, if it is due.
    pub fn tick(&mut self, now: Instant, registry: &Registry) {
        if self.next_tick.is_none_or(|t| t > now) {
            return;
        }
        self.next_tick = None;
        let stamp = self.stamp();
        for i in std::mem::take(&mut self.polled) {
            let d = self.read_pipe(i, registry, stamp);
            if d.closed {
                continue;
            }
            if d.more {
                self.polled.push(i);
                self.schedule(now);
            } else if (d.bytes > 0 && d.bytes < BUSY) || !self.watch(i, registry) {
                // Still busy (or it cannot be watched): the timer again.
                self.polled.push(i);
                self.schedule(now + TICK);
            }
        }
    }

    fn schedule(&mut self, at: Instant) {
        self.next_tick = Some(self.next_tick.map_or(at, |t| t.min(at)));
    }

    fn stamp(&self) -> Option<Stamp> {
        self.format.filter(|f| f.timestamps).map(|_| Stamp::now())
    }

    /// Read pipe `i` until it is empty or the budget is spent; each whole
    /// line goes to its sink. At end of file the partial line goes out
    /// marked and the pipe is closed.
    fn read_pipe(&mut self, i: usize, registry: &Registry, stamp: Option<Stamp>) -> Drained {
        let Some(format) = self.format else {
            return Drained::default();
        };
        let stamp = stamp.or_else(|| self.stamp());
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let Output {
            pipes,
            sinks,
            buf,
            lines: counts,
            cut,
            ..
        } = self;
        let Some(Some(pipe)) = pipes.get_mut(i) else {
            return Drained {
                closed: true,
                ..Drained::default()
            };
        };
        let k = pipe.who.stream.index();
        let Some(sink) = sinks.get_mut(k) else {
            return Drained::default();
        };
        let mut d = Drained::default();
        loop {
            match nix::unistd::read(&pipe.fd, buf) {
                Ok(0) => {
                    d.closed = true;
                    break;
                }
                Ok(n) => {
                    d.bytes += n;
                    let head = &pipe.head;
                    lines::split(&mut pipe.partial, &buf[..n], |line, piece| {
                        if sink.push(|q| lines::render(q, format, head, stamp.as_ref(), line, piece)) {
                            counts[k] += 1;
                        }
                        if piece == Piece::Cut {
                            *cut += 1;
                        }
                    });
                    if n < buf.len() {
                        break;
                    }
                    if d.bytes >= BUDGET {
                        d.more = true;
                        break;
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    log::warn!(
                        "worker output: cannot read the {} of worker {} (pid {}, gen {}): {e}; closing it",
                        pipe.who.stream.as_str(),
                        pipe.who.slot,
                        pipe.who.pid,
                        pipe.who.generation
                    );
                    d.closed = true;
                    break;
                }
            }
        }
        if d.closed {
            self.close(i, registry, stamp);
        }
        d
    }

    /// The pipe has ended: its last bytes without a newline go out marked.
    fn close(&mut self, i: usize, registry: &Registry, stamp: Option<Stamp>) {
        self.unwatch(i, registry);
        let Some(pipe) = self.pipes.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        self.polled.retain(|&p| p != i);
        if let (Some(format), false) = (self.format, pipe.partial.is_empty()) {
            let k = pipe.who.stream.index();
            let pushed = self.sinks.get_mut(k).is_some_and(|sink| {
                sink.push(|q| lines::render(q, format, &pipe.head, stamp.as_ref(), &pipe.partial, Piece::NoNewline))
            });
            if pushed {
                self.lines[k] += 1;
            }
        }
    }

    /// Register pipe `i` in epoll; `false` if that failed (it stays on the
    /// timer).
    fn watch(&mut self, i: usize, registry: &Registry) -> bool {
        let token = Token(self.tokens.pipes + i);
        let Some(Some(pipe)) = self.pipes.get_mut(i) else {
            return true;
        };
        if pipe.watched {
            return true;
        }
        let raw = pipe.fd.as_raw_fd();
        match registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
            Ok(()) => {
                pipe.watched = true;
                true
            }
            Err(e) => {
                log::debug!("worker output: cannot watch a pipe: {e}");
                false
            }
        }
    }

    fn unwatch(&mut self, i: usize, registry: &Registry) {
        if let Some(Some(pipe)) = self.pipes.get_mut(i)
            && pipe.watched
        {
            let raw = pipe.fd.as_raw_fd();
            let _ = registry.deregister(&mut SourceFd(&raw));
            pipe.watched = false;
        }
    }

    /// Write what is queued, as far as sup's stdout and stderr take it now.
    pub fn flush(&mut self, registry: &Registry) {
        for (sink, token) in self.sinks.iter_mut().zip(self.tokens.sinks) {
            if sink.queued() > 0 {
                sink.flush(registry, token);
            }
        }
    }

    /// `--log-file` was reopened onto fds 1 and 2: write there from now on.
    pub fn reopen(&mut self, registry: &Registry) {
        for sink in &mut self.sinks {
            if let Err(e) = sink.reopen(registry) {
                log::error!("worker output: cannot follow the reopened log file: {e}; still writing to the old one");
            }
        }
    }

    /// Read every pipe as far as it goes now (before an exec or an exit).
    pub fn drain_all(&mut self, registry: &Registry) {
        let stamp = self.stamp();
        for i in 0..self.pipes.len() {
            while self.pipes[i].is_some() {
                let d = self.read_pipe(i, registry, stamp);
                if !d.more {
                    break;
                }
            }
        }
    }

    /// sup is exiting: read what the workers left in their pipes, send the
    /// partial lines out marked, and write everything, waiting a second at
    /// most for a slow reader.
    pub fn finish(&mut self, registry: &Registry) {
        if self.format.is_none() {
            return;
        }
        self.drain_all(registry);
        let stamp = self.stamp();
        for i in 0..self.pipes.len() {
            if self.pipes[i].is_some() {
                self.close(i, registry, stamp);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for (sink, token) in self.sinks.iter_mut().zip(self.tokens.sinks) {
            sink.flush_until(registry, token, deadline);
        }
    }

    /// Everything the next image needs to carry on: the pipes, the partial
    /// lines and the queued output (in a spill file, also returned so that
    /// it is closed if the exec fails), the counters. `None` when there is
    /// nothing to hand over.
    pub fn hand_over(&self) -> std::io::Result<Option<(HandedOutput, Option<OwnedFd>)>> {
        let Some(format) = self.format else {
            return Ok(None);
        };
        let mut spill = Vec::new();
        let mut range = |bytes: &[u8]| {
            let at = spill.len() as u64;
            spill.extend_from_slice(bytes);
            (at, bytes.len() as u64)
        };
        let pipes = self
            .pipes
            .iter()
            .flatten()
            .map(|p| HandedPipe {
                fd: p.fd.as_raw_fd(),
                slot: p.who.slot,
                pid: p.who.pid,
                generation: p.who.generation,
                stream: p.who.stream,
                partial: range(&p.partial),
            })
            .collect();
        let queued = [range(self.pending(0)), range(self.pending(1))];
        let file = if spill.is_empty() {
            None
        } else {
            Some(sink::spill(&spill)?)
        };
        Ok(Some((
            HandedOutput {
                mode: format.mode(),
                timestamps: format.timestamps,
                pipes,
                spill: file.as_ref().map(AsRawFd::as_raw_fd),
                queued,
                lines: self.lines,
                dropped: self.dropped(),
                cut: self.cut,
            },
            file,
        )))
    }

    pub fn counters(&self) -> Counters {
        Counters {
            lines: self.lines,
            dropped: self.dropped(),
            cut: self.cut,
            queued: [self.pending(0).len(), self.pending(1).len()],
            pipes: self.pipes.iter().flatten().count(),
        }
    }

    /// What waits for sup's stdout (0) or stderr (1).
    fn pending(&self, k: usize) -> &[u8] {
        self.sinks.get(k).map_or(&[], Sink::pending)
    }

    fn dropped(&self) -> [u64; 2] {
        [0, 1].map(|k| self.sinks.get(k).map_or(0, |s| s.dropped))
    }
}

/// Take a handed pipe after checking that it is one; non-blocking and
/// CLOEXEC again.
fn adopt_pipe(p: &HandedPipe) -> std::io::Result<OwnedFd> {
    // SAFETY: fstat on a number; an fd that is not open is reported (EBADF).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    if unsafe { libc::fstat(p.fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(std::io::Error::other(format!("fd {} is not a pipe", p.fd)));
    }
    // SAFETY: the fd is open (fstat succeeded) and was handed to this image
    // for sup alone: nothing else in the process refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(p.fd) };
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            pipes: 100,
            sinks: [Token(4), Token(5)],
        }
    }

    #[test]
    fn the_flags_and_the_file_choose_the_format() {
        use crate::config::{Config, ConfigError, WorkerOutput};
        use clap::Parser;
        let parse = |args: &[&str]| Config::parse(crate::cli::Cli::try_parse_from(args).unwrap());
        let (c, errors) = parse(&["sup", "--", "x"]);
        assert!(errors.is_empty());
        assert_eq!(
            Format::of(c.worker_output, c.worker_output_timestamps),
            None,
            "inherit by default"
        );
        let (c, errors) = parse(&[
            "sup",
            "--worker-output",
            "json",
            "--worker-output-timestamps",
            "--",
            "x",
        ]);
        assert!(errors.is_empty());
        assert_eq!(
            Format::of(c.worker_output, c.worker_output_timestamps),
            Some(Format {
                style: lines::Style::Json,
                timestamps: true
            })
        );
        let (_, errors) = parse(&["sup", "--worker-output", "loud", "--", "x"]);
        assert!(matches!(errors[..], [ConfigError::WorkerOutput(_)]), "{errors:?}");
        assert!(
            errors[0]
                .to_string()
                .contains("expected inherit, plain, prefix or json")
        );
        let (_, errors) = parse(&["sup", "--worker-output-timestamps", "--", "x"]);
        assert!(matches!(errors[..], [ConfigError::TimestampsNeedOutput]), "{errors:?}");
        let file = crate::config_file::parse("worker_output: prefix\nworker_output_timestamps: true\n").unwrap();
        assert_eq!(
            (file.worker_output.as_deref(), file.worker_output_timestamps),
            (Some("prefix"), Some(true))
        );
        assert_eq!(
            serde_json::to_string(&WorkerOutput::Prefix).unwrap(),
            "\"prefix\"",
            "as the handoff writes it"
        );
    }

    #[test]
    fn with_inherit_sup_opens_nothing() {
        let poll = mio::Poll::new().unwrap();
        let out = Output::new(None, None, tokens(), poll.registry()).unwrap();
        assert!(out.sinks.is_empty());
        assert!(out.pipes_for_worker().unwrap().is_none());
        assert!(out.hand_over().unwrap().is_none());
        assert_eq!(out.counters(), Counters::default());
    }

    #[test]
    fn a_worker_pipe_is_read_to_its_end_and_handed_over_with_its_partial_line() {
        let poll = mio::Poll::new().unwrap();
        let format = Format {
            style: lines::Style::Prefix,
            timestamps: false,
        };
        let mut out = Output::new(Some(format), None, tokens(), poll.registry()).unwrap();
        let pipes = out.pipes_for_worker().unwrap().unwrap();
        let [w_out, _] = pipes.write_ends();
        // The test writes through a duplicate, as the worker would.
        // SAFETY: the write end is open until `attach` below closes it.
        let writer = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(w_out) }).unwrap();
        out.attach(pipes, 2, 777, 5, poll.registry());
        nix::unistd::write(&writer, b"one\ntwo\nthr").unwrap();
        out.ready(Token(100), poll.registry(), Instant::now());
        assert_eq!(out.counters().lines, [2, 0]);
        assert_eq!(
            out.sinks[0].pending(),
            b"worker 2 (pid 777, gen 5) stdout: one\nworker 2 (pid 777, gen 5) stdout: two\n"
        );
        let (h, spill) = out.hand_over().unwrap().unwrap();
        assert_eq!(h.pipes.len(), 2);
        let p = h.pipes.iter().find(|p| p.stream == Stream::Stdout).unwrap();
        assert_eq!((p.slot, p.pid, p.generation), (2, 777, 5));
        let bytes = sink::read_spill(nix::unistd::dup(spill.as_ref().unwrap()).unwrap(), 1 << 20).unwrap();
        assert_eq!(
            &bytes[p.partial.0 as usize..(p.partial.0 + p.partial.1) as usize],
            b"thr"
        );
        // End of file: the partial line goes out, marked.
        drop(writer);
        out.tick(Instant::now() + TICK, poll.registry());
        out.drain_all(poll.registry());
        assert!(
            out.sinks[0]
                .pending()
                .ends_with(b"worker 2 (pid 777, gen 5) stdout [no newline]: thr\n"),
            "{:?}",
            String::from_utf8_lossy(out.sinks[0].pending())
        );
        assert_eq!(out.counters().pipes, 0, "both pipes have ended");
    }
}

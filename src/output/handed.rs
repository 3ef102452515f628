//! What the output module hands to the next image across an exec: the
//! workers' pipes by fd number, and where their held bytes lie in the spill
//! file. Part of the handoff ([`crate::handoff`]), owned here so that the
//! handoff depends on output and not the other way round.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use super::Stream;

/// The workers' output pipes (`--worker-output`) handed across, and what
/// sup held of their lines: partial lines and its own queues travel in a
/// spill file (memory only on Linux), by (offset, length), since the
/// environment cannot carry megabytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOutput {
    /// The format the old image wrote in (kept if the new one says `inherit`).
    pub mode: crate::config::WorkerOutput,
    pub timestamps: bool,
    pub pipes: Vec<HandedPipe>,
    #[serde(default)]
    pub spill: Option<RawFd>,
    /// What waited for sup's stdout and stderr.
    #[serde(default)]
    pub queued: [(u64, u64); 2],
    /// Lines written, dropped (by sup's stream) and cut: the counters go on.
    #[serde(default)]
    pub lines: [u64; 2],
    #[serde(default)]
    pub dropped: [u64; 2],
    #[serde(default)]
    pub cut: u64,
}

/// One worker's stdout or stderr pipe (the read end), and whose it is: its
/// lines keep their prefix after the worker is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedPipe {
    pub fd: RawFd,
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
    pub stream: Stream,
    /// The bytes of a line not yet ended, in the spill file.
    #[serde(default)]
    pub partial: (u64, u64),
}

impl HandedPipe {
    /// Close a handed pipe this image does not adopt.
    pub fn close(&self) {
        // SAFETY: an fd named in the handoff, which nothing in this image
        // owns; closing a number that is not open is a harmless EBADF.
        unsafe { libc::close(self.fd) };
    }
}

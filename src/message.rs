//! What an sd_notify datagram says and who sent it: the data the core
//! decides on. Pure — the socket that receives them is `notify`'s; the
//! Einhorn socket turns its acks into the same messages.

use crate::pid::{Pgid, Pid};

/// The parts of an sd_notify message sup acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub watchdog: bool,
    /// `X_SUP_RECYCLE=1`: the worker asks to be replaced (after N requests).
    pub recycle: bool,
    pub status: Option<String>,
    pub mainpid: Option<Pid>,
}

impl Message {
    /// Parse `KEY=VALUE` lines as systemd reads them: unknown keys are
    /// ignored, the last assignment wins.
    pub fn parse(bytes: &[u8]) -> Message {
        let mut m = Message::default();
        for line in bytes.split(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "READY" => m.ready = value == "1",
                "STOPPING" => m.stopping = value == "1",
                "WATCHDOG" => m.watchdog = value == "1",
                "X_SUP_RECYCLE" => m.recycle = value == "1",
                "STATUS" => m.status = Some(value.chars().take(256).collect()),
                "MAINPID" => m.mainpid = value.parse().ok().filter(|p| *p > 0).map(Pid::from_raw),
                _ => {}
            }
        }
        m
    }

    pub fn is_empty(&self) -> bool {
        *self == Message::default()
    }
}

/// Who sent a message, per the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: Pid,
    /// The sender's process group, looked up on receipt (None if it is gone).
    pub pgid: Option<Pgid>,
    pub uid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_systemd_reads() {
        let m = Message::parse(b"READY=1\nSTATUS=Gunicorn arbiter booted\nMAINPID=42\nX=y\n");
        assert!(m.ready && !m.stopping && !m.watchdog);
        assert_eq!(m.status.as_deref(), Some("Gunicorn arbiter booted"));
        assert_eq!(m.mainpid, Some(Pid::from_raw(42)));
        assert!(Message::parse(b"WATCHDOG=1").watchdog);
        assert!(Message::parse(b"STOPPING=1").stopping);
        assert!(Message::parse(b"X_SUP_RECYCLE=1").recycle);
        assert!(!Message::parse(b"READY=0").ready);
        assert!(Message::parse(b"BARRIER=1").is_empty());
        assert_eq!(Message::parse(b"MAINPID=-3").mainpid, None);
    }
}

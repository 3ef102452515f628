//! Worker output as lines: splitting what a pipe gives into lines, and
//! rendering each line in the chosen format. Pure: no I/O, no clock (the
//! caller passes the timestamp in), so every case is a unit test.
//!
//! A line is the bytes up to a newline. One longer than [`MAX_LINE`] is
//! cut into pieces of that size, each marked, so that a worker that never
//! writes a newline cannot make sup hold its output forever; the last bytes
//! a worker wrote before closing its pipe without a newline come out marked
//! too. Bytes are passed through as they are, except in JSON, whose strings
//! must be UTF-8 (invalid sequences become U+FFFD there).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::WorkerOutput;

/// The longest line written whole; a longer one is cut into pieces.
pub const MAX_LINE: usize = 64 << 10;

/// Which of the worker's streams a pipe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const BOTH: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// sup's own fd this stream's lines go to (a worker's stderr to sup's
    /// stderr).
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// How a piece of output ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A whole line (or the last piece of a long one): it ended in a newline.
    Whole,
    /// A piece of a line longer than [`MAX_LINE`]; more of it follows.
    Cut,
    /// What the worker wrote last, without a newline, before its pipe closed.
    NoNewline,
}

/// The format lines are written in (`--worker-output`, not `inherit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub style: Style,
    pub timestamps: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Prefix,
    Json,
}

impl Format {
    /// The format for a configuration; `None` for `inherit`.
    pub fn of(mode: WorkerOutput, timestamps: bool) -> Option<Format> {
        let style = match mode {
            WorkerOutput::Inherit => return None,
            WorkerOutput::Plain => Style::Plain,
            WorkerOutput::Prefix => Style::Prefix,
            WorkerOutput::Json => Style::Json,
        };
        Some(Format { style, timestamps })
    }

    pub fn mode(self) -> WorkerOutput {
        match self.style {
            Style::Plain => WorkerOutput::Plain,
            Style::Prefix => WorkerOutput::Prefix,
            Style::Json => WorkerOutput::Json,
        }
    }
}

/// Whose line it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
    pub stream: Stream,
}

/// What goes before every line of one pipe, computed once per pipe: the
/// prefix (`worker 3 (pid 4121, gen 7) stdout`), or the JSON fields.
pub fn head(format: Format, who: Who) -> Vec<u8> {
    match format.style {
        Style::Plain => Vec::new(),
        Style::Prefix => format!(
            "worker {} (pid {}, gen {}) {}",
            who.slot,
            who.pid,
            who.generation,
            who.stream.as_str()
        )
        .into_bytes(),
        Style::Json => format!(
            "\"slot\":{},\"pid\":{},\"generation\":{},\"stream\":\"{}\"",
            who.slot,
            who.pid,
            who.generation,
            who.stream.as_str()
        )
        .into_bytes(),
    }
}

/// Append one line, rendered, to `out`: the timestamp if any, the head, the
/// marker of a piece that is not a whole line, the bytes, a newline.
pub fn render(out: &mut Vec<u8>, format: Format, head: &[u8], stamp: Option<&Stamp>, line: &[u8], piece: Piece) {
    match format.style {
        Style::Plain | Style::Prefix => {
            if let Some(s) = stamp.filter(|_| format.timestamps) {
                out.extend_from_slice(s.as_bytes());
                out.push(b' ');
            }
            if format.style == Style::Prefix {
                out.extend_from_slice(head);
                out.extend_from_slice(match piece {
                    Piece::Whole => b": ".as_slice(),
                    Piece::Cut => b" [cut]: ",
                    Piece::NoNewline => b" [no newline]: ",
                });
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        Style::Json => {
            out.push(b'{');
            if let Some(s) = stamp.filter(|_| format.timestamps) {
                out.extend_from_slice(b"\"time\":\"");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\",");
            }
            out.extend_from_slice(head);
            out.extend_from_slice(match piece {
                Piece::Whole => b"".as_slice(),
                Piece::Cut => b",\"cut\":true",
                Piece::NoNewline => b",\"no_newline\":true",
            });
            out.extend_from_slice(b",\"line\":\"");
            match std::str::from_utf8(line) {
                Ok(text) => json_escape(out, text),
                Err(_) => json_escape(out, &String::from_utf8_lossy(line)),
            }
            out.extend_from_slice(b"\"}\n");
        }
    }
}

/// `text` as the inside of a JSON string.
fn json_escape(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\r' => b"\\r",
            b'\n' => b"\\n",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if escaped.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escaped);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
}

/// Split `data`, which follows `partial` (what an earlier read left without
/// a newline), into lines for `emit`; what is left without a newline stays
/// in `partial`, cut into pieces while it is longer than [`MAX_LINE`].
pub fn split(partial: &mut Vec<u8>, data: &[u8], mut emit: impl FnMut(&[u8], Piece)) {
    let mut rest = data;
    if !partial.is_empty() {
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                partial.extend_from_slice(&rest[..i]);
                whole(partial, &mut emit);
                partial.clear();
                rest = &rest[i + 1..];
            }
            None => {
                partial.extend_from_slice(rest);
                cut_partial(partial, &mut emit);
                return;
            }
        }
    }
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', rest) {
        whole(&rest[start..i], &mut emit);
        start = i + 1;
    }
    if start < rest.len() {
        partial.extend_from_slice(&rest[start..]);
        cut_partial(partial, &mut emit);
    }
}

/// A line that ended in a newline: whole, or cut into pieces if too long.
fn whole(line: &[u8], emit: &mut impl FnMut(&[u8], Piece)) {
    let mut rest = line;
    while rest.len() > MAX_LINE {
        emit(&rest[..MAX_LINE], Piece::Cut);
        rest = &rest[MAX_LINE..];
    }
    emit(rest, Piece::Whole);
}

/// Pieces of a partial line that has grown past [`MAX_LINE`] go out now.
fn cut_partial(partial: &mut Vec<u8>, emit: &mut impl FnMut(&[u8], Piece)) {
    if partial.len() <= MAX_LINE {
        return;
    }
    let mut at = 0;
    while partial.len() - at > MAX_LINE {
        emit(&partial[at..at + MAX_LINE], Piece::Cut);
        at += MAX_LINE;
    }
    partial.drain(..at);
}

/// A UTC timestamp as sup's own log writes it: `2026-11-22T03:25:51.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([u8; 24]);

impl Stamp {
    pub fn now() -> Stamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Stamp::at_ms(ms)
    }

    /// The timestamp of `ms` milliseconds after the epoch.
    pub fn at_ms(ms: u64) -> Stamp {
        let secs = ms / 1000;
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (0..width).rev() {
                b[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y.clamp(0, 9999) as u64);
        put(5, 2, mo);
        put(8, 2, d);
        put(11, 2, rem / 3600);
        put(14, 2, rem / 60 % 60);
        put(17, 2, rem % 60);
        put(20, 3, ms % 1000);
        Stamp(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> (Vec<(String, Piece)>, Vec<u8>) {
        let mut partial = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            split(&mut partial, c, |l, p| {
                out.push((String::from_utf8_lossy(l).into_owned(), p))
            });
        }
        (out, partial)
    }

    #[test]
    fn lines_are_whole_however_the_reads_fall() {
        let (out, partial) = lines(&[b"one\ntw", b"o\n", b"", b"thr", b"ee", b"\nfour"]);
        let whole = |s: &str| (s.to_string(), Piece::Whole);
        assert_eq!(out, vec![whole("one"), whole("two"), whole("three")]);
        assert_eq!(partial, b"four");
        let (out, partial) = lines(&[b"\n\n"]);
        assert_eq!(out, vec![whole(""), whole("")]);
        assert!(partial.is_empty());
    }

    #[test]
    fn a_line_longer_than_the_cap_is_cut_not_held() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        // Without a newline: two full pieces go out at once, 10 bytes wait.
        let (out, partial) = lines(&[&long]);
        assert_eq!(
            out.iter().map(|(l, p)| (l.len(), *p)).collect::<Vec<_>>(),
            vec![(MAX_LINE, Piece::Cut), (MAX_LINE, Piece::Cut)]
        );
        assert_eq!(partial.len(), 10);
        // In one read with its newline: cut pieces, then the rest whole.
        let mut with_nl = long.clone();
        with_nl.push(b'\n');
        let (out, partial) = lines(&[&with_nl[..100], &with_nl[100..]]);
        assert_eq!(
            out.iter().map(|(l, p)| (l.len(), *p)).collect::<Vec<_>>(),
            vec![(MAX_LINE, Piece::Cut), (MAX_LINE, Piece::Cut), (10, Piece::Whole)]
        );
        assert!(partial.is_empty());
        // Exactly the cap is one whole line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let (out, _) = lines(&[&exact[..7], &exact[7..]]);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.len(), out[0].1), (MAX_LINE, Piece::Whole));
    }

    fn rendered(format: Format, line: &[u8], piece: Piece) -> String {
        let who = Who {
            slot: 3,
            pid: 4121,
            generation: 7,
            stream: Stream::Stderr,
        };
        let mut out = Vec::new();
        let stamp = Stamp::at_ms(1_795_000_000_123);
        render(&mut out, format, &head(format, who), Some(&stamp), line, piece);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats() {
        let f = |style, timestamps| Format { style, timestamps };
        assert_eq!(
            rendered(f(Style::Prefix, false), b"hello", Piece::Whole),
            "worker 3 (pid 4121, gen 7) stderr: hello\n"
        );
        assert_eq!(
            rendered(f(Style::Prefix, true), b"x", Piece::Cut),
            "2026-11-18T11:06:40.123Z worker 3 (pid 4121, gen 7) stderr [cut]: x\n"
        );
        assert_eq!(rendered(f(Style::Plain, false), b"as is", Piece::NoNewline), "as is\n");
        let json = rendered(f(Style::Json, true), b"a \"q\" \\ \t\x01 \xff", Piece::NoNewline);
        assert_eq!(
            json,
            "{\"time\":\"2026-11-18T11:06:40.123Z\",\"slot\":3,\"pid\":4121,\"generation\":7,\"stream\":\"stderr\",\
             \"no_newline\":true,\"line\":\"a \\\"q\\\" \\\\ \\t\\u0001 \u{fffd}\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["line"], "a \"q\" \\ \t\u{1} \u{fffd}");
        assert_eq!(v["generation"], 7);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(Stamp::at_ms(0).as_bytes(), b"1970-01-01T00:00:00.000Z");
        assert_eq!(Stamp::at_ms(951_782_400_999).as_bytes(), b"2000-02-29T00:00:00.999Z");
        assert_eq!(Stamp::at_ms(4_102_444_799_000).as_bytes(), b"2099-12-31T23:59:59.000Z");
    }
}

//! How sup ends a conversation with the user: exit statuses and the one
//! line that says why. Shared by the daemon's startup and `sup ctl`, so that
//! neither imports the other.

use std::io::Write;

/// Exit statuses: 0 clean stop, 1 runtime failure, 2 usage or config error.
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Write one line to stderr, never panicking (stderr may be a closed pipe).
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "sup: {line}");
}

/// An error and its causes on one line: `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        // An OS error as the short lowercase fragment (`no such file or
        // directory`), not std's `No such file or directory (os error 2)`.
        match cause.downcast_ref::<std::io::Error>() {
            Some(io) => s.push_str(&crate::files::os_error(io)),
            None => s.push_str(&cause.to_string()),
        }
        source = cause.source();
    }
    s
}

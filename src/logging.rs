//! sup's log: env_logger to stderr, one line per event, never panicking.
//!
//! `-v`/`-q` set the level; without them `RUST_LOG` does, and the default is
//! `info`. Lines read `2026-11-22T03:25:51.123Z sup[4120] INFO  worker 3
//! (pid 4121, gen 7) started`: the pid tells sup's lines from its workers'
//! when both write to the same stream.

use std::io::Write;

use log::LevelFilter;

pub fn init(verbosity: Option<i8>) {
    let mut builder = env_logger::Builder::new();
    let pid = std::process::id();
    builder.format(move |buf, record| {
        writeln!(
            buf,
            "{} sup[{pid}] {:<5} {}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    match verbosity {
        Some(v) => {
            let level = match v {
                i8::MIN..=-2 => LevelFilter::Error,
                -1 => LevelFilter::Warn,
                0 => LevelFilter::Info,
                1 => LevelFilter::Debug,
                _ => LevelFilter::Trace,
            };
            builder.filter_level(LevelFilter::Warn).filter_module("sup", level);
        }
        None => match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.trim().is_empty() => {
                builder.parse_filters(&spec);
            }
            _ => {
                builder
                    .filter_level(LevelFilter::Warn)
                    .filter_module("sup", LevelFilter::Info);
            }
        },
    }
    // env_logger ignores write errors, so a closed stderr cannot panic sup.
    let _ = builder.try_init();
}

/// Point sup's stdout and stderr at `path` (appending, created 0644):
/// sup's log lines go there, and so does the output of every worker started
/// from now on, since workers inherit fds 1 and 2. Called at startup for
/// `--log-file` and again on HUP, so that a file moved away by logrotate is
/// replaced by a fresh one.
pub fn redirect_to(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    for target in [1, 2] {
        // SAFETY: dup2 onto stdout/stderr, which this process always has
        // open (sanitize_fds guarantees it); the file stays open until the
        // end of this function, and the copies are not CLOEXEC, as stdio
        // must be inherited.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

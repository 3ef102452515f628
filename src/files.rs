//! Reading the files sup is given, with a bound, and OS errors as text.
//!
//! The bottom of the module map: it imports nothing of sup's.

use std::path::Path;

/// Why a file could not be read. The callers name the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS refused to open or read it (`no such file or directory`):
    /// the OS error is the whole message, as a lowercase fragment.
    #[error("{}", os_error(.0))]
    Io(std::io::Error),
    #[error("larger than {} KiB, the most sup reads", .cap / 1024)]
    TooLarge { cap: u64 },
    #[error("not UTF-8 (at byte {at})")]
    NotUtf8 { at: usize },
}

/// Read a text file of at most `cap` bytes: a bigger one is refused
/// before it is read, so a huge file costs neither time nor memory.
pub fn read_capped(path: &Path, cap: u64) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge { cap });
    }
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        at: e.utf8_error().valid_up_to(),
    })
}

/// An OS error as a lowercase fragment: `no such file or directory`.
pub fn os_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => errno_text(code),
        None => e.to_string(),
    }
}

/// `errno` as a lowercase fragment.
pub fn errno_text(code: i32) -> String {
    let desc = nix::errno::Errno::from_raw(code).desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("os error {code}"),
    }
}

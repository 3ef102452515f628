//! Reading the files sup is given, with a bound, and OS errors as text.
//!
//! The bottom of the module map: it imports nothing of sup's.

use std::path::Path;

/// Read a text file of at most `cap` bytes: a bigger one is refused
/// before it is read, so a huge file costs neither time nor memory.
pub fn read_capped(path: &Path, cap: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| os_error(&e))?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| os_error(&e))?;
    if bytes.len() as u64 > cap {
        return Err(format!("larger than {} KiB, the most sup reads", cap / 1024));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
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

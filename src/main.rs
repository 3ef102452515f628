//! `sup`: parse → run → exit status; nothing else.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(sup::run())
}

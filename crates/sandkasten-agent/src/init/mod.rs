//! `sandkasten-agent init`: builds the sandbox and becomes its PID 1.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    eprintln!("sandkasten-agent init: not built yet");
    ExitCode::from(1)
}

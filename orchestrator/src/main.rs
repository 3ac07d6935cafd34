//! The `skiff` command.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    skiff_orchestrator::cli::main()
}

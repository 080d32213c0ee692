use std::process::ExitCode;

use clap::Parser;
use s3cachefs::{app, cli};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match cli::from_mount_helper(&args) {
        None => cli::Cli::parse(),
        Some(Ok(translated)) => cli::Cli::parse_from(translated),
        Some(Err(e)) => {
            eprintln!("s3cachefs: error: {e}");
            return ExitCode::from(2);
        }
    };
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3cachefs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

use std::process::ExitCode;

use clap::Parser;
use s3cachefs::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3cachefs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

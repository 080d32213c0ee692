use std::process::ExitCode;

use clap::Parser;
use s3cachefs::{app, cli};

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own arena; with tokio's workers and blocking
    // threads moving 1 MiB blocks around, that multiplies resident memory for no gain. A few
    // arenas keep RSS close to what the caches actually hold.
    // Block buffers (256 KiB and more) are mappings of their own, reused through a bounded
    // pool (`bufpool`), never part of these heaps. Below 512 KiB, malloc serves from its heaps,
    // so the HTTP client's read buffers (up to about 400 KiB each) are reused rather than mapped
    // afresh, a page fault per page; a fixed threshold stops glibc from raising it after the
    // first free.
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
    }
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

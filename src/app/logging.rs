//! Logging setup: stderr in the foreground, `--log-file` when given, syslog for a background
//! daemon. The SDK's and HTTP stack's own logs are held at `warn` unless RUST_LOG says
//! otherwise, and never go past `info` whatever RUST_LOG says: at debug and trace they print
//! resolved credentials (the access key id) and the requests being signed. Our own logs never
//! contain credentials or signatures, at any level.

use std::io::{self, Write};

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Opens (creating) the log file, so a bad path is reported before the daemon starts.
pub fn open_log_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

pub fn init(cfg: &LogConfig, foreground: bool) -> anyhow::Result<()> {
    let level = cfg.filter.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,s3cachefs={level},fuser=error")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if let Some(path) = &cfg.file {
        let file = open_log_file(path)?;
        builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .finish()
            .with(sdk_cap())
            .init();
    } else if foreground {
        use std::io::IsTerminal;
        builder
            .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_writer(io::stderr)
            .finish()
            .with(sdk_cap())
            .init();
    } else {
        // SAFETY: the identifier is a static C string, as openlog requires.
        unsafe { libc::openlog(c"s3cachefs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        builder
            .with_ansi(false)
            .without_time()
            .with_writer(|| Syslog)
            .finish()
            .with(sdk_cap())
            .init();
    }
    Ok(())
}

/// Targets of the AWS SDK and the HTTP/TLS stack (prefixes: `aws` covers `aws_sigv4`,
/// `aws_smithy_*`, `aws_config`, the S3 SDK crate...).
const SDK_TARGETS: &[&str] = &["aws", "hyper", "h2", "rustls", "tower", "http"];

/// Caps the SDK's and HTTP stack's events at `info`, on top of any filter (RUST_LOG included):
/// their debug and trace events print identities (access key ids) and requests being signed.
fn sdk_cap() -> tracing_subscriber::filter::FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    tracing_subscriber::filter::filter_fn(|m| {
        *m.level() <= tracing::Level::INFO || !SDK_TARGETS.iter().any(|t| m.target().starts_with(t))
    })
}

/// One `write` per event (tracing-subscriber formats the whole line first) → one syslog record.
struct Syslog;

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        let line = line.trim_end();
        if !line.is_empty()
            && let Ok(c) = std::ffi::CString::new(line.replace('\0', " "))
        {
            // SAFETY: "%s" with one valid C string argument.
            unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

//! Logging setup. Where events go:
//! - `--log-file`: appended to that file (created with mode 0640);
//! - in the foreground under systemd (`JOURNAL_STREAM` names our stderr): to journald natively
//!   (`tracing-journald`), each event with its priority and fields;
//! - otherwise in the foreground: stderr;
//! - a background daemon: syslog (`/dev/log`, through the `syslog` crate), each event at its
//!   severity, facility `daemon`.
//!
//! Severities, in syslog and journald alike ([`syslog_severity`], [`journald_priorities`]):
//! error → err (3), warn → warning (4), info → info (6), debug and trace → debug (7).
//!
//! The SDK's and HTTP stack's own logs are held at `warn` unless RUST_LOG says otherwise, and
//! never go past `info` whatever RUST_LOG says: at debug and trace they print resolved
//! credentials (the access key id) and the requests being signed. Our own logs never contain
//! credentials or signatures, at any level.

use std::io::{self, Write};
use std::sync::Mutex;

use anyhow::Context;
use syslog::{Facility, Formatter3164, LogFormat, LoggerBackend, Severity};
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogConfig;

/// Mode of a log file s3cachefs creates: owner read-write, group read (log readers such as
/// `adm`), nothing for others. An existing file keeps its mode.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Opens (creating) the log file, so a bad path is reported before the daemon starts.
pub fn open_log_file(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

pub fn init(cfg: &LogConfig, foreground: bool) -> anyhow::Result<()> {
    let level = cfg.filter.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,s3cachefs={level},fuser=error")));
    if let Some(path) = &cfg.file {
        let file = open_log_file(path)?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .finish()
            .with(sdk_cap())
            .init();
    } else if foreground {
        if stderr_is_journal() {
            match tracing_journald::layer() {
                Ok(journald) => {
                    tracing_subscriber::registry()
                        .with(filter)
                        .with(journald.with_priority_mappings(journald_priorities()))
                        .with(sdk_cap())
                        .init();
                    return Ok(());
                }
                // Fall back to stderr, which journald reads anyway (without priorities).
                Err(e) => eprintln!("s3cachefs: cannot log to journald ({e}); logging to stderr"),
            }
        }
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_writer(io::stderr)
            .finish()
            .with(sdk_cap())
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_writer(Syslog::default())
            .finish()
            .with(sdk_cap())
            .init();
    }
    Ok(())
}

/// Whether stderr is the journal stream systemd gave us: `JOURNAL_STREAM` is `DEVICE:INODE` of
/// that stream (systemd.exec(5)). Checking the descriptor, not only the variable, keeps a child
/// whose stderr was redirected (a shell, a test harness) on stderr.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(io::stderr().as_fd()) else {
        return false;
    };
    value.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// Journald priorities of tracing levels: the syslog mapping, not `tracing-journald`'s default
/// (which shifts info to notice and debug to info).
pub fn journald_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The syslog severity of a tracing level.
pub fn syslog_severity(level: Level) -> Severity {
    match level {
        Level::ERROR => Severity::LOG_ERR,
        Level::WARN => Severity::LOG_WARNING,
        Level::INFO => Severity::LOG_INFO,
        Level::DEBUG | Level::TRACE => Severity::LOG_DEBUG,
    }
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

type SyslogLogger = syslog::Logger<LoggerBackend, Formatter3164>;

/// The syslog connection; tracing-subscriber asks it for a writer per event with the event's
/// metadata, so each formatted line is sent at that event's severity. Like syslog(3), it connects
/// on the first line, reconnects when a send fails (the syslog daemon restarted), and drops lines
/// while no syslog daemon listens.
#[derive(Default)]
struct Syslog {
    logger: Mutex<Option<SyslogLogger>>,
}

impl Syslog {
    fn connect() -> Option<SyslogLogger> {
        let formatter = Formatter3164 {
            facility: Facility::LOG_DAEMON,
            hostname: None,
            process: "s3cachefs".into(),
            pid: std::process::id(),
        };
        syslog::unix(formatter).ok()
    }

    fn send(&self, severity: Severity, line: &str) {
        let mut slot = self.logger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = slot.as_mut()
            && l.formatter.format(&mut l.backend, severity, line).is_ok()
        {
            return;
        }
        // Not connected yet, or the send failed (the syslog daemon restarted): connect and try once.
        *slot = Self::connect();
        if let Some(l) = slot.as_mut()
            && l.formatter.format(&mut l.backend, severity, line).is_err()
        {
            *slot = None;
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> SyslogLine<'a> {
        SyslogLine {
            syslog: self,
            severity: Severity::LOG_INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine<'a> {
        SyslogLine {
            syslog: self,
            severity: syslog_severity(*meta.level()),
        }
    }
}

/// One event: tracing-subscriber formats the whole line, then writes it once → one record.
struct SyslogLine<'a> {
    syslog: &'a Syslog,
    severity: Severity,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        let line = line.trim_end();
        if !line.is_empty() {
            self.syslog.send(self.severity, line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_severities() {
        let sev = |l| syslog_severity(l) as u8;
        assert_eq!(sev(Level::ERROR), Severity::LOG_ERR as u8);
        assert_eq!(sev(Level::WARN), Severity::LOG_WARNING as u8);
        assert_eq!(sev(Level::INFO), Severity::LOG_INFO as u8);
        assert_eq!(sev(Level::DEBUG), Severity::LOG_DEBUG as u8);
        assert_eq!(sev(Level::TRACE), Severity::LOG_DEBUG as u8);
        // The numbers syslog(3) defines.
        assert_eq!(
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG].map(sev),
            [libc::LOG_ERR, libc::LOG_WARNING, libc::LOG_INFO, libc::LOG_DEBUG].map(|p| p as u8)
        );
    }

    #[test]
    fn journald_uses_the_same_priorities() {
        let p = journald_priorities();
        let digit = |p: tracing_journald::Priority| (p as u8 - b'0') as i32;
        assert_eq!(
            [p.error, p.warn, p.info, p.debug, p.trace].map(digit),
            [
                libc::LOG_ERR,
                libc::LOG_WARNING,
                libc::LOG_INFO,
                libc::LOG_DEBUG,
                libc::LOG_DEBUG
            ]
        );
    }

    #[test]
    fn a_created_log_file_is_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s3cachefs.log");
        open_log_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}

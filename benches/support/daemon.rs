//! One `s3cachefs mount --foreground` process, the same way the integration tests start it
//! (`tests/common/mod.rs`): hermetic AWS settings, the real binary, the mount is live once
//! /proc/self/mountinfo lists it.
//!
//! Never leaves a mount behind: dropping a [`Daemon`] (also while unwinding from a panic)
//! sends SIGTERM to the daemon we started, waits, kills it if it hangs, and runs `umount -l`
//! if the mount point is still mounted. The child also gets `PR_SET_PDEATHSIG = SIGTERM`, so
//! it unmounts itself if the benchmark process is killed outright. PDEATHSIG follows the
//! *thread* that forked, so daemons are only ever spawned from the main thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::sys::{is_mounted, peak_rss_kib};

/// How to reach the test server and what to mount.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: String,
    pub bucket: String,
    /// Extra `mount` flags from the command line (`--mount-arg`).
    pub extra: Vec<String>,
}

pub struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    /// `--metrics-addr`, when the daemon was started with one.
    metrics: Option<SocketAddr>,
    pub name: String,
}

/// What a daemon gets besides the common flags.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// More `mount` flags for this daemon only (e.g. `--shared-cache s3://…`).
    pub args: Vec<String>,
    /// Serve `/metrics` on a free loopback port (`--metrics-addr`), read with [`Daemon::metrics`].
    pub metrics: bool,
}

impl Daemon {
    /// Spawns a daemon mounting `target` at `mnt` (created if missing) with `--cache cache`, plus
    /// `extra`. Does not wait for the mount: call [`Daemon::wait_mounted`].
    pub fn spawn(
        target: &Target,
        name: &str,
        mnt: &Path,
        cache: &Path,
        log_dir: &Path,
        extra: &Extra,
    ) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(mnt)?;
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3cachefs"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", "AKIDTESTKEY")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
            .arg("mount")
            .arg(&target.bucket)
            .arg(mnt)
            .args(["--endpoint-url", &target.endpoint, "--region", "us-east-1"])
            .args(["--foreground", "--metadata-ttl", "indefinite"])
            .arg("--cache")
            .arg(cache)
            .args(["--log-level", "info", "--log-file"])
            .arg(&log)
            .args(&target.extra)
            .args(&extra.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?);
        let metrics = if extra.metrics {
            let addr = free_port()?;
            cmd.arg("--metrics-addr").arg(addr.to_string());
            Some(addr)
        } else {
            None
        };
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start s3cachefs")?;
        Ok(Daemon {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
            stderr,
            metrics,
            name: name.to_string(),
        })
    }

    /// Waits (at most 30 s) until the mount is live; fails with the daemon's log if it exits.
    pub fn wait_mounted(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&self.mnt) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "daemon {} exited with {status} before mounting:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("mount {} not live after 30 s:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Peak RSS (VmHWM) since the daemon started, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.pid().and_then(peak_rss_kib)
    }

    /// The daemon's `/metrics`, parsed into (series, value) pairs (`s3cachefs::metrics::parse_text`).
    pub fn metrics(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let Some(addr) = self.metrics else {
            bail!("daemon {} was started without --metrics-addr", self.name)
        };
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("daemon {}: cannot connect to {addr}", self.name))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let status = head.lines().next().unwrap_or("");
        ensure!(
            status.contains(" 200 "),
            "daemon {}: /metrics answered {status:?}",
            self.name
        );
        Ok(s3cachefs::metrics::parse_text(body))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log file and whatever reached stderr (e.g. a panic).
    pub fn log_text(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("{log}{stderr}")
    }

    /// WARN and ERROR lines of the log, and any stderr output.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect();
        out.extend(
            std::fs::read_to_string(&self.stderr)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("stderr: {l}")),
        );
        out
    }

    /// SIGTERM, wait up to 20 s (then SIGKILL), then `umount -l` if still mounted.
    /// Returns an error if the daemon had to be killed or the mount had to be detached.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let mut trouble = Vec::new();
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            trouble.push(format!("daemon {} exited with {status}", self.name));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        trouble.push(format!(
                            "daemon {} did not exit within 20 s of SIGTERM; killed",
                            self.name
                        ));
                        break;
                    }
                }
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            trouble.push(format!(
                "{} was still mounted; detached with umount -l",
                self.mnt.display()
            ));
        }
        if trouble.is_empty() {
            Ok(())
        } else {
            bail!("{}", trouble.join("; "))
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}

/// A loopback address with a port that was free a moment ago (the daemon binds it itself). Ports
/// handed out before are never handed out again, so daemons started together get distinct ones.
fn free_port() -> anyhow::Result<SocketAddr> {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return Ok(addr);
        }
    }
    bail!("no free loopback port for --metrics-addr")
}

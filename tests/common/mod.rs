//! Integration-test harness: a real S3-compatible server on 127.0.0.1 and the real
//! `s3cachefs` binary mounted through /dev/fuse on a temporary directory. A `Mount` unmounts
//! on drop (SIGTERM, then a lazy unmount if anything is left), also when a test panics.

#![allow(dead_code, unused_imports)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use s3cachefs_testserver::{Counts, TestServer};

pub const BUCKET: &str = "test-bucket";

/// A server with the test bucket created.
pub fn server() -> TestServer {
    let s = TestServer::start();
    s.create_bucket(BUCKET);
    s
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_s3cachefs")
}

/// A `s3cachefs` command with hermetic AWS settings: fixed test credentials, no profile
/// files, no instance metadata (which would reach outside this machine).
pub fn command() -> Command {
    let mut c = Command::new(bin());
    hermetic(&mut c);
    c
}

/// Gives `c` the hermetic settings of [`command`] (for a command that runs the binary through
/// another program or from another path).
pub fn hermetic(c: &mut Command) -> &mut Command {
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTKEY")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret-key")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .stdin(Stdio::null())
}

/// The access key of [`command`].
pub const ACCESS_KEY: &str = "AKIDTESTKEY";

/// The caches' partition of a mount run by [`command`]: the principal the test server's STS
/// names for its access key.
pub fn partition() -> String {
    s3cachefs::app::identity::principal_partition(&s3cachefs_testserver::default_arn(ACCESS_KEY))
}

/// The arguments that point a mount at `server`.
pub fn endpoint_args(server: &TestServer) -> Vec<String> {
    vec![
        "--endpoint-url".into(),
        server.endpoint(),
        "--region".into(),
        "us-east-1".into(),
    ]
}

/// Deterministic pseudo-random bytes (a different stream per seed).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

pub struct Mount {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: PathBuf,
}

impl Mount {
    /// Mounts `source` (e.g. "test-bucket" or "test-bucket/jars/") in the foreground and
    /// waits until the mount is live. Panics with the daemon's log if it fails.
    pub fn new(server: &TestServer, source: &str, extra: &[&str]) -> Mount {
        Mount::try_new(server, source, extra).unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    /// [`Mount::new`] with a disk cache at `cache`, `/metrics` on a free port of its own (returned
    /// with the mount), and `extra` flags.
    pub fn with_cache_and_metrics(server: &TestServer, source: &str, cache: &Path, extra: &[&str]) -> (Mount, u16) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut flags = vec!["--cache", cache.to_str().unwrap(), "--metrics-addr", &addr];
        flags.extend_from_slice(extra);
        (Mount::new(server, source, &flags), port)
    }

    pub fn try_new(server: &TestServer, source: &str, extra: &[&str]) -> Result<Mount, String> {
        Mount::try_new_with_env(server, source, extra, &[])
    }

    /// [`Mount::new`] with environment variables set (after [`command`]'s), e.g. other credentials.
    pub fn new_with_env(server: &TestServer, source: &str, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::try_new_with_env(server, source, extra, env).unwrap_or_else(|e| panic!("mount failed: {e}"))
    }

    pub fn try_new_with_env(
        server: &TestServer,
        source: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Mount, String> {
        Mount::try_new_at(&server.endpoint(), source, extra, env)
    }

    /// [`Mount::try_new_with_env`] against `endpoint` (e.g. one where nothing listens).
    pub fn try_new_at(endpoint: &str, source: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<Mount, String> {
        let dir = tempfile::Builder::new().prefix("s3cachefs-test").tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let log = dir.path().join("daemon.log");
        let child = command()
            .arg("mount")
            .arg(source)
            .arg(&path)
            .args(["--endpoint-url", endpoint, "--region", "us-east-1"])
            .arg("--foreground")
            .args(extra)
            .env("RUST_LOG", "s3cachefs=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mount {
            child: Some(child),
            _dir: dir,
            path,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&m.path) {
                return Ok(m);
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                return Err(format!("daemon exited with {status} before mounting:\n{}", m.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("mount not live after 30 s:\n{}", m.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the daemon and waits (bounded) for it to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already gone");
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("daemon did not exit within 20 s of signal {signal}:\n{}", self.log())
        })
    }

    /// Waits (bounded) for the daemon to exit on its own, e.g. after an external umount.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already gone");
        wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("daemon did not exit within 20 s:\n{}", self.log())
        })
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
    }
}

/// Runs `s3cachefs` to completion with a time limit; returns its output.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = wait_timeout(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("command did not finish within {limit:?}")
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    Output { status, stdout, stderr }
}

pub fn exit_code(status: &ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Every file under `root` (relative paths, sorted), walking with `read_dir`.
pub fn walk(root: &Path) -> Vec<(String, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                stack.push(e.path());
                out.push((format!("{rel}/"), meta));
            } else {
                out.push((rel, meta));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, noted, closed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bytes on disk under `p`, as `du` counts them (symlinks not followed).
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
    let mut total = m.blocks() * 512;
    if m.is_dir()
        && let Ok(entries) = std::fs::read_dir(p)
    {
        total += entries.flatten().map(|e| du(&e.path())).sum::<u64>();
    }
    total
}

/// Peak resident memory of a process, in bytes (VmHWM).
pub fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A tmpfs of `size` mounted on a temporary directory; unmounted on drop.
pub struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(d)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// `GET path` on the daemon's `--metrics-addr` at 127.0.0.1:`port`: (status, body). Bounded:
/// the endpoint answers `/healthz` within 5 s.
pub fn http_status_body(port: u16, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let status = r.split(' ').nth(1).unwrap().parse().unwrap();
    (status, r.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// The sum of every sample of `series` (a name, or a name with labels) in the `/metrics` of
/// the daemon at 127.0.0.1:`port`.
pub fn metric(port: u16, series: &str) -> f64 {
    metric_sum(&http_status_body(port, "/metrics").1, series)
}

/// The sum of every sample of `series` (a name, or a name with labels) in Prometheus text.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Free bytes and total bytes of the filesystem holding `p` (statvfs).
pub fn fs_space(p: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(r, 0, "statvfs {}: {}", p.display(), std::io::Error::last_os_error());
    (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
}

/// An overlay filesystem (lower, upper and work directories in a temporary directory) mounted
/// on `merged`; unmounted on drop. Files on it sit one filesystem deep in the kernel's stacking.
pub struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    pub fn new() -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let p = |d: &str| dir.path().join(d).to_str().unwrap().to_string();
        let opts = format!("lowerdir={},upperdir={},workdir={}", p("lower"), p("upper"), p("work"));
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(dir.path().join("merged"))
            .status()
            .unwrap();
        assert!(ok.success(), "mounting an overlay filesystem needs root");
        Overlay { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

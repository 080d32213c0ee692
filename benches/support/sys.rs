//! System probes: the page cache, a process's peak RSS, mounts, and the machine description.

use std::path::Path;
use std::process::Command;

/// `sync; echo 3 > /proc/sys/vm/drop_caches`. False when not permitted (not root, or a
/// read-only /proc in a container), in which case rows say "not dropped".
pub fn drop_caches() -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Peak resident set size (`VmHWM`) of a live process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether `path` is a mount point according to /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    String::from_utf8(out.stdout).ok().map(|s| s.trim().to_string())
}

/// nproc, CPU model, memory, kernel and the filesystem holding `dir` (as `df -hT` sees it).
pub fn machine_description(dir: &Path) -> Vec<(String, String)> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let df = first_line(Command::new("df").arg("-hT").arg(dir))
        .and_then(|s| {
            s.lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".into());
    let rustc = first_line(Command::new("rustc").arg("-V")).unwrap_or_else(|| "unknown".into());
    vec![
        ("nproc".into(), nproc.to_string()),
        ("CPU".into(), cpu),
        (
            "memory".into(),
            mem_kib.map_or("unknown".into(), |k| format!("{:.1} GiB", k as f64 / (1 << 20) as f64)),
        ),
        ("kernel (uname -r)".into(), kernel),
        (
            format!("disk of {} (df -hT: fs type size used avail use% mount)", dir.display()),
            df,
        ),
        ("rustc".into(), rustc),
        ("free page reporting (virtio-balloon)".into(), page_reporting()),
    ]
}

/// Whether the guest gives memory it frees back to its host (virtio-balloon free page reporting,
/// feature bit 5): memory touched again after that is backed anew, about 3 s per GiB on the
/// machine of docs/BENCHMARKS.md ("Memory given back to the host"), and whoever touches it first
/// (the daemon copying into a reader's page cache, a page-cache write) pays for it.
fn page_reporting() -> String {
    let reporting = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("features")).ok())
        .any(|f| f.as_bytes().get(5) == Some(&b'1'));
    if !reporting {
        return "off (no balloon device reporting)".into();
    }
    // Pages of a smaller order than this are not reported; x86-64's largest buddy order is 10.
    match std::fs::read_to_string("/sys/module/page_reporting/parameters/page_reporting_order") {
        Ok(o) => match o.trim().parse::<u32>() {
            Ok(o) if o > 10 => format!("off (page_reporting_order {o})"),
            Ok(o) => format!("ON (page_reporting_order {o}): freed memory costs a new first touch, rows vary"),
            Err(_) => "on".into(),
        },
        Err(_) => "on".into(),
    }
}

/// CPU time in clock ticks: the whole machine's busy time, this process's (the bench, its
/// reader threads and the in-process S3 server), and that of given daemons.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    pub machine_busy: u64,
    pub this_process: u64,
    pub daemons: u64,
}

/// CPU time consumed between two snapshots, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub daemons: f64,
    pub bench: f64,
    /// Everything else on the machine (other users' builds, kernel threads).
    pub other: f64,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all threads), in ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum()
}

impl CpuUse {
    pub fn plus(self, o: CpuUse) -> CpuUse {
        CpuUse {
            daemons: self.daemons + o.daemons,
            bench: self.bench + o.bench,
            other: self.other + o.other,
        }
    }
}

impl CpuSnapshot {
    pub fn take(daemon_pids: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            machine_busy: machine_busy_ticks(),
            this_process: process_ticks("self").unwrap_or(0),
            daemons: daemon_pids.iter().filter_map(|p| process_ticks(&p.to_string())).sum(),
        }
    }

    /// CPU used from `self` to `later` (both taken with the same daemons alive).
    pub fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let hz = ticks_per_sec();
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz;
        let daemons = d(self.daemons, later.daemons);
        let bench = d(self.this_process, later.this_process);
        let machine = d(self.machine_busy, later.machine_busy);
        CpuUse {
            daemons,
            bench,
            other: (machine - daemons - bench).max(0.0),
        }
    }
}

/// /proc/loadavg's 1, 5 and 15 minute averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

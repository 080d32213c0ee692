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
    ]
}

//! Result rows and the Markdown report.

use std::fmt::Write as _;
use std::time::Duration;

use s3cachefs_testserver::Counts;

use super::sys::CpuUse;

pub const MB: f64 = 1e6;

pub struct Row {
    pub name: String,
    /// What was done to the page cache before the timed part ("dropped", "warm", ...).
    pub page_cache: String,
    pub elapsed: Duration,
    /// Bytes the application read (all readers together); `None` for metadata-only rows.
    pub app_bytes: Option<u64>,
    /// Distinct bytes the scenario needs: the denominator of "S3 bytes / needed".
    pub needed_bytes: Option<u64>,
    pub counts: Counts,
    /// Peak RSS (VmHWM) of each daemon involved, in KiB.
    pub rss_kib: Vec<u64>,
    /// E.g. "0.97× jars local (warm)".
    pub vs: Option<String>,
    /// CPU seconds used during the timed part (per pass for repeated rows).
    pub cpu: Option<CpuUse>,
    pub notes: String,
}

impl Row {
    pub fn mb_per_s(&self) -> Option<f64> {
        self.app_bytes.map(|b| b as f64 / MB / self.elapsed.as_secs_f64())
    }

    fn rss(&self) -> String {
        let max = self.rss_kib.iter().max().map(|k| *k as f64 / 1024.0);
        match (self.rss_kib.len(), max) {
            (_, None) => "–".into(),
            (1, Some(m)) => format!("{m:.0}"),
            (n, Some(m)) => format!("{n}× ≤{m:.0}"),
        }
    }

    fn amplification(&self) -> String {
        match self.needed_bytes {
            Some(n) if n > 0 => format!("{:.2}×", self.counts.get_bytes as f64 / n as f64),
            _ => "–".into(),
        }
    }

    fn cells(&self) -> Vec<String> {
        let opt = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |v| format!("{v:.prec$}"));
        let mut notes = self.notes.clone();
        let c = &self.counts;
        let others = c.head_bucket + c.put + c.delete + c.other;
        if others > 0 {
            let _ = write!(
                notes,
                "{}{others} other S3 requests",
                if notes.is_empty() { "" } else { "; " }
            );
        }
        vec![
            self.name.clone(),
            self.page_cache.clone(),
            format!("{:.3}", self.elapsed.as_secs_f64()),
            opt(self.app_bytes.map(|b| b as f64 / MB), 1),
            opt(self.mb_per_s(), 1),
            c.list.to_string(),
            c.head.to_string(),
            c.get.to_string(),
            format!("{:.1}", c.get_bytes as f64 / MB),
            self.amplification(),
            self.rss(),
            self.vs.clone().unwrap_or_else(|| "–".into()),
            self.cpu.map_or("–".into(), |c| {
                format!("{:.2} / {:.2} / {:.2}", c.daemons, c.bench, c.other)
            }),
            notes,
        ]
    }

    /// One line for the progress output.
    pub fn line(&self) -> String {
        let c = self.cells();
        format!(
            "{:<26} {:>8}s {:>9} MB/s  LIST {:>4} HEAD {:>4} GET {:>6}  S3 {:>9} MB ({:>6})  RSS {:>8} MiB  {}  CPU {}  {}",
            c[0], c[2], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13]
        )
    }
}

const HEADER: [&str; 14] = [
    "scenario",
    "page cache before",
    "time (s)",
    "read (MB)",
    "MB/s",
    "LIST",
    "HEAD",
    "GET",
    "S3 GET (MB)",
    "S3 bytes ÷ needed",
    "daemon peak RSS (MiB)",
    "vs reference",
    "CPU s: daemon / bench+S3 / other",
    "notes",
];

pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {} |", HEADER.join(" | "));
    let align: Vec<&str> = HEADER
        .iter()
        .enumerate()
        .map(|(i, _)| if i <= 1 || i == 11 || i == 13 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(s, "|{}|", align.join("|"));
    for r in rows {
        let cells: Vec<String> = r.cells().into_iter().map(|c| c.replace('|', "\\|")).collect();
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
    s
}

/// `p` in [0, 1] of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

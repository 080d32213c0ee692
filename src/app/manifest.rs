//! Manifests: lists of objects to warm. `warm --manifest` reads them; `--record-access` writes
//! them from what a mount reads ([`Recorder`]).
//!
//! Two formats are read:
//! - **plain** (no header): one key per line, relative to the prefix. Lines are trimmed, a
//!   leading `/` is dropped, and empty lines and lines starting with `#` are skipped. Keys with
//!   a newline, or leading or trailing spaces, cannot be written this way.
//! - **v1**, the recorded format, identified by its first line [`HEADER`]. Each entry is one
//!   line `KEY` or `KEY<TAB>ETAG`. Both fields are percent-encoded ([`encode`]): `%`, every
//!   control character (tab, newline, carriage return, ...), a leading `#` and leading or
//!   trailing spaces are written as `%XX`, everything else is written as it is, so every S3 key
//!   has exactly one line and the file stays readable. Empty lines and lines starting with `#`
//!   are skipped; nothing is trimmed. A last line without its newline was cut by a crash
//!   while it was written, and is skipped.

use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::fs::AccessLog;
use crate::object::ObjectMeta;
use crate::warnings::Warnings;

/// The first line of a v1 manifest.
pub const HEADER: &str = "# s3cachefs manifest v1";

/// The second line written by [`Recorder`]: what the lines mean, for whoever opens the file.
const LEGEND: &str = "# KEY<TAB>ETAG per line, relative to the mount's prefix, percent-encoded (%XX) where needed";

/// One object of a manifest: its key relative to the prefix, and the ETag it had when it was
/// recorded (plain manifests have none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub etag: Option<String>,
}

/// Percent-encodes one field: `%`, control characters, a leading `#` and leading or trailing
/// spaces become `%XX`; every other character stays as it is.
pub fn encode(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let last = field.len().saturating_sub(1);
    for (i, c) in field.char_indices() {
        let escape = c == '%' || c.is_ascii_control() || (i == 0 && c == '#') || (c == ' ' && (i == 0 || i == last));
        if escape {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`encode`] (and accepts any `%XX`, in either case).
pub fn decode(field: &str) -> Result<String, String> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = field
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape at {:?}: % must be followed by two hex digits", &field[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "escapes decode to invalid UTF-8".to_string())
}

/// One v1 line for `key` (relative) and `etag`, newline included.
pub fn line(key: &str, etag: &str) -> String {
    format!("{}\t{}\n", encode(key), encode(etag))
}

/// Parses a manifest (either format). `name` names it in errors and warnings.
pub fn parse(text: &str, name: &str) -> anyhow::Result<Vec<Entry>> {
    let Some(body) = text.strip_prefix(HEADER).and_then(|r| {
        r.strip_prefix('\n')
            .or_else(|| r.strip_prefix("\r\n"))
            .or(r.is_empty().then_some(r))
    }) else {
        return Ok(parse_plain(text));
    };
    let mut entries = Vec::new();
    let mut lines: Vec<&str> = body.split('\n').collect();
    if let Some(last) = lines.pop()
        && !last.is_empty()
    {
        warn!(manifest = name, line = ?last, "skipping the manifest's last line: it has no newline (cut short)");
    }
    for (n, raw) in lines.into_iter().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let lineno = n + 2;
        let mut fields = line.split('\t');
        let key = fields.next().unwrap_or_default();
        let etag = fields.next();
        if fields.next().is_some() {
            bail!("manifest {name}, line {lineno}: more than two tab-separated fields");
        }
        let key = decode(key).map_err(|e| anyhow::anyhow!("manifest {name}, line {lineno}: key: {e}"))?;
        if key.is_empty() {
            bail!("manifest {name}, line {lineno}: empty key");
        }
        let etag = match etag {
            None => None,
            Some(e) => {
                let e = decode(e).map_err(|e| anyhow::anyhow!("manifest {name}, line {lineno}: ETag: {e}"))?;
                if e.is_empty() {
                    bail!("manifest {name}, line {lineno}: empty ETag after the tab");
                }
                Some(e)
            }
        };
        entries.push(Entry { key, etag });
    }
    Ok(entries)
}

fn parse_plain(text: &str) -> Vec<Entry> {
    text.lines()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .map(|k| Entry {
            key: k.trim_start_matches('/').to_string(),
            etag: None,
        })
        .collect()
}

/// Reads and parses a manifest file, or standard input for `-`.
pub fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the manifest from standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
    }
    parse(&text, &path.display().to_string())
}

/// How often recorded lines reach the file: a crash loses at most this much of the record.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Lines waiting for the file, at most: past it (the file cannot be written), new entries are
/// dropped, with a warning.
const MAX_PENDING: usize = 16 << 20;

/// `--record-access`: appends each object read through a mount to a v1 manifest, once per key
/// and ETag, in first-read order. Lines are buffered and written (and `fdatasync`ed) every
/// second by a thread of its own, and when the recorder is finished.
///
/// Memory: the set of recorded (key, ETag) pairs holds a 16-byte hash of each, about 20 to 40
/// bytes per pair with the table's slack (some 35 MiB per million objects).
pub struct Recorder {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    path: PathBuf,
    /// Keys are recorded relative to this prefix, as `warm --manifest` reads them.
    prefix: String,
    seen: Mutex<HashSet<[u8; 16]>>,
    pending: Mutex<Vec<u8>>,
    file: Mutex<std::fs::File>,
    warnings: Warnings,
}

impl Recorder {
    /// Opens (or creates, mode 0600) the manifest at `path` for appending, and starts the
    /// flushing thread. An existing file must be a v1 manifest; a last line cut short by a
    /// crash is removed. The file is locked (`flock`) so that two processes never append to it.
    pub fn open(path: &Path, prefix: &str) -> anyhow::Result<Recorder> {
        let shown = path.display();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("--record-access: cannot open {shown}"))?;
        if file.try_lock().is_err() {
            bail!("--record-access: {shown} is being written by another process");
        }
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .with_context(|| format!("--record-access: cannot read {shown}"))?;
        if text.is_empty() {
            file.write_all(format!("{HEADER}\n{LEGEND}\n").as_bytes())
                .with_context(|| format!("--record-access: cannot write {shown}"))?;
        } else {
            if !text.starts_with(format!("{HEADER}\n").as_bytes()) {
                bail!(
                    "--record-access: {shown} exists and is not an s3cachefs manifest (its first line is not \
                     {HEADER:?}); remove it or choose another file"
                );
            }
            let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if whole < text.len() {
                warn!(manifest = %shown, "removing a last line cut short by a crash");
                file.set_len(whole as u64)
                    .with_context(|| format!("--record-access: cannot truncate {shown}"))?;
            }
        }
        file.seek(std::io::SeekFrom::End(0))?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            prefix: prefix.to_string(),
            seen: Mutex::new(HashSet::new()),
            pending: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            warnings: Warnings::default(),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("s3cachefs-record".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    s.flush();
                }
                s.flush();
            })
            .context("cannot start the access recorder's thread")?;
        Ok(Recorder {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// What the filesystem reports reads to.
    pub fn log(&self) -> Arc<dyn AccessLog> {
        self.shared.clone()
    }

    /// Writes what is pending and stops the thread (also on drop).
    pub fn finish(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// A handle that writes what is pending, from any thread (before the process exits).
    pub fn flusher(&self) -> Flusher {
        Flusher(self.shared.clone())
    }
}

/// See [`Recorder::flusher`].
pub struct Flusher(Arc<Shared>);

impl Flusher {
    pub fn flush(&self) {
        self.0.flush();
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("path", &self.shared.path).finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Shared {
    fn flush(&self) {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap());
        if lines.is_empty() {
            return;
        }
        let mut file = self.file.lock().unwrap();
        if let Err(e) = file.write_all(&lines).and_then(|()| file.sync_data()) {
            if let Some(n) = self.warnings.allow() {
                warn!(manifest = %self.path.display(), suppressed = n, "cannot write the access record: {e}");
            }
            // Keep the lines for the next attempt, within bounds.
            let mut pending = self.pending.lock().unwrap();
            if pending.len() + lines.len() <= MAX_PENDING {
                let newer = std::mem::replace(&mut *pending, lines);
                pending.extend_from_slice(&newer);
            }
        }
    }
}

/// The identity of a recorded (key, ETag) pair: 128 bits of SHA-256 over both, length-prefixed.
fn pair_hash(key: &str, etag: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in [key, etag] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..16].try_into().expect("16 bytes")
}

impl AccessLog for Shared {
    fn read(&self, meta: &ObjectMeta) {
        let Some(rel) = meta.key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        if !self.seen.lock().unwrap().insert(pair_hash(rel, &meta.etag)) {
            return;
        }
        let line = line(rel, &meta.etag);
        let mut pending = self.pending.lock().unwrap();
        if pending.len() + line.len() > MAX_PENDING {
            if let Some(n) = self.warnings.allow() {
                warn!(manifest = %self.path.display(), suppressed = n, key = %meta.key, "access record is full; dropping entries");
            }
            return;
        }
        pending.extend_from_slice(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoding_keeps_ordinary_keys_readable() {
        assert_eq!(encode("jars/app-1.0.jar"), "jars/app-1.0.jar");
        assert_eq!(encode("a b/c d.txt"), "a b/c d.txt");
        assert_eq!(encode("#x#"), "%23x#");
        assert_eq!(encode(" x "), "%20x%20");
        assert_eq!(encode("a\tb\nc\rd%e"), "a%09b%0Ac%0Dd%25e");
        assert_eq!(encode("é/ü"), "é/ü");
        assert_eq!(line("k", "\"abc\""), "k\t\"abc\"\n");
    }

    #[test]
    fn v1_and_plain_manifests() {
        let v1 = format!("{HEADER}\n# comment\n\na%09b\t\"e1\"\nplain\n%23hash\t\"e2\"\r\n");
        assert_eq!(
            parse(&v1, "m").unwrap(),
            vec![
                Entry {
                    key: "a\tb".into(),
                    etag: Some("\"e1\"".into())
                },
                Entry {
                    key: "plain".into(),
                    etag: None
                },
                Entry {
                    key: "#hash".into(),
                    etag: Some("\"e2\"".into())
                },
            ]
        );
        // A last line without its newline was cut short: skipped.
        let cut = format!("{HEADER}\nwhole\t\"e\"\nhal");
        assert_eq!(parse(&cut, "m").unwrap().len(), 1);
        // Today's format: trimmed, `/` and comments dropped.
        let plain = "# keys\n jars/a.jar \n\n/jars/b.jar\n";
        let keys: Vec<String> = parse(plain, "m").unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["jars/a.jar", "jars/b.jar"]);
        for bad in ["a\tb\tc\n", "%zz\n", "%ff\n", "\t\"e\"\n", "k\t\n"] {
            let e = parse(&format!("{HEADER}\n{bad}"), "m").unwrap_err().to_string();
            assert!(e.contains("line 2"), "{bad:?}: {e}");
        }
    }

    proptest! {
        /// Every key and ETag, whatever it contains, comes back exactly from its line.
        #[test]
        fn every_key_round_trips(key in "\\PC*|[\\x00-\\x7f]{1,40}", etag in "[ -~\t]{1,40}") {
            prop_assume!(!key.is_empty());
            let text = format!("{HEADER}\n{}", line(&key, &etag));
            let parsed = parse(&text, "m").unwrap();
            prop_assert_eq!(parsed, vec![Entry { key: key.clone(), etag: Some(etag.clone()) }]);
            let l = line(&key, &etag);
            prop_assert_eq!(l.matches('\n').count(), 1);
            prop_assert_eq!(l.matches('\t').count(), 1);
        }
    }

    #[test]
    fn recorder_appends_each_pair_once_and_resumes_after_a_cut() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.manifest");
        let meta = |k: &str, e: &str| ObjectMeta {
            key: format!("p/{k}").into(),
            size: 1,
            etag: e.into(),
            last_modified: std::time::SystemTime::UNIX_EPOCH,
        };
        {
            let mut r = Recorder::open(&path, "p/").unwrap();
            let log = r.log();
            for (k, e) in [("a", "1"), ("b\nc", "1"), ("a", "1"), ("a", "2")] {
                log.read(&meta(k, e));
            }
            // Another process cannot record into the same file.
            assert!(
                Recorder::open(&path, "p/")
                    .unwrap_err()
                    .to_string()
                    .contains("another process")
            );
            r.finish();
        }
        let entries = read(&path).unwrap();
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.etag.as_deref().unwrap()))
            .collect();
        assert_eq!(pairs, [("a", "1"), ("b\nc", "1"), ("a", "2")]);
        // A crash cut the last line: the next recorder removes it and appends after it.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"half-writ").unwrap();
        drop(f);
        let r = Recorder::open(&path, "p/").unwrap();
        r.log().read(&meta("d", "1"));
        drop(r);
        assert_eq!(read(&path).unwrap().len(), 4);
        // Anything else is refused.
        std::fs::write(&path, "jars/a.jar\n").unwrap();
        assert!(
            Recorder::open(&path, "")
                .unwrap_err()
                .to_string()
                .contains("not an s3cachefs manifest")
        );
    }
}

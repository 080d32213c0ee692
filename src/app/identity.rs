//! The caches' partition: which identity's cached data and metadata a process may use. Every
//! tier (disk blocks, assembled files, persisted metadata, the shared tier) names what it keeps
//! by the source and this partition (`object::SourceId`), so what one identity cached is never
//! served to another, and processes of the same identity share the same bytes.
//!
//! The partition is, in order (docs/SEMANTICS.md, "Trust model"):
//! 1. `--cache-partition LABEL`: the administrator names it;
//! 2. `--no-sign-request`: one partition for every unsigned reader (public data);
//! 3. the principal STS `GetCallerIdentity` names for the credentials (an assumed role's session
//!    name dropped, so every session of a role shares), remembered in the cache directory for
//!    these exact credentials;
//! 4. when STS does not answer: the partition last learned for these exact credentials, else one
//!    of their own: an HMAC of the access key id, secret key and session token under a random salt
//!    kept in the cache directory (per process without `--cache`). It never matches another set
//!    of credentials, so it can only share less, never more.
//!
//! Nothing here stores or logs credentials: only salted HMACs of them, and hashes of the
//! principal and label.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::cachedir::{self, Area, CacheDir, IDENTITIES, SALT};
use crate::config::S3Config;
use crate::store::s3::S3Store;

/// The partition of every unsigned reader.
pub const ANONYMOUS: &str = "anonymous";
/// A remembered identity not confirmed by STS for this long is removed.
const FORGET_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);
const SALT_LEN: usize = 32;

/// How the partition was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    Label,
    Anonymous,
    /// STS answered now.
    Sts,
    /// STS did not answer; the partition STS named earlier for these exact credentials.
    Remembered,
    /// STS did not answer and nothing is remembered: the credentials' own partition.
    Credentials,
}

/// The caches' partition of this process.
#[derive(Clone, Debug)]
pub struct Partition {
    /// The token in every cache key (`SourceId`).
    pub token: String,
    pub learned: Learned,
}

/// The partition of a `--cache-partition` label.
pub fn label_partition(label: &str) -> String {
    format!("label-{}", hex32(label.as_bytes()))
}

/// The partition of an STS principal: the ARN, with an assumed role's session name dropped.
pub fn principal_partition(arn: &str) -> String {
    format!("principal-{}", hex32(normalize_arn(arn).as_bytes()))
}

/// `arn:aws:sts::123:assumed-role/Role/session` → `arn:aws:sts::123:assumed-role/Role`: sessions
/// of one role (each pod's, each restart's) have the role's permissions and share.
fn normalize_arn(arn: &str) -> &str {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() == 6
        && parts[2] == "sts"
        && let Some(role_and_session) = parts[5].strip_prefix("assumed-role/")
        && let Some((_, session)) = role_and_session.split_once('/')
    {
        return &arn[..arn.len() - session.len() - 1];
    }
    arn
}

/// 32 hex digits (128 bits) of SHA-256.
fn hex32(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Learns this process's partition (see the module docs). `cache` is `--cache`, whose salt and
/// remembered identities it uses. Fails only when credentials cannot be loaded or the cache
/// directory cannot be used.
pub async fn resolve(store: &S3Store, s3: &S3Config, cache: Option<&Path>) -> anyhow::Result<Partition> {
    if let Some(label) = &s3.cache_partition {
        info!(label = %label, "caches partitioned by --cache-partition");
        return Ok(Partition {
            token: label_partition(label),
            learned: Learned::Label,
        });
    }
    if s3.no_sign_request {
        return Ok(Partition {
            token: ANONYMOUS.to_string(),
            learned: Learned::Anonymous,
        });
    }
    let memory = cache.map(Memory::open).transpose()?;
    let salt = match &memory {
        Some(m) => m.salt()?,
        None => random_salt()?,
    };
    let id = store.caller_identity(&salt).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let fingerprint = hex(&id.fingerprint.expect("signed requests have credentials"));
    match id.principal {
        Ok(arn) => {
            let token = principal_partition(&arn);
            info!(principal = %normalize_arn(&arn), "caches partitioned by the STS principal");
            if let Some(m) = &memory {
                m.remember(&fingerprint, &token);
            }
            Ok(Partition {
                token,
                learned: Learned::Sts,
            })
        }
        Err(e) => match memory.as_ref().and_then(|m| m.recall(&fingerprint)) {
            Some(token) => {
                warn!(error = %e, "STS GetCallerIdentity failed; using the identity it named earlier for these credentials");
                Ok(Partition {
                    token,
                    learned: Learned::Remembered,
                })
            }
            None => {
                let token = format!("keys-{}", &fingerprint[..32]);
                let msg = "STS GetCallerIdentity failed: the caches are partitioned by these credentials alone \
                           (nothing is shared with other credentials, even of the same principal)";
                if e.is_transient() {
                    warn!(error = %e, "{msg}");
                } else {
                    info!(error = %e, "{msg}");
                }
                Ok(Partition {
                    token,
                    learned: Learned::Credentials,
                })
            }
        },
    }
}

fn random_salt() -> std::io::Result<Vec<u8>> {
    let mut salt = vec![0; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// The salt and remembered identities in the cache directory.
struct Memory {
    dir: CacheDir,
    version: PathBuf,
}

impl Memory {
    fn open(cache: &Path) -> anyhow::Result<Memory> {
        let dir = CacheDir::open(cache)?;
        let version = dir.version_path();
        Ok(Memory { dir, version })
    }

    fn read_small(&self, path: &Path, limit: usize) -> Option<Vec<u8>> {
        let mut f = self.dir.open_read(path, true).ok()?;
        let meta = f.metadata().ok()?;
        if !cachedir::is_own_file(&meta) || meta.len() > limit as u64 {
            return None;
        }
        let mut out = Vec::new();
        f.read_to_end(&mut out).ok()?;
        Some(out)
    }

    fn write(&self, dest: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
        let mut t = self.dir.temp(&self.dir.area(Area::Tmp), "id", Some(&self.version))?;
        t.file().write_all(bytes)?;
        t.file().sync_all()?;
        if replace {
            t.place(dest, Some(&self.version)).map(|_| ())
        } else {
            t.place_new(dest)
        }
    }

    /// The directory's salt, made (32 random bytes, 0600) by the first process that needs it.
    fn salt(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.version.join(SALT);
        for _ in 0..3 {
            if let Some(s) = self.read_small(&path, SALT_LEN).filter(|s| s.len() == SALT_LEN) {
                return Ok(s);
            }
            if self.dir.metadata(&path).is_ok() {
                // Not a salt file of ours (a symlink, another user's, the wrong size): never used.
                warn!(path = %path.display(), "replacing an invalid salt file");
                let _ = self.dir.remove_file(&path);
            }
            match self.write(&path, &random_salt()?, false) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    // Name the culprit: the temp directory the salt is written through (never
                    // followed when it is a symlink), else the salt file.
                    if let cachedir::DirState::NotADirectory(dir, _) = self.dir.dir_state(&self.dir.area(Area::Tmp)) {
                        anyhow::bail!("cache directory {} is not a directory", dir.display());
                    }
                    return Err(anyhow::anyhow!("cannot write {}: {e}", path.display()));
                }
            }
        }
        anyhow::bail!("cannot make the cache directory's salt file {}", path.display())
    }

    fn path(&self, fingerprint: &str) -> PathBuf {
        self.version.join(IDENTITIES).join(fingerprint)
    }

    /// Remembers the partition STS named for these credentials; forgets old ones.
    fn remember(&self, fingerprint: &str, token: &str) {
        if let Err(e) = self.write(&self.path(fingerprint), token.as_bytes(), true) {
            warn!(error = %e, "cannot remember the STS identity in the cache directory");
        }
        let now = SystemTime::now();
        for e in self.dir.read_dir(&self.version.join(IDENTITIES)).unwrap_or_default() {
            let old = e
                .metadata()
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > FORGET_AFTER);
            if old {
                let _ = self.dir.remove_file(&e.path());
            }
        }
    }

    /// The partition STS named earlier for these exact credentials.
    fn recall(&self, fingerprint: &str) -> Option<String> {
        let bytes = self.read_small(&self.path(fingerprint), 64)?;
        let token = String::from_utf8(bytes).ok()?;
        let hex = token.strip_prefix("principal-")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_of_a_role_share_and_other_principals_do_not() {
        let a = principal_partition("arn:aws:sts::123456789012:assumed-role/jobs/pod-1");
        let b = principal_partition("arn:aws:sts::123456789012:assumed-role/jobs/1700000000-xyz");
        assert_eq!(a, b);
        assert_eq!(a, principal_partition("arn:aws:sts::123456789012:assumed-role/jobs"));
        for other in [
            "arn:aws:sts::123456789012:assumed-role/other/pod-1",
            "arn:aws:sts::999999999999:assumed-role/jobs/pod-1",
            "arn:aws:iam::123456789012:user/jobs",
            "arn:aws:iam::123456789012:role/jobs",
        ] {
            assert_ne!(a, principal_partition(other), "{other}");
        }
        assert_eq!(normalize_arn("arn:aws:iam::1:user/alice"), "arn:aws:iam::1:user/alice");
        assert_ne!(label_partition("a"), label_partition("b"));
        assert_ne!(label_partition("x"), principal_partition("x"));
        assert!(a.starts_with("principal-") && a.len() == "principal-".len() + 32);
    }

    #[test]
    fn the_salt_is_made_once_and_identities_are_remembered_per_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let m = Memory::open(d.path()).unwrap();
        let s1 = m.salt().unwrap();
        assert_eq!(s1.len(), SALT_LEN);
        assert_eq!(Memory::open(d.path()).unwrap().salt().unwrap(), s1);
        let token = principal_partition("arn:aws:iam::1:user/a");
        assert_eq!(m.recall("f1"), None);
        m.remember("f1", &token);
        assert_eq!(m.recall("f1"), Some(token));
        assert_eq!(m.recall("f2"), None);
        // Anything else in its place is not an identity.
        std::fs::write(m.path("f3"), "keys-00").unwrap();
        assert_eq!(m.recall("f3"), None);
        // A symlinked salt file is never followed: replaced by a real one.
        let outside = d.path().join("outside");
        std::fs::write(&outside, [7u8; SALT_LEN]).unwrap();
        let salt = m.version.join(SALT);
        std::fs::remove_file(&salt).unwrap();
        std::os::unix::fs::symlink(&outside, &salt).unwrap();
        let s2 = m.salt().unwrap();
        assert_ne!(s2, vec![7u8; SALT_LEN]);
        assert!(!std::fs::symlink_metadata(&salt).unwrap().is_symlink());
        assert_eq!(std::fs::read(&outside).unwrap(), vec![7u8; SALT_LEN]);
    }

    #[test]
    fn a_salt_that_cannot_be_made_through_a_symlinked_temp_directory_names_it() {
        let d = tempfile::tempdir().unwrap();
        let m = Memory::open(d.path()).unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tmp = m.dir.area(Area::Tmp);
        std::os::unix::fs::symlink(outside.path(), &tmp).unwrap();
        let e = m.salt().unwrap_err().to_string();
        assert_eq!(e, format!("cache directory {} is not a directory", tmp.display()));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(std::fs::symlink_metadata(m.version.join(SALT)).is_err());
    }
}

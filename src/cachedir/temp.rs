//! Atomic writes into the cache directory: a temp file (0600, `O_EXCL`) in `tmp/`, renamed into
//! place without following any path component; removed when dropped unplaced.

use super::*;

/// A file being written in a temp directory; removed on drop unless placed.
pub struct TempFile<'a> {
    pub(super) cache: &'a CacheDir,
    pub(super) dir: OwnedFd,
    pub(super) name: OsString,
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Renamed away: nothing to remove.
    pub(super) placed: bool,
}

/// What placing a temp file did.
#[derive(Debug, Default)]
pub struct Placed {
    /// Directories created for it.
    pub dirs_created: u32,
    /// Bytes on disk of the file it replaced, if any.
    pub replaced: Option<u64>,
}

impl TempFile<'_> {
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Where it is (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `dest`, replacing what is there, creating missing directories below
    /// `create_below`.
    pub fn place(mut self, dest: &Path, create_below: Option<&Path>) -> io::Result<Placed> {
        let (dir, name, dirs_created) = self.cache.parent_of(dest, create_below)?;
        let replaced = stat_at(&dir, name).ok().map(|m| m.blocks() * 512);
        rustix::fs::renameat(&self.dir, &self.name, &dir, name)?;
        self.placed = true;
        Ok(Placed { dirs_created, replaced })
    }

    /// Makes it `dest` only if there is no `dest` yet (`AlreadyExists` otherwise): a hard
    /// link, or a rename where the filesystem has no hard links (which may then replace a
    /// `dest` made at the same moment).
    pub fn place_new(mut self, dest: &Path) -> io::Result<()> {
        let (dir, name, _) = self.cache.parent_of(dest, None)?;
        match rustix::fs::linkat(&self.dir, &self.name, &dir, name, AtFlags::empty()) {
            Ok(()) => Ok(()), // the temp name is removed on drop
            Err(Errno::EXIST) => Err(io::ErrorKind::AlreadyExists.into()),
            Err(_) => {
                rustix::fs::renameat(&self.dir, &self.name, &dir, name)?;
                self.placed = true;
                Ok(())
            }
        }
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.placed {
            let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

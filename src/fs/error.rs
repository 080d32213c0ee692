//! `FsError`: every failure of a filesystem operation, and its errno in one exhaustive match.

use crate::read::ReadError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no inode {0}")]
    NoSuchInode(u64),
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only file system")]
    ReadOnly,
    #[error("file handle not open")]
    BadHandle,
    #[error("file no longer exists in S3 under this name")]
    Stale,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl FsError {
    /// The object changed or vanished in S3 under an open handle: attributes and pages the
    /// kernel holds for it are stale.
    pub fn object_changed(&self) -> bool {
        matches!(self, FsError::Read(ReadError::Changed | ReadError::Gone))
    }

    /// The errno the kernel should see.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NoSuchInode(_) | FsError::Stale => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::Store(e) | FsError::Read(ReadError::Store(e)) => match e {
                StoreError::NotFound => libc::ENOENT,
                StoreError::AccessDenied(_) | StoreError::Credentials(_) => libc::EACCES,
                StoreError::Timeout => libc::ETIMEDOUT,
                StoreError::NoSuchBucket
                | StoreError::PreconditionFailed
                | StoreError::InvalidRange
                | StoreError::Throttled
                | StoreError::Network(_)
                | StoreError::Service { .. }
                | StoreError::BadResponse(_) => libc::EIO,
            },
            FsError::Read(ReadError::Changed | ReadError::Gone) => libc::EIO,
        }
    }
}

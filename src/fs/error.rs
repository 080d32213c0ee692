//! `FsError`: every failure of a filesystem operation, and its errno in one exhaustive match.

use crate::meta::MetaError;
use crate::read::ReadError;

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
    Meta(#[from] MetaError),
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
            FsError::Meta(e) => meta_errno(e),
            // A read's store error, classified the way `meta` classifies store errors (the
            // same classes, so the same errnos), which keeps `fs` from naming the store.
            FsError::Read(ReadError::Store(e)) => meta_errno(&MetaError::from(e.clone())),
            FsError::Read(ReadError::Changed | ReadError::Gone) => libc::EIO,
        }
    }
}

fn meta_errno(e: &MetaError) -> i32 {
    match e {
        MetaError::NotFound => libc::ENOENT,
        MetaError::AccessDenied(_) | MetaError::Credentials(_) => libc::EACCES,
        MetaError::Timeout => libc::ETIMEDOUT,
        MetaError::Throttled | MetaError::Network(_) | MetaError::Other(_) => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// Each class of failure keeps the errno it had when `fs` matched store errors itself.
    #[test]
    fn store_failures_map_to_the_same_errnos_from_meta_and_from_reads() {
        let cases = [
            (StoreError::NotFound, libc::ENOENT),
            (StoreError::AccessDenied("no".into()), libc::EACCES),
            (StoreError::Credentials("none".into()), libc::EACCES),
            (StoreError::Timeout, libc::ETIMEDOUT),
            (StoreError::NoSuchBucket, libc::EIO),
            (StoreError::PreconditionFailed, libc::EIO),
            (StoreError::InvalidRange, libc::EIO),
            (StoreError::Throttled, libc::EIO),
            (StoreError::Network("reset".into()), libc::EIO),
            (
                StoreError::Service {
                    status: 500,
                    code: "InternalError".into(),
                    message: "boom".into(),
                },
                libc::EIO,
            ),
            (StoreError::BadResponse("short".into()), libc::EIO),
        ];
        for (e, errno) in cases {
            assert_eq!(
                FsError::from(MetaError::from(e.clone())).errno(),
                errno,
                "{e:?} via meta"
            );
            assert_eq!(
                FsError::from(ReadError::Store(e.clone())).errno(),
                errno,
                "{e:?} via read"
            );
        }
        assert_eq!(FsError::from(ReadError::Changed).errno(), libc::EIO);
        assert_eq!(FsError::from(ReadError::Gone).errno(), libc::EIO);
    }
}

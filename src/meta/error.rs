//! `MetaError`: why a metadata question (a lookup, a listing, a HEAD) could not be answered,
//! classified for the layers above, so that they never see the store's own error type.
//!
//! The classes are what `fs` needs to choose an errno; anything else keeps the store's message
//! for the log. Messages are the store's, word for word.

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    /// The key does not exist (a HEAD of one key; a lookup answers a missing name with `None`).
    #[error("no such key")]
    NotFound,
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("no usable AWS credentials: {0}")]
    Credentials(String),
    #[error("throttled by S3 (SlowDown) after retries")]
    Throttled,
    #[error("request timed out")]
    Timeout,
    #[error("network error: {0}")]
    Network(String),
    /// Anything else (no such bucket, a service error, a malformed answer), with its message.
    #[error("{0}")]
    Other(String),
}

impl From<StoreError> for MetaError {
    fn from(e: StoreError) -> MetaError {
        match e {
            StoreError::NotFound => MetaError::NotFound,
            StoreError::AccessDenied(m) => MetaError::AccessDenied(m),
            StoreError::Credentials(m) => MetaError::Credentials(m),
            StoreError::Throttled => MetaError::Throttled,
            StoreError::Timeout => MetaError::Timeout,
            StoreError::Network(m) => MetaError::Network(m),
            e @ (StoreError::NoSuchBucket
            | StoreError::PreconditionFailed
            | StoreError::InvalidRange
            | StoreError::Service { .. }
            | StoreError::BadResponse(_)) => MetaError::Other(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_keeps_its_class_and_its_message() {
        let cases = [
            (StoreError::NotFound, MetaError::NotFound),
            (
                StoreError::AccessDenied("no".into()),
                MetaError::AccessDenied("no".into()),
            ),
            (
                StoreError::Credentials("none".into()),
                MetaError::Credentials("none".into()),
            ),
            (StoreError::Throttled, MetaError::Throttled),
            (StoreError::Timeout, MetaError::Timeout),
            (StoreError::Network("reset".into()), MetaError::Network("reset".into())),
            (
                StoreError::NoSuchBucket,
                MetaError::Other("bucket does not exist".into()),
            ),
            (
                StoreError::PreconditionFailed,
                MetaError::Other(StoreError::PreconditionFailed.to_string()),
            ),
            (
                StoreError::InvalidRange,
                MetaError::Other(StoreError::InvalidRange.to_string()),
            ),
            (
                StoreError::BadResponse("short".into()),
                MetaError::Other(StoreError::BadResponse("short".into()).to_string()),
            ),
        ];
        for (store, meta) in cases {
            let message = store.to_string();
            let converted = MetaError::from(store);
            assert_eq!(converted, meta);
            assert_eq!(converted.to_string(), message);
        }
        let service = StoreError::Service {
            status: 500,
            code: "InternalError".into(),
            message: "boom".into(),
        };
        assert_eq!(
            MetaError::from(service).to_string(),
            "S3 answered 500 InternalError: boom"
        );
    }
}

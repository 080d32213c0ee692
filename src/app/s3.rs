//! The daemon's and `warm`'s view of S3: the store's settings from the validated config, the
//! store's name in the disk cache, and the bucket check made before anything is mounted.

use anyhow::anyhow;

use crate::config::{S3Config, Source};
use crate::metrics::StoreRole;
use crate::object::SourceId;
use crate::store::s3::{RetryPolicy, S3Settings};
use crate::store::{ListRequest, ObjectStore, StoreError};

/// Names the object store, and the identity's partition (`app::identity`), in the caches, so
/// blocks of two stores never mix and one identity's never reach another.
pub fn source_id(s3: &S3Config, source: &Source, partition: &str) -> SourceId {
    SourceId::new(s3.endpoint_url.as_deref(), &source.bucket, partition)
}

/// [`source_id`] as a string (persisted metadata records name their store this way).
pub fn store_id(s3: &S3Config, source: &Source, partition: &str) -> String {
    source_id(s3, source, partition).to_string()
}

/// The S3 store's settings for `bucket`, from the validated S3 flags.
pub(super) fn s3_settings(s3: &S3Config, bucket: &str) -> S3Settings {
    S3Settings {
        bucket: bucket.to_string(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone(),
        force_path_style: s3.force_path_style,
        profile: s3.profile.clone(),
        no_sign_request: s3.no_sign_request,
        retry: RetryPolicy {
            max_attempts: s3.max_attempts,
            attempt_timeout: s3.request_timeout,
            ..RetryPolicy::default()
        },
        role: StoreRole::Origin,
    }
}

/// Lists one key under the prefix: proves the bucket exists, is reachable and may be listed,
/// before anything is mounted.
pub(super) async fn check_bucket(store: &dyn ObjectStore, source: &Source, s3: &S3Config) -> anyhow::Result<()> {
    match probe_bucket(store, source).await {
        Ok(()) => Ok(()),
        Err(e) => Err(bucket_error(e, source, s3)),
    }
}

/// The request of [`check_bucket`], and its error as it is.
pub(super) async fn probe_bucket(store: &dyn ObjectStore, source: &Source) -> Result<(), StoreError> {
    let req = ListRequest {
        prefix: &source.prefix,
        delimited: true,
        continuation: None,
        max_keys: Some(1),
    };
    store.list(req).await.map(|_| ())
}

/// What [`check_bucket`] says about a failed check.
pub(super) fn bucket_error(e: StoreError, source: &Source, s3: &S3Config) -> anyhow::Error {
    let bucket = &source.bucket;
    match e {
        StoreError::NoSuchBucket => anyhow!("bucket {bucket:?} does not exist"),
        StoreError::AccessDenied(m) => {
            anyhow!("access denied listing bucket {bucket:?} (s3:ListBucket is required): {m}")
        }
        e @ (StoreError::Network(_) | StoreError::Timeout) => {
            let endpoint = s3.endpoint_url.as_deref().unwrap_or("the default S3 endpoint");
            anyhow!("cannot reach {endpoint} for bucket {bucket:?}: {e}")
        }
        e @ StoreError::Credentials(_) => anyhow!("{e}"),
        e => anyhow!("cannot list bucket {bucket:?}: {e}"),
    }
}

//! The daemon's and `warm`'s view of S3: the store's settings from the validated config, the
//! store's name in the disk cache, and the bucket check made before anything is mounted.

use anyhow::bail;

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
    let bucket = &source.bucket;
    let req = ListRequest {
        prefix: &source.prefix,
        delimited: true,
        continuation: None,
        max_keys: Some(1),
    };
    match store.list(req).await {
        Ok(_) => Ok(()),
        Err(StoreError::NoSuchBucket) => bail!("bucket {bucket:?} does not exist"),
        Err(StoreError::AccessDenied(m)) => {
            bail!("access denied listing bucket {bucket:?} (s3:ListBucket is required): {m}")
        }
        Err(e @ (StoreError::Network(_) | StoreError::Timeout)) => {
            let endpoint = s3.endpoint_url.as_deref().unwrap_or("the default S3 endpoint");
            bail!("cannot reach {endpoint} for bucket {bucket:?}: {e}")
        }
        Err(e @ StoreError::Credentials(_)) => bail!("{e}"),
        Err(e) => bail!("cannot list bucket {bucket:?}: {e}"),
    }
}

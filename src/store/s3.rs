//! [`ObjectStore`] on aws-sdk-s3: the only module that names the SDK.
//!
//! Credentials come from the standard AWS chain (environment, shared profile, web identity /
//! IRSA, ECS container and EC2 instance metadata) unless `no_sign_request` is set. Retries are
//! ours, not the SDK's, so one policy covers both the request and the streaming of the body
//! (which the SDK never retries): bounded attempts, exponential backoff with full jitter, a
//! longer pause after `SlowDown`, and a timeout on every attempt including its body.
//!
//! It is also a [`WritableStore`] (conditional PutObject, DeleteObject) for a cache tier's own
//! bucket; writes go through the same retry policy, timeouts and request metrics.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use tracing::{debug, warn};

use super::{ListPage, ListRequest, ObjectStore, PutOutcome, StoreError, WritableStore};
use crate::metrics::{Metrics, StoreRole};
use crate::object::{ByteRange, ObjectMeta};

/// Region used when neither `--region` nor the AWS configuration chain names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// How to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub profile: Option<String>,
    pub no_sign_request: bool,
    pub retry: RetryPolicy,
    /// Which bucket this is, so its requests are counted apart (the source, or the shared tier's).
    pub role: StoreRole,
}

/// Bounded retries with backoff; the worst case of one call is about
/// `max_attempts * attempt_timeout + backoff`, which bounds how long a read can wait.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Time allowed to connect to the endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt, including reading the whole body.
    pub attempt_timeout: Duration,
    /// First backoff; doubles with each attempt, capped at `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            // Five attempts ride out a burst of 5xx/SlowDown; more only delays the error.
            max_attempts: 5,
            connect_timeout: Duration::from_secs(5),
            // Generous for one block (1-8 MiB) even on a slow link; a stalled server is cut off.
            attempt_timeout: Duration::from_secs(30),
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

pub struct S3Store {
    client: Client,
    /// STS on the same configuration (endpoint, region, credentials), for `caller_identity`.
    sts: aws_sdk_sts::Client,
    /// `None` for unsigned requests.
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
    bucket: String,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    role: StoreRole,
}

impl S3Store {
    pub async fn new(settings: &S3Settings, metrics: Arc<Metrics>) -> S3Store {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(settings.retry.connect_timeout)
                    .read_timeout(settings.retry.attempt_timeout)
                    .build(),
            );
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if settings.no_sign_request {
            loader = loader.no_credentials();
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(settings.force_path_style);
        let mut sts = aws_sdk_sts::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            conf = conf.region(Region::new(DEFAULT_REGION));
            sts = sts.region(aws_sdk_sts::config::Region::new(DEFAULT_REGION));
        }
        S3Store {
            client: Client::from_conf(conf.build()),
            sts: aws_sdk_sts::Client::from_conf(sts.build()),
            credentials: sdk.credentials_provider(),
            bucket: settings.bucket.clone(),
            retry: settings.retry,
            metrics,
            role: settings.role,
        }
    }

    /// Who signs this store's requests (see [`CallerIdentity`]). `salt` keys the credentials'
    /// fingerprint. Fails only when credentials cannot be loaded. STS is asked at most
    /// [`STS_ATTEMPTS`] times, each within the attempt timeout; its requests are not counted as S3
    /// requests.
    pub async fn caller_identity(&self, salt: &[u8]) -> Result<CallerIdentity, StoreError> {
        use aws_sdk_s3::config::ProvideCredentials;
        use hmac::{Hmac, Mac};
        let Some(provider) = &self.credentials else {
            return Ok(CallerIdentity {
                fingerprint: None,
                principal: Err(StoreError::Credentials("requests are not signed".into())),
            });
        };
        let creds = provider
            .provide_credentials()
            .await
            .map_err(|e| StoreError::Credentials(format!("cannot load AWS credentials: {}", error_chain(&e))))?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(salt).expect("HMAC takes any key length");
        for part in [
            creds.access_key_id(),
            creds.secret_access_key(),
            creds.session_token().unwrap_or(""),
        ] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        let fingerprint = Some(mac.finalize().into_bytes().into());
        let mut n = 0;
        let principal = loop {
            n += 1;
            let r = match tokio::time::timeout(self.retry.attempt_timeout, self.sts.get_caller_identity().send()).await
            {
                Err(_) => Err(StoreError::Timeout),
                Ok(Err(e)) => Err(classify(e)),
                Ok(Ok(out)) => out
                    .arn()
                    .map(str::to_string)
                    .ok_or_else(|| StoreError::BadResponse("GetCallerIdentity answered no ARN".into())),
            };
            match r {
                Err(e) if e.is_transient() && n < STS_ATTEMPTS => {
                    tokio::time::sleep(backoff(&self.retry, n, false)).await;
                }
                r => break r,
            }
        };
        Ok(CallerIdentity { fingerprint, principal })
    }

    /// Runs `attempt` under the retry policy.
    async fn retrying<T, F, Fut>(
        &self,
        what: &'static str,
        ok_status: u16,
        key: &str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            let started = Instant::now();
            let result = match tokio::time::timeout(self.retry.attempt_timeout, attempt()).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout),
            };
            let status = match &result {
                Ok(_) => Some(ok_status),
                Err(e) => e.http_status(),
            };
            self.metrics
                .store_request(self.role, what, status, started.elapsed().as_secs_f64());
            match result {
                Err(e) if e.is_transient() && n < self.retry.max_attempts => {
                    let pause = backoff(&self.retry, n, matches!(e, StoreError::Throttled));
                    debug!(op = what, key, attempt = n, error = %e, ?pause, "retrying S3 request");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    if e.is_transient() {
                        warn!(op = what, key, attempts = n, error = %e, "S3 request failed after retries");
                    }
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
    }
}

/// Attempts of `GetCallerIdentity` at mount: enough for a blip, short when STS is down.
pub const STS_ATTEMPTS: u32 = 3;

/// Who signs a store's requests.
#[derive(Debug)]
pub struct CallerIdentity {
    /// HMAC-SHA256, under the caller's salt, of the access key id, secret key and session token
    /// (never the credentials themselves); `None` when requests are not signed.
    pub fingerprint: Option<[u8; 32]>,
    /// The principal's ARN from STS `GetCallerIdentity`, or why it is not known (unsigned
    /// requests, STS unreachable, or a store without STS).
    pub principal: Result<String, StoreError>,
}

/// Full-jitter exponential backoff; `SlowDown` starts from a longer base, as S3 asks.
fn backoff(p: &RetryPolicy, attempt: u32, throttled: bool) -> Duration {
    let base = if throttled { p.base_backoff * 4 } else { p.base_backoff };
    let cap = base.saturating_mul(1 << attempt.min(16)).min(p.max_backoff);
    // A random u64 without a dependency: std seeds every RandomState from the OS.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    cap.mul_f64((r % 10_000) as f64 / 10_000.0)
}

/// "outer: inner: innermost" from an error's source chain, skipping repeated messages.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The object size of a `Content-Range: bytes 0-9/1234` header (`None` for `*` or anything unparsable).
fn content_range_size(value: &str) -> Option<u64> {
    value.rsplit_once('/')?.1.trim().parse().ok()
}

fn to_system_time(t: Option<&aws_smithy_types::DateTime>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => StoreError::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => StoreError::Timeout,
        // Credential resolution fails before any request is sent; retrying cannot help.
        _ if error_chain(&err).contains("credentials") => StoreError::Credentials(error_chain(&err)),
        SdkError::DispatchFailure(_) => StoreError::Network(error_chain(&err)),
        SdkError::ResponseError(_) => StoreError::BadResponse(error_chain(&err)),
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            match (status, code.as_str()) {
                (_, "NoSuchBucket") => StoreError::NoSuchBucket,
                (404, _) => StoreError::NotFound,
                (403, _) => StoreError::AccessDenied(if message.is_empty() { code } else { message }),
                (412, _) => StoreError::PreconditionFailed,
                (416, _) => StoreError::InvalidRange,
                (503, _) | (_, "SlowDown") => StoreError::Throttled,
                _ => StoreError::Service { status, code, message },
            }
        }
        _ => StoreError::BadResponse(error_chain(&err)),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
        self.retrying("ListObjectsV2", 200, req.prefix, || async {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(req.prefix)
                .set_delimiter(req.delimited.then(|| "/".to_string()))
                .set_continuation_token(req.continuation.clone())
                .set_max_keys(req.max_keys)
                .send()
                .await
                .map_err(classify)?;
            let objects = out
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(ObjectMeta {
                        key: o.key()?.into(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: o.e_tag().unwrap_or("").into(),
                        last_modified: to_system_time(o.last_modified()),
                    })
                })
                .collect();
            let prefixes = out
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_string))
                .collect();
            let next = if out.is_truncated() == Some(true) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            };
            Ok(ListPage {
                objects,
                prefixes,
                next,
            })
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.retrying("HeadObject", 200, key, || async {
            let out = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(classify)?;
            Ok(ObjectMeta {
                key: key.into(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().unwrap_or("").into(),
                last_modified: to_system_time(out.last_modified()),
            })
        })
        .await
    }

    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
        assert!(!range.is_empty(), "empty ranged GET");
        self.retrying("GetObject", 206, key, || async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .if_match(etag)
                .send()
                .await
                .map_err(classify)?;
            // S3 answers a range that starts inside the object but runs past its end with the part
            // that exists, and the object's size in Content-Range. That is a wrong range, not a
            // fault of the network: not retried, and not read.
            if let Some(size) = out.content_range().and_then(content_range_size)
                && range.end > size
            {
                return Err(StoreError::InvalidRange);
            }
            // Into one buffer of the expected size (a reused one when there is one): no second
            // copy, no over-allocation.
            let mut body = crate::bufpool::BlockBuf::with_capacity(range.len() as usize);
            let mut stream = out.body;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| StoreError::BadResponse(format!("body of {key} cut short: {e}")))?
            {
                if body.len() + chunk.len() > range.len() as usize {
                    return Err(StoreError::BadResponse(format!(
                        "body of {key} longer than the range asked"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            let body = body.freeze();
            if self.role == StoreRole::Origin {
                self.metrics.s3_bytes.inc_by(body.len() as u64);
            }
            if body.len() as u64 != range.len() {
                return Err(StoreError::BadResponse(format!(
                    "expected {} bytes of {key} at {}, got {}",
                    range.len(),
                    range.start,
                    body.len()
                )));
            }
            Ok(body)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }
}

#[async_trait]
impl WritableStore for S3Store {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        let put = self
            .retrying("PutObject", 200, key, || async {
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .if_none_match("*")
                    .content_length(body.len() as i64)
                    // A clone of `Bytes` shares the buffer: every attempt sends the same bytes.
                    .body(aws_sdk_s3::primitives::ByteStream::from(body.clone()))
                    .send()
                    .await
                    .map_err(classify)?;
                Ok(())
            })
            .await;
        // The 412 stays an error inside `retrying`, so it is not retried and is counted as a 412.
        match put {
            Ok(()) => Ok(PutOutcome::Created),
            Err(StoreError::PreconditionFailed) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(e),
        }
    }

    async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
        self.retrying("GetObject", 200, key, || async {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(classify)?;
            let len = out.content_length().and_then(|n| u64::try_from(n).ok());
            if len.is_some_and(|n| n > max_len) {
                return Err(StoreError::InvalidRange);
            }
            let mut body = bytes::BytesMut::with_capacity(len.unwrap_or(0) as usize);
            let mut stream = out.body;
            while let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|e| StoreError::BadResponse(format!("body of {key} cut short: {e}")))?
            {
                if (body.len() + chunk.len()) as u64 > max_len {
                    return Err(StoreError::InvalidRange);
                }
                body.extend_from_slice(&chunk);
            }
            if len.is_some_and(|n| n != body.len() as u64) {
                return Err(StoreError::BadResponse(format!(
                    "body of {key} shorter than its length"
                )));
            }
            Ok(body.freeze())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.retrying("DeleteObject", 204, key, || async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(classify)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_sizes() {
        assert_eq!(content_range_size("bytes 0-9/1234"), Some(1234));
        assert_eq!(content_range_size("bytes 90-99/100"), Some(100));
        assert_eq!(content_range_size("bytes */100"), Some(100));
        assert_eq!(content_range_size("bytes 0-9/*"), None);
        assert_eq!(content_range_size("garbage"), None);
    }

    /// The pauses behind the documented bound (docs/SEMANTICS.md, docs/RELIABILITY.md): each
    /// below `min(base × 2ⁿ, max_backoff)`, with a 4× larger base after `SlowDown`.
    #[test]
    fn backoff_is_bounded_jittered_and_longer_after_slowdown() {
        let p = RetryPolicy::default();
        for attempt in 1..=20 {
            for throttled in [false, true] {
                let base = if throttled { p.base_backoff * 4 } else { p.base_backoff };
                let cap = base.saturating_mul(1 << attempt.min(16)).min(p.max_backoff);
                let pauses: Vec<Duration> = (0..200).map(|_| backoff(&p, attempt, throttled)).collect();
                assert!(pauses.iter().all(|d| *d < cap || cap.is_zero()), "attempt {attempt}");
                // Jitter: not all equal, and some near the cap.
                assert!(pauses.iter().any(|d| *d != pauses[0]), "attempt {attempt}: no jitter");
                assert!(
                    pauses.iter().any(|d| *d > cap / 2),
                    "attempt {attempt}: never near the cap"
                );
            }
        }
        // After SlowDown the first pause may exceed anything a plain retry would wait.
        let plain_cap = p.base_backoff * 2;
        assert!((0..200).any(|_| backoff(&p, 1, true) > plain_cap));
    }
}

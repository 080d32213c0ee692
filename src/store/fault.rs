//! A wrapper [`ObjectStore`] that adds latency and injects failures, for unit tests of retry,
//! single-flight and error paths without a network. Over a [`WritableStore`] it is one too, and
//! writes and deletes get the same latency and injected failures as every other request.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ListPage, ListRequest, ObjectStore, PutOutcome, StoreError, WritableStore};
use crate::object::{ByteRange, ObjectMeta};

pub struct FaultStore<S> {
    inner: S,
    latency: Mutex<Duration>,
    /// Errors to return, in order, instead of calling the inner store.
    pending: Mutex<Vec<StoreError>>,
}

impl<S: ObjectStore> FaultStore<S> {
    pub fn new(inner: S) -> Self {
        FaultStore {
            inner,
            latency: Mutex::new(Duration::ZERO),
            pending: Mutex::new(Vec::new()),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// The next `n` requests (of any kind) fail with `err`.
    pub fn fail_next(&self, n: usize, err: StoreError) {
        let mut pending = self.pending.lock().unwrap();
        pending.extend(std::iter::repeat_n(err, n));
    }

    async fn before(&self) -> Result<(), StoreError> {
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut pending = self.pending.lock().unwrap();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.remove(0))
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    async fn list(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
        self.before().await?;
        self.inner.list(req).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.before().await?;
        self.inner.head(key).await
    }

    async fn get_range(&self, key: &str, range: ByteRange, etag: &str) -> Result<Bytes, StoreError> {
        self.before().await?;
        self.inner.get_range(key, range, etag).await
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }
}

#[async_trait]
impl<S: WritableStore> WritableStore for FaultStore<S> {
    async fn put_if_absent(&self, key: &str, body: Bytes) -> Result<PutOutcome, StoreError> {
        self.before().await?;
        self.inner.put_if_absent(key, body).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.before().await?;
        self.inner.delete(key).await
    }

    async fn get_object(&self, key: &str, max_len: u64) -> Result<Bytes, StoreError> {
        self.before().await?;
        self.inner.get_object(key, max_len).await
    }
}

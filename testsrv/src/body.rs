//! The response body type: zero-copy slices of a stored [`Bytes`], sent either as one frame or in throttled
//! chunks (bandwidth limit / `Trickle`), optionally ending early with a clean close (`ShortBody`) or a TCP
//! reset (`ResetMidBody`). Also accounts GetObject body bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::conn::ConnCtl;
use crate::state::Shared;
use crate::stats::RecordHandle;

/// Largest frame sent when streaming under a rate limit.
const MAX_CHUNK: usize = 256 * 1024;
/// Pause before ending a truncated body, so that hyper flushes the bytes sent so far to the socket first.
const END_DELAY: Duration = Duration::from_millis(50);

/// How the body ends once its `limit` is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EndAction {
    /// Normal end (the whole data was sent).
    Complete,
    /// End early; hyper sees fewer bytes than Content-Length and closes the connection (FIN).
    Short,
    /// End early with an error and reset the connection (RST).
    Reset,
}

pub(crate) struct ResponseBody {
    data: Bytes,
    pos: usize,
    /// Bytes to send before the end action.
    limit: usize,
    rate: Option<u64>,
    started: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    slept: bool,
    end: EndAction,
    end_delay_done: bool,
    done: bool,
    conn: Option<Arc<ConnCtl>>,
    /// Where to count the GetObject body bytes sent: the server and the request's bucket.
    count_get_bytes: Option<(Arc<Shared>, RecordHandle)>,
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        Self::full(Bytes::new())
    }

    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody {
            limit: data.len(),
            data,
            pos: 0,
            rate: None,
            started: None,
            sleep: None,
            slept: false,
            end: EndAction::Complete,
            end_delay_done: false,
            done: false,
            conn: None,
            count_get_bytes: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.data.len()
    }

    /// Throttles to `bytes_per_sec` (0 = unlimited).
    pub(crate) fn with_rate(mut self, bytes_per_sec: u64) -> Self {
        self.rate = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// Sends half of the data, then ends with `end`.
    pub(crate) fn truncated(mut self, end: EndAction, conn: Arc<ConnCtl>) -> Self {
        self.limit = self.data.len() / 2;
        self.end = end;
        self.conn = Some(conn);
        self
    }

    pub(crate) fn counting_get_bytes(mut self, shared: Arc<Shared>, record: RecordHandle) -> Self {
        self.count_get_bytes = Some((shared, record));
        self
    }

    fn chunk_size(&self) -> usize {
        match self.rate {
            None => usize::MAX,
            Some(r) => (r / 16).clamp(1, MAX_CHUNK as u64) as usize,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(s) = this.sleep.as_mut() {
                ready!(s.as_mut().poll(cx));
                this.sleep = None;
                this.slept = true;
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.pos < this.limit {
                let n = this.chunk_size().min(this.limit - this.pos);
                if let Some(rate) = this.rate {
                    // A chunk is released once the rate allows all bytes up to its end.
                    let start = *this.started.get_or_insert_with(Instant::now);
                    let due = start + Duration::from_secs_f64((this.pos + n) as f64 / rate as f64);
                    if !this.slept && Instant::now() < due {
                        this.sleep = Some(Box::pin(tokio::time::sleep_until(due.into())));
                        continue;
                    }
                }
                this.slept = false;
                let frame = this.data.slice(this.pos..this.pos + n);
                this.pos += n;
                if let Some((shared, record)) = &this.count_get_bytes {
                    shared.stats().add_get_bytes(*record, n as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            match this.end {
                EndAction::Complete => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                EndAction::Short | EndAction::Reset => {
                    if !this.end_delay_done {
                        this.end_delay_done = true;
                        this.sleep = Some(Box::pin(tokio::time::sleep(END_DELAY)));
                        continue;
                    }
                    this.done = true;
                    if this.end == EndAction::Reset {
                        if let Some(c) = &this.conn {
                            c.request_reset();
                        }
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            "injected ResetMidBody fault",
                        ))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.data.is_empty() && self.end == EndAction::Complete)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

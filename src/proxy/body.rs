//! The response body on its way to the client: passed through chunk by chunk, unbuffered, with
//! the pool's secrets masked (`scrub.rs`: only a tail that may start a secret waits for the next
//! chunk), while usage is read off it (SSE events or the JSON body) and the request's overall
//! deadline is enforced. Its end (complete, failed, or dropped because the client went away) is
//! reported once through a callback.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyDataStream, BodyExt};
use tokio::time::{Instant, Sleep};

use crate::state::upstream_client::UpstreamBody;
use crate::upstream::scrub::StreamScrub;
use crate::usage::{usage_and_model_from_json_body, SseUsageScanner, Usage};

/// JSON bodies longer than this are passed through without usage accounting.
const MAX_JSON_USAGE_BYTES: usize = 1 << 20;

/// How the body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The upstream failed mid-body (reset, truncated stream).
    UpstreamError,
    /// The request's overall deadline passed mid-body.
    Deadline,
    /// The client went away before the end.
    ClientGone,
}

/// Called once when the body ends, with the usage and the model the upstream reported.
pub type OnEnd = Box<dyn FnOnce(Ending, Option<Usage>, Option<String>) + Send>;

enum Watcher {
    Sse(Box<SseUsageScanner>),
    Json(Vec<u8>),
    None,
}

/// What the upstream client answers.
pub type UpstreamResponse = http::Response<UpstreamBody>;

pub struct ObservedBody {
    inner: BodyDataStream<UpstreamBody>,
    watcher: Watcher,
    deadline: Pin<Box<Sleep>>,
    scrub: StreamScrub,
    /// The upstream body has ended; what the scrubber held back is still to be sent.
    upstream_done: bool,
    on_end: Option<OnEnd>,
}

impl ObservedBody {
    pub fn new(
        resp: UpstreamResponse,
        deadline: Instant,
        scrub: StreamScrub,
        on_end: OnEnd,
    ) -> ObservedBody {
        let headers = resp.headers();
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let watcher = if starts_with_ignore_case(ct, b"text/event-stream") {
            Watcher::Sse(Box::default())
        } else if ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) {
            // Sized once from Content-Length when the upstream sends one (no regrowth copies).
            let declared = headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            Watcher::Json(Vec::with_capacity(declared.min(MAX_JSON_USAGE_BYTES)))
        } else {
            Watcher::None
        };
        ObservedBody {
            inner: resp.into_body().into_data_stream(),
            watcher,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            scrub,
            upstream_done: false,
            on_end: Some(on_end),
        }
    }

    /// The usage read off the body and, when there is usage, the model that served it.
    fn usage_and_model(&self) -> (Option<Usage>, Option<String>) {
        match &self.watcher {
            Watcher::Sse(s) => match s.usage() {
                Some(u) => (Some(u), s.model().map(str::to_string)),
                None => (None, None),
            },
            Watcher::Json(buf) => match usage_and_model_from_json_body(buf) {
                Some((u, model)) => (Some(u), model),
                None => (None, None),
            },
            Watcher::None => (None, None),
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(f) = self.on_end.take() {
            let (usage, model) = self.usage_and_model();
            f(ending, usage, model);
        }
    }

    fn observe(&mut self, chunk: &Bytes) {
        match &mut self.watcher {
            Watcher::Sse(s) => s.feed(chunk),
            Watcher::Json(buf) => {
                if buf.len() + chunk.len() <= MAX_JSON_USAGE_BYTES {
                    buf.extend_from_slice(chunk);
                } else {
                    self.watcher = Watcher::None;
                }
            }
            Watcher::None => {}
        }
    }
}

fn starts_with_ignore_case(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

impl Stream for ObservedBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.on_end.is_none() {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.finish(Ending::Deadline);
            return Poll::Ready(Some(Err(std::io::Error::other("request deadline passed"))));
        }
        loop {
            if self.upstream_done {
                self.finish(Ending::Complete);
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    self.observe(&chunk);
                    let out = self.scrub.feed(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.finish(Ending::UpstreamError);
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(None) => {
                    self.upstream_done = true;
                    let rest = self.scrub.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
            }
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(Ending::ClientGone);
    }
}

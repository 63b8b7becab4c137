//! How an answer's body goes out: all at once, cut off mid-body, or one SSE event at a time.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::watch;

use super::openai::json_response;

/// The pace of an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pace {
    AllAtOnce,
    /// Send this many SSE events (non-streaming: half of the body), then abort the connection.
    DropAfter(usize),
    /// Each SSE event this many milliseconds after the previous one.
    Every(u64),
}

fn aborted(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_owned())
}

/// Ends a body with an error, so hyper aborts the connection instead of finishing the message.
/// The error waits one scheduler turn first: hyper flushes what was sent while the body is
/// pending, and would discard it if the error came right away.
fn then_abort(
    sent: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let abort = stream::once(async {
        tokio::task::yield_now().await;
        Err(aborted("mock upstream dropped the connection mid-body"))
    });
    sent.chain(abort)
}

/// A `text/event-stream` answer made of `events`, at `pace`.
pub(super) fn sse_response(
    events: Vec<Bytes>,
    pace: Pace,
    stopping: watch::Receiver<bool>,
    open: Arc<AtomicU64>,
) -> Response {
    let body = match pace {
        Pace::AllAtOnce => {
            Body::from_stream(stream::iter(events.into_iter().map(Ok::<_, io::Error>)))
        }
        Pace::DropAfter(count) => {
            // Never the last event: a stream that was cut off must not end in `[DONE]`.
            let keep = count.min(events.len().saturating_sub(1));
            let sent = stream::iter(events.into_iter().take(keep).map(Ok));
            Body::from_stream(then_abort(sent))
        }
        Pace::Every(interval_ms) => {
            let open = OpenStream::new(open);
            Body::from_stream(spaced(events, interval_ms, stopping).map(move |item| {
                let _still_open = &open;
                item
            }))
        }
    };
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// `events`, each after `interval_ms`; cut off with an error when the server shuts down.
fn spaced(
    events: Vec<Bytes>,
    interval_ms: u64,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let interval = Duration::from_millis(interval_ms);
    stream::unfold(
        Some((events.into_iter(), stopping)),
        move |state| async move {
            let (mut events, mut stopping) = state?;
            let event = events.next()?;
            let stopped = tokio::select! {
                () = tokio::time::sleep(interval) => false,
                _ = stopping.wait_for(|stopping| *stopping) => true,
            };
            if stopped {
                return Some((Err(aborted("mock upstream shutting down")), None));
            }
            Some((Ok(event), Some((events, stopping))))
        },
    )
}

/// A 200 JSON answer; [`Pace::DropAfter`] sends half of it and aborts.
pub(super) fn paced_json(body: String, pace: Pace) -> Response {
    match pace {
        Pace::DropAfter(_) => {
            let mut rest = Bytes::from(body);
            let half = rest.split_to(rest.len() / 2);
            let sent = stream::iter([Ok(half)]);
            json_response(StatusCode::OK, Body::from_stream(then_abort(sent)))
        }
        Pace::AllAtOnce | Pace::Every(_) => json_response(StatusCode::OK, body),
    }
}

/// Counts a paced body as open from its creation until it is dropped (finished or abandoned).
struct OpenStream(Arc<AtomicU64>);

impl OpenStream {
    fn new(counter: Arc<AtomicU64>) -> OpenStream {
        counter.fetch_add(1, Ordering::SeqCst);
        OpenStream(counter)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

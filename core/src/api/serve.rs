//! Serving an HTTP API (the gateway, the slang search API) with limits on what one client can
//! hold: a connection limit, and timeouts for a request's headers, for its handling, and for a
//! connection that moves no bytes. Without them (hyper reads headers with no timeout unless given
//! a timer, and nothing bounds a request or the connections), a few thousand slow clients, of any
//! organisation, could hold the server for everyone (docs/design.md, promise 8).
//!
//! Invariant: at most `--http-max-connections` connections are open (further ones wait in the
//! listen backlog until one closes); a connection waiting for a request's headers longer than
//! `--http-header-timeout` (counted from its start, or from the previous answer on a kept-alive
//! connection) is closed; a request not answered within `--http-request-timeout` of its headers,
//! body reading included, gets a 408 problem; a connection with no request being handled that
//! reads and writes nothing for `--http-idle-timeout` is closed. At shutdown, no connection is
//! accepted, kept-alive ones close after their request in flight, and [`serve`] returns when
//! every connection is closed.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use clap::Args;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::Service;

use super::ApiError;
use crate::config::parse_duration;

/// The limits of an HTTP server, as flags (the gateway's and the slang search API's).
#[derive(Debug, Clone, Copy, Args)]
pub struct HttpLimits {
    /// Longest wait for a request's complete headers, from the connection's start or, on a
    /// kept-alive connection, from the previous answer; then the connection is closed. A client
    /// trickling its headers (slowloris) holds a connection no longer than this.
    // Ten seconds: a phone on a poor network sends a few hundred bytes of headers well within it.
    #[arg(long, env = "FORMSTREAM_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Longest a request may take from its headers to its answer, reading its body included;
    /// then it is answered 408 (problem+json) and its work is dropped.
    // Above the gateway's --produce-timeout (5s), so that Kafka's slowness is a 503, not a 408;
    // and time for a 2 MiB batch over a 70 KB/s link.
    #[arg(long, env = "FORMSTREAM_HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,

    /// Longest a connection may read and write nothing while no request of it is being handled
    /// (a client that stopped reading its answer); then it is closed. Between requests the header
    /// timeout, if shorter, closes it first.
    // Generous for a slow reader of a small answer; short enough that stuck sockets do not pile up.
    #[arg(long, env = "FORMSTREAM_HTTP_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Most connections open at once; further ones wait in the listen backlog until one closes.
    // Each costs a few KiB and a file descriptor; 10,000 fits the usual 65,536-descriptor limit
    // with room for Kafka's sockets, and far exceeds what honest clients of one instance open.
    #[arg(
        long,
        env = "FORMSTREAM_HTTP_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub http_max_connections: u32,
}

impl Default for HttpLimits {
    /// The flags' defaults (and the FORMSTREAM_HTTP_* environment), for servers built in code.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            limits: HttpLimits,
        }
        <Defaults as clap::Parser>::try_parse_from(["defaults"])
            .map(|d| d.limits)
            .unwrap_or(HttpLimits {
                http_header_timeout: Duration::from_secs(10),
                http_request_timeout: Duration::from_secs(30),
                http_idle_timeout: Duration::from_secs(30),
                http_max_connections: 10_000,
            })
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes, then lets the requests
/// in flight finish and returns once every connection is closed (bound that wait from outside).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.http_max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(connection(
            stream,
            app.clone(),
            limits,
            stopping.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it closes.
    let _ = slots.acquire_many(max).await;
}

/// A failed accept: a connection that went away before it was accepted is nothing; running out
/// of file descriptors (or another error) is logged, and accepting pauses a moment, so that the
/// loop does not spin while nothing can be accepted.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "Accepting a connection failed; pausing accepts for 1 s.");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// One connection, until it closes, is closed by a limit, or shutdown closes it.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |request: hyper::Request<Incoming>| {
            let mut app = app.clone();
            let busy = activity.busy();
            let timeout = limits.http_request_timeout;
            async move {
                let answered = tokio::time::timeout(timeout, app.call(request.map(Body::new)));
                let response = match answered.await {
                    Ok(Ok(response)) => response,
                    Err(_) => ApiError::RequestTimeout(timeout).into_response(),
                    Ok(Err(never)) => match never {},
                };
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let mut served = pin!(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.http_header_timeout)
            .serve_connection(io, service)
    );
    let mut idle = pin!(activity.idle_for(limits.http_idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            outcome = served.as_mut() => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "HTTP connection ended with an error.");
                }
                return;
            }
            () = &mut idle => {
                tracing::debug!("Closing an idle HTTP connection.");
                return;
            }
            changed = stopping.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When a connection last read or wrote a byte, and how many of its requests are being handled.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Completes once the connection has been quiet, with no request being handled, for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let quiet = if self.busy.load(Ordering::Acquire) > 0 {
                Duration::ZERO
            } else {
                let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
                self.start.elapsed().saturating_sub(last)
            };
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// A request being handled; its end counts as activity.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that notes every byte read or written in its connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! The client listener: HTTP/1.1 connections served by hyper within the
//! [`ListenerLimits`], so that slow, idle or greedy clients cannot hold the
//! server (slowloris):
//!
//! - a request head must be complete within `header_read_timeout` of its
//!   first byte;
//! - a kept-alive connection with no request in flight is closed after
//!   `idle_timeout`;
//! - at most `max_connections` connections are served at once. At the cap,
//!   idle kept-alive connections are closed to make room (as nginx reuses
//!   them); a new connection that still finds no room within [`ROOM_WAIT`] is
//!   closed as soon as it is accepted;
//! - a request head over `max_header_bytes` is answered `431` by hyper.
//!
//! The clock of both timeouts is per connection: [`Activity`] notes when
//! bytes arrive and when requests start and finish, and a watchdog in the
//! connection's task closes it when a deadline passes. While a request is in
//! flight (the upstream may be slow; an upload may be long) neither applies.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::upstream::Peer;

/// A service that answers every request of a connection (what the listener
/// serves, and what the router's fallback is made of): never fails, ready
/// at once, its futures sent between worker threads.
pub(crate) trait AppService:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> AppService for T where
    T: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}
use crate::config::ListenerLimits;
use crate::tls::ListenerTls;
use crate::web::metrics::Metrics;

/// "No request head has started."
const NONE: u64 = u64::MAX;

/// How long a new connection at the cap waits for idle ones to make room.
pub(crate) const ROOM_WAIT: Duration = Duration::from_millis(250);

/// What a connection's watchdog needs to know, in milliseconds since the
/// connection was accepted.
struct Activity {
    epoch: Instant,
    /// The last time bytes were read or a response finished.
    last: AtomicU64,
    /// When the first byte of a request head arrived with no request in
    /// flight, or [`NONE`].
    head_started: AtomicU64,
    /// Requests whose response has not been fully sent.
    in_flight: AtomicUsize,
    /// Set while the connection should close as soon as it is idle (the
    /// listener needs room): then a finishing request wakes the watchdog.
    make_room: AtomicBool,
    /// Wakes the watchdog when a request finishes while `make_room` is set.
    /// Nothing else wakes it per request: on the hot path the watchdog costs
    /// no more than a few atomic stores.
    finished: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            in_flight: AtomicUsize::new(0),
            make_room: AtomicBool::new(false),
            finished: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn bytes_read(&self) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
    }

    fn request_finished(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.make_room.load(Ordering::Acquire) {
            self.finished.notify_one();
        }
    }

    /// Between requests, with nothing of the next one read.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == NONE
    }

    /// When the watchdog should look again, or `None` when the connection
    /// must be closed now. An idle connection is looked at at least every
    /// `header_read_timeout`, so that a head that starts meanwhile is seen in
    /// time to be cut at its own deadline (no wake-up per request needed).
    fn next_deadline(&self, limits: &ListenerLimits) -> Option<Instant> {
        let now = self.now();
        let at = |ms: u64| self.epoch + Duration::from_millis(ms);
        let header = millis(limits.header_read_timeout);
        let idle = millis(limits.idle_timeout);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(at(now + header.min(idle)));
        }
        match self.head_started.load(Ordering::Acquire) {
            NONE => {
                let deadline = self.last.load(Ordering::Relaxed).saturating_add(idle);
                (now < deadline).then(|| at(deadline.min(now + header)))
            }
            started => {
                let deadline = started.saturating_add(header);
                (now < deadline).then(|| at(deadline))
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 2)
}

pin_project! {
    /// A client connection that tells its [`Activity`] when bytes arrive.
    struct Watched {
        #[pin]
        stream: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.stream.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Marks a request finished when dropped: when its response body has been
/// sent, or the connection went away.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

pin_project! {
    /// A response body that holds its request's [`InFlight`].
    struct Tracked {
        #[pin]
        body: Body,
        _in_flight: InFlight,
    }
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `service` on `listener` within `limits` until `stop` changes, then
/// lets every connection finish its request in flight and returns.
pub(super) async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    tls: Option<ListenerTls>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AppService,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Bumped when the cap is reached: idle connections then close.
    let (shed, _) = watch::channel(0u64);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: the listener itself is fine.
                tracing::warn!(%error, "accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                shed.send_modify(|generation| *generation += 1);
                match tokio::time::timeout(ROOM_WAIT, permits.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        metrics.connections_refused.inc();
                        tracing::debug!(peer = %addr, "connection limit reached; closed a new connection");
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let stop = stop.clone();
        let shed = shed.subscribe();
        // Each connection keeps the certificate it was accepted with.
        let acceptor = tls.as_ref().map(ListenerTls::acceptor);
        connections.spawn(async move {
            let connection = Connection {
                peer: Peer::from(addr),
                service,
                limits,
                stop,
                shed,
            };
            serve_connection(stream, acceptor, connection).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// What one connection is served with.
struct Connection<S> {
    peer: Peer,
    service: S,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
    shed: watch::Receiver<u64>,
}

/// Serves one client connection: over TLS when `tls` is given (the
/// handshake must finish within `header_read_timeout`, as a request head
/// must), else as it is.
async fn serve_connection<S>(
    stream: TcpStream,
    tls: Option<Arc<tokio_rustls::TlsAcceptor>>,
    connection: Connection<S>,
) where
    S: AppService,
{
    let limits = connection.limits;
    let activity = Arc::new(Activity::new());
    let watched = Watched {
        stream,
        activity: activity.clone(),
    };
    match tls {
        None => serve_http(TokioIo::new(watched), false, activity, connection).await,
        Some(acceptor) => {
            let handshake = acceptor.accept(watched);
            match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                Ok(Ok(tls)) => {
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve_http(TokioIo::new(tls), h2, activity, connection).await
                }
                Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// Serves HTTP/1.1 (or, when ALPN chose it, HTTP/2) on one connection's
/// `io` within `limits`.
async fn serve_http<I, S>(
    io: TokioIo<I>,
    h2: bool,
    activity: Arc<Activity>,
    connection: Connection<S>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AppService,
{
    let Connection {
        peer,
        service,
        limits,
        stop,
        shed,
    } = connection;
    let per_request = activity.clone();
    let handler = hyper::service::service_fn(move |request: Request<Incoming>| {
        per_request.request_started();
        let in_flight = InFlight(per_request.clone());
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        // HTTP/2 names the host in `:authority`; everything after the
        // listener reads `Host`, as in HTTP/1.1.
        if request.version() == axum::http::Version::HTTP_2
            && !request.headers().contains_key(axum::http::header::HOST)
            && let Some(host) = request
                .uri()
                .authority()
                .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(axum::http::header::HOST, host);
        }
        // The router is always ready (axum's `Router::poll_ready` is), so it
        // is called without the `poll_ready` round of `oneshot`.
        let called = service.clone().call(request);
        async move {
            let response = called.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        }
    });
    if h2 {
        let mut builder =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let connection = builder.serve_connection(io, handler);
        drive(connection, activity, limits, stop, shed).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        let connection = builder.serve_connection(io, handler).with_upgrades();
        drive(connection, activity, limits, stop, shed).await;
    }
}

/// A connection that can be asked to finish its requests and close.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives `connection` to its end, closing it when its watchdog says so.
async fn drive(
    connection: impl Graceful,
    activity: Arc<Activity>,
    limits: ListenerLimits,
    stop: watch::Receiver<bool>,
    shed: watch::Receiver<u64>,
) {
    let mut connection = std::pin::pin!(connection);
    // The watchdog runs in a task of its own, so that the connection's task
    // polls nothing else per request: it tells this task what to do.
    let orders = Arc::new(Orders::default());
    let watchdog = tokio::spawn(watch_connection(
        activity,
        limits,
        stop,
        shed,
        orders.clone(),
    ));
    loop {
        tokio::select! {
            biased;
            done = connection.as_mut() => {
                if let Err(error) = done {
                    tracing::debug!(%error, "client connection ended with an error");
                }
                break;
            }
            _ = orders.given.notified() => match orders.order.load(Ordering::Acquire) {
                CLOSE => break,
                _ => connection.as_mut().shut_down(),
            },
        }
    }
    watchdog.abort();
}

/// What the watchdog tells a connection's task.
#[derive(Default)]
struct Orders {
    order: AtomicU8,
    given: Notify,
}

/// Finish the request in flight, then close (shutdown).
const GRACEFUL: u8 = 1;
/// Close now (a deadline passed, or room is needed).
const CLOSE: u8 = 2;

impl Orders {
    fn give(&self, order: u8) {
        self.order.store(order, Ordering::Release);
        self.given.notify_one();
    }
}

/// Watches one connection's [`Activity`] against its deadlines, the
/// listener's stop and its calls for room; wakes only on those, never per
/// request.
async fn watch_connection(
    activity: Arc<Activity>,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
    mut shed: watch::Receiver<u64>,
    orders: Arc<Orders>,
) {
    let mut stopping = false;
    // Until when this connection closes as soon as it is idle, to make room.
    let mut make_room_until: Option<Instant> = None;
    loop {
        if let Some(until) = make_room_until {
            if Instant::now() >= until {
                make_room_until = None;
                activity.make_room.store(false, Ordering::Release);
            } else if activity.idle() {
                tracing::debug!("closed an idle connection to make room for a new one");
                return orders.give(CLOSE);
            }
        }
        let Some(deadline) = activity.next_deadline(&limits) else {
            tracing::debug!("closed a slow or idle client connection");
            return orders.give(CLOSE);
        };
        let deadline = make_room_until.map_or(deadline, |until| deadline.min(until));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = activity.finished.notified() => {}
            changed = shed.changed() => {
                if changed.is_ok() {
                    make_room_until = Some(Instant::now() + ROOM_WAIT);
                    activity.make_room.store(true, Ordering::Release);
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                orders.give(GRACEFUL);
            }
        }
    }
}

/// A running listener's task, with how to stop it.
pub(super) struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Running {
    /// Serves `service` on `listener` in a task of its own.
    pub(super) fn spawn<S>(
        listener: TcpListener,
        service: S,
        limits: ListenerLimits,
        metrics: Arc<Metrics>,
        tls: Option<ListenerTls>,
    ) -> Self
    where
        S: AppService,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, service, limits, metrics, tls, stopped));
        Self { stop, task }
    }

    /// Stops accepting, lets in-flight requests finish, then returns.
    pub(super) fn shutdown(self) -> impl Future<Output = ()> {
        let _ = self.stop.send(true);
        async move {
            let _ = self.task.await;
        }
    }
}

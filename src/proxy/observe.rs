//! The layer around the router: admits each request at the edge (canonical
//! path, bounded cookies; see [`super::edge`]), counts each request by route
//! and status, and writes one log line per request.
//!
//! It is a plain tower layer rather than an `axum::middleware::from_fn`, so
//! that it adds no allocation to a request: it sits on the hot path of every
//! proxied request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::edge::Edge;
use crate::web::metrics::Metrics;
use crate::web::{REQUEST_LOG, SignedInUser, request_log_enabled};

/// Wraps the router in [`Observe`].
#[derive(Clone)]
pub(super) struct ObserveLayer {
    metrics: Arc<Metrics>,
    edge: Edge,
}

impl ObserveLayer {
    /// Admits requests through `edge` and counts them in `metrics`.
    pub(crate) fn new(metrics: Arc<Metrics>, edge: Edge) -> Self {
        Self { metrics, edge }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            edge: self.edge.clone(),
        }
    }
}

/// The router, observed.
#[derive(Clone)]
pub(super) struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
    edge: Edge,
}

/// What the log line needs from the request.
struct RequestLog {
    started: Instant,
    method: Method,
    path: String,
}

impl<S, E> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let admitted = self.edge.admit(&mut request);
        let route = route_label(request.uri().path());
        let log = request_log_enabled().then(|| RequestLog {
            started,
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        });
        let outcome = match admitted {
            None => Outcome::Routed {
                future: self.inner.call(request),
            },
            Some(response) => Outcome::Refused {
                response: Some(response),
            },
        };
        ObserveFuture {
            outcome,
            route,
            log,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    #[project = OutcomeProjection]
    enum Outcome<F> {
        Routed { #[pin] future: F },
        Refused { response: Option<Response> },
    }
}

pin_project! {
    /// The response of an observed route, counted and logged when ready.
    pub(super) struct ObserveFuture<F> {
        #[pin]
        outcome: Outcome<F>,
        route: &'static str,
        log: Option<RequestLog>,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.outcome.project() {
            OutcomeProjection::Routed { future } => ready!(future.poll(cx))?,
            OutcomeProjection::Refused { response } => response
                .take()
                .expect("an observed request polled after completion"),
        };
        this.metrics.request(this.route, response.status().as_u16());
        if let Some(log) = this.log.take() {
            write_log(log, this.route, &response);
        }
        Poll::Ready(Ok(response))
    }
}

fn write_log(log: RequestLog, route: &str, response: &Response) {
    let user = response
        .extensions()
        .get::<SignedInUser>()
        .map(|u| u.0.as_str())
        .unwrap_or("-");
    tracing::info!(
        target: REQUEST_LOG,
        method = %log.method,
        path = %log.path,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = log.started.elapsed().as_secs_f64() * 1000.0,
        user,
        "request"
    );
}

/// The metrics label of a request: the latchkey route its path names, or
/// `upstream` for the app.
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 8] = [
        "/oauth2/start",
        "/oauth2/callback",
        "/oauth2/sign_out",
        "/oauth2/auth",
        "/oauth2/userinfo",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    ROUTES
        .iter()
        .find(|route| **route == path)
        .copied()
        .unwrap_or("upstream")
}

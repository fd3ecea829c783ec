//! The protected app: every request that is not latchkey's own. A
//! `skip_auth_routes` match is forwarded as it is; everything else goes
//! through the public [`RequireLoginLayer`](crate::web::RequireLoginLayer)
//! first. One concrete service, so the router boxes it once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::Service;

use crate::config::SkipRoute;

/// Skip routes to the open service, the rest to the guarded one.
#[derive(Clone)]
pub(crate) struct Protected<O, G> {
    skip: Arc<[SkipRoute]>,
    open: O,
    guarded: G,
}

impl<O, G> Protected<O, G> {
    pub(crate) fn new(skip: &[SkipRoute], open: O, guarded: G) -> Self {
        Self {
            skip: skip.into(),
            open,
            guarded,
        }
    }
}

impl<O, G> Service<Request> for Protected<O, G>
where
    O: Service<Request, Response = Response, Error = Infallible> + Clone,
    G: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<O::Future, G::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both inner services are always ready (handlers are); each call
        // below uses its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let skip = self
            .skip
            .iter()
            .any(|r| r.matches(request.method().as_str(), request.uri().path()));
        if skip {
            Either::Open {
                future: self.open.clone().call(request),
            }
        } else {
            Either::Guarded {
                future: self.guarded.clone().call(request),
            }
        }
    }
}

pin_project! {
    /// The future of whichever service took the request.
    #[project = EitherProjection]
    pub(crate) enum Either<O, G> {
        Open { #[pin] future: O },
        Guarded { #[pin] future: G },
    }
}

impl<O, G> Future for Either<O, G>
where
    O: Future<Output = Result<Response, Infallible>>,
    G: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProjection::Open { future } => future.poll(cx),
            EitherProjection::Guarded { future } => future.poll(cx),
        }
    }
}

//! [`RequireLoginLayer`]: the tower middleware in front of protected routes,
//! in tower's usual shape (layer, service, response future; the service's
//! error is the inner service's, since every refusal is a response).
//!
//! It authenticates the request (loading the session, refreshing its tokens
//! single-flight when due), applies the policy, and hands the handler a
//! [`SignedIn`] in the request's extensions, as tower-http's
//! `AsyncRequireAuthorization` does with its authorized identity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::caller::{self, Authentication};
use super::observe_user;
use super::{AccessPolicy, Latchkey, Rejection};

/// Admits signed-in callers that pass a policy; see
/// [`Latchkey::require_login`], [`Latchkey::require`] and
/// [`Latchkey::optional_login`].
#[derive(Clone, Debug)]
pub struct RequireLoginLayer {
    /// Shared by every service the layer makes (cloned per request).
    config: Arc<LayerConfig>,
}

#[derive(Clone, Debug)]
struct LayerConfig {
    latchkey: Latchkey,
    /// `None`: the Latchkey's own policy.
    policy: Option<AccessPolicy>,
    /// Let anonymous callers through too (no [`SignedIn`] for them).
    optional: bool,
    /// Keep the request's cookies without latchkey's in the [`SignedIn`]
    /// (for a proxy, which must not pass latchkey's on).
    upstream_cookies: bool,
}

impl RequireLoginLayer {
    /// Requires sign-in under `latchkey`'s policy.
    pub fn new(latchkey: Latchkey) -> Self {
        Self {
            config: Arc::new(LayerConfig {
                latchkey,
                policy: None,
                optional: false,
                upstream_cookies: false,
            }),
        }
    }

    fn changed(self, change: impl FnOnce(&mut LayerConfig)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }

    /// Applies `policy` instead of the Latchkey's own.
    pub fn with_policy(self, policy: AccessPolicy) -> Self {
        self.changed(|c| c.policy = Some(policy))
    }

    /// Lets every caller through, with a [`SignedIn`] for those who are
    /// (and pass the policy).
    pub fn optional(self) -> Self {
        self.changed(|c| c.optional = true)
    }

    /// Also hands the inner service the request's `Cookie` header without
    /// latchkey's own cookies, in the [`SignedIn`]
    /// ([`SignedIn::take_upstream_cookies`]; read in the same pass as the
    /// session cookie): what a proxy forwards.
    pub fn with_upstream_cookies(self) -> Self {
        self.changed(|c| c.upstream_cookies = true)
    }
}

impl<S> Layer<S> for RequireLoginLayer {
    type Service = RequireLogin<S>;

    fn layer(&self, inner: S) -> RequireLogin<S> {
        RequireLogin {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireLoginLayer`] makes.
#[derive(Clone, Debug)]
pub struct RequireLogin<S> {
    inner: S,
    layer: RequireLoginLayer,
}

/// The response future of [`RequireLogin`].
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>,
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<E> std::fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for RequireLogin<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone takes the place of the service made ready above.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let layer = &layer.config;
                let latchkey = &layer.latchkey;
                let sent = latchkey.inner.cookies.sent(request.headers());
                let found = caller::authenticate_with(latchkey, request.headers(), &sent).await;
                let upstream_cookies = layer.upstream_cookies.then(|| sent.into_upstream());
                let found = match found {
                    Ok(found) => found,
                    Err(rejection) => return Ok(latchkey.restyle(rejection.into_response())),
                };
                let Authentication {
                    signed_in,
                    set_cookies,
                } = found;
                let signed_in = match signed_in {
                    Some(signed_in) => {
                        let policy = layer.policy.as_ref();
                        if let Err(rejection) =
                            latchkey.authorize(request.headers(), &signed_in, policy)
                        {
                            return Ok(latchkey.restyle(rejection.into_response()));
                        }
                        Some(signed_in)
                    }
                    None if layer.optional => None,
                    None => {
                        let rd = request
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_owned();
                        let rejection = Rejection::not_signed_in(request.headers(), &rd)
                            .with_cookies(set_cookies)
                            .with_error_page(latchkey.inner.error_page.clone());
                        return Ok(latchkey.restyle(rejection.into_response()));
                    }
                };
                // Named on the response for the request log, when it is on.
                let user = signed_in
                    .as_ref()
                    .filter(|_| super::request_log_enabled())
                    .map(|s| s.identity().subject.clone());
                if let Some(signed_in) = signed_in {
                    // One extension: the caller, and the cookies if asked for.
                    request
                        .extensions_mut()
                        .insert(signed_in.with_upstream_cookies(upstream_cookies));
                }
                if layer.optional {
                    // For an extractor that finds no one signed in here: the
                    // app's error page.
                    request.extensions_mut().insert(latchkey.clone());
                }
                let mut response = inner.call(request).await?.into_response();
                for cookie in set_cookies {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
                if let Some(user) = user {
                    observe_user(&mut response, user);
                }
                Ok(response)
            }),
        }
    }
}

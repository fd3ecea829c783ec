//! The HTTP client for calls to the identity provider.
//!
//! One pooled `reqwest` client with a connect timeout and a total timeout on
//! every call, redirects off (following them would open the client to SSRF), and
//! one rule that the protocol crate cannot know: a 5xx answer is a *transient*
//! failure, never a verdict on the grant. Error messages name what failed and
//! never carry a request body (where codes and tokens travel).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{HttpRequest, HttpResponse};

/// Why an HTTP call to the identity provider produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    /// Connect, TLS, timeout or I/O failure.
    #[error("{0}")]
    Transport(String),
    /// The provider answered with a server error.
    #[error("HTTP {0}")]
    ServerError(u16),
}

/// The provider's HTTP client; cheap to clone.
#[derive(Debug, Clone)]
pub struct IdpHttp {
    client: reqwest::Client,
    /// Bounds each call made with a client the caller built.
    request_timeout: Option<Duration>,
}

impl IdpHttp {
    /// A client whose calls give up after `connect_timeout` to connect and
    /// `request_timeout` in all.
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        Self::trusting(connect_timeout, request_timeout, &[])
            .expect("the HTTP client configuration is static and valid")
    }

    /// [`new`](Self::new), trusting the CA certificates `extra_roots` (DER)
    /// besides the system trust store and the bundled web roots; `Err`
    /// names a certificate that cannot be used.
    pub fn trusting(
        connect_timeout: Duration,
        request_timeout: Duration,
        extra_roots: &[Vec<u8>],
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")));
        for (i, der) in extra_roots.iter().enumerate() {
            let certificate = reqwest::Certificate::from_der(der)
                .map_err(|e| format!("CA certificate {} cannot be used: {e}", i + 1))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder
            .build()
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        Ok(Self {
            client,
            request_timeout: None,
        })
    }

    /// `client` as given (its CA roots, proxy and redirect policy), each call
    /// still bounded by `request_timeout`.
    pub fn with_client(client: reqwest::Client, request_timeout: Duration) -> Self {
        Self {
            client,
            request_timeout: Some(request_timeout),
        }
    }

    /// Whether a GET of `url` answers 2xx within `timeout`.
    pub async fn probe(&self, url: &str, timeout: Duration) -> Result<(), HttpFailure> {
        let response = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| HttpFailure::Transport(describe(&e)))?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(HttpFailure::ServerError(status.as_u16())),
        }
    }

    /// Sends one request.
    pub async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, HttpFailure> {
        let mut request = reqwest::Request::try_from(request)
            .map_err(|e| HttpFailure::Transport(e.without_url().to_string()))?;
        if let Some(timeout) = self.request_timeout {
            *request.timeout_mut() = Some(timeout);
        }
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpFailure::Transport(describe(&e)))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(HttpFailure::ServerError(status.as_u16()));
        }
        let mut builder = openidconnect::http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpFailure::Transport(describe(&e)))?;
        builder
            .body(body.to_vec())
            .map_err(|e| HttpFailure::Transport(e.to_string()))
    }

    /// This client in the shape the `openidconnect` crate calls.
    pub fn for_openidconnect(
        &self,
    ) -> impl Fn(
        HttpRequest,
    ) -> Pin<Box<dyn Future<Output = Result<HttpResponse, HttpFailure>> + Send>>
    + Send
    + Sync
    + use<> {
        let http = self.clone();
        move |request| {
            let http = http.clone();
            Box::pin(async move { http.execute(request).await })
        }
    }
}

/// A transport error without its URL (which may carry a query string).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    // A certificate from a CA latchkey does not trust: say what to do.
    let hint = if detail.contains("UnknownIssuer") || detail.contains("certificate") {
        " (if the provider's certificate is from a private CA, add that CA's PEM to provider_ca_files)"
    } else {
        ""
    };
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}{hint}")
    }
}

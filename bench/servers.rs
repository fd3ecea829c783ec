//! The two reference servers of the benchmark, each run as its own process so
//! that its memory can be measured: the fast upstream (a fixed small body) and
//! the bare proxy (a pass-through with the same pooled hyper client latchkey
//! uses, and no auth) — the physical limit of a Rust proxy on this machine.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

/// The body every upstream answer carries.
pub const BODY: &str = "hello from the upstream\n";

/// Serves the fixed body on `listen`, printing the bound address.
pub async fn upstream(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("bind upstream");
    println!("listening {}", listener.local_addr().unwrap());
    let app = Router::new().fallback(|| async { BODY });
    axum::serve(listener, app).await.unwrap();
}

#[derive(Clone)]
struct Bare {
    origin: String,
    client: Client<HttpConnector, Body>,
    /// Adds the six headers latchkey sends upstream (fixed values), to show
    /// what carrying them costs a proxy and the app, apart from auth.
    forwarding_headers: bool,
}

/// The forwarding and identity headers latchkey adds (besides X-Forwarded-Host).
const FORWARDING_HEADERS: [(&str, &str); 5] = [
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-user", "alice"),
    ("x-forwarded-email", "alice@example.com"),
    ("x-forwarded-groups", "admins,staff"),
];

async fn pass(State(bare): State<Bare>, mut request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    *request.uri_mut() = format!("{}{path}", bare.origin).parse::<Uri>().unwrap();
    if bare.forwarding_headers {
        let headers = request.headers_mut();
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert("x-forwarded-host", host);
        }
        for (name, value) in FORWARDING_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    match bare.client.request(request).await {
        Ok(response) => response.map(Body::new).into_response(),
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Proxies everything on `listen` to `upstream`, printing the bound address;
/// with `forwarding_headers`, adds the headers latchkey adds.
pub async fn bare_proxy(listen: SocketAddr, upstream: SocketAddr, forwarding_headers: bool) {
    let listener = TcpListener::bind(listen).await.expect("bind bare proxy");
    println!("listening {}", listener.local_addr().unwrap());
    let bare = Bare {
        origin: format!("http://{upstream}"),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        forwarding_headers,
    };
    let app = Router::new().fallback(pass).with_state(bare);
    axum::serve(listener, app).await.unwrap();
}

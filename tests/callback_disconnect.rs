//! A browser that gives up on a slow callback (a reload, a double click on
//! the IdP's button, a tab closed and reopened) must not cost the person
//! their sign-in. The first callback's connection closes while its code
//! exchange is at the IdP; hyper then drops that request's handler. The
//! exchange must still finish, and the browser's next callback of the same
//! login must land signed in, with one exchange (I1) and the same session
//! (I2), on every store.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::routing::get;
use base64::Engine;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig};
use latchkey::web::{AccessPolicy, Latchkey, SignedIn};
use reqwest::cookie::CookieStore;
use reqwest::header::LOCATION;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use url::Url;

use common::backends::TestBackend;
use common::browser::sign_in_at_idp;
use common::within;

const SECRET: &str = "callback-disconnect-secret";

/// Tells the test when a callback request's handler is gone, finished or
/// dropped mid-way.
struct Gone(mpsc::UnboundedSender<()>);

impl Drop for Gone {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

async fn a_callback_whose_browser_gave_up_still_signs_in(backend: TestBackend) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let callback = format!("http://{addr}/oauth2/callback");
    let idp = DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![DevClient {
            client_id: "app".into(),
            client_secret: SECRET.into(),
            redirect_uris: vec![callback.clone()],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        }],
        test_knobs: true,
        ..DevIdpConfig::default()
    })
    .await
    .unwrap();
    let latchkey = Latchkey::builder(idp.issuer(), "app", &callback)
        .client_secret(SECRET)
        .cookie_secret(base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
        .policy(AccessPolicy::email_domains(["example.com"]))
        .store(backend.store.clone())
        .build()
        .await
        .unwrap();
    let (gone_tx, mut gone) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/me",
            get(|user: SignedIn| async move { user.identity().subject.clone() }),
        )
        .route_layer(latchkey.require_login())
        .merge(latchkey.login_routes())
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let guard =
                    (request.uri().path() == "/oauth2/callback").then(|| Gone(gone_tx.clone()));
                async move {
                    let _guard = guard;
                    next.run(request).await
                }
            },
        ));
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });

    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let start = browser
        .get(format!("http://{addr}/oauth2/start?rd=/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302, "{}", backend.name);
    let authorize = Url::parse(start.headers()[LOCATION].to_str().unwrap()).unwrap();
    let to_callback = sign_in_at_idp(&browser, &authorize, "alice").await;

    // The first callback reaches the IdP's token endpoint, which holds it;
    // then its browser closes the connection.
    idp.knobs().hold_token_calls(true);
    let cookies = jar.cookies(&to_callback).expect("the login cookie");
    let mut first = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {}?{} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nCookie: {}\r\n\r\n",
        to_callback.path(),
        to_callback.query().unwrap(),
        cookies.to_str().unwrap()
    );
    first.write_all(request.as_bytes()).await.unwrap();
    within(
        "the first exchange at the IdP",
        idp.knobs().wait_token_calls(1),
    )
    .await;
    drop(first);
    // hyper has noticed and dropped the first callback's handler.
    within("the first handler dropped", gone.recv())
        .await
        .unwrap();

    // The browser's second try of the same callback, then the IdP answers.
    let second = tokio::spawn({
        let browser = browser.clone();
        async move { browser.get(to_callback).send().await.unwrap() }
    });
    idp.knobs().hold_token_calls(false);
    let second = within("the second callback", second).await.unwrap();
    assert_eq!(
        second.status(),
        302,
        "{}: the second callback after the first was given up lands signed in, not on {}",
        backend.name,
        second.status()
    );
    assert_eq!(second.headers()[LOCATION], "/me", "{}", backend.name);
    assert_eq!(
        idp.knobs().code_grants(),
        1,
        "{}: one exchange (I1)",
        backend.name
    );
    let me = browser
        .get(format!("http://{addr}/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "{}", backend.name);
    assert_eq!(me.text().await.unwrap(), "alice");
    idp.stop().await;
}

backend_tests!(a_callback_whose_browser_gave_up_still_signs_in);

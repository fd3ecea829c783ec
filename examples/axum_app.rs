//! A small axum app signed in through latchkey's library surface:
//!
//! - `/`: a public page that greets whoever is signed in (`Option<SignedIn>`);
//! - `/me`: any signed-in user;
//! - `/admin`: members of the `admins` group only;
//! - `/api/profile`: JSON for API callers, made by calling an upstream API
//!   (the provider's userinfo endpoint) with the user's access token, which
//!   is always fresh: refreshed once, for all requests at once, when due.
//!
//! `cargo run --example axum_app` starts the development IdP next to it and
//! prints what to open (users alice/alice, in `admins`, and bob/bob).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use latchkey::web::pages::escape_html;
use latchkey::web::{AccessPolicy, FreshAccessToken, Latchkey, SignedIn};

/// The upstream API the app calls on the user's behalf.
#[derive(Clone)]
pub struct Api {
    /// Where it is (here: the provider's userinfo endpoint).
    pub url: String,
    /// The client that calls it.
    pub client: reqwest::Client,
}

/// The app: its pages, protected by `auth`, and the sign-in routes.
pub fn app(auth: &Latchkey, api: Api) -> Router {
    let public = Router::new()
        .route("/", get(home))
        .route_layer(auth.optional_login());
    let members = Router::new()
        .route("/me", get(me))
        .route("/api/profile", get(profile))
        .route_layer(auth.require_login());
    let admins = Router::new()
        .route("/admin", get(admin))
        .route_layer(auth.require(AccessPolicy::everyone().and_groups(["admins"])));
    public
        .merge(members)
        .merge(admins)
        .with_state(api)
        .merge(auth.login_routes())
}

async fn home(who: Option<SignedIn>) -> Html<String> {
    Html(match who {
        Some(who) => format!(
            "<p>Hello, {}. <a href=\"/me\">Me</a> · <a href=\"/admin\">Admin</a> · \
             <a href=\"/oauth2/sign_out\">Sign out</a></p>",
            escape_html(&who.identity().subject)
        ),
        None => "<p>Public page. <a href=\"/me\">Sign in</a></p>".into(),
    })
}

async fn me(who: SignedIn) -> Json<serde_json::Value> {
    let identity = who.identity();
    Json(serde_json::json!({
        "user": identity.subject,
        "email": identity.email,
        "groups": identity.groups,
    }))
}

async fn admin(who: SignedIn) -> String {
    format!("admin area, {}\n", who.identity().subject)
}

async fn profile(State(api): State<Api>, FreshAccessToken(token): FreshAccessToken) -> Response {
    let answer = api
        .client
        .get(&api.url)
        .bearer_auth(token.secret())
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => {
            match response.json::<serde_json::Value>().await {
                Ok(body) => Json(serde_json::json!({ "upstream": body })).into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        // The upstream API refused or failed: its fault, not the caller's.
        Ok(_) | Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    // The app's address first: the provider must know its callback URL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let addr = listener.local_addr()?;
    let callback = format!("http://{addr}/oauth2/callback");
    let secret = latchkey::secret::random_token();
    let idp = latchkey::dev_idp::DevIdp::start(latchkey::dev_idp::DevIdpConfig {
        listen: "127.0.0.1:0".parse()?,
        clients: vec![latchkey::dev_idp::DevClient {
            client_id: "axum-app".into(),
            client_secret: secret.clone(),
            redirect_uris: vec![callback.clone()],
            post_logout_redirect_uris: vec![format!("http://{addr}/")],
            backchannel_logout_uri: Some(format!("http://{addr}/oauth2/backchannel_logout")),
        }],
        ..latchkey::dev_idp::DevIdpConfig::default()
    })
    .await?;
    let auth = Latchkey::builder(idp.issuer(), "axum-app", &callback)
        .client_secret(secret)
        .cookie_secret(latchkey::secret::random_token())
        .policy(AccessPolicy::email_domains(["example.com"]))
        .settings(|s| s.post_logout_redirect_url = Some(format!("http://{addr}/")))
        .build()
        .await?;
    let api = Api {
        url: format!("{}/userinfo", idp.issuer()),
        client: reqwest::Client::new(),
    };
    println!("open http://{addr}/ (users: alice/alice in admins, bob/bob)");
    let service = app(&auth, api).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).await?;
    Ok(())
}

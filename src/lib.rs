#![warn(missing_docs, unreachable_pub)]
//! Latchkey: OpenID Connect sign-in whose logins and token refreshes are
//! race-free by construction, as an axum/tower layer for your own app or as
//! an authentication proxy (`latchkey serve`) in front of any app.
//!
//! Protecting an axum app takes a [`web::Latchkey`], its login routes and
//! its layer:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use latchkey::web::{AccessPolicy, FreshAccessToken, Latchkey, SignedIn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Latchkey::builder("https://login.example.com", "my-app", "https://app.example.com/oauth2/callback")
//!     .client_secret(std::env::var("CLIENT_SECRET")?)
//!     .cookie_secret(std::fs::read("/run/secrets/cookie")?)
//!     .policy(AccessPolicy::email_domains(["example.com"]))
//!     .build()
//!     .await?;
//! let app = Router::new()
//!     .route("/me", get(|who: SignedIn| async move { who.identity().subject.clone() }))
//!     .route("/token", get(|FreshAccessToken(t): FreshAccessToken| async move { t.secret().len().to_string() }))
//!     .route_layer(auth.require_login())
//!     .merge(auth.login_routes());
//! axum::serve(tokio::net::TcpListener::bind("0.0.0.0:3000").await?, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! However many callbacks of one login arrive at once, on however many
//! replicas sharing a store, one exchanges the code and all get the same
//! session; however many requests of a session find its access token due,
//! one refreshes it. The design rule: the state transition that must be
//! atomic is made atomic **in the store**, scoped to one login or one
//! session key; slow network work (code exchange, refresh) runs outside every
//! lock and every store transaction, under a lease recorded in the store.
//!
//! The crate is organised in rooms, each importing only the ones above it:
//!
//! - the engine, which imports no HTTP crate: [`store`] (the contract,
//!   [`store::Store`], and its backends), [`idp`] (what the state machines
//!   need from a provider), [`login`] (the login state machine), [`session`]
//!   (session records and single-flight refresh), [`seal`] (records sealed
//!   for the store), [`clock`] and [`secret`] (time, randomness and the
//!   secret types);
//! - the protocol: [`oidc`], the OpenID Connect relying party;
//! - the embeddable web surface: [`web`] (the layer, extractors, login
//!   routes, policy, cookies and pages);
//! - the product: [`proxy`] (`latchkey serve`) and [`config`] (its settings);
//! - development tools (cargo feature `dev-tools`, on by default): the
//!   development IdP and the demo.

mod cache;
pub mod clock;
pub mod config;
#[cfg(feature = "dev-tools")]
pub mod demo;
#[cfg(feature = "dev-tools")]
pub mod dev_idp;
pub mod idp;
pub mod import;
pub mod keys;
pub mod login;
pub mod logout;
pub mod oidc;
pub mod proxy;
pub mod seal;
pub mod secret;
pub mod session;
pub mod store;
pub mod tls;
pub mod web;

//! Latchkey: an OpenID Connect relying party whose logins and token refreshes are
//! race-free by construction.
//!
//! The design rule (see `DESIGN.md` in the project's shared folder): the state
//! transition that must be atomic is made atomic **in the store**, scoped to one
//! login or one session key; slow network work (code exchange, refresh) runs
//! outside every lock and every store transaction, under a lease recorded in the
//! store.
//!
//! The crate is organised the way a request flows through it:
//!
//! - [`store`]: the store contract ([`store::Store`]) and its backends;
//! - [`idp`]: what the state machines need from an identity provider
//!   ([`idp::IdentityProvider`]);
//! - [`login`]: the login state machine (start, callback, replay);
//! - [`session`]: session records and single-flight refresh;
//! - [`seal`]: session records sealed for the store, session ids only the
//!   server can derive;
//! - [`clock`] and [`secret`]: time and randomness, injectable where tests need it.

mod cache;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dev_idp;
pub mod idp;
pub mod login;
pub mod oidc;
pub mod proxy;
pub mod seal;
pub mod secret;
pub mod session;
pub mod store;
pub mod web;

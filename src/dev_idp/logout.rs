//! The development IdP's side of Back-Channel Logout 1.0: logout tokens
//! signed with its current key, POSTed to every client that registered a
//! `backchannel_logout_uri`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use openidconnect::core::CoreIdTokenVerifier;
use openidconnect::{ClientId, IssuerUrl, Nonce};

use super::{Idp, SigningAlg};
use crate::oidc::id_token::LatchkeyIdToken;
use crate::oidc::logout_token::BACKCHANNEL_LOGOUT_EVENT;
use crate::secret::random_token;

/// One logout token's delivery to one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The client it was sent to.
    pub client_id: String,
    /// The client's HTTP status, or `None` when it could not be reached.
    pub status: Option<u16>,
}

/// The claims of a logout token for `client_id` naming `subject` and/or
/// `sid`, issued now with a fresh `jti`.
pub(super) fn logout_claims(
    idp: &Idp,
    client_id: &str,
    subject: Option<&str>,
    sid: Option<&str>,
) -> serde_json::Value {
    let now = idp.now() / 1000;
    let mut claims = serde_json::json!({
        "iss": idp.issuer,
        "aud": client_id,
        "iat": now,
        "exp": now + 120,
        "jti": random_token(),
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    });
    if let Some(subject) = subject {
        claims["sub"] = subject.into();
    }
    if let Some(sid) = sid {
        claims["sid"] = sid.into();
    }
    claims
}

/// The `sub` and `sid` of an ID token this IdP signed (an `id_token_hint`:
/// expired or not, for any of its clients); `None` for any other token.
pub(super) fn hinted_session(idp: &Idp, hint: &str) -> Option<(String, Option<String>)> {
    let token: LatchkeyIdToken = hint.parse().ok()?;
    let issuer = IssuerUrl::new(idp.issuer.clone()).ok()?;
    let keys = idp.keys().jwks();
    let verifier =
        CoreIdTokenVerifier::new_public_client(ClientId::new(String::new()), issuer, keys)
            .require_audience_match(false)
            .set_allowed_algs([SigningAlg::Rs256.jws(), SigningAlg::EdDsa.jws()])
            // A hint may have expired: as of the epoch, nothing has.
            .set_time_fn(|| chrono::DateTime::UNIX_EPOCH);
    let claims = token.claims(&verifier, |_: Option<&Nonce>| Ok(())).ok()?;
    let sid = claims
        .additional_claims()
        .claims
        .get("sid")
        .and_then(|sid| sid.as_str())
        .map(str::to_owned);
    Some((claims.subject().to_string(), sid))
}

/// Signs `claims` with the IdP's current key, typed `typ`.
pub(super) fn sign(idp: &Idp, typ: &str, claims: &serde_json::Value) -> String {
    let key = idp.keys().current();
    key.sign_jwt(typ, claims)
        .expect("the IdP's own keys sign any JSON claims")
}

/// Sends a logout token naming `subject` and/or `sid` to every client with
/// a `backchannel_logout_uri`, one at a time, each within five seconds.
pub(super) async fn send(idp: &Idp, subject: Option<&str>, sid: Option<&str>) -> Vec<Delivery> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client builds");
    let mut deliveries = Vec::new();
    for client in &idp.config.clients {
        let Some(uri) = &client.backchannel_logout_uri else {
            continue;
        };
        let token = sign(
            idp,
            "logout+jwt",
            &logout_claims(idp, &client.client_id, subject, sid),
        );
        let status = http
            .post(uri)
            .form(&[("logout_token", token.as_str())])
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16());
        deliveries.push(Delivery {
            client_id: client.client_id.clone(),
            status,
        });
    }
    deliveries
}

#[derive(Debug, Deserialize)]
pub(super) struct LogoutParams {
    sub: Option<String>,
    sid: Option<String>,
}

/// `POST /_dev/backchannel-logout?sub=…&sid=…` (test knob): what an
/// administrator's "sign out everywhere" at a real provider does.
pub(super) async fn knob(
    State(idp): State<std::sync::Arc<Idp>>,
    Query(params): Query<LogoutParams>,
) -> Response {
    if params.sub.is_none() && params.sid.is_none() {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            "name a sub, a sid or both",
        )
            .into_response();
    }
    let deliveries = send(&idp, params.sub.as_deref(), params.sid.as_deref()).await;
    axum::Json(deliveries).into_response()
}

//! The development IdP's token endpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openidconnect::{
    AccessToken, Audience, EndUserEmail, EndUserUsername, IdTokenClaims, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, StandardClaims, SubjectIdentifier,
};
use serde::Deserialize;

use super::{AccessGrant, DevClient, Grants, Idp, RefreshGrant};
use crate::clock::duration_ms;
use crate::oidc::id_token::{ExtraClaims, LatchkeyIdToken};
use crate::secret::random_token;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct TokenForm {
    grant_type: String,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// `client_secret_basic` (RFC 6749 2.3.1: form-urlencoded, then base64) or
/// `client_secret_post`.
fn client_credentials(
    headers: &HeaderMap,
    client_id: Option<&String>,
    client_secret: Option<&String>,
) -> Option<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let unescape = |s: &str| {
            url::form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        return Some((unescape(id)?, unescape(secret)?));
    }
    Some((client_id?.clone(), client_secret?.clone()))
}

/// The authenticated client of a request, if its credentials are right.
fn authenticated_client(
    idp: &Idp,
    headers: &HeaderMap,
    client_id: Option<&String>,
    client_secret: Option<&String>,
) -> Option<DevClient> {
    client_credentials(headers, client_id, client_secret).and_then(|(id, secret)| {
        idp.client(&id)
            .filter(|c| c.client_secret == secret)
            .cloned()
    })
}

/// An RFC 7009 revocation request.
#[derive(Debug, Deserialize)]
pub(super) struct RevokeForm {
    token: String,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 7009: revokes a refresh token (and with it its whole grant family);
/// `200` for any token, known or not, as the RFC asks.
pub(super) async fn revoke(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    let Some(client) = authenticated_client(
        &idp,
        &headers,
        form.client_id.as_ref(),
        form.client_secret.as_ref(),
    ) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    {
        let mut grants = idp.grants();
        let family = grants
            .refresh
            .get(&form.token)
            .filter(|g| g.client_id == client.client_id)
            .map(|g| g.family.clone());
        if let Some(family) = family {
            grants.revoked_families.insert(family);
            idp.knobs.revocations.send_modify(|n| *n += 1);
        }
    }
    StatusCode::OK.into_response()
}

pub(super) async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    let knobs = &idp.knobs;
    knobs.token_calls.fetch_add(1, Ordering::SeqCst);
    knobs.held.arrived.send_modify(|n| *n += 1);
    let mut holding = knobs.held.holding.subscribe();
    let _ = holding.wait_for(|hold| !*hold).await;
    let delay = knobs.token_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // The test knob: a slow provider.
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = knobs
        .failing_token_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "failing on purpose (test knob)",
        );
    }
    let client = authenticated_client(
        &idp,
        &headers,
        form.client_id.as_ref(),
        form.client_secret.as_ref(),
    );
    let Some(client) = client else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    };
    let answer = match form.grant_type.as_str() {
        "authorization_code" => {
            knobs.code_grants.fetch_add(1, Ordering::SeqCst);
            redeem_code(&idp, &client, &form)
        }
        "refresh_token" => {
            knobs.refresh_grants.fetch_add(1, Ordering::SeqCst);
            redeem_refresh_token(&idp, &client, &form)
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "use authorization_code or refresh_token",
        ),
    };
    let mut holding_answers = knobs.held.holding_answers.subscribe();
    let _ = holding_answers.wait_for(|hold| !*hold).await;
    answer
}

fn redeem_code(idp: &Idp, client: &DevClient, form: &TokenForm) -> Response {
    let mut grants = idp.grants();
    let Some(code) = form
        .code
        .as_deref()
        .and_then(|c| grants.codes.get(c))
        .cloned()
    else {
        return invalid_grant("unknown authorization code");
    };
    if let Some(family) = code.redeemed_family {
        // A replayed code: revoke what it produced (as certified providers do).
        grants.revoked_families.insert(family);
        idp.knobs.code_replays.fetch_add(1, Ordering::SeqCst);
        return invalid_grant("authorization code already used; its tokens are revoked");
    }
    if code.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if code.expires_at <= idp.now() {
        return invalid_grant("authorization code expired");
    }
    if form.redirect_uri.as_deref() != Some(code.redirect_uri.as_str()) {
        return invalid_grant("redirect_uri does not match the authorization request");
    }
    let pkce_ok = form.code_verifier.as_ref().is_some_and(|v| {
        // RFC 7636 4.1: 43 to 128 unreserved characters.
        let well_formed = (43..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        well_formed
            && PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(v.clone()))
                .as_str()
                == code.code_challenge
    });
    if !pkce_ok {
        return invalid_grant("PKCE verification failed");
    }
    let family = random_token();
    if let Some(c) = form.code.as_deref().and_then(|c| grants.codes.get_mut(c)) {
        c.redeemed_family = Some(family.clone());
    }
    issue(idp, &mut grants, &code.username, client, family, code.nonce)
}

fn redeem_refresh_token(idp: &Idp, client: &DevClient, form: &TokenForm) -> Response {
    let mut grants = idp.grants();
    let Some(token) = form.refresh_token.as_deref() else {
        return invalid_grant("refresh_token is required");
    };
    let Some(grant) = grants.refresh.get(token).cloned() else {
        return invalid_grant("unknown refresh token");
    };
    if grant.client_id != client.client_id {
        return invalid_grant("the refresh token was issued to another client");
    }
    if grants.revoked_families.contains(&grant.family) {
        return invalid_grant("the grant has been revoked");
    }
    if grant.used {
        // Reuse of a rotated token: someone has a copy. Revoke the family.
        grants.revoked_families.insert(grant.family);
        idp.knobs
            .refresh_token_reuses
            .fetch_add(1, Ordering::SeqCst);
        return invalid_grant("refresh token reused; the grant has been revoked");
    }
    if let Some(g) = grants.refresh.get_mut(token) {
        g.used = true;
    }
    issue(
        idp,
        &mut grants,
        &grant.username,
        client,
        grant.family,
        None,
    )
}

/// New access, refresh and ID tokens for `username` in grant `family`.
fn issue(
    idp: &Idp,
    grants: &mut Grants,
    username: &str,
    client: &DevClient,
    family: String,
    nonce: Option<String>,
) -> Response {
    let Some(user) = idp.user(username).cloned() else {
        return invalid_grant("the user no longer exists");
    };
    let now = idp.now();
    let access_token = random_token();
    let refresh_token = random_token();
    grants.access.insert(
        access_token.clone(),
        AccessGrant {
            username: user.username.clone(),
            family: family.clone(),
            expires_at: now + duration_ms(idp.config.access_ttl),
        },
    );
    let sid = super::sid_of(&family);
    grants.refresh.insert(
        refresh_token.clone(),
        RefreshGrant {
            username: user.username.clone(),
            client_id: client.client_id.clone(),
            family,
            used: false,
        },
    );
    let issued = chrono::Utc::now();
    let expires = issued
        + chrono::Duration::from_std(idp.config.access_ttl).unwrap_or(chrono::Duration::minutes(5));
    let mut extra = user.claims.clone();
    // One provider session per sign-in at the IdP: its grant family.
    extra.insert("sid".into(), serde_json::json!(sid));
    if idp.config.groups_in_id_token {
        extra.insert("groups".into(), serde_json::json!(user.groups));
    }
    let claims = IdTokenClaims::new(
        IssuerUrl::new(idp.issuer.clone()).expect("the issuer is a URL"),
        vec![Audience::new(client.client_id.clone())],
        expires,
        issued,
        StandardClaims::new(SubjectIdentifier::new(user.username.clone()))
            .set_email(Some(EndUserEmail::new(user.email.clone())))
            .set_email_verified(Some(user.email_verified))
            .set_preferred_username(Some(EndUserUsername::new(user.username.clone()))),
        ExtraClaims { claims: extra },
    )
    .set_nonce(nonce.map(Nonce::new));
    // Signed with no lock held: concurrent token calls sign in parallel.
    let key = idp.keys().current();
    let signed = LatchkeyIdToken::new(
        claims,
        key.as_ref(),
        key.alg().jws(),
        Some(&AccessToken::new(access_token.clone())),
        None,
    );
    let Ok(id_token) = signed else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "signing the ID token failed",
        );
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": idp.config.access_ttl.as_secs(),
            "refresh_token": refresh_token,
            "id_token": id_token.to_string(),
        })),
    )
        .into_response()
}

//! ID token validation: one crafted bad token per rule, each expecting its
//! typed rejection; key rotation; and the key cache's single-flight and rate
//! limit. Tokens are signed with a test key and served from a test JWKS
//! endpoint that counts its fetches.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use latchkey::oidc::http::IdpHttp;
use latchkey::oidc::id_token::{IdTokenError, IdTokenRules, IdTokenValidator};
use latchkey::oidc::jwks::JwksCache;
use openidconnect::core::{
    CoreHmacKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey,
};
use openidconnect::{JsonWebKeySet, JsonWebKeySetUrl, PrivateSigningKey};
use serde_json::{Value, json};

use common::jws::{b64, jws, rsa_key};

const ISSUER: &str = "https://idp.test";
const CLIENT: &str = "latchkey";
const SECRET: &str = "client-secret-known-to-the-client";
const NONCE: &str = "the-nonce";

/// A JWKS endpoint whose key set the test can change, counting fetches.
struct KeyServer {
    keys: Mutex<CoreJsonWebKeySet>,
    fetches: AtomicUsize,
}

async fn serve_keys(keys: CoreJsonWebKeySet) -> (Arc<KeyServer>, String) {
    let server = Arc::new(KeyServer {
        keys: Mutex::new(keys),
        fetches: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route(
            "/jwks",
            get(|State(s): State<Arc<KeyServer>>| async move {
                s.fetches.fetch_add(1, Ordering::SeqCst);
                let keys = s.keys.lock().unwrap().clone();
                axum::Json(keys)
            }),
        )
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, url)
}

struct Rig {
    key: CoreRsaPrivateSigningKey,
    server: Arc<KeyServer>,
    validator: IdTokenValidator,
}

async fn rig_with(trusted_audiences: &[&str]) -> Rig {
    let key = rsa_key("k1");
    let keys = JsonWebKeySet::new(vec![key.as_verification_key()]);
    let (server, url) = serve_keys(keys.clone()).await;
    let cache = JwksCache::new(
        JsonWebKeySetUrl::new(url).unwrap(),
        IdpHttp::new(Duration::from_secs(2), Duration::from_secs(5)),
        keys,
        Duration::from_secs(3600),
    );
    let validator = IdTokenValidator::new(
        IdTokenRules {
            client_id: CLIENT.into(),
            issuer: ISSUER.into(),
            allowed_algs: vec![
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            ],
            clock_skew: Duration::from_secs(60),
            groups_claim: "groups".into(),
            trusted_audiences: trusted_audiences.iter().map(|a| (*a).into()).collect(),
            allow_unverified_email: false,
        },
        cache,
    );
    Rig {
        key,
        server,
        validator,
    }
}

async fn rig() -> Rig {
    rig_with(&[]).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a token that passes every rule.
fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "alice",
        "aud": CLIENT,
        "exp": now() + 300,
        "iat": now(),
        "nonce": NONCE,
        "email": "alice@example.com",
        "email_verified": true,
        "groups": ["admins", "staff"],
    })
}

fn rs256(key: &CoreRsaPrivateSigningKey, kid: &str, claims: &Value) -> String {
    jws(
        json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        claims,
        |m| {
            key.sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, m)
                .unwrap()
        },
    )
}

impl Rig {
    fn token(&self, claims: &Value) -> String {
        rs256(&self.key, "k1", claims)
    }

    async fn check(&self, token: &str) -> Result<latchkey::idp::Identity, IdTokenError> {
        self.validator
            .validate(token, Some(NONCE))
            .await
            .map(|v| v.identity)
    }

    async fn check_claims(
        &self,
        edit: impl FnOnce(&mut Value),
    ) -> Result<latchkey::idp::Identity, IdTokenError> {
        let mut claims = good_claims();
        edit(&mut claims);
        self.check(&self.token(&claims)).await
    }
}

#[tokio::test]
async fn a_good_token_is_accepted() {
    let rig = rig().await;
    let identity = rig.check_claims(|_| {}).await.unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.issuer, ISSUER);
    assert_eq!(identity.email.as_deref(), Some("alice@example.com"));
    assert_eq!(identity.groups, ["admins", "staff"]);
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unverified_or_implausible_emails_are_dropped_not_trusted() {
    let rig = rig().await;
    for edit in [
        json!({"email_verified": false}),
        json!({"email_verified": null}),
        json!({"email": "alice@evil.test@example.com"}),
        json!({"email": "@example.com"}),
    ] {
        let identity = rig
            .check_claims(|claims| {
                for (k, v) in edit.as_object().unwrap() {
                    if v.is_null() {
                        claims.as_object_mut().unwrap().remove(k);
                    } else {
                        claims[k] = v.clone();
                    }
                }
            })
            .await
            .unwrap();
        // The token is valid; only its email is not usable.
        assert_eq!(identity.subject, "alice", "{edit}");
        assert_eq!(identity.email, None, "{edit}");
    }
}

#[tokio::test]
async fn wrong_issuer() {
    let err = rig()
        .await
        .check_claims(|c| c["iss"] = json!("https://evil.test"))
        .await;
    assert!(matches!(err, Err(IdTokenError::WrongIssuer(_))), "{err:?}");
}

#[tokio::test]
async fn audience_without_the_client() {
    let err = rig()
        .await
        .check_claims(|c| c["aud"] = json!("someone-else"))
        .await;
    assert!(
        matches!(err, Err(IdTokenError::WrongAudience(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn untrusted_extra_audience() {
    let err = rig()
        .await
        .check_claims(|c| {
            c["aud"] = json!([CLIENT, "stranger"]);
            c["azp"] = json!(CLIENT);
        })
        .await;
    assert!(
        matches!(err, Err(IdTokenError::WrongAudience(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn multiple_audiences_without_azp() {
    let rig = rig_with(&["api"]).await;
    let err = rig
        .check_claims(|c| c["aud"] = json!([CLIENT, "api"]))
        .await;
    assert!(
        matches!(err, Err(IdTokenError::WrongAuthorizedParty(_))),
        "{err:?}"
    );
    // The control: the same token with azp = the client id passes.
    let ok = rig
        .check_claims(|c| {
            c["aud"] = json!([CLIENT, "api"]);
            c["azp"] = json!(CLIENT);
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn multiple_audiences_with_wrong_azp() {
    let err = rig_with(&["api"])
        .await
        .check_claims(|c| {
            c["aud"] = json!([CLIENT, "api"]);
            c["azp"] = json!("api");
        })
        .await;
    assert!(
        matches!(err, Err(IdTokenError::WrongAuthorizedParty(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn expired() {
    let rig = rig().await;
    let err = rig.check_claims(|c| c["exp"] = json!(now() - 120)).await;
    assert!(matches!(err, Err(IdTokenError::NotValidNow(_))), "{err:?}");
    // Within the 60 s clock skew it is still accepted.
    let ok = rig.check_claims(|c| c["exp"] = json!(now() - 30)).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn issued_in_the_future() {
    let err = rig()
        .await
        .check_claims(|c| c["iat"] = json!(now() + 600))
        .await;
    assert!(matches!(err, Err(IdTokenError::NotValidNow(_))), "{err:?}");
}

#[tokio::test]
async fn iat_missing() {
    let err = rig()
        .await
        .check_claims(|c| {
            c.as_object_mut().unwrap().remove("iat");
        })
        .await;
    assert!(matches!(err, Err(IdTokenError::Malformed(_))), "{err:?}");
}

#[tokio::test]
async fn sub_missing() {
    let err = rig()
        .await
        .check_claims(|c| {
            c.as_object_mut().unwrap().remove("sub");
        })
        .await;
    assert!(matches!(err, Err(IdTokenError::Malformed(_))), "{err:?}");
}

#[tokio::test]
async fn nonce_missing() {
    let err = rig()
        .await
        .check_claims(|c| {
            c.as_object_mut().unwrap().remove("nonce");
        })
        .await;
    assert!(matches!(err, Err(IdTokenError::Nonce(_))), "{err:?}");
}

#[tokio::test]
async fn nonce_different() {
    let err = rig()
        .await
        .check_claims(|c| c["nonce"] = json!("another"))
        .await;
    assert!(matches!(err, Err(IdTokenError::Nonce(_))), "{err:?}");
}

#[tokio::test]
async fn signature_invalid() {
    let rig = rig().await;
    let token = rig.token(&good_claims());
    // Same header and signature, different payload.
    let mut forged_claims = good_claims();
    forged_claims["sub"] = json!("mallory");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    let err = rig.check(&forged).await;
    assert!(matches!(err, Err(IdTokenError::BadSignature(_))), "{err:?}");
    // Signed by a key that is not the provider's, under the provider's kid.
    let stranger = rsa_key("k1");
    let err = rig.check(&rs256(&stranger, "k1", &good_claims())).await;
    assert!(matches!(err, Err(IdTokenError::BadSignature(_))), "{err:?}");
}

#[tokio::test]
async fn alg_none() {
    let rig = rig().await;
    let unsigned = jws(json!({"alg": "none", "typ": "JWT"}), &good_claims(), |_| {
        Vec::new()
    });
    let err = rig.check(&unsigned).await;
    assert!(
        matches!(err, Err(IdTokenError::DisallowedAlgorithm(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn hs256_with_the_client_secret() {
    let rig = rig().await;
    let hmac = CoreHmacKey::new(SECRET.as_bytes().to_vec());
    let token = jws(json!({"alg": "HS256", "typ": "JWT"}), &good_claims(), |m| {
        hmac.sign(&CoreJwsSigningAlgorithm::HmacSha256, m).unwrap()
    });
    let err = rig.check(&token).await;
    assert!(
        matches!(err, Err(IdTokenError::DisallowedAlgorithm(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_kid_refetches_once_then_rejects() {
    let rig = rig().await;
    let stranger = rsa_key("k-unknown");
    let token = rs256(&stranger, "k-unknown", &good_claims());
    let err = rig.check(&token).await;
    assert!(matches!(err, Err(IdTokenError::UnknownKey(_))), "{err:?}");
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 1);
    // A flood of made-up key ids does not make it fetch again (rate limit).
    for i in 0..20 {
        let token = rs256(&stranger, &format!("bogus-{i}"), &good_claims());
        assert!(matches!(
            rig.check(&token).await,
            Err(IdTokenError::UnknownKey(_))
        ));
    }
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(rig.validator.keys().refetches(), 1);
}

#[tokio::test]
async fn key_rotation_is_picked_up_after_one_refetch() {
    let rig = rig().await;
    assert!(rig.check_claims(|_| {}).await.is_ok());
    // The provider rotates: new key k2 published (k1 kept), tokens signed with k2.
    let k2 = rsa_key("k2");
    *rig.server.keys.lock().unwrap() = JsonWebKeySet::new(vec![
        k2.as_verification_key(),
        rig.key.as_verification_key(),
    ]);
    let identity = rig.check(&rs256(&k2, "k2", &good_claims())).await.unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 1);
    // Both keys now verify without further fetches.
    assert!(rig.check(&rs256(&k2, "k2", &good_claims())).await.is_ok());
    assert!(rig.check_claims(|_| {}).await.is_ok());
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_validations_with_a_new_kid_share_one_fetch() {
    let rig = Arc::new(rig().await);
    let k2 = rsa_key("k2");
    *rig.server.keys.lock().unwrap() = JsonWebKeySet::new(vec![k2.as_verification_key()]);
    let token = rs256(&k2, "k2", &good_claims());
    let start = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (rig, token, start) = (rig.clone(), token.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                rig.check(&token).await
            })
        })
        .collect();
    for task in tasks {
        let identity = task.await.unwrap().unwrap();
        assert_eq!(identity.subject, "alice");
    }
    assert_eq!(rig.server.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refreshed_token_needs_no_nonce_but_must_pass_everything_else() {
    let rig = rig().await;
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove("nonce");
    let ok = rig.validator.validate(&rig.token(&claims), None).await;
    assert!(ok.is_ok(), "{ok:?}");
    claims["iss"] = json!("https://evil.test");
    let err = rig.validator.validate(&rig.token(&claims), None).await;
    assert!(matches!(err, Err(IdTokenError::WrongIssuer(_))), "{err:?}");
}

#[tokio::test]
async fn garbage_is_malformed() {
    let rig = rig().await;
    for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30."] {
        let err = rig.check(junk).await;
        assert!(
            matches!(err, Err(IdTokenError::Malformed(_))),
            "{junk:?}: {err:?}"
        );
    }
}

//! Back-channel logout token validation (Back-Channel Logout 1.0 §2.6):
//! one crafted bad token per rule, each expecting its typed rejection, and
//! the keys a token may name in its own header never being used. Tokens
//! are signed with test keys and the key set is served from a test JWKS
//! endpoint that counts its fetches.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use latchkey::oidc::http::IdpHttp;
use latchkey::oidc::id_token::IdTokenRules;
use latchkey::oidc::jwks::JwksCache;
use latchkey::oidc::logout_token::{
    BACKCHANNEL_LOGOUT_EVENT, LogoutToken, LogoutTokenError, LogoutTokenValidator,
    MAX_LOGOUT_TOKEN_AGE,
};
use openidconnect::core::{
    CoreEdDsaPrivateSigningKey, CoreHmacKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{JsonWebKeyId, JsonWebKeySet, JsonWebKeySetUrl, PrivateSigningKey};
use serde_json::{Value, json};

use common::jws::{b64, jws, rsa_key};

/// A token's claims, as the cases edit them.
type Claims = serde_json::Map<String, Value>;

/// One change to a good token's claims.
type Edit = Box<dyn FnOnce(&mut Claims)>;

const ISSUER: &str = "https://idp.test";
const CLIENT: &str = "latchkey";

fn ed_key(kid: &str, seed: u8) -> CoreEdDsaPrivateSigningKey {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pem = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

struct Rig {
    rsa: CoreRsaPrivateSigningKey,
    ed: CoreEdDsaPrivateSigningKey,
    fetches: Arc<AtomicUsize>,
    validator: LogoutTokenValidator,
}

/// A validator allowing RS256 and EdDSA over a key set of one RSA key
/// (`r1`) and one Ed25519 key (`e1`).
async fn rig() -> Rig {
    let rsa = rsa_key("r1");
    let ed = ed_key("e1", 7);
    let keys: CoreJsonWebKeySet =
        JsonWebKeySet::new(vec![rsa.as_verification_key(), ed.as_verification_key()]);
    let fetches = Arc::new(AtomicUsize::new(0));
    let served = keys.clone();
    let app = Router::new()
        .route(
            "/jwks",
            get(
                |State((keys, n)): State<(CoreJsonWebKeySet, Arc<AtomicUsize>)>| async move {
                    n.fetch_add(1, Ordering::SeqCst);
                    axum::Json(keys)
                },
            ),
        )
        .with_state((served, fetches.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cache = JwksCache::new(
        JsonWebKeySetUrl::new(url).unwrap(),
        IdpHttp::new(Duration::from_secs(2), Duration::from_secs(5)),
        keys,
        Duration::from_secs(3600),
    );
    let validator = LogoutTokenValidator::new(
        IdTokenRules {
            client_id: CLIENT.into(),
            issuer: ISSUER.into(),
            allowed_algs: vec![
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EdDsa,
            ],
            clock_skew: Duration::from_secs(60),
            groups_claim: "groups".into(),
            trusted_audiences: vec![],
            allow_unverified_email: false,
        },
        cache,
    );
    Rig {
        rsa,
        ed,
        fetches,
        validator,
    }
}

fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap()
}

/// Claims of a logout token that passes every rule.
fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": CLIENT,
        "iat": now_s(),
        "exp": now_s() + 120,
        "jti": "jti-1",
        "sub": "alice",
        "sid": "sid-1",
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    })
}

impl Rig {
    fn rs256(&self, header: Value, claims: &Value) -> String {
        jws(header, claims, |m| {
            self.rsa
                .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, m)
                .unwrap()
        })
    }

    fn token(&self, claims: &Value) -> String {
        self.rs256(
            json!({"alg": "RS256", "typ": "logout+jwt", "kid": "r1"}),
            claims,
        )
    }

    async fn check(&self, token: &str) -> Result<LogoutToken, LogoutTokenError> {
        self.validator.validate(token, now_ms()).await
    }

    async fn check_claims(
        &self,
        edit: impl FnOnce(&mut Claims),
    ) -> Result<LogoutToken, LogoutTokenError> {
        let mut claims = good_claims();
        edit(claims.as_object_mut().unwrap());
        self.check(&self.token(&claims)).await
    }
}

#[tokio::test]
async fn a_good_logout_token_is_accepted_with_either_algorithm() {
    let rig = rig().await;
    let token = rig.check_claims(|_| {}).await.unwrap();
    assert_eq!(
        token,
        LogoutToken {
            subject: Some("alice".into()),
            sid: Some("sid-1".into()),
            jti: "jti-1".into(),
            issued_at: u64::try_from(good_claims()["iat"].as_i64().unwrap()).unwrap() * 1000,
        }
    );
    let ed = jws(json!({"alg": "EdDSA", "kid": "e1"}), &good_claims(), |m| {
        rig.ed.sign(&CoreJwsSigningAlgorithm::EdDsa, m).unwrap()
    });
    assert!(rig.check(&ed).await.is_ok());
    // sid alone, sub alone, no exp, aud as an array, typ JWT: all allowed.
    for edit in [
        |c: &mut Claims| {
            c.remove("sub");
        },
        |c: &mut Claims| {
            c.remove("sid");
        },
        |c: &mut Claims| {
            c.remove("exp");
        },
        |c: &mut Claims| {
            c.insert("aud".into(), json!(["other", CLIENT]));
        },
    ] {
        assert!(rig.check_claims(edit).await.is_ok());
    }
    let typed_jwt = rig.rs256(
        json!({"alg": "RS256", "typ": "JWT", "kid": "r1"}),
        &good_claims(),
    );
    assert!(rig.check(&typed_jwt).await.is_ok());
    assert_eq!(rig.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn claims_that_do_not_make_a_logout_token_are_refused() {
    let rig = rig().await;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "another issuer",
            Box::new(|c| {
                c.insert("iss".into(), json!("https://evil.test"));
            }),
        ),
        (
            "no issuer",
            Box::new(|c| {
                c.remove("iss");
            }),
        ),
        (
            "another audience",
            Box::new(|c| {
                c.insert("aud".into(), json!("someone-else"));
            }),
        ),
        (
            "no audience",
            Box::new(|c| {
                c.remove("aud");
            }),
        ),
        (
            "issued in the future",
            Box::new(|c| {
                c.insert("iat".into(), json!(now_s() + 3600));
            }),
        ),
        (
            "issued too long ago",
            Box::new(|c| {
                let old = now_s() - i64::try_from(MAX_LOGOUT_TOKEN_AGE.as_secs()).unwrap() - 120;
                c.insert("iat".into(), json!(old));
                c.insert("exp".into(), json!(now_s() + 120));
            }),
        ),
        (
            "no iat",
            Box::new(|c| {
                c.remove("iat");
            }),
        ),
        (
            "expired",
            Box::new(|c| {
                c.insert("exp".into(), json!(now_s() - 3600));
            }),
        ),
        (
            "no events",
            Box::new(|c| {
                c.remove("events");
            }),
        ),
        (
            "another event",
            Box::new(|c| {
                c.insert(
                    "events".into(),
                    json!({"http://schemas.openid.net/event/other": {}}),
                );
            }),
        ),
        (
            "the event is not an object",
            Box::new(|c| {
                c.insert("events".into(), json!({ BACKCHANNEL_LOGOUT_EVENT: "yes" }));
            }),
        ),
        (
            "a nonce (an ID token)",
            Box::new(|c| {
                c.insert("nonce".into(), json!("n"));
            }),
        ),
        (
            "neither sub nor sid",
            Box::new(|c| {
                c.remove("sub");
                c.remove("sid");
            }),
        ),
        (
            "no jti",
            Box::new(|c| {
                c.remove("jti");
            }),
        ),
        (
            "an empty sid",
            Box::new(|c| {
                c.insert("sid".into(), json!(""));
            }),
        ),
        (
            "a sid with a control character",
            Box::new(|c| {
                c.insert("sid".into(), json!("a\nb"));
            }),
        ),
        (
            "an oversized sub",
            Box::new(|c| {
                c.insert("sub".into(), json!("a".repeat(300)));
            }),
        ),
        (
            "sub of the wrong type",
            Box::new(|c| {
                c.insert("sub".into(), json!(42));
            }),
        ),
        (
            "iat of the wrong type",
            Box::new(|c| {
                c.insert("iat".into(), json!("now"));
            }),
        ),
    ];
    for (case, edit) in cases {
        let refused = rig.check_claims(edit).await;
        assert!(refused.is_err(), "{case}: accepted");
        let error = refused.unwrap_err();
        let expected = match case {
            "another issuer" => matches!(error, LogoutTokenError::WrongIssuer),
            "another audience" => matches!(error, LogoutTokenError::WrongAudience),
            "issued in the future" | "issued too long ago" | "expired" => {
                matches!(error, LogoutTokenError::NotValidNow(_))
            }
            "no events"
            | "another event"
            | "the event is not an object"
            | "a nonce (an ID token)" => {
                matches!(error, LogoutTokenError::NotALogoutToken(_))
            }
            "sub of the wrong type" | "iat of the wrong type" => {
                matches!(error, LogoutTokenError::Malformed(_))
            }
            _ => matches!(error, LogoutTokenError::MissingClaim(_)),
        };
        assert!(expected, "{case}: refused for the wrong reason: {error}");
        // The reason never quotes a claim's value.
        assert!(!error.to_string().contains("evil.test"), "{case}: {error}");
    }
}

#[tokio::test]
async fn an_id_token_is_not_a_logout_token() {
    let rig = rig().await;
    let id_token = json!({
        "iss": ISSUER, "aud": CLIENT, "sub": "alice", "iat": now_s(),
        "exp": now_s() + 300, "nonce": "n", "jti": "j",
    });
    let refused = rig.check(&rig.token(&id_token)).await;
    assert!(
        matches!(refused, Err(LogoutTokenError::NotALogoutToken(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn signatures_keys_and_algorithms_are_enforced() {
    let rig = rig().await;
    let good = rig.token(&good_claims());
    // A payload changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = good_claims();
    forged["sub"] = json!("bob");
    parts[1] = b64(forged.to_string().as_bytes());
    let tampered = parts.join(".");
    assert_eq!(
        rig.check(&tampered).await,
        Err(LogoutTokenError::BadSignature)
    );

    // Signed by a key the provider never published, under its key id.
    let stranger = rsa_key("r1");
    let by_stranger = jws(json!({"alg": "RS256", "kid": "r1"}), &good_claims(), |m| {
        stranger
            .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, m)
            .unwrap()
    });
    assert_eq!(
        rig.check(&by_stranger).await,
        Err(LogoutTokenError::BadSignature)
    );

    // ...carrying its own key in the header: never used.
    let stranger_ed = ed_key("x1", 9);
    let jwk = serde_json::to_value(stranger_ed.as_verification_key()).unwrap();
    let embedded = jws(
        json!({"alg": "EdDSA", "kid": "x1", "jwk": jwk}),
        &good_claims(),
        |m| {
            stranger_ed
                .sign(&CoreJwsSigningAlgorithm::EdDsa, m)
                .unwrap()
        },
    );
    assert!(
        matches!(
            rig.check(&embedded).await,
            Err(LogoutTokenError::UnknownKey(_))
        ),
        "a key in the header was trusted"
    );
    // The unknown key id cost one re-fetch of the key set, no more.
    assert_eq!(rig.fetches.load(Ordering::SeqCst), 1);

    // alg none, unsigned.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(good_claims().to_string().as_bytes())
    );
    assert!(
        matches!(rig.check(&none).await, Err(LogoutTokenError::Malformed(_))),
        "alg none was not refused as such"
    );

    // HMAC with a secret the attacker chose (even one that is the RSA
    // key's public modulus, the classic confusion).
    let hmac = CoreHmacKey::new(b"any secret at all, thirty-two bytes long".to_vec());
    let hs256 = jws(json!({"alg": "HS256", "kid": "r1"}), &good_claims(), |m| {
        hmac.sign(&CoreJwsSigningAlgorithm::HmacSha256, m).unwrap()
    });
    assert!(
        matches!(
            rig.check(&hs256).await,
            Err(LogoutTokenError::DisallowedAlgorithm(_))
        ),
        "HS256 was not refused"
    );

    // An allowed algorithm with a key of another family (EdDSA, naming the RSA key).
    let confused = jws(json!({"alg": "EdDSA", "kid": "r1"}), &good_claims(), |m| {
        rig.ed.sign(&CoreJwsSigningAlgorithm::EdDsa, m).unwrap()
    });
    assert!(
        rig.check(&confused).await.is_err(),
        "a key of another family was used"
    );

    // An algorithm off the allowlist, correctly signed.
    let ps = jws(json!({"alg": "PS256", "kid": "r1"}), &good_claims(), |m| {
        rig.rsa
            .sign(&CoreJwsSigningAlgorithm::RsaSsaPssSha256, m)
            .unwrap()
    });
    assert!(
        matches!(
            rig.check(&ps).await,
            Err(LogoutTokenError::DisallowedAlgorithm(_))
        ),
        "PS256 is not on this allowlist"
    );

    // Typed as another kind of token.
    let access = rig.rs256(
        json!({"alg": "RS256", "typ": "at+jwt", "kid": "r1"}),
        &good_claims(),
    );
    assert!(matches!(
        rig.check(&access).await,
        Err(LogoutTokenError::NotALogoutToken(_))
    ));

    // Not a JWS at all: garbage, five parts (a JWE), empty.
    for junk in [
        "",
        "a.b",
        "a.b.c.d.e",
        "....",
        "eyJ.eyJ.x",
        &"A".repeat(20_000),
    ] {
        assert!(rig.check(junk).await.is_err(), "{junk:.20} accepted");
    }
}

/// A token naming a key the cache does not know, while the provider's key
/// set cannot be fetched: the provider's fault (the endpoint answers 503 so
/// that it retries), not a bad token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_key_set_is_unavailable_not_invalid() {
    let rsa = rsa_key("r1");
    let keys: CoreJsonWebKeySet = JsonWebKeySet::new(vec![rsa.as_verification_key()]);
    // Nothing listens on port 1.
    let cache = JwksCache::new(
        JsonWebKeySetUrl::new("http://127.0.0.1:1/jwks".into()).unwrap(),
        IdpHttp::new(Duration::from_secs(2), Duration::from_secs(5)),
        keys,
        Duration::from_secs(3600),
    );
    let validator = LogoutTokenValidator::new(
        IdTokenRules {
            client_id: CLIENT.into(),
            issuer: ISSUER.into(),
            allowed_algs: vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
            clock_skew: Duration::from_secs(60),
            groups_claim: "groups".into(),
            trusted_audiences: vec![],
            allow_unverified_email: false,
        },
        cache,
    );
    let rotated = rsa_key("r2");
    let token = jws(json!({"alg": "RS256", "kid": "r2"}), &good_claims(), |m| {
        rotated
            .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, m)
            .unwrap()
    });
    let refused = validator.validate(&token, now_ms()).await;
    assert!(
        matches!(refused, Err(LogoutTokenError::KeySetUnavailable(_))),
        "{refused:?}"
    );
}

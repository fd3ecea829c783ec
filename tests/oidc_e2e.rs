//! The relying party against the development IdP over real HTTP on loopback:
//! a full code flow with a scripted browser, refresh with rotation, reuse
//! detection, RP-initiated logout, and the failure paths around them.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::browser::submit_login_form;

use latchkey::clock::SystemClock;
use latchkey::dev_idp::{DevClient, DevIdp, DevIdpConfig, SigningAlg};
use latchkey::idp::{IdentityProvider, IdpError};
use latchkey::login::{
    Callback, CompletedLogin, FailureReason, LoginError, LoginFlow, LoginSettings, StartedLogin,
};
use latchkey::oidc::{OidcProvider, OidcSettings};
use latchkey::session::{SessionSettings, Sessions};
use latchkey::store::Store;
use latchkey::store::memory::MemoryStore;
use url::Url;

const REDIRECT: &str = "http://127.0.0.1:9/oauth2/callback";
const AFTER_LOGOUT: &str = "http://127.0.0.1:9/";
const SECRET: &str = "e2e-secret";

async fn dev_idp() -> DevIdp {
    dev_idp_signing(SigningAlg::Rs256).await
}

async fn dev_idp_signing(signing_alg: SigningAlg) -> DevIdp {
    DevIdp::start(DevIdpConfig {
        signing_alg,
        listen: "127.0.0.1:0".parse().unwrap(),
        clients: vec![DevClient {
            client_id: "e2e".into(),
            client_secret: SECRET.into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![AFTER_LOGOUT.into()],
            backchannel_logout_uri: None,
        }],
        ..DevIdpConfig::default()
    })
    .await
    .expect("start the dev IdP")
}

fn settings(idp: &DevIdp) -> OidcSettings {
    OidcSettings::new(idp.issuer(), "e2e", Some(SECRET), REDIRECT)
}

struct Rig {
    idp: DevIdp,
    provider: Arc<OidcProvider>,
    store: Arc<dyn Store>,
    flow: LoginFlow,
    browser: reqwest::Client,
}

async fn rig() -> Rig {
    let idp = dev_idp().await;
    let settings = settings(&idp);
    rig_for(idp, settings).await
}

async fn rig_for(idp: DevIdp, settings: OidcSettings) -> Rig {
    let provider = Arc::new(OidcProvider::discover(&settings).await.unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let flow = LoginFlow::new(
        store.clone(),
        provider.clone(),
        Arc::new(SystemClock),
        LoginSettings::default(),
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Rig {
        idp,
        provider,
        store,
        flow,
        browser,
    }
}

/// The redirect back from the IdP, as query pairs.
struct Back {
    pairs: Vec<(String, String)>,
}

impl Back {
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Rig {
    /// A browser: opens the authorization URL, then submits the login form
    /// with `username`/`password` (`action` = login or cancel).
    async fn sign_in(
        &self,
        started: &StartedLogin,
        username: &str,
        password: &str,
        action: &str,
    ) -> reqwest::Response {
        let authorize = Url::parse(&started.authorization_url).unwrap();
        let page = self.browser.get(authorize.clone()).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        assert!(html.contains("development only") && html.contains("alice"));
        submit_login_form(&self.browser, &authorize, username, password, action).await
    }

    async fn back_from(&self, response: reqwest::Response) -> Back {
        assert!(response.status().is_redirection(), "{}", response.status());
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.starts_with(REDIRECT), "{location}");
        let url = Url::parse(&location).unwrap();
        Back {
            pairs: url.query_pairs().into_owned().collect(),
        }
    }

    /// Signs in as alice and sends the callback: what completing it answered.
    async fn callback_as_alice(&self) -> (StartedLogin, Result<CompletedLogin, LoginError>) {
        let started = self.flow.begin("/app").await.unwrap();
        let response = self.sign_in(&started, "alice", "alice", "login").await;
        let back = self.back_from(response).await;
        assert_eq!(back.get("state"), Some(started.state.secret()));
        self.provider
            .check_response_issuer(back.get("iss"))
            .unwrap();
        let completed = self
            .flow
            .complete(Callback {
                state: back.get("state").unwrap(),
                code: back.get("code").unwrap(),
                binding: Some(started.binding.secret()),
                pending: Some(&started.pending),
            })
            .await;
        (started, completed)
    }

    async fn login_as_alice(&self) -> (StartedLogin, latchkey::secret::SessionId) {
        let (started, completed) = self.callback_as_alice().await;
        let done = completed.unwrap();
        assert_eq!(done.return_to, "/app");
        (started, done.session_id)
    }

    fn sessions(&self, refresh_before_expiry: Duration) -> Sessions {
        Sessions::new(
            self.store.clone(),
            self.provider.clone(),
            Arc::new(SystemClock),
            SessionSettings {
                refresh_before_expiry,
                ..SessionSettings::default()
            },
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_refresh_rotation_and_reuse_detection() {
    let rig = rig().await;
    let (_, session_id) = rig.login_as_alice().await;
    assert_eq!(rig.idp.knobs().code_grants(), 1);

    // The session holds the validated identity, with userinfo's groups.
    let quiet = rig.sessions(Duration::ZERO);
    let session = quiet.load(&session_id).await.unwrap();
    assert_eq!(session.identity().subject, "alice");
    assert_eq!(session.identity().issuer, rig.idp.issuer());
    assert_eq!(
        session.identity().email.as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(session.identity().groups, ["admins", "staff"]);
    let first_refresh_token = session.tokens().refresh_token.clone().unwrap();
    assert_eq!(rig.idp.knobs().refresh_grants(), 0);

    // Due for refresh (the dev IdP's tokens live 5 minutes): one refresh, rotated.
    let eager = rig.sessions(Duration::from_secs(3600));
    let refreshed = eager.load(&session_id).await.unwrap();
    assert_eq!(rig.idp.knobs().refresh_grants(), 1);
    assert_ne!(
        refreshed.tokens().access_token,
        session.tokens().access_token
    );
    let second_refresh_token = refreshed.tokens().refresh_token.clone().unwrap();
    assert_ne!(second_refresh_token, first_refresh_token);
    assert_eq!(refreshed.identity().subject, "alice");

    // Presenting the rotated-away token is refused, and revokes the family.
    let reuse = rig
        .provider
        .refresh(&first_refresh_token)
        .await
        .unwrap_err();
    assert!(matches!(reuse, IdpError::InvalidGrant(_)), "{reuse:?}");
    let after = rig
        .provider
        .refresh(&second_refresh_token)
        .await
        .unwrap_err();
    assert!(matches!(after, IdpError::InvalidGrant(_)), "{after:?}");
    // ... and so latchkey ends the session at its next refresh.
    let ended = eager.load(&session_id).await.unwrap_err();
    assert!(
        matches!(ended, latchkey::session::SessionError::Ended(_)),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_signed_tokens_verify_only_where_eddsa_is_allowed() {
    // Allowed: the code flow and a refresh work as with RS256.
    let idp = dev_idp_signing(SigningAlg::EdDsa).await;
    let mut eddsa = settings(&idp);
    eddsa.allowed_algs = vec!["EdDSA".into()];
    let rig = rig_for(idp, eddsa).await;
    let (_, session_id) = rig.login_as_alice().await;
    let refreshed = rig
        .sessions(Duration::from_secs(3600))
        .load(&session_id)
        .await
        .unwrap();
    assert_eq!(rig.idp.knobs().refresh_grants(), 1);
    assert_eq!(refreshed.identity().subject, "alice");

    // Not allowed (the default list): the login fails on the ID token.
    let idp = dev_idp_signing(SigningAlg::EdDsa).await;
    let defaults = settings(&idp);
    let rig = rig_for(idp, defaults).await;
    let refused = rig.callback_as_alice().await.1.unwrap_err();
    assert!(
        matches!(&refused, LoginError::Failed(FailureReason::Invalid(why)) if why.contains("EdDSA")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rp_initiated_logout_returns_to_the_registered_page() {
    let rig = rig().await;
    let (_, session_id) = rig.login_as_alice().await;
    let sessions = rig.sessions(Duration::ZERO);
    let record = sessions.sign_out(&session_id).await.unwrap().unwrap();
    let url = rig
        .provider
        .end_session_url(record.tokens.id_token.as_ref(), Some(AFTER_LOGOUT))
        .expect("the dev IdP has an end_session_endpoint");
    assert!(url.contains("id_token_hint="), "{url}");
    let response = rig.browser.get(&url).send().await.unwrap();
    assert!(response.status().is_redirection());
    assert_eq!(response.headers()["location"], AFTER_LOGOUT);
    assert!(matches!(
        sessions.load(&session_id).await.unwrap_err(),
        latchkey::session::SessionError::NotFound
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_code_is_refused_and_revokes_its_tokens() {
    let rig = rig().await;
    let started = rig.flow.begin("/").await.unwrap();
    let back = rig
        .back_from(rig.sign_in(&started, "bob", "bob", "login").await)
        .await;
    let code = back.get("code").unwrap().to_owned();
    let exchange = |code: String| latchkey::idp::CodeExchange {
        code: code.into(),
        pkce_verifier: "w".repeat(43).into(),
        nonce: "n".into(),
    };
    // A code redeemed with the wrong PKCE verifier is refused outright.
    let wrong = rig
        .provider
        .exchange_code(exchange(code.clone()))
        .await
        .unwrap_err();
    assert!(matches!(wrong, IdpError::InvalidGrant(_)), "{wrong:?}");
    // A malformed verifier too (and the IdP survives it).
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", "short"),
        ("client_id", "e2e"),
        ("client_secret", SECRET),
    ];
    let raw = rig
        .browser
        .post(format!("{}/token", rig.idp.issuer()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(raw.text().await.unwrap().contains("invalid_grant"));
    // Through the login flow it works once; a second exchange (which latchkey
    // never makes) is refused.
    rig.flow
        .complete(Callback {
            state: started.state.secret(),
            code: &code,
            binding: Some(started.binding.secret()),
            pending: Some(&started.pending),
        })
        .await
        .unwrap();
    let replay = rig
        .provider
        .exchange_code(exchange(code))
        .await
        .unwrap_err();
    assert!(matches!(replay, IdpError::InvalidGrant(_)), "{replay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_no_code() {
    let rig = rig().await;
    let started = rig.flow.begin("/").await.unwrap();
    let response = rig.sign_in(&started, "alice", "bob", "login").await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("wrong password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_response_ends_the_login_without_a_session() {
    let rig = rig().await;
    let started = rig.flow.begin("/").await.unwrap();
    let back = rig
        .back_from(rig.sign_in(&started, "alice", "alice", "cancel").await)
        .await;
    assert_eq!(back.get("error"), Some("access_denied"));
    assert!(back.get("code").is_none());
    let reason = rig
        .flow
        .abort(
            started.state.secret(),
            Some(started.binding.secret()),
            Some(&started.pending),
            FailureReason::Refused {
                error: latchkey::login::idp_error_code(back.get("error").unwrap()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        reason,
        FailureReason::Refused {
            error: "access_denied".into()
        }
    );
    let later = rig
        .flow
        .complete(Callback {
            state: started.state.secret(),
            code: "forged",
            binding: Some(started.binding.secret()),
            pending: Some(&started.pending),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            later,
            LoginError::AlreadyFailed(FailureReason::Refused { .. })
        ),
        "{later:?}"
    );
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
    assert_eq!(rig.idp.knobs().token_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_response_from_another_issuer_is_rejected() {
    let rig = rig().await;
    assert!(rig.provider.check_response_issuer(None).is_ok());
    assert!(
        rig.provider
            .check_response_issuer(Some(rig.idp.issuer()))
            .is_ok()
    );
    let err = rig
        .provider
        .check_response_issuer(Some("https://evil.example"))
        .unwrap_err();
    assert!(matches!(err, IdpError::Invalid(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_outage_is_transient_and_fails_the_login_cleanly() {
    let rig = rig().await;
    let started = rig.flow.begin("/").await.unwrap();
    let back = rig
        .back_from(rig.sign_in(&started, "alice", "alice", "login").await)
        .await;
    rig.idp.knobs().fail_next_token_calls(1);
    let err = rig
        .flow
        .complete(Callback {
            state: started.state.secret(),
            code: back.get("code").unwrap(),
            binding: Some(started.binding.secret()),
            pending: Some(&started.pending),
        })
        .await
        .unwrap_err();
    let LoginError::Failed(FailureReason::Unavailable(reason)) = err else {
        panic!("{err:?}");
    };
    assert!(reason.contains("503"), "{reason}");
    assert!(
        !reason.contains(back.get("code").unwrap()),
        "the code leaked into {reason}"
    );
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
    // A fresh login right after works.
    rig.login_as_alice().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_for_another_subject_fails_the_login() {
    let rig = rig().await;
    rig.idp.knobs().misreport_userinfo_subject(Some("mallory"));
    let started = rig.flow.begin("/").await.unwrap();
    let back = rig
        .back_from(rig.sign_in(&started, "alice", "alice", "login").await)
        .await;
    let err = rig
        .flow
        .complete(Callback {
            state: back.get("state").unwrap(),
            code: back.get("code").unwrap(),
            binding: Some(started.binding.secret()),
            pending: Some(&started.pending),
        })
        .await
        .unwrap_err();
    let LoginError::Failed(FailureReason::Invalid(reason)) = err else {
        panic!("{err:?}");
    };
    assert!(reason.contains("userinfo"), "{reason}");
    assert_eq!(rig.store.count_live("session:").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_at_the_idp_is_picked_up_without_a_restart() {
    let idp = DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        test_knobs: true,
        clients: vec![DevClient {
            client_id: "e2e".into(),
            client_secret: SECRET.into(),
            redirect_uris: vec![REDIRECT.into()],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
        }],
        ..DevIdpConfig::default()
    })
    .await
    .unwrap();
    let provider = Arc::new(OidcProvider::discover(&settings(&idp)).await.unwrap());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let flow = LoginFlow::new(
        store.clone(),
        provider.clone(),
        Arc::new(SystemClock),
        LoginSettings::default(),
    );
    let rig = Rig {
        idp,
        provider,
        store,
        flow,
        browser: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    };
    let (_, session_id) = rig.login_as_alice().await;
    // Rotate through the admin endpoint, as an operator's test script would.
    let knobs = format!("{}/_dev", rig.idp.issuer());
    let rotated = rig
        .browser
        .post(format!("{knobs}/rotate-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 204);
    assert_eq!(rig.provider.validator().keys().refetches(), 0);
    // The refresh brings an ID token signed with the new key: one re-fetch.
    let refreshed = rig
        .sessions(Duration::from_secs(3600))
        .load(&session_id)
        .await
        .unwrap();
    assert_eq!(refreshed.identity().subject, "alice");
    assert_eq!(rig.provider.validator().keys().refetches(), 1);
    let counters: serde_json::Value = rig
        .browser
        .get(format!("{knobs}/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["code_grants"], 1);
    assert_eq!(counters["refresh_grants"], 1);
    // And the failure knob over HTTP.
    let failing = rig
        .browser
        .post(format!("{knobs}/fail-token?count=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 204);
    let err = rig.provider.refresh(&"x".into()).await.unwrap_err();
    assert!(matches!(err, IdpError::Transient(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knobs_are_off_by_default() {
    let rig = rig().await;
    let response = rig
        .browser
        .post(format!("{}/_dev/rotate-key", rig.idp.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_token_endpoint_times_out_as_transient() {
    let idp = dev_idp().await;
    let mut slow = settings(&idp);
    slow.request_timeout = Duration::from_millis(300);
    let provider = OidcProvider::discover(&slow).await.unwrap();
    // The dev IdP's knob: every token call now takes 5 s.
    idp.knobs().delay_token_calls(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let err = provider.refresh(&"any".into()).await.unwrap_err();
    assert!(
        matches!(err, IdpError::Transient(ref m) if m.contains("timed out")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_errors_name_the_url_and_the_problem() {
    let idp = dev_idp().await;
    // Nothing listens there.
    let nowhere = OidcSettings::new("http://127.0.0.1:9/realm", "e2e", Some(SECRET), REDIRECT);
    let err = OidcProvider::discover(&nowhere)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("http://127.0.0.1:9/realm/.well-known/openid-configuration"),
        "{err}"
    );
    // The document names another issuer (localhost vs 127.0.0.1).
    let other = idp.issuer().replace("127.0.0.1", "localhost");
    let mismatch = OidcSettings::new(&other, "e2e", Some(SECRET), REDIRECT);
    let err = OidcProvider::discover(&mismatch)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("issuer"), "{err}");
    // A wrong client secret is a rejection, not an outage.
    let provider = OidcProvider::discover(&OidcSettings::new(
        idp.issuer(),
        "e2e",
        Some("nope"),
        REDIRECT,
    ))
    .await
    .unwrap();
    let err = provider.refresh(&"whatever".into()).await.unwrap_err();
    assert!(
        matches!(err, IdpError::Invalid(ref m) if m.contains("invalid_client")),
        "{err:?}"
    );
}

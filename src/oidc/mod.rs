//! OpenID Connect against a real provider: the [`IdentityProvider`] that the
//! state machines use in production.
//!
//! Protocol work is the `openidconnect` crate's (discovery, authorization URL
//! with PKCE S256, code and refresh grants, ID token verification, userinfo,
//! RP-initiated logout). Latchkey adds what a relying party must decide itself:
//! the signing-algorithm allowlist, `azp`, clock skew, a key cache that follows
//! rotation ([`jwks`]), the userinfo `sub` check, timeouts on every call, and the
//! split between a dead grant and a transient failure.

pub mod http;
pub mod id_token;
pub mod jwks;
pub mod logout_token;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AuthType, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    IdTokenFields, IssuerUrl, LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, PostLogoutRedirectUrl, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardErrorResponse, StandardTokenResponse, SubjectIdentifier, TokenResponse, UserInfoClaims,
};

use self::http::{HttpFailure, IdpHttp};
use self::id_token::{ExtraClaims, IdTokenRules, IdTokenValidator};
use self::jwks::JwksCache;
use crate::clock::{Clock, SystemClock, duration_ms};
use crate::idp::{
    AuthorizationRequest, CodeExchange, Grant, Identity, IdentityProvider, IdpError, TokenSet,
};
use crate::secret;

/// How latchkey talks to its provider.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The issuer URL; discovery is fetched from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret (confidential clients).
    pub client_secret: Option<secret::ClientSecret>,
    /// Where the provider sends the browser back (`…/oauth2/callback`).
    pub redirect_url: String,
    /// Requested scopes; `openid` is always sent.
    pub scopes: Vec<String>,
    /// Accepted ID token signing algorithms, by JOSE name.
    pub allowed_algs: Vec<String>,
    /// Tolerance for `exp` and `iat`.
    pub clock_skew: Duration,
    /// The claim that holds group names.
    pub groups_claim: String,
    /// Other audiences an ID token may name besides the client id.
    pub trusted_audiences: Vec<String>,
    /// Take `email` even when `email_verified` is not `true`.
    pub allow_unverified_email: bool,
    /// Other clients of the same provider whose ID tokens API clients may
    /// present as bearer tokens (their `aud`, and `azp` when several).
    pub extra_jwt_audiences: Vec<String>,
    /// Other providers whose ID tokens API clients may present as bearer
    /// tokens, each for its own audience (discovered with this one).
    pub extra_jwt_issuers: Vec<JwtIssuer>,
    /// Parameters added to every authorization request (`audience`,
    /// `acr_values`, `access_type`, …); never a protocol parameter (see
    /// [`PROTOCOL_PARAMETERS`]).
    pub extra_auth_params: Vec<(String, String)>,
    /// The HTTP client for provider calls (a private CA, a proxy); `None`:
    /// latchkey's own (web roots, no redirects). Every call is bounded by
    /// `request_timeout` either way.
    pub http_client: Option<reqwest::Client>,
    /// Top-level userinfo claims to keep in the identity (for headers).
    pub userinfo_claims: Vec<String>,
    /// CA certificates (DER) trusted for the provider besides the system's
    /// and the bundled web roots (`provider_ca_files`); unused with
    /// `http_client`.
    pub ca_certificates: Vec<Vec<u8>>,
    /// Connect timeout of every provider call.
    pub connect_timeout: Duration,
    /// Total timeout of every provider call.
    pub request_timeout: Duration,
    /// At most one key-set re-fetch per this interval.
    pub jwks_refetch_interval: Duration,
    /// Lifetime assumed for an access token whose response has no `expires_in`.
    pub default_access_ttl: Duration,
}

impl OidcSettings {
    /// Settings with latchkey's defaults for everything but the client.
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: Option<&str>,
        redirect_url: &str,
    ) -> Self {
        Self {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.map(secret::ClientSecret::new),
            redirect_url: redirect_url.to_owned(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            allowed_algs: vec!["RS256".into(), "ES256".into()],
            clock_skew: Duration::from_secs(60),
            groups_claim: "groups".into(),
            trusted_audiences: Vec::new(),
            allow_unverified_email: false,
            extra_jwt_audiences: Vec::new(),
            extra_jwt_issuers: Vec::new(),
            extra_auth_params: Vec::new(),
            http_client: None,
            ca_certificates: Vec::new(),
            userinfo_claims: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            jwks_refetch_interval: Duration::from_secs(30),
            default_access_ttl: Duration::from_secs(300),
        }
    }
}

/// The authorization request's own parameters, which latchkey sets and no
/// setting or passed-on parameter may set instead.
pub const PROTOCOL_PARAMETERS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
];

/// Another provider whose ID tokens are accepted as bearer tokens
/// (oauth2-proxy's `extra_jwt_issuers` entry `ISSUER=AUDIENCE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// Its issuer URL; its keys come from its discovery document.
    pub issuer: String,
    /// The audience (client id) its tokens must be for.
    pub audience: String,
}

/// Why the provider could not be set up. Names the URL and what failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    /// A configured value is invalid.
    #[error("invalid {setting}: {reason}")]
    Config {
        /// The setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Discovery failed.
    #[error("OpenID Connect discovery at {url} failed: {reason}")]
    Discovery {
        /// The discovery URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

type TokenResponseWithClaims = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type OidcClient<HasTokenUrl = EndpointSet> = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResponseWithClaims,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
    EndpointMaybeSet,
>;

/// What latchkey reads of a discovery document beyond the core fields: the
/// RP-initiated logout endpoint, and RFC 7009's revocation endpoint.
type ProviderMetadataWithRevocation = openidconnect::ProviderMetadata<
    openidconnect::LogoutProviderMetadata<RevocationMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    openidconnect::core::CoreClaimName,
    openidconnect::core::CoreClaimType,
    openidconnect::core::CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    openidconnect::core::CoreResponseMode,
    openidconnect::core::CoreResponseType,
    openidconnect::core::CoreSubjectIdentifierType,
>;

/// The `revocation_endpoint` of a discovery document (RFC 8414, RFC 7009).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
struct RevocationMetadata {
    revocation_endpoint: Option<openidconnect::RevocationUrl>,
}

impl openidconnect::AdditionalProviderMetadata for RevocationMetadata {}

/// A discovered OpenID Provider.
pub struct OidcProvider {
    client: OidcClient,
    http: IdpHttp,
    validator: IdTokenValidator,
    /// Back-channel logout tokens, with the same rules and keys.
    logout_tokens: logout_token::LogoutTokenValidator,
    /// Validators for `extra_jwt_audiences` (bearer tokens only).
    other_audiences: Vec<IdTokenValidator>,
    /// Validators for `extra_jwt_issuers` (bearer tokens only).
    other_issuers: Vec<IdTokenValidator>,
    /// Added to every authorization request.
    extra_auth_params: Vec<(String, String)>,
    issuer: String,
    scopes: Vec<Scope>,
    end_session: Option<EndSessionUrl>,
    revocation: Option<openidconnect::RevocationUrl>,
    client_id: String,
    /// Userinfo claims kept in identities (see [`OidcSettings::userinfo_claims`]).
    userinfo_claims: Vec<String>,
    client_secret: Option<secret::ClientSecret>,
    /// `client_secret_post` rather than `client_secret_basic`.
    auth_type_is_body: bool,
    default_access_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The validator of bearer tokens from `extra`: its discovery document's
/// keys, its issuer and audience, and this provider's other rules.
async fn bearer_validator_for(
    extra: &JwtIssuer,
    rules: &IdTokenRules,
    http: &IdpHttp,
    settings: &OidcSettings,
) -> Result<IdTokenValidator, OidcSetupError> {
    let issuer_url =
        IssuerUrl::new(extra.issuer.clone()).map_err(|e| config("extra_jwt_issuers", e))?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        extra.issuer.trim_end_matches('/')
    );
    let metadata = CoreProviderMetadata::discover_async(issuer_url, &http.for_openidconnect())
        .await
        .map_err(|e| OidcSetupError::Discovery {
            url: discovery_url,
            reason: describe_discovery_error(&e),
        })?;
    let keys = JwksCache::new(
        metadata.jwks_uri().clone(),
        http.clone(),
        metadata.jwks().clone(),
        settings.jwks_refetch_interval,
    );
    Ok(IdTokenValidator::new(
        IdTokenRules {
            client_id: extra.audience.clone(),
            issuer: extra.issuer.clone(),
            trusted_audiences: Vec::new(),
            ..rules.clone()
        },
        keys,
    ))
}

fn config(setting: &'static str, reason: impl ToString) -> OidcSetupError {
    OidcSetupError::Config {
        setting,
        reason: reason.to_string(),
    }
}

impl OidcProvider {
    /// Fetches the provider's discovery document and keys and checks them.
    pub async fn discover(settings: &OidcSettings) -> Result<Self, OidcSetupError> {
        let issuer_url =
            IssuerUrl::new(settings.issuer.clone()).map_err(|e| config("issuer", e))?;
        let redirect = RedirectUrl::new(settings.redirect_url.clone())
            .map_err(|e| config("redirect_url", e))?;
        let allowed_algs = settings
            .allowed_algs
            .iter()
            .map(|name| {
                serde_plain_alg(name).ok_or_else(|| {
                    config(
                        "allowed_algs",
                        format!("unknown or unsupported algorithm {name:?}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = match &settings.http_client {
            Some(client) => IdpHttp::with_client(client.clone(), settings.request_timeout),
            None => IdpHttp::trusting(
                settings.connect_timeout,
                settings.request_timeout,
                &settings.ca_certificates,
            )
            .map_err(|reason| OidcSetupError::Config {
                setting: "provider_ca_files",
                reason,
            })?,
        };
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            settings.issuer.trim_end_matches('/')
        );
        // The crate checks that the document's `issuer` equals the configured one.
        let metadata =
            ProviderMetadataWithRevocation::discover_async(issuer_url, &http.for_openidconnect())
                .await
                .map_err(|e| OidcSetupError::Discovery {
                    url: discovery_url.clone(),
                    reason: describe_discovery_error(&e),
                })?;
        let token_url =
            metadata
                .token_endpoint()
                .cloned()
                .ok_or_else(|| OidcSetupError::Discovery {
                    url: discovery_url.clone(),
                    reason: "the provider has no token endpoint".into(),
                })?;
        let auth_type = client_auth(metadata.token_endpoint_auth_methods_supported());
        let auth_type_is_body = matches!(auth_type, AuthType::RequestBody);
        let end_session = metadata.additional_metadata().end_session_endpoint.clone();
        let revocation = metadata
            .additional_metadata()
            .additional_metadata
            .revocation_endpoint
            .clone();
        let keys = JwksCache::new(
            metadata.jwks_uri().clone(),
            http.clone(),
            metadata.jwks().clone(),
            settings.jwks_refetch_interval,
        );
        let client = OidcClient::<EndpointMaybeSet>::from_provider_metadata(
            metadata,
            ClientId::new(settings.client_id.clone()),
            (settings.client_secret.as_ref()).map(|s| ClientSecret::new(s.secret().to_owned())),
        )
        .set_token_uri(token_url)
        .set_redirect_uri(redirect)
        .set_auth_type(auth_type);
        let rules = IdTokenRules {
            client_id: settings.client_id.clone(),
            issuer: settings.issuer.clone(),
            allowed_algs,
            clock_skew: settings.clock_skew,
            groups_claim: settings.groups_claim.clone(),
            trusted_audiences: settings.trusted_audiences.clone(),
            allow_unverified_email: settings.allow_unverified_email,
        };
        // One validator per other audience, over the same cached keys.
        let other_audiences = settings
            .extra_jwt_audiences
            .iter()
            .map(|audience| {
                IdTokenValidator::new(
                    IdTokenRules {
                        client_id: audience.clone(),
                        ..rules.clone()
                    },
                    keys.clone(),
                )
            })
            .collect();
        let mut other_issuers = Vec::new();
        for extra in &settings.extra_jwt_issuers {
            other_issuers.push(bearer_validator_for(extra, &rules, &http, settings).await?);
        }
        let logout_tokens = logout_token::LogoutTokenValidator::new(rules.clone(), keys.clone());
        let validator = IdTokenValidator::new(rules, keys);
        let mut scopes: Vec<Scope> = settings
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
            .map(|s| Scope::new(s.clone()))
            .collect();
        scopes.dedup();
        Ok(Self {
            client,
            http,
            validator,
            logout_tokens,
            other_audiences,
            other_issuers,
            extra_auth_params: with_provider_defaults(
                &settings.issuer,
                &settings.extra_auth_params,
            ),
            issuer: settings.issuer.clone(),
            scopes,
            end_session,
            revocation,
            client_id: settings.client_id.clone(),
            userinfo_claims: settings.userinfo_claims.clone(),
            client_secret: settings.client_secret.clone(),
            auth_type_is_body,
            default_access_ttl: settings.default_access_ttl,
            clock: Arc::new(SystemClock),
        })
    }

    /// Whether the provider answers: its discovery document fetched with
    /// the provider's own client, within `timeout`. The reason of a failure
    /// names the URL and what failed (for the log).
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        self.http
            .probe(&url, timeout)
            .await
            .map_err(|failure| format!("{url}: {failure}"))
    }

    /// The same provider with `clock` for the expiry times it computes.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The issuer this provider was discovered from.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Validates an ID token an API client presents as a bearer token: for
    /// this client, for one of `extra_jwt_audiences` (same issuer, keys and
    /// rules), or from one of `extra_jwt_issuers` for its audience (its own
    /// keys, the same rules otherwise). The error is the one for this client,
    /// or the listed issuer's when the token names one.
    pub async fn validate_bearer(
        &self,
        token: &str,
    ) -> Result<id_token::ValidatedIdToken, id_token::IdTokenError> {
        let error = match self.validator.validate(token, None).await {
            Ok(validated) => return Ok(validated),
            Err(error) => error,
        };
        match error {
            id_token::IdTokenError::WrongAudience(_)
            | id_token::IdTokenError::WrongAuthorizedParty(_) => {
                for other in &self.other_audiences {
                    if let Ok(validated) = other.validate(token, None).await {
                        return Ok(validated);
                    }
                }
            }
            // The issuer is checked before the signature, so a token of an
            // unlisted issuer costs no key fetch anywhere.
            id_token::IdTokenError::WrongIssuer(_) => {
                for other in &self.other_issuers {
                    match other.validate(token, None).await {
                        Ok(validated) => return Ok(validated),
                        Err(id_token::IdTokenError::WrongIssuer(_)) => continue,
                        // Its issuer, but not valid: that is the reason.
                        Err(reason) => return Err(reason),
                    }
                }
            }
            _ => {}
        }
        Err(error)
    }

    /// Validates a back-channel logout token (Back-Channel Logout 1.0 §2.6)
    /// as of this provider's clock; replays are the caller's to refuse.
    pub async fn validate_logout_token(
        &self,
        token: &str,
    ) -> Result<logout_token::LogoutToken, logout_token::LogoutTokenError> {
        self.logout_tokens
            .validate(token, self.clock.now_ms())
            .await
    }

    /// The ID token validator (for API clients' bearer tokens, metrics and tests).
    pub fn validator(&self) -> &IdTokenValidator {
        &self.validator
    }

    /// RFC 9207: when the authorization response carries `iss`, it must be this issuer.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), IdpError> {
        match iss {
            Some(iss) if iss != self.issuer => Err(IdpError::Invalid(format!(
                "the authorization response came from issuer {iss:?}, expected {:?}",
                self.issuer
            ))),
            _ => Ok(()),
        }
    }

    /// Revokes `refresh_token` at the provider's revocation endpoint (RFC
    /// 7009), when discovery names one: `Ok(false)` when it names none. The
    /// client authenticates as at the token endpoint. Bounded by the provider
    /// timeouts; the reason of a failure names no token.
    ///
    /// Sent here rather than through `openidconnect`'s `revoke_token`, which
    /// refuses `http://` endpoints (the development IdP and test providers on
    /// loopback); the request is RFC 7009 §2.1's form POST, nothing more.
    pub async fn revoke_refresh_token(
        &self,
        refresh_token: &secret::RefreshToken,
    ) -> Result<bool, String> {
        let Some(endpoint) = &self.revocation else {
            return Ok(false);
        };
        let request = self.revocation_request(endpoint, refresh_token.secret())?;
        let response = self.http.execute(request).await.map_err(|e| match e {
            HttpFailure::ServerError(status) => format!("revocation endpoint: HTTP {status}"),
            HttpFailure::Transport(reason) => format!("revocation endpoint: {reason}"),
        })?;
        if response.status().is_success() {
            Ok(true)
        } else {
            Err(format!(
                "revocation endpoint: HTTP {}",
                response.status().as_u16()
            ))
        }
    }

    fn revocation_request(
        &self,
        endpoint: &openidconnect::RevocationUrl,
        refresh_token: &str,
    ) -> Result<openidconnect::HttpRequest, String> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", refresh_token);
        form.append_pair("token_type_hint", "refresh_token");
        let mut request = openidconnect::http::Request::builder()
            .method(openidconnect::http::Method::POST)
            .uri(endpoint.as_str())
            .header(
                openidconnect::http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(openidconnect::http::header::ACCEPT, "application/json");
        match (&self.client_secret, self.auth_type_is_body) {
            (Some(secret), false) => {
                // RFC 6749 2.3.1: each part form-urlencoded, then base64.
                let encode = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let credentials = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{}:{}", encode(&self.client_id), encode(secret.secret())),
                );
                request = request.header(
                    openidconnect::http::header::AUTHORIZATION,
                    format!("Basic {credentials}"),
                );
            }
            (secret, _) => {
                form.append_pair("client_id", &self.client_id);
                if let Some(secret) = secret {
                    form.append_pair("client_secret", secret.secret());
                }
            }
        }
        request
            .body(form.finish().into_bytes())
            .map_err(|e| format!("revocation endpoint: {e}"))
    }

    /// The provider's RP-initiated logout URL, when it has an `end_session_endpoint`.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&secret::RawIdToken>,
        post_logout_redirect: Option<&str>,
    ) -> Option<String> {
        let endpoint = self.end_session.clone()?;
        let mut request =
            LogoutRequest::from(endpoint).set_client_id(self.client.client_id().clone());
        if let Some(hint) =
            id_token_hint.and_then(|raw| raw.secret().parse::<id_token::LatchkeyIdToken>().ok())
        {
            request = request.set_id_token_hint(&hint);
        }
        if let Some(redirect) =
            post_logout_redirect.and_then(|u| PostLogoutRedirectUrl::new(u.to_owned()).ok())
        {
            request = request.set_post_logout_redirect_uri(redirect);
        }
        Some(request.http_get_url().to_string())
    }

    /// Tokens and the validated identity from a token response.
    async fn grant_from(
        &self,
        response: &TokenResponseWithClaims,
        nonce: Option<&str>,
    ) -> Result<Grant, IdpError> {
        let identity = match response.id_token() {
            Some(token) => Some(
                self.validator
                    .validate(&token.to_string(), nonce)
                    .await
                    .map_err(|e| IdpError::Invalid(e.to_string()))?
                    .identity,
            ),
            None => None,
        };
        let ttl = response.expires_in().unwrap_or(self.default_access_ttl);
        Ok(Grant {
            partial_identity: false,
            identity,
            tokens: TokenSet {
                access_token: secret::AccessToken::new(response.access_token().secret().clone()),
                access_expires_at: self.clock.now_ms().saturating_add(duration_ms(ttl)),
                refresh_token: response
                    .refresh_token()
                    .map(|t| secret::RefreshToken::new(t.secret().clone())),
                id_token: response
                    .id_token()
                    .map(|t| secret::RawIdToken::new(t.to_string())),
            },
        })
    }

    /// Fills email and groups from userinfo; the userinfo `sub` must be the ID token's.
    async fn with_userinfo(
        &self,
        identity: Identity,
        access_token: &secret::AccessToken,
    ) -> Result<Identity, IdpError> {
        let Ok(request) = self.client.user_info(
            AccessToken::new(access_token.secret().to_owned()),
            Some(SubjectIdentifier::new(identity.subject.clone())),
        ) else {
            return Ok(identity); // the provider has no userinfo endpoint
        };
        let claims: UserInfoClaims<ExtraClaims, CoreGenderClaim> = request
            .request_async(&self.http.for_openidconnect())
            .await
            .map_err(|e| match e {
                openidconnect::UserInfoError::Request(HttpFailure::ServerError(status)) => {
                    IdpError::Transient(format!("userinfo endpoint: HTTP {status}"))
                }
                openidconnect::UserInfoError::Request(HttpFailure::Transport(reason)) => {
                    IdpError::Transient(format!("userinfo endpoint: {reason}"))
                }
                openidconnect::UserInfoError::ClaimsVerification(reason) => {
                    IdpError::Invalid(format!("userinfo response: {reason}"))
                }
                other => IdpError::Invalid(format!("userinfo endpoint: {other}")),
            })?;
        let groups = claims.additional_claims().strings(self.groups_claim());
        let userinfo_claims = match serde_json::to_value(&claims) {
            Ok(serde_json::Value::Object(all)) => all
                .into_iter()
                .filter(|(name, _)| self.userinfo_claims.contains(name))
                .collect(),
            _ => serde_json::Map::new(),
        };
        Ok(Identity {
            userinfo_claims,
            email: identity.email.or_else(|| {
                id_token::usable_email(
                    claims.email().map(|e| e.as_str()),
                    claims.email_verified(),
                    self.validator.rules().allow_unverified_email,
                )
            }),
            groups: if identity.groups.is_empty() {
                groups
            } else {
                identity.groups
            },
            ..identity
        })
    }

    fn groups_claim(&self) -> &str {
        &self.validator.rules().groups_claim
    }
}

/// `client_secret_basic` unless the provider offers only `client_secret_post`
/// (an absent list means the default, `client_secret_basic`).
fn client_auth(supported: Option<&Vec<CoreClientAuthMethod>>) -> AuthType {
    match supported {
        Some(methods)
            if !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                && methods.contains(&CoreClientAuthMethod::ClientSecretPost) =>
        {
            AuthType::RequestBody
        }
        _ => AuthType::BasicAuth,
    }
}

/// Maps a token endpoint failure; never includes the response body.
fn token_error<T: openidconnect::ErrorResponse + 'static>(
    error: RequestTokenError<HttpFailure, T>,
) -> IdpError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let text = serde_json::to_value(&response)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "error".into());
            if text == "invalid_grant" {
                IdpError::InvalidGrant(format!("token endpoint: {text}"))
            } else {
                IdpError::Invalid(format!("token endpoint: {text}"))
            }
        }
        RequestTokenError::Request(HttpFailure::ServerError(status)) => {
            IdpError::Transient(format!("token endpoint: HTTP {status}"))
        }
        RequestTokenError::Request(HttpFailure::Transport(reason)) => {
            IdpError::Transient(format!("token endpoint: {reason}"))
        }
        RequestTokenError::Parse(error, _body) => IdpError::Invalid(format!(
            "token endpoint: unreadable response at {}",
            error.path()
        )),
        RequestTokenError::Other(reason) => IdpError::Invalid(format!("token endpoint: {reason}")),
    }
}

fn describe_discovery_error(error: &openidconnect::DiscoveryError<HttpFailure>) -> String {
    use openidconnect::DiscoveryError as D;
    match error {
        D::Request(failure) => failure.to_string(),
        D::Response(status, _, message) => format!("{message} (HTTP {status})"),
        D::Parse(e) => format!("unreadable document at {}: {}", e.path(), e.inner()),
        D::UrlParse(e) => format!("bad URL: {e}"),
        D::Validation(m) | D::Other(m) => m.clone(),
        other => other.to_string(),
    }
}

/// A JOSE algorithm name as the crate's enum, or `None` if unknown.
fn serde_plain_alg(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    let alg: CoreJwsSigningAlgorithm =
        serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()?;
    match alg {
        CoreJwsSigningAlgorithm::None => None,
        alg => Some(alg),
    }
}

/// A `prompt` value as the crate's type.
fn prompt_of(word: &str) -> CoreAuthPrompt {
    match word {
        "none" => CoreAuthPrompt::None,
        "login" => CoreAuthPrompt::Login,
        "consent" => CoreAuthPrompt::Consent,
        "select_account" => CoreAuthPrompt::SelectAccount,
        other => CoreAuthPrompt::Extension(other.to_owned()),
    }
}

#[async_trait]
impl IdentityProvider for OidcProvider {
    fn authorization_url(&self, request: &AuthorizationRequest) -> String {
        let verifier = PkceCodeVerifier::new(request.pkce_verifier.secret().to_owned());
        let state = request.state.secret().to_owned();
        let nonce = request.nonce.secret().to_owned();
        let mut builder = self
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
        let mut prompted = false;
        for (name, value) in self.extra_auth_params.iter().chain(&request.passed) {
            if PROTOCOL_PARAMETERS.contains(&name.as_str()) {
                continue; // checked before; never let one through
            }
            if name == "prompt" {
                // One `prompt`, space-separated, as the crate writes it.
                for word in value.split_whitespace() {
                    builder = builder.add_prompt(prompt_of(word));
                }
                prompted = true;
            } else {
                builder = builder.add_extra_param(name.clone(), value.clone());
            }
        }
        if !prompted && self.scopes.iter().any(|s| s.as_str() == "offline_access") {
            // OIDC Core 11: offline_access is granted only after consent
            // (panva's oidc-provider enforces it).
            builder = builder.add_prompt(CoreAuthPrompt::Consent);
        }
        let (url, _, _) = builder.url();
        url.to_string()
    }

    async fn exchange_code(&self, exchange: CodeExchange) -> Result<Grant, IdpError> {
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(exchange.code.into_secret()))
            .set_pkce_verifier(PkceCodeVerifier::new(exchange.pkce_verifier.into_secret()))
            .request_async(&self.http.for_openidconnect())
            .await
            .map_err(token_error)?;
        let grant = self
            .grant_from(&response, Some(exchange.nonce.secret()))
            .await?;
        let Some(identity) = grant.identity else {
            return Err(IdpError::Invalid(
                "the token response has no ID token".into(),
            ));
        };
        let identity = self
            .with_userinfo(identity, &grant.tokens.access_token)
            .await?;
        Ok(Grant {
            identity: Some(identity),
            tokens: grant.tokens,
            partial_identity: false,
        })
    }

    async fn refresh(&self, refresh_token: &secret::RefreshToken) -> Result<Grant, IdpError> {
        // No `scope` parameter: some providers refuse a repeated offline_access.
        let token = RefreshToken::new(refresh_token.secret().to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .request_async(&self.http.for_openidconnect())
            .await
            .map_err(token_error)?;
        let grant = self.grant_from(&response, None).await?;
        // A new ID token replaces the identity: ask userinfo again for what
        // the ID token does not say (email, groups), as at login. The refresh
        // token may already have rotated, so a userinfo failure must not fail
        // the refresh: the session then keeps what it knew.
        let Some(identity) = grant.identity.clone() else {
            return Ok(grant);
        };
        match self
            .with_userinfo(identity, &grant.tokens.access_token)
            .await
        {
            Ok(identity) => Ok(Grant {
                identity: Some(identity),
                ..grant
            }),
            Err(error) => {
                tracing::warn!(%error, "userinfo after a refresh failed; keeping the session's claims");
                Ok(Grant {
                    partial_identity: true,
                    ..grant
                })
            }
        }
    }
}

/// Google's issuer: it issues refresh tokens only for `access_type=offline`.
const GOOGLE_ISSUER: &str = "https://accounts.google.com";

/// `extra_auth_params` with what a known provider needs that the operator
/// did not set: `access_type=offline` for Google, so that its sessions can
/// refresh (Google sends a refresh token at the first consent; add
/// `prompt=consent` to get one at every sign-in).
fn with_provider_defaults(issuer: &str, params: &[(String, String)]) -> Vec<(String, String)> {
    let mut params = params.to_vec();
    let google = issuer.trim_end_matches('/') == GOOGLE_ISSUER;
    if google && !params.iter().any(|(name, _)| name == "access_type") {
        params.push(("access_type".into(), "offline".into()));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_gets_offline_access_unless_told_otherwise() {
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            with_provider_defaults("https://accounts.google.com", &[pair("hd", "corp.com")]),
            [pair("hd", "corp.com"), pair("access_type", "offline")]
        );
        assert_eq!(
            with_provider_defaults(
                "https://accounts.google.com",
                &[pair("access_type", "online")]
            ),
            [pair("access_type", "online")]
        );
        for other in [
            "https://login.example.com",
            "https://accounts.google.com.evil.test",
        ] {
            assert_eq!(with_provider_defaults(other, &[]), []);
        }
    }

    #[test]
    fn client_authentication_follows_discovery() {
        use CoreClientAuthMethod::{ClientSecretBasic, ClientSecretPost, PrivateKeyJwt};
        let pick = |methods: Option<Vec<CoreClientAuthMethod>>| {
            matches!(client_auth(methods.as_ref()), AuthType::RequestBody)
        };
        assert!(!pick(None), "default is basic");
        assert!(!pick(Some(vec![ClientSecretBasic, ClientSecretPost])));
        assert!(pick(Some(vec![ClientSecretPost])));
        assert!(pick(Some(vec![PrivateKeyJwt, ClientSecretPost])));
        assert!(!pick(Some(vec![ClientSecretBasic])));
    }

    #[test]
    fn algorithm_names_are_parsed_and_none_is_refused() {
        assert_eq!(
            serde_plain_alg("RS256"),
            Some(CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256)
        );
        assert_eq!(
            serde_plain_alg("ES256"),
            Some(CoreJwsSigningAlgorithm::EcdsaP256Sha256)
        );
        assert_eq!(serde_plain_alg("none"), None);
        assert_eq!(serde_plain_alg("RS999"), None);
    }
}

//! Settings for `latchkey serve`: a TOML file, `LATCHKEY_*` environment
//! variables and `--kebab-case` flags, in that order of increasing precedence,
//! over built-in defaults; validated at start with messages that name the
//! setting and the fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use regex::Regex;
use serde::Deserialize;

pub use crate::oidc::JwtIssuer;
use crate::secret::{ClientSecret, CookieSecret, KeyMaterial};

/// Every setting, each optional, as read from one source. `clap` fills it from
/// flags and environment variables, `toml` from the file.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Address to listen on [default: 127.0.0.1:4180].
    #[arg(long, env = "LATCHKEY_LISTEN")]
    pub listen: Option<String>,
    /// The OpenID Provider's issuer URL (exactly as in its discovery document).
    #[arg(long, env = "LATCHKEY_ISSUER")]
    pub issuer: Option<String>,
    /// The client id registered at the provider.
    #[arg(long, env = "LATCHKEY_CLIENT_ID")]
    pub client_id: Option<String>,
    /// The client secret (prefer client_secret_file).
    #[arg(long, env = "LATCHKEY_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<ClientSecret>,
    /// A file holding the client secret.
    #[arg(long, env = "LATCHKEY_CLIENT_SECRET_FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// The callback URL registered at the provider: https://HOST/oauth2/callback.
    #[arg(long, env = "LATCHKEY_REDIRECT_URL")]
    pub redirect_url: Option<String>,
    /// The app to proxy to (http://HOST:PORT); absent = forward-auth only.
    #[arg(long, env = "LATCHKEY_UPSTREAM")]
    pub upstream: Option<String>,
    /// The store URL [default: sqlite://latchkey.db].
    #[arg(long, env = "LATCHKEY_STORE")]
    pub store: Option<StoreUrl>,
    /// Base64 of 32 random bytes that encrypt cookies (openssl rand -base64 32;
    /// 16 or 24 bytes, URL-safe base64 or raw text as oauth2-proxy takes them
    /// also work). Prefer cookie_secret_file.
    #[arg(long, env = "LATCHKEY_COOKIE_SECRET", hide_env_values = true)]
    pub cookie_secret: Option<CookieSecret>,
    /// A file holding the cookie secret.
    #[arg(long, env = "LATCHKEY_COOKIE_SECRET_FILE")]
    pub cookie_secret_file: Option<PathBuf>,
    /// Earlier cookie secrets: they still decrypt (cookies are re-encrypted
    /// with cookie_secret when used), so a rotation signs nobody out.
    #[arg(
        long,
        env = "LATCHKEY_PREVIOUS_COOKIE_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub previous_cookie_secrets: Option<Vec<CookieSecret>>,
    /// Name of the session cookie [default: _latchkey; __Host- prefixed over https].
    #[arg(long, env = "LATCHKEY_COOKIE_NAME")]
    pub cookie_name: Option<String>,
    /// Scopes to request [default: openid,email,profile].
    #[arg(long, env = "LATCHKEY_SCOPES", value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Only users whose email is in one of these domains (empty: any).
    #[arg(long, env = "LATCHKEY_EMAIL_DOMAINS", value_delimiter = ',')]
    pub email_domains: Option<Vec<String>>,
    /// Also allow these exact email addresses.
    #[arg(long, env = "LATCHKEY_ALLOWED_EMAILS", value_delimiter = ',')]
    pub allowed_emails: Option<Vec<String>>,
    /// Only members of at least one of these groups (empty: any).
    #[arg(long, env = "LATCHKEY_ALLOWED_GROUPS", value_delimiter = ',')]
    pub allowed_groups: Option<Vec<String>>,
    /// The claim holding group names [default: groups].
    #[arg(long, env = "LATCHKEY_GROUPS_CLAIM")]
    pub groups_claim: Option<String>,
    /// Routes served without authentication: METHOD=regex or regex, matched
    /// against the canonical path only and anchored as a whole. Repeat the
    /// flag, or give a TOML array (`["GET=^/a{1,3}$", "^/b"]`); a plain list
    /// is split on the commas outside `{}`, `[]` and `()`.
    #[arg(long, env = "LATCHKEY_SKIP_AUTH_ROUTES")]
    pub skip_auth_routes: Option<Vec<String>>,
    /// Send the access token upstream as Authorization: Bearer [default: false].
    #[arg(long, env = "LATCHKEY_PASS_ACCESS_TOKEN", num_args = 0..=1, default_missing_value = "true")]
    pub pass_access_token: Option<bool>,
    /// Session lifetime [default: 7d].
    #[arg(long, env = "LATCHKEY_SESSION_TTL")]
    pub session_ttl: Option<String>,
    /// How long a started login may take [default: 10m].
    #[arg(long, env = "LATCHKEY_LOGIN_TTL")]
    pub login_ttl: Option<String>,
    /// How long one callback may spend exchanging the code before duplicates
    /// treat the login as failed [default: 30s].
    #[arg(long, env = "LATCHKEY_EXCHANGE_LEASE")]
    pub exchange_lease: Option<String>,
    /// Refresh access tokens this long before they expire [default: 60s].
    #[arg(long, env = "LATCHKEY_REFRESH_BEFORE_EXPIRY")]
    pub refresh_before_expiry: Option<String>,
    /// Where the provider sends the browser after sign-out.
    #[arg(long, env = "LATCHKEY_POST_LOGOUT_REDIRECT_URL")]
    pub post_logout_redirect_url: Option<String>,
    /// Accepted ID token signing algorithms [default: RS256,ES256].
    #[arg(long, env = "LATCHKEY_ALLOWED_ALGS", value_delimiter = ',')]
    pub allowed_algs: Option<Vec<String>>,
    /// Clock skew tolerated on token times [default: 60s].
    #[arg(long, env = "LATCHKEY_CLOCK_SKEW")]
    pub clock_skew: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "LATCHKEY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Let the client's routing overrides (X-Original-URL, X-Rewrite-URL,
    /// X-HTTP-Method-Override, …) reach the upstream [default: false].
    #[arg(long, env = "LATCHKEY_PASS_ROUTING_HEADERS", num_args = 0..=1, default_missing_value = "true")]
    pub pass_routing_headers: Option<bool>,
    /// How long a client may take to send a request head, from its first
    /// byte [default: 10s].
    #[arg(long, env = "LATCHKEY_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// How long a kept-alive connection may wait for its next request
    /// [default: 60s].
    #[arg(long, env = "LATCHKEY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Most client connections served at once; more are closed at accept
    /// [default: 1024].
    #[arg(long, env = "LATCHKEY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers) in bytes; larger
    /// heads get 431 [default: 32768].
    #[arg(long, env = "LATCHKEY_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// A second address that serves /metrics, /healthz and /readyz; when set,
    /// the main listener no longer serves /metrics [default: none].
    #[arg(long, env = "LATCHKEY_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,
    /// Use `email` even when the provider does not say `email_verified: true`
    /// (unsafe where users can set their own email) [default: false].
    #[arg(long, env = "LATCHKEY_INSECURE_ALLOW_UNVERIFIED_EMAIL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_allow_unverified_email: Option<bool>,
    /// Accept the provider's ID tokens for this client as `Authorization:
    /// Bearer` from API clients (oauth2-proxy's name) [default: false].
    #[arg(long, env = "LATCHKEY_SKIP_JWT_BEARER_TOKENS", num_args = 0..=1, default_missing_value = "true")]
    pub skip_jwt_bearer_tokens: Option<bool>,
    /// Other client ids of the same provider whose ID tokens are accepted as
    /// bearer tokens too (with skip_jwt_bearer_tokens).
    #[arg(long, env = "LATCHKEY_EXTRA_JWT_AUDIENCES", value_delimiter = ',')]
    pub extra_jwt_audiences: Option<Vec<String>>,
    /// Other providers whose ID tokens are accepted as bearer tokens, as
    /// ISSUER=AUDIENCE pairs (oauth2-proxy's format; with skip_jwt_bearer_tokens).
    #[arg(long, env = "LATCHKEY_EXTRA_JWT_ISSUERS", value_delimiter = ',')]
    pub extra_jwt_issuers: Option<Vec<String>>,
    /// Parameters added to every authorization request, as NAME=VALUE
    /// (e.g. audience=api, access_type=offline); never a protocol parameter.
    #[arg(long, env = "LATCHKEY_EXTRA_AUTH_PARAMS", value_delimiter = ',')]
    pub extra_auth_params: Option<Vec<String>>,
    /// The acr_values to request (e.g. "mfa") [default: none].
    #[arg(long, env = "LATCHKEY_ACR_VALUES")]
    pub acr_values: Option<String>,
    /// Parameters of /oauth2/start passed on to the provider: any of
    /// login_hint, domain_hint, prompt, ui_locales [default: none].
    #[arg(long, env = "LATCHKEY_PASS_AUTH_PARAMS", value_delimiter = ',')]
    pub pass_auth_params: Option<Vec<String>>,
    /// Requests per minute one client address may make to /oauth2/start and
    /// /oauth2/callback (bursts of as many); 0: no limit [default: 120].
    #[arg(long, env = "LATCHKEY_LOGIN_RATE_PER_MINUTE")]
    pub login_rate_per_minute: Option<u32>,
    /// /oauth2/sign_in sends the browser straight to the provider instead of
    /// showing a page with a sign-in button [default: false, as oauth2-proxy].
    #[arg(long, env = "LATCHKEY_SKIP_PROVIDER_BUTTON", num_args = 0..=1, default_missing_value = "true")]
    pub skip_provider_button: Option<bool>,
    /// Sign-out only by POST (a button on latchkey's "Sign out?" page), so
    /// that another site cannot sign users out with a link [default: false,
    /// GET works too, as oauth2-proxy].
    #[arg(long, env = "LATCHKEY_SIGN_OUT_POST_ONLY", num_args = 0..=1, default_missing_value = "true")]
    pub sign_out_post_only: Option<bool>,
    /// Liveness path besides /healthz, as oauth2-proxy's; empty: none
    /// [default: /ping].
    #[arg(long, env = "LATCHKEY_PING_PATH")]
    pub ping_path: Option<String>,
    /// The Cache-Control given to a signed-in caller's upstream response
    /// that sets none, so that a shared computer's back button or cache does
    /// not show a signed-out user's pages; empty: none [default: private,
    /// no-store].
    #[arg(long, env = "LATCHKEY_UPSTREAM_CACHE_CONTROL")]
    pub upstream_cache_control: Option<String>,
    /// Readiness path besides /readyz, as oauth2-proxy's; empty: none
    /// [default: /ready].
    #[arg(long, env = "LATCHKEY_READY_PATH")]
    pub ready_path: Option<String>,
    /// Set every cookie for this domain and its subdomains (e.g.
    /// .example.com: one auth host for many apps); the redirect_url's host
    /// must be in it [default: none, host-only cookies].
    #[arg(long, env = "LATCHKEY_COOKIE_DOMAIN")]
    pub cookie_domain: Option<String>,
    /// Hosts that rd may name besides this one: app.example.com,
    /// .example.com or *.example.com (and subdomains), with :PORT or :*
    /// [default: none, local paths only].
    #[arg(long, env = "LATCHKEY_WHITELIST_DOMAINS", value_delimiter = ',')]
    pub whitelist_domains: Option<Vec<String>>,
    /// PEM files of CA certificates to trust for the provider, besides the
    /// system trust store (a provider behind a company CA).
    #[arg(long, env = "LATCHKEY_PROVIDER_CA_FILES", value_delimiter = ',')]
    pub provider_ca_files: Option<Vec<PathBuf>>,
    /// The claim whose value is X-Forwarded-User / X-Auth-Request-User:
    /// sub, email, preferred_username or any ID token claim [default: sub].
    #[arg(long, env = "LATCHKEY_USER_ID_CLAIM")]
    pub user_id_claim: Option<String>,
    /// More headers, each carrying a claim of the ID token, as
    /// HEADER=CLAIM (a nested claim as a/b/c), e.g. X-Department=department.
    #[arg(long, env = "LATCHKEY_CLAIM_HEADERS", value_delimiter = ',')]
    pub claim_headers: Option<Vec<String>>,
    /// Joins group names in the groups headers [default: ,].
    #[arg(long, env = "LATCHKEY_GROUPS_SEPARATOR")]
    pub groups_separator: Option<String>,
    /// Send the ID token upstream as X-Forwarded-Id-Token (forward-auth:
    /// X-Auth-Request-Id-Token) [default: false].
    #[arg(long, env = "LATCHKEY_PASS_ID_TOKEN", num_args = 0..=1, default_missing_value = "true")]
    pub pass_id_token: Option<bool>,
    /// Send the ID token upstream as Authorization: Bearer (forward-auth:
    /// an Authorization response header), as oauth2-proxy's option does
    /// [default: false].
    #[arg(long, env = "LATCHKEY_PASS_AUTHORIZATION_HEADER", num_args = 0..=1, default_missing_value = "true")]
    pub pass_authorization_header: Option<bool>,
    /// PEM files of CA certificates to trust for an https:// upstream,
    /// besides the system trust store.
    #[arg(long, env = "LATCHKEY_UPSTREAM_CA_FILES", value_delimiter = ',')]
    pub upstream_ca_files: Option<Vec<PathBuf>>,
    /// A client certificate (PEM chain) to present to an https:// upstream
    /// that asks for one, with upstream_client_key_file.
    #[arg(long, env = "LATCHKEY_UPSTREAM_CLIENT_CERT_FILE")]
    pub upstream_client_cert_file: Option<PathBuf>,
    /// The private key (PEM) of upstream_client_cert_file.
    #[arg(long, env = "LATCHKEY_UPSTREAM_CLIENT_KEY_FILE")]
    pub upstream_client_key_file: Option<PathBuf>,
    /// Serve https on `listen` with this certificate chain (PEM) and
    /// tls_key_file; re-read on SIGHUP.
    #[arg(long, env = "LATCHKEY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of tls_cert_file.
    #[arg(long, env = "LATCHKEY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// The oldest TLS version the listener accepts: 1.2 or 1.3 [default: 1.2].
    #[arg(long, env = "LATCHKEY_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// A directory whose error.html, sign_in.html, signed_out.html, sign_out.html or
    /// layout.html replace latchkey's own (minijinja templates; see the
    /// README) [default: none, the built-in pages].
    #[arg(long, env = "LATCHKEY_CUSTOM_TEMPLATES_DIR")]
    pub custom_templates_dir: Option<PathBuf>,
    /// A line of text above every page's content and after its title: the
    /// app's or organisation's name [default: none].
    #[arg(long, env = "LATCHKEY_BANNER")]
    pub banner: Option<String>,
    /// A line of text below every page's content [default: none].
    #[arg(long, env = "LATCHKEY_FOOTER")]
    pub footer: Option<String>,
    /// A logo above every page's content: an https:// URL, or a .png, .jpg,
    /// .gif, .svg or .webp file of at most 100 KiB [default: none].
    #[arg(long, env = "LATCHKEY_CUSTOM_SIGN_IN_LOGO")]
    pub custom_sign_in_logo: Option<String>,
}

macro_rules! layer {
    ($high:expr, $low:expr, $($field:ident),* $(,)?) => {
        RawSettings { $($field: $high.$field.or($low.$field)),* }
    };
}

impl RawSettings {
    /// `self` where set, else `lower`.
    pub fn over(self, lower: RawSettings) -> RawSettings {
        layer!(
            self,
            lower,
            listen,
            issuer,
            client_id,
            client_secret,
            client_secret_file,
            redirect_url,
            upstream,
            store,
            cookie_secret,
            cookie_secret_file,
            previous_cookie_secrets,
            cookie_name,
            scopes,
            email_domains,
            allowed_emails,
            allowed_groups,
            groups_claim,
            skip_auth_routes,
            pass_access_token,
            session_ttl,
            login_ttl,
            exchange_lease,
            refresh_before_expiry,
            post_logout_redirect_url,
            allowed_algs,
            clock_skew,
            log_format,
            pass_routing_headers,
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_header_bytes,
            metrics_address,
            insecure_allow_unverified_email,
            skip_jwt_bearer_tokens,
            extra_jwt_audiences,
            extra_jwt_issuers,
            extra_auth_params,
            acr_values,
            pass_auth_params,
            login_rate_per_minute,
            skip_provider_button,
            sign_out_post_only,
            ping_path,
            upstream_cache_control,
            ready_path,
            cookie_domain,
            whitelist_domains,
            provider_ca_files,
            user_id_claim,
            claim_headers,
            groups_separator,
            pass_id_token,
            pass_authorization_header,
            upstream_ca_files,
            upstream_client_cert_file,
            upstream_client_key_file,
            tls_cert_file,
            tls_key_file,
            tls_min_version,
            custom_templates_dir,
            banner,
            footer,
            custom_sign_in_logo,
        )
    }

    /// Settings read from flags and environment variables, with the lists
    /// that clap cannot split without breaking regexes (`skip_auth_routes`)
    /// split here: see [`route_list`].
    pub fn split_command_line_lists(mut self) -> Result<RawSettings, ConfigError> {
        if let Some(entries) = self.skip_auth_routes.take() {
            let mut routes = Vec::new();
            for entry in &entries {
                routes.extend(route_list(entry)?);
            }
            self.skip_auth_routes = Some(routes);
        }
        Ok(self)
    }

    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> Result<RawSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(
                "config",
                format!("cannot read {}: {e}", path.display()),
                "check the path given to --config",
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            error(
                "config",
                format!("{}: {}", path.display(), e.message()),
                "see the configuration reference in the README for the keys and their types",
            )
        })
    }
}

/// A route that needs no authentication.
#[derive(Debug, Clone)]
pub struct SkipRoute {
    /// The method it applies to; `None`: every method.
    pub method: Option<String>,
    /// Matched against the request path only (never the query).
    pub path: Regex,
}

impl SkipRoute {
    /// Whether a request with this method and path skips authentication.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && self.path.is_match(path)
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A store URL as configured: it may hold a password, so `Debug` prints it
/// with the password (and secret query parameters) redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::redact_url(&self.0))
    }
}

impl From<String> for StoreUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for StoreUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

/// Validated settings.
#[derive(Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The provider's issuer URL.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Option<ClientSecret>,
    /// The callback URL.
    pub redirect_url: url::Url,
    /// The upstream app; `None`: forward-auth only.
    pub upstream: Option<url::Url>,
    /// The store URL.
    pub store: String,
    /// 32 bytes of cookie key material (a shorter secret is expanded).
    pub cookie_secret: KeyMaterial,
    /// Earlier secrets' key material, for decryption only.
    pub previous_cookie_secrets: Vec<KeyMaterial>,
    /// Session cookie name (with `__Host-` over https).
    pub cookie_name: String,
    /// Requested scopes.
    pub scopes: Vec<String>,
    /// Allowed email domains (empty: any).
    pub email_domains: Vec<String>,
    /// Allowed email addresses.
    pub allowed_emails: Vec<String>,
    /// Allowed groups (empty: any).
    pub allowed_groups: Vec<String>,
    /// The groups claim.
    pub groups_claim: String,
    /// Unauthenticated routes.
    pub skip_auth_routes: Vec<SkipRoute>,
    /// Pass the access token upstream.
    pub pass_access_token: bool,
    /// Session lifetime.
    pub session_ttl: Duration,
    /// Login lifetime.
    pub login_ttl: Duration,
    /// Lease of one code exchange (and of one refresh).
    pub exchange_lease: Duration,
    /// Refresh window.
    pub refresh_before_expiry: Duration,
    /// Post-logout redirect.
    pub post_logout_redirect_url: Option<String>,
    /// Signing algorithms.
    pub allowed_algs: Vec<String>,
    /// Clock skew.
    pub clock_skew: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Let routing-override headers reach the upstream.
    pub pass_routing_headers: bool,
    /// What one client connection may hold.
    pub listener: ListenerLimits,
    /// The separate listener for /metrics and the probes, if any.
    pub metrics_address: Option<SocketAddr>,
    /// Use unverified emails.
    pub insecure_allow_unverified_email: bool,
    /// Accept bearer ID tokens from API clients.
    pub skip_jwt_bearer_tokens: bool,
    /// Other audiences accepted for bearer ID tokens.
    pub extra_jwt_audiences: Vec<String>,
    /// Other providers whose ID tokens are accepted as bearer tokens.
    pub extra_jwt_issuers: Vec<JwtIssuer>,
    /// Added to every authorization request (with `acr_values` among them).
    pub extra_auth_params: Vec<(String, String)>,
    /// `/oauth2/start` parameters passed on to the provider.
    pub pass_auth_params: Vec<String>,
    /// `/oauth2/sign_in` goes straight to the provider (no button page).
    pub skip_provider_button: bool,
    /// `GET /oauth2/sign_out` asks first; only a same-site POST signs out.
    pub sign_out_post_only: bool,
    /// oauth2-proxy's liveness path (`/ping`), if served.
    pub ping_path: Option<String>,
    /// The `Cache-Control` for signed-in upstream responses that set none
    /// (`upstream_cache_control`; `None`: left as they are).
    pub upstream_cache_control: Option<String>,
    /// oauth2-proxy's readiness path (`/ready`), if served.
    pub ready_path: Option<String>,
    /// The `Domain` of every cookie (lowercase, no leading dot), if not
    /// host-only.
    pub cookie_domain: Option<String>,
    /// Hosts `rd` may name (checked: see [`crate::web::redirect::Destinations`]).
    pub whitelist_domains: Vec<String>,
    /// `provider_ca_files` as given.
    pub provider_ca_files: Vec<PathBuf>,
    /// The CA certificates (DER) read from them.
    pub provider_ca: Vec<Vec<u8>>,
    /// The claim that names the user in the user headers.
    pub user_id_claim: String,
    /// Headers that carry a claim each.
    pub claim_headers: Vec<ClaimHeader>,
    /// Joins group names.
    pub groups_separator: String,
    /// Pass the ID token as its own header.
    pub pass_id_token: bool,
    /// Pass the ID token as `Authorization: Bearer`.
    pub pass_authorization_header: bool,
    /// CA certificates (DER) trusted for an `https://` upstream.
    pub upstream_ca: Vec<Vec<u8>>,
    /// The client certificate presented to the upstream.
    pub upstream_client_cert_file: Option<PathBuf>,
    /// Its private key.
    pub upstream_client_key_file: Option<PathBuf>,
    /// https on `listen` (`tls_cert_file`, `tls_key_file`, `tls_min_version`).
    pub listener_tls: Option<crate::tls::ListenerTls>,
    /// Sign-in requests per minute per client address (0: no limit).
    pub login_rate_per_minute: u32,
    /// The pages latchkey shows (`custom_templates_dir`, `banner`,
    /// `footer`, `custom_sign_in_logo`), checked and loaded.
    pub pages: std::sync::Arc<crate::web::templates::Pages>,
}

/// What one client connection may hold of the server: the defence against
/// slow or idle clients (slowloris) and oversized request heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// From the first byte of a request head to its end.
    pub header_read_timeout: Duration,
    /// Between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Bytes of one request head.
    pub max_header_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_url", &self.redirect_url.as_str())
            .field("upstream", &self.upstream.as_ref().map(url::Url::as_str))
            .field("store", &crate::store::redact_url(&self.store))
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Whether cookies are set `Secure` with the `__Host-` prefix.
    pub fn secure_cookies(&self) -> bool {
        self.redirect_url.scheme() == "https"
    }

    /// The prefix of every cookie name: `__Host-` over https with host-only
    /// cookies, `__Secure-` over https with `cookie_domain` (`__Host-`
    /// forbids a Domain), none over http.
    pub fn cookie_prefix(&self) -> &'static str {
        match (self.secure_cookies(), &self.cookie_domain) {
            (true, None) => "__Host-",
            (true, Some(_)) => "__Secure-",
            (false, _) => "",
        }
    }

    /// The session cookie's full name.
    pub fn session_cookie(&self) -> String {
        format!("{}{}", self.cookie_prefix(), self.cookie_name)
    }
}

/// A setting that is missing or wrong, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The TOML key.
    pub setting: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
    /// The other settings found wrong in the same check, in order.
    pub also: Vec<ConfigError>,
}

impl ConfigError {
    /// A problem with `setting`, and how to fix it.
    pub fn new(setting: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        error(setting, problem, fix)
    }

    fn render(&self) -> String {
        std::iter::once(self)
            .chain(&self.also)
            .map(|e| format!("setting `{}`: {}\n  fix: {}", e.setting, e.problem, e.fix))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn error(setting: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: problem.into(),
        fix: fix.into(),
        also: Vec::new(),
    }
}

fn env_name(setting: &str) -> String {
    format!("LATCHKEY_{}", setting.to_ascii_uppercase())
}

fn required(value: Option<String>, setting: &str, example: &str) -> Result<String, ConfigError> {
    value.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        error(
            setting,
            "missing",
            format!(
                "set `{setting} = {example}` in the config file, or --{} / {}",
                setting.replace('_', "-"),
                env_name(setting)
            ),
        )
    })
}

fn duration(value: Option<String>, setting: &str, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(text.trim()).map_err(|e| {
        error(
            setting,
            format!("invalid duration {text:?} ({e})"),
            "write durations like 60s, 10m, 12h or 7d",
        )
    })
}

/// The shortest `exchange_lease`: the provider call under a lease gets three
/// quarters of it, and no provider answers a token request in less.
const SHORTEST_LEASE: Duration = Duration::from_secs(1);

fn lease(value: Option<String>) -> Result<Duration, ConfigError> {
    let lease = duration(value, "exchange_lease", "30s")?;
    if lease < SHORTEST_LEASE {
        return Err(error(
            "exchange_lease",
            format!(
                "{} is too short: a provider call may take three quarters of the lease",
                humantime::format_duration(lease)
            ),
            "use at least 1s; the default, 30s, suits every provider",
        ));
    }
    Ok(lease)
}

/// The 32 bytes of key material of a cookie secret written as oauth2-proxy
/// users have it: base64 (standard or URL-safe, padded or not) of 16, 24 or
/// 32 bytes, else the text itself when it is 16, 24 or 32 bytes long. A 32-byte
/// secret is used as it is (so that cookies set before survive); a shorter one
/// is expanded with HKDF-SHA256.
fn cookie_key_material(text: &str, setting: &str) -> Result<KeyMaterial, ConfigError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    let usable = |bytes: &[u8]| matches!(bytes.len(), 16 | 24 | 32);
    let decoded = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok().filter(|b| usable(b)));
    let secret = match decoded {
        Some(bytes) => bytes,
        None if usable(text.as_bytes()) => text.as_bytes().to_vec(),
        None => {
            return Err(error(
                setting,
                "must be 16, 24 or 32 bytes: base64 (standard or URL-safe) of that many bytes, \
                 or text of that length",
                "generate one with `openssl rand -base64 32`",
            ));
        }
    };
    if secret.len() == 32 {
        return Ok(KeyMaterial::new(secret));
    }
    let mut expanded = vec![0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, &secret)
        .expand(b"latchkey cookie secret", &mut expanded)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Ok(KeyMaterial::new(expanded))
}

fn list(value: Option<Vec<String>>, default: &[&str]) -> Vec<String> {
    value
        .unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One flag or environment value of `skip_auth_routes` as entries: a TOML
/// array of strings when it starts with `[`, else split on the commas that
/// are outside `{}`, `[]` and `()` (so `^/a{1,3}$` stays whole).
pub fn route_list(value: &str) -> Result<Vec<String>, ConfigError> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        #[derive(Deserialize)]
        struct Array {
            routes: Vec<String>,
        }
        return toml::from_str::<Array>(&format!("routes = {trimmed}"))
            .map(|array| array.routes)
            .map_err(|e| {
                error(
                    "skip_auth_routes",
                    format!("{trimmed:?} is not a TOML array of strings ({})", e.message()),
                    "write it as [\"GET=^/static/\", \"^/health$\"] (single quotes keep \\ literal)",
                )
            });
    }
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut escaped = false;
    let mut current = String::new();
    for c in trimmed.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                entries.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    entries.push(current);
    Ok(entries)
}

/// The problems found so far, in the order of the settings.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or `None` with its problem noted.
    fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|problem| self.0.push(problem)).ok()
    }

    /// The first problem, carrying the others.
    fn into_error(self) -> ConfigError {
        let mut all = self.0.into_iter();
        let mut first = all
            .next()
            .unwrap_or_else(|| error("settings", "invalid", "see the README's settings table"));
        first.also = all.collect();
        first
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// An `IP:PORT` setting.
fn address(text: Option<&str>, setting: &str, fix: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.unwrap_or_default();
    text.parse()
        .map_err(|_| error(setting, format!("{text:?} is not an address"), fix))
}

fn issuer(value: Option<String>) -> Result<String, ConfigError> {
    let issuer = required(value, "issuer", "\"https://idp.example.com/realms/main\"")?;
    url::Url::parse(&issuer).map_err(|e| {
        error(
            "issuer",
            format!("{issuer:?} is not a URL ({e})"),
            "use the provider's issuer URL",
        )
    })?;
    Ok(issuer)
}

fn client_secret(
    inline: Option<ClientSecret>,
    file: Option<PathBuf>,
) -> Result<Option<ClientSecret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(error(
            "client_secret",
            "both client_secret and client_secret_file are set",
            "keep one of them (client_secret_file keeps the secret out of the config)",
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                error(
                    "client_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                    "point it at a readable file that holds only the secret",
                )
            })?;
            Ok(Some(text.trim().to_owned().into()))
        }
        (None, None) => Ok(None),
    }
}

fn redirect_url(value: Option<String>) -> Result<url::Url, ConfigError> {
    let text = required(
        value,
        "redirect_url",
        "\"https://app.example.com/oauth2/callback\"",
    )?;
    let url = url::Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            error(
                "redirect_url",
                format!("{text:?} is not an absolute http(s) URL"),
                "write the full callback URL, e.g. https://app.example.com/oauth2/callback",
            )
        })?;
    if url.path() != "/oauth2/callback" {
        return Err(error(
            "redirect_url",
            format!(
                "its path is {:?}, but latchkey receives callbacks at /oauth2/callback",
                url.path()
            ),
            format!(
                "use {}://{}/oauth2/callback, and register that at the provider",
                url.scheme(),
                url.host_str().unwrap_or("HOST")
            ),
        ));
    }
    Ok(url)
}

fn upstream(value: Option<String>) -> Result<Option<url::Url>, ConfigError> {
    let Some(text) = value.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    url::Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(Some)
        .ok_or_else(|| {
            error(
                "upstream",
                format!("{text:?} is not an http:// or https:// URL"),
                "write it as http://HOST:PORT or https://HOST:PORT",
            )
        })
}

fn cookie_secret(
    inline: Option<CookieSecret>,
    file: Option<PathBuf>,
) -> Result<KeyMaterial, ConfigError> {
    let text = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(error(
                "cookie_secret",
                "both cookie_secret and cookie_secret_file are set",
                "keep one of them (cookie_secret_file keeps the secret out of `ps` and the config)",
            ));
        }
        (Some(secret), None) => Some(secret.into_secret()),
        (None, Some(path)) => Some(std::fs::read_to_string(&path).map_err(|e| {
            error(
                "cookie_secret_file",
                format!("cannot read {}: {e}", path.display()),
                "point it at a readable file that holds only the secret",
            )
        })?),
        (None, None) => None,
    };
    let text = text.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        error(
            "cookie_secret",
            "missing (it encrypts the session cookies)",
            "generate one with `openssl rand -base64 32` and set it as cookie_secret_file, \
             cookie_secret, --cookie-secret or LATCHKEY_COOKIE_SECRET; every replica needs the same one",
        )
    })?;
    cookie_key_material(&text, "cookie_secret")
}

fn cookie_name(value: Option<String>) -> Result<String, ConfigError> {
    let name = value.unwrap_or_else(|| "_latchkey".into());
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if valid {
        Ok(name)
    } else {
        Err(error(
            "cookie_name",
            format!("{name:?} is not a valid cookie name"),
            "use letters, digits, _, - and . only",
        ))
    }
}

/// `cookie_domain`: a host name of at least two labels (a leading `.` is
/// dropped, as browsers do) that holds `redirect_url`'s host, so that the
/// callback gets the cookies.
fn cookie_domain(
    value: Option<String>,
    redirect_url: &url::Url,
) -> Result<Option<String>, ConfigError> {
    let Some(text) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let domain = text.trim().trim_start_matches('.').to_ascii_lowercase();
    let plain = domain.contains('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.parse::<std::net::Ipv4Addr>().is_err()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !plain {
        return Err(error(
            "cookie_domain",
            format!("{text:?} is not a domain cookies can be set for"),
            "write a domain of two labels or more, e.g. .example.com",
        ));
    }
    let host = redirect_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let holds = host == domain || host.ends_with(&format!(".{domain}"));
    if !holds {
        return Err(error(
            "cookie_domain",
            format!(
                "{domain} does not hold redirect_url's host {host}, so the callback would never get the cookies"
            ),
            format!(
                "use a domain that {host} is in, e.g. .{}",
                host.split_once('.')
                    .map_or(host.as_str(), |(_, parent)| parent)
            ),
        ));
    }
    Ok(Some(domain))
}

/// `serve` admits nobody by accident: one of the lists must be set.
fn allowlist(domains: &[String], emails: &[String], groups: &[String]) -> Result<(), ConfigError> {
    if domains.is_empty() && emails.is_empty() && groups.is_empty() {
        return Err(error(
            "email_domains",
            "no allowlist is set: with no email_domains, allowed_emails or allowed_groups, \
             every account at the provider would be admitted",
            "name who may sign in (email_domains = [\"example.com\"], allowed_emails or \
             allowed_groups), or set email_domains = [\"*\"] to admit every account the \
             provider signs in",
        ));
    }
    Ok(())
}

fn log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value.unwrap_or("text") {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(error(
            "log_format",
            format!("unknown format {other:?}"),
            "use text or json",
        )),
    }
}

/// The `/oauth2/start` parameters that may be passed on to the provider.
pub const PASSABLE_AUTH_PARAMS: &[&str] = &["login_hint", "domain_hint", "prompt", "ui_locales"];

/// `extra_auth_params` as NAME=VALUE pairs, and `acr_values`; a protocol
/// parameter latchkey sets itself is refused.
fn auth_params(
    entries: Option<Vec<String>>,
    acr_values: Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut params = Vec::new();
    for entry in entries.unwrap_or_default() {
        let Some((name, value)) = entry.split_once('=').filter(|(n, _)| !n.trim().is_empty())
        else {
            return Err(error(
                "extra_auth_params",
                format!("{entry:?} is not NAME=VALUE"),
                "write entries as NAME=VALUE, e.g. audience=https://api.example.com",
            ));
        };
        let name = name.trim();
        if crate::oidc::PROTOCOL_PARAMETERS.contains(&name) {
            return Err(error(
                "extra_auth_params",
                format!("{name} is set by latchkey itself and cannot be overridden"),
                "remove it (scopes are set with `scopes`)",
            ));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    if let Some(acr) = acr_values.filter(|a| !a.trim().is_empty()) {
        params.push(("acr_values".into(), acr.trim().to_owned()));
    }
    Ok(params)
}

/// One `claim_headers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The header name, lower case.
    pub header: String,
    /// The claim: object keys from the top (an array index as a number).
    pub path: Vec<String>,
}

/// Header names a claim may not take: the ones latchkey sets or strips
/// itself, and those that carry the request's framing, routing or
/// credentials.
const HEADERS_NOT_FOR_CLAIMS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// `HEADER=CLAIM`, the header a plain name (letters, digits, `-`; never
/// `_`, which some servers fold into `-`) that latchkey does not set for
/// itself, the claim a `/`-separated path.
fn claim_header(entry: &str) -> Result<ClaimHeader, ConfigError> {
    let fix = "write entries as HEADER=CLAIM, e.g. X-Department=department or X-Org=org/name";
    let Some((name, claim)) = entry.split_once('=') else {
        return Err(error(
            "claim_headers",
            format!("{entry:?} has no =CLAIM"),
            fix,
        ));
    };
    let header = name.trim().to_ascii_lowercase();
    let plain = !header.is_empty()
        && header.len() <= 64
        && header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let latchkeys = header.starts_with("x-forwarded-") || header.starts_with("x-auth-request-");
    if !plain || latchkeys || HEADERS_NOT_FOR_CLAIMS.contains(&header.as_str()) {
        return Err(error(
            "claim_headers",
            format!("{:?} cannot carry a claim", name.trim()),
            "use a name of your own of letters, digits and -, e.g. X-Department (X-Forwarded-* and X-Auth-Request-* are latchkey's)",
        ));
    }
    let path: Vec<String> = claim.trim().split('/').map(str::to_owned).collect();
    if path.iter().any(|segment| segment.is_empty()) {
        return Err(error(
            "claim_headers",
            format!("{entry:?} names no claim"),
            fix,
        ));
    }
    Ok(ClaimHeader { header, path })
}

/// The pages from `custom_templates_dir` and the branding settings.
fn pages(
    dir: Option<&Path>,
    banner: Option<String>,
    footer: Option<String>,
    logo: Option<&str>,
) -> Result<std::sync::Arc<crate::web::templates::Pages>, ConfigError> {
    use crate::web::templates::{Branding, Pages, logo_url};
    let text = |value: Option<String>, setting: &str| match value {
        Some(v) if v.chars().any(char::is_control) || v.len() > 500 => Err(error(
            setting,
            "holds a control character or is longer than 500 bytes",
            "write one line of text (it is shown as text, never as HTML)",
        )),
        Some(v) if v.trim().is_empty() => Ok(None),
        other => Ok(other),
    };
    let logo_url = logo
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            logo_url(l.trim()).map_err(|why| {
                error(
                    "custom_sign_in_logo",
                    why,
                    "give an https:// URL or the path of a small image file",
                )
            })
        })
        .transpose()?;
    let branding = Branding {
        banner: text(banner, "banner")?,
        footer: text(footer, "footer")?,
        logo_url,
    };
    Pages::new(dir, branding).map(std::sync::Arc::new).map_err(|why| {
        error(
            "custom_templates_dir",
            why,
            "fix the template (see the README's page templates section), or remove it to use the built-in page",
        )
    })
}

fn user_id_claim(value: Option<String>) -> Result<String, ConfigError> {
    let claim = value
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| "sub".into());
    if claim.is_empty() || claim.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(error(
            "user_id_claim",
            format!("{claim:?} is not a claim name"),
            "name a claim, e.g. sub, email or preferred_username",
        ));
    }
    Ok(claim)
}

fn groups_separator(value: Option<String>) -> Result<String, ConfigError> {
    let separator = value.unwrap_or_else(|| ",".into());
    let plain = !separator.is_empty()
        && separator.len() <= 8
        && separator.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if !plain {
        return Err(error(
            "groups_separator",
            format!("{separator:?} cannot separate values in a header"),
            "use a short printable ASCII separator such as , or ; or |",
        ));
    }
    Ok(separator)
}

/// `upstream_cache_control`: a header value of visible ASCII (at most 256
/// characters); empty: none.
fn cache_control(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let value = value.unwrap_or_else(|| "private, no-store".to_owned());
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 256 || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(error(
            "upstream_cache_control",
            "is not a Cache-Control value",
            "write directives such as \"private, no-store\" (visible ASCII, at most 256 characters), or \"\" to leave upstream responses as they are",
        ));
    }
    Ok(Some(value.to_owned()))
}

/// Paths latchkey serves itself, which a probe path may not take.
const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// `ping_path` / `ready_path`: a plain absolute path (letters, digits,
/// `-._~/`), not under `/oauth2/` and not another endpoint's; empty: none.
fn probe_path(
    value: Option<String>,
    setting: &str,
    default: &str,
) -> Result<Option<String>, ConfigError> {
    let path = value.unwrap_or_else(|| default.to_owned());
    let path = path.trim();
    if path.is_empty() {
        return Ok(None);
    }
    let plain = path.starts_with('/')
        && path.len() > 1
        && path.len() <= 256
        && !path.contains("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    if !plain || path.starts_with("/oauth2/") || RESERVED_PATHS.contains(&path) {
        return Err(error(
            setting,
            format!("{path:?} cannot be a probe path"),
            "write a plain path such as /ping, not under /oauth2/ and not /healthz, /readyz or /metrics; or \"\" for none",
        ));
    }
    Ok(Some(path.to_owned()))
}

fn passable(names: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let names = list(names, &[]);
    match names
        .iter()
        .find(|n| !PASSABLE_AUTH_PARAMS.contains(&n.as_str()))
    {
        Some(name) => Err(error(
            "pass_auth_params",
            format!("{name:?} cannot be passed on"),
            format!("choose from {}", PASSABLE_AUTH_PARAMS.join(", ")),
        )),
        None => Ok(names),
    }
}

/// One `extra_jwt_issuers` entry: `ISSUER=AUDIENCE`, the issuer an http(s)
/// URL (discovered at startup), the audience the client id its tokens name.
fn jwt_issuer(entry: &str) -> Result<JwtIssuer, ConfigError> {
    let fix = "write entries as ISSUER=AUDIENCE, e.g. https://login.example.com/realm=cli-client";
    // The issuer is a URL and may hold `=` in its query; the audience may not.
    let Some((issuer, audience)) = entry.trim().rsplit_once('=') else {
        return Err(error(
            "extra_jwt_issuers",
            format!("{entry:?} has no `=AUDIENCE`"),
            fix,
        ));
    };
    let valid_url = url::Url::parse(issuer)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !valid_url || audience.trim().is_empty() {
        return Err(error(
            "extra_jwt_issuers",
            format!("{entry:?} is not an http(s) issuer URL and a non-empty audience"),
            fix,
        ));
    }
    Ok(JwtIssuer {
        issuer: issuer.to_owned(),
        audience: audience.trim().to_owned(),
    })
}

fn skip_route(entry: &str) -> Result<SkipRoute, ConfigError> {
    let (method, pattern) = match entry.split_once('=') {
        Some((m, p)) if !m.is_empty() && m.chars().all(|c| c.is_ascii_uppercase()) => {
            (Some(m.to_owned()), p)
        }
        _ => (None, entry),
    };
    // Anchored at the start as a whole, so that `/public` cannot match
    // `/x/public` and neither can any alternative of `/a/|/b/`.
    let anchored = format!("^(?:{pattern})");
    let path = Regex::new(&anchored).map_err(|e| {
        error(
            "skip_auth_routes",
            format!("invalid regex in {entry:?}: {e}"),
            "write entries as METHOD=regex or regex, e.g. GET=^/health$",
        )
    })?;
    Ok(SkipRoute { method, path })
}

impl RawSettings {
    /// Validates and applies defaults. Every problem is reported at once:
    /// the error names the first, and [`ConfigError::also`] holds the rest.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut problems = Problems::default();
        let listener = problems.check(self.listener_limits());
        let listen = problems.check(address(
            Some(self.listen.as_deref().unwrap_or("127.0.0.1:4180")),
            "listen",
            "write it as IP:PORT, e.g. 127.0.0.1:4180 or 0.0.0.0:4180",
        ));
        let issuer = problems.check(issuer(self.issuer));
        let client_id = problems.check(required(self.client_id, "client_id", "\"latchkey\""));
        let client_secret =
            problems.check(client_secret(self.client_secret, self.client_secret_file));
        let redirect_url = problems.check(redirect_url(self.redirect_url));
        let upstream = problems.check(upstream(self.upstream));
        let cookie_secret =
            problems.check(cookie_secret(self.cookie_secret, self.cookie_secret_file));
        let previous_cookie_secrets = problems.check(
            (self.previous_cookie_secrets.unwrap_or_default().iter())
                .map(|text| cookie_key_material(text.secret(), "previous_cookie_secrets"))
                .collect::<Result<Vec<_>, _>>(),
        );
        let cookie_name = problems.check(cookie_name(self.cookie_name));
        let email_domains = list(self.email_domains, &[]);
        let allowed_emails = list(self.allowed_emails, &[]);
        let allowed_groups = list(self.allowed_groups, &[]);
        problems.check(allowlist(&email_domains, &allowed_emails, &allowed_groups));
        let skip_auth_routes = problems.check(
            (list(self.skip_auth_routes, &[]).iter())
                .map(|e| skip_route(e))
                .collect::<Result<Vec<_>, _>>(),
        );
        let log_format = problems.check(log_format(self.log_format.as_deref()));
        let metrics_address = problems.check(
            self.metrics_address
                .filter(|a| !a.trim().is_empty())
                .map(|text| {
                    address(
                        Some(text.trim()),
                        "metrics_address",
                        "write it as IP:PORT, e.g. 127.0.0.1:9180",
                    )
                })
                .transpose(),
        );
        let extra_jwt_issuers = problems.check(
            (list(self.extra_jwt_issuers, &[]).iter())
                .map(|pair| jwt_issuer(pair))
                .collect::<Result<Vec<_>, _>>(),
        );
        let extra_auth_params =
            problems.check(auth_params(self.extra_auth_params, self.acr_values));
        let pass_auth_params = problems.check(passable(self.pass_auth_params));
        let session_ttl = problems.check(duration(self.session_ttl, "session_ttl", "7d"));
        let login_ttl = problems.check(duration(self.login_ttl, "login_ttl", "10m"));
        let exchange_lease = problems.check(lease(self.exchange_lease));
        let refresh_before_expiry = problems.check(duration(
            self.refresh_before_expiry,
            "refresh_before_expiry",
            "60s",
        ));
        let clock_skew = problems.check(duration(self.clock_skew, "clock_skew", "60s"));
        let provider_ca_files = self.provider_ca_files.unwrap_or_default();
        let provider_ca = problems.check(
            (provider_ca_files.iter())
                .map(|path| {
                    crate::tls::certificates(path).map_err(|why| {
                        error(
                            "provider_ca_files",
                            why,
                            "name PEM files of CA certificates (-----BEGIN CERTIFICATE-----)",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|files| files.concat()),
        );
        let claim_headers = problems.check(
            (list(self.claim_headers, &[]).iter())
                .map(|entry| claim_header(entry))
                .collect::<Result<Vec<_>, _>>(),
        );
        let user_id_claim = problems.check(user_id_claim(self.user_id_claim));
        let groups_separator = problems.check(groups_separator(self.groups_separator));
        let pass_authorization_header = self.pass_authorization_header.unwrap_or(false);
        if pass_authorization_header && self.pass_access_token == Some(true) {
            problems.check::<()>(Err(error(
                "pass_authorization_header",
                "both it and pass_access_token would set Authorization",
                "choose one: the ID token (pass_authorization_header) or the access token (pass_access_token)",
            )));
        }
        let upstream_ca = problems.check(
            (self.upstream_ca_files.unwrap_or_default().iter())
                .map(|path| {
                    crate::tls::certificates(path).map_err(|why| {
                        error(
                            "upstream_ca_files",
                            why,
                            "name PEM files of CA certificates (-----BEGIN CERTIFICATE-----)",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|files| files.concat()),
        );
        let upstream_client = (
            self.upstream_client_cert_file,
            self.upstream_client_key_file,
        );
        let upstream_client = problems.check(match upstream_client {
            (Some(cert), Some(key)) => crate::tls::client_config(&[], Some((&cert, &key)))
                .map(|_| (Some(cert), Some(key)))
                .map_err(|why| {
                    error(
                        "upstream_client_cert_file",
                        why,
                        "name the PEM certificate chain and its PEM private key",
                    )
                }),
            (None, None) => Ok((None, None)),
            _ => Err(error(
                "upstream_client_cert_file",
                "upstream_client_cert_file and upstream_client_key_file go together",
                "set both, or neither",
            )),
        });
        let tls13_only = problems.check(match self.tls_min_version.as_deref().map(str::trim) {
            None | Some("1.2") => Ok(false),
            Some("1.3") => Ok(true),
            Some(other) => Err(error(
                "tls_min_version",
                format!("{other:?} is not a TLS version latchkey offers"),
                "write 1.2 or 1.3",
            )),
        });
        let listener_tls = problems.check(match (self.tls_cert_file, self.tls_key_file) {
            (Some(cert), Some(key)) => {
                crate::tls::ListenerTls::load(&cert, &key, tls13_only == Some(true))
                    .map(Some)
                    .map_err(|why| {
                        error(
                            "tls_cert_file",
                            why,
                            "name the PEM certificate chain and its PEM private key",
                        )
                    })
            }
            (None, None) => Ok(None),
            _ => Err(error(
                "tls_cert_file",
                "tls_cert_file and tls_key_file go together",
                "set both, or neither",
            )),
        });
        let whitelist_domains = list(self.whitelist_domains, &[]);
        problems.check(
            crate::web::redirect::Destinations::new(&whitelist_domains).map_err(|why| {
                error(
                    "whitelist_domains",
                    why,
                    "write entries like app.example.com, .example.com or *.example.com:8443",
                )
            }),
        );
        let cookie_domain = match &redirect_url {
            Some(redirect_url) => problems.check(cookie_domain(self.cookie_domain, redirect_url)),
            None => Some(None),
        };
        let ping_path = problems.check(probe_path(self.ping_path, "ping_path", "/ping"));
        let ready_path = problems.check(probe_path(self.ready_path, "ready_path", "/ready"));
        if let (Some(Some(ping)), Some(Some(ready))) = (&ping_path, &ready_path)
            && ping == ready
        {
            problems.check::<()>(Err(error(
                "ready_path",
                format!("{ready} is ping_path too"),
                "give the two probes different paths",
            )));
        }
        let pages = problems.check(pages(
            self.custom_templates_dir.as_deref(),
            self.banner,
            self.footer,
            self.custom_sign_in_logo.as_deref(),
        ));
        let upstream_cache_control = problems.check(cache_control(self.upstream_cache_control));
        // Every value is there exactly when no problem was found.
        let (
            Some((pages, upstream_cache_control)),
            Some(listener),
            Some(listen),
            Some(issuer),
            Some(client_id),
            Some(client_secret),
            Some(redirect_url),
            Some(upstream),
            Some(cookie_secret),
            Some(previous_cookie_secrets),
            Some(cookie_name),
            Some(skip_auth_routes),
            Some(log_format),
            Some(metrics_address),
            Some(extra_jwt_issuers),
            Some((extra_auth_params, pass_auth_params)),
            Some((ping_path, ready_path)),
            Some(cookie_domain),
            Some(provider_ca),
            Some(listener_tls),
            Some((upstream_ca, (upstream_client_cert_file, upstream_client_key_file))),
            Some((claim_headers, user_id_claim, groups_separator)),
            Some((session_ttl, login_ttl, exchange_lease, refresh_before_expiry, clock_skew)),
        ) = (
            pages.zip(upstream_cache_control),
            listener,
            listen,
            issuer,
            client_id,
            client_secret,
            redirect_url,
            upstream,
            cookie_secret,
            previous_cookie_secrets,
            cookie_name,
            skip_auth_routes,
            log_format,
            metrics_address,
            extra_jwt_issuers,
            extra_auth_params.zip(pass_auth_params),
            ping_path.zip(ready_path),
            cookie_domain,
            provider_ca,
            listener_tls,
            upstream_ca.zip(upstream_client),
            claim_headers
                .zip(user_id_claim)
                .zip(groups_separator)
                .map(|((a, b), c)| (a, b, c)),
            session_ttl
                .zip(login_ttl)
                .zip(exchange_lease)
                .zip(refresh_before_expiry)
                .zip(clock_skew)
                .map(|((((a, b), c), d), e)| (a, b, c, d, e)),
        )
        else {
            return Err(problems.into_error());
        };
        problems.into_result()?;
        Ok(Settings {
            listen,
            issuer,
            client_id,
            client_secret,
            redirect_url,
            upstream,
            store: self
                .store
                .map_or_else(|| "sqlite://latchkey.db".into(), |url| url.0),
            cookie_secret,
            previous_cookie_secrets,
            cookie_name,
            scopes: list(self.scopes, &["openid", "email", "profile"]),
            email_domains,
            allowed_emails,
            allowed_groups,
            groups_claim: self.groups_claim.unwrap_or_else(|| "groups".into()),
            skip_auth_routes,
            pass_access_token: self.pass_access_token.unwrap_or(false),
            session_ttl,
            login_ttl,
            exchange_lease,
            refresh_before_expiry,
            post_logout_redirect_url: self.post_logout_redirect_url,
            allowed_algs: list(self.allowed_algs, &["RS256", "ES256"]),
            clock_skew,
            log_format,
            pass_routing_headers: self.pass_routing_headers.unwrap_or(false),
            listener,
            metrics_address,
            insecure_allow_unverified_email: self.insecure_allow_unverified_email.unwrap_or(false),
            skip_jwt_bearer_tokens: self.skip_jwt_bearer_tokens.unwrap_or(false),
            extra_jwt_audiences: list(self.extra_jwt_audiences, &[]),
            extra_jwt_issuers,
            extra_auth_params,
            pass_auth_params,
            login_rate_per_minute: self.login_rate_per_minute.unwrap_or(120),
            skip_provider_button: self.skip_provider_button.unwrap_or(false),
            sign_out_post_only: self.sign_out_post_only.unwrap_or(false),
            ping_path,
            upstream_cache_control,
            ready_path,
            cookie_domain,
            whitelist_domains,
            provider_ca_files,
            provider_ca,
            user_id_claim,
            claim_headers,
            groups_separator,
            pass_id_token: self.pass_id_token.unwrap_or(false),
            pass_authorization_header,
            upstream_ca,
            upstream_client_cert_file,
            upstream_client_key_file,
            listener_tls,
            pages,
        })
    }

    fn listener_limits(&self) -> Result<ListenerLimits, ConfigError> {
        let defaults = ListenerLimits::default();
        let positive = |value: Duration, setting: &str| {
            if value.is_zero() {
                Err(error(
                    setting,
                    "must be longer than 0s",
                    "write it like 10s or 1m",
                ))
            } else {
                Ok(value)
            }
        };
        let header_read_timeout = positive(
            duration(
                self.header_read_timeout.clone(),
                "header_read_timeout",
                "10s",
            )?,
            "header_read_timeout",
        )?;
        let idle_timeout = positive(
            duration(self.idle_timeout.clone(), "idle_timeout", "60s")?,
            "idle_timeout",
        )?;
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if max_connections == 0 {
            return Err(error(
                "max_connections",
                "must be at least 1",
                "set it to the most client connections to serve at once, e.g. 1024",
            ));
        }
        let max_header_bytes = self.max_header_bytes.unwrap_or(defaults.max_header_bytes);
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            return Err(error(
                "max_header_bytes",
                format!("{max_header_bytes} is outside 8192..=1048576"),
                "browsers need at least 8 KiB of headers; 32768 suits most sites",
            ));
        }
        Ok(ListenerLimits {
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_header_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RawSettings {
        RawSettings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("app".into()),
            redirect_url: Some("https://app.example.com/oauth2/callback".into()),
            cookie_secret: Some(
                base64::engine::general_purpose::STANDARD
                    .encode([7u8; 32])
                    .into(),
            ),
            email_domains: Some(vec!["*".into()]),
            ..RawSettings::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let s = minimal().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:4180");
        assert_eq!(s.store, "sqlite://latchkey.db");
        assert_eq!(s.scopes, ["openid", "email", "profile"]);
        assert_eq!(s.session_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(s.login_ttl, Duration::from_secs(600));
        assert_eq!(s.session_cookie(), "__Host-_latchkey");
        assert!(!s.pass_access_token);
    }

    #[test]
    fn higher_layers_win_field_by_field() {
        let file = RawSettings {
            store: Some("memory://".into()),
            listen: Some("127.0.0.1:1".into()),
            ..minimal()
        };
        let flags = RawSettings {
            listen: Some("127.0.0.1:2".into()),
            ..RawSettings::default()
        };
        let s = flags.over(file).validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:2");
        assert_eq!(s.store, "memory://");
    }

    #[test]
    fn a_lease_too_short_for_a_provider_call_is_refused() {
        for short in ["0s", "999ms"] {
            let err = RawSettings {
                exchange_lease: Some(short.into()),
                ..minimal()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.setting, "exchange_lease", "{short}: {err}");
            assert!(err.fix.contains("at least 1s"), "{err}");
        }
        let shortest = RawSettings {
            exchange_lease: Some("1s".into()),
            ..minimal()
        };
        assert_eq!(
            shortest.validate().unwrap().exchange_lease,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn missing_cookie_secret_says_how_to_make_one() {
        let err = RawSettings {
            cookie_secret: None,
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "cookie_secret");
        assert!(err.fix.contains("openssl rand -base64 32"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: Vec<(RawSettings, &str)> = vec![
            (
                RawSettings {
                    cookie_secret: Some("c2hvcnQ=".into()),
                    ..minimal()
                },
                "cookie_secret",
            ),
            (
                RawSettings {
                    redirect_url: Some("https://app/callback".into()),
                    ..minimal()
                },
                "redirect_url",
            ),
            (
                RawSettings {
                    redirect_url: Some("/oauth2/callback".into()),
                    ..minimal()
                },
                "redirect_url",
            ),
            (
                RawSettings {
                    issuer: None,
                    ..minimal()
                },
                "issuer",
            ),
            (
                RawSettings {
                    session_ttl: Some("forever".into()),
                    ..minimal()
                },
                "session_ttl",
            ),
            (
                RawSettings {
                    listen: Some("localhost".into()),
                    ..minimal()
                },
                "listen",
            ),
            (
                RawSettings {
                    upstream: Some("ftp://app:8443".into()),
                    ..minimal()
                },
                "upstream",
            ),
            (
                RawSettings {
                    skip_auth_routes: Some(vec!["GET=(".into()]),
                    ..minimal()
                },
                "skip_auth_routes",
            ),
            (
                RawSettings {
                    log_format: Some("xml".into()),
                    ..minimal()
                },
                "log_format",
            ),
            (
                RawSettings {
                    client_secret: Some("a".into()),
                    client_secret_file: Some("/nonexistent".into()),
                    ..minimal()
                },
                "client_secret",
            ),
        ];
        for (raw, setting) in cases {
            let err = raw.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(!err.fix.is_empty());
        }
    }

    #[test]
    fn cookie_domain_must_hold_the_callback_and_changes_the_prefix() {
        let with = |domain: &str, redirect: &str| {
            RawSettings {
                cookie_domain: Some(domain.into()),
                redirect_url: Some(redirect.into()),
                ..minimal()
            }
            .validate()
        };
        let shared = with(".Example.com", "https://auth.example.com/oauth2/callback").unwrap();
        assert_eq!(shared.cookie_domain.as_deref(), Some("example.com"));
        assert_eq!(shared.session_cookie(), "__Secure-_latchkey");
        let apex = with("example.com", "https://example.com/oauth2/callback").unwrap();
        assert_eq!(apex.cookie_domain.as_deref(), Some("example.com"));
        let host_only = minimal().validate().unwrap();
        assert_eq!(host_only.cookie_domain, None);
        for (domain, redirect) in [
            ("other.com", "https://auth.example.com/oauth2/callback"),
            ("ample.com", "https://auth.example.com/oauth2/callback"),
            ("com", "https://auth.example.com/oauth2/callback"),
            ("127.0.0.1", "https://127.0.0.1/oauth2/callback"),
            ("exa mple.com", "https://auth.example.com/oauth2/callback"),
            ("example.com.", "https://auth.example.com/oauth2/callback"),
        ] {
            let err = with(domain, redirect).unwrap_err();
            assert_eq!(err.setting, "cookie_domain", "{domain}");
        }
        let err = RawSettings {
            whitelist_domains: Some(vec!["https://app.example.com".into()]),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "whitelist_domains");
    }

    #[test]
    fn claim_headers_are_plain_names_of_their_own() {
        let with = |entries: &[&str]| {
            RawSettings {
                claim_headers: Some(entries.iter().map(|e| (*e).to_owned()).collect()),
                ..minimal()
            }
            .validate()
        };
        let ok = with(&[
            "X-Department=department",
            "X-Org=org/name",
            "x-level=levels/0",
        ])
        .unwrap();
        assert_eq!(
            ok.claim_headers[1],
            ClaimHeader {
                header: "x-org".into(),
                path: vec!["org".into(), "name".into()]
            }
        );
        for hostile in [
            "X-Forwarded-User=email",
            "x-forwarded-anything=a",
            "X-Auth-Request-User=email",
            "Host=evil",
            "Cookie=a",
            "Authorization=a",
            "Transfer-Encoding=a",
            "Content-Length=a",
            "X_Department=department",
            "X Department=department",
            "X-De\r\npt=department",
            "X-Dépt=department",
            "=department",
            "X-Department=",
            "X-Department=a//b",
            "X-Department",
        ] {
            let err = with(&[hostile]).expect_err(hostile);
            assert_eq!(err.setting, "claim_headers", "{hostile}");
        }
        let err = RawSettings {
            pass_authorization_header: Some(true),
            pass_access_token: Some(true),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "pass_authorization_header");
        for (separator, ok) in [
            (";", true),
            (" | ", true),
            ("", false),
            ("\n", false),
            ("é", false),
        ] {
            let result = RawSettings {
                groups_separator: Some(separator.into()),
                ..minimal()
            }
            .validate();
            assert_eq!(result.is_ok(), ok, "{separator:?}");
        }
    }

    #[test]
    fn probe_paths_are_plain_and_never_shadow_latchkeys_own() {
        let with = |ping: &str, ready: Option<&str>| {
            RawSettings {
                ping_path: Some(ping.into()),
                ready_path: ready.map(str::to_owned),
                ..minimal()
            }
            .validate()
        };
        let defaults = minimal().validate().unwrap();
        assert_eq!(defaults.ping_path.as_deref(), Some("/ping"));
        assert_eq!(defaults.ready_path.as_deref(), Some("/ready"));
        assert_eq!(with("", Some("")).unwrap().ping_path, None);
        assert_eq!(
            with("/lb/ping", None).unwrap().ping_path.as_deref(),
            Some("/lb/ping")
        );
        for hostile in [
            "ping",
            "/",
            "/oauth2/auth",
            "/oauth2/x",
            "/healthz",
            "/metrics",
            "/{id}",
            "/*rest",
            "//ping",
            "/ping?x",
            "/p%20ing",
            "/pïng",
        ] {
            let err = with(hostile, None).unwrap_err();
            assert_eq!(err.setting, "ping_path", "{hostile}");
        }
        let err = with("/probe", Some("/probe")).unwrap_err();
        assert_eq!(err.setting, "ready_path");
    }

    #[test]
    fn authorization_parameters_never_override_the_protocol() {
        for (raw, setting) in [
            (
                RawSettings {
                    extra_auth_params: Some(vec!["state=fixed".into()]),
                    ..minimal()
                },
                "extra_auth_params",
            ),
            (
                RawSettings {
                    extra_auth_params: Some(vec!["redirect_uri=https://evil.test".into()]),
                    ..minimal()
                },
                "extra_auth_params",
            ),
            (
                RawSettings {
                    extra_auth_params: Some(vec!["novalue".into()]),
                    ..minimal()
                },
                "extra_auth_params",
            ),
            (
                RawSettings {
                    pass_auth_params: Some(vec!["client_id".into()]),
                    ..minimal()
                },
                "pass_auth_params",
            ),
        ] {
            let err = raw.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
        let ok = RawSettings {
            extra_auth_params: Some(vec!["access_type=offline".into()]),
            acr_values: Some("mfa".into()),
            pass_auth_params: Some(vec!["login_hint".into()]),
            ..minimal()
        }
        .validate()
        .unwrap();
        assert_eq!(
            ok.extra_auth_params,
            [
                ("access_type".to_owned(), "offline".to_owned()),
                ("acr_values".to_owned(), "mfa".to_owned())
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = RawSettings {
            listen: Some("localhost".into()),
            session_ttl: Some("forever".into()),
            cookie_name: Some("a b".into()),
            email_domains: None,
            allowed_emails: None,
            allowed_groups: None,
            ..minimal()
        }
        .validate()
        .unwrap_err();
        let named: Vec<&str> = std::iter::once(&err)
            .chain(&err.also)
            .map(|e| e.setting.as_str())
            .collect();
        assert_eq!(
            named,
            ["listen", "cookie_name", "email_domains", "session_ttl"]
        );
        let shown = err.to_string();
        for setting in named {
            assert!(shown.contains(&format!("setting `{setting}`")), "{shown}");
        }
        // One problem alone is reported alone.
        let one = RawSettings {
            log_format: Some("xml".into()),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!((one.setting.as_str(), one.also.len()), ("log_format", 0));
    }

    #[test]
    fn settings_print_no_secret() {
        let raw = RawSettings {
            store: Some("postgres://app:db-s3cr3t@db/latchkey".into()),
            client_secret: Some("client-s3cr3t".into()),
            previous_cookie_secrets: Some(vec!["0123456789abcdef".into()]),
            ..minimal()
        };
        let cookie = raw.cookie_secret.clone().unwrap();
        let printed = format!("{raw:?} {:?}", raw.clone().validate().unwrap());
        for secret in [
            "client-s3cr3t",
            "0123456789abcdef",
            "db-s3cr3t",
            cookie.secret(),
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("ClientSecret([redacted])"), "{printed}");
        assert!(printed.contains("CookieSecret([redacted])"), "{printed}");
    }

    #[test]
    fn extra_jwt_issuers_are_issuer_equals_audience() {
        let parsed = jwt_issuer("https://idp.example/realms/a?x=1=cli").unwrap();
        assert_eq!(parsed.issuer, "https://idp.example/realms/a?x=1");
        assert_eq!(parsed.audience, "cli");
        for bad in [
            "https://idp.example",
            "https://idp.example=",
            "idp.example=cli",
            "ftp://idp.example=cli",
            "=cli",
            "javascript:alert(1)=cli",
        ] {
            let err = RawSettings {
                extra_jwt_issuers: Some(vec![bad.into()]),
                ..minimal()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.setting, "extra_jwt_issuers", "{bad}");
            assert!(err.fix.contains("ISSUER=AUDIENCE"));
        }
    }

    #[test]
    fn upstream_cache_control_defaults_to_no_store_and_refuses_what_is_no_header() {
        let settings = minimal().validate().unwrap();
        assert_eq!(
            settings.upstream_cache_control.as_deref(),
            Some("private, no-store")
        );
        let off = RawSettings {
            upstream_cache_control: Some(" ".into()),
            ..minimal()
        };
        assert_eq!(off.validate().unwrap().upstream_cache_control, None);
        let long = "x".repeat(257);
        for bad in [
            "no-store\r\nSet-Cookie: a=b",
            "no-store\0",
            "privé",
            long.as_str(),
        ] {
            let err = RawSettings {
                upstream_cache_control: Some(bad.into()),
                ..minimal()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err.setting, "upstream_cache_control", "{bad:?}");
            assert!(!err.to_string().contains("Set-Cookie"), "not echoed: {err}");
        }
    }

    #[test]
    fn skip_routes_match_method_and_path_prefix_only() {
        let r = skip_route("GET=/public/").unwrap();
        assert!(r.matches("GET", "/public/a.css"));
        assert!(!r.matches("POST", "/public/a.css"));
        assert!(!r.matches("GET", "/x/public/a.css"));
        let any = skip_route("^/health$").unwrap();
        assert!(any.matches("POST", "/health"));
        assert!(!any.matches("GET", "/healthz"));
    }

    #[test]
    fn every_alternative_is_anchored() {
        let r = skip_route("GET=/static/|/assets/").unwrap();
        assert!(r.matches("GET", "/static/a.css"));
        assert!(r.matches("GET", "/assets/a.css"));
        assert!(!r.matches("GET", "/private/assets/x"));
        assert!(!r.matches("GET", "/private/static/x"));
        let r = skip_route("^/a$|^/b$").unwrap();
        assert!(r.matches("GET", "/b"));
        assert!(!r.matches("GET", "/x/b"));
    }

    #[test]
    fn command_line_lists_keep_regexes_whole() {
        assert_eq!(
            route_list("GET=^/a{1,3}$,^/health$").unwrap(),
            ["GET=^/a{1,3}$", "^/health$"]
        );
        assert_eq!(
            route_list("^/[,;]x$,/y(a,b)").unwrap(),
            ["^/[,;]x$", "/y(a,b)"]
        );
        assert_eq!(route_list("^/a\\,b$").unwrap(), ["^/a\\,b$"]);
        assert_eq!(
            route_list(r#"["GET=^/a,b$", '^/c{1,2}$']"#).unwrap(),
            ["GET=^/a,b$", "^/c{1,2}$"]
        );
        let err = route_list("[\"unclosed\"").unwrap_err();
        assert_eq!(err.setting, "skip_auth_routes");
        let raw = RawSettings {
            skip_auth_routes: Some(vec!["GET=^/a{1,3}$,^/b$".into(), "^/c,d$".into()]),
            ..RawSettings::default()
        };
        let split = raw
            .split_command_line_lists()
            .unwrap()
            .skip_auth_routes
            .unwrap();
        assert_eq!(split, ["GET=^/a{1,3}$", "^/b$", "^/c", "d$"]);
    }

    #[test]
    fn an_allowlist_is_required() {
        let err = RawSettings {
            email_domains: None,
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "email_domains");
        assert!(err.fix.contains("email_domains = [\"*\"]"), "{err}");
        for allowlist in [
            RawSettings {
                email_domains: None,
                allowed_groups: Some(vec!["staff".into()]),
                ..minimal()
            },
            RawSettings {
                email_domains: None,
                allowed_emails: Some(vec!["a@example.com".into()]),
                ..minimal()
            },
        ] {
            assert!(allowlist.validate().is_ok());
        }
        // An empty entry is no allowlist.
        let err = RawSettings {
            email_domains: Some(vec![" ".into()]),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "email_domains");
    }

    #[test]
    fn cookie_secrets_in_every_form_oauth2_proxy_takes() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let with = |secret: String| {
            RawSettings {
                cookie_secret: Some(secret.into()),
                ..minimal()
            }
            .validate()
        };
        let bytes32: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(37) ^ 0xfb).collect();
        // 32 bytes in any base64: the same key material as before.
        for text in [
            STANDARD.encode(&bytes32),
            URL_SAFE.encode(&bytes32),
            URL_SAFE_NO_PAD.encode(&bytes32),
        ] {
            let settings = with(text.clone()).unwrap();
            assert_eq!(settings.cookie_secret.secret(), bytes32, "{text}");
        }
        // 16 and 24 bytes, base64 or raw: expanded, and distinct.
        let mut seen = std::collections::HashSet::new();
        for text in [
            STANDARD.encode([1u8; 16]),
            URL_SAFE_NO_PAD.encode([2u8; 24]),
            "0123456789abcdef".to_owned(),
            "0123456789abcdef01234567".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        ] {
            let settings = with(text.clone()).unwrap();
            assert_eq!(settings.cookie_secret.secret().len(), 32, "{text}");
            assert!(
                seen.insert(settings.cookie_secret.secret().to_vec()),
                "{text}"
            );
        }
        for bad in ["c2hvcnQ=", "short", &STANDARD.encode([0u8; 20])] {
            assert_eq!(
                with(bad.to_owned()).unwrap_err().setting,
                "cookie_secret",
                "{bad}"
            );
        }
        let err = RawSettings {
            previous_cookie_secrets: Some(vec!["nope".into()]),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "previous_cookie_secrets");
    }

    #[test]
    fn the_cookie_secret_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie-secret");
        std::fs::write(
            &path,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode([5u8; 32])
            ),
        )
        .unwrap();
        let settings = RawSettings {
            cookie_secret: None,
            cookie_secret_file: Some(path.clone()),
            ..minimal()
        }
        .validate()
        .unwrap();
        assert_eq!(settings.cookie_secret.secret(), [5u8; 32]);
        let both = RawSettings {
            cookie_secret_file: Some(path),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(both.setting, "cookie_secret");
        let missing = RawSettings {
            cookie_secret: None,
            cookie_secret_file: Some(dir.path().join("nope")),
            ..minimal()
        }
        .validate()
        .unwrap_err();
        assert_eq!(missing.setting, "cookie_secret_file");
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let err = toml::from_str::<RawSettings>("isuer = \"x\"").unwrap_err();
        assert!(err.message().contains("isuer"), "{err}");
    }
}

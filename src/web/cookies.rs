//! Latchkey's cookies, all encrypted and authenticated with a key derived from
//! `cookie_secret` (the `cookie` crate's private jar, AES-256-GCM):
//!
//! - the **session cookie** holds the 256-bit session id;
//! - one **login cookie per login in progress**, named after the login
//!   (`latchkey-login-<8 chars of sha256(state)>`), holds the browser binding
//!   and the destination. Several tabs can sign in at once without clobbering
//!   each other, and at most [`MAX_LOGIN_COOKIES`] exist at a time (the oldest
//!   is dropped) so that many tabs cannot push the Cookie header past server
//!   limits.
//!
//! Over https every name carries the `__Host-` prefix (Secure, Path=/, no
//! Domain), or `__Secure-` with `cookie_domain` (then every cookie has that
//! Domain); all are HttpOnly and SameSite=Lax.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use axum_extra::extract::cookie::{Cookie, Key, PrivateCookieJar, SameSite};
use serde::{Deserialize, Serialize};

use crate::cache::BoundedCache;
use crate::config::Settings;
use crate::login::PendingLogin;
use crate::secret::{BrowserBinding, LoginState, SessionId, hash_token};

/// At most this many login cookies live at once.
pub const MAX_LOGIN_COOKIES: usize = 4;

/// How many decrypted session cookies a process remembers.
const DECRYPTED_SESSION_COOKIES: usize = 10_000;

/// How long a sign-out's mark lasts if the signed-out page is never shown:
/// long enough for a provider's "do you want to sign out?" page.
pub const SIGNED_OUT_MARK_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// What a login cookie holds: everything the callback needs, since the
/// store holds nothing of a login before its first callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginCookie {
    /// The browser binding token.
    pub binding: BrowserBinding,
    /// Nonce, PKCE verifier, destination and start time.
    pub pending: PendingLogin,
}

/// What a request's `Cookie` headers hold for latchkey, from one pass.
pub struct SentCookies<'h> {
    /// The session cookie as sent (still encrypted and percent-encoded).
    session: Option<Cookie<'h>>,
    upstream: UpstreamCookies,
}

impl SentCookies<'_> {
    /// Whether a session cookie was sent (whether or not it decrypts).
    pub fn has_session_cookie(&self) -> bool {
        self.session.is_some()
    }

    /// The `Cookie` header for the upstream.
    pub fn into_upstream(self) -> UpstreamCookies {
        self.upstream
    }
}

/// The `Cookie` header the upstream gets: latchkey's cookies never reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCookies {
    /// The request carries none of latchkey's cookies: leave its headers.
    AsSent,
    /// The request carries only latchkey's cookies: send no `Cookie` header.
    Removed,
    /// Send this `Cookie` header: the app's cookies alone.
    Replaced(HeaderValue),
}

/// Latchkey's cookies: their keys, names and attributes.
#[derive(Clone)]
pub struct Cookies {
    /// Encrypts, and decrypts first.
    key: Key,
    /// Keys of `previous_cookie_secrets`: they decrypt only.
    previous: Arc<[Key]>,
    session: String,
    login_prefix: String,
    /// The sign-out mark's name (see [`Cookies::mark_signed_out`]).
    signed_out_mark: String,
    /// `cookie_domain`, when cookies are not host-only.
    domain: Option<String>,
    secure: bool,
    session_max_age: u64,
    login_max_age: u64,
    /// Session ids by the session cookie's value as sent, so that a browser's
    /// requests decrypt its cookie once. Only values that decrypted with a
    /// key are kept, so made-up cookies cannot fill it.
    decrypted: Arc<BoundedCache<SessionCookie>>,
}

/// A session cookie that decrypted.
#[derive(Clone)]
pub struct SessionCookie {
    /// The session id it holds.
    pub id: SessionId,
    /// Whether a previous secret's key decrypted it: the browser should get
    /// it again, encrypted with the current one.
    pub stale: bool,
}

impl Cookies {
    /// The cookie scheme for these settings.
    pub fn new(settings: &Settings) -> Self {
        let secure = settings.secure_cookies();
        Self {
            key: Key::derive_from(settings.cookie_secret.secret()),
            previous: settings
                .previous_cookie_secrets
                .iter()
                .map(|secret| Key::derive_from(secret.secret()))
                .collect(),
            session: settings.session_cookie(),
            login_prefix: format!("{}latchkey-login-", settings.cookie_prefix()),
            signed_out_mark: format!("{}latchkey-signed-out", settings.cookie_prefix()),
            domain: settings.cookie_domain.clone(),
            secure,
            session_max_age: settings.session_ttl.as_secs(),
            // Outlives the login record, so that an expired login still
            // knows where the browser wanted to go.
            login_max_age: settings.login_ttl.as_secs() + 3600,
            decrypted: Arc::new(BoundedCache::new(DECRYPTED_SESSION_COOKIES)),
        }
    }

    /// Whether `previous_cookie_secrets` are set.
    pub fn has_previous_keys(&self) -> bool {
        !self.previous.is_empty()
    }

    /// The key that encrypts and authenticates them (from `cookie_secret`).
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// A jar to add cookies to.
    pub fn empty_jar(&self) -> PrivateCookieJar {
        PrivateCookieJar::new(self.key.clone())
    }

    /// The session cookie's name.
    pub fn session_name(&self) -> &str {
        &self.session
    }

    /// Whether `name` is one of latchkey's cookies (never sent upstream).
    pub fn is_ours(&self, name: &str) -> bool {
        name == self.session || self.is_login_cookie(name) || name == self.signed_out_mark
    }

    /// Marks a browser as just signed out (a cookie holding nothing, for
    /// [`SIGNED_OUT_MARK_TTL`]): the signed-out page's hidden image removes
    /// it, and that later cookie change is what makes Chromium drop the
    /// signed-in pages from its back/forward cache. The sign-out's own
    /// cookie changes come too early for that: they arrive before the page
    /// the user left is stored there.
    pub fn mark_signed_out(&self, jar: PrivateCookieJar) -> PrivateCookieJar {
        jar.add(self.build(
            self.signed_out_mark.clone(),
            String::new(),
            SIGNED_OUT_MARK_TTL.as_secs(),
        ))
    }

    /// Removes the sign-out's mark, if the browser sent it.
    pub fn clear_signed_out_mark(
        &self,
        jar: PrivateCookieJar,
        headers: &HeaderMap,
    ) -> PrivateCookieJar {
        self.expire_sent(jar, headers, |name| name == self.signed_out_mark)
    }

    /// Whether `name` is one of latchkey's login cookies.
    pub fn is_login_cookie(&self, name: &str) -> bool {
        name.starts_with(&self.login_prefix)
    }

    fn build(&self, name: String, value: String, max_age: u64) -> Cookie<'static> {
        let cookie = Cookie::build((name, value));
        let cookie = match &self.domain {
            Some(domain) => cookie.domain(domain.clone()),
            None => cookie,
        };
        cookie
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(cookie::time::Duration::seconds(
                i64::try_from(max_age).unwrap_or(i64::MAX),
            ))
            .build()
    }

    /// Expires cookie `name` in the browser, whether or not it decrypted
    /// (the jar only knows the ones that did, so this sets Max-Age=0 itself).
    fn expire(&self, jar: PrivateCookieJar, name: String) -> PrivateCookieJar {
        let mut removal = self.build(name, String::new(), 0);
        removal.make_removal();
        jar.add(removal)
    }

    /// Reads the request's `Cookie` headers once: the session cookie, and the
    /// `Cookie` header the upstream gets (the app's cookies, none of latchkey's).
    pub fn sent<'h>(&self, headers: &'h HeaderMap) -> SentCookies<'h> {
        let mut session = None;
        let mut ours = false;
        let mut kept = String::new();
        for cookie in sent_cookies(headers) {
            if self.is_ours(cookie.name()) {
                ours = true;
                if session.is_none() && cookie.name() == self.session {
                    session = Some(cookie);
                }
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(cookie.name());
            kept.push('=');
            kept.push_str(cookie.value());
        }
        let upstream = match (ours, kept.is_empty()) {
            (false, _) => UpstreamCookies::AsSent,
            (true, true) => UpstreamCookies::Removed,
            (true, false) => HeaderValue::try_from(kept)
                .map(UpstreamCookies::Replaced)
                .unwrap_or(UpstreamCookies::Removed),
        };
        SentCookies { session, upstream }
    }

    /// The session id in the request's session cookie, if it decrypts. A value
    /// is decrypted the first time this process sees it, then remembered.
    pub fn session_id(&self, sent: &SentCookies<'_>) -> Option<SessionId> {
        self.session_cookie(sent).map(|cookie| cookie.id)
    }

    /// The request's session cookie, if it decrypts with the current key or
    /// a previous one.
    pub fn session_cookie(&self, sent: &SentCookies<'_>) -> Option<SessionCookie> {
        let cookie = sent.session.as_ref()?;
        if let Some(known) = self.decrypted.get(cookie.value()) {
            return Some(known);
        }
        // As set, the value is percent-encoded; decode it before decrypting.
        let decoded =
            Cookie::parse_encoded(format!("{}={}", cookie.name(), cookie.value())).ok()?;
        let (plain, stale) = self.decrypt(decoded)?;
        let known = SessionCookie {
            id: SessionId::new(plain.value()),
            stale,
        };
        self.decrypted.put(cookie.value(), known.clone());
        Some(known)
    }

    /// `cookie` decrypted with the current key, else a previous one (then
    /// `true`).
    fn decrypt(&self, cookie: Cookie<'static>) -> Option<(Cookie<'static>, bool)> {
        let jar = cookie::CookieJar::new();
        if let Some(plain) = jar.private(&self.key).decrypt(cookie.clone()) {
            return Some((plain, false));
        }
        self.previous
            .iter()
            .find_map(|key| jar.private(key).decrypt(cookie.clone()))
            .map(|plain| (plain, true))
    }

    /// The session id in `headers`' session cookie, if it decrypts.
    pub fn session_id_in(&self, headers: &HeaderMap) -> Option<SessionId> {
        self.session_id(&self.sent(headers))
    }

    /// Sets the session cookie.
    pub fn set_session(&self, jar: PrivateCookieJar, session_id: &SessionId) -> PrivateCookieJar {
        jar.add(self.build(
            self.session.clone(),
            session_id.secret().to_owned(),
            self.session_max_age,
        ))
    }

    /// Removes the session cookie.
    pub fn clear_session(&self, jar: PrivateCookieJar) -> PrivateCookieJar {
        self.expire(jar, self.session.clone())
    }

    /// The `Set-Cookie` header values that remove the session cookie.
    pub fn session_removal(&self) -> Vec<HeaderValue> {
        set_cookie_values(self.clear_session(self.empty_jar()))
    }

    /// The `Set-Cookie` header values that set the session cookie to `session_id`.
    pub fn session_setting(&self, session_id: &SessionId) -> Vec<HeaderValue> {
        set_cookie_values(self.set_session(self.empty_jar(), session_id))
    }

    fn login_name(&self, state: &str) -> String {
        format!("{}{}", self.login_prefix, &hash_token(state)[..8])
    }

    /// The login cookies in the jar, oldest first.
    fn logins(&self, jar: &PrivateCookieJar) -> Vec<(String, LoginCookie)> {
        let mut logins: Vec<(String, LoginCookie)> = jar
            .iter()
            .filter(|c| c.name().starts_with(&self.login_prefix))
            .filter_map(|c| {
                serde_json::from_str(c.value())
                    .ok()
                    .map(|login| (c.name().to_owned(), login))
            })
            .collect();
        logins.sort_by_key(|(_, l)| l.pending.started);
        logins
    }

    /// Adds the cookie of a new login, dropping the oldest ones beyond the limit.
    pub fn add_login(
        &self,
        mut jar: PrivateCookieJar,
        state: &LoginState,
        login: &LoginCookie,
    ) -> PrivateCookieJar {
        let existing = self.logins(&jar);
        let excess = (existing.len() + 1).saturating_sub(MAX_LOGIN_COOKIES);
        for (name, _) in existing.into_iter().take(excess) {
            jar = self.expire(jar, name);
        }
        let value = serde_json::to_string(login).expect("login cookies serialize");
        jar.add(self.build(self.login_name(state.secret()), value, self.login_max_age))
    }

    /// Expires the login cookie of `state` (its login is done).
    pub fn clear_login(&self, jar: PrivateCookieJar, state: &str) -> PrivateCookieJar {
        self.expire(jar, self.login_name(state))
    }

    /// The login cookie for `state`, if this browser has it (encrypted with
    /// the current key, or a previous one: a login started just before a
    /// rotation still completes).
    pub fn login(
        &self,
        jar: &PrivateCookieJar,
        headers: &HeaderMap,
        state: &str,
    ) -> Option<LoginCookie> {
        let name = self.login_name(state);
        let plain = match jar.get(&name) {
            Some(plain) => plain,
            None => {
                let sent = sent_cookies(headers).find(|c| c.name() == name)?;
                // As set, the value is percent-encoded; decode it first.
                let sent =
                    Cookie::parse_encoded(format!("{}={}", sent.name(), sent.value())).ok()?;
                self.decrypt(sent)?.0
            }
        };
        serde_json::from_str(plain.value()).ok()
    }

    /// Removes every latchkey cookie the browser sent (sign-out), including
    /// ones that no longer decrypt.
    pub fn clear_all(&self, jar: PrivateCookieJar, headers: &HeaderMap) -> PrivateCookieJar {
        self.expire_sent(jar, headers, |name| self.is_ours(name))
    }

    /// Removes every login cookie the browser sent (cookie-bomb recovery).
    pub fn clear_logins(&self, jar: PrivateCookieJar, headers: &HeaderMap) -> PrivateCookieJar {
        self.expire_sent(jar, headers, |name| self.is_login_cookie(name))
    }

    fn expire_sent(
        &self,
        mut jar: PrivateCookieJar,
        headers: &HeaderMap,
        pick: impl Fn(&str) -> bool,
    ) -> PrivateCookieJar {
        for cookie in sent_cookies(headers).filter(|c| pick(c.name())) {
            jar = self.expire(jar, cookie.name().to_owned());
        }
        jar
    }
}

/// The `Set-Cookie` values a jar's changes make.
fn set_cookie_values(jar: PrivateCookieJar) -> Vec<HeaderValue> {
    use axum::response::IntoResponse;
    let response = jar.into_response();
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect()
}

/// Every cookie of the request's `Cookie` headers, as sent (values still
/// percent-encoded), skipping what does not parse.
fn sent_cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        // UTF-8 rather than `to_str`'s visible-ASCII check: it is checked a
        // word at a time, and the cookie parser takes either.
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
}

#[cfg(test)]
pub(crate) mod tests {
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    use base64::Engine;

    use super::*;
    use crate::config::RawSettings;

    /// Cookies for a minimal configuration with this `cookie_secret`.
    pub(crate) fn with_secret(secret: [u8; 32]) -> Cookies {
        let settings = RawSettings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("app".into()),
            redirect_url: Some("http://127.0.0.1:4180/oauth2/callback".into()),
            cookie_secret: Some(
                base64::engine::general_purpose::STANDARD
                    .encode(secret)
                    .into(),
            ),
            email_domains: Some(vec!["*".into()]),
            ..RawSettings::default()
        }
        .validate()
        .unwrap();
        Cookies::new(&settings)
    }

    /// The `Cookie` header a browser sends back after `jar` was set.
    fn sent(jar: PrivateCookieJar) -> HeaderMap {
        let response = (jar, ()).into_response();
        let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        let value = format!("theme=dark; {pair}; lang=en");
        headers.insert(header::COOKIE, HeaderValue::from_str(&value).unwrap());
        headers
    }

    #[test]
    fn session_cookie_decrypts_once_and_stays_authenticated() {
        let cookies = with_secret([7; 32]);
        let jar = cookies.set_session(cookies.empty_jar(), &"TAG.session-id".into());
        let headers = sent(jar);
        assert_eq!(
            cookies.session_id_in(&headers),
            Some("TAG.session-id".into())
        );
        assert_eq!(cookies.decrypted.len(), 1);
        // The second time it comes from the cache, with the same answer.
        assert_eq!(
            cookies.session_id_in(&headers),
            Some("TAG.session-id".into())
        );
        assert_eq!(cookies.decrypted.len(), 1);

        // A value altered by one character neither decrypts nor hits the cache.
        let header = headers[header::COOKIE].to_str().unwrap();
        let start = header.find(&format!("{}=", cookies.session)).unwrap();
        let at = start + cookies.session.len() + 5;
        let flipped = if &header[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &header[..at], &header[at + 1..]);
        let mut bad = HeaderMap::new();
        bad.insert(header::COOKIE, HeaderValue::from_str(&tampered).unwrap());
        assert_eq!(cookies.session_id_in(&bad), None);
        assert_eq!(cookies.decrypted.len(), 1);

        // Another key (another deployment's cookie_secret) cannot read it.
        let other = with_secret([9; 32]);
        assert_eq!(other.session_id_in(&headers), None);
    }

    fn cookie_headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::COOKIE, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_upstream_gets_the_apps_cookies_and_none_of_latchkeys() {
        let cookies = with_secret([7; 32]);
        let both = cookie_headers(&[
            "app=1; _latchkey=abc",
            "latchkey-login-0123abcd=xyz; theme=dark",
        ]);
        let sent = cookies.sent(&both);
        assert!(sent.has_session_cookie());
        assert_eq!(
            sent.into_upstream(),
            UpstreamCookies::Replaced(HeaderValue::from_static("app=1; theme=dark"))
        );

        let only_ours = cookie_headers(&[
            "_latchkey=abc; latchkey-login-0123abcd=xyz",
            "latchkey-signed-out=1",
        ]);
        assert_eq!(
            cookies.sent(&only_ours).into_upstream(),
            UpstreamCookies::Removed
        );

        // Without any of latchkey's cookies the headers stay as sent.
        let apps = cookie_headers(&["app=1", "theme=dark"]);
        let sent = cookies.sent(&apps);
        assert!(!sent.has_session_cookie());
        assert_eq!(sent.into_upstream(), UpstreamCookies::AsSent);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn cookie_header() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "_latchkey",
                "latchkey-login-",
                "abcdefgh",
                "__Host-_latchkey",
                "app",
                "=",
                "=",
                ";",
                "; ",
                " ",
                "\"",
                "%",
                "%3B",
                ",",
                "theme",
                "x",
                "_latchkey=",
                ";_latchkey=",
            ]);
            prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn no_latchkey_cookie_reaches_the_upstream(values in prop::collection::vec(cookie_header(), 1..3)) {
                let cookies = with_secret([7; 32]);
                let mut headers = HeaderMap::new();
                for value in &values {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.append(header::COOKIE, value);
                    }
                }
                let sent = cookies.sent(&headers);
                // Made-up values never decrypt.
                prop_assert!(cookies.session_id(&sent).is_none());
                let forwarded: Vec<String> = match sent.into_upstream() {
                    UpstreamCookies::AsSent => headers
                        .get_all(header::COOKIE)
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect(),
                    UpstreamCookies::Removed => Vec::new(),
                    UpstreamCookies::Replaced(value) => vec![value.to_str().unwrap().to_owned()],
                };
                for value in forwarded {
                    for cookie in Cookie::split_parse(value.as_str()).filter_map(Result::ok) {
                        prop_assert!(!cookies.is_ours(cookie.name()), "{} reached the upstream", cookie.name());
                    }
                }
            }
        }
    }
}

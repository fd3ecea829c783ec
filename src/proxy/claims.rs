//! Claims to headers: which claim names the user, any claim of the ID token
//! as a header of its own (`claim_headers`), the groups separator, and the
//! ID token itself (`pass_id_token`, `pass_authorization_header`), as
//! mod_auth_openidc's `OIDC_CLAIM_*` and oauth2-proxy's header injection
//! offer them.
//!
//! Values come from the ID token the session holds (validated when it was
//! received), else from the userinfo claims kept at sign-in for the
//! configured headers, and from the identity latchkey keeps (`sub`,
//! verified email, groups). Every value is made safe for a header: ASCII controls,
//! non-ASCII characters and `%` itself are percent-encoded (UTF-8), so a
//! claim is never dropped for holding a name with an accent, and never
//! splits or ends a header.

use axum::http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use crate::config::{ClaimHeader, Settings};
use crate::idp::Identity;

/// Encoded in header values: controls (and DEL), `%`; non-ASCII always.
const UNSAFE_IN_HEADERS: &AsciiSet = &CONTROLS.add(b'%').add(0x7f);

/// How identity headers are made, from the settings.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    /// The claim whose value is the user header (`sub`, `email`, any).
    user_claim: String,
    /// Extra headers and the claim path each carries.
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    /// Joins group names (and the items of any array claim).
    groups_separator: String,
    /// Send the ID token as `X-Forwarded-Id-Token` / `X-Auth-Request-Id-Token`.
    pub pass_id_token: bool,
    /// Send the ID token as `Authorization: Bearer`.
    pub pass_authorization_header: bool,
}

impl HeaderRules {
    /// The rules `settings` configure.
    pub fn new(settings: &Settings) -> Self {
        Self {
            user_claim: settings.user_id_claim.clone(),
            claim_headers: (settings.claim_headers.iter())
                .filter_map(|ClaimHeader { header, path }| {
                    Some((
                        HeaderName::from_bytes(header.as_bytes()).ok()?,
                        path.clone(),
                    ))
                })
                .collect(),
            groups_separator: settings.groups_separator.clone(),
            pass_id_token: settings.pass_id_token,
            pass_authorization_header: settings.pass_authorization_header,
        }
    }

    /// The configured claim header names: reserved for latchkey, so a
    /// client's own (under any spelling) never reaches the upstream.
    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.claim_headers.iter().map(|(name, _)| name)
    }
}

/// The header values of one identity, made once per session record version.
#[derive(Debug, Default)]
pub struct IdentityHeaders {
    /// The user (`user_id_claim`).
    pub user: Option<HeaderValue>,
    /// The verified email.
    pub email: Option<HeaderValue>,
    /// The groups, joined by `groups_separator`.
    pub groups: Option<HeaderValue>,
    /// `preferred_username`, when the ID token has one.
    pub preferred_username: Option<HeaderValue>,
    /// Each `claim_headers` entry whose claim the ID token has.
    pub claims: Vec<(HeaderName, HeaderValue)>,
    /// The raw ID token, with `pass_id_token`.
    pub id_token: Option<HeaderValue>,
    /// `Bearer` and the raw ID token, with `pass_authorization_header`.
    pub authorization: Option<HeaderValue>,
}

impl IdentityHeaders {
    /// The headers for `identity` and its raw ID token under `rules`.
    pub fn new(identity: &Identity, id_token: Option<&str>, rules: &HeaderRules) -> Self {
        let claims = id_token.and_then(claims_of);
        let userinfo = Value::Object(identity.userinfo_claims.clone());
        // The ID token's claim, else userinfo's (kept at sign-in).
        let claim = |path: &[String]| {
            claims
                .as_ref()
                .and_then(|c| claim_at(c, path))
                .or_else(|| claim_at(&userinfo, path))
                .and_then(|v| header_value(v, &rules.groups_separator))
        };
        let user = match rules.user_claim.as_str() {
            "sub" => safe(&identity.subject),
            "email" => identity.email.as_deref().and_then(safe),
            other => claim(&[other.to_owned()]),
        };
        Self {
            user,
            email: identity.email.as_deref().and_then(safe),
            groups: (!identity.groups.is_empty())
                .then(|| identity.groups.join(&rules.groups_separator))
                .and_then(|groups| safe(&groups)),
            preferred_username: claim(&["preferred_username".to_owned()]),
            claims: (rules.claim_headers.iter())
                .filter_map(|(name, path)| Some((name.clone(), claim(path)?)))
                .collect(),
            id_token: id_token
                .filter(|_| rules.pass_id_token)
                .and_then(|raw| HeaderValue::from_str(raw).ok()),
            authorization: id_token
                .filter(|_| rules.pass_authorization_header)
                .and_then(|raw| HeaderValue::from_str(&format!("Bearer {raw}")).ok()),
        }
    }
}

/// The claims of a validated ID token (its signature was checked when it
/// was received; here it is only read).
fn claims_of(raw: &str) -> Option<Value> {
    jsonwebtoken::dangerous::insecure_decode::<Value>(raw)
        .ok()
        .map(|data| data.claims)
}

/// The value at `path` (object keys, one per segment; a number segment
/// also indexes an array) in `claims`.
pub fn claim_at<'a>(claims: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(claims, |at, segment| match at {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// A claim as a header value: a string as it is, a number or boolean as
/// written, an array's items joined by `separator`, an object as compact
/// JSON; `null` is no value. Made safe with [`safe`].
pub fn header_value(value: &Value, separator: &str) -> Option<HeaderValue> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(separator),
        other => other.to_string(),
    };
    safe(&text)
}

/// `text` as a header value: controls, DEL, `%` and every non-ASCII
/// character percent-encoded (UTF-8); `None` only when empty.
pub fn safe(text: &str) -> Option<HeaderValue> {
    if text.is_empty() {
        return None;
    }
    let encoded = utf8_percent_encode(text, UNSAFE_IN_HEADERS).to_string();
    HeaderValue::from_str(&encoded).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_safe_and_nothing_is_dropped() {
        for (text, header) in [
            ("plain", "plain"),
            ("José Müller", "Jos%C3%A9 M%C3%BCller"),
            ("a\r\nX-Injected: 1", "a%0D%0AX-Injected: 1"),
            ("100%", "100%25"),
            ("tab\there", "tab%09here"),
            ("del\u{7f}", "del%7F"),
            ("日本", "%E6%97%A5%E6%9C%AC"),
        ] {
            assert_eq!(safe(text).unwrap(), header, "{text:?}");
        }
        assert_eq!(safe(""), None);
    }

    #[test]
    fn claims_are_found_by_path_and_written_plainly() {
        let claims = json!({
            "department": "R&D",
            "org": { "name": "Acme", "units": ["a", "b"] },
            "level": 3,
            "admin": true,
            "nothing": null,
            "roles": ["x", 7],
        });
        let at = |path: &[&str]| {
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            claim_at(&claims, &path).and_then(|v| header_value(v, ";"))
        };
        assert_eq!(at(&["department"]).unwrap(), "R&D");
        assert_eq!(at(&["org", "name"]).unwrap(), "Acme");
        assert_eq!(at(&["org", "units", "1"]).unwrap(), "b");
        assert_eq!(at(&["org", "units"]).unwrap(), "a;b");
        assert_eq!(at(&["level"]).unwrap(), "3");
        assert_eq!(at(&["admin"]).unwrap(), "true");
        assert_eq!(at(&["roles"]).unwrap(), "x;7");
        assert_eq!(
            at(&["org"]).unwrap(),
            r#"{"name":"Acme","units":["a","b"]}"#
        );
        assert_eq!(at(&["nothing"]), None);
        assert_eq!(at(&["missing"]), None);
        assert_eq!(at(&["department", "deeper"]), None);
        assert_eq!(at(&["org", "units", "9"]), None);
    }
}

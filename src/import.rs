//! `latchkey import-oauth2-proxy`: an oauth2-proxy configuration (its TOML
//! config file and/or its `OAUTH2_PROXY_*` environment variables, the
//! environment winning as in oauth2-proxy) as the equivalent latchkey TOML,
//! with a comment on every option that is not carried over and why.
//!
//! Nothing insecure is carried over silently: options that weaken what
//! latchkey always does (`ssl_insecure_skip_verify`, `cookie_secure =
//! false`, plain `code_challenge_method`) become comments saying what
//! latchkey does instead.

use std::collections::BTreeMap;

use toml::Value;

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The latchkey TOML, comments included.
    pub toml: String,
    /// The oauth2-proxy options that were not carried over, each with why.
    pub not_carried: Vec<String>,
}

/// Why an import could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ImportError(String);

/// oauth2-proxy options whose value is a list.
const LIST_OPTIONS: &[&str] = &[
    "upstreams",
    "email_domains",
    "allowed_groups",
    "skip_auth_routes",
    "skip_auth_regex",
    "whitelist_domains",
    "cookie_domains",
    "extra_jwt_issuers",
    "provider_ca_files",
    "allowed_roles",
];

/// The options of the oauth2-proxy configuration `file` (TOML text; empty
/// for none) with `environment` (`(name, value)` pairs; only
/// `OAUTH2_PROXY_*` are read) over them.
pub fn options<'a>(
    file: &str,
    environment: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<String, Value>, ImportError> {
    let table: toml::Table = toml::from_str(file)
        .map_err(|e| ImportError(format!("not an oauth2-proxy config file (TOML): {e}")))?;
    let mut options: BTreeMap<String, Value> = table.into_iter().collect();
    for (name, value) in environment {
        let Some(key) = name.strip_prefix("OAUTH2_PROXY_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let value = if LIST_OPTIONS.contains(&key.as_str()) {
            Value::Array(
                value
                    .split(',')
                    .map(|v| Value::String(v.trim().to_owned()))
                    .filter(|v| v.as_str() != Some(""))
                    .collect(),
            )
        } else {
            match value {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                other => Value::String(other.to_owned()),
            }
        };
        options.insert(key, value);
    }
    Ok(options)
}

/// Builds the latchkey settings out of oauth2-proxy `options`.
struct Writer {
    settings: toml::Table,
    notes: Vec<String>,
}

impl Writer {
    fn set(&mut self, key: &str, value: Value) {
        self.settings.insert(key.to_owned(), value);
    }

    fn note(&mut self, text: String) {
        self.notes.push(text);
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(text).collect(),
        other => text(other)
            .map(|s| {
                s.split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn list(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

/// Converts oauth2-proxy `options` to latchkey TOML.
pub fn convert(options: &BTreeMap<String, Value>) -> Imported {
    let mut w = Writer {
        settings: toml::Table::new(),
        notes: Vec::new(),
    };
    // Options with the same name and meaning.
    const SAME: &[&str] = &[
        "client_id",
        "client_secret",
        "client_secret_file",
        "redirect_url",
        "cookie_secret",
        "cookie_secret_file",
        "cookie_name",
        "skip_jwt_bearer_tokens",
        "pass_access_token",
        "pass_authorization_header",
        "skip_provider_button",
        "user_id_claim",
        "acr_values",
        "ping_path",
        "ready_path",
    ];
    const SAME_LISTS: &[&str] = &[
        "email_domains",
        "allowed_groups",
        "whitelist_domains",
        "extra_jwt_issuers",
        "provider_ca_files",
    ];
    for (key, value) in options {
        let key = key.as_str();
        if SAME.contains(&key) {
            match value {
                Value::Boolean(_) | Value::String(_) => w.set(key, value.clone()),
                other => w.note(format!(
                    "{key} = {other}: not a string or boolean, left out"
                )),
            }
            continue;
        }
        if SAME_LISTS.contains(&key) {
            w.set(key, list(strings(value)));
            continue;
        }
        match key {
            "http_address" => match text(value) {
                Some(address) => {
                    let address = address.trim_start_matches("http://").to_owned();
                    let address = if address.starts_with(':') {
                        format!("0.0.0.0{address}")
                    } else {
                        address
                    };
                    w.set("listen", Value::String(address));
                }
                None => w.note("http_address: not an address, left out".into()),
            },
            "oidc_issuer_url" => {
                if let Some(issuer) = text(value) {
                    w.set("issuer", Value::String(issuer));
                }
            }
            "provider" => match text(value).as_deref() {
                Some("oidc" | "keycloak-oidc" | "adfs" | "entra-id" | "azure" | "gitlab") => {}
                Some("google") if !options.contains_key("oidc_issuer_url") => {
                    w.set("issuer", Value::String("https://accounts.google.com".into()));
                }
                Some("google") => {}
                Some(other) => w.note(format!(
                    "provider = {other:?}: latchkey speaks OpenID Connect only; set issuer to the provider's OIDC issuer"
                )),
                None => {}
            },
            "upstreams" => {
                let upstreams = strings(value);
                match upstreams.as_slice() {
                    [] => {}
                    [one] if one.starts_with("static://") => w.note(format!(
                        "upstreams = [{one:?}]: latchkey answers forward-auth itself when upstream is unset"
                    )),
                    [one, rest @ ..] => {
                        if one.starts_with("http://") || one.starts_with("https://") {
                            w.set("upstream", Value::String(one.clone()));
                        } else {
                            w.note(format!("upstreams: {one:?} is not an http(s) upstream, left out"));
                        }
                        if !rest.is_empty() {
                            w.note(format!(
                                "upstreams: latchkey proxies to one upstream; {} more left out (run one latchkey per app, or route by path in front)",
                                rest.len()
                            ));
                        }
                    }
                }
            }
            "cookie_domains" | "cookie_domain" => {
                let domains = strings(value);
                if let Some(first) = domains.first() {
                    w.set("cookie_domain", Value::String(first.clone()));
                }
                if domains.len() > 1 {
                    w.note(format!(
                        "{key}: latchkey sets cookies for one domain; {} more left out",
                        domains.len() - 1
                    ));
                }
            }
            "banner" | "footer" => match text(value).as_deref() {
                // oauth2-proxy's "-": no banner (latchkey has none by default).
                Some("-") | None => {}
                Some(line) if line.contains('<') => w.note(format!(
                    "{key}: oauth2-proxy shows it as HTML, latchkey as text; it was left out \
                     (write it as plain text, or put the markup in custom_templates_dir's layout.html)"
                )),
                Some(line) => w.set(key, Value::String(line.to_owned())),
            },
            "custom_sign_in_logo" => match text(value).as_deref() {
                Some("-") | None => {}
                Some(logo) if logo.starts_with("http://") => w.note(
                    "custom_sign_in_logo: an http:// image would not load on an https page; give an https:// URL or a file".into(),
                ),
                Some(logo) if !logo.starts_with("https://") && !std::path::Path::new(logo).is_file() => {
                    w.note(format!(
                        "custom_sign_in_logo = {logo:?}: no such file here; left out (copy the image and name its path)"
                    ))
                }
                Some(logo) => w.set(key, Value::String(logo.to_owned())),
            },
            "custom_templates_dir" => w.note(
                "custom_templates_dir: oauth2-proxy's templates are Go templates with other variables; \
                 write latchkey's (see the README's page templates) and set custom_templates_dir to them"
                    .into(),
            ),
            "cookie_expire" => {
                if let Some(ttl) = text(value) {
                    w.set("session_ttl", Value::String(ttl));
                }
            }
            "oidc_groups_claim" => {
                if let Some(claim) = text(value) {
                    w.set("groups_claim", Value::String(claim));
                }
            }
            "scope" => {
                let scopes: Vec<String> = text(value)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !scopes.is_empty() {
                    w.set("scopes", list(scopes));
                }
            }
            "skip_auth_routes" | "skip_auth_regex" => {
                let mut routes = strings(&w.settings.get("skip_auth_routes").cloned().unwrap_or(Value::Array(vec![])));
                routes.extend(strings(value));
                w.set("skip_auth_routes", list(routes));
            }
            "set_authorization_header" => {
                if value.as_bool() == Some(true) {
                    w.set("pass_authorization_header", Value::Boolean(true));
                }
            }
            "insecure_oidc_allow_unverified_email" => {
                w.set("insecure_allow_unverified_email", value.clone());
            }
            "prompt" | "approval_prompt" => {
                if let Some(prompt) = text(value).filter(|p| p != "force" && !p.is_empty()) {
                    let mut params = strings(&w.settings.get("extra_auth_params").cloned().unwrap_or(Value::Array(vec![])));
                    params.push(format!("prompt={prompt}"));
                    w.set("extra_auth_params", list(params));
                } else if text(value).as_deref() == Some("force") {
                    w.note(format!("{key} = \"force\": latchkey asks for consent itself when it needs to (offline_access)"));
                }
            }
            "session_store_type" => {
                if text(value).as_deref() == Some("cookie") {
                    w.note("session_store_type = \"cookie\": latchkey keeps sessions server-side (store, default sqlite://latchkey.db); cookies hold only a session id".into());
                }
            }
            "redis_connection_url" => {
                if let Some(url) = text(value) {
                    w.set("store", Value::String(url));
                }
            }
            "ssl_insecure_skip_verify" | "ssl_upstream_insecure_skip_verify" => {
                if value.as_bool() == Some(true) {
                    w.note(format!("{key} = true: latchkey never skips certificate checks; name the CA in provider_ca_files instead"));
                }
            }
            "cookie_secure" | "cookie_httponly" | "cookie_samesite" | "cookie_path" => w.note(format!(
                "{key}: latchkey decides cookie attributes itself (Secure and __Host-/__Secure- over https, always HttpOnly, SameSite=Lax, Path=/)"
            )),
            "code_challenge_method" => w.note(
                "code_challenge_method: latchkey always uses PKCE S256".into(),
            ),
            "reverse_proxy" | "real_client_ip_header" => w.note(format!(
                "{key}: latchkey sets X-Forwarded-For from the connection and trusts no client header for it"
            )),
            "pass_user_headers" | "set_xauthrequest" | "pass_basic_auth" | "pass_host_header" => {
                if value.as_bool() == Some(false) || key == "pass_basic_auth" {
                    w.note(format!("{key}: latchkey always sends its identity headers and no basic auth"));
                }
            }
            other => w.note(format!("{other}: not carried over (no latchkey equivalent)")),
        }
    }
    let mut toml = String::from(
        "# latchkey configuration imported from oauth2-proxy (latchkey import-oauth2-proxy).\n\
         # Check it with `latchkey serve --config FILE --check-config`.\n",
    );
    if !w.notes.is_empty() {
        toml.push_str("#\n# Not carried over:\n");
        for note in &w.notes {
            toml.push_str(&format!("#   {note}\n"));
        }
    }
    toml.push('\n');
    toml.push_str(&toml::to_string(&w.settings).unwrap_or_default());
    Imported {
        toml,
        not_carried: w.notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;

    const OAUTH2_PROXY_CFG: &str = r#"
http_address = ":4180"
provider = "keycloak-oidc"
oidc_issuer_url = "https://keycloak.example.com/realms/main"
client_id = "wiki"
client_secret = "s3cret"
redirect_url = "https://wiki.example.com/oauth2/callback"
cookie_secret = "MDEyMzQ1Njc4OWFiY2RlZg=="
cookie_domains = [".example.com"]
cookie_expire = "168h"
cookie_secure = true
email_domains = ["example.com"]
allowed_groups = ["staff"]
upstreams = ["http://127.0.0.1:8080/", "http://127.0.0.1:9090/"]
skip_auth_routes = ["GET=^/health$"]
whitelist_domains = [".example.com"]
scope = "openid email profile groups"
session_store_type = "redis"
redis_connection_url = "redis://redis:6379/0"
ssl_insecure_skip_verify = true
pass_access_token = true
footer = "Questions? Call IT on 1234"
banner = "<b>ACME</b>"
custom_templates_dir = "/etc/oauth2-proxy/templates"
"#;

    #[test]
    fn an_oauth2_proxy_config_becomes_latchkey_settings_with_notes() {
        let imported = convert(&options(OAUTH2_PROXY_CFG, []).unwrap());
        let raw: RawSettings = toml::from_str(&imported.toml).expect("valid latchkey TOML");
        assert_eq!(raw.listen.as_deref(), Some("0.0.0.0:4180"));
        assert_eq!(
            raw.issuer.as_deref(),
            Some("https://keycloak.example.com/realms/main")
        );
        assert_eq!(raw.upstream.as_deref(), Some("http://127.0.0.1:8080/"));
        assert_eq!(raw.cookie_domain.as_deref(), Some(".example.com"));
        assert_eq!(raw.session_ttl.as_deref(), Some("168h"));
        assert_eq!(
            raw.scopes.unwrap(),
            ["openid", "email", "profile", "groups"]
        );
        assert_eq!(raw.skip_auth_routes.unwrap(), ["GET=^/health$"]);
        // Text carries over; HTML (shown as text here) is noted instead.
        assert_eq!(raw.footer.as_deref(), Some("Questions? Call IT on 1234"));
        assert_eq!(raw.banner, None);
        for expected in [
            "upstreams",
            "ssl_insecure_skip_verify",
            "cookie_secure",
            "banner",
            "custom_templates_dir",
        ] {
            assert!(
                imported.not_carried.iter().any(|n| n.starts_with(expected)),
                "{expected} not noted: {:?}",
                imported.not_carried
            );
        }
        // The notes are comments: the output is TOML latchkey reads.
        assert!(
            imported
                .toml
                .contains("#   ssl_insecure_skip_verify = true")
        );
    }

    #[test]
    fn the_environment_wins_over_the_file_and_lists_split() {
        let env = [
            ("OAUTH2_PROXY_CLIENT_ID", "from-env"),
            ("OAUTH2_PROXY_EMAIL_DOMAINS", "a.com, b.com"),
            ("OAUTH2_PROXY_SKIP_PROVIDER_BUTTON", "true"),
            ("HOME", "/root"),
        ];
        let imported = convert(&options(OAUTH2_PROXY_CFG, env).unwrap());
        let raw: RawSettings = toml::from_str(&imported.toml).unwrap();
        assert_eq!(raw.client_id.as_deref(), Some("from-env"));
        assert_eq!(raw.email_domains.unwrap(), ["a.com", "b.com"]);
        assert_eq!(raw.skip_provider_button, Some(true));
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused() {
        assert!(options("this is [not toml", []).is_err());
    }
}

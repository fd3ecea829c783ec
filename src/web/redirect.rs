//! The `rd` parameter: where to send the browser after sign-in (or
//! sign-out). A local path is always accepted; anything that a browser
//! could read as another origin (`//host`, `/\host`, a scheme, their
//! percent-encoded forms, control characters) falls back to `/`, and so
//! does one longer than [`MAX_RD`]. With `whitelist_domains`, an absolute
//! `http(s)://` URL on one of those hosts is accepted too (one auth host
//! for many apps), as oauth2-proxy defines them: `app.example.com` that
//! host, `.example.com` or `*.example.com` it and its subdomains; `:PORT`
//! that port only, `:*` any port, no port only the scheme's default.

/// The longest destination kept (it travels in a login cookie and in the
/// `Location` header).
pub const MAX_RD: usize = 2048;

/// `rd` if it is a safe local path of at most [`MAX_RD`] bytes, else `/`.
pub fn local_path(rd: Option<&str>) -> String {
    rd.filter(|rd| rd.len() <= MAX_RD && is_local_path(rd))
        .map(str::to_owned)
        .unwrap_or_else(|| "/".to_owned())
}

fn is_local_path(rd: &str) -> bool {
    // Judge the decoded form too, so that %2F%2F or %5C cannot sneak past.
    let decoded = percent_encoding::percent_decode_str(rd).decode_utf8_lossy();
    // Browsers drop tabs and newlines from URLs ("/\t/evil" becomes "//evil"),
    // so control characters are refused raw and decoded.
    !rd.chars().any(char::is_whitespace)
        && [rd, &*decoded].iter().all(|candidate| {
            candidate.starts_with('/')
                && !candidate.starts_with("//")
                && !candidate.contains('\\')
                && !candidate.chars().any(char::is_control)
        })
}

/// The sign-in URL that comes back to `rd` (made a local path first).
pub fn start_url(rd: &str) -> String {
    start_url_for(&local_path(Some(rd)))
}

fn start_url_for(checked: &str) -> String {
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("rd", checked);
    format!("/oauth2/start?{}", url.finish())
}

/// Which ports of an allowed host a destination may name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ports {
    /// None: the scheme's default port only.
    Default,
    /// This one.
    Exactly(u16),
    /// Any.
    Any,
}

/// One `whitelist_domains` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    /// Lowercase ASCII, without a leading `.` or `*.`.
    host: String,
    /// Whether subdomains of `host` are allowed too.
    subdomains: bool,
    ports: Ports,
}

impl AllowedHost {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim().to_ascii_lowercase();
        let (name, ports) = match entry.rsplit_once(':') {
            Some((name, "*")) => (name, Ports::Any),
            Some((name, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (name, Ports::Exactly(port)),
                _ => return Err(format!("{entry:?} has a bad port")),
            },
            None => (entry.as_str(), Ports::Default),
        };
        let (host, subdomains) = match name.strip_prefix("*.").or_else(|| name.strip_prefix('.')) {
            Some(parent) => (parent, true),
            None => (name, false),
        };
        let plain = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('.')
            && !host.ends_with('.')
            && !host.contains("..")
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if host.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(format!(
                "{entry:?} is an IP address: destinations are named by host name"
            ));
        }
        if !plain {
            return Err(format!(
                "{entry:?} is not a host name (write app.example.com, .example.com or *.example.com, with :PORT or :* if needed; IDN hosts in their xn-- form)"
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            subdomains,
            ports,
        })
    }

    /// Whether `host` on `port` (as written; `None`: the scheme's default,
    /// `default`) is allowed.
    fn allows(&self, host: &str, port: Option<u16>, default: Option<u16>) -> bool {
        let named = host == self.host
            || (self.subdomains
                && host
                    .strip_suffix(self.host.as_str())
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')));
        named
            && match self.ports {
                Ports::Any => true,
                Ports::Default => port.is_none(),
                Ports::Exactly(allowed) => port.or(default) == Some(allowed),
            }
    }
}

/// Where the browser may be sent back to: local paths always, absolute
/// URLs on the `whitelist_domains` hosts. Build it with
/// [`Destinations::new`]; the default allows local paths only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    allowed: Vec<AllowedHost>,
}

impl Destinations {
    /// The destinations `whitelist_domains` allows; `Err` names an entry
    /// that is not a host name.
    pub fn new<S: AsRef<str>>(whitelist: &[S]) -> Result<Self, String> {
        let allowed = whitelist
            .iter()
            .map(|entry| AllowedHost::parse(entry.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether absolute destinations are allowed at all.
    pub fn allows_other_hosts(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// `rd` if it is a safe local path, or an absolute URL on an allowed
    /// host (as the URL parser writes it), of at most [`MAX_RD`] bytes;
    /// else `/`.
    pub fn checked(&self, rd: Option<&str>) -> String {
        match rd {
            Some(rd) if rd.len() <= MAX_RD && is_local_path(rd) => rd.to_owned(),
            Some(rd) if rd.len() <= MAX_RD => self.absolute(rd).unwrap_or_else(|| "/".to_owned()),
            _ => "/".to_owned(),
        }
    }

    /// The sign-in URL that comes back to `rd` (checked first).
    pub fn start_url(&self, rd: &str) -> String {
        start_url_for(&self.checked(Some(rd)))
    }

    fn absolute(&self, rd: &str) -> Option<String> {
        if self.allowed.is_empty() {
            return None;
        }
        // Only the plain form: a lowercase scheme and an authority of host
        // name characters and a port. No userinfo (`@`), no escapes, no
        // backslash, no whitespace or control character anywhere, no
        // Unicode host for a look-alike to hide in.
        let rest = rd
            .strip_prefix("https://")
            .or_else(|| rd.strip_prefix("http://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let plain_authority = !authority.is_empty()
            && authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        let clean = !rd
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
        let decoded = percent_encoding::percent_decode_str(rd).decode_utf8_lossy();
        if !plain_authority || !clean || decoded.chars().any(|c| c.is_control() || c == '\\') {
            return None;
        }
        let url = url::Url::parse(rd).ok()?;
        let host = match url.host()? {
            url::Host::Domain(host) => host.to_owned(),
            _ => return None,
        };
        let allowed = url.username().is_empty()
            && url.password().is_none()
            && (self.allowed.iter())
                .any(|a| a.allows(&host, url.port(), url.port_or_known_default()));
        let written = url.to_string();
        (allowed && written.len() <= MAX_RD).then_some(written)
    }
}

#[cfg(test)]
mod tests {
    use super::{Destinations, MAX_RD, local_path};

    fn whitelist() -> Destinations {
        Destinations::new(&[".example.test", "exact.other.test:8443", "any.port.test:*"]).unwrap()
    }

    #[test]
    fn whitelisted_hosts_are_destinations() {
        let d = whitelist();
        for (rd, kept) in [
            (
                "https://app1.example.test/page?q=1#f",
                "https://app1.example.test/page?q=1#f",
            ),
            ("https://example.test/", "https://example.test/"),
            (
                "http://deep.app.example.test",
                "http://deep.app.example.test/",
            ),
            (
                "https://app1.example.test:443/",
                "https://app1.example.test/",
            ),
            (
                "https://exact.other.test:8443/x",
                "https://exact.other.test:8443/x",
            ),
            ("https://any.port.test:9999/", "https://any.port.test:9999/"),
            ("https://any.port.test/", "https://any.port.test/"),
            ("https://APP1.example.test/", "https://app1.example.test/"),
            ("/local/still", "/local/still"),
        ] {
            assert_eq!(d.checked(Some(rd)), kept, "{rd}");
        }
    }

    #[test]
    fn every_other_destination_is_slash() {
        let d = whitelist();
        let long = format!("https://app1.example.test/{}", "a".repeat(MAX_RD));
        for rd in [
            "https://evil.test/",
            "https://example.test.evil.test/",
            "https://evilexample.test/",
            "https://app1.example.test:8080/",
            "https://exact.other.test/",
            "https://exact.other.test:8444/",
            "https://sub.exact.other.test:8443/",
            "https://user@app1.example.test/",
            "https://app1.example.test@evil.test/",
            "https://evil.test#@app1.example.test/",
            "https://evil.test\\@app1.example.test/",
            "https://evil.test%2F@app1.example.test/",
            "https://app1.example.test%2eevil.test/",
            "https://app1%2Eexample.test/",
            "https://xn--pp1-8na.example.test.evil/",
            "https://аpp1.example.test/",
            "https://app1.example.test\\@evil.test",
            "https:/\\app1.example.test/",
            "https:app1.example.test/",
            "HTTPS://app1.example.test/",
            "javascript://app1.example.test/%0aalert(1)",
            "ftp://app1.example.test/",
            "https://app1.example.test/\tx",
            "https://app1.example.test/%00",
            " https://app1.example.test/",
            "https://127.0.0.1/",
            "https://[::1]/",
            "//app1.example.test/",
            &long,
        ] {
            assert_eq!(d.checked(Some(rd)), "/", "{rd:?}");
        }
        // Without a whitelist, no absolute URL passes at all.
        let none = Destinations::default();
        assert_eq!(none.checked(Some("https://app1.example.test/")), "/");
    }

    #[test]
    fn whitelist_entries_must_be_host_names() {
        for bad in [
            "",
            "*",
            "*.",
            ".",
            "https://example.test",
            "example.test/",
            "a..b",
            "exa mple.test",
            "example.test:0",
            "example.test:x",
            "bücher.test",
            "127.0.0.1",
            ".10.0.0.1:*",
        ] {
            assert!(Destinations::new(&[bad]).is_err(), "{bad:?}");
        }
        assert!(Destinations::new(&["*.example.test", "xn--bcher-kva.test", "a.test:80"]).is_ok());
    }

    #[test]
    fn local_paths_pass() {
        let longest = format!("/{}", "a".repeat(MAX_RD - 1));
        for rd in [
            "/",
            "/app",
            "/app/x?y=1&z=%2B&s=%20",
            "/a/b#frag",
            "/a+b",
            &longest,
        ] {
            assert_eq!(local_path(Some(rd)), rd);
        }
    }

    #[test]
    fn everything_else_is_slash() {
        let too_long = format!("/{}", "a".repeat(MAX_RD));
        for rd in [
            too_long.as_str(),
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "%2F%2Fevil.example",
            "/%2F/evil.example",
            "/%5Cevil.example",
            "/%5C%5Cevil.example",
            "evil.example",
            "",
            "/\tx",
            "/%09/evil.example",
            "/ /evil",
        ] {
            assert_eq!(local_path(Some(rd)), "/", "{rd:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{Destinations, local_path};

        fn rd() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/",
                "//",
                "\\",
                "%2f",
                "%2F",
                "%5c",
                "%5C",
                "%09",
                "\t",
                "\n",
                " ",
                "http:",
                "javascript:",
                "evil.example",
                "@",
                "?",
                "#",
                "a",
                "..",
                "%2e",
                "%00",
                "%",
                "~",
                ":",
                "%3a",
            ]);
            prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn every_accepted_rd_stays_on_the_origin(rd in rd()) {
                let kept = local_path(Some(&rd));
                prop_assert!(kept == "/" || kept == rd);
                let base = url::Url::parse("https://app.example/deep/page").unwrap();
                let landed = base.join(&kept).unwrap();
                prop_assert_eq!(landed.origin(), base.origin(), "{:?}", kept);
                prop_assert!(kept.len() <= super::super::MAX_RD);
            }

            #[test]
            fn every_accepted_absolute_rd_is_on_an_allowed_host(rd in rd()) {
                let d = Destinations::new(&[".example.test"]).unwrap();
                for candidate in [format!("https://app.example.test{rd}"), format!("https://{rd}"), rd.clone()] {
                    let kept = d.checked(Some(&candidate));
                    let base = url::Url::parse("https://auth.example.test/deep/page").unwrap();
                    let landed = base.join(&kept).unwrap();
                    let host = landed.host_str().unwrap_or_default().to_owned();
                    prop_assert!(host == "example.test" || host.ends_with(".example.test"), "{:?} -> {:?}", candidate, kept);
                    prop_assert!(landed.username().is_empty() && landed.password().is_none());
                }
            }

            #[test]
            fn nothing_panics_on_any_text(rd in ".{0,64}") {
                let kept = local_path(Some(&rd));
                let base = url::Url::parse("https://app.example/").unwrap();
                prop_assert_eq!(base.join(&kept).unwrap().origin(), base.origin());
            }
        }
    }
}

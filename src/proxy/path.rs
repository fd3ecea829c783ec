//! One canonical request path, decided before any routing decision.
//!
//! Routing (latchkey's own endpoints, `skip_auth_routes`) and forwarding must
//! see the same path, or a path that one side reads differently from the other
//! walks around authentication: `/static/../admin` matches `^/static/` here and
//! is `/admin` to an upstream that normalises paths (Tomcat, Spring, nginx).
//! So every request path is first brought to its canonical form, and that
//! form is what is matched **and** what is forwarded:
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!   and other escapes get upper-case hex (RFC 3986 §6.2.2: both are the same
//!   URI);
//! - dot segments are resolved (RFC 3986 §5.2.4) and `//` is collapsed;
//! - forms that upstreams read in more than one way are refused: an encoded
//!   `/` (`%2F`), a backslash raw or encoded, a dot segment with path
//!   parameters (`..;`, `.;x`, Tomcat's reading), an encoded `%` introducing
//!   another escape (`%252e`, read twice by some servers), control
//!   characters raw or encoded, malformed escapes, and anything that is not an
//!   absolute path.
//!
//! A canonical path is a fixed point: canonicalising it again changes nothing.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `*`).
    #[error("the request path is not an absolute path")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the request path has a malformed percent-escape")]
    MalformedEscape,
    /// `%2F`: an encoded slash, a segment separator to some servers and not to others.
    #[error("the request path has an encoded slash")]
    EncodedSlash,
    /// A backslash, raw or encoded: a separator to some servers.
    #[error("the request path has a backslash")]
    Backslash,
    /// `%25` before two hex digits: decoded twice, it is another path.
    #[error("the request path is percent-encoded twice")]
    DoubleEncoded,
    /// A control character or space, raw or encoded.
    #[error("the request path has a control character")]
    ControlCharacter,
    /// A dot segment with path parameters (`..;x`), a dot segment to Tomcat and Jetty.
    #[error("the request path has a dot segment with parameters")]
    DotSegmentParameters,
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` needs a closer look: the fast path for ordinary requests,
/// which have no escapes, no dots after a slash, no doubled slashes and
/// nothing unusual.
fn looks_plain(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut previous = 0u8;
    for &byte in path {
        let suspicious = matches!(byte, b'%' | b'\\' | b';')
            || byte <= b' '
            || byte >= 0x7f
            || (previous == b'/' && matches!(byte, b'/' | b'.'));
        if suspicious {
            return false;
        }
        previous = byte;
    }
    true
}

/// The canonical form of the request path `path` (without the query), or
/// why it is refused. Borrows `path` when it already is canonical.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    if looks_plain(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let raw_segments: Vec<&str> = path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    for (index, raw) in raw_segments.iter().enumerate() {
        let segment = normalise_segment(raw)?;
        let is_last = index == last;
        match segment.as_str() {
            // `//` collapses, but a trailing slash stays.
            "" if !is_last => {}
            "." => {
                if is_last {
                    segments.push(String::new());
                }
            }
            ".." => {
                segments.pop();
                if is_last {
                    segments.push(String::new());
                }
            }
            _ => {
                let name = segment.split(';').next().unwrap_or("");
                if name == "." || name == ".." {
                    return Err(PathError::DotSegmentParameters);
                }
                segments.push(segment);
            }
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for segment in &segments {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    Ok(if canonical == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(canonical)
    })
}

/// One segment with unreserved escapes decoded and the others in upper-case
/// hex; refuses what [`canonical`] refuses.
fn normalise_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::MalformedEscape);
                };
                let decoded = high * 16 + low;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    _ if is_unreserved(decoded) => out.push(char::from(decoded)),
                    _ => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(high)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(low)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x20 | 0x7f.. => return Err(PathError::ControlCharacter),
            _ => {
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    // Judged on the result, so that `%25%61a` (which becomes `%25aa`) is
    // caught as surely as `%25aa` itself: a canonical path stays canonical.
    let double_encoded = out.as_bytes().windows(5).any(|w| {
        w[..3].eq_ignore_ascii_case(b"%25")
            && hex_value(w[3]).is_some()
            && hex_value(w[4]).is_some()
    });
    if double_encoded {
        return Err(PathError::DoubleEncoded);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_are_borrowed_unchanged() {
        for path in [
            "/",
            "/app/page",
            "/a/b.css",
            "/a/",
            "/x-y_z~1",
            "/a%20b",
            "/caf%C3%A9",
        ] {
            assert!(
                matches!(canonical(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn equivalent_forms_become_one() {
        for (path, expected) in [
            ("/static/../admin", "/admin"),
            ("/static/%2e%2e/admin", "/admin"),
            ("/static/%2E%2E/admin", "/admin"),
            ("/static/.%2e/admin", "/admin"),
            ("/static/./x", "/static/x"),
            ("//static//x", "/static/x"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../x", "/x"),
            ("/..", "/"),
            ("/%7Euser", "/~user"),
            ("/%61dmin", "/admin"),
            ("/a%3ab", "/a%3Ab"),
            ("/a;jsessionid=1/b", "/a;jsessionid=1/b"),
        ] {
            assert_eq!(canonical(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        for (path, error) in [
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/static/..%2fadmin", PathError::EncodedSlash),
            ("/static/%2F", PathError::EncodedSlash),
            ("/static/..\\admin", PathError::Backslash),
            ("/static/..%5cadmin", PathError::Backslash),
            ("/static/..;/admin", PathError::DotSegmentParameters),
            ("/static/.;x/admin", PathError::DotSegmentParameters),
            ("/static/%2e%2e;/admin", PathError::DotSegmentParameters),
            ("/static/%252e%252e/admin", PathError::DoubleEncoded),
            // Found by the property test: decoding `%61` made `%25aa`.
            ("/%25%61a", PathError::DoubleEncoded),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0d%0ab", PathError::ControlCharacter),
            ("/a%", PathError::MalformedEscape),
            ("/a%g1", PathError::MalformedEscape),
        ] {
            assert_eq!(canonical(path), Err(error), "{path}");
        }
    }

    #[test]
    fn a_literal_percent_sign_is_kept() {
        assert_eq!(canonical("/100%25").as_deref(), Ok("/100%25"));
        assert_eq!(canonical("/100%25.txt").as_deref(), Ok("/100%25.txt"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::canonical;

        /// Path pieces chosen for what servers read differently.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/", "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ";", ";x=1",
                "a", "B", "%61", "%41", "%25", "%252e", "~", "%7e", "%7E", "%00", "%0a", "%",
                "%g0", "%20", "%3a", "static", "admin", "-", "_",
            ]);
            prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn canonical_paths_are_fixed_points_with_no_ambiguity(raw in path()) {
                if let Ok(canonical) = canonical(&raw) {
                    let again = canonical.to_string();
                    // A fixed point, borrowed the second time.
                    prop_assert!(matches!(
                        super::super::canonical(&again),
                        Ok(std::borrow::Cow::Borrowed(p)) if p == again
                    ));
                    prop_assert!(again.starts_with('/'));
                    prop_assert!(!again.contains("//"));
                    prop_assert!(!again.contains('\\'));
                    let upper = again.to_ascii_uppercase();
                    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"));
                    prop_assert!(!upper.contains("%2E"), "{again}");
                    for segment in again.split('/') {
                        let name = segment.split(';').next().unwrap();
                        prop_assert!(name != "." && name != "..", "{again}");
                    }
                    // An upstream that normalises as browsers do (the URL
                    // standard) reads the very path latchkey matched.
                    let parsed = url::Url::parse(&format!("http://upstream{again}")).unwrap();
                    prop_assert_eq!(parsed.path(), again.as_str());
                }
            }

            #[test]
            fn nothing_panics_on_any_text(raw in ".{0,64}") {
                let _ = canonical(&raw);
            }
        }
    }
}

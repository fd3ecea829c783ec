//! The `rd` parameter: where to send the browser after sign-in. Only a local
//! path is accepted; anything that a browser could read as another origin
//! (`//host`, `/\host`, a scheme, their percent-encoded forms, control
//! characters) falls back to `/`.

/// `rd` if it is a safe local path, else `/`.
pub fn local_path(rd: Option<&str>) -> String {
    rd.filter(|rd| is_local_path(rd))
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

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn local_paths_pass() {
        for rd in ["/", "/app", "/app/x?y=1&z=%2B&s=%20", "/a/b#frag", "/a+b"] {
            assert_eq!(local_path(Some(rd)), rd);
        }
    }

    #[test]
    fn everything_else_is_slash() {
        for rd in [
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
}

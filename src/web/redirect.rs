//! The `rd` parameter: where to send the browser after sign-in. Only a local
//! path is accepted; anything that a browser could read as another origin
//! (`//host`, `/\host`, a scheme, their percent-encoded forms, control
//! characters) falls back to `/`, and so does one longer than [`MAX_RD`].

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
    let mut url = url::form_urlencoded::Serializer::new(String::new());
    url.append_pair("rd", &local_path(Some(rd)));
    format!("/oauth2/start?{}", url.finish())
}

#[cfg(test)]
mod tests {
    use super::{MAX_RD, local_path};

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

        use super::super::local_path;

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
            fn nothing_panics_on_any_text(rd in ".{0,64}") {
                let kept = local_path(Some(&rd));
                let base = url::Url::parse("https://app.example/").unwrap();
                prop_assert_eq!(base.join(&kept).unwrap().origin(), base.origin());
            }
        }
    }
}

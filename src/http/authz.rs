//! Authorization after authentication: `email_domains`, `allowed_emails` and
//! `allowed_groups`. At least one is set (the settings refuse to start
//! otherwise); `email_domains = ["*"]` admits every account, with or without
//! a (verified) email.

use crate::config::Settings;
use crate::idp::Identity;

/// `Ok` if `identity` may use the app; `Err` says why not.
pub fn check(settings: &Settings, identity: &Identity) -> Result<(), String> {
    let everyone = settings.email_domains.iter().any(|d| d == "*");
    let email_rules =
        !everyone && (!settings.email_domains.is_empty() || !settings.allowed_emails.is_empty());
    if email_rules {
        let email = identity.email.as_deref().unwrap_or("").to_ascii_lowercase();
        let listed = settings
            .allowed_emails
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&email));
        // Emails reach here with exactly one `@` (see `usable_email`); split
        // at the first so that a second one could never pass as the domain.
        let domain_ok = email.split_once('@').is_some_and(|(_, domain)| {
            !domain.contains('@')
                && settings
                    .email_domains
                    .iter()
                    .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
        });
        if email.is_empty() || !(listed || domain_ok) {
            return Err(if email.is_empty() {
                "your account has no email address, and this app only admits certain emails".into()
            } else {
                format!("{email} is not allowed to use this app")
            });
        }
    }
    if !settings.allowed_groups.is_empty()
        && !identity
            .groups
            .iter()
            .any(|g| settings.allowed_groups.contains(g))
    {
        return Err("you are not in a group that may use this app".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawSettings;
    use base64::Engine;

    fn settings(domains: &[&str], emails: &[&str], groups: &[&str]) -> Settings {
        let list = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
        RawSettings {
            issuer: Some("https://idp.example.com".into()),
            client_id: Some("app".into()),
            redirect_url: Some("https://app.example.com/oauth2/callback".into()),
            cookie_secret: Some(
                base64::engine::general_purpose::STANDARD
                    .encode([1u8; 32])
                    .into(),
            ),
            email_domains: list(domains),
            allowed_emails: list(emails),
            allowed_groups: list(groups),
            ..RawSettings::default()
        }
        .validate()
        .unwrap()
    }

    fn who(email: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://idp.example.com".into(),
            subject: "u".into(),
            email: email.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn a_star_admits_everyone_even_without_email() {
        assert!(check(&settings(&["*"], &[], &[]), &who(None, &[])).is_ok());
        // ... but not past a group rule.
        let s = settings(&["*"], &[], &["admins"]);
        assert!(check(&s, &who(Some("a@x.y"), &["staff"])).is_err());
        assert!(check(&s, &who(None, &["admins"])).is_ok());
    }

    #[test]
    fn a_second_at_sign_never_passes_as_the_domain() {
        let s = settings(&["corp.com"], &[], &[]);
        assert!(check(&s, &who(Some("a@evil.test@corp.com"), &[])).is_err());
    }

    #[test]
    fn email_domains_and_exceptions() {
        let s = settings(&["example.com"], &["guest@other.org"], &[]);
        assert!(check(&s, &who(Some("a@example.com"), &[])).is_ok());
        assert!(check(&s, &who(Some("A@EXAMPLE.COM"), &[])).is_ok());
        assert!(check(&s, &who(Some("guest@other.org"), &[])).is_ok());
        assert!(check(&s, &who(Some("a@other.org"), &[])).is_err());
        assert!(check(&s, &who(Some("a@example.com.evil.org"), &[])).is_err());
        assert!(check(&s, &who(None, &[])).is_err());
        assert!(check(&settings(&["*"], &[], &[]), &who(Some("x@y.z"), &[])).is_ok());
    }

    #[test]
    fn groups_need_one_match() {
        let s = settings(&[], &[], &["admins", "ops"]);
        assert!(check(&s, &who(None, &["staff", "ops"])).is_ok());
        assert!(check(&s, &who(None, &["staff"])).is_err());
        assert!(check(&s, &who(None, &[])).is_err());
    }
}

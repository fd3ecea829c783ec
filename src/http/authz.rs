//! Authorization after authentication: `email_domains`, `allowed_emails` and
//! `allowed_groups`. Empty lists allow everyone.

use crate::config::Settings;
use crate::idp::Identity;

/// `Ok` if `identity` may use the app; `Err` says why not.
pub fn check(settings: &Settings, identity: &Identity) -> Result<(), String> {
    let email_rules = !settings.email_domains.is_empty() || !settings.allowed_emails.is_empty();
    if email_rules {
        let email = identity.email.as_deref().unwrap_or("").to_ascii_lowercase();
        let listed = settings
            .allowed_emails
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&email));
        let domain_ok = email.rsplit_once('@').is_some_and(|(_, domain)| {
            settings
                .email_domains
                .iter()
                .any(|d| d == "*" || d.trim_start_matches('@').eq_ignore_ascii_case(domain))
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

//! Who may pass once signed in: [`AccessPolicy`], the one type behind
//! `serve`'s `email_domains` / `allowed_emails` / `allowed_groups` and the
//! per-route rules of [`RequireLoginLayer`](super::RequireLoginLayer).
//!
//! Email rules and group rules both apply when both are set. Emails reach
//! here only when verified and with exactly one `@` (see
//! [`usable_email`](crate::oidc::id_token::usable_email)); a policy that names
//! emails fails closed for an identity without one.

use std::fmt;
use std::sync::Arc;

use crate::idp::Identity;

/// A caller-supplied rule: `Ok` to admit, `Err(reason)` to refuse (the
/// reason is shown to the user on the "access denied" page).
type Rule = Arc<dyn Fn(&Identity) -> Result<(), String> + Send + Sync>;

/// A rule over the caller's ID token claims (all of them, standard and not).
type ClaimRule = Arc<dyn Fn(&Claims) -> bool + Send + Sync>;

/// An ID token's claims, by name.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Which signed-in identities may pass. Cheap to clone.
///
/// ```
/// use latchkey::web::AccessPolicy;
///
/// let admins = AccessPolicy::email_domains(["example.com"]).and_groups(["admins"]);
/// let staff_only = AccessPolicy::everyone()
///     .and_require("your account is not a staff account", |who| who.subject.starts_with("staff-"));
/// # let _ = (admins, staff_only);
/// ```
#[derive(Clone, Default)]
pub struct AccessPolicy {
    /// `["*"]`: any email or none; otherwise verified emails in these domains.
    email_domains: Vec<String>,
    /// Exact (verified) addresses admitted besides the domains.
    emails: Vec<String>,
    /// At least one of these groups, when not empty.
    groups: Vec<String>,
    /// Further rules, all of which must pass.
    rules: Vec<Rule>,
    /// Rules over the ID token's claims, with the reason shown when one fails.
    claim_rules: Vec<(String, ClaimRule)>,
}

impl fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("email_domains", &self.email_domains)
            .field("emails", &self.emails)
            .field("groups", &self.groups)
            .field("rules", &self.rules.len())
            .field("claim_rules", &self.claim_rules.len())
            .finish()
    }
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl AccessPolicy {
    /// Every identity the provider signs in (`email_domains = ["*"]`).
    pub fn everyone() -> Self {
        Self::email_domains(["*"])
    }

    /// Verified emails in these domains (`"*"` admits every identity).
    pub fn email_domains<I: IntoIterator<Item = S>, S: Into<String>>(domains: I) -> Self {
        Self {
            email_domains: strings(domains),
            ..Self::default()
        }
    }

    /// These exact (verified) email addresses.
    pub fn emails<I: IntoIterator<Item = S>, S: Into<String>>(emails: I) -> Self {
        Self {
            emails: strings(emails),
            ..Self::default()
        }
    }

    /// Members of at least one of these groups.
    pub fn groups<I: IntoIterator<Item = S>, S: Into<String>>(groups: I) -> Self {
        Self {
            groups: strings(groups),
            ..Self::default()
        }
    }

    /// Also admits these exact (verified) addresses (an exception to the domains).
    pub fn or_emails<I: IntoIterator<Item = S>, S: Into<String>>(mut self, emails: I) -> Self {
        self.emails.extend(strings(emails));
        self
    }

    /// Also requires membership of at least one of these groups.
    pub fn and_groups<I: IntoIterator<Item = S>, S: Into<String>>(mut self, groups: I) -> Self {
        self.groups.extend(strings(groups));
        self
    }

    /// Also requires `rule` to hold; `reason` completes "You are signed in
    /// as …, but {reason}." on the page of a refused identity.
    pub fn and_require(
        self,
        reason: impl Into<String>,
        rule: impl Fn(&Identity) -> bool + Send + Sync + 'static,
    ) -> Self {
        let reason = reason.into();
        self.and_check(move |identity| {
            if rule(identity) {
                Ok(())
            } else {
                Err(reason.clone())
            }
        })
    }

    /// Also requires `check` to return `Ok`; its `Err` is the reason shown.
    pub fn and_check(
        mut self,
        check: impl Fn(&Identity) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Arc::new(check));
        self
    }

    /// Also requires `rule` to hold of the caller's ID token claims (every
    /// claim, by name, as the provider sent it): `acr`, `amr`, a department…
    /// A caller without a readable ID token fails it. `reason` is shown as
    /// for [`and_require`](Self::and_require).
    pub fn and_claim(
        mut self,
        reason: impl Into<String>,
        rule: impl Fn(&Claims) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.claim_rules.push((reason.into(), Arc::new(rule)));
        self
    }

    /// Whether `signed_in` may pass: [`check`](Self::check) on its identity,
    /// then the claim rules on its ID token.
    pub fn check_signed_in(&self, signed_in: &super::SignedIn) -> Result<(), String> {
        self.check(signed_in.identity())?;
        if self.claim_rules.is_empty() {
            return Ok(());
        }
        let claims = signed_in.id_token().and_then(|raw| {
            let claims = crate::oidc::id_token::claims_of_validated::<
                crate::oidc::id_token::ExtraClaims,
            >(raw)
            .ok()?;
            match serde_json::to_value(&claims).ok()? {
                serde_json::Value::Object(all) => Some(all),
                _ => None,
            }
        });
        let claims = claims.unwrap_or_default();
        match self.claim_rules.iter().find(|(_, rule)| !rule(&claims)) {
            Some((reason, _)) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Whether the policy names no one at all (no emails, domains, groups or
    /// rules): `serve` refuses to start with such a policy.
    pub fn is_empty(&self) -> bool {
        self.email_domains.is_empty()
            && self.emails.is_empty()
            && self.groups.is_empty()
            && self.rules.is_empty()
            && self.claim_rules.is_empty()
    }

    /// `Ok` if `identity` may pass; `Err` says why not, in words for the user.
    pub fn check(&self, identity: &Identity) -> Result<(), String> {
        let everyone = self.email_domains.iter().any(|d| d == "*");
        let email_rules = !everyone && (!self.email_domains.is_empty() || !self.emails.is_empty());
        if email_rules {
            let email = identity.email.as_deref().unwrap_or("").to_ascii_lowercase();
            let listed = self.emails.iter().any(|e| e.eq_ignore_ascii_case(&email));
            // Split at the first `@` so that a second one could never pass
            // as the domain.
            let domain_ok = email.split_once('@').is_some_and(|(_, domain)| {
                !domain.contains('@')
                    && self
                        .email_domains
                        .iter()
                        .any(|d| d.trim_start_matches('@').eq_ignore_ascii_case(domain))
            });
            if email.is_empty() {
                return Err(
                    "your account has no email address, and this app only admits certain emails"
                        .into(),
                );
            }
            if !(listed || domain_ok) {
                return Err(format!("{email} is not allowed to use this app"));
            }
        }
        if !self.groups.is_empty() && !identity.groups.iter().any(|g| self.groups.contains(g)) {
            return Err("you are not in a group that may use this app".into());
        }
        self.rules.iter().try_for_each(|rule| rule(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(email: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://idp.example.com".into(),
            subject: "u".into(),
            email: email.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            sid: None,
            issued_at: None,
            userinfo_claims: Default::default(),
        }
    }

    #[test]
    fn a_star_admits_everyone_even_without_email() {
        assert!(AccessPolicy::everyone().check(&who(None, &[])).is_ok());
        // ... but not past a group rule.
        let p = AccessPolicy::everyone().and_groups(["admins"]);
        assert!(p.check(&who(Some("a@x.y"), &["staff"])).is_err());
        assert!(p.check(&who(None, &["admins"])).is_ok());
    }

    #[test]
    fn a_second_at_sign_never_passes_as_the_domain() {
        let p = AccessPolicy::email_domains(["corp.com"]);
        assert!(p.check(&who(Some("a@evil.test@corp.com"), &[])).is_err());
    }

    #[test]
    fn email_domains_and_exceptions() {
        let p = AccessPolicy::email_domains(["example.com"]).or_emails(["guest@other.org"]);
        assert!(p.check(&who(Some("a@example.com"), &[])).is_ok());
        assert!(p.check(&who(Some("A@EXAMPLE.COM"), &[])).is_ok());
        assert!(p.check(&who(Some("guest@other.org"), &[])).is_ok());
        assert!(p.check(&who(Some("a@other.org"), &[])).is_err());
        assert!(p.check(&who(Some("a@example.com.evil.org"), &[])).is_err());
        assert!(p.check(&who(None, &[])).is_err());
        assert!(
            AccessPolicy::emails(["x@y.z"])
                .check(&who(Some("X@Y.Z"), &[]))
                .is_ok()
        );
    }

    #[test]
    fn groups_need_one_match() {
        let p = AccessPolicy::groups(["admins", "ops"]);
        assert!(p.check(&who(None, &["staff", "ops"])).is_ok());
        assert!(p.check(&who(None, &["staff"])).is_err());
        assert!(p.check(&who(None, &[])).is_err());
    }

    #[test]
    fn rules_add_to_the_lists_and_say_why() {
        let p = AccessPolicy::groups(["staff"])
            .and_require("only alice may", |who| who.subject == "alice");
        let mut alice = who(None, &["staff"]);
        alice.subject = "alice".into();
        assert!(p.check(&alice).is_ok());
        assert_eq!(
            p.check(&who(None, &["staff"])),
            Err("only alice may".into())
        );
        // A rule never admits someone the lists refuse.
        let mut outsider = alice.clone();
        outsider.groups.clear();
        assert!(p.check(&outsider).is_err());
        assert!(AccessPolicy::default().is_empty());
        assert!(!AccessPolicy::everyone().is_empty());
    }
}

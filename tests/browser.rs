//! latchkey in a real browser: Debian's headless Chromium, driven through
//! ChromeDriver, against the demo's parts (the development IdP, the sample
//! app, latchkey in front), each test on ports of its own. What a person
//! does — deep links, two tabs, a double click, the back button, signing
//! out in another tab — with the cookies, redirects, caches and CSP a
//! browser really enforces. Every latchkey page is checked for console
//! errors and with axe-core; screenshots go to `target/browser-shots/`.
//!
//! Runs when `LATCHKEY_TEST_CHROMEDRIVER` is set (`.ci/run` sets it).

mod common;

use std::time::Duration;

use common::chromium::{Browser, Options, chromedriver};
use common::proxy::Harness;
use latchkey::config::RawSettings;

/// The browser suite's driver, or why it skips.
fn driver() -> Option<String> {
    let found = chromedriver();
    if found.is_none() {
        eprintln!("skipping: set LATCHKEY_TEST_CHROMEDRIVER to chromedriver to run it");
    }
    found
}

/// latchkey as the demo runs it: sign-out ends at the IdP and comes back
/// to latchkey's signed-out page (registered there), in front of the sample
/// app (`with_app`) or in forward-auth mode, with `customize` on top.
async fn demo(with_app: bool, customize: impl FnOnce(&mut RawSettings)) -> Harness {
    let upstream = match with_app {
        true => Some(common::proxy::serve_sample_app().await),
        false => None,
    };
    let signed_out = |root: &str| format!("{root}oauth2/signed_out");
    Harness::start_with_idp(
        upstream,
        |idp| {
            // Its counters, for a page that watches them.
            idp.test_knobs = true;
            for client in &mut idp.clients {
                client.post_logout_redirect_uris = client
                    .post_logout_redirect_uris
                    .iter()
                    .map(|u| signed_out(u))
                    .collect();
            }
        },
        |raw| {
            raw.post_logout_redirect_url = raw.post_logout_redirect_url.as_deref().map(signed_out);
            customize(raw);
        },
    )
    .await
}

/// [`demo`] in front of the sample app, sending browsers straight to the
/// IdP (no sign-in page in between).
async fn app_demo() -> Harness {
    demo(true, |raw| raw.skip_provider_button = Some(true)).await
}

/// [`demo`] over https on `localhost` with `pki`'s certificate (the IdP
/// stays on http://127.0.0.1), sending browsers straight to the IdP.
async fn demo_over_https(pki: &common::tls::TestPki) -> Harness {
    let signed_out = |root: &str| format!("{root}oauth2/signed_out");
    let https = |url: &str| url.replace("http://", "https://");
    Harness::start_named(
        Some("localhost"),
        Some(common::proxy::serve_sample_app().await),
        |idp| {
            for client in &mut idp.clients {
                client.redirect_uris = client.redirect_uris.iter().map(|u| https(u)).collect();
                client.post_logout_redirect_uris = (client.post_logout_redirect_uris.iter())
                    .map(|u| signed_out(&https(u)))
                    .collect();
            }
        },
        |raw| {
            raw.redirect_url = raw.redirect_url.as_deref().map(https);
            raw.post_logout_redirect_url =
                (raw.post_logout_redirect_url.as_deref()).map(|u| signed_out(&https(u)));
            raw.skip_provider_button = Some(true);
            raw.tls_cert_file = Some(pki.cert_file.clone());
            raw.tls_key_file = Some(pki.key_file.clone());
        },
    )
    .await
}

/// The number of live sessions in the harness's store.
async fn live_sessions(h: &Harness) -> u64 {
    let url = format!("sqlite://{}", h.store_dir.path().join("s.db").display());
    let store = latchkey::store::connect(&url).await.unwrap();
    store.count_live("session:").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_link_with_a_query_lands_on_exactly_that_page() {
    let Some(driver) = driver() else { return };
    let h = demo(true, |_| {}).await;
    let browser = Browser::start(&driver, "deep-link", Options::default()).await;
    let deep = "/reports/2026/q3?region=eu&sort=-revenue&q=a%20b%26c";
    // A page of the app: straight to the IdP's form.
    browser.goto(&h.url(deep)).await;
    browser.wait_for("input#username").await;
    browser.check_page("idp-form").await;
    browser.sign_in_at_idp("alice").await;
    browser
        .wait_for_path(
            "/reports/2026/q3",
            Some("region=eu&sort=-revenue&q=a%20b%26c"),
        )
        .await;
    let shown = browser.wait_for_text("x-forwarded-email").await;
    assert!(shown.contains("alice@example.com"), "{shown}");
    browser.shot("app").await;
    assert_eq!(h.metric("latchkey_logins_completed_total").await, 1.0);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_signing_in_at_once_both_end_signed_in() {
    let Some(driver) = driver() else { return };
    let h = app_demo().await;
    let browser = Browser::start(&driver, "two-tabs", Options::acting_while_loading()).await;
    // Both tabs start a login (two login cookies) and reach the IdP's form.
    browser.goto(&h.url("/first?tab=1")).await;
    browser.fill_idp_form("alice").await;
    let button = browser.sign_in_button().await;
    let first = browser.new_tab().await;
    let second = browser.client.window().await.unwrap();
    browser.goto(&h.url("/second?tab=2")).await;
    browser.fill_idp_form("alice").await;
    // Both callbacks in flight at once: the IdP holds both exchanges.
    h.idp.knobs().hold_token_calls(true);
    browser.click_at(button).await;
    browser.switch_to(&first).await;
    browser.click_at(button).await;
    common::within("both exchanges", h.idp.knobs().wait_token_calls(2)).await;
    h.idp.knobs().hold_token_calls(false);
    browser.wait_for_path("/first", Some("tab=1")).await;
    browser.wait_for_text("alice@example.com").await;
    browser.shot("first").await;
    browser.switch_to(&second).await;
    browser.wait_for_path("/second", Some("tab=2")).await;
    browser.wait_for_text("alice@example.com").await;
    browser.shot("second").await;
    assert_eq!(h.idp.knobs().code_grants(), 2, "one exchange per login");
    assert_eq!(h.metric("latchkey_logins_completed_total").await, 2.0);
    // Both tabs stay signed in: a reload of each is the app, not sign-in.
    for tab in [&first, &second] {
        browser.switch_to(tab).await;
        browser.client.refresh().await.unwrap();
        browser.wait_for_text("alice@example.com").await;
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_submit_of_the_idp_form_ends_on_the_page_with_one_session() {
    let Some(driver) = driver() else { return };
    let h = app_demo().await;
    let browser = Browser::start(&driver, "double-submit", Options::acting_while_loading()).await;
    browser.goto(&h.url("/orders?id=7")).await;
    browser.fill_idp_form("alice").await;
    // The person presses "Sign in", and presses it again while the first
    // press's callback is held at the exchange: the second submission (a
    // code of its own, the same login) replaces the first navigation, so
    // two callbacks of one login are in flight. The page does it itself
    // (ChromeDriver waits for a pending navigation before any command),
    // asking the IdP's counters when the first exchange has arrived.
    h.idp.knobs().hold_token_calls(true);
    browser
        .client
        .execute(
            "const button = document.querySelector('button[value=login]');
             button.click();
             (async () => {
                 for (;;) {
                     const seen = await (await fetch('/_dev/counters')).json();
                     if (seen.token_calls >= 1) break;
                     await new Promise(next => setTimeout(next, 20));
                 }
                 button.click();
             })();",
            vec![],
        )
        .await
        .unwrap();
    common::within("the first exchange", h.idp.knobs().wait_token_calls(1)).await;
    // The second callback waits for the first's outcome (I2).
    let second_waits = async {
        while h.metric("latchkey_login_waits_total").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    common::within("the second callback", second_waits).await;
    h.idp.knobs().hold_token_calls(false);
    browser.wait_for_path("/orders", Some("id=7")).await;
    let shown = browser.wait_for_text("alice@example.com").await;
    assert!(!shown.contains("error code"), "{shown}");
    browser.shot("app").await;
    let callbacks = (browser.documents_requested().await.iter())
        .filter(|u| u.path() == "/oauth2/callback")
        .count();
    assert_eq!(callbacks, 2, "the browser sent both callbacks");
    assert_eq!(h.idp.knobs().code_grants(), 1, "I1: one exchange");
    assert_eq!(live_sessions(&h).await, 1, "I2: one session");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_button_and_a_used_callback_show_the_app() {
    let Some(driver) = driver() else { return };
    let h = app_demo().await;
    let browser = Browser::start(&driver, "back-button", Options::default()).await;
    browser.goto(&h.url("/inbox?page=2")).await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_path("/inbox", Some("page=2")).await;
    let callback = browser
        .documents_requested()
        .await
        .into_iter()
        .find(|u| u.path() == "/oauth2/callback")
        .expect("the browser went through the callback");
    // Back: the IdP's form (a page of its own in the history); forward again.
    browser.client.back().await.unwrap();
    browser.client.forward().await.unwrap();
    browser.wait_for_path("/inbox", Some("page=2")).await;
    browser.wait_for_text("alice@example.com").await;
    // The used callback again (history, a bookmark, a reopened tab): I4,
    // nothing is exchanged again and the person sees the app.
    browser.goto(callback.as_str()).await;
    browser.wait_for_path("/inbox", Some("page=2")).await;
    browser.wait_for_text("alice@example.com").await;
    browser.shot("after-used-callback").await;
    assert_eq!(h.idp.knobs().code_grants(), 1, "I4: no second exchange");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_in_another_tab_signs_in_again_and_comes_back() {
    let Some(driver) = driver() else { return };
    let h = app_demo().await;
    let browser = Browser::start(&driver, "ended-elsewhere", Options::default()).await;
    browser.goto(&h.url("/docs/a")).await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_text("alice@example.com").await;
    let working = browser.new_tab().await;
    browser.goto(&h.url("/oauth2/sign_out")).await;
    browser.wait_for_path("/oauth2/signed_out", None).await;
    browser.switch_to(&working).await;
    // The first tab's next navigation: through sign-in, back to where it went.
    browser.goto(&h.url("/docs/b?section=3")).await;
    browser.sign_in_at_idp("bob").await;
    browser.wait_for_path("/docs/b", Some("section=3")).await;
    let shown = browser.wait_for_text("bob@example.com").await;
    assert!(!shown.contains("alice"), "{shown}");
    browser.close().await;
}

/// Signs in at `at("/private?x=1")`, signs out with the app's link, and
/// checks where that lands and what the back button shows.
async fn sign_out_and_back(browser: &Browser, at: impl Fn(&str) -> String) {
    browser.goto(&at("/private?x=1")).await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_text("alice@example.com").await;
    // The app's own sign-out link.
    browser
        .client
        .find(fantoccini::Locator::LinkText("Sign out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_path("/oauth2/signed_out", None).await;
    browser.wait_for_text("signed out").await;
    browser.check_page("signed-out").await;
    // Back: the app's page is not shown again from the browser's memory or
    // cache; the browser asks again and is sent to sign in.
    let cookies = browser.client.get_all_cookies().await.unwrap();
    assert!(
        cookies.is_empty(),
        "signed out, the mark removed: {cookies:?}"
    );
    browser.client.back().await.unwrap();
    browser.wait_for("input#username").await;
    let shown = browser.text().await;
    assert!(!shown.contains("Hello from the app"), "{shown}");
    browser.shot("back-after-sign-out").await;
    // "Sign in again" from the signed-out page works.
    browser.goto(&at("/oauth2/signed_out")).await;
    browser.wait_for("a.button").await.click().await.unwrap();
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_text("alice@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_lands_on_the_signed_out_page_and_back_does_not_show_the_app() {
    let Some(driver) = driver() else { return };
    let h = app_demo().await;
    let browser = Browser::start(&driver, "sign-out", Options::default()).await;
    sign_out_and_back(&browser, |path| h.url(path)).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_sign_out_lands_on_the_signed_out_page_and_back_does_not_show_the_app() {
    let Some(driver) = driver() else { return };
    let pki = common::tls::TestPki::new();
    let h = demo_over_https(&pki).await;
    let browser = Browser::start(&driver, "sign-out-https", Options::trusting(&pki)).await;
    sign_out_and_back(&browser, |path| {
        format!("https://localhost:{}{path}", h.proxy.port())
    })
    .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_latchkey_page_has_no_console_errors_and_no_serious_accessibility_violations() {
    let Some(driver) = driver() else { return };
    let plain = demo(false, |_| {}).await;
    let branded = demo(false, |raw| {
        raw.banner = Some("Example Corp".into());
        raw.footer = Some("Internal use only".into());
    })
    .await;
    for (h, name) in [(&plain, "pages"), (&branded, "pages-branded")] {
        let browser = Browser::start(&driver, name, Options::default()).await;
        for (path, shows, step) in [
            // The sign-in page (forward-auth mode: latchkey's own page).
            ("/oauth2/sign_in?rd=/x", "Sign in", "sign-in"),
            // An error page: a callback that belongs to no login.
            (
                "/oauth2/callback?code=abc&state=not-a-login",
                "error code",
                "error",
            ),
            ("/oauth2/signed_out", "signed out", "signed-out"),
        ] {
            browser.goto(&h.url(path)).await;
            let text = browser.wait_for_text(shows).await;
            if name == "pages-branded" {
                assert!(text.contains("Example Corp") && text.contains("Internal use only"));
            }
            browser.check_page(step).await;
        }
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_cookies_are_host_only_secure_and_survive_the_redirect_from_the_idp() {
    let Some(driver) = driver() else { return };
    let pki = common::tls::TestPki::new();
    // latchkey on https://localhost, the IdP on http://127.0.0.1: the
    // redirect back from the IdP is a cross-site top-level navigation,
    // which carries the login cookie only because it is SameSite=Lax.
    let h = demo_over_https(&pki).await;
    let browser = Browser::start(&driver, "https", Options::trusting(&pki)).await;
    let at = |path: &str| format!("https://localhost:{}{path}", h.proxy.port());
    browser.goto(&at("/secure/page?y=2")).await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_path("/secure/page", Some("y=2")).await;
    browser.wait_for_text("alice@example.com").await;
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let names: Vec<&str> = cookies.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["__Host-_latchkey"], "login cookies are gone");
    let session = &cookies[0];
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.path(), Some("/"));
    assert_eq!(session.domain(), Some("localhost"), "host-only");
    assert_eq!(session.same_site(), Some(cookie::SameSite::Lax));
    browser.check_page_errors_only("app").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_through_nginx_forward_auth_reaches_the_app() {
    let Some(driver) = driver() else { return };
    let Some(nginx) = common::nginx::binary() else {
        return;
    };
    use common::nginx::HOST;
    let behind = common::nginx::latchkey_behind_nginx(&nginx).await;
    let front = &behind.front;
    let options = Options {
        resolve: vec![format!("MAP {HOST} 127.0.0.1")],
        ..Options::default()
    };
    let browser = Browser::start(&driver, "nginx", options).await;
    browser.goto(&format!("{front}/reports/q3?sort=desc")).await;
    browser.sign_in_at_idp("alice").await;
    browser
        .wait_for_path("/reports/q3", Some("sort=desc"))
        .await;
    let shown = browser.wait_for_text("x-forwarded-user").await;
    assert!(shown.contains("alice"), "{shown}");
    assert_eq!(browser.url().await.host_str(), Some(HOST));
    browser.shot("app").await;
    // The admins-only location lets alice (in admins) in as well.
    browser.goto(&format!("{front}/admin/panel")).await;
    browser.wait_for_path("/admin/panel", None).await;
    browser.wait_for_text("alice").await;
    browser.close().await;
}

/// latchkey on `http://localhost` (a site of its own: the IdP stays on
/// 127.0.0.1, another site) in front of the sample app, straight to the
/// IdP, with `post_only` as `sign_out_post_only`.
async fn demo_on_localhost(post_only: bool) -> Harness {
    Harness::start_named(
        Some("localhost"),
        Some(common::proxy::serve_sample_app().await),
        |idp| {
            for client in &mut idp.clients {
                client.post_logout_redirect_uris = (client.post_logout_redirect_uris.iter())
                    .map(|u| format!("{u}oauth2/signed_out"))
                    .collect();
            }
        },
        |raw| {
            raw.skip_provider_button = Some(true);
            raw.post_logout_redirect_url =
                (raw.post_logout_redirect_url.as_deref()).map(|u| format!("{u}oauth2/signed_out"));
            raw.sign_out_post_only = Some(post_only);
        },
    )
    .await
}

/// Has the browser (signed in at `h`) leave for a page of another site
/// (the IdP's) and come back to `/oauth2/sign_out` from there the way
/// `how` says: `"link"` (a top-level navigation, which carries `SameSite=Lax`
/// cookies) or `"form"` (a cross-site POST), and waits for the answer to
/// show `answer`. Returns whether alice is still signed in afterwards.
async fn sent_from_another_site(browser: &Browser, h: &Harness, how: &str, answer: &str) -> bool {
    let at = |path: &str| format!("http://localhost:{}{path}", h.proxy.port());
    let elsewhere = format!("{}/.well-known/openid-configuration", h.idp.issuer());
    browser.goto(&elsewhere).await;
    let target = at("/oauth2/sign_out");
    let script = match how {
        "link" => "location.href = arguments[0];",
        _ => {
            "const form = document.createElement('form');
             form.method = 'post'; form.action = arguments[0];
             document.body.append(form); form.submit();"
        }
    };
    browser
        .client
        .execute(script, vec![target.into()])
        .await
        .unwrap();
    browser.wait_for_text(answer).await;
    browser.shot(how).await;
    browser.goto(&at("/private")).await;
    let still = browser.wait_for("body").await.text().await.unwrap();
    still.contains("Hello from the app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sign_out_post_only_another_site_cannot_sign_anyone_out() {
    let Some(driver) = driver() else { return };
    let h = demo_on_localhost(true).await;
    let browser = Browser::start(&driver, "post-only", Options::default()).await;
    let private = format!("http://localhost:{}/private", h.proxy.port());
    browser.goto(&private).await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_text("alice@example.com").await;
    // A link from another site: the "Sign out?" page, nothing ended.
    let signed_in = sent_from_another_site(&browser, &h, "link", "Sign out?").await;
    assert!(signed_in, "a cross-site link signed alice out");
    // A form posted from another site: refused, nothing ended.
    let signed_in = sent_from_another_site(&browser, &h, "form", "cross_site_request").await;
    assert!(signed_in, "a cross-site form signed alice out");
    // The app's own link asks, and the button signs out. (The console's
    // errors so far are the IdP's JSON page's missing favicon: not ours.)
    let _ = browser.console_errors().await;
    browser
        .client
        .find(fantoccini::Locator::LinkText("Sign out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("Sign out?").await;
    browser.check_page("sign-out-asks").await;
    browser
        .wait_for("button.button")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_for_path("/oauth2/signed_out", None).await;
    browser.goto(&private).await;
    browser.wait_for("input#username").await;
    browser.close().await;
}

/// The negative control of the one above: without `sign_out_post_only`, a
/// link from another site does sign the user out (oauth2-proxy's behaviour,
/// the default), so the test above can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sign_out_post_only_a_link_from_another_site_signs_out() {
    let Some(driver) = driver() else { return };
    let h = demo_on_localhost(false).await;
    let browser = Browser::start(&driver, "get-sign-out", Options::default()).await;
    browser
        .goto(&format!("http://localhost:{}/private", h.proxy.port()))
        .await;
    browser.sign_in_at_idp("alice").await;
    browser.wait_for_text("alice@example.com").await;
    let signed_in = sent_from_another_site(&browser, &h, "link", "Signed out").await;
    assert!(!signed_in, "the default GET sign-out works from a link");
    browser.close().await;
}

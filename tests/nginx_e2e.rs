//! latchkey behind a real nginx (Debian's package), configured as teams
//! configure it for oauth2-proxy: `auth_request` to `/oauth2/auth` on every
//! protected location, `error_page 401 = /oauth2/sign_in` with
//! `X-Auth-Request-Redirect $request_uri`, the identity passed on with
//! `auth_request_set`, and a location restricted with `?allowed_groups=`.
//! A browser asking for a deep link signs in and lands on it; a user outside
//! the location's group gets 403 there and 200 elsewhere.
//!
//! Runs when `LATCHKEY_TEST_NGINX` names the nginx binary (`.ci/run`
//! installs Debian's `nginx-light` and sets it).

mod common;

use common::nginx::{HOST, free_port, latchkey_behind_nginx, start_nginx, with_http_block};
use common::proxy::{HTML, Harness, complete_sign_in, serve_sample_app};
use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;

/// A browser (cookie jar, no redirects followed) for which every name in
/// `hosts` is 127.0.0.1.
fn browser_resolving(hosts: &[&str], port: u16) -> reqwest::Client {
    hosts
        .iter()
        .fold(reqwest::Client::builder(), |b, host| {
            b.resolve(host, ([127, 0, 0, 1], port).into())
        })
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latchkey_behind_nginx_as_oauth2_proxy_users_run_it() {
    let Some(nginx) = common::nginx::binary() else {
        return;
    };
    let behind = latchkey_behind_nginx(&nginx).await;
    let (front, port) = (&behind.front, behind.port);
    let browser_for = || browser_resolving(&[HOST], port);
    let sign_in = async |browser: &reqwest::Client, path: &str, user: &str| {
        // Not signed in: nginx's 401 goes to /oauth2/sign_in, which starts
        // the login for the page asked for.
        let asked = browser
            .get(format!("{front}{path}"))
            .header(ACCEPT, HTML)
            .send()
            .await
            .unwrap();
        assert_eq!(asked.status(), 302, "{path}");
        let start = asked.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(start.starts_with("/oauth2/start?rd="), "{start}");
        let landed = complete_sign_in(browser, &format!("{front}{start}"), user).await;
        assert_eq!(landed, path);
    };
    let json = async |browser: &reqwest::Client, path: &str| {
        let response = browser
            .get(format!("{front}{path}"))
            .header(ACCEPT, "application/json")
            .header("x-forwarded-user", "mallory")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };

    let alice = browser_for();
    sign_in(&alice, "/reports/q3?sort=desc", "alice").await;
    let (status, seen) = json(&alice, "/reports/q3?sort=desc").await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["path"], "/reports/q3");
    assert_eq!(seen["headers"]["x-forwarded-user"], "alice");
    assert_eq!(seen["headers"]["x-forwarded-groups"], "admins,staff");
    let (status, _) = json(&alice, "/admin/panel").await;
    assert_eq!(status, 200, "alice is in admins");

    let bob = browser_for();
    sign_in(&bob, "/home", "bob").await;
    let (status, seen) = json(&bob, "/home").await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-forwarded-user"], "bob");
    let (status, _) = json(&bob, "/admin/panel").await;
    assert_eq!(status, 403, "the location's allowed_groups held");
}

/// The ingress-nginx pattern through a real nginx: two apps'
/// servers ask one central latchkey at `auth.example.test` (nginx's
/// `auth-url`), and send browsers that are not signed in to its
/// `/oauth2/start?rd=` with the page they asked for (`auth-signin`). With
/// `cookie_domain` and `whitelist_domains`, a login that starts on app1
/// lands back on app1's page, the session works on app2 too, and app1's
/// admin location (`?allowed_groups=admins`) refuses bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_central_auth_host_behind_nginx_like_ingress_nginx() {
    let Some(nginx) = common::nginx::binary() else {
        return;
    };
    let port = free_port();
    let app = serve_sample_app().await;
    let auth_host = format!("auth.example.test:{port}");
    let callback = format!("http://{auth_host}/oauth2/callback");
    let h = Harness::start_with_idp(
        None,
        |idp| idp.clients[0].redirect_uris = vec![callback.clone()],
        |raw| {
            raw.redirect_url = Some(callback.clone());
            raw.cookie_domain = Some(".example.test".into());
            raw.whitelist_domains = Some(vec![".example.test:*".into()]);
        },
    )
    .await;
    let latchkey = h.proxy.port();
    let dir = tempfile::tempdir().unwrap();
    let external_auth = |name: &str, query: &str| {
        format!(
            "location = {name} {{
                internal;
                proxy_pass http://127.0.0.1:{latchkey}/oauth2/auth{query};
                proxy_pass_request_body off;
                proxy_set_header Content-Length \"\";
                proxy_set_header Host {auth_host};
            }}"
        )
    };
    let protected = |path: &str, auth_name: &str| {
        format!(
            "location {path} {{
                auth_request {auth_name};
                error_page 401 = @sign_in;
                auth_request_set $user $upstream_http_x_auth_request_user;
                proxy_set_header X-Forwarded-User $user;
                proxy_pass http://127.0.0.1:{app};
            }}",
            app = app.port()
        )
    };
    let config = with_http_block(
        dir.path(),
        &format!(
            "server {{
                listen 127.0.0.1:{port};
                server_name auth.example.test;
                location / {{
                    proxy_pass http://127.0.0.1:{latchkey};
                    proxy_set_header Host $http_host;
                }}
            }}
            server {{
                listen 127.0.0.1:{port};
                server_name app1.example.test app2.example.test;
                {}
                {}
                {}
                {}
                location @sign_in {{
                    return 302 http://{auth_host}/oauth2/start?rd=$scheme://$http_host$request_uri;
                }}
            }}",
            external_auth("/_external_auth", ""),
            external_auth("/_external_auth_admins", "?allowed_groups=admins"),
            protected("/", "/_external_auth"),
            protected("/admin/", "/_external_auth_admins"),
        ),
    );
    let _nginx = start_nginx(&nginx, dir.path(), &config, port).await;
    let hosts = [
        "auth.example.test",
        "app1.example.test",
        "app2.example.test",
    ];
    let on = |host: &str, path: &str| format!("http://{host}:{port}{path}");
    let sign_in = async |browser: &reqwest::Client, page: &str, user: &str| {
        let asked = browser.get(page).header(ACCEPT, HTML).send().await.unwrap();
        assert_eq!(asked.status(), 302, "{page}");
        let start = asked.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(
            start.starts_with(&on("auth.example.test", "/oauth2/start?rd=")),
            "{start}"
        );
        let landed = complete_sign_in(browser, &start, user).await;
        assert_eq!(landed, page, "back on the page asked for, on its own host");
    };
    let user_at = async |browser: &reqwest::Client, url: &str| {
        let response = browser
            .get(url)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let seen = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, seen["headers"]["x-forwarded-user"].clone())
    };

    let alice = browser_resolving(&hosts, port);
    sign_in(&alice, &on("app1.example.test", "/reports/q3"), "alice").await;
    let (status, user) = user_at(&alice, &on("app1.example.test", "/reports/q3")).await;
    assert_eq!((status, user), (200, Value::from("alice")));
    // The domain cookie signs her in on the other app as well.
    let (status, user) = user_at(&alice, &on("app2.example.test", "/wiki")).await;
    assert_eq!((status, user), (200, Value::from("alice")));
    let (status, _) = user_at(&alice, &on("app1.example.test", "/admin/panel")).await;
    assert_eq!(status, 200);

    let bob = browser_resolving(&hosts, port);
    sign_in(&bob, &on("app2.example.test", "/home"), "bob").await;
    let (status, _) = user_at(&bob, &on("app1.example.test", "/admin/panel")).await;
    assert_eq!(status, 403, "the location's allowed_groups held");
}

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

use std::process::{Command, Stdio};

use common::process::KillOnDrop;
use common::proxy::{HTML, Harness, complete_sign_in};
use reqwest::header::{ACCEPT, LOCATION};
use serde_json::Value;

const HOST: &str = "app.example.test";

/// nginx in front of latchkey (`auth`) and the app (`app`) on `port`.
fn nginx_config(dir: &std::path::Path, port: u16, auth: u16, app: u16) -> String {
    let d = dir.display();
    let auth_location = |name: &str, query: &str| {
        format!(
            "location = {name} {{
                internal;
                proxy_pass http://127.0.0.1:{auth}/oauth2/auth{query};
                proxy_pass_request_body off;
                proxy_set_header Content-Length \"\";
                proxy_set_header Host $http_host;
            }}"
        )
    };
    let protected = |path: &str, auth_name: &str| {
        format!(
            "location {path} {{
                auth_request {auth_name};
                error_page 401 = /oauth2/sign_in;
                auth_request_set $user $upstream_http_x_auth_request_user;
                auth_request_set $groups $upstream_http_x_auth_request_groups;
                proxy_set_header X-Forwarded-User $user;
                proxy_set_header X-Forwarded-Groups $groups;
                proxy_pass http://127.0.0.1:{app};
            }}"
        )
    };
    format!(
        "daemon off;
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {d}/body;
            proxy_temp_path {d}/proxy;
            fastcgi_temp_path {d}/fastcgi;
            uwsgi_temp_path {d}/uwsgi;
            scgi_temp_path {d}/scgi;
            server {{
                listen 127.0.0.1:{port};
                server_name {HOST};
                location /oauth2/ {{
                    proxy_pass http://127.0.0.1:{auth};
                    proxy_set_header Host $http_host;
                    proxy_set_header X-Auth-Request-Redirect $request_uri;
                }}
                {}
                {}
                {}
                {}
            }}
        }}",
        auth_location("/_auth", ""),
        auth_location("/_auth_admins", "?allowed_groups=admins"),
        protected("/", "/_auth"),
        protected("/admin/", "/_auth_admins"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latchkey_behind_nginx_as_oauth2_proxy_users_run_it() {
    let Ok(nginx) = std::env::var("LATCHKEY_TEST_NGINX") else {
        eprintln!("skipping: set LATCHKEY_TEST_NGINX to the nginx binary to run it");
        return;
    };
    // nginx's port, chosen free now and bound by nginx below.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let front = format!("http://{HOST}:{port}");
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = app_listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(app_listener, latchkey::demo::sample_app())
            .await
            .unwrap()
    });
    let callback = format!("{front}/oauth2/callback");
    let h = Harness::start_with_idp(
        None,
        |idp| idp.clients[0].redirect_uris = vec![callback.clone()],
        |raw| {
            raw.redirect_url = Some(callback.clone());
            raw.skip_provider_button = Some(true);
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_config(dir.path(), port, h.proxy.port(), app.port()),
    )
    .unwrap();
    let mut started = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    // nginx is up when its port answers (bounded: the child may have died).
    let deadline = std::time::Instant::now() + common::TEST_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.try_wait().unwrap().is_none(),
            "nginx exited: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "nginx never listened");
        tokio::task::yield_now().await;
    }
    let _nginx = KillOnDrop(started);
    let browser_for = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(HOST, ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    };
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

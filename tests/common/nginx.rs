//! A real nginx (Debian's package) for the tests that put latchkey behind
//! it, configured as teams configure it for oauth2-proxy.

use std::process::{Command, Stdio};

use super::process::KillOnDrop;
use super::proxy::{Harness, serve_sample_app};

/// The nginx binary (`LATCHKEY_TEST_NGINX`), or why the test skips.
pub fn binary() -> Option<String> {
    let found = std::env::var("LATCHKEY_TEST_NGINX").ok();
    if found.is_none() {
        eprintln!("skipping: set LATCHKEY_TEST_NGINX to the nginx binary to run it");
    }
    found
}

/// latchkey in forward-auth mode behind nginx as [`nginx_config`] sets it
/// up for [`HOST`], the sample app behind both; dropped, nginx stops.
pub struct BehindNginx {
    /// `http://HOST:PORT`, nginx's address for browsers.
    pub front: String,
    /// nginx's port.
    pub port: u16,
    /// latchkey (sending browsers straight to the IdP).
    pub latchkey: Harness,
    _nginx: KillOnDrop,
    _dir: tempfile::TempDir,
}

/// Starts [`BehindNginx`] with the nginx at `binary`.
pub async fn latchkey_behind_nginx(binary: &str) -> BehindNginx {
    let port = free_port();
    let front = format!("http://{HOST}:{port}");
    let app = serve_sample_app().await;
    let callback = format!("{front}/oauth2/callback");
    let latchkey = Harness::start_with_idp(
        None,
        |idp| idp.clients[0].redirect_uris = vec![callback.clone()],
        |raw| {
            raw.redirect_url = Some(callback.clone());
            raw.skip_provider_button = Some(true);
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = nginx_config(dir.path(), port, latchkey.proxy.port(), app.port());
    let nginx = start_nginx(binary, dir.path(), &config, port).await;
    BehindNginx {
        front,
        port,
        latchkey,
        _nginx: nginx,
        _dir: dir,
    }
}

/// The name the nginx tests' browsers resolve to 127.0.0.1.
pub const HOST: &str = "app.example.test";

/// nginx in front of latchkey (`auth`) and the app (`app`) on `port`.
pub fn nginx_config(dir: &std::path::Path, port: u16, auth: u16, app: u16) -> String {
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
    with_http_block(
        dir,
        &format!(
            "server {{
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
            }}",
            auth_location("/_auth", ""),
            auth_location("/_auth_admins", "?allowed_groups=admins"),
            protected("/", "/_auth"),
            protected("/admin/", "/_auth_admins"),
        ),
    )
}

/// A whole nginx configuration run from `dir` (pid, logs and temporary
/// files there, in the foreground) with `servers` in its http block.
pub fn with_http_block(dir: &std::path::Path, servers: &str) -> String {
    let d = dir.display();
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
            {servers}
        }}"
    )
}

/// A free loopback port, for nginx to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx (`binary`) running `config` from `dir`, once it answers on `port`.
pub async fn start_nginx(
    binary: &str,
    dir: &std::path::Path,
    config: &str,
    port: u16,
) -> KillOnDrop {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let mut started = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    // Up when its port answers (bounded: the child may have died).
    let deadline = std::time::Instant::now() + super::TEST_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.try_wait().unwrap().is_none(),
            "nginx exited: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "nginx never listened");
        tokio::task::yield_now().await;
    }
    KillOnDrop(started)
}

//! A scripted browser for the development IdP's login form.

use reqwest::header::LOCATION;
use url::Url;

/// A browser: a cookie jar, and no automatic redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Submits the development IdP's login form for the authorization request
/// `authorize`, as a person would after opening it: its parameters, plus
/// `username`, `password` and the pressed button (`login` or `cancel`).
pub async fn submit_login_form(
    client: &reqwest::Client,
    authorize: &Url,
    username: &str,
    password: &str,
    action: &str,
) -> reqwest::Response {
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.extend([
        ("username".into(), username.into()),
        ("password".into(), password.into()),
        ("action".into(), action.into()),
    ]);
    let mut target = authorize.clone();
    target.set_query(None);
    client.post(target).form(&form).send().await.unwrap()
}

/// Signs `user` in (password = user name, as the dev IdP's test users have)
/// and returns where the IdP redirects the browser.
pub async fn sign_in_at_idp(client: &reqwest::Client, authorize: &Url, user: &str) -> Url {
    let response = submit_login_form(client, authorize, user, user, "login").await;
    location(&response, authorize)
}

/// The redirect target of `response`, resolved against `base`.
pub fn location(response: &reqwest::Response, base: &Url) -> Url {
    assert!(
        response.status().is_redirection(),
        "expected a redirect, got {}",
        response.status()
    );
    base.join(response.headers()[LOCATION].to_str().unwrap())
        .unwrap()
}

/// The value of query parameter `name` in `url`.
pub fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The session id inside the `_latchkey` session cookie that `response`
/// sets, decrypted with the cookie secret `key` (as the proxy does).
pub fn session_id_set_by(response: &reqwest::Response, key: &[u8; 32]) -> String {
    let key = cookie::Key::derive_from(key);
    let set = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse_encoded(v.to_str().unwrap().to_owned()).unwrap())
        .find(|c| c.name() == "_latchkey")
        .expect("a session cookie");
    let mut jar = cookie::CookieJar::new();
    jar.add_original(set);
    jar.private(&key)
        .get("_latchkey")
        .expect("it decrypts")
        .value()
        .to_owned()
}

//! Scripted logins through a relying party (latchkey or mod_auth_openidc) and
//! the development IdP's login form.

use std::sync::Arc;

use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{ACCEPT, LOCATION};
use url::Url;

/// A browser with its own cookie jar.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<Jar>,
}

impl Browser {
    pub fn new() -> Self {
        let jar = Arc::new(Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { client, jar }
    }

    /// The Cookie header this browser sends to `url`.
    pub fn cookie_header(&self, url: &str) -> String {
        self.jar
            .cookies(&Url::parse(url).unwrap())
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Opens `start`, follows redirects and signs in at the dev IdP as alice,
    /// until a redirect to a URL beginning with `callback`, which it returns
    /// without following.
    pub async fn until_callback(&self, start: &str, callback: &str) -> Url {
        let mut next = Url::parse(start).unwrap();
        for _ in 0..10 {
            let response = self
                .client
                .get(next.clone())
                .header(ACCEPT, "text/html")
                .send()
                .await
                .expect("request during login");
            let response = if response.status() == 200 && next.path() == "/authorize" {
                let mut form: Vec<(String, String)> = next.query_pairs().into_owned().collect();
                form.extend([
                    ("username".into(), "alice".into()),
                    ("password".into(), "alice".into()),
                    ("action".into(), "login".into()),
                ]);
                let mut action = next.clone();
                action.set_query(None);
                self.client.post(action).form(&form).send().await.unwrap()
            } else {
                response
            };
            assert!(
                response.status().is_redirection(),
                "login stopped at {} with {}",
                next,
                response.status()
            );
            next = next
                .join(response.headers()[LOCATION].to_str().unwrap())
                .unwrap();
            if next.as_str().starts_with(callback) {
                return next;
            }
        }
        panic!("the login never reached {callback}");
    }

    /// Follows redirects from `url` to the end; returns the final status.
    pub async fn follow(&self, url: &Url) -> u16 {
        let mut next = url.clone();
        for _ in 0..10 {
            let response = self
                .client
                .get(next.clone())
                .header(ACCEPT, "text/html")
                .send()
                .await
                .unwrap();
            if !response.status().is_redirection() {
                return response.status().as_u16();
            }
            next = next
                .join(response.headers()[LOCATION].to_str().unwrap())
                .unwrap();
        }
        0
    }

    /// A full login starting at `start`; returns the final status.
    pub async fn login(&self, start: &str, callback: &str) -> u16 {
        let back = self.until_callback(start, callback).await;
        self.follow(&back).await
    }
}

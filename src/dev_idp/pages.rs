//! The development IdP's HTML: a login page and a message page, self-contained.

use super::DevUser;

pub use crate::web::pages::escape_html as escape;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}\
.banner{background:#b00020;color:#fff;padding:.5rem 1rem;border-radius:4px;font-weight:600}\
label{display:block;margin:.8rem 0 .2rem}input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}\
button{margin-top:1rem;padding:.5rem 1.2rem}.error{color:#b00020}table{border-collapse:collapse;margin-top:1rem}\
td,th{border:1px solid #ccc;padding:.2rem .6rem;text-align:left}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\"><style>{STYLE}</style></head><body>\
         <p class=\"banner\">latchkey development IdP: development only, never use it in production</p>{body}</body></html>",
        escape(title)
    )
}

/// The sign-in form; `hidden` are the authorization request's parameters.
pub(crate) fn login(
    client_id: &str,
    users: &[DevUser],
    hidden: &[(&str, &str)],
    error: Option<&str>,
) -> String {
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let users: String = users
        .iter()
        .map(|u| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&u.username),
                escape(&u.password),
                escape(&u.email),
                escape(&u.groups.join(", "))
            )
        })
        .collect();
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "<h1>Sign in</h1><p>to continue to <strong>{}</strong></p>{error}\
             <form method=\"post\" action=\"authorize\">{hidden}\
             <label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autofocus>\
             <label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\">\
             <button type=\"submit\" name=\"action\" value=\"login\">Sign in</button> \
             <button type=\"submit\" name=\"action\" value=\"cancel\">Cancel</button></form>\
             <table><tr><th>user</th><th>password</th><th>email</th><th>groups</th></tr>{users}</table>",
            escape(client_id)
        ),
    )
}

/// A page with a heading and one sentence.
pub(crate) fn message(title: &str, text: &str) -> String {
    page(
        title,
        &format!("<h1>{}</h1><p>{}</p>", escape(title), escape(text)),
    )
}

//! latchkey's pages as templates: the built-in ones (in `src/web/templates/`),
//! any of which an operator may replace from `custom_templates_dir`, and the
//! branding settings every page shows (`banner`, `footer`,
//! `custom_sign_in_logo`).
//!
//! Templates are rendered by `minijinja` with HTML auto-escaping: every
//! variable is escaped unless a template marks it `|safe`. A template that
//! does not compile, or fails to render with sample values, is refused at
//! startup; one that still fails on a request falls back to the built-in page
//! (and logs why), so a broken template never turns an answer into a 500.
//!
//! A page made without access to the configured templates (an extractor's
//! rejection, say) is rendered with the built-in ones and carries a
//! [`Page`] in its extensions; [`Pages::restyle`], run by the routers and
//! layers that do know the settings, renders it again with the operator's.

use std::path::Path;
use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, Value, context};

use super::pages::ErrorCode;

/// The templates an operator may replace, each with what it shows.
pub const TEMPLATE_NAMES: [&str; 5] = [
    "layout.html",
    "error.html",
    "sign_in.html",
    "signed_out.html",
    "sign_out.html",
];

const BUILT_IN: [(&str, &str); 6] = [
    ("layout.html", include_str!("templates/layout.html")),
    ("error.html", include_str!("templates/error.html")),
    ("sign_in.html", include_str!("templates/sign_in.html")),
    ("signed_out.html", include_str!("templates/signed_out.html")),
    ("sign_out.html", include_str!("templates/sign_out.html")),
    ("page.html", include_str!("templates/page.html")),
];

/// The largest template file read.
const MAX_TEMPLATE: u64 = 256 * 1024;

/// What every page shows besides its own content (all text, escaped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branding {
    /// A line above every page's content, and after its title (the app's
    /// or organisation's name).
    pub banner: Option<String>,
    /// A line below every page's content.
    pub footer: Option<String>,
    /// An image above every page's content: an `https://` URL, or a
    /// `data:image/…` URL made from a file.
    pub logo_url: Option<String>,
}

/// A page latchkey shows, with what it needs to be rendered (again).
#[derive(Debug, Clone)]
pub(crate) enum Page {
    /// A refusal or failure, with its stable code.
    Error {
        code: ErrorCode,
        message: String,
        /// A link onwards: where, and what it says.
        link: Option<(String, String)>,
    },
    /// `/oauth2/sign_in`'s page: a button that starts the login.
    SignIn { sign_in_url: String },
    /// `/oauth2/signed_out`: the landing after sign-out.
    SignedOut { sign_in_url: String },
    /// `GET /oauth2/sign_out` with `sign_out_post_only`: a button that
    /// posts the sign-out.
    SignOut { sign_out_url: String },
}

impl Page {
    fn template(&self) -> &'static str {
        match self {
            Self::Error { .. } => "error.html",
            Self::SignIn { .. } => "sign_in.html",
            Self::SignedOut { .. } => "signed_out.html",
            Self::SignOut { .. } => "sign_out.html",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Error { code, .. } => code.status(),
            Self::SignIn { .. } | Self::SignedOut { .. } | Self::SignOut { .. } => StatusCode::OK,
        }
    }

    /// The page's own variables (the branding ones are added to them).
    fn variables(&self) -> Value {
        match self {
            Self::Error {
                code,
                message,
                link,
            } => context! {
                title => code.title(),
                status => code.status().as_u16(),
                code => code.as_str(),
                message => message,
                link_href => link.as_ref().map(|(href, _)| href),
                link_text => link.as_ref().map(|(_, text)| text),
            },
            Self::SignIn { sign_in_url } => context! { title => "Sign in", sign_in_url },
            Self::SignedOut { sign_in_url } => context! {
                title => "Signed out",
                sign_in_url,
                forget_url => super::routes::FORGET_SIGNED_IN_PAGES,
            },
            Self::SignOut { sign_out_url } => context! { title => "Sign out", sign_out_url },
        }
    }

    /// One of each, for checking templates at startup.
    fn samples() -> [Page; 4] {
        [
            Page::Error {
                code: ErrorCode::AccessDenied,
                message: "You are signed in as a@example.com, but not allowed here.".into(),
                link: Some(("/oauth2/start?rd=%2F".into(), "Start again".into())),
            },
            Page::SignIn {
                sign_in_url: "/oauth2/start?rd=%2F".into(),
            },
            Page::SignedOut {
                sign_in_url: "/oauth2/start?rd=%2F".into(),
            },
            Page::SignOut {
                sign_out_url: "/oauth2/sign_out?rd=%2F".into(),
            },
        ]
    }
}

/// The templates and branding pages are rendered with.
pub struct Pages {
    env: Environment<'static>,
    branding: Branding,
    /// The `Content-Security-Policy` of every page (the logo's origin may
    /// be allowed for images).
    csp: HeaderValue,
    /// The same for the "Sign out?" page, whose form may be redirected on
    /// (see [`sign_out_page_csp`]).
    sign_out_csp: HeaderValue,
    /// Whether anything differs from the built-in pages.
    customized: bool,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("branding", &self.branding)
            .field("customized", &self.customized)
            .finish_non_exhaustive()
    }
}

static BUILT_IN_PAGES: LazyLock<Pages> = LazyLock::new(|| {
    Pages::new(None, Branding::default()).unwrap_or_else(|error| {
        // The built-in templates are checked by this module's tests.
        panic!("the built-in templates do not render: {error}")
    })
});

/// minijinja's formatter, but with latchkey's HTML escaping (which leaves
/// `/` alone, so that links read as they are) for text in HTML templates.
fn escape_as_latchkey_does(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(text)
            if !value.is_safe() && matches!(state.auto_escape(), minijinja::AutoEscape::Html) =>
        {
            out.write_str(&super::pages::escape_html(text))
                .map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string())
                })
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The `Content-Security-Policy` of latchkey's pages: no scripts, no frames,
/// no external assets but the logo, and one inline style sheet.
pub(crate) fn page_csp(logo_url: Option<&str>) -> HeaderValue {
    let img = match logo_url {
        Some(url) if url.starts_with("data:") => "'self' data:".to_owned(),
        Some(url) => match url::Url::parse(url) {
            Ok(url) => format!("'self' data: {}", url.origin().ascii_serialization()),
            Err(_) => "'self' data:".to_owned(),
        },
        None => "'self' data:".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src {img}; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
    })
}

/// [`page_csp`] without `form-action`, for the "Sign out?" page: its form
/// posts to latchkey's own sign-out, whose answer redirects to the
/// provider's logout or an `rd` destination on another origin, and
/// browsers hold a form's redirects to `form-action` too. The form's own
/// target is latchkey's, and the page still runs no script.
pub(crate) fn sign_out_page_csp(logo_url: Option<&str>) -> HeaderValue {
    let csp = page_csp(logo_url);
    let without = csp
        .to_str()
        .unwrap_or_default()
        .replace("form-action 'self'; ", "");
    HeaderValue::from_str(&without).unwrap_or(csp)
}

impl Pages {
    /// The built-in pages with no branding.
    pub fn built_in() -> &'static Pages {
        &BUILT_IN_PAGES
    }

    /// The built-in templates, with those in `dir` (any of
    /// [`TEMPLATE_NAMES`]) in their place, and `branding`. `Err` says which
    /// file is wrong and why.
    pub fn new(dir: Option<&Path>, branding: Branding) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_formatter(escape_as_latchkey_does);
        for (name, source) in BUILT_IN {
            env.add_template(name, source)
                .map_err(|e| format!("built-in {name}: {e}"))?;
        }
        let mut replaced = false;
        if let Some(dir) = dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read the directory {}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".html") && !TEMPLATE_NAMES.contains(&name.as_str()) {
                    tracing::warn!(
                        file = %name,
                        "custom_templates_dir: not a template latchkey uses (it uses {})",
                        TEMPLATE_NAMES.join(", ")
                    );
                }
            }
            for name in TEMPLATE_NAMES {
                let path = dir.join(name);
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if meta.len() > MAX_TEMPLATE {
                    return Err(format!(
                        "{} is larger than {} KiB",
                        path.display(),
                        MAX_TEMPLATE / 1024
                    ));
                }
                let source = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                env.add_template_owned(name, source)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                replaced = true;
            }
        }
        let pages = Self {
            env,
            csp: page_csp(branding.logo_url.as_deref()),
            sign_out_csp: sign_out_page_csp(branding.logo_url.as_deref()),
            customized: replaced || branding != Branding::default(),
            branding,
        };
        for page in Page::samples() {
            pages
                .render_html(&page)
                .map_err(|e| format!("{}: {e}", page.template()))?;
        }
        Ok(pages)
    }

    fn render_html(&self, page: &Page) -> Result<String, minijinja::Error> {
        let template = self.env.get_template(page.template())?;
        template.render(context! {
            banner => self.branding.banner,
            footer => self.branding.footer,
            logo_url => self.branding.logo_url,
            ..page.variables()
        })
    }

    /// `page` as an HTML response, with its status and CSP, carrying the
    /// page for [`Pages::restyle`].
    pub(crate) fn render(&self, page: Page) -> Response {
        let html = match self.render_html(&page) {
            Ok(html) => html,
            Err(error) => {
                tracing::warn!(template = page.template(), %error, "a custom template failed; showing the built-in page");
                Self::built_in()
                    .render_html(&page)
                    .unwrap_or_else(|_| "<!doctype html><title>latchkey</title>".into())
            }
        };
        let mut response = (page.status(), Html(html)).into_response();
        let csp = match page {
            Page::SignOut { .. } => &self.sign_out_csp,
            _ => &self.csp,
        };
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp.clone());
        response.extensions_mut().insert(page);
        response
    }

    /// `response` rendered again with these templates when it is one of
    /// latchkey's pages made with the built-in ones; status and every other
    /// header (cookies, `Retry-After`) are kept.
    pub(crate) fn restyle(&self, mut response: Response) -> Response {
        if !self.customized {
            return response;
        }
        let Some(page) = response.extensions_mut().remove::<Page>() else {
            return response;
        };
        let (new_parts, body) = self.render(page).into_parts();
        let (mut parts, _) = response.into_parts();
        for name in [header::CONTENT_TYPE, header::CONTENT_SECURITY_POLICY] {
            if let Some(value) = new_parts.headers.get(&name) {
                parts.headers.insert(name, value.clone());
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.extensions = new_parts.extensions;
        Response::from_parts(parts, body)
    }

    /// A page of latchkey's own whose body is ready-made HTML (the demo's
    /// app, the forward-auth "signed in" page), in the built-in layout.
    pub(crate) fn plain(&self, title: &str, body_html: &str) -> String {
        let rendered = self.env.get_template("page.html").and_then(|t| {
            t.render(context! {
                title,
                body => body_html,
                banner => self.branding.banner,
                footer => self.branding.footer,
                logo_url => self.branding.logo_url,
            })
        });
        rendered.unwrap_or_else(|error| {
            tracing::warn!(%error, "the layout template failed; showing the page unstyled");
            format!(
                "<!doctype html><title>{}</title>{body_html}",
                super::pages::escape_html(title)
            )
        })
    }

    /// Whether these pages differ from the built-in ones.
    pub fn customized(&self) -> bool {
        self.customized
    }
}

/// Reads `custom_sign_in_logo`: an `https://` URL as it is, or an image
/// file (PNG, JPEG, GIF, SVG, WebP; at most 100 KiB) as a `data:` URL.
pub fn logo_url(setting: &str) -> Result<String, String> {
    use base64::Engine;
    if setting.starts_with("https://") {
        url::Url::parse(setting).map_err(|e| format!("not a URL: {e}"))?;
        return Ok(setting.to_owned());
    }
    if setting.contains("://") {
        return Err("a logo URL must be https:// (a page never loads http:// images)".into());
    }
    let path = Path::new(setting);
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mime = match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "webp" => "image/webp",
        _ => {
            return Err(
                "expected an https:// URL or a .png, .jpg, .gif, .svg or .webp file".into(),
            );
        }
    };
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {setting}: {e}"))?;
    if bytes.len() > 100 * 1024 {
        return Err(format!("{setting} is larger than 100 KiB"));
    }
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:{mime};base64,{data}"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_the_sign_out_question_may_be_redirected_elsewhere() {
        let pages = Pages::built_in();
        let csp = |page| pages.render(page).headers()[header::CONTENT_SECURITY_POLICY].clone();
        let asks = csp(Page::SignOut {
            sign_out_url: "/oauth2/sign_out".into(),
        });
        assert!(!asks.to_str().unwrap().contains("form-action"), "{asks:?}");
        assert!(asks.to_str().unwrap().starts_with("default-src 'none'"));
        let signed_out = csp(Page::SignedOut {
            sign_in_url: "/oauth2/start".into(),
        });
        assert!(signed_out.to_str().unwrap().contains("form-action 'self'"));
    }

    use super::*;

    #[test]
    fn the_built_in_pages_render_and_escape_what_they_show() {
        let pages = Pages::built_in();
        assert!(!pages.customized());
        let page = Page::Error {
            code: ErrorCode::BadRequest,
            message: "<script>alert(1)</script>".into(),
            link: Some(("/x?a=1&b=\"2\"".into(), "<b>go</b>".into())),
        };
        let html = pages.render_html(&page).unwrap();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;b&gt;go"), "{html}");
        assert!(html.contains("error code: bad_request"), "{html}");
        assert!(!html.contains("<header>"), "no branding, no header: {html}");
    }

    #[test]
    fn branding_is_text_and_the_logo_origin_is_allowed_for_images() {
        let pages = Pages::new(
            None,
            Branding {
                banner: Some("Acme <Corp>".into()),
                footer: Some("Call \"IT\"".into()),
                logo_url: Some("https://cdn.example.com/logo.png".into()),
            },
        )
        .unwrap();
        let response = pages.render(Page::SignedOut {
            sign_in_url: "/oauth2/start".into(),
        });
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.contains("img-src 'self' data: https://cdn.example.com;"),
            "{csp}"
        );
        let html = pages.render_html(&Page::SignedOut {
            sign_in_url: "/oauth2/start".into(),
        });
        let html = html.unwrap();
        assert!(html.contains("Acme &lt;Corp&gt;"), "{html}");
        assert!(html.contains("Call &quot;IT&quot;"), "{html}");
        assert!(
            html.contains("src=\"https://cdn.example.com/logo.png\""),
            "{html}"
        );
    }

    #[test]
    fn custom_templates_replace_the_built_in_ones_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("signed_out.html"),
            "<p>Bye from ACME. <a href=\"{{ sign_in_url }}\">again</a> {{ banner }}</p>",
        )
        .unwrap();
        let pages = Pages::new(Some(dir.path()), Branding::default()).unwrap();
        assert!(pages.customized());
        let html = pages
            .render_html(&Page::SignedOut {
                sign_in_url: "/oauth2/start".into(),
            })
            .unwrap();
        assert!(html.starts_with("<p>Bye from ACME."), "{html}");
        // The others stay built in.
        let html = pages.render_html(&Page::Error {
            code: ErrorCode::NotFound,
            message: "m".into(),
            link: None,
        });
        assert!(html.unwrap().contains("error code: not_found"));

        std::fs::write(dir.path().join("error.html"), "{% if %}").unwrap();
        let error = Pages::new(Some(dir.path()), Branding::default()).unwrap_err();
        assert!(error.contains("error.html"), "{error}");
        std::fs::write(dir.path().join("error.html"), "{{ code|nosuchfilter }}").unwrap();
        let error = Pages::new(Some(dir.path()), Branding::default()).unwrap_err();
        assert!(error.contains("error.html"), "{error}");
    }

    #[test]
    fn a_restyled_page_keeps_its_status_and_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("error.html"),
            "custom {{ code }} {{ status }}",
        )
        .unwrap();
        let custom = Pages::new(Some(dir.path()), Branding::default()).unwrap();
        let mut response = Pages::built_in().render(Page::Error {
            code: ErrorCode::TooManyRequests,
            message: "slow down".into(),
            link: None,
        });
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let restyled = custom.restyle(response);
        assert_eq!(restyled.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(restyled.headers()[header::RETRY_AFTER], "7");
        let body = futures_executor_body(restyled);
        assert_eq!(body, "custom too_many_requests 429");
    }

    #[test]
    fn a_logo_is_an_https_url_or_a_small_image_file() {
        assert!(logo_url("https://cdn.example.com/l.png").is_ok());
        assert!(logo_url("http://cdn.example.com/l.png").is_err());
        assert!(logo_url("javascript:alert(1)").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("logo.svg");
        std::fs::write(&file, "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
        let url = logo_url(file.to_str().unwrap()).unwrap();
        assert!(url.starts_with("data:image/svg+xml;base64,"), "{url}");
        let big = dir.path().join("big.png");
        std::fs::write(&big, vec![0u8; 200 * 1024]).unwrap();
        assert!(logo_url(big.to_str().unwrap()).is_err());
        assert!(logo_url(dir.path().join("logo.exe").to_str().unwrap()).is_err());
    }

    fn futures_executor_body(response: Response) -> String {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = runtime
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}

//! The dashboard at `/ui`: a page and its assets, compiled into the binary (no build
//! step, no CDN: it works offline). Every path under `/ui` that is not an asset is
//! the page, which routes itself, so URLs like `/ui/jobs/42` can be shared. The page
//! is public; what it shows comes from the API, behind the key or session cookie.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../ui/index.html");
const APP: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/style.css");

/// Scripts, styles and connections from this origin only; no inline code, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The assets change with the binary: revalidate rather than serve a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /ui`: the page.
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/{*path}`: an asset, or the page for any other path.
pub async fn path(Path(path): Path<String>) -> Response {
    match path.as_str() {
        "assets/app.js" => asset(APP, "text/javascript; charset=utf-8"),
        "assets/style.css" => asset(STYLE, "text/css; charset=utf-8"),
        _ if path.starts_with("assets/") => crate::api::info::not_found().await.into_response(),
        _ => asset(INDEX, "text/html; charset=utf-8"),
    }
}

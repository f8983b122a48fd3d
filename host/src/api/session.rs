//! Browser sessions: `POST /ui/login` exchanges an API key for an `HttpOnly`,
//! `SameSite=Strict` cookie that every route accepts in place of the key, so the
//! dashboard never holds a key in script or puts one in a URL. `POST /ui/logout` ends
//! the session; `GET /ui/session` says who the cookie (or key) is.
//!
//! Sessions live in memory (a restart logs everyone out), are named by 256 random
//! bits of which only the BLAKE3 digest is kept, and expire [`LIFETIME`] after login.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Role;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::Json;

/// The cookie's name.
pub const COOKIE: &str = "wasmesh_session";

/// How long a session lasts.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; past this the oldest of the principal holding the most
/// goes first.
const MAX_SESSIONS: usize = 10_000;

/// Sessions one principal (tenant and role) holds at most; its next login ends its
/// own oldest, never another principal's.
pub const MAX_PER_PRINCIPAL: usize = 16;

/// The largest login body: `{"key": "..."}` with a key of a few hundred characters.
pub const MAX_LOGIN_BYTES: usize = 4096;

#[derive(Debug)]
struct Session {
    tenant: String,
    role: Role,
    expires: Instant,
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Opens a session for `tenant` with `role`; returns its secret (the cookie).
    pub fn open(&self, tenant: &str, role: Role, now: Instant) -> String {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| s.expires > now);
        let own = open
            .values()
            .filter(|s| s.tenant == tenant && s.role == role)
            .count();
        let evict = if own >= MAX_PER_PRINCIPAL {
            Some((tenant.to_string(), role))
        } else if open.len() >= MAX_SESSIONS {
            let mut held: HashMap<(&str, Role), usize> = HashMap::new();
            for s in open.values() {
                *held.entry((s.tenant.as_str(), s.role)).or_default() += 1;
            }
            held.into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|((t, r), _)| (t.to_string(), r))
        } else {
            None
        };
        if let Some((tenant, role)) = evict
            && let Some(oldest) = open
                .iter()
                .filter(|(_, s)| s.tenant == tenant && s.role == role)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        let session = Session {
            tenant: tenant.to_string(),
            role,
            expires: now + LIFETIME,
        };
        open.insert(*blake3::hash(secret.as_bytes()).as_bytes(), session);
        secret
    }

    /// The tenant and role of a live session.
    pub fn principal(&self, secret: &str, now: Instant) -> Option<(String, Role)> {
        let digest = *blake3::hash(secret.as_bytes()).as_bytes();
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&digest)
            .filter(|s| s.expires > now)
            .map(|s| (s.tenant.clone(), s.role))
    }

    /// Ends a session.
    pub fn close(&self, secret: &str) {
        let digest = *blake3::hash(secret.as_bytes()).as_bytes();
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&digest);
    }
}

/// The session secret a request's cookie carries.
pub(crate) fn presented_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// 403 `cross_site` unless a browser says the request comes from this server's own
/// origin: `Sec-Fetch-Site` is `same-origin` (or `none`: typed by the user), else
/// `Origin` names the host the request was sent to. A request with neither comes from
/// no browser (a browser sends `Origin` with every POST), so no page made it.
pub fn same_site(headers: &HeaderMap) -> ApiResult<()> {
    let refuse = |why: String| Err(ApiError::Forbidden("cross_site", why));
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return match site {
            "same-origin" | "none" => Ok(()),
            other => refuse(format!(
                "a {other} request cannot use the dashboard's session; send an API key"
            )),
        };
    }
    let Some(origin) = text("origin") else {
        return Ok(());
    };
    let host = text("host").unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match origin_host {
        Some(origin_host) if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => refuse(format!(
            "a request from {origin:?} cannot use the dashboard's session; send an API key"
        )),
    }
}

/// Whether the browser reached this server over https (the page's origin, or what a
/// TLS-terminating proxy says): the cookie is then `Secure`.
fn over_https(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text("origin").is_some_and(|o| o.starts_with("https://"))
        || text("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of hex digits is a valid header")
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::Tenant => "tenant",
    }
}

/// `{"key": "..."}` of a login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    key: String,
}

impl crate::api::json::JsonBody for Login {
    fn limit(_: &crate::api::json::JsonLimits) -> usize {
        MAX_LOGIN_BYTES
    }

    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::BadRequest(
            "invalid_request",
            format!("a login is {{\"key\": \"...\"}}: {e}"),
        )
    }
}

/// `POST /ui/login`: 200 with the session cookie and who it is; 401 for a wrong key,
/// 429 for a peer that failed too often lately; 415 unless the body is declared
/// `application/json` and 403 `cross_site` from another site's page (which could
/// otherwise log a visitor into the attacker's tenant).
pub async fn login(
    State(state): State<AppState>,
    peer: crate::api::auth::Peer,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> ApiResult<Response> {
    same_site(&headers)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "a login is sent as application/json".into(),
        ));
    }
    let (tenant, role, _) = state.auth.authenticate_key(peer, login.key.trim())?;
    let secret = state.auth.sessions().open(&tenant, role, Instant::now());
    let body =
        json!({"tenant": tenant, "role": role_name(role), "keys_required": state.auth.required()});
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&secret, LIFETIME.as_secs(), over_https(&headers)),
    );
    Ok(response)
}

/// `POST /ui/logout`: ends the session and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(secret) = presented_session(&headers) {
        state.auth.sessions().close(secret);
    }
    let mut response = axum::Json(json!({"logged_out": true})).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_https(&headers)));
    response
}

/// `GET /ui/session`: who the caller is (by key or session cookie); `tenant` and
/// `role` are null for nobody (a page about to ask for a key: not an error).
pub async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (tenant, role) = match state.auth.caller(&headers) {
        Some((tenant, role)) => (json!(tenant), json!(role_name(role))),
        None => (json!(null), json!(null)),
    };
    let body = json!({"tenant": tenant, "role": role, "keys_required": state.auth.required()});
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_name_their_principal_until_they_expire_or_close() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let secret = sessions.open("acme", Role::Tenant, now);
        assert_eq!(secret.len(), 64);
        assert_eq!(
            sessions.principal(&secret, now),
            Some(("acme".to_string(), Role::Tenant))
        );
        assert_eq!(sessions.principal("0".repeat(64).as_str(), now), None);
        assert_eq!(sessions.principal(&secret, now + LIFETIME), None, "expired");
        let other = sessions.open("globex", Role::Operator, now);
        assert_ne!(other, secret);
        sessions.close(&other);
        assert_eq!(sessions.principal(&other, now), None, "closed");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wasmesh_session=abc ; b=2"),
        );
        assert_eq!(presented_session(&headers), Some("abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("wasmesh_sessionx=1"),
        );
        assert_eq!(presented_session(&headers), None);
    }
}

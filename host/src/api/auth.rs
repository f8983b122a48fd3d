//! Tenants and roles: API keys map to a tenant and a role; every request past
//! `/health` carries one. A tenant key reaches that tenant's objects only; an operator
//! key also administers the fleet (drain, deregister, the node list, the whole
//! topology). Without keys every caller is the `default` tenant with the operator role.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::session::{Sessions, presented_session};

/// The tenant a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant(pub String);

/// What a key may do beyond its tenant's own objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Its own objects only.
    Tenant,
    /// Also fleet administration.
    Operator,
}

impl Role {
    /// The role named in a tenants file (`role = "operator"`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "tenant" => Some(Role::Tenant),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    /// 403 `forbidden` unless this is the operator role.
    pub fn require_operator(self) -> Result<(), ApiError> {
        match self {
            Role::Operator => Ok(()),
            Role::Tenant => Err(ApiError::Forbidden(
                "forbidden",
                "this route is for the operator: it needs an operator key (--admin-key)".into(),
            )),
        }
    }
}

pub use crate::model::{DEFAULT_TENANT, OPERATOR_TENANT};

/// Keys shorter than this are refused wherever a key is configured (client, operator
/// and node keys; flags, environment and files): a key is a secret, not a password.
pub const MIN_KEY_CHARS: usize = 16;

/// A configured key that is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Empty: a stray comma in a list, or a variable set to nothing.
    #[error(
        "{origin}: an empty key (a stray comma, or a variable set to nothing?); a key has at least {MIN_KEY_CHARS} characters"
    )]
    Empty {
        /// Where it was configured (a flag, a variable, a file and entry).
        origin: String,
    },
    /// Shorter than [`MIN_KEY_CHARS`].
    #[error("{origin}: a key has at least {MIN_KEY_CHARS} characters (this one has {len})")]
    Short {
        /// Where it was configured.
        origin: String,
        /// Its length in characters.
        len: usize,
    },
    /// Spaces or control characters, which a presented key (trimmed) never matches.
    #[error("{origin}: a key has no spaces or control characters")]
    Blank {
        /// Where it was configured.
        origin: String,
    },
}

/// The one check of a configured key, whatever configured it: `origin` names where
/// (`--api-key`, `WASMESH_NODE_KEY`, `tenants.toml: tenant "acme"`, ...).
pub fn check_key(origin: &str, key: &str) -> Result<(), KeyError> {
    let origin = origin.to_string();
    if key.is_empty() {
        return Err(KeyError::Empty { origin });
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::Blank { origin });
    }
    let len = key.chars().count();
    if len < MIN_KEY_CHARS {
        return Err(KeyError::Short { origin, len });
    }
    Ok(())
}

/// API keys and their tenants. Keys are kept as BLAKE3 digests and compared in
/// constant time, so neither their length nor a prefix leaks through timing.
#[derive(Debug, Default, Clone)]
pub struct Auth {
    keys: Vec<([u8; 32], String, Role)>,
    /// No keys, and nobody may pass: a fleet node's client API ([`Auth::closed`]).
    closed: bool,
    /// Browser sessions opened with one of the keys (`api::session`).
    sessions: std::sync::Arc<Sessions>,
    /// Failed authentications per peer (`api::throttle`).
    failures: std::sync::Arc<crate::api::throttle::Failures>,
}

impl Auth {
    /// No keys: every caller is tenant `default`.
    pub fn open() -> Self {
        Self::default()
    }

    /// No keys, and no caller passes: every route behind a key answers 401. What a
    /// node joined to a coordinator serves when it was given no client keys.
    pub fn closed() -> Self {
        Self {
            closed: true,
            ..Self::default()
        }
    }

    /// Tenants and their keys, all with the tenant role.
    pub fn with_tenants(tenants: &HashMap<String, Vec<String>>) -> Result<Self, KeyError> {
        let mut auth = Self::default();
        for (tenant, tenant_keys) in tenants {
            for key in tenant_keys {
                auth.add(&format!("tenant {tenant:?}"), tenant, key, Role::Tenant)?;
            }
        }
        Ok(auth)
    }

    /// Adds a key of `tenant` with `role`, configured at `origin`, once
    /// [`check_key`] passes it.
    pub fn add(
        &mut self,
        origin: &str,
        tenant: &str,
        key: &str,
        role: Role,
    ) -> Result<(), KeyError> {
        check_key(origin, key)?;
        self.keys.push((
            *blake3::hash(key.as_bytes()).as_bytes(),
            tenant.to_string(),
            role,
        ));
        Ok(())
    }

    /// Whether no client key exists and nobody passes ([`Auth::closed`]).
    pub fn is_closed(&self) -> bool {
        self.closed && self.keys.is_empty()
    }

    /// The browser sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Who a request is: its key's tenant and role when it presents a key (a wrong
    /// key is nobody, whatever cookie comes with it), else its session cookie's. Without
    /// keys configured, everyone is the `default` tenant with the operator role.
    pub fn caller(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        self.identify(headers, std::time::Instant::now())
            .map(|(tenant, role, _)| (tenant, role))
    }

    /// [`Auth::caller`] with how the caller proved it.
    fn identify(
        &self,
        headers: &HeaderMap,
        now: std::time::Instant,
    ) -> Option<(String, Role, Proof)> {
        if !self.required() {
            return Some((DEFAULT_TENANT.to_string(), Role::Operator, Proof::Open));
        }
        match presented_key(headers) {
            Some(key) => self.principal(key).map(|(t, r)| (t, r, Proof::Key)),
            None => presented_session(headers)
                .and_then(|secret| self.sessions.principal(secret, now))
                .map(|(t, r)| (t, r, Proof::Session)),
        }
    }

    /// Whether keys are required (some are configured, or the API is closed).
    pub fn required(&self) -> bool {
        self.closed || !self.keys.is_empty()
    }

    /// The tenant of a key, if any.
    pub fn tenant(&self, key: &str) -> Option<String> {
        self.principal(key).map(|(tenant, _)| tenant)
    }

    /// The tenant and role of a key, if any.
    pub fn principal(&self, key: &str) -> Option<(String, Role)> {
        let digest = blake3::hash(key.as_bytes());
        let mut found = None;
        // Every key is compared, so the time taken does not say which one matched.
        for (known, tenant, role) in &self.keys {
            if bool::from(known.ct_eq(digest.as_bytes())) {
                found = Some((tenant.clone(), *role));
            }
        }
        found
    }
}

/// The key a request presents: `x-api-key`, else `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// No keys are configured: everyone is the `default` operator.
    Open,
    /// A key (`x-api-key` or `Authorization: Bearer`).
    Key,
    /// A browser session's cookie, which a browser attaches by itself: a request
    /// that changes something must also be shown to come from the dashboard's own
    /// origin ([`crate::api::session::same_site`]).
    Session,
}

impl Auth {
    /// Who a request is, throttled per peer: 429 when the peer failed too often
    /// lately, 401 (and one failure charged) for a wrong key or session, or none.
    pub fn authenticate(
        &self,
        peer: Peer,
        headers: &HeaderMap,
    ) -> Result<(String, Role, Proof), ApiError> {
        let presented = presented_key(headers).is_some() || presented_session(headers).is_some();
        self.throttled(peer, presented, |now| self.identify(headers, now))
    }

    /// Who presents `key` (a login's), throttled as [`Auth::authenticate`].
    pub fn authenticate_key(
        &self,
        peer: Peer,
        key: &str,
    ) -> Result<(String, Role, Proof), ApiError> {
        self.throttled(peer, true, |_| {
            if self.required() {
                self.principal(key).map(|(t, r)| (t, r, Proof::Key))
            } else {
                Some((DEFAULT_TENANT.to_string(), Role::Operator, Proof::Open))
            }
        })
    }

    /// `identify` behind the peer's failure bucket (client and node keys alike): 429
    /// while the peer has no failure left, and a miss with something presented takes
    /// one failure from it. (A peer accrues failures only where keys are required.)
    pub(crate) fn throttled<T>(
        &self,
        peer: Peer,
        presented: bool,
        identify: impl FnOnce(std::time::Instant) -> Option<T>,
    ) -> Result<T, ApiError> {
        let ip = peer.0.map(|addr| addr.ip());
        let now = std::time::Instant::now();
        self.failures
            .check(ip, now)
            .map_err(crate::api::throttle::refused)?;
        identify(now).ok_or_else(|| {
            if presented {
                self.failures.fail(ip, now);
            }
            ApiError::Unauthorized
        })
    }
}

/// Middleware: resolves the tenant (from the key, else the session cookie) or answers
/// 401 (429 for a peer that failed too often); a cookie-authenticated request that
/// changes something from another site is refused (403 `cross_site`).
pub async fn require_tenant(
    State(state): State<AppState>,
    peer: Peer,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (tenant, role, proof) = state.auth.authenticate(peer, request.headers())?;
    if proof == Proof::Session && !request.method().is_safe() {
        crate::api::session::same_site(request.headers())?;
    }
    request.extensions_mut().insert(Tenant(tenant));
    request.extensions_mut().insert(role);
    Ok(next.run(request).await)
}

/// Proof that the caller has the operator role: a handler that takes it serves the
/// operator only (403 `forbidden` for a tenant; the route's key middleware has
/// answered 401 for nobody before). The one check of the operator-only routes.
#[derive(Clone, Copy, Debug)]
pub struct Operator;

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Role>() {
            Some(Role::Operator) => Ok(Operator),
            Some(Role::Tenant) => Role::Tenant.require_operator().map(|()| Operator),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// The caller's address, when the server knows it.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Through axum's own extractor, so `MockConnectInfo` works in in-process tests.
        let info = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .ok();
        Ok(Peer(info.map(|ConnectInfo(addr)| addr)))
    }
}

impl Peer {
    /// Whether the caller connected from a loopback address. Without connection info
    /// (in-process tests) the caller is treated as remote, the safe side.
    pub fn is_loopback(&self) -> bool {
        self.0.is_some_and(|addr| addr.ip().is_loopback())
    }
}

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
                "fleet administration needs an operator key (--admin-key)".into(),
            )),
        }
    }
}

pub use crate::model::{DEFAULT_TENANT, OPERATOR_TENANT};

/// API keys and their tenants. Keys are kept as BLAKE3 digests and compared in
/// constant time, so neither their length nor a prefix leaks through timing.
#[derive(Debug, Default, Clone)]
pub struct Auth {
    keys: Vec<([u8; 32], String, Role)>,
    /// Browser sessions opened with one of the keys (`api::session`).
    sessions: std::sync::Arc<Sessions>,
}

impl Auth {
    /// No keys: every caller is tenant `default`.
    pub fn open() -> Self {
        Self::default()
    }

    /// Tenants and their keys, all with the tenant role.
    pub fn with_tenants(tenants: &HashMap<String, Vec<String>>) -> Self {
        let mut auth = Self::default();
        for (tenant, tenant_keys) in tenants {
            for key in tenant_keys {
                auth.add(tenant, key, Role::Tenant);
            }
        }
        auth
    }

    /// Adds a key of `tenant` with `role`.
    pub fn add(&mut self, tenant: &str, key: &str, role: Role) {
        self.keys.push((
            *blake3::hash(key.as_bytes()).as_bytes(),
            tenant.to_string(),
            role,
        ));
    }

    /// The browser sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Who a request is: its key's tenant and role when it presents a key (a wrong
    /// key is nobody, whatever cookie comes with it), else its session cookie's. Without
    /// keys configured, everyone is the `default` tenant with the operator role.
    pub fn caller(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        if !self.required() {
            return Some((DEFAULT_TENANT.to_string(), Role::Operator));
        }
        match presented_key(headers) {
            Some(key) => self.principal(key),
            None => presented_session(headers)
                .and_then(|secret| self.sessions.principal(secret, std::time::Instant::now())),
        }
    }

    /// Whether keys are required.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
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

/// Middleware: resolves the tenant (from the key, else the session cookie) or answers
/// 401.
pub async fn require_tenant(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (tenant, role) = state
        .auth
        .caller(request.headers())
        .ok_or(ApiError::Unauthorized)?;
    request.extensions_mut().insert(Tenant(tenant));
    request.extensions_mut().insert(role);
    Ok(next.run(request).await)
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

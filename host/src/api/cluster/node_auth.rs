//! Node authentication on the coordinator: a shared `--node-key` (good for any node
//! id) and per-node keys from `--node-keys FILE` (each good for the one node id it
//! names, so a node cannot register, heartbeat, poll or report as another).

use std::path::PathBuf;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::CoordinatorState;
use crate::api::auth::{check_key, presented_key};
use crate::api::error::{ApiError, ApiResult};

/// Who a node-route request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeIdentity {
    /// The shared node key (or no node keys at all): any node id.
    Any,
    /// A per-node key: this node id only.
    Node(String),
}

impl NodeIdentity {
    /// 403 `forbidden` unless this identity may act as node `id`.
    pub fn may_act_as(&self, id: &str) -> ApiResult<()> {
        match self {
            NodeIdentity::Node(own) if own != id => Err(ApiError::Forbidden(
                "forbidden",
                format!("this node key belongs to node {own:?}, not {id:?}"),
            )),
            _ => Ok(()),
        }
    }
}

/// The node keys a coordinator accepts.
#[derive(Debug, Default)]
pub struct NodeAuth {
    shared: Option<[u8; 32]>,
    nodes: Vec<([u8; 32], String)>,
}

fn digest(key: &str) -> [u8; 32] {
    *blake3::hash(key.as_bytes()).as_bytes()
}

impl NodeAuth {
    /// From `--node-key` and a `--node-keys` TOML file (`node-id = "key"`).
    pub fn new(shared: Option<&str>, file: Option<&PathBuf>) -> anyhow::Result<Self> {
        if let Some(key) = shared {
            check_key("--node-key (WASMESH_NODE_KEY)", key)?;
        }
        let mut auth = Self {
            shared: shared.map(digest),
            nodes: Vec::new(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: std::collections::BTreeMap<String, String> =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            for (id, key) in table {
                check_key(&format!("{}: node {id:?}", path.display()), &key)?;
                auth.nodes.push((digest(&key), id));
            }
        }
        Ok(auth)
    }

    /// Whether node routes are served without any key.
    pub fn is_open(&self) -> bool {
        self.shared.is_none() && self.nodes.is_empty()
    }

    /// Who presents `key`, if anyone.
    pub fn identify(&self, key: &str) -> Option<NodeIdentity> {
        let presented = digest(key);
        let mut found = None;
        // Every key is compared, so the time taken does not say which one matched.
        if let Some(shared) = &self.shared
            && bool::from(shared.ct_eq(&presented))
        {
            found = Some(NodeIdentity::Any);
        }
        for (known, id) in &self.nodes {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(NodeIdentity::Node(id.clone()));
            }
        }
        found
    }
}

/// The node id a node route's path names (`/api/v1/cluster/nodes/{id}/...`).
fn path_node(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/cluster/nodes/")?;
    let id = rest.split('/').next().filter(|id| !id.is_empty())?;
    (id != "register").then_some(id)
}

/// Middleware of the node routes: 401 without a good node key, 403 when a per-node
/// key is used for another node's path; the identity goes into the request.
pub async fn require_node_key(
    State(state): State<CoordinatorState>,
    peer: crate::api::auth::Peer,
    mut request: Request,
    next: Next,
) -> ApiResult<Response> {
    let identity = if state.node_auth.is_open() {
        NodeIdentity::Any
    } else {
        // Wrong node keys cost the peer as wrong client keys do.
        let key = presented_key(request.headers());
        state.auth.throttled(peer, key.is_some(), |_| {
            key.and_then(|key| state.node_auth.identify(key))
        })?
    };
    if let Some(id) = path_node(request.uri().path()) {
        identity.may_act_as(id)?;
    }
    request.extensions_mut().insert(identity);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_keys_are_good_for_their_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nodes.toml");
        std::fs::write(
            &file,
            "n1 = \"key-of-node-one-0001\"\nn2 = \"key-of-node-two-0002\"\n",
        )
        .unwrap();
        let auth = NodeAuth::new(Some("the-shared-node-key"), Some(&file)).unwrap();
        assert!(!auth.is_open());
        assert_eq!(
            auth.identify("the-shared-node-key"),
            Some(NodeIdentity::Any)
        );
        let n1 = auth.identify("key-of-node-one-0001").unwrap();
        assert_eq!(n1, NodeIdentity::Node("n1".into()));
        assert!(n1.may_act_as("n1").is_ok());
        assert!(n1.may_act_as("n2").is_err());
        assert!(NodeIdentity::Any.may_act_as("n2").is_ok());
        assert_eq!(auth.identify("key-of-node-one-000"), None);
        assert!(NodeAuth::default().is_open());

        std::fs::write(&file, "n1 = \"short\"\n").unwrap();
        assert!(NodeAuth::new(None, Some(&file)).is_err());
    }

    #[test]
    fn node_paths_name_their_node() {
        assert_eq!(path_node("/api/v1/cluster/nodes/n1/heartbeat"), Some("n1"));
        assert_eq!(path_node("/api/v1/cluster/nodes/n1/work"), Some("n1"));
        assert_eq!(path_node("/api/v1/cluster/nodes/register"), None);
        assert_eq!(path_node("/api/v1/cluster/blobs/ab"), None);
    }
}

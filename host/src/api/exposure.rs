//! The checks every server's configuration passes before it listens: who may reach
//! what, decided once, here, from the keys, the bind address and the server's place in
//! a fleet. A configuration that would serve code execution to anyone is refused with
//! the flag that fixes it; one that only looks risky is warned about.

use std::net::SocketAddr;

use crate::api::auth::Auth;

/// What kind of server is being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// A node: serving clients itself (`joined: false`) or a coordinator's fleet
    /// member (`joined: true`, `--coordinator`).
    Node {
        /// Whether it joins a coordinator.
        joined: bool,
    },
    /// A coordinator.
    Coordinator {
        /// Whether node routes need a node key (`--node-key`/`--node-keys`).
        nodes_authenticated: bool,
    },
}

/// A configuration refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Client keys but open node routes: anyone could register as a node and receive
    /// every tenant's work.
    #[error(
        "client keys are set (--api-key/--admin-key/--tenants) but nodes are not \
         authenticated: pass --node-key KEY (or --node-keys FILE), or anyone could \
         register as a node and receive every tenant's work"
    )]
    OpenNodeRoutes,
    /// No keys on an address others can reach.
    #[error(
        "no API keys on {0}, which other hosts can reach: anyone could run code here. Pass \
         --api-key/--tenants (and --admin-key), listen on 127.0.0.1, or accept it \
         with --insecure-no-auth"
    )]
    OpenToTheNetwork(SocketAddr),
}

/// Checks `auth` for a server of kind `serving` bound to `bind`; returns the
/// authentication to serve with. A node joined to a coordinator without client keys
/// serves a closed client API ([`Auth::closed`]: health and readiness only, `/metrics`
/// with `--admin-key`): its slots belong to the coordinator's leases, and nobody
/// else's work may reach them.
pub fn admit(
    serving: Serving,
    auth: Auth,
    bind: SocketAddr,
    insecure_no_auth: bool,
) -> Result<Auth, Refused> {
    let has_keys = auth.required();
    match serving {
        Serving::Coordinator {
            nodes_authenticated: false,
        } if has_keys => return Err(Refused::OpenNodeRoutes),
        Serving::Node { joined: true } if !has_keys => return Ok(Auth::closed()),
        _ => {}
    }
    if !has_keys && !bind.ip().is_loopback() {
        if !insecure_no_auth {
            return Err(Refused::OpenToTheNetwork(bind));
        }
        tracing::warn!(%bind, "serving without API keys on a non-loopback address (--insecure-no-auth): anyone who can reach it can run code");
    }
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Role;

    fn keyed() -> Auth {
        let mut auth = Auth::open();
        auth.add("test", "acme", "acme-key-0123456789", Role::Tenant)
            .unwrap();
        auth
    }

    #[test]
    fn every_open_configuration_is_refused_or_closed() {
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let node = Serving::Node { joined: false };
        let member = Serving::Node { joined: true };
        let coordinator = |nodes_authenticated| Serving::Coordinator {
            nodes_authenticated,
        };

        // Open on loopback is the single-user default.
        assert!(!admit(node, Auth::open(), local, false).unwrap().required());
        assert_eq!(
            admit(node, Auth::open(), public, false).unwrap_err(),
            Refused::OpenToTheNetwork(public)
        );
        assert!(!admit(node, Auth::open(), public, true).unwrap().required());
        // A fleet member without keys: closed, wherever it listens.
        for bind in [local, public] {
            let auth = admit(member, Auth::open(), bind, false).unwrap();
            assert!(auth.is_closed() && auth.required());
        }
        let auth = admit(member, keyed(), public, false).unwrap();
        assert!(auth.required() && !auth.is_closed());

        assert_eq!(
            admit(coordinator(false), keyed(), local, false).unwrap_err(),
            Refused::OpenNodeRoutes
        );
        assert!(admit(coordinator(true), keyed(), public, false).is_ok());
        assert_eq!(
            admit(coordinator(true), Auth::open(), public, false).unwrap_err(),
            Refused::OpenToTheNetwork(public)
        );
        assert!(admit(coordinator(false), Auth::open(), local, false).is_ok());
    }
}

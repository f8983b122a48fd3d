//! The one way every listener serves (node, coordinator, both of their routers):
//! HTTP/1.1 through hyper with
//!
//! - a header timeout that is also the idle timeout ([`Limits::idle`]): a connection
//!   that has sent no complete request head for that long, whether it sent part of
//!   one or nothing since its last answer, is closed;
//! - a cap on open connections ([`Limits::connections`], kept below the descriptor
//!   limit with [`RESERVED_FDS`] left for the journal, the store and outgoing calls)
//!   and on one peer's ([`Limits::per_peer`]). At a cap, the oldest *idle* connection
//!   (no request in flight: never sent one, or between requests) is closed to make
//!   room, the peer's own first; a new connection is closed at once only when every
//!   connection counted is busy. Idle or half-sent connections can therefore never
//!   shut out a client with a request to make, nor a node's heartbeat;
//! - graceful shutdown: no new connections, idle ones closed, requests in flight
//!   answered.
//!
//! Bodies are bounded per route by the handlers' extractors (`api::json`,
//! `api::body`), and by `DefaultBodyLimit` for everything else (`api::app_with`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// Descriptors left for everything but client connections.
pub const RESERVED_FDS: u64 = 256;

/// How a listener bounds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request head, on a new connection or between requests.
    pub idle: Duration,
    /// Open connections at most.
    pub connections: usize,
    /// Open connections of one peer (IPv4 address or IPv6 /64) at most.
    pub per_peer: usize,
}

impl Limits {
    /// The default idle timeout.
    pub const IDLE: Duration = crate::model::SERVER_IDLE;

    /// Defaults sized to the process's descriptor limit (raised to its hard limit
    /// first): connections at most that limit less [`RESERVED_FDS`] (and at most
    /// 16,384), a peer at most half of them.
    pub fn for_this_process() -> Self {
        let fds = raise_nofile();
        let connections = fds.saturating_sub(RESERVED_FDS).clamp(32, 16_384) as usize;
        Self {
            idle: Self::IDLE,
            connections,
            per_peer: (connections / 2).max(16),
        }
    }
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit now.
fn raise_nofile() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

#[derive(Debug)]
struct Conn {
    peer: IpAddr,
    opened: Instant,
    in_flight: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

/// The open connections.
#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Conn>,
}

impl Table {
    /// The oldest idle connection, of `peer` only when given.
    fn oldest_idle(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, c)| peer.is_none_or(|p| c.peer == p))
            .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id)
    }

    /// Makes room for one more connection of `peer` by closing idle ones; false when
    /// every connection in the way is busy.
    fn make_room(&mut self, peer: IpAddr, limits: &Limits) -> bool {
        let of_peer = self.open.values().filter(|c| c.peer == peer).count();
        if of_peer >= limits.per_peer {
            match self.oldest_idle(Some(peer)) {
                Some(id) => self.close(id),
                None => return false,
            }
        }
        if self.open.len() >= limits.connections {
            let victim = self
                .oldest_idle(Some(peer))
                .or_else(|| self.oldest_idle(None));
            match victim {
                Some(id) => self.close(id),
                None => return false,
            }
        }
        true
    }

    fn close(&mut self, id: u64) {
        if let Some(conn) = self.open.remove(&id) {
            conn.close.notify_one();
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then
/// finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let table = Arc::new(Mutex::new(Table::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a reset before accept: wait, go on.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = crate::api::throttle::peer_of(addr.ip());
        let (id, in_flight, close) = {
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            if !table.make_room(peer, &limits) {
                tracing::debug!(%addr, "every connection is busy: closing a new one");
                continue;
            }
            let id = table.next;
            table.next += 1;
            let conn = Conn {
                peer,
                opened: Instant::now(),
                in_flight: Arc::default(),
                close: Arc::default(),
            };
            let handles = (id, conn.in_flight.clone(), conn.close.clone());
            table.open.insert(id, conn);
            handles
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let counter = in_flight.clone();
        let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(addr));
            let busy = Busy::new(counter.clone());
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                drop(busy);
                response
            }
        });
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    () = close.notified() => break,
                    changed = stop.changed(), if !draining => {
                        draining = true;
                        if changed.is_err() || *stop.borrow() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Counts a request in flight on its connection while it lives (from its head to
/// its answer: a long poll is busy, not idle).
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(table: &mut Table, peer: &str, busy: bool) -> u64 {
        let id = table.next;
        table.next += 1;
        let in_flight = Arc::new(AtomicUsize::new(usize::from(busy)));
        table.open.insert(
            id,
            Conn {
                peer: peer.parse().unwrap(),
                opened: Instant::now() + Duration::from_millis(id),
                in_flight,
                close: Arc::default(),
            },
        );
        id
    }

    #[test]
    fn idle_connections_make_room_the_peers_own_first() {
        let limits = Limits {
            idle: Limits::IDLE,
            connections: 4,
            per_peer: 3,
        };
        let mut table = Table::default();
        let a = "198.51.100.1".parse().unwrap();
        let first_b = conn(&mut table, "198.51.100.2", false);
        let busy_a = conn(&mut table, "198.51.100.1", true);
        let idle_a = conn(&mut table, "198.51.100.1", false);
        conn(&mut table, "198.51.100.1", true);
        // Peer a is at its cap: its own idle connection goes, not b's older one.
        assert!(table.make_room(a, &limits));
        assert!(!table.open.contains_key(&idle_a) && table.open.contains_key(&first_b));
        conn(&mut table, "198.51.100.1", true);
        // a again: its connections are all busy now.
        assert!(!table.make_room(a, &limits));
        assert!(table.open.contains_key(&busy_a));
        // Another peer at the global cap: the oldest idle (b's) goes.
        let c = "198.51.100.3".parse().unwrap();
        assert!(table.make_room(c, &limits));
        assert!(!table.open.contains_key(&first_b));
    }
}

//! A node's membership in a fleet: `membership` registers and heartbeats (renewing its
//! leases and carrying their checkpoints), `agent` long-polls leased work and runs it
//! on the node's slots, reporting results in batches. Both talk to the coordinator
//! [`Coordinators`] says the node is with.

pub mod agent;
pub mod membership;

use std::sync::atomic::{AtomicUsize, Ordering};

/// The coordinators a node may join (`--coordinator A,B`), and the one it is with:
/// it stays with one and moves to the next when that one stops answering.
#[derive(Debug)]
pub struct Coordinators {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Coordinators {
    /// The coordinators of a comma-separated list of base URLs.
    pub fn new(list: &str) -> Self {
        let mut urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            urls.push(list.trim_end_matches('/').to_string());
        }
        Self {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// Starts with the coordinator that node `id` is given when nodes are spread over
    /// the list: the number `id` ends in (a StatefulSet pod's ordinal: `node-0`,
    /// `node-1`, ... take the coordinators in turn), else a hash of `id`, modulo
    /// their number.
    pub fn spread(self, id: &str) -> Self {
        let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let n = self.urls.len() as u64;
        let at = match id[id.len() - digits..].parse::<u64>() {
            Ok(ordinal) => ordinal % n,
            Err(_) => {
                let hash = blake3::hash(id.as_bytes());
                u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")) % n
            }
        };
        self.current.store(at as usize, Ordering::Relaxed);
        self
    }

    /// The base URL of the coordinator the node is with.
    pub fn current(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether the list is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Moves to the next coordinator; returns its URL.
    pub fn move_on(&self) -> &str {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.urls.len();
        self.current.store(next, Ordering::Relaxed);
        &self.urls[next]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_moves_along_its_coordinators_in_turn() {
        let list = Coordinators::new("http://a:9100/, http://b:9100");
        assert_eq!(list.len(), 2);
        assert_eq!(list.current(), "http://a:9100");
        assert_eq!(list.move_on(), "http://b:9100");
        assert_eq!(list.current(), "http://b:9100");
        assert_eq!(list.move_on(), "http://a:9100");
        assert_eq!(Coordinators::new("http://solo").move_on(), "http://solo");
    }

    #[test]
    fn spread_nodes_start_with_the_coordinator_their_ordinal_or_hash_gives() {
        let three = "http://a, http://b, http://c";
        let start = |id: &str| Coordinators::new(three).spread(id).current().to_string();
        assert_eq!(start("wasmesh-node-0"), "http://a");
        assert_eq!(start("wasmesh-node-1"), "http://b");
        assert_eq!(start("wasmesh-node-5"), "http://c");
        // No ordinal: a hash, the same every time, and the ids spread over the list.
        assert_eq!(start("gpu-box"), start("gpu-box"));
        let firsts: std::collections::HashSet<String> = (b'a'..=b'z')
            .map(|c| start(&format!("host-{}", c as char)))
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert_eq!(
            Coordinators::new("http://solo").spread("n-7").current(),
            "http://solo"
        );
    }
}

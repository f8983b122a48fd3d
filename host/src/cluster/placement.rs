//! Placement: which node runs a job, in two explainable phases.
//!
//! 1. **Filter**: the node is healthy and not draining, has a free slot, carries every
//!    label the worker `requires`, and its ceilings are at least the job's limits.
//! 2. **Score**: a weighted mean of normalised factors in `0..=1`:
//!    `capacity` (free share of its slots), `locality` (it already holds the compiled
//!    module), `reliability` (1 - recent rate of lost leases and host failures),
//!    `cost` (1 - its `cost_per_hour` label over the fleet's most expensive) and
//!    `affinity` (share of the job's input blobs it already holds). Ties go to the
//!    lower cost, then the lower id.
//!
//! With more than [`SAMPLE_ABOVE`] nodes a decision does not scan the fleet: it scores
//! two random eligible nodes (power of two choices) plus the node that last ran the
//! module, and falls back to a full scan only when sampling finds nothing eligible.
//! `round-robin` and `least-loaded` are the simple alternatives.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use wasmesh_runtime::{Limits, LimitsRequest};

use super::prefetch::Prefetch;
use crate::model::HashHex;

/// Fleets larger than this are sampled instead of scanned.
pub const SAMPLE_ABOVE: usize = 16;

/// Blobs remembered per node for the affinity factor.
const REMEMBERED_BLOBS: usize = 4096;

/// How placement chooses among eligible nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Weighted score (see the module docs).
    #[default]
    Score,
    /// The next eligible node in turn.
    RoundRobin,
    /// The eligible node with the smallest share of busy slots.
    LeastLoaded,
    /// A job pinned to a node (an event handler runs where it was placed).
    #[value(skip)]
    Pinned,
}

impl Strategy {
    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Score => "score",
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::Pinned => "pinned",
        }
    }
}

/// Weights of the score's factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// Free share of the node's slots.
    pub capacity: f64,
    /// The node holds the compiled module.
    pub locality: f64,
    /// 1 - recent failure rate.
    pub reliability: f64,
    /// Cheaper is better.
    pub cost: f64,
    /// The node holds the job's inputs.
    pub affinity: f64,
}

impl Default for Weights {
    /// Spreading load matters most; locality is worth about a third of a free node,
    /// so a warm node is preferred until it is noticeably busier than a cold one.
    fn default() -> Self {
        Self {
            capacity: 1.0,
            locality: 0.3,
            reliability: 1.0,
            cost: 0.2,
            affinity: 0.2,
        }
    }
}

impl std::str::FromStr for Weights {
    type Err = String;

    /// `capacity=1,locality=0.3,...`; factors not named keep their default weight.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = Weights::default();
        for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected factor=weight"))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the weight is not a number"))?;
            if !(0.0..=1000.0).contains(&value) {
                return Err(format!("{pair:?}: weights are between 0 and 1000"));
            }
            let slot = match name.trim() {
                "capacity" => &mut weights.capacity,
                "locality" => &mut weights.locality,
                "reliability" => &mut weights.reliability,
                "cost" => &mut weights.cost,
                "affinity" => &mut weights.affinity,
                other => {
                    return Err(format!(
                        "unknown factor {other:?} (capacity, locality, reliability, cost, affinity)"
                    ));
                }
            };
            *slot = value;
        }
        if weights.total() <= 0.0 {
            return Err("at least one weight must be positive".into());
        }
        Ok(weights)
    }
}

impl Weights {
    fn total(&self) -> f64 {
        self.capacity + self.locality + self.reliability + self.cost + self.affinity
    }
}

/// What placement knows about one node.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Its id.
    pub id: String,
    /// Slots it runs at once.
    pub slots: u64,
    /// How many leases it may hold queued beyond its slots; see
    /// [`NodeView::queue_room`].
    pub policy: Prefetch,
    /// When it last reported a result.
    pub last_result: Option<Instant>,
    /// Leases it holds.
    pub leased: u64,
    /// Its own API's jobs occupying slots.
    pub local: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its ceilings, when it told us.
    pub limits: Option<Limits>,
    /// Last heartbeat (or registration).
    pub last_heartbeat: Instant,
    /// Draining: no new work.
    pub draining: bool,
    /// Modules it has compiled (learned from what it was given).
    pub modules: HashSet<HashHex>,
    /// Input blobs it holds (learned from what it was given; bounded).
    pub blobs: lru::LruCache<HashHex, ()>,
    /// Recent failure rate in `0..=1` (exponentially weighted: lost leases and host
    /// failures count 1, clean results 0).
    pub failure_rate: f64,
    /// Recent run time of its attempts (exponentially weighted), once it has run one.
    pub run_time: Option<Duration>,
    /// Its `cost_per_hour` label, 0 when absent.
    pub cost: f64,
}

impl NodeView {
    /// A view of a node that just registered.
    pub fn new(id: String, slots: u64, labels: BTreeMap<String, String>) -> Self {
        let cost = labels
            .get("cost_per_hour")
            .and_then(|c| c.parse::<f64>().ok())
            .filter(|c| c.is_finite() && *c >= 0.0)
            .unwrap_or(0.0);
        Self {
            id,
            slots,
            policy: Prefetch::Fixed(0),
            last_result: None,
            leased: 0,
            local: 0,
            labels,
            limits: None,
            last_heartbeat: Instant::now(),
            draining: false,
            modules: HashSet::new(),
            blobs: lru::LruCache::new(REMEMBERED_BLOBS.try_into().expect("nonzero")),
            failure_rate: 0.0,
            run_time: None,
            cost,
        }
    }

    /// Whether the node has missed its lease.
    pub fn unhealthy(&self, lease: Duration) -> bool {
        self.unhealthy_at(lease, Instant::now())
    }

    /// Whether the node has missed its lease as of `now`.
    pub fn unhealthy_at(&self, lease: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heartbeat) > lease
    }

    /// Folds one attempt's ending into the failure rate.
    pub fn record(&mut self, failed: bool) {
        const ALPHA: f64 = 0.2;
        self.failure_rate = (1.0 - ALPHA) * self.failure_rate + if failed { ALPHA } else { 0.0 };
    }
}

/// What a job asks of its node.
#[derive(Clone, Debug)]
pub struct Demand {
    /// Labels the node must carry.
    pub requires: BTreeMap<String, String>,
    /// The job's limits (worker's narrowed by the action's).
    pub limits: LimitsRequest,
    /// The module.
    pub module: HashHex,
    /// The action's input and files.
    pub inputs: Vec<HashHex>,
}

/// The factors of one node's score.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Factors {
    /// Free share of its slots.
    pub capacity: f64,
    /// 1 when it holds the module.
    pub locality: f64,
    /// 1 - recent failure rate.
    pub reliability: f64,
    /// 1 - cost / the fleet's highest cost.
    pub cost: f64,
    /// Share of the inputs it holds.
    pub affinity: f64,
}

/// A placement decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Index of the chosen node in the slice given to [`Placer::choose`].
    pub index: usize,
    /// Its score (for score placement; the load share for least-loaded).
    pub score: f64,
    /// Its factors.
    pub factors: Factors,
    /// Nodes scored.
    pub considered: usize,
    /// The strategy.
    pub strategy: Strategy,
}

impl Decision {
    /// The explanation recorded in the job's result.
    pub fn explain(&self, node: &str) -> Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        json!({
            "node": node,
            "strategy": self.strategy.name(),
            "score": round(self.score),
            "considered": self.considered,
            "factors": {
                "capacity": round(self.factors.capacity),
                "locality": round(self.factors.locality),
                "reliability": round(self.factors.reliability),
                "cost": round(self.factors.cost),
                "affinity": round(self.factors.affinity),
            },
        })
    }
}

/// Chooses nodes; holds the round-robin cursor and the last node per module.
#[derive(Debug)]
pub struct Placer {
    /// The strategy.
    pub strategy: Strategy,
    /// The score's weights.
    pub weights: Weights,
    /// A node silent longer than this is not eligible.
    pub lease: Duration,
    cursor: usize,
    /// The last node (id, index) given each module: the locality candidate when sampling.
    last_for_module: std::collections::HashMap<HashHex, (String, usize)>,
    /// The fleet's highest cost, cached until nodes change.
    max_cost: Option<f64>,
}

impl Placer {
    /// A placer.
    pub fn new(strategy: Strategy, weights: Weights, lease: Duration) -> Self {
        Self {
            strategy,
            weights,
            lease,
            cursor: 0,
            last_for_module: std::collections::HashMap::new(),
            max_cost: None,
        }
    }

    /// Forgets cached facts about the fleet (call when a node joins, leaves or changes).
    pub fn nodes_changed(&mut self) {
        self.max_cost = None;
    }

    /// Whether `node` can take the job at all as of `now` (phase 1).
    pub fn eligible(&self, node: &NodeView, demand: &Demand, now: Instant) -> bool {
        if node.draining || node.free_at(now) == 0 || node.unhealthy_at(self.lease, now) {
            return false;
        }
        if !demand
            .requires
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            return false;
        }
        if let Some(ceiling) = node.limits {
            let fits = |asked: Option<u64>, has: u64| asked.is_none_or(|a| a <= has);
            let l = &demand.limits;
            if !(fits(l.fuel, ceiling.fuel)
                && fits(l.memory_bytes, ceiling.memory_bytes)
                && fits(l.timeout_ms, ceiling.timeout_ms)
                && fits(l.output_bytes, ceiling.output_bytes))
            {
                return false;
            }
        }
        true
    }

    /// The factors of `node` for `demand` (phase 2) at `now`; `max_cost` is the
    /// fleet's highest.
    pub fn factors(node: &NodeView, demand: &Demand, max_cost: f64, now: Instant) -> Factors {
        let capacity = node.slots + node.queue_room(now);
        let held = demand
            .inputs
            .iter()
            .filter(|h| node.blobs.contains(h))
            .count();
        Factors {
            capacity: if capacity == 0 {
                0.0
            } else {
                node.free_at(now) as f64 / capacity as f64
            },
            locality: if node.modules.contains(&demand.module) {
                1.0
            } else {
                0.0
            },
            reliability: 1.0 - node.failure_rate.clamp(0.0, 1.0),
            cost: if max_cost > 0.0 {
                1.0 - node.cost / max_cost
            } else {
                1.0
            },
            affinity: if demand.inputs.is_empty() {
                0.0
            } else {
                held as f64 / demand.inputs.len() as f64
            },
        }
    }

    /// The pinned node when it can take the job (an event handler's placement).
    pub fn choose_pinned(
        &mut self,
        nodes: &[NodeView],
        demand: &Demand,
        pin: &str,
        now: Instant,
    ) -> Option<Decision> {
        let index = nodes
            .iter()
            .position(|n| n.id == pin && self.eligible(n, demand, now))?;
        let max_cost = self.max_cost(nodes);
        let factors = Self::factors(&nodes[index], demand, max_cost, now);
        Some(Decision {
            index,
            score: self.score(&factors),
            factors,
            considered: 1,
            strategy: Strategy::Pinned,
        })
    }

    /// The fleet's highest cost (cached until [`Placer::nodes_changed`]).
    fn max_cost(&mut self, nodes: &[NodeView]) -> f64 {
        *self
            .max_cost
            .get_or_insert_with(|| nodes.iter().map(|n| n.cost).fold(0.0, f64::max))
    }

    /// The weighted, normalised score of some factors.
    pub fn score(&self, f: &Factors) -> f64 {
        let w = &self.weights;
        (w.capacity * f.capacity
            + w.locality * f.locality
            + w.reliability * f.reliability
            + w.cost * f.cost
            + w.affinity * f.affinity)
            / w.total()
    }

    /// Picks a node for `demand` among `nodes` (health judged at `now`), or `None`
    /// when none is eligible.
    pub fn choose(
        &mut self,
        nodes: &[NodeView],
        demand: &Demand,
        now: Instant,
    ) -> Option<Decision> {
        let decision = match self.strategy {
            Strategy::Score | Strategy::Pinned => self.by_score(nodes, demand, now),
            Strategy::RoundRobin => self.round_robin(nodes, demand, now),
            Strategy::LeastLoaded => self.least_loaded(nodes, demand, now),
        }?;
        self.last_for_module.insert(
            demand.module,
            (nodes[decision.index].id.clone(), decision.index),
        );
        Some(decision)
    }

    fn by_score(&mut self, nodes: &[NodeView], demand: &Demand, now: Instant) -> Option<Decision> {
        let max_cost = self.max_cost(nodes);
        let mut candidates: Vec<usize> = Vec::with_capacity(4);
        if nodes.len() > SAMPLE_ABOVE {
            let mut rng = rand::rng();
            let mut tries = 0;
            while candidates.len() < 2 && tries < 32 {
                tries += 1;
                let i = rng.random_range(0..nodes.len());
                if !candidates.contains(&i) && self.eligible(&nodes[i], demand, now) {
                    candidates.push(i);
                }
            }
            if let Some((last, i)) = self.last_for_module.get(&demand.module)
                && let i = *i
                && nodes.get(i).is_some_and(|n| &n.id == last)
                && !candidates.contains(&i)
                && self.eligible(&nodes[i], demand, now)
            {
                candidates.push(i);
            }
        }
        if candidates.is_empty() {
            candidates = (0..nodes.len())
                .filter(|&i| self.eligible(&nodes[i], demand, now))
                .collect();
        }
        let considered = candidates.len();
        candidates
            .into_iter()
            .map(|i| {
                let factors = Self::factors(&nodes[i], demand, max_cost, now);
                (i, self.score(&factors), factors)
            })
            // A node with an idle slot before any that would queue the job.
            .max_by(|(a, sa, _), (b, sb, _)| {
                (nodes[*a].idle_slot().cmp(&nodes[*b].idle_slot()))
                    .then(sa.total_cmp(sb))
                    .then(nodes[*b].cost.total_cmp(&nodes[*a].cost))
                    .then(nodes[*b].id.cmp(&nodes[*a].id))
            })
            .map(|(index, score, factors)| Decision {
                index,
                score,
                factors,
                considered,
                strategy: Strategy::Score,
            })
    }

    fn round_robin(
        &mut self,
        nodes: &[NodeView],
        demand: &Demand,
        now: Instant,
    ) -> Option<Decision> {
        let n = nodes.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if self.eligible(&nodes[i], demand, now) {
                self.cursor = (i + 1) % n;
                return Some(Decision {
                    index: i,
                    score: 1.0,
                    factors: Self::factors(&nodes[i], demand, 0.0, now),
                    considered: step + 1,
                    strategy: Strategy::RoundRobin,
                });
            }
        }
        None
    }

    fn least_loaded(
        &mut self,
        nodes: &[NodeView],
        demand: &Demand,
        now: Instant,
    ) -> Option<Decision> {
        let load = |n: &NodeView| {
            (n.leased + n.local) as f64 / (n.slots + n.queue_room(now)).max(1) as f64
        };
        let mut best: Option<(usize, f64)> = None;
        let mut considered = 0;
        for (i, node) in nodes.iter().enumerate() {
            if !self.eligible(node, demand, now) {
                continue;
            }
            considered += 1;
            let l = load(node);
            let better = best.is_none_or(|(b, bl)| {
                l.total_cmp(&bl).then(node.id.cmp(&nodes[b].id)) == std::cmp::Ordering::Less
            });
            if better {
                best = Some((i, l));
            }
        }
        best.map(|(index, l)| Decision {
            index,
            score: 1.0 - l,
            factors: Self::factors(&nodes[index], demand, 0.0, now),
            considered,
            strategy: Strategy::LeastLoaded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, slots: u64) -> NodeView {
        NodeView::new(id.into(), slots, BTreeMap::new())
    }

    fn demand(module: u8) -> Demand {
        Demand {
            requires: BTreeMap::new(),
            limits: LimitsRequest::default(),
            module: HashHex([module; 32]),
            inputs: Vec::new(),
        }
    }

    fn placer(strategy: Strategy) -> Placer {
        Placer::new(strategy, Weights::default(), Duration::from_secs(5))
    }

    #[test]
    fn filter_honours_labels_capacity_drain_and_ceilings() {
        let mut p = placer(Strategy::Score);
        let mut gpu = node("gpu", 1);
        gpu.labels.insert("gpu".into(), "yes".into());
        let plain = node("plain", 4);
        let mut wants_gpu = demand(1);
        wants_gpu.requires.insert("gpu".into(), "yes".into());
        let nodes = vec![plain.clone(), gpu.clone()];
        assert_eq!(
            p.choose(&nodes, &wants_gpu, Instant::now()).unwrap().index,
            1
        );

        let mut full = gpu.clone();
        full.leased = 1;
        assert!(
            p.choose(&[plain.clone(), full], &wants_gpu, Instant::now())
                .is_none()
        );

        let mut draining = plain.clone();
        draining.draining = true;
        assert_eq!(
            p.choose(&[draining, node("other", 1)], &demand(1), Instant::now())
                .unwrap()
                .index,
            1
        );

        let mut small = plain.clone();
        small.limits = Some(Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        });
        let mut big_job = demand(1);
        big_job.limits.memory_bytes = Some(128 << 20);
        assert!(p.choose(&[small], &big_job, Instant::now()).is_none());
    }

    #[test]
    fn locality_breaks_an_otherwise_equal_score_and_capacity_spreads() {
        let mut p = placer(Strategy::Score);
        let mut warm = node("b-warm", 2);
        warm.modules.insert(HashHex([7; 32]));
        let cold = node("a-cold", 2);
        let nodes = vec![cold.clone(), warm.clone()];
        let d = p.choose(&nodes, &demand(7), Instant::now()).unwrap();
        assert_eq!(nodes[d.index].id, "b-warm");
        assert_eq!(d.factors.locality, 1.0);
        // Warm but half busy loses to an idle cold node.
        warm.leased = 1;
        let nodes = vec![cold, warm];
        assert_eq!(
            nodes[p.choose(&nodes, &demand(7), Instant::now()).unwrap().index].id,
            "a-cold"
        );
    }

    #[test]
    fn cheaper_and_more_reliable_nodes_win() {
        let mut p = placer(Strategy::Score);
        let mut cheap = node("z-cheap", 2);
        cheap.cost = 1.0;
        let mut dear = node("a-dear", 2);
        dear.cost = 3.0;
        let nodes = vec![dear.clone(), cheap.clone()];
        assert_eq!(
            nodes[p.choose(&nodes, &demand(1), Instant::now()).unwrap().index].id,
            "z-cheap"
        );
        for _ in 0..5 {
            cheap.record(true);
        }
        let nodes = vec![dear, cheap];
        let d = p.choose(&nodes, &demand(1), Instant::now()).unwrap();
        assert_eq!(nodes[d.index].id, "a-dear", "{d:?}");
    }

    #[test]
    fn round_robin_and_least_loaded() {
        let mut rr = placer(Strategy::RoundRobin);
        let nodes = vec![node("a", 1), node("b", 1), node("c", 1)];
        let picks: Vec<usize> = (0..4)
            .map(|_| rr.choose(&nodes, &demand(1), Instant::now()).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        let mut ll = placer(Strategy::LeastLoaded);
        let mut a = node("a", 4);
        a.leased = 3;
        let mut b = node("b", 2);
        b.leased = 1;
        assert_eq!(
            ll.choose(&[a, b], &demand(1), Instant::now())
                .unwrap()
                .index,
            1
        );
    }

    #[test]
    fn large_fleets_are_sampled_and_still_respect_the_filter() {
        let mut p = placer(Strategy::Score);
        let mut nodes: Vec<NodeView> = (0..1000).map(|i| node(&format!("n{i:04}"), 4)).collect();
        nodes[123].labels.insert("zone".into(), "b".into());
        let mut d = demand(1);
        let decision = p.choose(&nodes, &d, Instant::now()).unwrap();
        assert!(decision.considered <= 3, "{decision:?}");
        d.requires.insert("zone".into(), "b".into());
        let decision = p.choose(&nodes, &d, Instant::now()).unwrap();
        assert_eq!(
            decision.index, 123,
            "a rare label falls back to a full scan"
        );
    }

    #[test]
    fn weights_parse() {
        let w: Weights = "capacity=2, cost=0".parse().unwrap();
        assert_eq!(w.capacity, 2.0);
        assert_eq!(w.cost, 0.0);
        assert_eq!(w.locality, Weights::default().locality);
        assert!("speed=1".parse::<Weights>().is_err());
        assert!("capacity=x".parse::<Weights>().is_err());
        assert!(
            "capacity=0,locality=0,reliability=0,cost=0,affinity=0"
                .parse::<Weights>()
                .is_err()
        );
    }
}

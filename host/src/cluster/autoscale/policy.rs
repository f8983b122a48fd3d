//! The autoscaler's policy: how many nodes the work needs, and when to ask for them.
//! Pure: every rule takes `now`, so tests drive the clock.
//!
//! The signal is the queued work in seconds (each queued job counted at its worker's
//! measured mean run time), the jobs running, and how long the oldest runnable job has
//! waited against its queue's target wait. The fleet is sized so that the queued work
//! drains within the target wait, beside what runs; a job waiting past its target adds a
//! node even when the estimate says the fleet is enough (the estimate may be wrong).
//! Scaling up is immediate after `scale_up_cooldown`; scaling down takes the highest
//! recommendation of the last `stabilization` window (as Kubernetes' HPA does) and waits
//! `scale_down_cooldown` after any change, so a fleet never flaps within a cooldown.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The autoscaler's settings.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Fewest nodes (0 allows scaling to zero).
    pub min_nodes: u32,
    /// Most nodes.
    pub max_nodes: u32,
    /// Slots a new node brings (the fleet's own nodes report theirs).
    pub slots_per_node: u32,
    /// Least time between two scale-ups.
    pub scale_up_cooldown: Duration,
    /// Least time after any change before a scale-down.
    pub scale_down_cooldown: Duration,
    /// A scale-down takes the highest recommendation over this window.
    pub stabilization: Duration,
    /// How long a runnable job may wait, for queues that set no `target_wait_ms`.
    pub target_wait: Duration,
    /// The labels a node the autoscaler adds carries: work whose worker requires
    /// others is no reason to add one.
    pub node_labels: std::collections::BTreeMap<String, String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_nodes: 0,
            max_nodes: 10,
            slots_per_node: 2,
            scale_up_cooldown: Duration::from_secs(5),
            scale_down_cooldown: Duration::from_secs(60),
            stabilization: Duration::from_secs(60),
            target_wait: Duration::from_secs(30),
            node_labels: Default::default(),
        }
    }
}

/// What the autoscaler sees at one evaluation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Signal {
    /// Queued (runnable) jobs.
    pub queued_jobs: usize,
    /// Their work: each counted at its worker's mean run time, in seconds.
    pub queued_work_seconds: f64,
    /// Jobs running.
    pub running_jobs: usize,
    /// How far past its queue's target wait the longest-waiting runnable job is, in
    /// seconds (0 when none is past it).
    pub overdue_wait_seconds: f64,
    /// The target wait the work is sized against, in seconds.
    pub target_wait_seconds: f64,
    /// Nodes registered and healthy (draining ones excluded).
    pub ready_nodes: u32,
    /// Nodes asked for and not yet registered.
    pub starting_nodes: u32,
    /// Slots of a node, on average (the policy's when there is no node).
    pub slots_per_node: f64,
}

/// Which way a decision went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Ask for more nodes.
    Up,
    /// Drain and remove nodes.
    Down,
    /// Keep the fleet as it is.
    Hold,
}

/// One evaluation's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// Unix ms.
    pub at_ms: i64,
    /// What the work needs now (before cooldowns and the stabilization window).
    pub wanted: u32,
    /// The fleet size decided.
    pub desired: u32,
    /// Nodes there were (ready and starting).
    pub current: u32,
    /// Which way.
    pub action: Action,
    /// Why, for people.
    pub reason: String,
}

/// The autoscaler's memory between evaluations.
#[derive(Debug)]
pub struct Autoscaler {
    policy: Policy,
    last_change: Option<Instant>,
    last_up: Option<Instant>,
    /// Recommendations of the stabilization window: (when, nodes).
    recent: VecDeque<(Instant, u32)>,
}

impl Autoscaler {
    /// An autoscaler following `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            last_change: None,
            last_up: None,
            recent: VecDeque::new(),
        }
    }

    /// Its policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The nodes the work needs now, within `min_nodes..=max_nodes`, and why.
    pub fn wanted(&self, signal: &Signal) -> (u32, String) {
        let p = &self.policy;
        let per_node = signal.slots_per_node.max(1.0);
        let target = signal.target_wait_seconds.max(0.001);
        // Slots that drain the queued work within the target wait, beside those running
        // (never more than one per queued job).
        let for_queue = (signal.queued_work_seconds / target).min(signal.queued_jobs as f64);
        let slots = signal.running_jobs as f64 + for_queue;
        let mut nodes = (slots / per_node).ceil() as u32;
        let mut reason = format!(
            "{} running + {:.1} s of queued work ({} jobs) within {:.1} s: {:.1} slots = {} nodes of {:.0} slots",
            signal.running_jobs,
            signal.queued_work_seconds,
            signal.queued_jobs,
            target,
            slots,
            nodes,
            per_node
        );
        let current = signal.ready_nodes + signal.starting_nodes;
        if signal.overdue_wait_seconds > 0.0 && signal.queued_jobs > 0 && nodes <= current {
            nodes = current + 1;
            reason = format!(
                "a runnable job waited {:.1} s past its target: one more node than the {current} there are",
                signal.overdue_wait_seconds
            );
        }
        let clamped = nodes.clamp(p.min_nodes, p.max_nodes.max(p.min_nodes));
        if clamped != nodes {
            reason.push_str(&format!(
                "; held to {clamped} by min_nodes {} / max_nodes {}",
                p.min_nodes, p.max_nodes
            ));
        }
        (clamped, reason)
    }

    /// Decides at `now` (`now_ms` for the record) what the fleet should be.
    pub fn evaluate(&mut self, signal: &Signal, now: Instant, now_ms: i64) -> Decision {
        let (wanted, why) = self.wanted(signal);
        let p = &self.policy;
        let current = signal.ready_nodes + signal.starting_nodes;
        self.recent.push_back((now, wanted));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > p.stabilization)
        {
            self.recent.pop_front();
        }
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        let decision = |desired, action, reason: String| Decision {
            at_ms: now_ms,
            wanted,
            desired,
            current,
            action,
            reason,
        };
        if wanted > current {
            if let Some(wait) = since(self.last_up).filter(|d| *d < p.scale_up_cooldown) {
                let left = p.scale_up_cooldown - wait;
                return decision(
                    current,
                    Action::Hold,
                    format!("{why}; scale-up cooldown: {:.1} s left", left.as_secs_f64()),
                );
            }
            self.last_up = Some(now);
            self.last_change = Some(now);
            return decision(wanted, Action::Up, why);
        }
        // Down only to the highest recommendation of the window.
        let stable = self.recent.iter().map(|(_, n)| *n).max().unwrap_or(wanted);
        if stable < current {
            if let Some(wait) = since(self.last_change).filter(|d| *d < p.scale_down_cooldown) {
                let left = p.scale_down_cooldown - wait;
                return decision(
                    current,
                    Action::Hold,
                    format!(
                        "{why}; scale-down cooldown: {:.1} s left",
                        left.as_secs_f64()
                    ),
                );
            }
            self.last_change = Some(now);
            return decision(
                stable,
                Action::Down,
                format!(
                    "{why}; the highest need over the last {:.0} s is {stable}",
                    p.stabilization.as_secs_f64()
                ),
            );
        }
        decision(current, Action::Hold, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_nodes: 0,
            max_nodes: 8,
            slots_per_node: 2,
            scale_up_cooldown: Duration::from_secs(10),
            scale_down_cooldown: Duration::from_secs(60),
            stabilization: Duration::from_secs(30),
            target_wait: Duration::from_secs(10),
            node_labels: Default::default(),
        }
    }

    fn load(queued_jobs: usize, mean_run: f64, running: usize, nodes: u32) -> Signal {
        Signal {
            queued_jobs,
            queued_work_seconds: queued_jobs as f64 * mean_run,
            running_jobs: running,
            overdue_wait_seconds: 0.0,
            target_wait_seconds: 10.0,
            ready_nodes: nodes,
            starting_nodes: 0,
            slots_per_node: 2.0,
        }
    }

    #[test]
    fn the_work_sizes_the_fleet_within_its_bounds() {
        let scaler = Autoscaler::new(policy());
        // 100 jobs of 1 s to drain in 10 s: 10 slots, 5 nodes.
        assert_eq!(scaler.wanted(&load(100, 1.0, 0, 0)).0, 5);
        // Never more slots than jobs: 3 jobs of an hour want 3 slots, not 1,080.
        assert_eq!(scaler.wanted(&load(3, 3600.0, 0, 0)).0, 2);
        // Running jobs keep their slots.
        assert_eq!(scaler.wanted(&load(0, 1.0, 5, 3)).0, 3);
        // Nothing to do: scale to zero (min_nodes 0), or to min_nodes.
        assert_eq!(scaler.wanted(&load(0, 1.0, 0, 3)).0, 0);
        let floor = Autoscaler::new(Policy {
            min_nodes: 1,
            ..policy()
        });
        assert_eq!(floor.wanted(&load(0, 1.0, 0, 3)).0, 1);
        // A flood is held to max_nodes, and says so.
        let (n, why) = scaler.wanted(&load(100_000, 1.0, 0, 0));
        assert_eq!(n, 8);
        assert!(why.contains("max_nodes 8"), "{why}");
        // A job waiting past its target adds a node even when the estimate is content.
        let mut late = load(1, 0.001, 3, 2);
        late.overdue_wait_seconds = 5.0;
        let (n, why) = scaler.wanted(&late);
        assert_eq!(n, 3);
        assert!(why.contains("past its target"), "{why}");
    }

    #[test]
    fn a_load_step_is_reached_within_two_evaluations() {
        let mut scaler = Autoscaler::new(policy());
        let t0 = Instant::now();
        let first = scaler.evaluate(&load(60, 1.0, 0, 0), t0, 0);
        assert_eq!((first.action, first.desired), (Action::Up, 3));
        // The nodes asked for are starting; the next evaluation, a second later, holds.
        let mut starting = load(60, 1.0, 0, 0);
        starting.starting_nodes = 3;
        let second = scaler.evaluate(&starting, t0 + Duration::from_secs(1), 1_000);
        assert_eq!((second.action, second.desired), (Action::Hold, 3));
        // A bigger step after the cooldown is reached at once.
        let mut bigger = load(160, 1.0, 6, 3);
        bigger.ready_nodes = 3;
        let third = scaler.evaluate(&bigger, t0 + Duration::from_secs(11), 11_000);
        assert_eq!((third.action, third.desired), (Action::Up, 8));
    }

    #[test]
    fn no_flapping_within_a_cooldown_and_down_only_after_the_window() {
        let mut scaler = Autoscaler::new(policy());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(scaler.evaluate(&load(40, 1.0, 0, 0), at(0), 0).desired, 2);
        // Work comes and goes every few seconds: the fleet holds through the cooldown.
        for s in 1..60 {
            let signal = if s % 2 == 0 {
                load(0, 1.0, 0, 2)
            } else {
                load(40, 1.0, 0, 2)
            };
            let d = scaler.evaluate(&signal, at(s), s as i64 * 1000);
            assert_eq!(d.desired, 2, "second {s}: {d:?}");
            assert_ne!(d.action, Action::Down, "second {s}: {d:?}");
        }
        // Idle long enough: past the cooldown and a whole quiet window, it goes down.
        for s in 60..=95 {
            let d = scaler.evaluate(&load(0, 1.0, 0, 2), at(s), s as i64 * 1000);
            if s < 90 {
                assert_eq!(
                    d.action,
                    Action::Hold,
                    "second {s}: the window holds a 2: {d:?}"
                );
            } else {
                assert_eq!(
                    (d.action, d.desired),
                    (Action::Down, 0),
                    "second {s}: {d:?}"
                );
                assert!(d.reason.contains("highest need"), "{}", d.reason);
                break;
            }
        }
    }
}

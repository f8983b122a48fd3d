//! The autoscaler: at every interval it reads the work ahead (the engine's backlog at
//! its workers' measured run times, what runs, the oldest runnable job's wait against
//! its queue's `target_wait_ms`) and the fleet, decides with [`policy::Autoscaler`],
//! and has its [`provision::Provisioner`] act: grow at once, shrink only after the
//! nodes that go were drained (no new leases) and hold no lease, so no job is
//! stranded. Every decision is kept with its reason (`GET /api/v1/cluster/autoscaler`)
//! and the signal is exported to `/metrics` (`wasmesh_autoscaler_*`), so an external
//! autoscaler (KEDA, the Nomad Autoscaler) can use the same numbers.

pub mod policy;
pub mod provision;

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Fleet;
use crate::engine::Engine;
use crate::store::now_ms;
use policy::{Action, Autoscaler, Decision, Policy, Signal};
use provision::Provisioner;

/// Decisions that changed something, kept for the status.
const KEPT_DECISIONS: usize = 50;

/// The autoscaler of a coordinator.
#[derive(Debug)]
pub struct Autoscaling {
    provisioner: Box<dyn Provisioner>,
    interval: Duration,
    /// Queues' `target_wait_ms` (fixed when a queue is made), looked up once each.
    targets: Mutex<std::collections::HashMap<u64, Option<Duration>>>,
    /// Whether a node it adds could run each worker (its labels hold what the worker
    /// requires; a worker's descriptor never changes), looked up once each.
    runnable: Mutex<std::collections::HashMap<crate::model::HashHex, bool>>,
    state: Mutex<State>,
}

impl State {
    /// Records a decision: the last one, and among the recent ones unless it held.
    fn keep(&mut self, decision: Decision) {
        match decision.action {
            Action::Up => self.ups += 1,
            Action::Down => self.downs += 1,
            Action::Hold => {}
        }
        if decision.action != Action::Hold {
            tracing::info!(action = ?decision.action, desired = decision.desired, reason = %decision.reason, "autoscaler");
            self.decisions.push_back(decision.clone());
            if self.decisions.len() > KEPT_DECISIONS {
                self.decisions.pop_front();
            }
        }
        self.last = Some(decision);
    }
}

#[derive(Debug)]
struct State {
    scaler: Autoscaler,
    signal: Signal,
    last: Option<Decision>,
    decisions: VecDeque<Decision>,
    /// A scale-in under way: the count it goes to and the nodes draining for it.
    draining: Option<(u32, Vec<String>)>,
    /// Queues announced at risk of missing a deadline (again only once they were not).
    at_risk: std::collections::HashSet<u64>,
    ups: u64,
    downs: u64,
    error: Option<String>,
}

impl Autoscaling {
    /// An autoscaler following `policy` through `provisioner`, evaluating every
    /// `interval`.
    pub fn new(policy: Policy, provisioner: Box<dyn Provisioner>, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            provisioner,
            interval,
            targets: Mutex::default(),
            runnable: Mutex::default(),
            state: Mutex::new(State {
                scaler: Autoscaler::new(policy),
                signal: Signal::default(),
                last: None,
                decisions: VecDeque::new(),
                draining: None,
                at_risk: Default::default(),
                ups: 0,
                downs: 0,
                error: None,
            }),
        })
    }

    /// Starts evaluating, on a thread of its own (provisioners block on processes and
    /// HTTP), until the engine stops; exports the signal to the engine's `/metrics`.
    pub fn start(self: &Arc<Self>, engine: Arc<Engine>, fleet: Arc<Fleet>) {
        let metrics = self.clone();
        engine.set_extra_metrics(Box::new(move || metrics.metrics()));
        let scaling = self.clone();
        std::thread::Builder::new()
            .name("autoscaler".into())
            .spawn(move || {
                while !engine.stopping().is_cancelled() {
                    // On a shared journal the leader decides (its fleet is its own).
                    if engine.store().leads() {
                        scaling.tick(&engine, &fleet, Instant::now());
                    }
                    std::thread::sleep(scaling.interval);
                }
            })
            .expect("starting the autoscaler's thread");
    }

    /// Stops the nodes that are this coordinator's own processes (the local
    /// provisioner's), waiting for each to finish what it runs.
    pub fn stop(&self) {
        self.provisioner.stop_all();
    }

    /// Announces each queue whose runnable jobs, at the slots there are and are
    /// coming, would finish after their nearest deadline (`queue.deadline_at_risk`),
    /// once until it is no longer at risk.
    fn predict_deadlines(&self, engine: &Engine, signal: &Signal, queues: &[(u64, f64, i64)]) {
        let slots = (signal.ready_nodes + signal.starting_nodes) as f64 * signal.slots_per_node;
        let now = now_ms();
        let mut state = self.state.lock().expect("autoscaler");
        let mut risky = std::collections::HashSet::new();
        for &(queue, work, due) in queues {
            // Work spread over every slot: the best the fleet can do.
            let finish = if slots > 0.0 {
                now + (work / slots * 1000.0) as i64
            } else {
                i64::MAX
            };
            if finish <= due {
                continue;
            }
            risky.insert(queue);
            if state.at_risk.contains(&queue) {
                continue;
            }
            tracing::info!(queue, due, "a queue is at risk of missing its deadline");
            engine.deadline_at_risk(
                queue,
                json!({
                    "queue_id": queue,
                    "queued_work_seconds": work,
                    "nearest_deadline_ms": due,
                    "predicted_finish_ms": (finish != i64::MAX).then_some(finish),
                    "slots": slots,
                }),
            );
        }
        state.at_risk = risky;
    }

    /// What the autoscaler sees now, and the queues with deadlines.
    fn signal(&self, engine: &Engine, fleet: &Fleet) -> (Signal, Vec<(u64, f64, i64)>) {
        let policy = self
            .state
            .lock()
            .expect("autoscaler")
            .scaler
            .policy()
            .clone();
        let members = fleet.members();
        let serving: Vec<_> = members
            .iter()
            .filter(|m| m.state == "ready" || m.state == "busy")
            .collect();
        let ready = serving.len() as u32;
        let starting = self
            .provisioner
            .requested()
            .map_or(0, |asked| asked.saturating_sub(ready));
        // Only the work a node it adds could take: not that of workers requiring
        // labels such a node lacks (a tenant at its max_running is capped by the
        // scheduler's backlog).
        let ahead = {
            let mut runnable = self.runnable.lock().expect("runnable");
            if runnable.len() > 10_000 {
                runnable.clear();
            }
            engine.work_ahead_for(|worker| {
                *runnable.entry(*worker).or_insert_with(|| {
                    engine.worker_requires(worker).is_none_or(|requires| {
                        requires
                            .iter()
                            .all(|(k, v)| policy.node_labels.get(k) == Some(v))
                    })
                })
            })
        };
        let default_target = policy.target_wait;
        // Only the queues with runnable jobs now are remembered.
        let present: std::collections::HashSet<u64> = ahead
            .oldest_by_queue
            .iter()
            .filter_map(|(q, _)| *q)
            .collect();
        self.targets
            .lock()
            .expect("targets")
            .retain(|q, _| present.contains(q));
        let overdue = ahead
            .oldest_by_queue
            .iter()
            .map(|(queue, waited)| {
                let target = queue
                    .and_then(|q| {
                        let mut targets = self.targets.lock().expect("targets");
                        *targets
                            .entry(q)
                            .or_insert_with(|| engine.queue_target_wait(q))
                    })
                    .unwrap_or(default_target);
                waited.saturating_sub(target).as_secs_f64()
            })
            .fold(0.0, f64::max);
        let slots: u64 = serving.iter().map(|m| m.slots).sum();
        let signal = Signal {
            queued_jobs: ahead.queued_jobs,
            queued_work_seconds: ahead.work_seconds,
            running_jobs: ahead.running_jobs,
            overdue_wait_seconds: overdue,
            target_wait_seconds: default_target.as_secs_f64(),
            ready_nodes: ready,
            starting_nodes: starting,
            slots_per_node: if serving.is_empty() {
                policy.slots_per_node as f64
            } else {
                slots as f64 / serving.len() as f64
            },
        };
        (signal, ahead.deadlines_by_queue)
    }

    /// One evaluation at `now`.
    pub fn tick(&self, engine: &Engine, fleet: &Fleet, now: Instant) {
        let (signal, deadlines) = self.signal(engine, fleet);
        self.predict_deadlines(engine, &signal, &deadlines);
        let mut state = self.state.lock().expect("autoscaler");
        state.signal = signal.clone();
        if let Some((count, leaving)) = state.draining.clone() {
            let (wanted, why) = state.scaler.wanted(&signal);
            if wanted > count {
                // Work came back before the nodes went: they serve again.
                for id in &leaving {
                    fleet.set_draining(id, false);
                }
                state.draining = None;
                let reason =
                    format!("scale-in to {count} cancelled, {leaving:?} serve again: {why}");
                state.keep(Decision {
                    at_ms: now_ms(),
                    wanted,
                    desired: signal.ready_nodes + leaving.len() as u32,
                    current: signal.ready_nodes + signal.starting_nodes,
                    action: Action::Up,
                    reason,
                });
                return;
            }
            let members = fleet.members();
            let busy: Vec<&String> = leaving
                .iter()
                .filter(|id| members.iter().any(|m| &m.id == *id && m.leased > 0))
                .collect();
            if !busy.is_empty() {
                return;
            }
            let reason = format!("drained {leaving:?}: none holds a lease; removing them");
            match self.provisioner.shrink(count, &leaving, &reason) {
                Ok(()) => {
                    for id in &leaving {
                        fleet.deregister(id);
                    }
                    state.draining = None;
                    state.error = None;
                }
                Err(e) => state.error = Some(format!("{e:#}")),
            }
            return;
        }
        let decision = state.scaler.evaluate(&signal, now, now_ms());
        if self.provisioner.kind() != "static" {
            let acted = match decision.action {
                Action::Up => self.provisioner.grow(decision.desired, &decision.reason),
                Action::Down => {
                    let leaving = self.provisioner.leaving(decision.desired, &fleet.members());
                    for id in &leaving {
                        fleet.set_draining(id, true);
                    }
                    state.draining = Some((decision.desired, leaving));
                    Ok(())
                }
                Action::Hold => Ok(()),
            };
            state.error = acted.err().map(|e| format!("{e:#}"));
        }
        state.keep(decision);
    }

    /// The status: provisioner, policy, signal, desired and current nodes, what is
    /// draining, the last decision and the recent ones that changed something.
    pub fn status(&self) -> Value {
        let state = self.state.lock().expect("autoscaler");
        let p = state.scaler.policy();
        let current = state.signal.ready_nodes + state.signal.starting_nodes;
        json!({
            "provisioner": self.provisioner.kind(),
            "policy": {
                "min_nodes": p.min_nodes,
                "max_nodes": p.max_nodes,
                "slots_per_node": p.slots_per_node,
                "scale_up_cooldown_ms": p.scale_up_cooldown.as_millis() as u64,
                "scale_down_cooldown_ms": p.scale_down_cooldown.as_millis() as u64,
                "stabilization_ms": p.stabilization.as_millis() as u64,
                "target_wait_ms": p.target_wait.as_millis() as u64,
                "interval_ms": self.interval.as_millis() as u64,
            },
            "signal": state.signal,
            "desired_nodes": self.desired(&state),
            "current_nodes": current,
            "draining": state.draining.as_ref().map(|(_, ids)| ids.clone()).unwrap_or_default(),
            "last": state.last,
            "decisions": state.decisions.iter().rev().collect::<Vec<_>>(),
            "error": state.error,
        })
    }

    /// The nodes wanted: what the last decision set the fleet to; with the static
    /// provisioner, which acts on nothing, what the work needs (the signal an external
    /// autoscaler follows).
    fn desired(&self, state: &State) -> u32 {
        let current = state.signal.ready_nodes + state.signal.starting_nodes;
        match &state.last {
            Some(d) if self.provisioner.kind() == "static" => d.wanted,
            Some(d) => d.desired,
            None => current,
        }
    }

    /// The autoscaler's lines of `/metrics`.
    fn metrics(&self) -> String {
        let state = self.state.lock().expect("autoscaler");
        let s = &state.signal;
        let current = s.ready_nodes + s.starting_nodes;
        let desired = self.desired(&state);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "wasmesh_autoscaler_desired_nodes",
            "Nodes the autoscaler wants.",
            desired as f64,
        );
        gauge(
            "wasmesh_autoscaler_current_nodes",
            "Nodes ready or starting.",
            current as f64,
        );
        gauge(
            "wasmesh_autoscaler_queued_jobs",
            "Runnable jobs waiting.",
            s.queued_jobs as f64,
        );
        gauge(
            "wasmesh_autoscaler_queued_work_seconds",
            "Queued jobs times their workers' mean run time.",
            s.queued_work_seconds,
        );
        gauge(
            "wasmesh_autoscaler_running_jobs",
            "Jobs running.",
            s.running_jobs as f64,
        );
        gauge(
            "wasmesh_autoscaler_overdue_wait_seconds",
            "How far the longest-waiting runnable job is past its queue's target wait.",
            s.overdue_wait_seconds,
        );
        let _ = writeln!(
            out,
            "# HELP wasmesh_autoscaler_decisions_total Scaling decisions, by direction.\n\
             # TYPE wasmesh_autoscaler_decisions_total counter\n\
             wasmesh_autoscaler_decisions_total{{action=\"up\"}} {}\n\
             wasmesh_autoscaler_decisions_total{{action=\"down\"}} {}",
            state.ups, state.downs
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fleet::Member;
    use crate::cluster::protocol::Registration;
    use crate::engine::testing::{TENANT, engine_with, submit};

    /// A provisioner that records what it is asked; its nodes are `n-0`, `n-1`, ...
    #[derive(Debug, Default)]
    struct Recorder {
        count: Mutex<u32>,
        calls: Mutex<Vec<String>>,
    }

    /// Shared with the test, which reads what it was asked.
    impl Provisioner for Arc<Recorder> {
        fn kind(&self) -> &'static str {
            "recorder"
        }
        fn requested(&self) -> Option<u32> {
            Some(*self.count.lock().unwrap())
        }
        fn grow(&self, count: u32, _reason: &str) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("grow {count}"));
            *self.count.lock().unwrap() = count;
            Ok(())
        }
        fn leaving(&self, count: u32, _members: &[Member]) -> Vec<String> {
            (count..*self.count.lock().unwrap())
                .map(|i| format!("n-{i}"))
                .collect()
        }
        fn shrink(&self, count: u32, leaving: &[String], _reason: &str) -> anyhow::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("shrink {count} {leaving:?}"));
            *self.count.lock().unwrap() = count;
            Ok(())
        }
    }

    /// Up to 4 nodes of 1 slot, at once up; down and the window an hour, as the
    /// target wait.
    fn policy() -> Policy {
        Policy {
            min_nodes: 0,
            max_nodes: 4,
            slots_per_node: 1,
            scale_up_cooldown: Duration::ZERO,
            scale_down_cooldown: Duration::from_secs(3600),
            stabilization: Duration::from_secs(3600),
            target_wait: Duration::from_secs(3600),
            node_labels: Default::default(),
        }
    }

    /// A coordinator's engine with nodes registered, and an autoscaler on it.
    struct Harness {
        _dir: tempfile::TempDir,
        engine: Arc<Engine>,
        worker: crate::model::HashHex,
        fleet: Arc<Fleet>,
        recorder: Arc<Recorder>,
        scaling: Arc<Autoscaling>,
    }

    /// `nodes` nodes of 1 slot registered (`n-0`, ...), and an autoscaler following
    /// `policy` through a recorder that made them.
    fn harness(nodes: u32, policy: Policy) -> Harness {
        let fleet = Arc::new(Fleet::new(crate::cluster::CoordinatorConfig::default()));
        let (dir, engine, worker) = engine_with(fleet.clone());
        for i in 0..nodes {
            let registration = Registration {
                id: format!("n-{i}"),
                address: format!("http://n-{i}.invalid"),
                slots: 1,
                ..Registration::default()
            };
            fleet.register(registration, Instant::now());
        }
        let recorder = Arc::new(Recorder::default());
        *recorder.count.lock().unwrap() = nodes;
        let scaling = Autoscaling::new(policy, Box::new(recorder.clone()), Duration::from_secs(1));
        Harness {
            _dir: dir,
            engine,
            worker,
            fleet,
            recorder,
            scaling,
        }
    }

    fn states(fleet: &Fleet) -> Vec<&'static str> {
        fleet.members().iter().map(|m| m.state).collect()
    }

    /// Scale-in drains first and removes only nodes holding no lease; work that comes
    /// back while they drain cancels it and they serve again.
    #[test]
    fn a_scale_in_drains_first_and_is_called_off_when_work_returns() {
        let now = Instant::now();
        let policy = Policy {
            scale_down_cooldown: Duration::ZERO,
            stabilization: Duration::ZERO,
            target_wait: Duration::from_secs(1),
            ..policy()
        };
        let Harness {
            _dir,
            engine,
            worker,
            fleet,
            recorder,
            scaling,
        } = harness(2, policy);
        // Idle: both go, drained first.
        scaling.tick(&engine, &fleet, now);
        assert_eq!(states(&fleet), ["draining", "draining"]);
        assert!(
            recorder.calls.lock().unwrap().is_empty(),
            "nothing removed yet"
        );
        // Work comes back before the next look: the scale-in is called off.
        let jobs: Vec<u64> = (0..2)
            .map(|_| submit(&engine, worker, &["noop"], None))
            .collect();
        scaling.tick(&engine, &fleet, now + Duration::from_secs(1));
        assert_eq!(states(&fleet), ["ready", "ready"]);
        let status = scaling.status();
        assert!(
            status["decisions"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("cancelled"),
            "{status}"
        );
        assert!(recorder.calls.lock().unwrap().is_empty());
        // The work goes (cancelled): drained again, then removed, holding no lease.
        for lsn in jobs {
            engine.cancel(TENANT, lsn).unwrap();
        }
        scaling.tick(&engine, &fleet, now + Duration::from_secs(2));
        scaling.tick(&engine, &fleet, now + Duration::from_secs(3));
        assert_eq!(
            *recorder.calls.lock().unwrap(),
            [r#"shrink 0 ["n-0", "n-1"]"#]
        );
        assert!(fleet.members().is_empty(), "removed nodes are deregistered");
        // The next evaluation sees the fleet as it now is, and holds.
        scaling.tick(&engine, &fleet, now + Duration::from_secs(4));
        let status = scaling.status();
        assert_eq!(
            (
                status["current_nodes"].as_u64(),
                status["desired_nodes"].as_u64()
            ),
            (Some(0), Some(0))
        );
        assert_eq!(
            recorder.calls.lock().unwrap().len(),
            1,
            "nothing more asked"
        );
    }

    /// A queue's own `target_wait_ms` decides when its waiting job needs a node more,
    /// where the default target would still wait.
    #[test]
    fn a_queues_target_wait_adds_a_node_for_its_waiting_job() {
        let Harness {
            _dir,
            engine,
            worker,
            fleet,
            recorder,
            scaling,
        } = harness(1, policy());
        let queue = |target_wait_ms| {
            let spec = crate::store::QueueSpec {
                target_wait_ms,
                ..Default::default()
            };
            let id = engine
                .store()
                .tenant(TENANT)
                .create_queue(None, &spec)
                .unwrap();
            crate::engine::QueuePolicy {
                id,
                max_retries: 0,
                retry_guest_failures: false,
                priority: 0,
                deadlines: Default::default(),
            }
        };
        // Under the default target (an hour) a waiting job needs no more node.
        submit(&engine, worker, &["noop"], Some(queue(None)));
        scaling.tick(&engine, &fleet, Instant::now());
        assert_eq!(scaling.status()["last"]["action"], "hold");
        // Its own queue's target is 1 ms: once it waited longer, one more node.
        submit(&engine, worker, &["noop"], Some(queue(Some(1))));
        let start = Instant::now();
        while scaling.status()["signal"]["overdue_wait_seconds"].as_f64() == Some(0.0) {
            assert!(start.elapsed() < Duration::from_secs(10), "never overdue");
            scaling.tick(&engine, &fleet, Instant::now());
        }
        let status = scaling.status();
        assert_eq!(status["last"]["action"], "up", "{status}");
        assert!(
            status["last"]["reason"]
                .as_str()
                .unwrap()
                .contains("past its target")
        );
        assert_eq!(*recorder.calls.lock().unwrap(), ["grow 2"]);
    }
}

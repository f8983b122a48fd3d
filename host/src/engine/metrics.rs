//! Counters behind `/metrics`, rendered in the Prometheus text format. A handful of
//! atomics does not justify a metrics framework; the format is written out directly.

use crate::model::{JobState, UsageJson};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the run latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Jobs accepted.
    pub jobs_submitted: Counter,
    /// Jobs answered from the result cache.
    pub cache_answers: Counter,
    /// Queue statuses counted from the journal (for streams and long-polls; shared
    /// by everyone watching the queue, once a change).
    pub queue_counts: Counter,
    /// Jobs finished as succeeded.
    pub succeeded: Counter,
    /// Jobs finished as failed.
    pub failed: Counter,
    /// Jobs finished as cancelled.
    pub cancelled: Counter,
    /// Fuel consumed by finished runs.
    pub fuel: Counter,
    /// Finished results retired by their retention.
    pub retired: Counter,
    /// Bytes written to the store (uploads and outputs).
    pub cas_bytes_written: Counter,
    /// Garbage collection: ownership rows deleted, blob files deleted, bytes freed.
    pub gc_rows: Counter,
    pub gc_blobs: Counter,
    pub gc_bytes: Counter,
    /// The store as last measured (by a sweep): blob files and their bytes.
    pub store_blobs: AtomicU64,
    pub store_bytes: AtomicU64,
    /// Coordinator: jobs leased to nodes (attempts handed out).
    pub leases_granted: Counter,
    /// Coordinator: leases that expired (their jobs requeued or failed as node_lost).
    pub leases_expired: Counter,
    /// Coordinator: results refused by fencing (stale attempts).
    pub results_rejected: Counter,
    /// Usage of finished jobs by tenant label (the configured tenants; any other is
    /// `other`, so the label set stays bounded).
    tenants: Mutex<BTreeMap<String, [u64; 4]>>,
    run_buckets: [Counter; BUCKETS.len()],
    run_count: Counter,
    run_micros: Counter,
}

impl Metrics {
    /// Counts a finished job by its final state.
    pub fn finished(&self, state: JobState) {
        match state {
            JobState::Succeeded => self.succeeded.add(1),
            JobState::Cancelled => self.cancelled.add(1),
            _ => self.failed.add(1),
        }
    }

    /// Adds a finished job's usage to its tenant's counters (jobs, fuel, wall ms,
    /// memory byte-seconds).
    pub fn tenant_usage(&self, label: &str, usage: &UsageJson) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let counters = tenants.entry(label.to_string()).or_default();
        for (counter, n) in
            counters
                .iter_mut()
                .zip([1, usage.fuel, usage.wall_ms, usage.memory_byte_seconds])
        {
            *counter = counter.saturating_add(n);
        }
    }

    /// Records one run's latency.
    pub fn observe_run(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.run_buckets) {
            if seconds <= *bound {
                bucket.add(1);
            }
        }
        self.run_count.add(1);
        self.run_micros.add(took.as_micros() as u64);
    }

    /// The Prometheus exposition, with the gauges passed in.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "wasmesh_jobs_submitted_total",
            "counter",
            "Jobs accepted.",
            &[(String::new(), self.jobs_submitted.get() as f64)],
        );
        metric(
            "wasmesh_leases_total",
            "counter",
            "Coordinator: leases by how they ended or began.",
            &[
                (
                    "{event=\"granted\"}".into(),
                    self.leases_granted.get() as f64,
                ),
                (
                    "{event=\"expired\"}".into(),
                    self.leases_expired.get() as f64,
                ),
                (
                    "{event=\"rejected_result\"}".into(),
                    self.results_rejected.get() as f64,
                ),
            ],
        );
        metric(
            "wasmesh_gc_freed_bytes_total",
            "counter",
            "Bytes of blob files deleted by garbage collection.",
            &[(String::new(), self.gc_bytes.get() as f64)],
        );
        metric(
            "wasmesh_gc_deleted_total",
            "counter",
            "Garbage collection: blob files and tenants' ownership rows deleted.",
            &[
                ("{what=\"blobs\"}".into(), self.gc_blobs.get() as f64),
                ("{what=\"rows\"}".into(), self.gc_rows.get() as f64),
            ],
        );
        metric(
            "wasmesh_store_bytes",
            "gauge",
            "Bytes of blob files in the store, as of the last garbage collection (or start).",
            &[(
                String::new(),
                self.store_bytes.load(Ordering::Relaxed) as f64,
            )],
        );
        metric(
            "wasmesh_store_blobs",
            "gauge",
            "Blob files in the store, as of the last garbage collection (or start).",
            &[(
                String::new(),
                self.store_blobs.load(Ordering::Relaxed) as f64,
            )],
        );
        metric(
            "wasmesh_queue_counts_total",
            "counter",
            "Queue statuses counted from the journal (once a change, however many watch).",
            &[(String::new(), self.queue_counts.get() as f64)],
        );
        metric(
            "wasmesh_jobs_cached_total",
            "counter",
            "Jobs answered from the result cache without running.",
            &[(String::new(), self.cache_answers.get() as f64)],
        );
        metric(
            "wasmesh_jobs_finished_total",
            "counter",
            "Jobs finished, by final state.",
            &[
                ("{state=\"succeeded\"}".into(), self.succeeded.get() as f64),
                ("{state=\"failed\"}".into(), self.failed.get() as f64),
                ("{state=\"cancelled\"}".into(), self.cancelled.get() as f64),
            ],
        );
        metric(
            "wasmesh_jobs",
            "gauge",
            "Jobs pending on this node, by state.",
            &[
                ("{state=\"queued\"}".into(), gauges.queued as f64),
                ("{state=\"running\"}".into(), gauges.running as f64),
            ],
        );
        metric(
            "wasmesh_slots",
            "gauge",
            "Execution slots.",
            &[(String::new(), gauges.slots as f64)],
        );
        if !gauges.nodes.is_empty() {
            let lines: Vec<(String, f64)> = gauges
                .nodes
                .iter()
                .map(|(state, n)| (format!("{{state=\"{state}\"}}"), *n as f64))
                .collect();
            metric(
                "wasmesh_nodes",
                "gauge",
                "The fleet's nodes by state.",
                &lines,
            );
        }
        let label = |tenant: &str| format!("{{tenant=\"{tenant}\"}}");
        metric(
            "wasmesh_tenant_running",
            "gauge",
            "Jobs running, by tenant.",
            &gauges
                .shares
                .iter()
                .map(|(tenant, running, _)| (label(tenant), *running as f64))
                .collect::<Vec<_>>(),
        );
        metric(
            "wasmesh_tenant_fair_share_charge_slot_seconds",
            "gauge",
            "Fair share: each tenant's decayed slot-time (the next slot goes to the least per weight).",
            &gauges
                .shares
                .iter()
                .map(|(tenant, _, charge)| (label(tenant), *charge))
                .collect::<Vec<_>>(),
        );
        metric(
            "wasmesh_fuel_consumed_total",
            "counter",
            "Fuel consumed by runs.",
            &[(String::new(), self.fuel.get() as f64)],
        );
        let tenants = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (index, (name, help, scale)) in [
            (
                "wasmesh_tenant_jobs_total",
                "Jobs finished, by tenant.",
                1.0,
            ),
            (
                "wasmesh_tenant_fuel_total",
                "Fuel consumed, by tenant.",
                1.0,
            ),
            (
                "wasmesh_tenant_wall_seconds_total",
                "Wall time of runs, by tenant.",
                0.001,
            ),
            (
                "wasmesh_tenant_memory_byte_seconds_total",
                "Memory-time (peak memory x wall time) of runs, by tenant.",
                1.0,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let lines: Vec<(String, f64)> = tenants
                .iter()
                .map(|(tenant, counters)| {
                    (
                        format!("{{tenant=\"{tenant}\"}}"),
                        counters[index] as f64 * scale,
                    )
                })
                .collect();
            metric(name, "counter", help, &lines);
        }
        metric(
            "wasmesh_results_retired_total",
            "counter",
            "Finished results retired automatically after --result-retention.",
            &[(String::new(), self.retired.get() as f64)],
        );
        metric(
            "wasmesh_cas_bytes_written_total",
            "counter",
            "Bytes written to the content-addressed store.",
            &[(String::new(), self.cas_bytes_written.get() as f64)],
        );
        metric(
            "wasmesh_module_cache_total",
            "counter",
            "Compiled-module cache lookups by result.",
            &[
                (
                    "{result=\"memory_hit\"}".into(),
                    gauges.cache.memory_hits as f64,
                ),
                (
                    "{result=\"disk_hit\"}".into(),
                    gauges.cache.disk_hits as f64,
                ),
                ("{result=\"compile\"}".into(), gauges.cache.compiles as f64),
            ],
        );
        let mut buckets: Vec<(String, f64)> = BUCKETS
            .iter()
            .zip(&self.run_buckets)
            .map(|(bound, count)| (format!("_bucket{{le=\"{bound}\"}}"), count.get() as f64))
            .collect();
        buckets.push(("_bucket{le=\"+Inf\"}".into(), self.run_count.get() as f64));
        buckets.push(("_sum".into(), self.run_micros.get() as f64 / 1e6));
        buckets.push(("_count".into(), self.run_count.get() as f64));
        metric(
            "wasmesh_run_seconds",
            "histogram",
            "Time from a job's start to its result.",
            &buckets,
        );
        out
    }
}

/// Point-in-time values rendered next to the counters.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Jobs waiting or queued.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
    /// Slots.
    pub slots: usize,
    /// Module cache counters.
    pub cache: wasmesh_runtime::CacheStats,
    /// The fair share by tenant label: (label, jobs running, charge in slot-seconds).
    pub shares: Vec<(String, usize, f64)>,
    /// A coordinator's nodes by state (empty on a node).
    pub nodes: Vec<(&'static str, usize)>,
}

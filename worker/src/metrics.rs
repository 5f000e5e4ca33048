//! The worker's Prometheus metrics. Pure bookkeeping; `/metrics` serves [`Metrics::encode`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-task series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The task (partition) number.
    pub task: u32,
}

/// Labels of dead-letter counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// The task.
    pub task: u32,
    /// The error kind, as in the `sluice.error.kind` header.
    pub kind: String,
}

/// Labels of per-partition lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
}

/// Every metric the worker exports.
pub struct Metrics {
    registry: Registry,
    /// Records consumed.
    pub records_in: Family<TaskLabels, Counter>,
    /// Records written to the sink.
    pub records_out: Family<TaskLabels, Counter>,
    /// Records written to the dead-letter topic.
    pub dead_lettered: Family<DeadLetterLabels, Counter>,
    /// Time the task stops processing to take a checkpoint (flush + local snapshot).
    pub checkpoint_pause: Family<TaskLabels, Histogram>,
    /// Time from local snapshot to HEAD advanced.
    pub checkpoint_commit: Family<TaskLabels, Histogram>,
    /// Size of the task's latest committed checkpoint.
    pub checkpoint_bytes: Family<TaskLabels, Gauge>,
    /// Unix time of the task's latest committed checkpoint.
    pub checkpoint_time: Family<TaskLabels, Gauge>,
    /// Records in the source partition not yet consumed.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Tasks restarted after a failure.
    pub task_restarts: Family<TaskLabels, Counter>,
    /// Records later than their windows' allowed lateness, dropped (`lateRecords: drop`).
    pub late_records: Family<TaskLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Self {
            records_in: Family::default(),
            records_out: Family::default(),
            dead_lettered: Family::default(),
            checkpoint_pause: Family::new_with_constructor(seconds_histogram),
            checkpoint_commit: Family::new_with_constructor(seconds_histogram),
            checkpoint_bytes: Family::default(),
            checkpoint_time: Family::default(),
            lag: Family::default(),
            task_restarts: Family::default(),
            late_records: Family::default(),
            registry: Registry::default(),
        };
        registry.register("records_in", "Records consumed", metrics.records_in.clone());
        registry.register(
            "records_out",
            "Records written to the sink",
            metrics.records_out.clone(),
        );
        registry.register(
            "dead_lettered",
            "Records written to the dead-letter topic",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "checkpoint_pause_seconds",
            "Time processing stops for a checkpoint",
            metrics.checkpoint_pause.clone(),
        );
        registry.register(
            "checkpoint_commit_seconds",
            "Time from local snapshot to HEAD advanced",
            metrics.checkpoint_commit.clone(),
        );
        registry.register(
            "checkpoint_size_bytes",
            "Size of the latest committed checkpoint",
            metrics.checkpoint_bytes.clone(),
        );
        registry.register(
            "checkpoint_timestamp_seconds",
            "Unix time of the latest committed checkpoint",
            metrics.checkpoint_time.clone(),
        );
        registry.register(
            "lag_records",
            "Records in the source partition not yet consumed",
            metrics.lag.clone(),
        );
        registry.register(
            "task_restarts",
            "Tasks restarted after a failure",
            metrics.task_restarts.clone(),
        );
        registry.register(
            "late_records",
            "Records later than their windows' allowed lateness, dropped",
            metrics.late_records.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_in_the_exposition_with_their_labels() {
        let m = Metrics::default();
        m.records_in
            .get_or_create(&TaskLabels { task: 3 })
            .inc_by(42);
        m.lag
            .get_or_create(&PartitionLabels {
                topic: "orders".into(),
                partition: 3,
            })
            .set(7);
        let text = m.encode();
        assert!(
            text.contains(r#"sluice_records_in_total{task="3"} 42"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_lag_records{topic="orders",partition="3"} 7"#),
            "{text}"
        );
    }
}

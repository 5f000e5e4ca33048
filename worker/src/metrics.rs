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

/// Labels of per-topic series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// Source topic.
    pub topic: String,
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
    /// Records not even the dead-letter topic takes (their key alone exceeds its limit):
    /// dropped, each logged with its source.
    pub dead_letter_dropped: Family<TaskLabels, Counter>,
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
    /// Records given up because a task's resume offset was out of range
    /// (`onOffsetOutOfRange: earliest`).
    pub records_skipped: Family<PartitionLabels, Counter>,
    /// Times a task resumed at the log start because its offset was out of range
    /// (`onOffsetOutOfRange: earliest`), also when no record was given up (a recreated topic).
    pub offset_resets: Family<PartitionLabels, Counter>,
    /// Restores that fell back to an older checkpoint because newer ones could not be restored.
    pub checkpoint_fallbacks: Family<TaskLabels, Counter>,
    /// 1 for a task another owner took from this worker: it no longer runs here.
    pub tasks_fenced: Family<TaskLabels, Gauge>,
    /// Records later than their windows' allowed lateness, dropped (`lateRecords: drop`).
    pub late_records: Family<TaskLabels, Counter>,
    /// Partitions of each source topic, as the brokers said at the latest discovery.
    pub source_partitions: Family<TopicLabels, Gauge>,
    /// Partitions of each source topic this job does not read (added after it was rolled out,
    /// not adopted yet).
    pub source_partitions_unread: Family<TopicLabels, Gauge>,
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
            dead_letter_dropped: Family::default(),
            checkpoint_pause: Family::new_with_constructor(seconds_histogram),
            checkpoint_commit: Family::new_with_constructor(seconds_histogram),
            checkpoint_bytes: Family::default(),
            checkpoint_time: Family::default(),
            lag: Family::default(),
            task_restarts: Family::default(),
            tasks_fenced: Family::default(),
            checkpoint_fallbacks: Family::default(),
            records_skipped: Family::default(),
            offset_resets: Family::default(),
            late_records: Family::default(),
            source_partitions: Family::default(),
            source_partitions_unread: Family::default(),
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
            "dead_letter_dropped",
            "Records not even the dead-letter topic takes, dropped and logged with their source",
            metrics.dead_letter_dropped.clone(),
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
            "records_skipped",
            "Records given up because the resume offset was out of range (onOffsetOutOfRange: earliest)",
            metrics.records_skipped.clone(),
        );
        registry.register(
            "offset_resets",
            "Times a task resumed at the log start because its offset was out of range",
            metrics.offset_resets.clone(),
        );
        registry.register(
            "checkpoint_fallbacks",
            "Restores that fell back to an older checkpoint because newer ones could not be restored",
            metrics.checkpoint_fallbacks.clone(),
        );
        registry.register(
            "task_fenced",
            "1 for a task another owner took from this worker: it no longer runs here",
            metrics.tasks_fenced.clone(),
        );
        registry.register(
            "late_records",
            "Records later than their windows' allowed lateness, dropped",
            metrics.late_records.clone(),
        );
        registry.register(
            "source_partitions",
            "Partitions of the source topic, as the brokers said at the latest discovery",
            metrics.source_partitions.clone(),
        );
        registry.register(
            "source_partitions_unread",
            "Partitions of the source topic this job does not read (added, not adopted yet)",
            metrics.source_partitions_unread.clone(),
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

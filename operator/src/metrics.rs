//! The operator's Prometheus metrics: reconciles by result, errors by category, durations.
//! No I/O; [`crate::http`] serves them.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or the error category.
    pub result: String,
}

/// Labels of a job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub streamjob: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    rescale_downtime: Family<JobLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok or the error category)",
            reconciles.clone(),
        );
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let rescale_downtime = Family::<JobLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rescale_downtime_seconds",
            "How long the job's last rescale took, from the first worker restarted until all were ready",
            rescale_downtime.clone(),
        );
        Self {
            registry,
            reconciles,
            duration,
            rescale_downtime,
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe(&self, took: Duration, error: Option<&str>) {
        self.duration.observe(took.as_secs_f64());
        self.reconciles
            .get_or_create(&Outcome {
                result: error.unwrap_or("ok").into(),
            })
            .inc();
    }

    /// Records the downtime of a job's completed rescale.
    pub fn rescaled(&self, namespace: &str, streamjob: &str, seconds: f64) {
        self.rescale_downtime
            .get_or_create(&JobLabels {
                namespace: namespace.into(),
                streamjob: streamjob.into(),
            })
            .set(seconds);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Metrics;

    #[test]
    fn reconciles_and_rescale_downtime_are_exported_with_their_labels() {
        let metrics = Metrics::default();
        metrics.observe(Duration::from_millis(20), None);
        metrics.observe(Duration::from_millis(20), Some("ApplyFailed"));
        metrics.rescaled("shop", "customers", 8.5);
        let text = metrics.encode();
        for line in [
            r#"sluice_operator_reconciles_total{result="ok"} 1"#,
            r#"sluice_operator_reconciles_total{result="ApplyFailed"} 1"#,
            r#"sluice_operator_rescale_downtime_seconds{namespace="shop",streamjob="customers"} 8.5"#,
            "sluice_operator_reconcile_duration_seconds_count 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

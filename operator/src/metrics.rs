//! The operator's Prometheus metrics: reconciles by result, errors by category, durations.
//! No I/O; [`crate::http`] serves them.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or the error category.
    pub result: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
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
        Self {
            registry,
            reconciles,
            duration,
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

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

//! Why a record leaves the chain for the dead-letter topic, and what stops a task instead.

use crate::decode::DecodeError;
use crate::state::StateError;

/// Why a record goes to the dead-letter topic instead of through the steps.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The value could not be decoded.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A step needs a record key and the record has none.
    #[error("step {step} needs a record key and the record has none")]
    MissingKey { step: String },
    /// A CEL expression failed on this record.
    #[error("{field} {expr:?} failed: {message}")]
    Expression {
        /// Kind, e.g. `cel-division-by-zero`.
        kind: &'static str,
        /// The field of the step holding the expression.
        field: &'static str,
        /// The expression.
        expr: String,
        /// What went wrong.
        message: String,
    },
    /// What a step computed cannot be written to the sink.
    #[error("the result cannot be encoded: {0}")]
    Encode(String),
    /// The record has no usable event time.
    #[error("no event time: {0}")]
    EventTime(String),
    /// A value cannot be aggregated.
    #[error("{0}")]
    Aggregate(String),
    /// Every window of the record closed more than `allowedLateness` ago.
    #[error(
        "event time {event_ms} is late: the watermark is {watermark_ms} and every window of the record closed{lateness}"
    )]
    Late {
        event_ms: i64,
        watermark_ms: i64,
        lateness: String,
    },
}

impl RecordError {
    /// Short kind for the `sluice.error.kind` header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.kind(),
            Self::MissingKey { .. } => "missing-key",
            Self::Expression { kind, .. } => kind,
            Self::Encode(_) => "encode-error",
            Self::EventTime(_) => "bad-event-time",
            Self::Aggregate(_) => "aggregate-type-error",
            Self::Late { .. } => "late",
        }
    }
}

/// A failure that stops the task (and restarts it from its checkpoint), unlike a bad record.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The record is bad: dead-letter it and go on.
    #[error(transparent)]
    Record(RecordError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<RecordError> for StepError {
    fn from(e: RecordError) -> Self {
        Self::Record(e)
    }
}

impl From<DecodeError> for StepError {
    fn from(e: DecodeError) -> Self {
        Self::Record(e.into())
    }
}

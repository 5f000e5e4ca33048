//! Step operators: what each step kind does to records, one module per kind behind one trait
//! ([`Operator`]), chained and driven by [`crate::pipeline`]. Pure logic over a state backend:
//! no Kafka here.
//!
//! The contract every step kind keeps:
//! - `process` takes one record and passes zero or more on through [`Out`]: `push` for the
//!   record it was given, changed or not (a later step's record error is that record's: the
//!   input is dead-lettered), `push_made` for a record it made, a window's result or a table's
//!   change (a later step's record error dead-letters the made record, and this step goes on:
//!   its state already holds the input).
//! - State: every key a stateful step writes starts with its [`Namespace`] id, which belongs to
//!   the step's `name`, not its position (see [`namespace`]); its timers live there too.
//! - Time: one event-time clock per segment of the chain (today the chain is one segment; a
//!   re-keying boundary will end one). Each step has its own watermark: when the clock moves,
//!   step `i`'s `on_watermark` fires what it closes, and its results reach the later steps
//!   before their watermark moves, so a windowed step after a windowed step sees them before its
//!   own windows close (Flink's order). `on_processing_time` runs between batches;
//!   `before_checkpoint` before every snapshot.
//! - Event time of a made record: a window's result is at the window's end − 1; an unwindowed
//!   aggregate's update and a table's change are at the event time of the record that made it.
//! - The hot path allocates nothing per record: each step owns its buffers, the sink's encoders
//!   are the chain's, dispatch is a `match` over [`Op`].
//!
//! Adding a step kind: a module with `compile` and an [`Operator`] impl, a variant of [`Op`], and
//! its spec side (expressions, where it may stand, what variables its input has) in
//! `sluice_core::steps`, which the operator's validation runs too.

pub mod aggregate;
mod compile;
pub mod dedupe;
mod error;
pub mod filter;
pub mod map;
pub mod materialize;
pub mod namespace;
pub mod record;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;

use sluice_crds::v1alpha1::{Format, SinkFormat, Step};

pub use compile::{Compiled, Compiler, millis, reads};
pub use error::{RecordError, StepError};
pub use namespace::Namespace;
pub use record::{Current, Record};

use crate::expr::Vars;
use crate::job::JobError;
use crate::state::{StateBackend, StateError};

/// A record for the sink: a value of `None` is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output<'a> {
    /// Key of the output record.
    pub key: Option<&'a [u8]>,
    /// Value of the output record.
    pub value: Option<&'a [u8]>,
}

/// Where records go after the last step.
pub trait Sink {
    /// A record for the output topic.
    fn emit(&mut self, output: Output<'_>);
    /// A record a step made (a window's result, a table's change) that a later step refused.
    fn dead_letter(&mut self, made: Output<'_>, error: &RecordError, step: &str);
}

/// One step kind's runtime. Generic over the state backend, dispatched statically through
/// [`Op`].
pub trait Operator {
    /// One record in; zero or more out through `out`.
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError>;

    /// This step's watermark moved to `cx.watermark`: fire what it closes.
    fn on_watermark<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let _ = (cx, out);
        Ok(())
    }

    /// Between batches, at processing time `cx.now_ms`: for timers on processing time.
    fn on_processing_time<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let _ = (cx, out);
        Ok(())
    }

    /// Before each checkpoint's snapshot: write what the step buffers into the state.
    fn before_checkpoint<S: StateBackend>(&mut self, state: &mut S) -> Result<(), StateError> {
        let _ = state;
        Ok(())
    }

    /// A stateful step's part of the state.
    fn namespace(&mut self) -> Option<&mut Namespace> {
        None
    }
}

/// The built-in step kinds.
pub enum Op {
    Filter(filter::Filter),
    Map(map::Map),
    Materialize(materialize::Materialize),
    Dedupe(dedupe::Dedupe),
    Aggregate(Box<aggregate::Aggregate>),
}

macro_rules! each {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            Op::Filter($o) => $body,
            Op::Map($o) => $body,
            Op::Materialize($o) => $body,
            Op::Dedupe($o) => $body,
            Op::Aggregate($o) => $body,
        }
    };
}

impl Operator for Op {
    #[inline]
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        each!(self, o => o.process(record, cx, out))
    }

    fn on_watermark<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        each!(self, o => o.on_watermark(cx, out))
    }

    fn on_processing_time<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        each!(self, o => o.on_processing_time(cx, out))
    }

    fn before_checkpoint<S: StateBackend>(&mut self, state: &mut S) -> Result<(), StateError> {
        each!(self, o => o.before_checkpoint(state))
    }

    fn namespace(&mut self) -> Option<&mut Namespace> {
        each!(self, o => o.namespace())
    }
}

impl Op {
    /// Compiles `step` (at `position` in the job).
    pub fn compile(step: &Step, position: usize, c: &Compiler<'_>) -> Result<Self, JobError> {
        let c = c.at(&step.name);
        if let Some(s) = &step.filter {
            Ok(Op::Filter(filter::Filter::compile(s, &c)?))
        } else if let Some(s) = &step.map {
            Ok(Op::Map(map::Map::compile(s, &c)?))
        } else if let Some(s) = &step.materialize {
            Ok(Op::Materialize(materialize::Materialize::compile(
                s, &step.name, position, &c,
            )?))
        } else if let Some(s) = &step.dedupe {
            Ok(Op::Dedupe(dedupe::Dedupe::compile(s, position, &c)?))
        } else if let Some(s) = &step.aggregate {
            Ok(Op::Aggregate(Box::new(aggregate::Aggregate::compile(
                s, position, &c,
            )?)))
        } else {
            Err(c.unsupported("sets no step kind"))
        }
    }

    /// The variables its expressions read.
    pub fn reads(&self) -> Vars {
        each!(self, o => o.reads())
    }

    /// Whether it makes records of its own (the steps after it see those, not its input).
    pub fn makes_records(&self) -> bool {
        matches!(self, Op::Materialize(_) | Op::Aggregate(_))
    }

    /// Whether it needs event time and a watermark.
    pub fn keeps_time(&self) -> bool {
        matches!(self, Op::Dedupe(_) | Op::Aggregate(_))
    }
}

/// One step of the chain.
pub struct Stage {
    /// Position of the step in the job.
    pub index: usize,
    /// What it does.
    pub op: Op,
    /// Its watermark (event time, ms).
    pub watermark: i64,
    /// What the steps of its run (up to the next record-making step) read of a record.
    pub uses: Vars,
}

/// Bookkeeping of the whole chain, owned by the pipeline.
#[derive(Debug)]
pub struct Chain {
    /// The steps' names, by position.
    pub names: Vec<String>,
    /// How computed values are written to the sink.
    pub sink_format: SinkFormat,
    /// The step the last record error happened in.
    pub failed: Option<usize>,
    /// Late records dropped (`lateRecords: drop`).
    pub late_dropped: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Chain {
    /// The bookkeeping of a chain of the steps `names`.
    pub fn new(names: Vec<String>, sink_format: SinkFormat) -> Self {
        Self {
            names,
            sink_format,
            failed: None,
            late_dropped: 0,
            key: Vec::with_capacity(64),
            value: Vec::with_capacity(256),
        }
    }
}

/// What a step sees of the task while it runs.
pub struct Cx<'c, S> {
    /// The task's state (a step keeps to its [`Namespace`]).
    pub state: &'c mut S,
    /// This step's watermark (event time, ms; `event_time::NONE` before the first).
    pub watermark: i64,
    /// Processing time, ms.
    pub now_ms: i64,
    /// What the steps of this step's run read of a record: what [`Record::vars`] decodes.
    pub uses: Vars,
    /// The chain's bookkeeping.
    pub chain: &'c mut Chain,
    /// Where records end up.
    pub sink: &'c mut dyn Sink,
}

impl<S> Cx<'_, S> {
    /// Counts a late record dropped (`lateRecords: drop`).
    pub fn dropped_late(&mut self) {
        self.chain.late_dropped += 1;
    }
}

/// The rest of the chain after a step.
pub struct Out<'o> {
    rest: &'o mut [Stage],
}

impl Out<'_> {
    /// Passes on the record the step was given; a later step's record error is its.
    #[inline]
    pub fn push<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
    ) -> Result<(), StepError> {
        run(self.rest, record, cx)
    }

    /// Passes on a record the step made, `key` and `value` (encoded as `format`) at
    /// `event_ms`; a later step's record error dead-letters it. `changelog`: a table's change.
    #[inline]
    pub fn push_made<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        (key, value): (&[u8], Option<&[u8]>),
        (format, changelog): (Format, bool),
        event_ms: i64,
    ) -> Result<(), StepError> {
        let made = Output {
            key: Some(key),
            value,
        };
        if self.rest.is_empty() {
            // The last step: its records go to the sink as they are.
            cx.sink.emit(made);
            return Ok(());
        }
        let mut record = Record::made(key, value, format, event_ms);
        record.changelog = changelog;
        match run(self.rest, &mut record, cx) {
            Err(StepError::Record(e)) => {
                let step = cx.chain.failed.take();
                let step = step.and_then(|i| cx.chain.names.get(i));
                cx.sink
                    .dead_letter(made, &e, step.map_or("", String::as_str));
                Ok(())
            }
            other => other,
        }
    }
}

/// Runs `record` through `stages`, then into the sink.
#[inline]
pub fn run<S: StateBackend>(
    stages: &mut [Stage],
    record: &mut Record<'_>,
    cx: &mut Cx<'_, S>,
) -> Result<(), StepError> {
    let Some((stage, rest)) = stages.split_first_mut() else {
        return sink(record, cx);
    };
    let (watermark, uses) = (cx.watermark, cx.uses);
    cx.watermark = stage.watermark;
    cx.uses = stage.uses;
    let result = stage.op.process(record, cx, &mut Out { rest });
    cx.watermark = watermark;
    cx.uses = uses;
    if result.is_err() && cx.chain.failed.is_none() {
        cx.chain.failed = Some(stage.index);
    }
    result
}

/// The segment's clock moved to `watermark`: each step in turn fires what it closes, its
/// results reaching the later steps before their own watermark moves.
pub fn advance<S: StateBackend>(
    stages: &mut [Stage],
    watermark: i64,
    cx: &mut Cx<'_, S>,
) -> Result<(), StepError> {
    for i in 0..stages.len() {
        let (stage, rest) = stages[i..].split_at_mut(1);
        let stage = &mut stage[0];
        stage.watermark = watermark;
        cx.watermark = watermark;
        cx.uses = stage.uses;
        stage.op.on_watermark(cx, &mut Out { rest })?;
    }
    Ok(())
}

/// Processing time moved to `cx.now_ms`: every step's processing-time hook, in order.
pub fn processing_time<S: StateBackend>(
    stages: &mut [Stage],
    cx: &mut Cx<'_, S>,
) -> Result<(), StepError> {
    for i in 0..stages.len() {
        let (stage, rest) = stages[i..].split_at_mut(1);
        let stage = &mut stage[0];
        cx.watermark = stage.watermark;
        cx.uses = stage.uses;
        stage.op.on_processing_time(cx, &mut Out { rest })?;
    }
    Ok(())
}

/// The end of the chain: key and value encoded for the sink.
#[inline]
fn sink<S>(record: &Record<'_>, cx: &mut Cx<'_, S>) -> Result<(), StepError> {
    let Chain {
        key,
        value,
        sink_format,
        ..
    } = &mut *cx.chain;
    let key = record::encode(&record.key, key, SinkFormat::Raw)?;
    let value = record::encode(&record.value, value, *sink_format)?;
    cx.sink.emit(Output { key, value });
    Ok(())
}

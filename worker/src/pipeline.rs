//! The steps a task applies to each record, in the order the job declares them. Pure logic
//! over a state backend: no Kafka here.
//!
//! A record enters as bytes. The first step that reads it decodes it once (into CEL values
//! that borrow from the record where they can); later steps see what earlier ones made of it.
//! What the last step leaves is encoded for the sink. Steps this build cannot run are refused
//! when the job starts, naming the step.

use std::time::Duration;

use cel::Value;
use serde_json::Value as Json;
use sluice_crds::v1alpha1::{AggregateFunction, Emit, Format, LateRecords, SinkFormat, Step};

use crate::decode::{self, DecodeError, MAX_VALUE_BYTES, Op};
use crate::event_time::{self, Clock};
use crate::expr::{self, Expr, ExprError, RecordVars, Site, Var, Vars};
use crate::io::InputRecord;
use crate::job::{Job, JobError};
use crate::keys;
use crate::state::{StateBackend, StateError};
use crate::window::{self, Acc, FIRE, PURGE, Session, Shape};

/// Where the task's event-time clock is kept in its state (after every step's prefix).
const CLOCK_KEY: &[u8] = &[0xff, b'c', b'l', b'o', b'c', b'k'];
/// Timers fired per scan of the timer index.
const TIMER_BATCH: usize = 1024;

/// A record as the pipeline sees it: the input record.
pub type Record<'a> = InputRecord<'a>;

/// A record the pipeline emits to the sink: a value of `None` is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output<'a> {
    /// Key of the output record.
    pub key: Option<&'a [u8]>,
    /// Value of the output record.
    pub value: Option<&'a [u8]>,
}

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

/// One compiled expression and where it sits in its step.
#[derive(Clone, Debug)]
struct Compiled {
    expr: Expr,
    field: &'static str,
    source: String,
}

impl Compiled {
    /// Evaluates over `vars`; a failure is a record error naming the expression.
    #[inline]
    fn eval(&self, vars: &RecordVars<'_>) -> Result<Value, RecordError> {
        self.expr.eval(vars).map_err(|e| RecordError::Expression {
            kind: expr::error_kind(&e),
            field: self.field,
            expr: self.source.clone(),
            message: e.to_string(),
        })
    }

    fn wrong_type(&self, want: &str, got: &Value) -> RecordError {
        RecordError::Expression {
            kind: "cel-type-error",
            field: self.field,
            expr: self.source.clone(),
            message: format!("returned a {}, not a {want}", got.type_of()),
        }
    }
}

#[derive(Clone, Debug)]
enum Kind {
    /// Keep the record when the expression is true.
    Filter(Compiled),
    /// Replace key and/or value.
    Map {
        key: Option<Compiled>,
        value: Option<Compiled>,
    },
    /// Upsert table per key; the last step.
    Materialize { key: Option<Compiled> },
    /// Drop records whose key was seen within `ttl` of event time.
    Dedupe { key: Compiled, ttl: i64 },
    /// Group and aggregate, optionally in windows; the last step.
    Aggregate(Box<Aggregate>),
}

#[derive(Clone, Debug)]
struct Aggregate {
    group_by: Compiled,
    names: Vec<String>,
    functions: Vec<AggregateFunction>,
    inputs: Vec<Option<Compiled>>,
    shape: Shape,
    lateness: i64,
    late: LateRecords,
    emit: Emit,
}

#[derive(Clone, Debug)]
struct CompiledStep {
    name: String,
    /// Index of the step in the job: its state key prefix.
    index: u8,
    kind: Kind,
}

/// The compiled steps of a job.
#[derive(Clone, Debug)]
pub struct Pipeline {
    steps: Vec<CompiledStep>,
    format: Format,
    sink_format: SinkFormat,
    /// The record variables any expression reads: only those are built per record.
    uses: Vars,
    /// The step the last record error happened in.
    failed: usize,
    /// Event time and watermark, when a step needs them.
    time: Option<EventTimes>,
    /// Late records dropped (`lateRecords: drop`).
    late_dropped: u64,
    key_buf: Vec<u8>,
    out_key: Vec<u8>,
    out_value: Vec<u8>,
}

/// Event time of records and the task's watermark.
#[derive(Clone, Debug)]
struct EventTimes {
    /// `value.<eventTime.field>`, or the Kafka timestamp when unset.
    field: Option<Compiled>,
    clock: Clock,
    /// Processing time, ms, set by [`Pipeline::tick`].
    now_ms: i64,
    /// Per step, the earliest timer: `None` until read from state.
    next_timer: Vec<Option<i64>>,
}

/// The record as the steps have made it so far.
enum Current<'a> {
    /// The input bytes, untouched.
    Raw(Option<&'a [u8]>),
    /// Computed by a map step.
    Computed(Value),
}

impl Pipeline {
    /// Compiles the job's steps: every expression is compiled (an error names the step, the
    /// expression and the position), and the first step this build cannot run is named.
    pub fn new(job: &Job) -> Result<Self, JobError> {
        // What this build runs, decided where the operator decides it too.
        sluice_core::steps::check(job)?;
        let format = job.spec.source.kafka.format;
        let env = expr::env();
        let debezium = format == Format::DebeziumJson;
        let invalid = |e: ExprError| JobError::Expression {
            job: job.id(),
            error: Box::new(e),
        };
        let unsupported = |step: &Step, message: String| JobError::Unsupported {
            job: job.id(),
            message: format!("step {:?} {message}", step.name),
        };
        let count = job.spec.steps.len();
        let mut steps = Vec::with_capacity(count);
        let mut uses = Vars::default();
        for (index, step) in job.spec.steps.iter().enumerate() {
            let compile = |field: &'static str, source: &str| -> Result<Compiled, JobError> {
                let site = Site {
                    step: &step.name,
                    field,
                    debezium,
                };
                Ok(Compiled {
                    expr: Expr::compile(&env, source, site).map_err(invalid)?,
                    field,
                    source: source.to_string(),
                })
            };
            let kind = if let Some(filter) = &step.filter {
                Kind::Filter(compile("filter.expr", &filter.expr)?)
            } else if let Some(map) = &step.map {
                Kind::Map {
                    key: map
                        .key
                        .as_deref()
                        .map(|k| compile("map.key", k))
                        .transpose()?,
                    value: map
                        .value
                        .as_deref()
                        .map(|v| compile("map.value", v))
                        .transpose()?,
                }
            } else if let Some(materialize) = &step.materialize {
                Kind::Materialize {
                    key: materialize
                        .key
                        .as_deref()
                        .map(|k| compile("materialize.key", k))
                        .transpose()?,
                }
            } else if let Some(dedupe) = &step.dedupe {
                Kind::Dedupe {
                    key: compile("dedupe.key", &dedupe.key)?,
                    ttl: millis(dedupe.ttl.into()),
                }
            } else if let Some(aggregate) = &step.aggregate {
                let shape = match &aggregate.window {
                    None => Shape::Global,
                    Some(w) => match (&w.tumbling, &w.hopping, &w.session) {
                        (Some(t), _, _) => Shape::Tumbling {
                            size: millis(t.size.into()).max(1),
                        },
                        (_, Some(h), _) => Shape::Hopping {
                            size: millis(h.size.into()).max(1),
                            advance: millis(h.advance.into()).max(1),
                        },
                        (_, _, Some(s)) => Shape::Session {
                            gap: millis(s.gap.into()).max(1),
                        },
                        _ => {
                            return Err(unsupported(step, "has a window of no kind".into()));
                        }
                    },
                };
                let mut inputs = Vec::new();
                for a in &aggregate.aggregations {
                    inputs.push(
                        a.expr
                            .as_deref()
                            .filter(|_| a.function != AggregateFunction::Count)
                            .map(|e| compile("aggregate.aggregations.expr", e))
                            .transpose()?,
                    );
                }
                Kind::Aggregate(Box::new(Aggregate {
                    group_by: compile("aggregate.groupBy", &aggregate.group_by)?,
                    names: aggregate
                        .aggregations
                        .iter()
                        .map(|a| a.name.clone())
                        .collect(),
                    functions: aggregate.aggregations.iter().map(|a| a.function).collect(),
                    inputs,
                    shape,
                    lateness: aggregate.allowed_lateness.map_or(0, |d| millis(d.into())),
                    late: aggregate.late_records,
                    emit: if aggregate.window.is_none() {
                        Emit::OnUpdate
                    } else {
                        aggregate.emit
                    },
                }))
            } else {
                return Err(unsupported(step, "sets no step kind".into()));
            };
            let step_uses = match &kind {
                Kind::Filter(c) => c.expr.uses(),
                Kind::Map { key, value } => [key, value]
                    .into_iter()
                    .flatten()
                    .fold(Vars::default(), |u, c| u.with(c.expr.uses())),
                Kind::Materialize { key } => {
                    key.as_ref().map(|c| c.expr.uses()).unwrap_or_default()
                }
                Kind::Dedupe { key, .. } => key.expr.uses(),
                Kind::Aggregate(a) => a
                    .inputs
                    .iter()
                    .flatten()
                    .fold(a.group_by.expr.uses(), |u, c| u.with(c.expr.uses())),
            };
            uses = uses.with(step_uses);
            steps.push(CompiledStep {
                name: step.name.clone(),
                index: u8::try_from(index).unwrap_or(u8::MAX),
                kind,
            });
        }
        let timed = steps
            .iter()
            .any(|s| matches!(s.kind, Kind::Dedupe { .. } | Kind::Aggregate(_)));
        let time = if timed {
            let spec = job.spec.event_time.as_ref();
            let field = match spec.and_then(|e| e.field.as_deref()) {
                Some(field) => {
                    let source = format!("value.{field}");
                    let site = Site {
                        step: "eventTime",
                        field: "eventTime.field",
                        debezium,
                    };
                    let compiled = Compiled {
                        expr: Expr::compile(&env, &source, site).map_err(invalid)?,
                        field: "eventTime.field",
                        source,
                    };
                    uses = uses.with(compiled.expr.uses());
                    Some(compiled)
                }
                None => None,
            };
            Some(EventTimes {
                field,
                clock: Clock::new(
                    &job.spec.source.kafka.topics,
                    spec.map_or(Duration::ZERO, |e| e.max_out_of_orderness.into()),
                    spec.and_then(|e| e.idle_timeout).map(Into::into),
                    now_ms(),
                ),
                now_ms: now_ms(),
                next_timer: vec![None; steps.len()],
            })
        } else {
            None
        };
        Ok(Self {
            steps,
            format,
            sink_format: job.spec.sink.kafka.format,
            uses,
            failed: usize::MAX,
            time,
            late_dropped: 0,
            key_buf: Vec::with_capacity(64),
            out_key: Vec::with_capacity(64),
            out_value: Vec::with_capacity(256),
        })
    }

    /// The name of the step the last record error happened in, for the dead-letter header.
    pub fn step_name(&self) -> &str {
        self.steps
            .get(self.failed)
            .map_or("source", |s| s.name.as_str())
    }

    /// Late records dropped so far (`lateRecords: drop`), for the `sluice_late_records_total`
    /// metric.
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    /// The task's watermark (event time, ms), when a step keeps one.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.time
            .as_ref()
            .map(|t| t.clock.watermark())
            .filter(|w| *w != event_time::NONE)
    }

    /// Reads the event-time clock back from the task's restored state.
    pub fn restore<S: StateBackend>(&mut self, state: &S) -> Result<(), StateError> {
        if let Some(time) = &mut self.time {
            if let Some(snapshot) = state.get(CLOCK_KEY)? {
                time.clock.restore(&snapshot);
            }
            time.next_timer.iter_mut().for_each(|t| *t = None);
        }
        Ok(())
    }

    /// Writes the event-time clock into the task's state, before it is checkpointed.
    pub fn save<S: StateBackend>(&self, state: &mut S) -> Result<(), StateError> {
        if let Some(time) = &self.time {
            state.put(CLOCK_KEY, &time.clock.snapshot())?;
        }
        Ok(())
    }

    /// Between batches: moves processing time on to `now_ms`, so idle inputs stop holding the
    /// watermark back, and fires the timers it passes.
    pub fn tick<S: StateBackend>(
        &mut self,
        now_ms: i64,
        state: &mut S,
        emit: &mut impl FnMut(Output<'_>),
    ) -> Result<(), StepError> {
        let Self {
            steps,
            time,
            out_value,
            key_buf,
            ..
        } = self;
        if let Some(time) = time {
            time.now_ms = now_ms;
            let before = time.clock.watermark();
            if time.clock.advance(now_ms) != before {
                fire_timers(steps, time, state, key_buf, out_value, emit)?;
            }
        }
        Ok(())
    }

    /// Runs one record through the steps, handing every output to `emit`.
    #[inline]
    pub fn process<S: StateBackend>(
        &mut self,
        record: Record<'_>,
        state: &mut S,
        emit: &mut impl FnMut(Output<'_>),
    ) -> Result<(), StepError> {
        let Self {
            steps,
            format,
            sink_format,
            uses,
            failed,
            time,
            late_dropped,
            key_buf,
            out_key,
            out_value,
        } = self;
        if record.value.is_none() && *format == Format::DebeziumJson && reads_value(*uses) {
            // Debezium sends a tombstone after each delete, for log compaction; the delete
            // event itself carried the change. Skipped, as Flink's debezium-json format does.
            return Ok(());
        }
        // Built by the first step with an expression; later steps reuse them.
        let mut vars: Option<RecordVars<'_>> = None;
        let mut event_ms = 0;
        if let Some(time) = time.as_mut() {
            // Event time is the source record's, read before any step changes it.
            *failed = steps
                .iter()
                .position(|s| matches!(s.kind, Kind::Dedupe { .. } | Kind::Aggregate(_)))
                .unwrap_or(0);
            event_ms = match &time.field {
                Some(field) => {
                    let vars = bind(&mut vars, &record, *uses, *format)?;
                    event_time_of(&field.eval(vars)?)?
                }
                None => record.timestamp_ms.ok_or_else(|| {
                    RecordError::EventTime("the record has no Kafka timestamp".into())
                })?,
            };
            let before = time.clock.watermark();
            if time.clock.observe(record.topic, event_ms, time.now_ms) != before {
                fire_timers(steps, time, state, key_buf, out_value, emit)?;
            }
        }
        let mut key = Current::Raw(record.key);
        let mut value = Current::Raw(record.value);
        for (position, step) in steps.iter().enumerate() {
            *failed = usize::from(step.index);
            match &step.kind {
                Kind::Filter(filter) => {
                    let vars = bind(&mut vars, &record, *uses, *format)?;
                    match filter.eval(vars)? {
                        Value::Bool(true) => {}
                        Value::Bool(false) => return Ok(()),
                        other => return Err(filter.wrong_type("bool", &other).into()),
                    }
                }
                Kind::Map {
                    key: key_expr,
                    value: value_expr,
                } => {
                    let vars = bind(&mut vars, &record, *uses, *format)?;
                    // Both read the record as it came into the step.
                    let new_key = key_expr.as_ref().map(|c| c.eval(vars)).transpose()?;
                    let new_value = value_expr.as_ref().map(|c| c.eval(vars)).transpose()?;
                    if let Some(k) = new_key {
                        set_var(vars, Var::Key, &k)?;
                        key = Current::Computed(k);
                    }
                    if let Some(v) = new_value {
                        set_var(vars, Var::Value, &v)?;
                        value = Current::Computed(v);
                    }
                }
                Kind::Dedupe { key: key_expr, ttl } => {
                    let vars = bind(&mut vars, &record, *uses, *format)?;
                    let id = key_expr.eval(vars)?;
                    expr::write_bytes(&id, out_key)
                        .map_err(|e| RecordError::Encode(e.to_string()))?;
                    window::data_key(key_buf, step.index, 0, out_key);
                    if let Some(seen) = state.get(key_buf)? {
                        let expires = window::time_from_key(&seen).unwrap_or(i64::MIN);
                        if event_ms < expires {
                            return Ok(());
                        }
                    }
                    let expires = event_ms.saturating_add(*ttl);
                    state.put(key_buf, &window::time_key(expires))?;
                    window::timer_key(key_buf, step.index, expires, PURGE, 0, out_key);
                    state.put(key_buf, &[])?;
                    if let Some(time) = time.as_mut() {
                        note_timer(&mut time.next_timer[position], expires);
                    }
                }
                Kind::Aggregate(aggregate) => {
                    let vars = bind(&mut vars, &record, *uses, *format)?;
                    let Some(time) = time.as_mut() else {
                        return Ok(());
                    };
                    return aggregate_record(
                        aggregate,
                        step.index,
                        &mut time.next_timer[position],
                        time.clock.watermark(),
                        event_ms,
                        vars,
                        state,
                        late_dropped,
                        key_buf,
                        out_key,
                        out_value,
                        emit,
                    );
                }
                Kind::Materialize { key: key_expr } => {
                    if let Some(c) = key_expr {
                        let vars = bind(&mut vars, &record, *uses, *format)?;
                        key = Current::Computed(c.eval(vars)?);
                    }
                    let Some(row_key) = encode(&key, out_key, SinkFormat::Raw)? else {
                        return Err(RecordError::MissingKey {
                            step: step.name.clone(),
                        }
                        .into());
                    };
                    let row = match &value {
                        Current::Raw(None) => {
                            // A Kafka tombstone: Debezium sends one after each delete event,
                            // for log compaction; the delete event already removed the row.
                            if *format == Format::DebeziumJson {
                                return Ok(());
                            }
                            None
                        }
                        Current::Raw(Some(bytes)) => match format {
                            Format::DebeziumJson => {
                                let change = decode::debezium(bytes).map_err(RecordError::from)?;
                                match change.op {
                                    Op::Delete => None,
                                    Op::Create | Op::Update | Op::Read => {
                                        change.after.map(|raw| raw.get().as_bytes())
                                    }
                                }
                            }
                            Format::Json | Format::Raw => Some(*bytes),
                        },
                        Current::Computed(_) => encode(&value, out_value, *sink_format)?,
                    };
                    keys::encode_into(key_buf, step.index, row_key);
                    match row {
                        Some(row) => state.put(key_buf, row)?,
                        None => state.delete(key_buf)?,
                    }
                    emit(Output {
                        key: Some(row_key),
                        value: row,
                    });
                    return Ok(());
                }
            }
        }
        *failed = steps.len().saturating_sub(1);
        let key = encode(&key, out_key, SinkFormat::Raw)?;
        let value = encode(&value, out_value, *sink_format)?;
        emit(Output { key, value });
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Event time from the value of `eventTime.field`: epoch ms, or an RFC 3339 string.
fn event_time_of(value: &Value) -> Result<i64, RecordError> {
    match value {
        Value::Int(ms) => Ok(*ms),
        Value::UInt(ms) => {
            i64::try_from(*ms).map_err(|_| RecordError::EventTime(format!("{ms} is out of range")))
        }
        Value::Float(ms) if ms.is_finite() => Ok(*ms as i64),
        Value::Timestamp(t) => Ok(t.timestamp_millis()),
        Value::String(text) => event_time::parse_rfc3339_ms(text).ok_or_else(|| {
            RecordError::EventTime(format!(
                "{text:?} is neither epoch milliseconds nor RFC 3339"
            ))
        }),
        other => Err(RecordError::EventTime(format!(
            "a {} is neither epoch milliseconds nor an RFC 3339 string",
            other.type_of()
        ))),
    }
}

/// Lowers the cached earliest timer of a step to `at`, when it is known.
fn note_timer(next: &mut Option<i64>, at: i64) {
    if let Some(next) = next {
        *next = (*next).min(at);
    }
}

/// Adds a record to its group's windows (the aggregate is the last step).
#[allow(clippy::too_many_arguments)]
fn aggregate_record<S: StateBackend>(
    a: &Aggregate,
    step: u8,
    next_timer: &mut Option<i64>,
    watermark: i64,
    event_ms: i64,
    vars: &RecordVars<'_>,
    state: &mut S,
    late_dropped: &mut u64,
    key_buf: &mut Vec<u8>,
    group: &mut Vec<u8>,
    out_value: &mut Vec<u8>,
    emit: &mut impl FnMut(Output<'_>),
) -> Result<(), StepError> {
    let group_value = a.group_by.eval(vars)?;
    expr::write_bytes(&group_value, group).map_err(|e| RecordError::Encode(e.to_string()))?;
    let mut inputs = Vec::with_capacity(a.inputs.len());
    for input in &a.inputs {
        inputs.push(match input {
            Some(c) => {
                expr::to_json(&c.eval(vars)?).map_err(|e| RecordError::Encode(e.to_string()))?
            }
            None => Json::Null,
        });
    }
    let fresh = |acc: &Acc| -> Result<Acc, RecordError> {
        let mut next = acc.clone();
        next.add(&a.functions, &inputs, event_ms)
            .map_err(|e| RecordError::Aggregate(e.to_string()))?;
        Ok(next)
    };
    // A window whose state was purged: it closed more than `allowedLateness` ago.
    let purged = |end: i64| end - 1 + a.lateness <= watermark;
    let fired = |end: i64| a.emit == Emit::OnClose && end - 1 <= watermark;
    let mut updated = false;
    match a.shape {
        Shape::Session { gap } => {
            window::sessions_key(key_buf, step, group);
            let mut sessions: Vec<Session> = match state.get(key_buf)? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => Vec::new(),
            };
            let (mut start, mut end) = (event_ms, event_ms.saturating_add(gap));
            let mut acc = fresh(&Acc::new(a.functions.len()))?;
            let mut kept = Vec::with_capacity(sessions.len());
            let mut merged = Vec::new();
            for s in sessions.drain(..) {
                if s.start < end && start < s.end {
                    start = start.min(s.start);
                    end = end.max(s.end);
                    merged.push(s);
                } else {
                    kept.push(s);
                }
            }
            if purged(end) {
                return late(a, event_ms, watermark, late_dropped);
            }
            for s in &merged {
                acc.merge(&a.functions, &s.acc);
                for (at, kind) in timers(a, s.end) {
                    window::timer_key(key_buf, step, at, kind, s.start, group);
                    state.delete(key_buf)?;
                }
            }
            for (at, kind) in timers(a, end) {
                window::timer_key(key_buf, step, at, kind, start, group);
                state.put(key_buf, &[])?;
                note_timer(next_timer, at);
            }
            let session = Session { start, end, acc };
            if a.emit == Emit::OnUpdate || fired(end) {
                write_result(a, start, end, &session.acc, out_value);
                emit(Output {
                    key: Some(group),
                    value: Some(out_value),
                });
            }
            kept.push(session);
            window::sessions_key(key_buf, step, group);
            state.put(key_buf, &serde_json::to_vec(&kept).unwrap_or_default())?;
            return Ok(());
        }
        Shape::Global | Shape::Tumbling { .. } | Shape::Hopping { .. } => {
            let mut starts = Vec::new();
            a.shape.starts(event_ms, &mut starts);
            for start in starts.into_iter().rev() {
                let end = a.shape.end(start);
                if a.shape != Shape::Global && purged(end) {
                    continue;
                }
                window::data_key(key_buf, step, start, group);
                let acc = match state.get(key_buf)? {
                    Some(bytes) => serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| Acc::new(a.functions.len())),
                    None => {
                        if a.shape != Shape::Global {
                            for (at, kind) in timers(a, end) {
                                window::timer_key(key_buf, step, at, kind, start, group);
                                state.put(key_buf, &[])?;
                                note_timer(next_timer, at);
                            }
                            window::data_key(key_buf, step, start, group);
                        }
                        Acc::new(a.functions.len())
                    }
                };
                let acc = fresh(&acc)?;
                state.put(key_buf, &serde_json::to_vec(&acc).unwrap_or_default())?;
                updated = true;
                if a.emit == Emit::OnUpdate || fired(end) {
                    write_result(a, start, end, &acc, out_value);
                    emit(Output {
                        key: Some(group),
                        value: Some(out_value),
                    });
                }
            }
        }
    }
    if !updated {
        return late(a, event_ms, watermark, late_dropped);
    }
    Ok(())
}

/// The timers of a window ending at `end`: fire (when emitting on close) and purge.
fn timers(a: &Aggregate, end: i64) -> impl Iterator<Item = (i64, u8)> {
    let fire = (a.emit == Emit::OnClose).then_some((end - 1, FIRE));
    fire.into_iter()
        .chain(std::iter::once((end - 1 + a.lateness, PURGE)))
}

fn late(
    a: &Aggregate,
    event_ms: i64,
    watermark_ms: i64,
    dropped: &mut u64,
) -> Result<(), StepError> {
    match a.late {
        LateRecords::Drop => {
            *dropped += 1;
            Ok(())
        }
        LateRecords::DeadLetter => Err(RecordError::Late {
            event_ms,
            watermark_ms,
            lateness: if a.lateness > 0 {
                format!(" more than {} ms ago", a.lateness)
            } else {
                String::new()
            },
        }
        .into()),
    }
}

/// The result of a window: one field per aggregation, and its bounds (windowed only).
fn write_result(a: &Aggregate, start: i64, end: i64, acc: &Acc, out: &mut Vec<u8>) {
    let mut result = acc.result(&a.names, &a.functions);
    if a.shape != Shape::Global {
        result.insert("window_start".into(), start.into());
        result.insert("window_end".into(), end.into());
    }
    out.clear();
    let _ = serde_json::to_writer(&mut *out, &result);
}

/// The earliest timer of step `step`, or `i64::MAX`.
fn first_timer<S: StateBackend>(state: &S, step: u8) -> Result<i64, StateError> {
    let mut first = i64::MAX;
    state.scan_prefix(&[step, window::TIMERS], &mut |k, _| {
        if let Some((at, ..)) = window::parse_timer(k) {
            first = at;
        }
        false
    })?;
    Ok(first)
}

/// Fires every timer at or before the watermark, step by step, in time order.
fn fire_timers<S: StateBackend>(
    steps: &[CompiledStep],
    time: &mut EventTimes,
    state: &mut S,
    key_buf: &mut Vec<u8>,
    out_value: &mut Vec<u8>,
    emit: &mut impl FnMut(Output<'_>),
) -> Result<(), StepError> {
    let watermark = time.clock.watermark();
    for (position, step) in steps.iter().enumerate() {
        if !matches!(step.kind, Kind::Dedupe { .. } | Kind::Aggregate(_)) {
            continue;
        }
        let next = match time.next_timer[position] {
            Some(next) => next,
            None => first_timer(state, step.index)?,
        };
        time.next_timer[position] = Some(next);
        if next > watermark {
            continue;
        }
        loop {
            let mut due = Vec::new();
            let mut next = i64::MAX;
            state.scan_prefix(
                &[step.index, window::TIMERS],
                &mut |k, _| match window::parse_timer(k) {
                    Some((at, ..)) if at <= watermark => {
                        due.push(k.to_vec());
                        due.len() < TIMER_BATCH
                    }
                    Some((at, ..)) => {
                        next = at;
                        false
                    }
                    None => true,
                },
            )?;
            for timer in &due {
                state.delete(timer)?;
                fire(step, timer, state, key_buf, out_value, emit)?;
            }
            if due.len() < TIMER_BATCH {
                time.next_timer[position] = Some(next);
                break;
            }
        }
    }
    Ok(())
}

/// One due timer: emit a closing window, or drop state whose time is up.
fn fire<S: StateBackend>(
    step: &CompiledStep,
    timer: &[u8],
    state: &mut S,
    key_buf: &mut Vec<u8>,
    out_value: &mut Vec<u8>,
    emit: &mut impl FnMut(Output<'_>),
) -> Result<(), StepError> {
    let Some((at, kind, start, group)) = window::parse_timer(timer) else {
        return Ok(());
    };
    match &step.kind {
        Kind::Dedupe { .. } => {
            window::data_key(key_buf, step.index, 0, group);
            let expired = state
                .get(key_buf)?
                .and_then(|v| window::time_from_key(&v))
                .is_some_and(|expires| expires <= at);
            if expired {
                state.delete(key_buf)?;
            }
        }
        Kind::Aggregate(a) => match a.shape {
            Shape::Session { .. } => {
                window::sessions_key(key_buf, step.index, group);
                let Some(bytes) = state.get(key_buf)? else {
                    return Ok(());
                };
                let mut sessions: Vec<Session> = serde_json::from_slice(&bytes).unwrap_or_default();
                let Some(i) = sessions.iter().position(|s| s.start == start) else {
                    return Ok(());
                };
                let end = sessions[i].end;
                if kind == FIRE && end - 1 == at {
                    write_result(a, start, end, &sessions[i].acc, out_value);
                    emit(Output {
                        key: Some(group),
                        value: Some(out_value),
                    });
                } else if kind == PURGE && end - 1 + a.lateness == at {
                    sessions.remove(i);
                    if sessions.is_empty() {
                        state.delete(key_buf)?;
                    } else {
                        state.put(key_buf, &serde_json::to_vec(&sessions).unwrap_or_default())?;
                    }
                }
            }
            _ => {
                window::data_key(key_buf, step.index, start, group);
                if kind == FIRE {
                    let acc = state
                        .get(key_buf)?
                        .and_then(|bytes| serde_json::from_slice::<Acc>(&bytes).ok());
                    if let Some(acc) = acc {
                        write_result(a, start, a.shape.end(start), &acc, out_value);
                        emit(Output {
                            key: Some(group),
                            value: Some(out_value),
                        });
                    }
                } else {
                    state.delete(key_buf)?;
                }
            }
        },
        _ => {}
    }
    Ok(())
}

/// The record's variables, decoded on first use.
#[inline]
fn bind<'v, 'a>(
    vars: &'v mut Option<RecordVars<'a>>,
    record: &Record<'a>,
    uses: Vars,
    format: Format,
) -> Result<&'v mut RecordVars<'a>, RecordError> {
    if vars.is_none() {
        *vars = Some(decode_vars(record, uses, format)?);
    }
    Ok(vars.get_or_insert_with(RecordVars::default))
}

/// Decodes what the expressions read of `record`.
fn decode_vars<'a>(
    record: &Record<'a>,
    uses: Vars,
    format: Format,
) -> Result<RecordVars<'a>, RecordError> {
    let mut vars = RecordVars::default();
    if let Some(key) = record.key.filter(|_| uses.has(Var::Key)) {
        vars.set(Var::Key, expr::text_or_bytes(key));
    }
    if uses.has(Var::Partition) {
        vars.set(Var::Partition, expr::int(i64::from(record.partition)));
    }
    if uses.has(Var::Offset) {
        vars.set(Var::Offset, expr::int(record.offset));
    }
    if let Some(ms) = record.timestamp_ms.filter(|_| uses.has(Var::Timestamp)) {
        vars.set(Var::Timestamp, expr::timestamp_ms(ms));
    }
    if uses.has(Var::Headers) {
        let mut pairs = Vec::new();
        if let Some(headers) = record.headers {
            headers.each(&mut |name, value| pairs.push((name, value)));
        }
        vars.set(Var::Headers, expr::headers(pairs.into_iter()));
    }
    if !reads_value(uses) {
        return Ok(vars);
    }
    let bytes = match record.value {
        Some(bytes) if !(format == Format::Json && is_json_null(bytes)) => bytes,
        _ => return Err(DecodeError::NullValue.into()),
    };
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()).into());
    }
    let json = |bytes: &'a [u8]| {
        expr::json(bytes).map_err(|e| RecordError::Decode(decode::json_error(bytes, &e)))
    };
    match format {
        Format::Json => vars.set(Var::Value, json(bytes)?),
        Format::Raw => vars.set(Var::Value, expr::text_or_bytes(bytes)),
        Format::DebeziumJson => {
            let change = decode::debezium(bytes)?;
            if uses.has(Var::Value) {
                vars.set(Var::Value, json(change.event)?);
            }
            if uses.has(Var::Op) {
                vars.set(Var::Op, expr::text_or_bytes(change.op_text.as_bytes()));
            }
            for (var, raw) in [
                (Var::Before, change.before),
                (Var::After, change.after),
                (Var::Source, change.source),
            ] {
                if let Some(raw) = raw.filter(|_| uses.has(var)) {
                    vars.set(var, json(raw.get().as_bytes())?);
                }
            }
        }
    }
    Ok(vars)
}

/// Whether expressions reading `uses` read the record value.
fn reads_value(uses: Vars) -> bool {
    [Var::Value, Var::Op, Var::Before, Var::After, Var::Source]
        .into_iter()
        .any(|v| uses.has(v))
}

fn is_json_null(bytes: &[u8]) -> bool {
    bytes.len() < 16 && bytes.trim_ascii() == b"null"
}

fn set_var(vars: &mut RecordVars<'_>, var: Var, value: &Value) -> Result<(), RecordError> {
    vars.set_value(var, value.clone())
        .map_err(|e| RecordError::Encode(e.to_string()))
}

/// The bytes of a key or value: untouched input as it is, computed values encoded for
/// `format` into `buf`; a computed `null` is absent.
#[inline]
fn encode<'b>(
    current: &'b Current<'_>,
    buf: &'b mut Vec<u8>,
    format: SinkFormat,
) -> Result<Option<&'b [u8]>, RecordError> {
    match current {
        Current::Raw(bytes) => Ok(*bytes),
        Current::Computed(Value::Null) => Ok(None),
        Current::Computed(value) => {
            let written = match format {
                SinkFormat::Json => expr::write_json(value, buf),
                SinkFormat::Raw => expr::write_bytes(value, buf),
            };
            written.map_err(|e| RecordError::Encode(e.to_string()))?;
            Ok(Some(buf.as_slice()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::test_job;
    use std::time::Duration;

    use crate::state::memory::MemoryState;

    /// An emitted record: key and value (`None` for a tombstone).
    type Emitted = (Vec<u8>, Option<Vec<u8>>);

    fn record(value: Option<&[u8]>) -> Record<'_> {
        Record {
            topic: "in",
            partition: 0,
            offset: 0,
            key: None,
            value,
            timestamp_ms: None,
            headers: None,
        }
    }

    fn pipeline(steps: &str, format: &str) -> Pipeline {
        Pipeline::new(&test_job(steps, format)).unwrap()
    }

    fn run(
        p: &mut Pipeline,
        state: &mut MemoryState,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<Vec<Emitted>, StepError> {
        let mut out = Vec::new();
        p.process(
            Record {
                key: Some(key),
                value,
                ..record(None)
            },
            state,
            &mut |o| {
                out.push((o.key.unwrap().to_vec(), o.value.map(<[u8]>::to_vec)));
            },
        )?;
        Ok(out)
    }

    fn table(state: &MemoryState) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut rows = Vec::new();
        state
            .scan_prefix(&keys::step_prefix(0), &mut |k, v| {
                rows.push((keys::decode(k).unwrap().1.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        rows
    }

    #[test]
    fn materialize_keeps_the_latest_row_and_emits_every_change() {
        let mut p = pipeline("[{name: t, materialize: {}}]", "debezium-json");
        let dir = tempfile::tempdir().unwrap();
        let mut state = <MemoryState as StateBackend>::open(dir.path()).unwrap();
        let out = run(
            &mut p,
            &mut state,
            b"1",
            Some(br#"{"op":"c","after":{"id":1,"v":1}}"#),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![(b"1".to_vec(), Some(br#"{"id":1,"v":1}"#.to_vec()))]
        );
        run(
            &mut p,
            &mut state,
            b"1",
            Some(br#"{"op":"u","before":{"id":1,"v":1},"after":{"id":1,"v":2}}"#),
        )
        .unwrap();
        run(
            &mut p,
            &mut state,
            b"2",
            Some(br#"{"op":"r","after":{"id":2}}"#),
        )
        .unwrap();
        assert_eq!(
            table(&state),
            vec![
                (b"1".to_vec(), br#"{"id":1,"v":2}"#.to_vec()),
                (b"2".to_vec(), br#"{"id":2}"#.to_vec())
            ]
        );
        let out = run(
            &mut p,
            &mut state,
            b"1",
            Some(br#"{"op":"d","before":{"id":1},"after":null}"#),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![(b"1".to_vec(), None)],
            "a delete is emitted as a tombstone"
        );
        // Debezium's tombstone after the delete changes nothing and emits nothing.
        assert!(run(&mut p, &mut state, b"1", None).unwrap().is_empty());
        assert_eq!(
            table(&state),
            vec![(b"2".to_vec(), br#"{"id":2}"#.to_vec())]
        );
    }

    #[test]
    fn a_bad_change_event_is_a_record_error_and_changes_nothing() {
        let mut p = pipeline("[{name: t, materialize: {}}]", "debezium-json");
        let dir = tempfile::tempdir().unwrap();
        let mut state = <MemoryState as StateBackend>::open(dir.path()).unwrap();
        let err = run(&mut p, &mut state, b"1", Some(b"{oops")).unwrap_err();
        assert!(
            matches!(&err, StepError::Record(e) if e.kind() == "invalid-json"),
            "{err:?}"
        );
        let mut out = Vec::new();
        let err = p
            .process(
                Record {
                    key: None,
                    value: Some(br#"{"op":"c","after":{}}"#),
                    ..record(None)
                },
                &mut state,
                &mut |o| out.push(o.value.map(<[u8]>::to_vec)),
            )
            .unwrap_err();
        assert!(
            matches!(&err, StepError::Record(e) if e.kind() == "missing-key"),
            "{err:?}"
        );
        assert!(out.is_empty());
        assert!(table(&state).is_empty());
    }

    #[test]
    fn steps_this_build_cannot_run_are_refused_by_name() {
        let job = test_job(
            "[{name: totals, aggregate: {groupBy: key, aggregations: [{name: n, function: count}], emit: on-update}}, {name: big, filter: {expr: 'true'}}]",
            "json",
        );
        let err = Pipeline::new(&job).unwrap_err().to_string();
        assert!(
            err.contains("\"totals\" is an aggregate step followed by other steps"),
            "{err}"
        );
    }

    /// Runs `value` (key `k`) through `p`: the outputs, or the error's kind and step.
    fn outcome(p: &mut Pipeline, value: Option<&[u8]>) -> Result<Vec<Emitted>, (String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let mut state = <MemoryState as StateBackend>::open(dir.path()).unwrap();
        run(p, &mut state, b"k", value).map_err(|e| match e {
            StepError::Record(e) => (e.kind().to_string(), p.step_name().to_string()),
            StepError::State(e) => panic!("{e}"),
        })
    }

    #[test]
    fn filter_then_map_apply_in_order_over_the_decoded_record() {
        let mut p = pipeline(
            "[{name: big, filter: {expr: 'value.amount > 100'}}, \
              {name: reshape, map: {key: 'value.customer', value: \"{'c': value.customer, 'twice': value.amount * 2}\"}}, \
              {name: again, filter: {expr: 'value.twice < 1000 && key == \"alice\"'}}]",
            "json",
        );
        assert_eq!(
            outcome(&mut p, Some(br#"{"customer":"alice","amount":150}"#)),
            Ok(vec![(
                b"alice".to_vec(),
                Some(br#"{"c":"alice","twice":300}"#.to_vec())
            )])
        );
        assert_eq!(
            outcome(&mut p, Some(br#"{"customer":"alice","amount":50}"#)),
            Ok(vec![])
        );
        assert_eq!(
            outcome(&mut p, Some(br#"{"customer":"bob","amount":150}"#)),
            Ok(vec![])
        );
        assert_eq!(
            outcome(&mut p, Some(br#"{"customer":"alice","amount":600}"#)),
            Ok(vec![])
        );
    }

    #[test]
    fn bad_records_name_their_kind_and_step() {
        let mut p = pipeline(
            "[{name: big, filter: {expr: 'value.amount > 100'}}, \
              {name: ratio, map: {value: 'value.amount / value.count'}}]",
            "json",
        );
        let err = |p: &mut Pipeline, v: &[u8]| outcome(p, Some(v)).unwrap_err();
        let e = |kind: &str, step: &str| (kind.to_string(), step.to_string());
        assert_eq!(err(&mut p, b"{oops"), e("invalid-json", "big"));
        assert_eq!(
            err(&mut p, b"{\"amount\": \"\xff\"}"),
            e("invalid-utf8", "big")
        );
        assert_eq!(
            err(&mut p, br#"{"amount":"many"}"#),
            e("cel-type-error", "big")
        );
        assert_eq!(err(&mut p, br#"{"other":1}"#), e("cel-no-such-key", "big"));
        assert_eq!(
            err(&mut p, br#"{"amount":200,"count":0}"#),
            e("cel-division-by-zero", "ratio")
        );
        assert_eq!(err(&mut p, b"null"), e("null-value", "big"));
        let huge = format!(
            r#"{{"amount":200,"count":1,"pad":"{}"}}"#,
            "x".repeat(MAX_VALUE_BYTES)
        );
        assert_eq!(err(&mut p, huge.as_bytes()), e("too-large", "big"));
        assert_eq!(outcome(&mut p, None).unwrap_err(), e("null-value", "big"));
        assert_eq!(
            outcome(&mut p, Some(br#"{"amount":200,"count":8}"#)),
            Ok(vec![(b"k".to_vec(), Some(b"25".to_vec()))])
        );
    }

    #[test]
    fn debezium_records_expose_op_before_after_and_source() {
        let mut p = pipeline(
            "[{name: updates, filter: {expr: \"op == 'u' && after.v > before.v && source.db == 'shop'\"}}, \
              {name: t, materialize: {key: 'string(after.id)'}}]",
            "debezium-json",
        );
        let event =
            br#"{"op":"u","before":{"id":1,"v":1},"after":{"id":1,"v":2},"source":{"db":"shop"}}"#;
        assert_eq!(
            outcome(&mut p, Some(event)),
            Ok(vec![(b"1".to_vec(), Some(br#"{"id":1,"v":2}"#.to_vec()))])
        );
        let create = br#"{"op":"c","after":{"id":2,"v":2},"source":{"db":"shop"}}"#;
        assert_eq!(outcome(&mut p, Some(create)), Ok(vec![]));
        assert_eq!(
            outcome(&mut p, None),
            Ok(vec![]),
            "Debezium's tombstones are skipped"
        );
        let unknown = br#"{"op":"x","after":{"id":2}}"#;
        assert_eq!(
            outcome(&mut p, Some(unknown)).unwrap_err(),
            ("unknown-op".to_string(), "updates".to_string())
        );
    }

    #[test]
    fn an_invalid_expression_names_step_expression_and_position() {
        let job = test_job(
            "[{name: ok, filter: {expr: 'true'}}, {name: big, filter: {expr: 'value.amount >'}}]",
            "json",
        );
        let err = Pipeline::new(&job).unwrap_err().to_string();
        assert!(err.contains("step \"big\""), "{err}");
        assert!(err.contains("\"value.amount >\""), "{err}");
        assert!(err.contains("line 1, column"), "{err}");
    }

    /// A pipeline over JSON records whose event time is `value.ts`, `ooo_ms` out of order.
    fn timed(steps: &str, ooo_ms: u64) -> Pipeline {
        let mut job = test_job(steps, "json");
        job.spec.event_time = Some(sluice_crds::v1alpha1::EventTime {
            field: Some("ts".into()),
            max_out_of_orderness: Duration::from_millis(ooo_ms).into(),
            idle_timeout: None,
        });
        Pipeline::new(&job).unwrap()
    }

    /// Feeds `(key, ts, amount)` records; returns every output as (key, JSON) and every
    /// record error's kind, in order.
    fn feed(
        p: &mut Pipeline,
        state: &mut MemoryState,
        records: &[(&str, i64, i64)],
    ) -> Vec<String> {
        let mut seen = Vec::new();
        for (key, ts, amount) in records {
            let value = format!(r#"{{"k":"{key}","ts":{ts},"amount":{amount}}}"#);
            let mut out = Vec::new();
            let result = p.process(
                Record {
                    key: Some(key.as_bytes()),
                    ..record(Some(value.as_bytes()))
                },
                state,
                &mut |o| {
                    out.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(o.key.unwrap_or_default()),
                        String::from_utf8_lossy(o.value.unwrap_or_default())
                    ))
                },
            );
            seen.extend(out);
            if let Err(StepError::Record(e)) = result {
                seen.push(format!("error {} at {ts}", e.kind()));
            }
        }
        seen
    }

    fn memory() -> (tempfile::TempDir, MemoryState) {
        let dir = tempfile::tempdir().unwrap();
        let state = <MemoryState as StateBackend>::open(dir.path()).unwrap();
        (dir, state)
    }

    #[test]
    fn tumbling_windows_close_on_the_watermark_and_later_records_are_late() {
        let mut p = timed(
            "[{name: sums, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}, {name: total, function: sum, expr: value.amount}], window: {tumbling: {size: 10ms}}}}]",
            5,
        );
        let (_dir, mut state) = memory();
        let seen = feed(
            &mut p,
            &mut state,
            &[
                ("a", 1, 1),
                ("a", 3, 2),
                ("b", 12, 5),
                ("a", 8, 1),
                ("a", 15, 7),
                ("a", 9, 100),
                ("a", 16, 1),
            ],
        );
        assert_eq!(
            seen,
            vec![
                // ts 15 moves the watermark to 9: [0, 10) closes.
                r#"a={"n":3,"total":4,"window_end":10,"window_start":0}"#.to_string(),
                // ts 9 is late: its window closed.
                "error late at 9".into(),
            ]
        );
        let seen = feed(&mut p, &mut state, &[("x", 30, 0)]);
        assert_eq!(
            seen,
            vec![
                r#"a={"n":2,"total":8,"window_end":20,"window_start":10}"#.to_string(),
                r#"b={"n":1,"total":5,"window_end":20,"window_start":10}"#.to_string(),
            ]
        );
        let mut timers = 0;
        state
            .scan_prefix(&[0, window::TIMERS], &mut |_, _| {
                timers += 1;
                true
            })
            .unwrap();
        assert_eq!(timers, 2, "only the open window of x keeps timers");
    }

    #[test]
    fn allowed_lateness_updates_a_closed_window_and_hopping_windows_overlap() {
        let mut p = timed(
            "[{name: sums, aggregate: {groupBy: 'value.k', aggregations: [{name: total, function: sum, expr: value.amount}], window: {hopping: {size: 10ms, advance: 5ms}}, allowedLateness: 5ms, lateRecords: drop}}]",
            0,
        );
        let (_dir, mut state) = memory();
        let seen = feed(
            &mut p,
            &mut state,
            &[
                ("a", 1, 1),
                ("a", 6, 2),
                ("a", 11, 4),
                ("a", 7, 8),
                ("a", 20, 0),
                ("a", 3, 16),
            ],
        );
        assert_eq!(
            seen,
            vec![
                // ts 6: watermark 5, [-5, 5) closes.
                r#"a={"total":1,"window_end":5,"window_start":-5}"#.to_string(),
                // ts 11: watermark 10, [0, 10) closes.
                r#"a={"total":3,"window_end":10,"window_start":0}"#.to_string(),
                // ts 7 is late for [0, 10) but within its lateness: it fires again; [5, 15) is open.
                r#"a={"total":11,"window_end":10,"window_start":0}"#.to_string(),
                // ts 20: watermark 19, [5, 15) and [10, 20) close.
                r#"a={"total":14,"window_end":15,"window_start":5}"#.to_string(),
                r#"a={"total":4,"window_end":20,"window_start":10}"#.to_string(),
            ]
        );
        assert_eq!(
            p.late_dropped(),
            1,
            "ts 3 is later than the lateness: dropped"
        );
    }

    #[test]
    fn sessions_merge_across_gaps_and_survive_a_restore() {
        let steps = "[{name: s, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}, {name: first, function: first, expr: value.amount}, {name: last, function: last, expr: value.amount}], window: {session: {gap: 10ms}}}}]";
        let mut p = timed(steps, 30);
        let dir = tempfile::tempdir().unwrap();
        let mut state = <MemoryState as StateBackend>::open(&dir.path().join("live")).unwrap();
        assert!(
            feed(
                &mut p,
                &mut state,
                &[("a", 0, 1), ("a", 22, 2), ("a", 5, 3)]
            )
            .is_empty()
        );
        p.save(&mut state).unwrap();
        state.checkpoint(&dir.path().join("c1")).unwrap();
        drop(state);
        crate::state::live_dir_from_checkpoint(&dir.path().join("c1"), &dir.path().join("live2"))
            .unwrap();
        let mut state = <MemoryState as StateBackend>::open(&dir.path().join("live2")).unwrap();
        let mut p = timed(steps, 30);
        p.restore(&state).unwrap();
        assert_eq!(p.watermark_ms(), Some(-9));
        let seen = feed(&mut p, &mut state, &[("a", 14, 4), ("a", 100, 5)]);
        assert_eq!(
            seen,
            vec![
                // ts 14 joins [0, 15) and [22, 32) into one session [0, 32); ts 100 closes it.
                r#"a={"first":1,"last":2,"n":4,"window_end":32,"window_start":0}"#.to_string(),
            ]
        );
    }

    #[test]
    fn dedupe_drops_repeats_within_the_ttl_by_event_time() {
        let mut p = timed(
            "[{name: once, dedupe: {key: 'value.amount', ttl: 10ms}}]",
            0,
        );
        let (_dir, mut state) = memory();
        let seen = feed(
            &mut p,
            &mut state,
            &[
                ("a", 0, 1),
                ("b", 5, 1),
                ("c", 9, 2),
                ("d", 10, 1),
                ("e", 12, 2),
                ("f", 30, 2),
            ],
        );
        let keys: Vec<&str> = seen.iter().map(|s| &s[..1]).collect();
        assert_eq!(keys, vec!["a", "c", "d", "f"]);
        let mut entries = 0;
        state
            .scan_prefix(&[0, window::DATA], &mut |_, _| {
                entries += 1;
                true
            })
            .unwrap();
        assert_eq!(entries, 1, "expired keys are removed");
    }

    #[test]
    fn an_unwindowed_aggregate_emits_every_update() {
        let mut p = timed(
            "[{name: t, aggregate: {groupBy: 'key', aggregations: [{name: avg, function: avg, expr: value.amount}, {name: max, function: max, expr: value.amount}], emit: on-update}}]",
            0,
        );
        let (_dir, mut state) = memory();
        let seen = feed(&mut p, &mut state, &[("a", 5, 2), ("a", 1, 4)]);
        assert_eq!(
            seen,
            vec![
                r#"a={"avg":2.0,"max":2}"#.to_string(),
                r#"a={"avg":3.0,"max":4}"#.to_string()
            ]
        );
    }
}

//! The steps a task applies to each record, in the order the job declares them. Pure logic
//! over a state backend: no Kafka here.
//!
//! A record enters as bytes. The first step that reads it decodes it once (into CEL values
//! that borrow from the record where they can); later steps see what earlier ones made of it.
//! What the last step leaves is encoded for the sink. Steps this build cannot run are refused
//! when the job starts, naming the step.

use cel::Value;
use sluice_crds::v1alpha1::{Format, SinkFormat, Step};

use crate::decode::{self, DecodeError, MAX_VALUE_BYTES, Op};
use crate::expr::{self, Expr, ExprError, RecordVars, Site, Var, Vars};
use crate::io::InputRecord;
use crate::job::{Job, JobError};
use crate::keys;
use crate::state::{StateBackend, StateError};

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
}

impl RecordError {
    /// Short kind for the `sluice.error.kind` header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.kind(),
            Self::MissingKey { .. } => "missing-key",
            Self::Expression { kind, .. } => kind,
            Self::Encode(_) => "encode-error",
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
    key_buf: Vec<u8>,
    out_key: Vec<u8>,
    out_value: Vec<u8>,
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
            let last = index + 1 == count;
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
                if !last {
                    return Err(unsupported(
                        step,
                        "is a materialize step followed by other steps; this worker build \
                         runs materialize only as the last step"
                            .into(),
                    ));
                }
                Kind::Materialize {
                    key: materialize
                        .key
                        .as_deref()
                        .map(|k| compile("materialize.key", k))
                        .transpose()?,
                }
            } else {
                let what = if step.aggregate.is_some() {
                    "an aggregate"
                } else {
                    "a dedupe"
                };
                return Err(unsupported(
                    step,
                    format!(
                        "is {what} step, which this worker build does not run yet; supported: \
                         filter, map, materialize"
                    ),
                ));
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
            };
            uses = uses.with(step_uses);
            steps.push(CompiledStep {
                name: step.name.clone(),
                index: u8::try_from(index).unwrap_or(u8::MAX),
                kind,
            });
        }
        Ok(Self {
            steps,
            format,
            sink_format: job.spec.sink.kafka.format,
            uses,
            failed: usize::MAX,
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
            key_buf,
            out_key,
            out_value,
        } = self;
        if record.value.is_none() && *format == Format::DebeziumJson && reads_value(*uses) {
            // Debezium sends a tombstone after each delete, for log compaction; the delete
            // event itself carried the change. Skipped, as Flink's debezium-json format does.
            return Ok(());
        }
        let mut key = Current::Raw(record.key);
        let mut value = Current::Raw(record.value);
        // Built by the first step with an expression; later steps reuse them.
        let mut vars: Option<RecordVars<'_>> = None;
        for step in steps.iter() {
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
        let job = test_job("[{name: once, dedupe: {key: 'value.id', ttl: 1h}}]", "json");
        let err = Pipeline::new(&job).unwrap_err().to_string();
        assert!(err.contains("\"once\" is a dedupe step"), "{err}");
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
}

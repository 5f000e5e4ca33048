//! `materialize`: keeps the latest row per key of a change stream (a CDC upsert table) and
//! emits every change as a changelog record, a delete as a tombstone. State: one entry per row,
//! `[id, row key] → row`.
//!
//! The row key is `materialize.key` (CEL) or the record key; a record with neither is the
//! record's error. The row: for `debezium-json` input, the event's `after` (a delete event
//! removes the row; Debezium's tombstone after it changes nothing); for `json` and `raw` input,
//! the value as it is (a tombstone removes the row); a value a `map` computed, encoded in the
//! sink's format. The change is a record of its own for the steps after it: the row key, the
//! row (JSON unless the input is `raw`; no value for a delete), at the input's event time.

use sluice_crds::v1alpha1::{Format, MaterializeStep, SinkFormat};

use super::record::encode;
use super::{
    Compiled, Compiler, Current, Cx, Namespace, Operator, Out, Record, RecordError, StepError,
};
use crate::decode::{self, Op};
use crate::expr::Vars;
use crate::job::JobError;
use crate::state::StateBackend;

/// A compiled `materialize` step.
pub struct Materialize {
    name: String,
    key: Option<Compiled>,
    /// How a computed value is written: the sink's format.
    sink_format: SinkFormat,
    ns: Namespace,
    row_key: Vec<u8>,
    row: Vec<u8>,
    state_key: Vec<u8>,
}

impl Materialize {
    /// Compiles the step (at `position`).
    pub fn compile(
        spec: &MaterializeStep,
        name: &str,
        position: usize,
        c: &Compiler<'_>,
    ) -> Result<Self, JobError> {
        Ok(Self {
            name: name.to_string(),
            key: c.optional("materialize.key", spec.key.as_deref())?,
            sink_format: c.sink_format(),
            ns: Namespace::new(position),
            row_key: Vec::with_capacity(64),
            row: Vec::with_capacity(256),
            state_key: Vec::with_capacity(64),
        })
    }

    /// What its expression reads.
    pub fn reads(&self) -> Vars {
        self.key.as_ref().map(Compiled::uses).unwrap_or_default()
    }
}

impl Operator for Materialize {
    #[inline]
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        if let Some(c) = &self.key {
            let vars = record.vars(cx.uses)?;
            record.key = Current::Computed(c.eval(vars)?);
        }
        let Self {
            row_key, row: buf, ..
        } = self;
        let Some(row_key) = encode(&record.key, row_key, SinkFormat::Raw)? else {
            return Err(RecordError::MissingKey {
                step: self.name.clone(),
            }
            .into());
        };
        let (row, format) = match &record.value {
            Current::Raw(None) => {
                // Debezium sends a tombstone after each delete event, for log compaction; the
                // delete event already removed the row.
                if record.format == Format::DebeziumJson {
                    return Ok(());
                }
                (None, record.format)
            }
            Current::Raw(Some(bytes)) => match record.format {
                Format::DebeziumJson => {
                    let change = decode::debezium(bytes)?;
                    let row = match change.op {
                        Op::Delete => None,
                        Op::Create | Op::Update | Op::Read => {
                            change.after.map(|raw| raw.get().as_bytes())
                        }
                    };
                    (row, Format::Json)
                }
                Format::Json | Format::Raw => (Some(*bytes), record.format),
            },
            Current::Computed(_) => {
                let format = match self.sink_format {
                    SinkFormat::Json => Format::Json,
                    SinkFormat::Raw => Format::Raw,
                };
                (encode(&record.value, buf, self.sink_format)?, format)
            }
        };
        self.ns.row_key(&mut self.state_key, row_key);
        match row {
            Some(row) => cx.state.put(&self.state_key, row)?,
            None => cx.state.delete(&self.state_key)?,
        }
        out.push_made(cx, (row_key, row), (format, true), record.event_ms)
    }

    fn namespace(&mut self) -> Option<&mut Namespace> {
        Some(&mut self.ns)
    }
}

#[cfg(test)]
mod tests {
    use crate::state::StateBackend;
    use crate::steps::testing::Harness;

    /// The table's rows, (row key, row).
    fn table(h: &Harness) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        h.state
            .scan_prefix(&[0], &mut |k, v| {
                rows.push((
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
                true
            })
            .unwrap();
        rows
    }

    #[test]
    fn keeps_the_latest_row_and_emits_every_change() {
        let mut h = Harness::new("[{name: t, materialize: {}}]", "debezium-json");
        assert_eq!(
            h.feed("1", Some(br#"{"op":"c","after":{"id":1,"v":1}}"#)),
            [r#"1={"id":1,"v":1}"#]
        );
        h.feed(
            "1",
            Some(br#"{"op":"u","before":{"id":1,"v":1},"after":{"id":1,"v":2}}"#),
        );
        h.feed("2", Some(br#"{"op":"r","after":{"id":2}}"#));
        assert_eq!(
            table(&h),
            [
                ("1".into(), r#"{"id":1,"v":2}"#.into()),
                ("2".into(), r#"{"id":2}"#.into())
            ]
        );
        assert_eq!(
            h.feed("1", Some(br#"{"op":"d","before":{"id":1},"after":null}"#)),
            ["1=(tombstone)"],
            "a delete is emitted as a tombstone"
        );
        assert!(
            h.feed("1", None).is_empty(),
            "Debezium's tombstone after the delete changes nothing"
        );
        assert_eq!(table(&h), [("2".into(), r#"{"id":2}"#.into())]);
    }

    #[test]
    fn a_bad_change_event_or_a_missing_key_is_the_records_error() {
        let mut h = Harness::new("[{name: t, materialize: {}}]", "debezium-json");
        assert_eq!(h.feed("1", Some(b"{oops")), ["error invalid-json at t"]);
        assert_eq!(
            h.feed_unkeyed(br#"{"op":"c","after":{}}"#),
            ["error missing-key at t"]
        );
        assert!(table(&h).is_empty());
    }

    #[test]
    fn the_changes_feed_the_steps_after_it() {
        let mut h = Harness::new(
            "[{name: updates, filter: {expr: \"op == 'u' && after.v > before.v\"}}, \
              {name: t, materialize: {key: 'string(after.id)'}}, \
              {name: shape, map: {value: \"{'id': value.id, 'v10': value.v * 10}\"}}]",
            "debezium-json",
        );
        let event = br#"{"op":"u","before":{"id":1,"v":1},"after":{"id":1,"v":2}}"#;
        assert_eq!(h.feed("x", Some(event)), [r#"1={"id":1,"v10":20}"#]);
        assert_eq!(table(&h).len(), 0, "the table is step 1's");
        assert_eq!(h.entries(&[1]), 1);
    }
}

//! The steps a task applies to each record. Pure logic over a state backend: no Kafka here.
//!
//! This build runs `materialize` (and no steps: copy records through). The other step kinds
//! are refused when the job starts, naming the step, until they are built.

use sluice_crds::v1alpha1::{Format, Step};

use crate::decode::{self, DecodeError, Op};
use crate::job::{Job, JobError};
use crate::keys;
use crate::state::{StateBackend, StateError};

/// A record as the pipeline sees it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` for a Kafka tombstone.
    pub value: Option<&'a [u8]>,
}

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
}

impl RecordError {
    /// Short kind for the `sluice.error.kind` header and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.kind(),
            Self::MissingKey { .. } => "missing-key",
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

#[derive(Clone, Debug)]
enum Kind {
    /// No steps: records pass through unchanged.
    PassThrough,
    /// Upsert table per key.
    Materialize { step: u8, name: String },
}

/// The compiled steps of a job.
#[derive(Clone, Debug)]
pub struct Pipeline {
    kind: Kind,
    format: Format,
    key_buf: Vec<u8>,
}

impl Pipeline {
    /// Compiles the job's steps; names the first step this build cannot run.
    pub fn new(job: &Job) -> Result<Self, JobError> {
        let unsupported = |step: &Step, what: &str| JobError::Unsupported {
            job: job.id(),
            message: format!(
                "step {:?} is a {what} step, which this worker build does not run yet; \
                 supported: materialize (as the only step)",
                step.name
            ),
        };
        let kind = match job.spec.steps.as_slice() {
            [] => Kind::PassThrough,
            [step] if step.materialize.is_some() => {
                if step.materialize.as_ref().is_some_and(|m| m.key.is_some()) {
                    return Err(unsupported(step, "materialize-with-key-expression"));
                }
                Kind::Materialize {
                    step: 0,
                    name: step.name.clone(),
                }
            }
            steps => {
                let step = steps
                    .iter()
                    .find(|s| s.materialize.is_none())
                    .unwrap_or(&steps[0]);
                let what = if step.filter.is_some() {
                    "filter"
                } else if step.map.is_some() {
                    "map"
                } else if step.aggregate.is_some() {
                    "aggregate"
                } else if step.dedupe.is_some() {
                    "dedupe"
                } else {
                    "second materialize"
                };
                return Err(unsupported(step, what));
            }
        };
        Ok(Self {
            kind,
            format: job.spec.source.kafka.format,
            key_buf: Vec::with_capacity(64),
        })
    }

    /// The name of the step a record error happened in, for the dead-letter header.
    pub fn step_name(&self) -> &str {
        match &self.kind {
            Kind::PassThrough => "source",
            Kind::Materialize { name, .. } => name,
        }
    }

    /// Runs one record through the steps, handing every output to `emit`.
    #[inline]
    pub fn process<S: StateBackend>(
        &mut self,
        record: Record<'_>,
        state: &mut S,
        emit: &mut impl FnMut(Output<'_>),
    ) -> Result<(), StepError> {
        match &self.kind {
            Kind::PassThrough => {
                emit(Output {
                    key: record.key,
                    value: record.value,
                });
                Ok(())
            }
            Kind::Materialize { step, name } => {
                let Some(key) = record.key else {
                    return Err(StepError::Record(RecordError::MissingKey {
                        step: name.clone(),
                    }));
                };
                let Some(value) = record.value else {
                    // A Kafka tombstone: Debezium sends one after each delete event, for log
                    // compaction; the delete event already removed the row.
                    if self.format == Format::DebeziumJson {
                        return Ok(());
                    }
                    keys::encode_into(&mut self.key_buf, *step, key);
                    state.delete(&self.key_buf)?;
                    emit(Output {
                        key: Some(key),
                        value: None,
                    });
                    return Ok(());
                };
                let row = match self.format {
                    Format::DebeziumJson => {
                        let change =
                            decode::debezium(value).map_err(|e| StepError::Record(e.into()))?;
                        match change.op {
                            Op::Delete => None,
                            Op::Create | Op::Update | Op::Read => {
                                change.after.map(|raw| raw.get().as_bytes())
                            }
                        }
                    }
                    Format::Json | Format::Raw => Some(value),
                };
                keys::encode_into(&mut self.key_buf, *step, key);
                match row {
                    Some(row) => state.put(&self.key_buf, row)?,
                    None => state.delete(&self.key_buf)?,
                }
                emit(Output {
                    key: Some(key),
                    value: row,
                });
                Ok(())
            }
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
        let job = test_job("[{name: big, filter: {expr: 'true'}}]", "json");
        let err = Pipeline::new(&job).unwrap_err().to_string();
        assert!(err.contains("\"big\" is a filter step"), "{err}");
    }
}

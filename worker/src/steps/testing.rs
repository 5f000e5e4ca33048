//! A chain over the in-memory state backend, for the steps' tests: records in, what reaches
//! the sink (and what is dead-lettered) out, as `key=value` lines.

use std::time::Duration;

use tempfile::TempDir;

use super::{Output, RecordError, Sink, StepError};
use crate::io::InputRecord;
use crate::job::{Job, test_job};
use crate::pipeline::Pipeline;
use crate::state::StateBackend;
use crate::state::memory::MemoryState;

/// A job's chain, its state, and the directory the state lives in.
pub struct Harness {
    pub job: Job,
    pub pipeline: Pipeline,
    pub state: MemoryState,
    dir: TempDir,
    restarts: usize,
}

/// What reached the sink, in order.
#[derive(Default)]
struct Lines(Vec<String>);

fn show(o: Output<'_>) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let value = o.value.map_or("(tombstone)".to_string(), text);
    format!("{}={value}", text(o.key.unwrap_or_default()))
}

impl Sink for Lines {
    fn emit(&mut self, output: Output<'_>) {
        self.0.push(show(output));
    }

    fn dead_letter(&mut self, made: Output<'_>, error: &RecordError, step: &str) {
        self.0.push(format!(
            "dead-letter {} at {step}: {}",
            error.kind(),
            show(made)
        ));
    }
}

fn input<'a>(key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> InputRecord<'a> {
    InputRecord {
        topic: "in",
        partition: 0,
        offset: 0,
        key,
        value,
        timestamp_ms: None,
        headers: None,
    }
}

impl Harness {
    /// The chain of `steps` (YAML) over input in `format`.
    pub fn new(steps: &str, format: &str) -> Self {
        Self::of(test_job(steps, format))
    }

    /// The chain of `steps` over JSON input whose event time is `value.ts`, `ooo_ms` out of
    /// order.
    pub fn timed(steps: &str, ooo_ms: u64) -> Self {
        let mut job = test_job(steps, "json");
        job.spec.event_time = Some(sluice_crds::v1alpha1::EventTime {
            field: Some("ts".into()),
            max_out_of_orderness: Duration::from_millis(ooo_ms).into(),
            idle_timeout: None,
        });
        Self::of(job)
    }

    /// The chain of `job`, over new state.
    pub fn of(job: Job) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut state = <MemoryState as StateBackend>::open(&dir.path().join("live0")).unwrap();
        let mut pipeline = Pipeline::new(&job).unwrap();
        pipeline.restore(&mut state).unwrap();
        Self {
            job,
            pipeline,
            state,
            dir,
            restarts: 0,
        }
    }

    /// Runs one record; what reached the sink, then `error <kind> at <step>` for its error.
    pub fn feed(&mut self, key: &str, value: Option<&[u8]>) -> Vec<String> {
        self.run(input(Some(key.as_bytes()), value), |e, step| {
            format!("error {} at {step}", e.kind())
        })
    }

    /// Runs one record without a key.
    pub fn feed_unkeyed(&mut self, value: &[u8]) -> Vec<String> {
        self.run(input(None, Some(value)), |e, step| {
            format!("error {} at {step}", e.kind())
        })
    }

    /// Runs `(key, ts, amount)` records as `{"k", "ts", "amount"}`; what reached the sink, and
    /// `error <kind> at <ts>` for each record error.
    pub fn orders(&mut self, records: &[(&str, i64, i64)]) -> Vec<String> {
        let mut seen = Vec::new();
        for (key, ts, amount) in records {
            let value = format!(r#"{{"k":"{key}","ts":{ts},"amount":{amount}}}"#);
            let record = input(Some(key.as_bytes()), Some(value.as_bytes()));
            seen.extend(self.run(record, |e, _| format!("error {} at {ts}", e.kind())));
        }
        seen
    }

    /// How many state entries start with `prefix`.
    pub fn entries(&self, prefix: &[u8]) -> usize {
        let mut n = 0;
        self.state
            .scan_prefix(prefix, &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    }

    /// Moves processing time to `now_ms`; what reached the sink.
    pub fn tick(&mut self, now_ms: i64) -> Vec<String> {
        let mut lines = Lines::default();
        self.pipeline
            .tick(now_ms, &mut self.state, &mut lines)
            .unwrap();
        lines.0
    }

    fn run(
        &mut self,
        record: InputRecord<'_>,
        error: impl Fn(&RecordError, &str) -> String,
    ) -> Vec<String> {
        let mut lines = Lines::default();
        match self.pipeline.process(record, &mut self.state, &mut lines) {
            Ok(()) => {}
            Err(StepError::Record(e)) => lines.0.push(error(&e, self.pipeline.step_name())),
            Err(StepError::State(e)) => panic!("{e}"),
        }
        lines.0
    }

    /// Checkpoints the state and starts over from the checkpoint, as a restarted task does,
    /// running `job` (the same job when `None`).
    pub fn restart(&mut self, job: Option<Job>) {
        self.pipeline.save(&mut self.state).unwrap();
        let checkpoint = self.dir.path().join(format!("c{}", self.restarts));
        self.state.checkpoint(&checkpoint).unwrap();
        self.restarts += 1;
        let live = self.dir.path().join(format!("live{}", self.restarts));
        crate::state::live_dir_from_checkpoint(&checkpoint, &live).unwrap();
        self.state = <MemoryState as StateBackend>::open(&live).unwrap();
        if let Some(job) = job {
            self.job = job;
        }
        self.pipeline = Pipeline::new(&self.job).unwrap();
        self.pipeline.restore(&mut self.state).unwrap();
    }
}

/// Runs `value` (key `k`): what reached the sink, or the error's kind and step.
pub fn outcome(h: &mut Harness, value: &[u8]) -> Result<Vec<String>, (String, String)> {
    let mut lines = Lines::default();
    match h
        .pipeline
        .process(input(Some(b"k"), Some(value)), &mut h.state, &mut lines)
    {
        Ok(()) => Ok(lines.0),
        Err(StepError::Record(e)) => Err((e.kind().to_string(), h.pipeline.step_name().into())),
        Err(StepError::State(e)) => panic!("{e}"),
    }
}

//! The chain of steps a task runs: compiled from the job into [`crate::steps`] operators, and
//! driven here, record by record and between batches. Pure logic over a state backend: no
//! Kafka here.
//!
//! A record enters as the input's bytes. When a step keeps time, its event time is read once
//! (`eventTime.field`, or the Kafka timestamp) and the clock sees it first: when the watermark
//! moves, every step in turn fires what it closes (see `steps`' contract for the order). Then
//! the record runs through the steps, and what the last step passes on is encoded for the sink.
//! Between batches, processing time moves the clock on, so idle inputs stop holding it back.
//! The clock and the steps' names are part of the state and of every checkpoint; an edit of
//! the job resets or drops steps' state only as `sluice_core::upgrade` decides.
//!
//! Steps this build cannot run are refused when the job starts, naming the step, by the same
//! check the operator's validation runs (`sluice_core::steps::check`).

use std::time::Duration;

use cel::Value;
use sluice_core::upgrade::{Plan, Verdict};
use sluice_crds::v1alpha1::Format;

pub use crate::steps::{Output, RecordError, Sink, StepError};

use crate::event_time::{self, Clock};
use crate::expr::Vars;
use crate::io::InputRecord;
use crate::job::{Job, JobError};
use crate::state::{StateBackend, StateError};
use crate::steps::record::reads_value;
use crate::steps::{self, Chain, Compiled, Compiler, Cx, Op, Operator, Record, Stage, namespace};

/// Where the segment's event-time clock is kept in the task's state (after every step's ids).
const CLOCK_KEY: &[u8] = &[crate::keys::PIPELINE, b'c', b'l', b'o', b'c', b'k'];

/// The compiled steps of a job.
pub struct Pipeline {
    stages: Vec<Stage>,
    chain: Chain,
    format: Format,
    /// What the steps up to the first record-making step read of the input record.
    entry_uses: Vars,
    /// Event time and watermark, when a step keeps time.
    time: Option<EventTimes>,
    /// The first step that keeps time: event-time errors are its.
    first_timed: usize,
}

/// Event time of input records, and the clock of the chain's one segment.
struct EventTimes {
    /// `value.<eventTime.field>`, or the Kafka timestamp when unset.
    field: Option<Compiled>,
    clock: Clock,
    /// Processing time, ms, set by [`Pipeline::tick`].
    now_ms: i64,
}

impl Pipeline {
    /// Compiles the job's steps: every expression is compiled (an error names the step, the
    /// expression and the position), and the first step this build cannot run is named.
    pub fn new(job: &Job) -> Result<Self, JobError> {
        sluice_core::steps::check(job)?;
        let c = Compiler::new(job);
        let mut stages = Vec::with_capacity(job.spec.steps.len());
        for (index, step) in job.spec.steps.iter().enumerate() {
            stages.push(Stage {
                index,
                op: Op::compile(step, index, &c)?,
                watermark: event_time::NONE,
                uses: Vars::default(),
            });
        }
        let first_timed = stages.iter().position(|s| s.op.keeps_time());
        let spec = job.spec.event_time.as_ref();
        let field = match spec.and_then(|e| e.field.as_deref()) {
            Some(field) if first_timed.is_some() => Some(
                c.at("eventTime")
                    .expr("eventTime.field", &format!("value.{field}"))?,
            ),
            _ => None,
        };
        // A run: the steps that read the same record, up to and with the next one that makes
        // records of its own. Its steps decode what any of them reads, once.
        let mut start = 0;
        for end in 0..stages.len() {
            if stages[end].op.makes_records() || end + 1 == stages.len() {
                let entry = field.iter().filter(|_| start == 0).map(Compiled::uses);
                let uses = stages[start..=end]
                    .iter()
                    .map(|s| s.op.reads())
                    .chain(entry)
                    .fold(Vars::default(), Vars::with);
                stages[start..=end].iter_mut().for_each(|s| s.uses = uses);
                start = end + 1;
            }
        }
        let time = first_timed.map(|_| EventTimes {
            clock: Clock::new(
                &job.spec.source.kafka.topics,
                spec.map_or(Duration::ZERO, |e| e.max_out_of_orderness.into()),
                spec.and_then(|e| e.idle_timeout).map(Into::into),
                now_ms(),
            ),
            field,
            now_ms: now_ms(),
        });
        let names = job.spec.steps.iter().map(|s| s.name.clone()).collect();
        Ok(Self {
            entry_uses: stages.first().map_or(Vars::default(), |s| s.uses),
            stages,
            chain: Chain::new(names, job.spec.sink.kafka.format),
            format: job.spec.source.kafka.format,
            time,
            first_timed: first_timed.unwrap_or(0),
        })
    }

    /// The name of the step the last record error happened in, for the dead-letter header.
    pub fn step_name(&self) -> &str {
        let name = self.chain.failed.and_then(|i| self.chain.names.get(i));
        name.map_or("source", String::as_str)
    }

    /// Late records dropped so far (`lateRecords: drop`), for the `sluice_late_records_total`
    /// metric.
    pub fn late_dropped(&self) -> u64 {
        self.chain.late_dropped
    }

    /// The task's watermark (event time, ms), when a step keeps one.
    pub fn watermark_ms(&self) -> Option<i64> {
        let watermark = self.time.as_ref().map(|t| t.clock.watermark());
        watermark.filter(|w| *w != event_time::NONE)
    }

    /// Applies what an edit of the job does to the restored state (the compatibility check's
    /// plan, which the job's policy allowed): a `reset` step's entries and timers are deleted
    /// (it keeps its id), a `drop`ped step's also its name; a state written before signatures
    /// by other steps loses every step's entries. Runs before [`Self::restore`].
    pub fn upgrade<S: StateBackend>(
        &mut self,
        state: &mut S,
        plan: &Plan,
    ) -> Result<(), StateError> {
        if plan.whole_state.is_some() {
            return namespace::clear_all(state);
        }
        for step in &plan.steps {
            match step.verdict {
                Verdict::Keep => {}
                Verdict::New | Verdict::Reset => namespace::clear(state, &step.name, false)?,
                Verdict::Drop => namespace::clear(state, &step.name, true)?,
            }
        }
        Ok(())
    }

    /// Reads the clock back from the task's restored state, and gives each stateful step the
    /// id its name has there (recording the names a new or older state lacks).
    pub fn restore<S: StateBackend>(&mut self, state: &mut S) -> Result<(), StateError> {
        let mut watermark = event_time::NONE;
        if let Some(time) = &mut self.time {
            if let Some(snapshot) = state.get(CLOCK_KEY)? {
                time.clock.restore(&snapshot);
            }
            watermark = time.clock.watermark();
        }
        let names = &self.chain.names;
        let stateful: Vec<(usize, &str)> = (self.stages.iter_mut())
            .filter_map(|s| s.op.namespace().map(|_| (s.index, names[s.index].as_str())))
            .collect();
        let ids = namespace::assign(state, &stateful)?;
        let mut ids = ids.into_iter();
        for stage in &mut self.stages {
            stage.watermark = watermark;
            if let Some(ns) = stage.op.namespace() {
                ns.restored(ids.next().unwrap_or(ns.id()));
            }
        }
        Ok(())
    }

    /// Before a checkpoint: every step writes what it buffers, then the clock is written.
    pub fn save<S: StateBackend>(&mut self, state: &mut S) -> Result<(), StateError> {
        for stage in &mut self.stages {
            stage.op.before_checkpoint(state)?;
        }
        if let Some(time) = &self.time {
            state.put(CLOCK_KEY, &time.clock.snapshot())?;
        }
        Ok(())
    }

    /// Between batches: moves processing time on to `now_ms`, so idle inputs stop holding the
    /// watermark back, fires what the watermark closes, and runs processing-time hooks.
    pub fn tick<S: StateBackend>(
        &mut self,
        now_ms: i64,
        state: &mut S,
        sink: &mut dyn Sink,
    ) -> Result<(), StepError> {
        let Self {
            stages,
            chain,
            time,
            ..
        } = self;
        chain.failed = None;
        let mut cx = cx(state, chain, sink, now_ms);
        if let Some(time) = time {
            time.now_ms = now_ms;
            let before = time.clock.watermark();
            let after = time.clock.advance(now_ms);
            if after != before {
                steps::advance(stages, after, &mut cx)?;
            }
        }
        steps::processing_time(stages, &mut cx)
    }

    /// Runs one input record through the steps, handing what they pass on to `sink`.
    #[inline]
    pub fn process<S: StateBackend>(
        &mut self,
        input: InputRecord<'_>,
        state: &mut S,
        sink: &mut dyn Sink,
    ) -> Result<(), StepError> {
        let Self {
            stages,
            chain,
            format,
            entry_uses,
            time,
            first_timed,
        } = self;
        chain.failed = None;
        if input.value.is_none() && *format == Format::DebeziumJson && reads_value(*entry_uses) {
            // Debezium sends a tombstone after each delete, for log compaction; the delete
            // event itself carried the change. Skipped, as Flink's debezium-json format does.
            return Ok(());
        }
        // Without a clock, a record's event time is its Kafka timestamp (what made records
        // carry as `timestamp`).
        let mut record = Record::new(input, *format, input.timestamp_ms.unwrap_or(0));
        let mut cx = cx(state, chain, sink, 0);
        if let Some(time) = time {
            cx.now_ms = time.now_ms;
            // Event time is the input record's, read before any step changes it.
            record.event_ms = match time.event_ms(&mut record, *entry_uses) {
                Ok(ms) => ms,
                Err(e) => {
                    cx.chain.failed = Some(*first_timed);
                    return Err(e.into());
                }
            };
            let before = time.clock.watermark();
            let after = time
                .clock
                .observe(input.topic, record.event_ms, time.now_ms);
            if after != before {
                steps::advance(stages, after, &mut cx)?;
            }
        }
        steps::run(stages, &mut record, &mut cx)
    }
}

fn cx<'c, S>(
    state: &'c mut S,
    chain: &'c mut Chain,
    sink: &'c mut dyn Sink,
    now_ms: i64,
) -> Cx<'c, S> {
    Cx {
        state,
        watermark: event_time::NONE,
        now_ms,
        uses: Vars::default(),
        chain,
        sink,
    }
}

impl EventTimes {
    /// The event time of an input record: epoch ms, or an RFC 3339 string.
    fn event_ms(&self, record: &mut Record<'_>, uses: Vars) -> Result<i64, RecordError> {
        let Some(field) = &self.field else {
            return (record.raw.timestamp_ms)
                .ok_or_else(|| RecordError::EventTime("the record has no Kafka timestamp".into()));
        };
        let bad = |why: String| RecordError::EventTime(why);
        match field.eval(record.vars(uses)?)? {
            Value::Int(ms) => Ok(ms),
            Value::UInt(ms) => i64::try_from(ms).map_err(|_| bad(format!("{ms} is out of range"))),
            Value::Float(ms) if ms.is_finite() => Ok(ms as i64),
            Value::Timestamp(t) => Ok(t.timestamp_millis()),
            Value::String(text) => event_time::parse_rfc3339_ms(&text).ok_or_else(|| {
                bad(format!(
                    "{text:?} is neither epoch milliseconds nor RFC 3339"
                ))
            }),
            other => Err(bad(format!(
                "a {} is neither epoch milliseconds nor an RFC 3339 string",
                other.type_of()
            ))),
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

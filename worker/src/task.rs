//! One partition task: take it over, restore its state, then one loop that reads as
//! poll → decode → steps → sink → maybe checkpoint. State and checkpoint I/O, and records in
//! and out through [`TaskInput`] and [`TaskOutput`]; the checkpoint upload runs on the async
//! runtime so the loop only pauses to flush the output and take the local snapshot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::assignment::TaskId;
use crate::checkpoint::descriptor::{CheckpointId, Descriptor, TransactionLabel};
use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::plan::RestorePlan;
use crate::checkpoint::store::{CheckpointStore, StoreError, StoreOptions};
use crate::checkpoint::{self, CheckpointError, Held, Taken, TaskCheckpoints, Writer};
use crate::io::{Connector, DeadLetter, TaskInput, TaskOutput};
use crate::job::Job;
use crate::kafka::KafkaClientError;
use crate::metrics::{DeadLetterLabels, Metrics, PartitionLabels, TaskLabels};
use crate::pipeline::{Output, Pipeline, RecordError, Sink, StepError};
use crate::state::{StateBackend, StateError};

/// Records polled before the loop looks at checkpoints and progress again.
const BATCH: usize = 2048;
/// How long a poll waits for the first record of a batch.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often a task logs its progress and refreshes its lag.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Why a task stopped.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Checkpointing failed (including: another owner took the task).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The checkpoint uploader stopped unexpectedly.
    #[error("the checkpoint uploader of task {task} stopped")]
    CommitterGone { task: TaskId },
}

impl TaskError {
    /// True when no restart can mend the failure: the task stops and says why until someone
    /// changes the job (an offset out of range under `onOffsetOutOfRange: fail`, a checkpoint
    /// whose state the job's edit would reset under `upgrade.stateChanges: refuse`).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Kafka(
                KafkaClientError::OffsetOutOfRange { .. }
                    | KafkaClientError::StartingOffsetOutside { .. }
            ) | Self::Checkpoint(CheckpointError::StateIncompatible { .. })
                | Self::Checkpoint(CheckpointError::SavepointUnusable { .. })
        )
    }

    /// True when another owner took the task: stop it and do not restart it.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Self::Checkpoint(CheckpointError::Fenced { .. })
                | Self::Kafka(KafkaClientError::ProducerFenced { .. })
        )
    }

    /// True when the task's owner runs a newer rollout of the job: leave the task alone.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Checkpoint(CheckpointError::Stale { .. }))
    }

    /// True when the broker refused output records for their content (exactly-once).
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Kafka(KafkaClientError::Refused { .. }))
    }
}

/// What every task of a worker shares.
pub struct TaskEnv {
    /// The job.
    pub job: Arc<Job>,
    /// Checkpoint storage.
    pub store: CheckpointStore,
    /// The job's checkpoint paths.
    pub layout: JobLayout,
    /// Directory on the volume holding every task's state.
    pub state_dir: PathBuf,
    /// Who owns tasks here (pod name, or `local`).
    pub owner: String,
    /// The rollout of the job this worker runs (`SLUICE_ROLLOUT`; 0 when not given): an
    /// owner of a newer one keeps its tasks (see [`Claim`](crate::checkpoint::descriptor::Claim)).
    pub rollout: u64,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The async runtime that runs checkpoint uploads.
    pub runtime: tokio::runtime::Handle,
    /// Set to stop every task after a final checkpoint.
    pub stop: Arc<AtomicBool>,
    /// How many tasks the job has (its input partitions): part of every stateful step's
    /// state signature, since a change moves keys between tasks.
    pub tasks: u32,
}

impl TaskEnv {
    /// The environment of tasks of `job` checkpointing to `checkpoint_storage`, with fresh
    /// metrics and stop flag.
    pub fn new(
        job: Arc<Job>,
        checkpoint_storage: &str,
        state_dir: PathBuf,
        owner: String,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, StoreError> {
        let options = StoreOptions {
            endpoint: job.spec.checkpoint.endpoint.clone(),
            region: job.spec.checkpoint.region.clone(),
            ..Default::default()
        };
        let store = CheckpointStore::open(checkpoint_storage, &options)?;
        let layout = JobLayout::new(store.prefix(), &job.namespace, &job.name);
        Ok(Self {
            job,
            store,
            layout,
            state_dir,
            owner,
            rollout: 0,
            metrics: Arc::default(),
            runtime,
            stop: Arc::default(),
            tasks: 1,
        })
    }
}

struct Committed {
    result: Result<Descriptor, CheckpointError>,
    next_id: CheckpointId,
    elapsed: Duration,
}

/// What the task asks of its checkpoint uploader.
enum Request {
    /// At-least-once: upload, descriptor, HEAD, retention.
    Commit(Taken),
    /// Exactly-once: upload and descriptor only; the task then commits its transaction and
    /// sends [`Request::Publish`].
    Prepare(Taken),
    /// Exactly-once: HEAD and retention, after the transaction committed.
    Publish(Descriptor),
    /// Whether HEAD still carries this owner's epoch.
    CheckOwner,
}

/// What the uploader answers.
enum Reply {
    /// A checkpoint is committed (HEAD moved) or failed.
    Committed(Committed),
    /// A descriptor is written (or not).
    Prepared(Result<Descriptor, CheckpointError>),
    /// The answer to [`Request::CheckOwner`].
    Owner(Result<(), CheckpointError>),
}

/// Where a task's steps put records: the output topic, and the dead-letter topic for the
/// records a step made that a later step refused. The first send error is kept for the loop.
struct TaskSink<'a, O> {
    output: &'a O,
    source: &'a str,
    sent: &'a mut u64,
    error: &'a mut Option<KafkaClientError>,
    env: &'a TaskEnv,
    task: TaskId,
}

impl<O: TaskOutput> Sink for TaskSink<'_, O> {
    #[inline]
    fn emit(&mut self, output: Output<'_>) {
        *self.sent += 1;
        if let Err(e) = self.output.send(output.key, output.value, self.source) {
            self.error.get_or_insert(e);
        }
    }

    fn dead_letter(&mut self, made: Output<'_>, error: &RecordError, step: &str) {
        self.env
            .metrics
            .dead_lettered
            .get_or_create(&DeadLetterLabels {
                task: self.task,
                kind: error.kind().to_string(),
            })
            .inc();
        let record = crate::io::InputRecord {
            topic: "",
            partition: i32::try_from(self.task).unwrap_or(i32::MAX),
            offset: -1,
            key: made.key,
            value: made.value,
            timestamp_ms: None,
            headers: None,
        };
        let reason = DeadLetter {
            kind: error.kind(),
            message: &error.to_string(),
            step,
        };
        if let Err(e) = self.output.dead_letter(&record, &reason, self.source) {
            self.error.get_or_insert(e);
        }
    }
}

/// Runs task `task` until `env.stop` is set (returns after a final checkpoint) or it fails.
/// `connector` opens the task's output, then its input at the restored offsets: Kafka in the
/// worker, memory in the engine benchmark.
/// `held` carries the epochs the task was held at across restarts: a restart takes the task
/// back only from itself, never from an owner that took it meanwhile.
pub fn run<S: StateBackend, C: Connector>(
    env: &TaskEnv,
    task: TaskId,
    status: &crate::http::TaskStatus,
    mut connector: C,
    held: &mut Held,
) -> Result<(), TaskError> {
    let job = &env.job;
    let writer = Writer::of(job, env.tasks);
    let task_dir = env.state_dir.join("tasks").join(task.to_string());
    let live = task_dir.join("live");

    // Fence the previous owner: storage first (HEAD's epoch), then, with exactly-once, the
    // broker (the transactional producer's epoch), which settles its open transaction.
    let mut checkpoints = env.runtime.block_on(TaskCheckpoints::take_over(
        env.store.clone(),
        env.layout.task(task),
        task,
        crate::checkpoint::descriptor::Claim {
            owner: &env.owner,
            rollout: env.rollout,
        },
        usize::try_from(job.spec.checkpoint.retain).unwrap_or(1),
        task_dir.join("checkpoints"),
        held,
    ))?;
    status.holds(checkpoints.epoch());
    let output = connector.output()?;
    let transactional_id = output.transactional_id().map(str::to_string);
    if transactional_id.is_some() {
        // Paused between the two fences, a zombie would fence the new owner's producer with
        // its own; it stops here instead of running on.
        env.runtime.block_on(checkpoints.check_still_owner())?;
        let committed = output.committed_offsets()?;
        env.runtime
            .block_on(checkpoints.adopt_pending(&committed))?;
    }
    let restored = env.runtime.block_on(checkpoints.restore(&live, &writer))?;
    status.restored(match restored.plan {
        RestorePlan::Fresh => "empty".to_string(),
        RestorePlan::Local(_) => "volume".to_string(),
        RestorePlan::Download(_) => "store".to_string(),
        RestorePlan::Savepoint(_) => format!(
            "savepoint {}",
            writer.restore_from.as_deref().unwrap_or_default()
        ),
    });
    if !restored.skipped.is_empty() {
        env.metrics
            .checkpoint_fallbacks
            .get_or_create(&TaskLabels { task })
            .inc();
        let restored_id = restored
            .descriptor
            .as_ref()
            .map_or("none (empty state)".to_string(), |d| d.id.to_string());
        status.decided(
            &env.owner,
            "CheckpointFallback",
            format!(
                "task {task}: checkpoints {:?} could not be restored (see the worker's log); \
                 restored checkpoint {restored_id} and replays the input from there",
                restored.skipped.iter().map(|c| c.0).collect::<Vec<_>>()
            ),
            unix_ms(),
        );
    }
    let mut state = S::open(&live)?;
    let (mut offsets, mut records_in) = restored
        .descriptor
        .as_ref()
        .map(|d| (d.source_offsets.clone(), d.records_in))
        .unwrap_or_default();
    let mut last_checkpoint = restored.descriptor.as_ref().map(|d| (d.id, Instant::now()));
    let mut input = connector.input(&mut offsets)?;
    let mut pipeline = Pipeline::new(job).map_err(|e| KafkaClientError::Topology(e.to_string()))?;
    // What an edit of the job does to the state, as the policy allowed it: steps reset or
    // dropped lose their entries now, before anything runs.
    if let Some(upgrade) = &restored.upgrade {
        pipeline.upgrade(&mut state, upgrade)?;
        if upgrade.loses_state() {
            let message = format!("task {task}: the job's edit {}", upgrade.summary());
            warn!(task, "{message}");
            status.decided(&env.owner, "StateReset", message, unix_ms());
        }
    }
    // The watermark is part of the state: windows resume where the checkpoint left them.
    pipeline.restore(&mut state)?;

    let mut next_id = checkpoints.next_id();
    let epoch = checkpoints.epoch();
    let label = |checkpoint| TransactionLabel {
        task,
        epoch,
        checkpoint,
    };
    output.label_transaction(label(next_id));
    let uploader = Uploader::spawn(env, task, checkpoints, writer);
    status.running();

    let labels = TaskLabels { task };
    let m_in = env.metrics.records_in.get_or_create(&labels).clone();
    let m_out = env.metrics.records_out.get_or_create(&labels).clone();
    let m_pause = env.metrics.checkpoint_pause.get_or_create(&labels).clone();
    let m_late = env.metrics.late_records.get_or_create(&labels).clone();
    let mut late_seen = 0u64;
    let interval: Duration = job.spec.checkpoint.interval.into();
    let mut next_checkpoint = Instant::now() + interval;
    let mut in_flight: Option<CheckpointId> = None;
    // Once stopping: whether the final checkpoint was handed to the uploader.
    let mut final_requested = false;
    let mut source = String::with_capacity(96);
    let mut report = Report::new(records_in);

    // Any failure from here on: if another owner took the task meanwhile, it is lost (drop it,
    // do not take it back by restarting); otherwise the task restarts from its checkpoint.
    let mut process = || -> Result<(), TaskError> {
        loop {
            let stopping = env.stop.load(Ordering::Relaxed);

            // poll → decode → steps → sink
            let mut out = 0u64;
            let polled = if stopping {
                0
            } else {
                input.poll(BATCH, POLL_WAIT, |record| {
                    source_header(&mut source, record.topic, record.partition, record.offset);
                    let mut send_error = None;
                    let mut sink = TaskSink {
                        output: &output,
                        source: &source,
                        sent: &mut out,
                        error: &mut send_error,
                        env,
                        task,
                    };
                    let result = pipeline.process(record, &mut state, &mut sink);
                    if let Some(e) = send_error {
                        return Err(TaskError::from(e));
                    }
                    match result {
                        Ok(()) => {}
                        Err(StepError::Record(bad)) => {
                            env.metrics
                                .dead_lettered
                                .get_or_create(&DeadLetterLabels {
                                    task,
                                    kind: bad.kind().to_string(),
                                })
                                .inc();
                            let reason = DeadLetter {
                                kind: bad.kind(),
                                message: &bad.to_string(),
                                step: pipeline.step_name(),
                            };
                            output.dead_letter(&record, &reason, &source)?;
                        }
                        Err(StepError::State(e)) => return Err(e.into()),
                    }
                    let next = record.offset + 1;
                    match offsets.get_mut(record.topic) {
                        Some(offset) => *offset = next,
                        None => {
                            offsets.insert(record.topic.to_string(), next);
                        }
                    }
                    Ok(())
                })?
            } as u64;
            for skip in input.skips() {
                let labels = PartitionLabels {
                    topic: skip.topic.clone(),
                    partition: task,
                };
                env.metrics.offset_resets.get_or_create(&labels).inc();
                env.metrics
                    .records_skipped
                    .get_or_create(&labels)
                    .inc_by(skip.records());
                status.decided(
                    &env.owner,
                    "OffsetReset",
                    format!(
                        "task {task}: {} partition {task} resumed at its log start {} instead \
                         of offset {} (onOffsetOutOfRange: earliest); {} records given up",
                        skip.topic,
                        skip.to,
                        skip.from,
                        skip.records()
                    ),
                    unix_ms(),
                );
                offsets.insert(skip.topic, skip.to);
            }
            // Processing time moves on between batches: idle inputs stop holding the watermark.
            let mut tick_error = None;
            let mut sink = TaskSink {
                output: &output,
                source: "watermark",
                sent: &mut out,
                error: &mut tick_error,
                env,
                task,
            };
            pipeline
                .tick(unix_ms(), &mut state, &mut sink)
                .map_err(|e| match e {
                    StepError::State(e) => TaskError::State(e),
                    StepError::Record(e) => TaskError::State(StateError::Corrupt {
                        path: live.clone(),
                        message: e.to_string(),
                    }),
                })?;
            if let Some(e) = tick_error {
                return Err(e.into());
            }
            records_in += polled;
            m_in.inc_by(polled);
            m_out.inc_by(out);
            let late = pipeline.late_dropped();
            if late > late_seen {
                m_late.inc_by(late - late_seen);
                late_seen = late;
            }

            // results of checkpoint uploads
            while let Some(done) = uploader.committed()? {
                in_flight = None;
                next_id = next_id.max(done.next_id);
                match done.result {
                    Ok(descriptor) => {
                        env.metrics
                            .checkpoint_commit
                            .get_or_create(&labels)
                            .observe(done.elapsed.as_secs_f64());
                        env.metrics
                            .checkpoint_bytes
                            .get_or_create(&labels)
                            .set(descriptor.state_bytes() as i64);
                        env.metrics
                            .checkpoint_time
                            .get_or_create(&labels)
                            .set(descriptor.created_at_ms / 1000);
                        if transactional_id.is_none() {
                            // Exactly-once commits them in its transactions instead.
                            input.commit(&descriptor.source_offsets);
                        }
                        info!(
                            task,
                            checkpoint = descriptor.id.0,
                            epoch = %descriptor.epoch,
                            commit_ms = done.elapsed.as_millis() as u64,
                            "checkpoint committed"
                        );
                        last_checkpoint = Some((descriptor.id, Instant::now()));
                    }
                    Err(e @ CheckpointError::Fenced { .. }) => return Err(e.into()),
                    Err(e) => {
                        final_requested = false;
                        warn!(task, error = %e, "checkpoint failed; the next one retries");
                    }
                }
            }

            // maybe checkpoint: at most one upload in flight
            let due = if stopping {
                !final_requested
            } else {
                Instant::now() >= next_checkpoint
            };
            if due && in_flight.is_none() {
                let started = Instant::now();
                output.flush()?;
                let id = next_id;
                next_id = id.next();
                pipeline.save(&mut state)?;
                state.checkpoint(&checkpoint::local_dir(&task_dir.join("checkpoints"), id))?;
                let request = Taken {
                    id,
                    source_offsets: offsets.clone(),
                    watermark_ms: pipeline.watermark_ms(),
                    records_in,
                    transactional_id: transactional_id.clone(),
                };
                let transaction = if transactional_id.is_some() {
                    // Exactly-once: output stays paused until the transaction holding it and
                    // its source offsets commits, which happens after the descriptor is written.
                    let descriptor = uploader.prepare(request)?;
                    let committed = output.commit_transaction(&descriptor.source_offsets)?;
                    output.label_transaction(label(next_id));
                    uploader.send(Request::Publish(descriptor))?;
                    if committed { "committed" } else { "empty" }
                } else {
                    uploader.send(Request::Commit(request))?;
                    "none"
                };
                m_pause.observe(started.elapsed().as_secs_f64());
                info!(
                    task,
                    checkpoint = id.0,
                    pause_ms = started.elapsed().as_millis() as u64,
                    records_in,
                    transaction = %transaction,
                    "checkpoint taken"
                );
                in_flight = Some(id);
                final_requested = stopping;
                next_checkpoint = Instant::now() + interval;
            }
            if stopping {
                if final_requested && in_flight.is_none() {
                    info!(task, "task stopped after its final checkpoint");
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }

            if report.due() {
                report.log(task, records_in, last_checkpoint, &input, &offsets, env);
            }
        }
    };
    process().map_err(|e| uploader.fenced_or(e))
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes the `sluice.source` header value of an input record, `topic/partition/offset`, into
/// `header`, reusing its buffer.
#[inline]
pub fn source_header(header: &mut String, topic: &str, partition: i32, offset: i64) {
    header.clear();
    header.push_str(topic);
    header.push('/');
    push_decimal(header, i64::from(partition));
    header.push('/');
    push_decimal(header, offset);
}

/// Appends `n` in decimal, without the formatting machinery (this runs once per record).
fn push_decimal(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// The task's side of its checkpoint uploader, which runs on the async runtime and owns the
/// task's [`TaskCheckpoints`].
struct Uploader {
    task: TaskId,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    replies: mpsc::Receiver<Reply>,
}

impl Uploader {
    fn spawn(
        env: &TaskEnv,
        task: TaskId,
        mut checkpoints: TaskCheckpoints,
        writer: Writer,
    ) -> Self {
        let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (replies, received) = mpsc::channel();
        env.runtime.spawn(async move {
            while let Some(request) = incoming.recv().await {
                let started = Instant::now();
                let reply = match request {
                    Request::Commit(r) => {
                        let result = checkpoints.commit(r, &writer).await;
                        Reply::Committed(Committed {
                            result,
                            next_id: checkpoints.next_id(),
                            elapsed: started.elapsed(),
                        })
                    }
                    Request::Prepare(r) => Reply::Prepared(checkpoints.prepare(r, &writer).await),
                    Request::Publish(descriptor) => {
                        let result = checkpoints.publish(descriptor).await;
                        Reply::Committed(Committed {
                            result,
                            next_id: checkpoints.next_id(),
                            elapsed: started.elapsed(),
                        })
                    }
                    Request::CheckOwner => Reply::Owner(checkpoints.check_still_owner().await),
                };
                let fenced = matches!(
                    &reply,
                    Reply::Committed(Committed {
                        result: Err(CheckpointError::Fenced { .. }),
                        ..
                    }) | Reply::Prepared(Err(CheckpointError::Fenced { .. }))
                        | Reply::Owner(Err(CheckpointError::Fenced { .. }))
                );
                if replies.send(reply).is_err() || fenced {
                    break;
                }
            }
        });
        Self {
            task,
            requests,
            replies: received,
        }
    }

    fn send(&self, request: Request) -> Result<(), TaskError> {
        self.requests
            .send(request)
            .map_err(|_| TaskError::CommitterGone { task: self.task })
    }

    fn wait(&self) -> Result<Reply, TaskError> {
        self.replies
            .recv()
            .map_err(|_| TaskError::CommitterGone { task: self.task })
    }

    /// A finished checkpoint, if one is ready.
    fn committed(&self) -> Result<Option<Committed>, TaskError> {
        match self.replies.try_recv() {
            Ok(Reply::Committed(done)) => Ok(Some(done)),
            Ok(_) => Err(TaskError::CommitterGone { task: self.task }),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => {
                Err(TaskError::CommitterGone { task: self.task })
            }
        }
    }

    /// Exactly-once: uploads the checkpoint and writes its descriptor; waits for it.
    fn prepare(&self, request: Taken) -> Result<Descriptor, TaskError> {
        self.send(Request::Prepare(request))?;
        match self.wait()? {
            Reply::Prepared(result) => Ok(result?),
            _ => Err(TaskError::CommitterGone { task: self.task }),
        }
    }

    /// After a failure: [`CheckpointError::Fenced`] when another owner took the task (a
    /// fenced producer may see only a timeout or undelivered records), otherwise `error`.
    fn fenced_or(&self, error: TaskError) -> TaskError {
        if error.is_fenced() {
            return error;
        }
        // Replies to requests sent earlier come first, and a fenced one answers as well. The
        // uploader stops after a fenced reply; then the send fails, but its replies are still
        // in the channel until it reads as disconnected.
        let _ = self.send(Request::CheckOwner);
        loop {
            match self.wait() {
                Ok(
                    Reply::Owner(Err(e @ CheckpointError::Fenced { .. }))
                    | Reply::Prepared(Err(e @ CheckpointError::Fenced { .. }))
                    | Reply::Committed(Committed {
                        result: Err(e @ CheckpointError::Fenced { .. }),
                        ..
                    }),
                ) => return e.into(),
                Ok(Reply::Owner(_)) | Err(_) => return error,
                Ok(_) => {}
            }
        }
    }
}

/// Periodic progress of a task: rate, lag, last checkpoint.
struct Report {
    at: Instant,
    records: u64,
}

impl Report {
    fn new(records: u64) -> Self {
        Self {
            at: Instant::now(),
            records,
        }
    }

    fn due(&self) -> bool {
        self.at.elapsed() >= REPORT_EVERY
    }

    fn log(
        &mut self,
        task: TaskId,
        records_in: u64,
        last_checkpoint: Option<(CheckpointId, Instant)>,
        input: &impl TaskInput,
        offsets: &BTreeMap<String, i64>,
        env: &TaskEnv,
    ) {
        let rate = (records_in - self.records) as f64 / self.at.elapsed().as_secs_f64();
        let mut lag = 0i64;
        for topic in &env.job.spec.source.kafka.topics {
            if let Some(topic_lag) = input.lag(topic, offsets.get(topic).copied()) {
                lag += topic_lag;
                env.metrics
                    .lag
                    .get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: task,
                    })
                    .set(topic_lag);
            }
        }
        let (checkpoint, age_s) =
            last_checkpoint.map_or((0, -1), |(id, at)| (id.0, at.elapsed().as_secs() as i64));
        info!(
            task,
            records_per_s = rate.round() as u64,
            records_in,
            lag,
            checkpoint,
            checkpoint_age_s = age_s,
            "progress"
        );
        *self = Self::new(records_in);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::io::{MemoryConnector, MemoryOutput, MemoryPartition};
    use crate::job::test_job;
    use crate::state::memory::MemoryState;

    /// Runs task 0 over `records` until `expected` records were handed over and the task
    /// had time for a few more polls, then stops it. Returns (records out, records dead-lettered).
    fn run_until(env: &TaskEnv, records: &Arc<MemoryPartition>, expected: u64) -> (u64, u64) {
        env.stop.store(false, Ordering::Relaxed);
        let handed = Arc::new(AtomicU64::new(0));
        let status = crate::http::TaskStatus::new(0);
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                let output = MemoryOutput::default();
                let connector = MemoryConnector {
                    topic: "in",
                    partition: 0,
                    records: records.clone(),
                    handed: handed.clone(),
                    output: &output,
                };
                run::<MemoryState, _>(env, 0, &status, connector, &mut Held::default()).unwrap();
                (output.records.get(), output.dead_lettered.get())
            });
            let deadline = Instant::now() + Duration::from_secs(30);
            while !(status.state() == crate::http::TaskState::Running
                && handed.load(Ordering::Relaxed) >= expected)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(POLL_WAIT * 3);
            env.stop.store(true, Ordering::Relaxed);
            worker.join().unwrap()
        })
    }

    #[test]
    fn the_source_header_names_topic_partition_and_offset() {
        let mut header = String::from("left over");
        for (partition, offset, want) in [
            (0, 0, "orders/0/0"),
            (11, 9_876_543_210, "orders/11/9876543210"),
            (3, i64::MAX, "orders/3/9223372036854775807"),
            (-1, -1001, "orders/-1/-1001"),
        ] {
            source_header(&mut header, "orders", partition, offset);
            assert_eq!(header, want);
        }
    }

    #[test]
    fn the_loop_processes_every_record_and_a_restart_resumes_after_the_final_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let job = Arc::new(test_job("[{name: t, materialize: {}}]", "debezium-json"));
        let env = TaskEnv::new(
            job,
            &format!("file://{}", dir.path().join("store").display()),
            dir.path().join("volume"),
            "test".into(),
            runtime.handle().clone(),
        )
        .unwrap();
        let mut records = MemoryPartition::default();
        for i in 0..5000 {
            let key = format!("{}", i % 7);
            let value = if i == 1234 {
                "{not json".to_string()
            } else {
                format!(r#"{{"op":"u","after":{{"id":{},"n":{i}}}}}"#, i % 7)
            };
            records.push(Some(key.as_bytes()), Some(value.as_bytes()));
        }
        let records = Arc::new(records);

        assert_eq!(run_until(&env, &records, 5000), (4999, 1));
        let head = runtime
            .block_on(env.store.read_head(&env.layout.task(0)))
            .unwrap();
        let id = head.unwrap().0.checkpoint.unwrap();
        let descriptor = runtime
            .block_on(env.store.read_descriptor(&env.layout.task(0), id))
            .unwrap();
        assert_eq!(
            descriptor.source_offsets,
            BTreeMap::from([("in".into(), 5000)])
        );
        assert_eq!(descriptor.records_in, 5000);

        assert_eq!(
            run_until(&env, &records, 0),
            (0, 0),
            "restarted from the final checkpoint, nothing is processed again"
        );
    }

    #[test]
    fn an_edit_keeps_state_refuses_a_reset_under_refuse_and_resets_under_reset() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let env = |steps: &str| {
            let mut job = test_job(steps, "json");
            job.spec.event_time = Some(
                serde_json::from_value(
                    serde_json::json!({"field": "ts", "maxOutOfOrderness": "0s"}),
                )
                .unwrap(),
            );
            TaskEnv::new(
                Arc::new(job),
                &format!("file://{}", dir.path().join("store").display()),
                dir.path().join("volume"),
                "test".into(),
                runtime.handle().clone(),
            )
            .unwrap()
        };
        let records = |n: u64| {
            let mut records = MemoryPartition::default();
            for i in 0..n {
                let value = format!(r#"{{"id":{},"k":{},"ts":{}}}"#, i % 10, i % 4, 1000 + i);
                records.push(None, Some(value.as_bytes()));
            }
            Arc::new(records)
        };
        let once = "[{name: once, dedupe: {key: value.id, ttl: 1h}}]";
        assert_eq!(run_until(&env(once), &records(100), 100), (10, 0));
        // A longer ttl is outside the signature: the seen ids are kept.
        let longer =
            "[{name: f, filter: {expr: 'true'}}, {name: once, dedupe: {key: value.id, ttl: 2h}}]";
        assert_eq!(run_until(&env(longer), &records(200), 100), (0, 0));
        // Another key would reset it: refused, for good, and HEAD stays where it was.
        let head = |env: &TaskEnv| {
            let head = runtime.block_on(env.store.read_head(&env.layout.task(0)));
            head.unwrap().unwrap().0.checkpoint
        };
        let rekeyed = "[{name: once, dedupe: {key: value.k, ttl: 1h}}]";
        let refused = env(rekeyed);
        let before = head(&refused);
        let output = MemoryOutput::default();
        let connector = MemoryConnector {
            topic: "in",
            partition: 0,
            records: records(300),
            handed: Arc::default(),
            output: &output,
        };
        let status = crate::http::TaskStatus::new(0);
        let error = run::<MemoryState, _>(&refused, 0, &status, connector, &mut Held::default())
            .unwrap_err();
        assert!(error.is_permanent(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("resets dedupe `once` (key: value.id → value.k)"),
            "{message}"
        );
        assert_eq!(head(&refused), before);
        // With consent the dedupe starts empty: the four keys of the records after the
        // checkpoint pass once each.
        let mut consented = env(rekeyed);
        let mut job = (*consented.job).clone();
        job.spec.upgrade = Some(sluice_crds::v1alpha1::Upgrade {
            state_changes: sluice_crds::v1alpha1::StateChanges::Reset,
            ..Default::default()
        });
        consented.job = Arc::new(job);
        assert_eq!(run_until(&consented, &records(300), 100), (4, 0));
    }
}

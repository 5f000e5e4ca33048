//! One partition task: take it over, restore its state, then one loop that reads as
//! poll → decode → steps → sink → maybe checkpoint. Kafka, state and checkpoint I/O; the
//! checkpoint upload runs on the async runtime so the loop only pauses to flush the sink and
//! take the local snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::assignment::TaskId;
use crate::checkpoint::descriptor::{CheckpointId, Descriptor};
use crate::checkpoint::layout::JobLayout;
use crate::checkpoint::store::CheckpointStore;
use crate::checkpoint::{self, CheckpointError, TaskCheckpoints};
use crate::job::Job;
use crate::kafka::{self, KafkaClientError, Sink, Source};
use crate::metrics::{DeadLetterLabels, Metrics, PartitionLabels, TaskLabels};
use crate::pipeline::{Pipeline, Record, StepError};
use crate::state::{StateBackend, StateError};

/// Records polled before the loop looks at checkpoints and progress again.
const BATCH: usize = 2048;
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
    /// True when another owner took the task: stop it and do not restart it.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Self::Checkpoint(CheckpointError::Fenced { .. }))
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
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The async runtime that runs checkpoint uploads.
    pub runtime: tokio::runtime::Handle,
    /// Set to stop every task after a final checkpoint.
    pub stop: Arc<AtomicBool>,
}

struct Committed {
    result: Result<Descriptor, CheckpointError>,
    next_id: CheckpointId,
    elapsed: Duration,
}

struct CommitRequest {
    id: CheckpointId,
    offsets: BTreeMap<String, i64>,
    records_in: u64,
}

/// Runs task `task` until `env.stop` is set (returns after a final checkpoint) or it fails.
pub fn run<S: StateBackend>(
    env: &TaskEnv,
    task: TaskId,
    ready: &AtomicBool,
) -> Result<(), TaskError> {
    let job = &env.job;
    let fingerprint = job.pipeline_fingerprint();
    let task_dir = env.state_dir.join("tasks").join(task.to_string());
    let live = task_dir.join("live");

    let mut checkpoints = env.runtime.block_on(TaskCheckpoints::take_over(
        env.store.clone(),
        env.layout.task(task),
        task,
        &env.owner,
        usize::try_from(job.spec.checkpoint.retain).unwrap_or(1),
        task_dir.join("checkpoints"),
    ))?;
    let restored = env
        .runtime
        .block_on(checkpoints.restore(&live, &fingerprint))?;
    let mut state = S::open(&live)?;
    let (mut offsets, mut records_in) = restored
        .descriptor
        .as_ref()
        .map(|d| (d.source_offsets.clone(), d.records_in))
        .unwrap_or_default();
    let mut last_checkpoint = restored.descriptor.as_ref().map(|d| (d.id, Instant::now()));
    let consumer = kafka::task_consumer(job, task, &offsets)?;
    let sink = Sink::new(job, task)?;
    let mut pipeline = Pipeline::new(job).map_err(|e| KafkaClientError::Topology(e.to_string()))?;

    let mut next_id = checkpoints.next_id();
    let (requests, committer) = spawn_committer(env, checkpoints, fingerprint);
    ready.store(true, Ordering::Relaxed);

    let labels = TaskLabels { task };
    let m_in = env.metrics.records_in.get_or_create(&labels).clone();
    let m_out = env.metrics.records_out.get_or_create(&labels).clone();
    let m_pause = env.metrics.checkpoint_pause.get_or_create(&labels).clone();
    let interval: Duration = job.spec.checkpoint.interval.into();
    let mut next_checkpoint = Instant::now() + interval;
    let mut in_flight: Option<CheckpointId> = None;
    // Once stopping: whether the final checkpoint was handed to the uploader.
    let mut final_requested = false;
    let mut header = String::with_capacity(96);
    let mut report = Report::new(records_in);

    loop {
        let stopping = env.stop.load(Ordering::Relaxed);

        // poll → decode → steps → sink
        let mut polled = 0u64;
        let mut out = 0u64;
        while !stopping && polled < BATCH as u64 {
            let timeout = if polled == 0 {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let Some(message) = consumer.poll(timeout) else {
                break;
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    warn!(task, error = %e, "consumer error; continuing");
                    break;
                }
            };
            polled += 1;
            header.clear();
            let _ = write!(
                header,
                "{}/{}/{}",
                message.topic(),
                message.partition(),
                message.offset()
            );
            let source = Source { header: &header };
            let record = Record {
                key: message.key(),
                value: message.payload(),
            };
            let mut send_error = None;
            let result = pipeline.process(record, &mut state, &mut |output| {
                out += 1;
                if let Err(e) = sink.send(output.key, output.value, &source) {
                    send_error.get_or_insert(e);
                }
            });
            if let Some(e) = send_error {
                return Err(e.into());
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
                    sink.dead_letter(
                        record.key,
                        record.value,
                        bad.kind(),
                        &bad.to_string(),
                        pipeline.step_name(),
                        &source,
                    )?;
                }
                Err(StepError::State(e)) => return Err(e.into()),
            }
            let next = message.offset() + 1;
            match offsets.get_mut(message.topic()) {
                Some(offset) => *offset = next,
                None => {
                    offsets.insert(message.topic().to_string(), next);
                }
            }
        }
        records_in += polled;
        m_in.inc_by(polled);
        m_out.inc_by(out);

        // results of checkpoint uploads
        while let Ok(done) = committer.try_recv() {
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
                    commit_group_offsets(&consumer, task, &descriptor.source_offsets);
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
            sink.flush()?;
            let id = next_id;
            next_id = id.next();
            state.checkpoint(&checkpoint::local_dir(&task_dir.join("checkpoints"), id))?;
            m_pause.observe(started.elapsed().as_secs_f64());
            info!(
                task,
                checkpoint = id.0,
                pause_ms = started.elapsed().as_millis() as u64,
                records_in,
                "checkpoint taken"
            );
            if requests
                .send(CommitRequest {
                    id,
                    offsets: offsets.clone(),
                    records_in,
                })
                .is_err()
            {
                return Err(TaskError::CommitterGone { task });
            }
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
            report.log(
                task,
                records_in,
                last_checkpoint,
                &consumer,
                &offsets,
                env,
                &job.spec.source.kafka.topics,
            );
        }
    }
}

fn spawn_committer(
    env: &TaskEnv,
    mut checkpoints: TaskCheckpoints,
    fingerprint: String,
) -> (
    tokio::sync::mpsc::UnboundedSender<CommitRequest>,
    mpsc::Receiver<Committed>,
) {
    let (requests, mut incoming) = tokio::sync::mpsc::unbounded_channel::<CommitRequest>();
    let (done, results) = mpsc::channel();
    env.runtime.spawn(async move {
        while let Some(request) = incoming.recv().await {
            let started = Instant::now();
            let result = checkpoints
                .commit(
                    request.id,
                    request.offsets,
                    None,
                    request.records_in,
                    &fingerprint,
                )
                .await;
            let fenced = matches!(result, Err(CheckpointError::Fenced { .. }));
            let committed = Committed {
                result,
                next_id: checkpoints.next_id(),
                elapsed: started.elapsed(),
            };
            if done.send(committed).is_err() || fenced {
                break;
            }
        }
    });
    (requests, results)
}

/// Commits the checkpointed offsets to the consumer group, so lag tools see progress.
fn commit_group_offsets(consumer: &BaseConsumer, task: TaskId, offsets: &BTreeMap<String, i64>) {
    let mut list = TopicPartitionList::new();
    for (topic, next) in offsets {
        if list
            .add_partition_offset(topic, task as i32, Offset::Offset(*next))
            .is_err()
        {
            return;
        }
    }
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        warn!(task, error = %e, "committing group offsets failed");
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

    #[allow(clippy::too_many_arguments)]
    fn log(
        &mut self,
        task: TaskId,
        records_in: u64,
        last_checkpoint: Option<(CheckpointId, Instant)>,
        consumer: &BaseConsumer,
        offsets: &BTreeMap<String, i64>,
        env: &TaskEnv,
        topics: &[String],
    ) {
        let rate = (records_in - self.records) as f64 / self.at.elapsed().as_secs_f64();
        let mut lag = 0i64;
        for topic in topics {
            if let Ok((low, high)) =
                consumer.fetch_watermarks(topic, task as i32, Duration::from_secs(2))
            {
                let next = offsets.get(topic).copied().unwrap_or(low);
                let topic_lag = (high - next).max(0);
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

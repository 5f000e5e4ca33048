//! A worker process: owns tasks `p` with `p mod N == ordinal`, runs each on its own thread,
//! restarts a failed task from its last checkpoint, drops a task another owner took, serves
//! `/metrics`, `/healthz` and `/readyz`, and on SIGTERM stops every task after a final checkpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::assignment::{self, TaskId};
use crate::checkpoint::store::StoreError;
use crate::http::{TaskState, TaskStatus};
use crate::job::{Job, JobError};
use crate::kafka::{self, KafkaClientError};
use crate::metrics::TaskLabels;
use crate::state::StateBackend;
use crate::task::{self, TaskEnv};

/// Failures that keep a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job cannot run.
    #[error(transparent)]
    Job(#[from] JobError),
    /// The checkpoint store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka cannot be used.
    #[error(transparent)]
    Kafka(#[from] KafkaClientError),
    /// The process failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Which state backend tasks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// RocksDB on the volume.
    Rocksdb,
    /// In memory, checkpointed as one file (tests and benchmarks).
    Memory,
}

/// Everything a worker needs to run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The job.
    pub job: Job,
    /// This worker's ordinal.
    pub ordinal: u32,
    /// Number of workers.
    pub parallelism: u32,
    /// Directory on the volume for task state.
    pub state_dir: PathBuf,
    /// Owner name written to HEAD.
    pub owner: String,
    /// The rollout of the job this worker runs (the operator's `SLUICE_ROLLOUT`; 0 when not
    /// given).
    pub rollout: u64,
    /// Address of the HTTP endpoints.
    pub http_addr: SocketAddr,
    /// Checkpoint storage URI (the spec's, or a local override).
    pub checkpoint_storage: String,
    /// State backend.
    pub backend: Backend,
}

/// Which of the first `partitions` tasks have a checkpoint (a HEAD that names one: a
/// take-over writes a HEAD before the task's first checkpoint).
async fn checkpointed(env: &TaskEnv, partitions: u32) -> Result<Vec<bool>, WorkerError> {
    let mut checkpointed = Vec::with_capacity(partitions as usize);
    for task in 0..partitions {
        let head = env.store.read_head(&env.layout.task(task)).await?;
        checkpointed.push(head.is_some_and(|(h, _)| h.checkpoint.is_some()));
    }
    Ok(checkpointed)
}

/// Runs the worker until SIGTERM/SIGINT (final checkpoints) or until every task was taken over.
pub fn run(config: WorkerConfig) -> Result<(), WorkerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("sluice-io")
        .build()?;
    // Listen for SIGTERM before anything slow (broker metadata, topic creation): a pod can be
    // told to stop at any moment of its start-up, and the default action would kill it.
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(listen_for_stop(stop.clone()));
    info!("SIGTERM now stops the worker cleanly");
    let job = Arc::new(config.job.clone());
    // Refuse steps this build cannot run before touching anything.
    crate::pipeline::Pipeline::new(&job)?;
    // The operator pins the partitions the job reads; a worker started after partitions were
    // added reads the same ones as its peers until the job is rolled onto more. Topics that
    // grew unevenly still have the pinned ones, so co-partitioning is checked against those.
    let partitions = match job.partitions {
        Some(pinned) => {
            let counts = kafka::source_partition_counts(&kafka::metadata_consumer(&job)?, &job)?;
            let fewest = counts.iter().map(|(_, n)| *n).min().unwrap_or(0);
            if fewest < pinned.read {
                return Err(KafkaClientError::Topology(format!(
                    "the source topics have fewer partitions than the {} the job was rolled out \
                     onto ({counts:?}): partitions cannot be removed from a Kafka topic, so one \
                     was deleted and created again (or does not exist), and the checkpoints no \
                     longer match its offsets",
                    pinned.read
                ))
                .into());
            }
            let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
            if most > pinned.read {
                warn!(
                    partitions = ?counts,
                    read = pinned.read,
                    "the source topics have more partitions than the job reads: those from {} on \
                     are not read until the job adopts them (spec.source.kafka.onNewPartitions)",
                    pinned.read
                );
            }
            pinned.read
        }
        None => kafka::source_partitions(&job)?,
    };
    let base = TaskEnv::new(
        job.clone(),
        &config.checkpoint_storage,
        config.state_dir.clone(),
        config.owner.clone(),
        runtime.handle().clone(),
    )?;
    // Without pinned partitions (`sluice-worker local`, or a job file from an operator that
    // pinned none), what an earlier run read is not written down: see
    // `Partitions::from_checkpoints`. Every partition the topics have now is read.
    let job = match job.partitions {
        Some(_) => job,
        None => {
            let checkpointed = runtime.block_on(checkpointed(&base, partitions))?;
            let added_from = sluice_core::job::Partitions::from_checkpoints(&checkpointed)
                .map_or(partitions, |p| p.added_from);
            if added_from < partitions {
                warn!(
                    partitions,
                    added_from,
                    "task {added_from} (of {partitions}) has no checkpoint while another task \
                     has one: taking the partitions of tasks without a checkpoint from it on \
                     as added while the job ran and reading them from their earliest offset"
                );
            }
            Arc::new(Job {
                partitions: Some(sluice_core::job::Partitions {
                    read: partitions,
                    added_from,
                }),
                ..(*job).clone()
            })
        }
    };
    let env = Arc::new(TaskEnv {
        job: job.clone(),
        stop: stop.clone(),
        rollout: config.rollout,
        tasks: partitions,
        ..base
    });
    // Fencing rests on conditional writes: refuse a store that does not honour them.
    runtime.block_on(
        env.store
            .check_conditional_writes(&env.layout.probe(&env.owner)),
    )?;
    let sink_topics = Arc::new(runtime.block_on(kafka::ensure_sink_topics(&job, partitions))?);
    let tasks = assignment::tasks_of(config.ordinal, config.parallelism, partitions);
    info!(
        job = %job.id(), ordinal = config.ordinal, parallelism = config.parallelism,
        partitions, tasks = ?tasks, storage = %config.checkpoint_storage, "worker starting"
    );

    let statuses: Arc<Vec<TaskStatus>> =
        Arc::new(tasks.iter().map(|&t| TaskStatus::new(t)).collect());

    let listener = runtime.block_on(tokio::net::TcpListener::bind(config.http_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    runtime.spawn(crate::http::serve(
        listener,
        env.metrics.clone(),
        statuses.clone(),
    ));
    runtime.spawn(report_tasks(env.clone(), statuses.clone()));
    spawn_partition_discovery(&job, partitions, env.metrics.clone(), stop.clone());
    if stop.load(Ordering::Relaxed) {
        info!("stopped before any task started");
        return Ok(());
    }

    let threads: Vec<_> = tasks
        .iter()
        .enumerate()
        .map(|(i, &task)| {
            let env = env.clone();
            let statuses = statuses.clone();
            let sink_topics = sink_topics.clone();
            let backend = config.backend;
            std::thread::Builder::new()
                .name(format!("task-{task}"))
                .spawn(move || match backend {
                    Backend::Rocksdb => supervise::<crate::state::rocks::RocksState>(
                        &env,
                        task,
                        &statuses[i],
                        &sink_topics,
                    ),
                    Backend::Memory => supervise::<crate::state::memory::MemoryState>(
                        &env,
                        task,
                        &statuses[i],
                        &sink_topics,
                    ),
                })
        })
        .collect::<Result<_, _>>()?;
    for thread in threads {
        if thread.join().is_err() {
            error!("a task thread panicked");
        }
    }
    // A task that failed for good stays visible in /readyz until the pod is stopped (a job
    // change restarts it), as does a stale pod's until it is replaced: exiting would only
    // restart the pod into the same state.
    if statuses
        .iter()
        .any(|s| matches!(s.state(), TaskState::Failed | TaskState::Stale))
    {
        warn!("a task failed or is left to a newer rollout; serving /readyz until told to stop");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    info!("worker stopped");
    Ok(())
}

/// Runs a task, restarting it from its checkpoint after failures, until it stops or is taken over.
fn supervise<S: StateBackend>(
    env: &TaskEnv,
    task: TaskId,
    status: &TaskStatus,
    sink_topics: &Arc<kafka::SinkTopics>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut held = crate::checkpoint::Held::default();
    let rejections = kafka::Rejections::default();
    // Restarts in a row because the broker refused output (exactly-once).
    let mut refusals = 0;
    const MAX_REFUSALS: u32 = 5;
    loop {
        let connector = kafka::KafkaConnector {
            job: env.job.clone(),
            task,
            topics: sink_topics.clone(),
            metrics: env.metrics.clone(),
            rejections: rejections.clone(),
        };
        match task::run::<S, _>(env, task, status, connector, &mut held) {
            Ok(()) => return,
            Err(e) if e.is_fenced() => {
                warn!(task, error = %e, "task taken over by another owner; dropping it");
                env.metrics
                    .tasks_fenced
                    .get_or_create(&TaskLabels { task })
                    .set(1);
                status.set(TaskState::Fenced, e.to_string());
                return;
            }
            Err(e) if e.is_stale() => {
                // Left alone, but looked at again now and then: should the newer owner go
                // away (a rollback), the task is not orphaned.
                warn!(task, error = %e, "leaving the task to its owner, which runs a newer rollout");
                status.set(TaskState::Stale, e.to_string());
                if sleep_unless_stopped(env, Duration::from_secs(30)) {
                    return;
                }
            }
            Err(e) if e.is_permanent() => {
                error!(task, error = %e, "task failed; it stays stopped until the job is changed");
                status.set(TaskState::Failed, e.to_string());
                return;
            }
            Err(e) if e.is_refused() && refusals >= MAX_REFUSALS => {
                // The refused records were not reproduced by the replay (output that depends
                // on processing time): restarting would go on for ever.
                error!(task, error = %e, "task failed; it stays stopped until the job is changed");
                status.set(
                    TaskState::Failed,
                    format!(
                        "{e}; the replay met {MAX_REFUSALS} refusals in a row, so the refused \
                         records are not reproduced: see the worker's log for their sources, \
                         then fix the output or the topic's limits and restart the pod"
                    ),
                );
                return;
            }
            Err(e) => {
                refusals = if e.is_refused() { refusals + 1 } else { 0 };
                status.set(TaskState::Restarting, e.to_string());
                error!(task, error = %e, backoff_ms = backoff.as_millis() as u64, "task failed; restarting from its last checkpoint");
                env.metrics
                    .task_restarts
                    .get_or_create(&TaskLabels { task })
                    .inc();
                if env.stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sleeps `duration` unless the worker is told to stop first; true when it is.
fn sleep_unless_stopped(env: &TaskEnv, duration: Duration) -> bool {
    let until = std::time::Instant::now() + duration;
    while std::time::Instant::now() < until {
        if env.stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    env.stop.load(Ordering::Relaxed)
}

/// Writes each task's report for the operator when its state changed or it made a decision,
/// checking every second, and again every [`REPORT_REFRESH`] (an old owner that did not yet
/// know it lost the task may have overwritten it); a write that fails is tried again at the
/// next check.
async fn report_tasks(env: Arc<TaskEnv>, statuses: Arc<Vec<TaskStatus>>) {
    const REPORT_REFRESH: u64 = 30;
    let mut written = vec![0; statuses.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for round in 1u64.. {
        tick.tick().await;
        let refresh = round.is_multiple_of(REPORT_REFRESH);
        for (status, written) in statuses.iter().zip(written.iter_mut()) {
            let version = status.version();
            if version == *written && !refresh {
                continue;
            }
            let Some(report) = status.report(&env.owner, crate::task::unix_ms()) else {
                *written = version;
                continue;
            };
            match env
                .store
                .write_report(&env.layout.task(report.task), &report)
                .await
            {
                Ok(()) => *written = version,
                Err(e) => warn!(task = report.task, error = %e, "cannot write the task's report"),
            }
        }
    }
}

/// Asks the brokers every `spec.source.kafka.partitionDiscoveryInterval` how many partitions
/// the source topics have, while the worker runs: the counts go to `sluice_source_partitions`
/// and, beyond the `read` partitions the job reads, `sluice_source_partitions_unread`; a change
/// is logged once. Reading them is the operator's decision (`onNewPartitions`), which rolls
/// the workers; locally, restarting the worker reads them.
fn spawn_partition_discovery(
    job: &Arc<Job>,
    read: u32,
    metrics: Arc<crate::metrics::Metrics>,
    stop: Arc<AtomicBool>,
) {
    let job = job.clone();
    let every: Duration = job.spec.source.kafka.partition_discovery_interval.into();
    let spawned = std::thread::Builder::new()
        .name("partitions".into())
        .spawn(move || {
            let mut consumer = None;
            let mut seen: BTreeMap<String, u32> = BTreeMap::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200).min(every));
                    continue;
                }
                next = Instant::now() + every;
                if consumer.is_none() {
                    consumer = kafka::metadata_consumer(&job)
                        .map_err(|e| warn!(error = %e, "partition discovery: no metadata client"))
                        .ok();
                }
                let Some(client) = &consumer else { continue };
                let counts = match kafka::source_partition_counts(client, &job) {
                    Ok(counts) => counts,
                    Err(e) => {
                        warn!(error = %e, "partition discovery: the brokers did not answer");
                        continue;
                    }
                };
                for (topic, n) in counts {
                    let labels = crate::metrics::TopicLabels {
                        topic: topic.clone(),
                    };
                    metrics.source_partitions.get_or_create(&labels).set(n.into());
                    metrics
                        .source_partitions_unread
                        .get_or_create(&labels)
                        .set(n.saturating_sub(read).into());
                    let before = seen.insert(topic.clone(), n);
                    if before.is_some_and(|b| b != n) || (before.is_none() && n != read) {
                        warn!(
                            topic, partitions = n, read,
                            "partition discovery: the topic has {n} partitions, the job reads {read}"
                        );
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start partition discovery");
    }
}

/// Registers the SIGTERM/SIGINT handlers now and sets `stop` when one arrives.
async fn listen_for_stop(stop: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot listen for signals; stop with SIGKILL");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        info!("stopping: taking a final checkpoint of every task");
        stop.store(true, Ordering::Relaxed);
    });
}

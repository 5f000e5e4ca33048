//! Kafka clients of a task: the source consumer (manual assignment, no group rebalancing) and
//! the sink producer with its dead-letter records, as the task's [`TaskInput`] and
//! [`TaskOutput`]. Network I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::v1alpha1::{DeliveryGuarantee, OffsetOutOfRange, StartingOffsets};

use crate::assignment::TaskId;
use crate::checkpoint::descriptor::TransactionLabel;
use crate::io::{Connector, DeadLetter, GroupPosition, InputRecord, Skip, TaskInput, TaskOutput};
use crate::job::{Job, Partitions};

/// Failures of the Kafka clients that stop a task.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    /// A client call failed.
    #[error("kafka: {context}: {source}")]
    Client {
        context: &'static str,
        source: KafkaError,
    },
    /// Records were not acknowledged: the checkpoint must not cover them.
    #[error(
        "{failed} records were not acknowledged by the broker; restarting from the last checkpoint"
    )]
    Undelivered { failed: u64 },
    /// Exactly-once: the broker refused output records for their content, which makes the
    /// open transaction abortable. They are remembered ([`Rejections`]); the task restarts
    /// from its last checkpoint and sends them to the dead-letter topic this time.
    #[error(
        "the broker refused {refused} output records for their content (first: {first}); the \
         transaction is aborted, and when their input is read again they go to the dead-letter \
         topic"
    )]
    Refused { refused: usize, first: String },
    /// The topics do not fit the task model.
    #[error("{0}")]
    Topology(String),
    /// Credentials the spec asks for are missing from the environment.
    #[error("{0}")]
    Credentials(String),
    /// `startingPartitionOffsets` gives a first start an offset outside the partition.
    #[error(
        "spec.source.kafka.startingPartitionOffsets starts {topic} partition {task} at offset \
         {offset}, but the partition holds offsets {log_start} to {log_end}: give an offset in \
         that range, or remove the partition to start where startingOffsets says"
    )]
    StartingOffsetOutside {
        topic: String,
        task: TaskId,
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The offset a task must resume from is not in the partition, and the job says
    /// `onOffsetOutOfRange: fail`.
    #[error(
        "offset out of range: task {task} must resume {topic} partition {task} at offset {next}, \
         but the partition holds offsets {log_start} to {log_end}; {why}. Nothing was skipped: \
         set spec.source.kafka.onOffsetOutOfRange to earliest to resume at offset {log_start} \
         and give up the records before it"
    )]
    OffsetOutOfRange {
        topic: String,
        task: TaskId,
        next: i64,
        log_start: i64,
        log_end: i64,
        why: &'static str,
    },
    /// The source cannot be read until someone acts: the topic is gone, or the brokers refuse
    /// this client.
    #[error("reading {topics:?} partition {task}: {source}")]
    SourceUnreadable {
        topics: Vec<String>,
        task: TaskId,
        source: KafkaError,
    },
    /// Exactly-once: a newer producer with the task's `transactional.id` exists, so another
    /// owner took the task.
    #[error("producer {transactional_id} was fenced by a newer owner of the task: {source}")]
    ProducerFenced {
        transactional_id: String,
        source: KafkaError,
    },
}

fn client(context: &'static str) -> impl FnOnce(KafkaError) -> KafkaClientError {
    move |source| KafkaClientError::Client { context, source }
}

/// Settings of every client of the source cluster: brokers, extra properties, credentials.
pub fn source_config(job: &Job) -> Result<ClientConfig, KafkaClientError> {
    let kafka = &job.spec.source.kafka;
    let auth = auth_properties(kafka.auth.as_ref(), "SOURCE", |k| std::env::var(k).ok())?;
    Ok(client_config(
        &kafka.bootstrap_servers,
        &kafka.properties,
        &auth,
    ))
}

/// Settings of every client of the sink cluster (the source's unless the sink names its own
/// brokers, and then with the source's credentials unless it has its own).
pub fn sink_config(job: &Job) -> Result<ClientConfig, KafkaClientError> {
    let (source, sink) = (&job.spec.source.kafka, &job.spec.sink.kafka);
    let auth = match (&sink.auth, &sink.bootstrap_servers) {
        (Some(auth), _) => auth_properties(Some(auth), "SINK", |k| std::env::var(k).ok())?,
        (None, None) => auth_properties(source.auth.as_ref(), "SOURCE", |k| std::env::var(k).ok())?,
        (None, Some(_)) => Vec::new(),
    };
    let bootstrap = sink
        .bootstrap_servers
        .as_deref()
        .unwrap_or(&source.bootstrap_servers);
    Ok(client_config(bootstrap, &sink.properties, &auth))
}

fn client_config(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    auth: &[(&'static str, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        config.set(k, v);
    }
    for (k, v) in auth {
        config.set(*k, v);
    }
    config
}

/// librdkafka settings for `auth`. Secret values come from the environment the operator gives
/// the pod (`SLUICE_<SIDE>_SASL_USERNAME`, `_SASL_PASSWORD`, `_TLS_CA`, `_TLS_CERTIFICATE`,
/// `_TLS_KEY`, each from the Secret key the spec names), never from the job file.
pub fn auth_properties(
    auth: Option<&sluice_crds::v1alpha1::KafkaAuth>,
    side: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, KafkaClientError> {
    let at = if side == "SOURCE" {
        "spec.source.kafka.auth"
    } else {
        "spec.sink.kafka.auth"
    };
    sluice_core::kafka_auth::properties(auth, at, |needed| {
        let key = format!("SLUICE_{side}_{}", needed.suffix);
        env(&key).ok_or_else(|| {
            KafkaClientError::Credentials(format!(
                "{key} is not set: in a cluster the operator sets it from the Secret key named in \
                 {}; running locally, export it",
                needed.field
            ))
        })
    })
}

/// The consumer group used for lag visibility (offsets are committed for it, never read back
/// for assignment): `sluice-<namespace>-<job>`.
pub fn group_id(job: &Job) -> String {
    format!("sluice-{}-{}", job.namespace, job.name)
}

/// Number of partitions of the source topics, which must all have the same count.
pub fn source_partitions(job: &Job) -> Result<u32, KafkaClientError> {
    let counts = source_partition_counts(&metadata_consumer(job)?, job)?;
    if let Some((topic, _)) = counts.iter().find(|(_, n)| *n == 0) {
        return Err(KafkaClientError::Topology(format!(
            "source topic {topic} does not exist or has no partitions"
        )));
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        return Err(KafkaClientError::Topology(format!(
            "source topics must be co-partitioned (same partition count), found {counts:?}"
        )));
    }
    Ok(first)
}

/// The partition count of each source topic (0: no such topic), in `topics` order.
pub fn source_partition_counts(
    consumer: &BaseConsumer,
    job: &Job,
) -> Result<Vec<(String, u32)>, KafkaClientError> {
    let mut counts = Vec::new();
    for topic in &job.spec.source.kafka.topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(client("fetching source topic metadata"))?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len() as u32);
        counts.push((topic.clone(), partitions));
    }
    Ok(counts)
}

/// A client for [`source_partition_counts`], with the job's source settings.
pub fn metadata_consumer(job: &Job) -> Result<BaseConsumer, KafkaClientError> {
    source_config(job)?
        .create()
        .map_err(client("creating metadata consumer"))
}

/// The Kafka clients of task `task` of `job`.
pub struct KafkaConnector {
    /// The job.
    pub job: Arc<Job>,
    /// The task.
    pub task: TaskId,
    /// What the sink and dead-letter topics accept, as found at start.
    pub topics: Arc<SinkTopics>,
    /// Where the sink counts the records it dead-letters or drops.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Records the broker refused for their content, kept across the task's restarts.
    pub rejections: Rejections,
}

impl Connector for KafkaConnector {
    type Input = KafkaInput;
    type Output = Sink;

    fn output(&mut self) -> Result<Sink, KafkaClientError> {
        Sink::new(
            &self.job,
            self.task,
            &self.topics,
            self.rejections.clone(),
            self.metrics.clone(),
        )
    }

    fn input(
        &mut self,
        offsets: &mut BTreeMap<String, i64>,
    ) -> Result<KafkaInput, KafkaClientError> {
        let (consumer, skips) = task_consumer(&self.job, self.task, offsets)?;
        Ok(KafkaInput {
            consumer,
            task: self.task,
            topics: self.job.spec.source.kafka.topics.clone(),
            policy: self.job.spec.source.kafka.on_offset_out_of_range,
            skips,
        })
    }
}

/// Partition `task` of every source topic.
pub struct KafkaInput {
    consumer: BaseConsumer,
    task: TaskId,
    topics: Vec<String>,
    policy: OffsetOutOfRange,
    /// Positions moved since the task last asked.
    skips: Vec<Skip>,
}

/// Where the resume offset `next` of a partition holding `low..high` stands.
fn out_of_range(next: i64, low: i64, high: i64, broker_said_so: bool) -> Option<&'static str> {
    if next < low {
        Some("records the job had not read were removed (retention, or a deletion)")
    } else if next > high && broker_said_so {
        Some("the offset is past the end (was the topic deleted and created again?)")
    } else {
        None
    }
}

/// An out-of-range resume offset `next` of `topic` (the partition holds `low..high`) under
/// `policy`: [`KafkaClientError::OffsetOutOfRange`] for `fail`; for `earliest` the skip to
/// the log start, logged.
fn resume_out_of_range(
    policy: OffsetOutOfRange,
    task: TaskId,
    topic: &str,
    next: i64,
    (low, high): (i64, i64),
    why: &'static str,
) -> Result<Skip, KafkaClientError> {
    match policy {
        OffsetOutOfRange::Fail => Err(KafkaClientError::OffsetOutOfRange {
            topic: topic.to_string(),
            task,
            next,
            log_start: low,
            log_end: high,
            why,
        }),
        OffsetOutOfRange::Earliest => {
            let skip = Skip {
                topic: topic.to_string(),
                from: next,
                to: low,
            };
            tracing::warn!(
                task,
                topic,
                next,
                log_start = low,
                log_end = high,
                skipped = skip.records(),
                reason = why,
                "offset out of range: resuming at the log start (onOffsetOutOfRange: earliest)"
            );
            Ok(skip)
        }
    }
}

impl KafkaInput {
    /// The broker refused to fetch a partition at its offset: finds which topic, then fails
    /// (`fail`) or resumes at the log start and records the skip (`earliest`).
    fn offset_out_of_range(&mut self) -> Result<(), KafkaClientError> {
        let partition = self.task as i32;
        let position = self
            .consumer
            .position()
            .map_err(client("reading the consumer's position"))?;
        let mut moved = false;
        let mut assignment = TopicPartitionList::new();
        for topic in &self.topics {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(30))
                .map_err(client("reading the partition's offsets"))?;
            let next = match position
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(next)) => next,
                _ => low,
            };
            let at = match out_of_range(next, low, high, true) {
                None => next,
                Some(why) => {
                    let skip =
                        resume_out_of_range(self.policy, self.task, topic, next, (low, high), why)?;
                    self.skips.push(skip);
                    moved = true;
                    low
                }
            };
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(at))
                .map_err(client("building assignment"))?;
        }
        if moved {
            self.consumer
                .assign(&assignment)
                .map_err(client("assigning partitions"))?;
        }
        Ok(())
    }
}

/// Consumer errors no retry mends: the topic is gone or the brokers refuse this client.
fn source_unreadable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
    )
}

impl TaskInput for KafkaInput {
    #[inline]
    fn poll<E: From<KafkaClientError>>(
        &mut self,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(InputRecord<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut polled = 0;
        while polled < max {
            let timeout = if polled == 0 { wait } else { Duration::ZERO };
            let message = match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    match e.rdkafka_error_code() {
                        Some(
                            RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
                        ) => self.offset_out_of_range()?,
                        Some(code) if source_unreadable(code) => {
                            return Err(KafkaClientError::SourceUnreadable {
                                topics: self.topics.clone(),
                                task: self.task,
                                source: e,
                            }
                            .into());
                        }
                        _ => {
                            tracing::warn!(task = self.task, error = %e, "consumer error; continuing");
                        }
                    }
                    break;
                }
            };
            polled += 1;
            each(InputRecord {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                value: message.payload(),
                timestamp_ms: message.timestamp().to_millis(),
                headers: message
                    .headers()
                    .map(|h| h as &dyn crate::io::RecordHeaders),
            })?;
        }
        Ok(polled)
    }

    /// Commits the offsets to the consumer group, so lag tools see progress.
    fn commit(&self, offsets: &BTreeMap<String, i64>) {
        let mut list = TopicPartitionList::new();
        for (topic, next) in offsets {
            if list
                .add_partition_offset(topic, self.task as i32, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(task = self.task, error = %e, "committing group offsets failed");
        }
    }

    fn skips(&mut self) -> Vec<Skip> {
        std::mem::take(&mut self.skips)
    }

    fn lag(&self, topic: &str, next: Option<i64>) -> Option<i64> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, self.task as i32, Duration::from_secs(2))
            .ok()?;
        Some((high - next.unwrap_or(low)).max(0))
    }
}

/// The offset of the first record at or after `ms` (its Kafka timestamp) in `partition` of
/// `topic`, reading from `from` (what the broker's timestamp lookup answered) up to `high`;
/// `high` when there is none. Kafka answers the lookup exactly, and this reads one record;
/// a broker that answers by batch, or not at all (Tansu answers the first offset for any
/// time), gets the records before the time read and passed over here, so a first start from
/// a timestamp never processes them.
fn first_at_or_after(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    (from, high): (i64, i64),
    ms: i64,
) -> Result<i64, KafkaClientError> {
    if from >= high {
        return Ok(high);
    }
    let mut probe = TopicPartitionList::new();
    probe
        .add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(client("building the starting-timestamp scan"))?;
    consumer
        .assign(&probe)
        .map_err(client("assigning the starting-timestamp scan"))?;
    // Reset on every record: a long scan fails only when it stops moving.
    let mut deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut at = from;
    while at < high {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) if message.topic() == topic && message.partition() == partition => {
                if message.timestamp().to_millis().is_some_and(|t| t >= ms) {
                    return Ok(message.offset());
                }
                at = message.offset() + 1;
                deadline = std::time::Instant::now() + Duration::from_secs(60);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(client("scanning for the starting timestamp")(e)),
            None => {
                // Nothing more to read below the end: transaction markers (never delivered)
                // or aborted records fill the rest.
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
                if let Some(Offset::Offset(p)) = position
                    && p >= high
                {
                    return Ok(high);
                }
                if std::time::Instant::now() > deadline {
                    return Err(KafkaClientError::Topology(format!(
                        "scanning {topic} partition {partition} for the starting timestamp: \
                         no record after offset {at} within 60 s, though the partition ends \
                         at {high}"
                    )));
                }
            }
        }
    }
    Ok(high)
}

impl crate::io::RecordHeaders for rdkafka::message::BorrowedHeaders {
    fn each<'s>(&'s self, visit: &mut dyn FnMut(&'s str, Option<&'s [u8]>)) {
        use rdkafka::message::Headers;
        for header in self.iter() {
            visit(header.key, header.value);
        }
    }
}

/// A consumer of partition `task` of every source topic, starting at `offsets` (next offset
/// per topic). A topic without one starts where `startingOffsets` says, resolved here to an
/// offset that is added to `offsets`: the task's first checkpoint then records every
/// partition, also one it never read, so a restart resumes there instead of resolving
/// `latest` again and skipping what arrived meanwhile.
fn task_consumer(
    job: &Job,
    task: TaskId,
    offsets: &mut BTreeMap<String, i64>,
) -> Result<(BaseConsumer, Vec<Skip>), KafkaClientError> {
    let kafka = &job.spec.source.kafka;
    let consumer: BaseConsumer =
        consumer_settings(source_config(job)?.set("group.id", group_id(job)))
            .create()
            .map_err(client("creating consumer"))?;
    let partition = task as i32;
    let mut assignment = TopicPartitionList::new();
    let mut skips = Vec::new();
    for topic in &kafka.topics {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(30))
            .map_err(client("reading the partition's offsets"))?;
        let next = match offsets.get(topic) {
            // Below the log start is certain from the watermarks. Past the end is confirmed by
            // reading: some brokers (Tansu) answer a high watermark short of the last batch.
            Some(&next) => match out_of_range(
                next,
                low,
                high,
                next > high && ends_before(job, topic, partition, next)?,
            ) {
                None => next,
                Some(why) => {
                    let skip = resume_out_of_range(
                        kafka.on_offset_out_of_range,
                        task,
                        topic,
                        next,
                        (low, high),
                        why,
                    )?;
                    skips.push(skip);
                    offsets.insert(topic.clone(), low);
                    low
                }
            },
            None => {
                let given = kafka
                    .starting_partition_offsets
                    .get(topic)
                    .and_then(|p| p.get(&partition.to_string()))
                    .copied();
                // A partition added while the job ran: everything in it was written after the
                // job started reading the others, so it is read from its first record.
                let added = Partitions::added(job.partitions.as_ref(), task);
                let start = match (given, kafka.starting_offsets) {
                    _ if added => low,
                    (Some(offset), _) if (low..=high).contains(&offset) => offset,
                    (Some(offset), _) => {
                        return Err(KafkaClientError::StartingOffsetOutside {
                            topic: topic.clone(),
                            task,
                            offset,
                            log_start: low,
                            log_end: high,
                        });
                    }
                    (None, starting) => match starting {
                        StartingOffsets::Earliest => low,
                        StartingOffsets::Latest => high,
                        StartingOffsets::Timestamp => {
                            let ms = kafka
                                .starting_timestamp
                                .as_ref()
                                .map_or(0, |t| t.0.as_millisecond());
                            let mut query = TopicPartitionList::new();
                            query
                                .add_partition_offset(topic, partition, Offset::Offset(ms))
                                .map_err(client("building timestamp query"))?;
                            let found = consumer
                                .offsets_for_times(query, Duration::from_secs(30))
                                .map_err(client("looking up starting timestamp"))?;
                            // No record at or after the timestamp: start at the end.
                            match found.find_partition(topic, partition).map(|e| e.offset()) {
                                Some(Offset::Offset(at)) if at >= 0 => first_at_or_after(
                                    &consumer,
                                    topic,
                                    partition,
                                    (at.max(low), high),
                                    ms,
                                )?,
                                _ => high,
                            }
                        }
                    },
                };
                if added {
                    tracing::info!(
                        task,
                        topic,
                        start,
                        low,
                        high,
                        "no checkpointed offset in a partition added while the job ran: starting at its earliest offset (never the latest, which would skip its records)"
                    );
                } else {
                    tracing::info!(task, topic, start, low, high, starting_offsets = ?kafka.starting_offsets, given = ?given, "no checkpointed offset: starting where startingPartitionOffsets or startingOffsets says");
                }
                offsets.insert(topic.clone(), start);
                start
            }
        };
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(client("building assignment"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(client("assigning partitions"))?;
    Ok((consumer, skips))
}

/// How long reading the record before a resume offset may take before the partition is taken
/// to end before it. Only asked when the broker's high watermark is below the resume offset.
const PAST_END_PROBE: Duration = Duration::from_secs(5);

/// Whether `topic` partition `partition` ends before `next`: the record at `next - 1` (or any
/// after it, in a compacted topic) is not there. A broker that follows the protocol answers a
/// fetch past the end with OFFSET_OUT_OF_RANGE at once; one that does not (Tansu) is given
/// [`PAST_END_PROBE`] to hand over a record.
fn ends_before(
    job: &Job,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<bool, KafkaClientError> {
    let probe: BaseConsumer = consumer_settings(source_config(job)?.set("group.id", group_id(job)))
        .create()
        .map_err(client("creating the offset probe"))?;
    let mut at = TopicPartitionList::new();
    at.add_partition_offset(topic, partition, Offset::Offset(next - 1))
        .map_err(client("building the offset probe"))?;
    probe
        .assign(&at)
        .map_err(client("assigning the offset probe"))?;
    let deadline = std::time::Instant::now() + PAST_END_PROBE;
    while std::time::Instant::now() < deadline {
        match probe.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.offset() >= next - 1 => return Ok(false),
            Some(Err(e))
                if matches!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
                ) =>
            {
                return Ok(true);
            }
            _ => {}
        }
    }
    Ok(true)
}

/// A task consumer's settings besides brokers, credentials and group: no automatic commits
/// (assignment is manual, offsets live in checkpoints), committed records only, fetches
/// batched unless the job's properties say otherwise.
pub fn consumer_settings(config: &mut ClientConfig) -> &mut ClientConfig {
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // An offset out of range is the task's decision (onOffsetOutOfRange), never
        // librdkafka's silent jump to the end.
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set_if_absent("fetch.wait.max.ms", "100")
        .set_if_absent("queued.min.messages", "20000")
}

/// A sink producer's settings for `guarantee` besides brokers, credentials and transactions:
/// idempotence and acks, delivery reports only for failures (the only ones a task counts),
/// room for a large dead-lettered record, and batching unless the job's properties say
/// otherwise.
pub fn producer_settings(
    config: &mut ClientConfig,
    guarantee: DeliveryGuarantee,
) -> &mut ClientConfig {
    match guarantee {
        DeliveryGuarantee::ExactlyOnce | DeliveryGuarantee::AtLeastOnce => {
            config.set("enable.idempotence", "true").set("acks", "all");
        }
        DeliveryGuarantee::None => {
            config.set("enable.idempotence", "false").set("acks", "1");
        }
    }
    // A dead-lettered record goes out unchanged, however large it came in; librdkafka's
    // default (1,000,000 bytes) is below what a broker accepts by default and would stop
    // the task on the first large bad record.
    config
        .set_if_absent("message.max.bytes", "16777216")
        .set_if_absent("delivery.report.only.error", "true")
        .set_if_absent("linger.ms", "5")
        .set_if_absent("queue.buffering.max.messages", "500000")
        .set_if_absent("batch.num.messages", "10000")
}

trait SetIfAbsent {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self;
}

impl SetIfAbsent for ClientConfig {
    fn set_if_absent(&mut self, key: &str, value: &str) -> &mut Self {
        if self.get(key).is_none() {
            self.set(key, value);
        }
        self
    }
}

/// Counts records the broker did not acknowledge, and keeps those it refused for their
/// content ([`refuses_content`]).
#[derive(Clone, Default)]
pub struct DeliveryTracker {
    failed: Arc<AtomicU64>,
    refused: Arc<Mutex<Vec<Refused>>>,
    /// Where a refusal is remembered at once: under exactly-once the producer may fail every
    /// later send before the flush would have seen it.
    rejections: Rejections,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let Err((error, message)) = result else {
            return;
        };
        if refuses_content(error) {
            use rdkafka::message::Headers;
            let source = message
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "sluice.source")
                        .and_then(|h| h.value)
                })
                .map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned());
            let refused = Refused {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                source,
                reason: format!("the broker refused it: {error}"),
            };
            self.rejections.remember(&refused);
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(refused);
        } else if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(%error, "record not delivered");
        }
    }
}

/// Broker answers that refuse a record for what it is: sending it again gets the same answer,
/// so restarting would only meet it again. A size refusal is the record's own because batches
/// are kept below the topics' limits (`batch.size`, see [`Sink::new`]). Not
/// `INVALID_TIMESTAMP`: output records are stamped now, so it means a skewed clock, not content.
fn refuses_content(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

/// A record the broker refused for its content, as its delivery report returned it.
#[derive(Clone, Debug)]
struct Refused {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Its `sluice.source` header.
    source: String,
    reason: String,
}

/// Records the broker refused for their content, by topic, key and value. The task's
/// supervisor keeps them across restarts: under exactly-once a refusal aborts the transaction,
/// and the replay must send such a record to the dead-letter topic rather than to the broker
/// that refuses it. Costs nothing while empty.
#[derive(Clone, Debug, Default)]
pub struct Rejections {
    known: Arc<Mutex<std::collections::HashMap<u64, String>>>,
    any: Arc<std::sync::atomic::AtomicBool>,
}

impl Rejections {
    fn fingerprint(topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (topic, key, value).hash(&mut hasher);
        hasher.finish()
    }

    /// Why the broker refused this record before, if it did.
    fn reason(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Option<String> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&Self::fingerprint(topic, key, value)).cloned()
    }

    fn remember(&self, refused: &Refused) {
        let fingerprint = Self::fingerprint(
            &refused.topic,
            refused.key.as_deref(),
            refused.value.as_deref(),
        );
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fingerprint, refused.reason.clone());
        self.any.store(true, Ordering::Relaxed);
    }
}

/// The sink of a task: output records to partition `task` of the sink topic, bad records to
/// the dead-letter topic.
///
/// A record the sink topic would refuse for its content (larger than its limit, or without a
/// key on a compacted topic) is checked before it is sent and goes to the dead-letter topic
/// instead, with kind `output-rejected`; a dead-lettered record larger than the dead-letter
/// topic's limit goes there with its value truncated to fit and the header
/// `sluice.truncated` giving its original size; one that cannot be made to fit (its key alone
/// is too large) is dropped, counted in `sluice_dead_letter_dropped_total` and logged with its
/// source. None of them stops the task: restarting would meet the same record again.
pub struct Sink {
    producer: ThreadedProducer<DeliveryTracker>,
    tracker: DeliveryTracker,
    topic: String,
    dead_letter_topic: String,
    partition: i32,
    transaction: Option<Transaction>,
    /// Largest record the sink topic takes (its and the producer's limit).
    sink_limit: usize,
    /// Largest record the dead-letter topic takes.
    dead_letter_limit: usize,
    /// Whether the sink topic is compacted (records need a key).
    sink_compacted: bool,
    /// Records the broker refused for their content, in this run or an earlier one.
    rejections: Rejections,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What the sink and dead-letter topics accept, read once at start ([`ensure_sink_topics`]).
#[derive(Clone, Debug, Default)]
pub struct SinkTopics {
    /// The sink topic's `max.message.bytes`, when it sets one.
    pub sink_max_bytes: Option<usize>,
    /// The dead-letter topic's `max.message.bytes`, when it sets one.
    pub dead_letter_max_bytes: Option<usize>,
    /// The sink topic's `cleanup.policy` includes `compact`.
    pub sink_compacted: bool,
}

/// Bytes a record takes besides its key, value and header values (record framing, header
/// names, batch overhead), kept free below a topic's limit.
const RECORD_OVERHEAD: usize = 512;

/// Why a record cannot go to a topic, if it cannot.
fn refused(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: usize,
    limit: usize,
    compacted: bool,
) -> Option<String> {
    let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers;
    if size + RECORD_OVERHEAD > limit {
        Some(format!(
            "the record takes {size} bytes, more than the topic takes ({limit} bytes, its \
             max.message.bytes or the producer's message.max.bytes, less {RECORD_OVERHEAD} \
             bytes of framing)"
        ))
    } else if compacted && key.is_none() {
        Some(
            "the record has no key, and the topic is compacted (cleanup.policy=compact), \
              which refuses records without one"
                .to_string(),
        )
    } else {
        None
    }
}

/// Exactly-once: the sink's transactional identity and the consumer group its offsets go to.
struct Transaction {
    id: String,
    /// Records enqueued in the open transaction.
    records: std::cell::Cell<u64>,
    /// The offsets the last committed transaction carried.
    offsets: std::cell::RefCell<Option<BTreeMap<String, i64>>>,
    /// A consumer of the job's group, never assigned: the group metadata for
    /// `send_offsets_to_transaction`, and the committed offsets for recovery.
    group: BaseConsumer,
    topics: Vec<String>,
    /// The open transaction's label, `<task>/<epoch>/<checkpoint>`: the `sluice.txn` header of
    /// its records and the metadata of its offsets.
    label: std::cell::RefCell<String>,
}

/// How long initialising transactions may take before the task restarts.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long committing a transaction may take. A fenced producer should hear so at once; some
/// brokers (Tansu) drop the connection instead, and the call runs into this timeout, after
/// which the task asks the checkpoint store whether it still owns the task.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(20);

/// `sluice-<namespace>-<job>-<task>`: the same for every owner of the task, so that a new
/// owner's `init_transactions` fences the previous one.
pub fn transactional_id(job: &Job, task: TaskId) -> String {
    format!("sluice-{}-{}-{task}", job.namespace, job.name)
}

impl Sink {
    /// A producer for task `task` with the job's delivery guarantee. Exactly-once: initialises
    /// its transactions, which fences every earlier producer of the task and settles (commits
    /// or aborts) the transaction one left open, then opens a transaction.
    pub fn new(
        job: &Job,
        task: TaskId,
        topics: &SinkTopics,
        rejections: Rejections,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, KafkaClientError> {
        let kafka = &job.spec.sink.kafka;
        let mut config = sink_config(job)?;
        let transactional = kafka.delivery_guarantee == DeliveryGuarantee::ExactlyOnce;
        producer_settings(&mut config, kafka.delivery_guarantee);
        let producer_limit: usize = config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let limit = |topic: Option<usize>| topic.map_or(producer_limit, |t| t.min(producer_limit));
        let interval: Duration = job.spec.checkpoint.interval.into();
        if transactional {
            // A transaction spans one checkpoint interval plus the checkpoint itself.
            let timeout = (interval * 3 + Duration::from_secs(60)).min(Duration::from_secs(900));
            config
                .set("transactional.id", transactional_id(job, task))
                .set_if_absent("transaction.timeout.ms", &timeout.as_millis().to_string());
        }
        // A batch the broker refuses as too large fails every record in it: batches stay below
        // the smallest limit, so that a size refusal is always one record's.
        let smallest = limit(topics.sink_max_bytes).min(limit(topics.dead_letter_max_bytes));
        let batch: usize = config
            .get("batch.size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        if batch > smallest {
            config.set("batch.size", smallest.to_string());
        }
        let tracker = DeliveryTracker {
            rejections: rejections.clone(),
            ..DeliveryTracker::default()
        };
        let producer: ThreadedProducer<DeliveryTracker> = config
            .create_with_context(tracker.clone())
            .map_err(client("creating producer"))?;
        let transaction = if transactional {
            let id = transactional_id(job, task);
            let fenced = |context| {
                let id = id.clone();
                move |e| fenced_or(&id, context, e)
            };
            producer
                .init_transactions(TRANSACTION_TIMEOUT)
                .map_err(fenced("initialising transactions"))?;
            producer
                .begin_transaction()
                .map_err(fenced("beginning a transaction"))?;
            let group: BaseConsumer = source_config(job)?
                .set("group.id", group_id(job))
                .set("enable.auto.commit", "false")
                .create()
                .map_err(client("creating group consumer"))?;
            Some(Transaction {
                id,
                records: Default::default(),
                offsets: Default::default(),
                group,
                topics: job.spec.source.kafka.topics.clone(),
                label: Default::default(),
            })
        } else {
            None
        };
        Ok(Self {
            producer,
            tracker,
            topic: kafka.topic.clone(),
            dead_letter_topic: job.dead_letter_topic(),
            partition: task as i32,
            transaction,
            sink_limit: limit(topics.sink_max_bytes),
            dead_letter_limit: limit(topics.dead_letter_max_bytes),
            sink_compacted: topics.sink_compacted,
            rejections,
            metrics,
        })
    }

    /// Sends a record to the dead-letter topic with `headers` (kind, message, step, source),
    /// truncating its value to fit the topic's limit, or drops and counts it when even that
    /// cannot fit. `source` names it in the log.
    fn dead_letter_bytes(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: [(&str, &str); 4],
        source: &str,
    ) -> Result<(), KafkaClientError> {
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let build = |extra: Option<&str>| {
            let mut owned = OwnedHeaders::new();
            for (key, value) in headers {
                owned = owned.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            if let Some(size) = extra {
                owned = owned.insert(Header {
                    key: "sluice.truncated",
                    value: Some(size),
                });
            }
            owned
        };
        let Some(why) = refused(key, value, header_bytes, self.dead_letter_limit, false) else {
            return self.enqueue_or_drop(&self.dead_letter_topic, key, value, build(None), source);
        };
        // Keep what fits of the value, and say how large it was.
        let original = value.map_or(0, <[u8]>::len).to_string();
        let room = self
            .dead_letter_limit
            .saturating_sub(RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + header_bytes + 64);
        if room == 0 {
            return self.drop_dead_letter(source, &why);
        }
        let truncated = value.map(|v| &v[..room.min(v.len())]);
        self.enqueue_or_drop(
            &self.dead_letter_topic,
            key,
            truncated,
            build(Some(&original)),
            source,
        )
    }

    /// Enqueues a dead-letter record; one the producer refuses for its size is dropped and
    /// counted rather than stopping the task.
    fn enqueue_or_drop(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        if let Some(why) = self.rejections.reason(topic, key, value) {
            return self.drop_dead_letter(source, &why);
        }
        match self.enqueue(topic, key, value, headers) {
            Err(KafkaClientError::Client {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => self.drop_dead_letter(source, "the producer refused it as too large"),
            other => other,
        }
    }

    /// An output record the sink topic would refuse: to the dead-letter topic, counted.
    fn reject(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        source: &str,
        why: &str,
    ) -> Result<(), KafkaClientError> {
        self.metrics
            .dead_lettered
            .get_or_create(&crate::metrics::DeadLetterLabels {
                task: self.partition as u32,
                kind: "output-rejected".into(),
            })
            .inc();
        let message = format!(
            "sink topic {} would refuse this output record: {why}",
            self.topic
        );
        self.dead_letter_bytes(
            key,
            value,
            [
                ("sluice.error.kind", "output-rejected"),
                ("sluice.error.message", &message),
                ("sluice.step", "sink"),
                ("sluice.source", source),
            ],
            source,
        )
    }

    fn drop_dead_letter(&self, source: &str, why: &str) -> Result<(), KafkaClientError> {
        self.metrics
            .dead_letter_dropped
            .get_or_create(&crate::metrics::TaskLabels {
                task: self.partition as u32,
            })
            .inc();
        tracing::error!(task = self.partition, source, reason = why, topic = %self.dead_letter_topic, "record dropped: not even the dead-letter topic takes it");
        Ok(())
    }

    /// Enqueues a record to partition `task` of `topic`; waits while the queue is full.
    fn enqueue(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), KafkaClientError> {
        let label;
        let headers = match &self.transaction {
            Some(transaction) => {
                transaction.records.set(transaction.records.get() + 1);
                label = transaction.label.borrow();
                headers.insert(Header {
                    key: "sluice.txn",
                    value: Some(label.as_str()),
                })
            }
            None => headers,
        };
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(self.partition)
            .headers(headers);
        record.key = key;
        record.payload = value;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(client("producing")(e)),
            }
        }
    }
}

impl TaskOutput for Sink {
    #[inline]
    fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        let refusal = refused(
            key,
            value,
            source.len(),
            self.sink_limit,
            self.sink_compacted,
        );
        if let Some(why) = refusal.or_else(|| self.rejections.reason(&self.topic, key, value)) {
            return self.reject(key, value, source, &why);
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: "sluice.source",
            value: Some(source),
        });
        match self.enqueue(&self.topic, key, value, headers) {
            Err(KafkaClientError::Client {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => self.reject(key, value, source, "the producer refused it as too large"),
            other => other,
        }
    }

    fn dead_letter(
        &self,
        record: &InputRecord<'_>,
        reason: &DeadLetter<'_>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        self.dead_letter_bytes(
            record.key,
            record.value,
            [
                ("sluice.error.kind", reason.kind),
                ("sluice.error.message", reason.message),
                ("sluice.step", reason.step),
                ("sluice.source", source),
            ],
            source,
        )
    }

    /// Waits until every enqueued record is acknowledged; fails if any was not. Records the
    /// broker refused for their content are remembered; then at-least-once sends them to the
    /// dead-letter topic (dropping and counting dead letters it refused) and goes on, and
    /// exactly-once fails with [`KafkaClientError::Refused`] (the transaction cannot commit).
    fn flush(&self) -> Result<(), KafkaClientError> {
        loop {
            self.producer
                .flush(Duration::from_secs(120))
                .map_err(client("flushing producer"))?;
            let refused = std::mem::take(
                &mut *self
                    .tracker
                    .refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            );
            let Some(first) = refused.first() else {
                break;
            };
            for r in &refused {
                tracing::error!(task = self.partition, topic = %r.topic, source = %r.source, reason = %r.reason, "the broker refused a record for its content");
                self.rejections.remember(r);
            }
            if self.transaction.is_some() {
                return Err(KafkaClientError::Refused {
                    refused: refused.len(),
                    first: first.reason.clone(),
                });
            }
            // Output refused goes to the dead-letter topic (flushed in the next round); a
            // dead letter refused is dropped and counted.
            for r in &refused {
                if r.topic == self.topic {
                    self.reject(r.key.as_deref(), r.value.as_deref(), &r.source, &r.reason)?;
                } else {
                    self.drop_dead_letter(&r.source, &r.reason)?;
                }
            }
        }
        match self.tracker.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            failed => Err(KafkaClientError::Undelivered { failed }),
        }
    }

    fn transactional_id(&self) -> Option<&str> {
        self.transaction.as_ref().map(|t| t.id.as_str())
    }

    fn label_transaction(&self, label: TransactionLabel) {
        if let Some(transaction) = &self.transaction {
            *transaction.label.borrow_mut() = label.to_string();
        }
    }

    fn committed_offsets(&self) -> Result<GroupPosition, KafkaClientError> {
        let Some(transaction) = &self.transaction else {
            return Ok(GroupPosition::default());
        };
        let mut list = TopicPartitionList::new();
        for topic in &transaction.topics {
            list.add_partition(topic, self.partition);
        }
        list.add_partition(&self.dead_letter_topic, self.partition);
        let committed = transaction
            .group
            .committed_offsets(list, TRANSACTION_TIMEOUT)
            .map_err(client("reading the group's committed offsets"))?;
        let elements = committed.elements();
        let (sources, marker): (Vec<_>, Vec<_>) = elements
            .iter()
            .partition(|e| transaction.topics.iter().any(|t| t == e.topic()));
        // Every source partition of a transaction carries the same label as metadata; the
        // dead-letter partition carries it as its offset.
        let label = sources
            .iter()
            .find_map(|e| e.metadata().parse().ok())
            .or_else(|| {
                marker.iter().find_map(|e| match e.offset() {
                    Offset::Offset(o) => TransactionLabel::from_offset(self.partition as u32, o),
                    _ => None,
                })
            });
        Ok(GroupPosition {
            offsets: sources
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(next) => Some((e.topic().to_string(), next)),
                    _ => None,
                })
                .collect(),
            label,
        })
    }

    fn commit_transaction(
        &self,
        offsets: &BTreeMap<String, i64>,
    ) -> Result<bool, KafkaClientError> {
        let Some(transaction) = &self.transaction else {
            return Ok(false);
        };
        if transaction.records.get() == 0 && transaction.offsets.borrow().as_ref() == Some(offsets)
        {
            // Nothing new to commit: the open transaction stays open, and empty.
            return Ok(false);
        }
        let fenced = |context| move |e| fenced_or(&transaction.id, context, e);
        let mut list = TopicPartitionList::new();
        let label = transaction.label.borrow().clone();
        for (topic, next) in offsets {
            let mut element = list.add_partition(topic, self.partition);
            element
                .set_offset(Offset::Offset(*next))
                .map_err(client("building the transaction's offsets"))?;
            // Which checkpoint this transaction commits, for recovery on brokers that keep it.
            element.set_metadata(&label);
        }
        // The same label as an offset, for brokers that drop the metadata (see
        // `TransactionLabel::as_offset`).
        if let Some(offset) = label
            .parse::<TransactionLabel>()
            .ok()
            .and_then(|l| l.as_offset())
        {
            list.add_partition_offset(
                &self.dead_letter_topic,
                self.partition,
                Offset::Offset(offset),
            )
            .map_err(client("building the transaction's offsets"))?;
        }
        let metadata = transaction.group.group_metadata().ok_or_else(|| {
            KafkaClientError::Topology("the group consumer has no group metadata".into())
        })?;
        self.producer
            .send_offsets_to_transaction(&list, &metadata, COMMIT_TIMEOUT)
            .map_err(fenced("sending offsets to the transaction"))?;
        crate::failpoint::hit("transaction-after-offsets", self.partition as u32);
        self.producer
            .commit_transaction(COMMIT_TIMEOUT)
            .map_err(fenced("committing the transaction"))?;
        crate::failpoint::hit("transaction-after-commit", self.partition as u32);
        if transaction.offsets.borrow().as_ref() == Some(offsets) {
            crate::failpoint::hit("transaction-after-timer-commit", self.partition as u32);
        }
        transaction.records.set(0);
        *transaction.offsets.borrow_mut() = Some(offsets.clone());
        self.producer
            .begin_transaction()
            .map_err(fenced("beginning a transaction"))?;
        Ok(true)
    }
}

impl Drop for Sink {
    /// A task that stops (taken over, failed, or done after its final checkpoint) aborts the
    /// transaction it still has open, so `read_committed` consumers do not wait on it until it
    /// times out. A fenced producer has nothing to abort: the new owner's `init_transactions`
    /// aborted it.
    fn drop(&mut self) {
        // A fenced producer is in a fatal state: nothing to abort, and no call to wait for.
        if self.transaction.is_some()
            && self.producer.client().fatal_error().is_none()
            && let Err(e) = self.producer.abort_transaction(Duration::from_secs(2))
        {
            tracing::debug!(partition = self.partition, error = %e, "aborting the open transaction failed");
        }
    }
}

/// A transaction call's error: [`KafkaClientError::ProducerFenced`] when a newer producer of
/// the task exists.
fn fenced_or(transactional_id: &str, context: &'static str, e: KafkaError) -> KafkaClientError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
            KafkaClientError::ProducerFenced {
                transactional_id: transactional_id.to_string(),
                source: e,
            }
        }
        _ => client(context)(e),
    }
}

/// Creates the sink and dead-letter topics with `partitions` partitions when they are missing,
/// as Kafka Streams does for its internal topics, then checks what a task will write there:
/// task `p` writes partition `p` of both, so each needs at least `partitions` partitions (a
/// topic with fewer is refused with a message, rather than failing those tasks forever), and
/// reads the size limit and cleanup policy the sink checks records against
/// ([`SinkTopics`]). A broker that does not describe topic configs leaves them unset.
pub async fn ensure_sink_topics(
    job: &Job,
    partitions: u32,
) -> Result<SinkTopics, KafkaClientError> {
    use rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
    };
    let kafka = &job.spec.sink.kafka;
    let admin: AdminClient<_> = sink_config(job)?
        .create()
        .map_err(client("creating admin client"))?;
    let dead_letter = job.dead_letter_topic();
    let topics = [
        NewTopic::new(&kafka.topic, partitions as i32, TopicReplication::Fixed(-1)),
        NewTopic::new(&dead_letter, partitions as i32, TopicReplication::Fixed(-1)),
    ];
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .map_err(client("creating sink topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "created sink topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaClientError::Topology(format!(
                    "cannot create sink topic {topic}: {code}"
                )));
            }
        }
    }
    for (topic, role) in [(&kafka.topic, "sink"), (&dead_letter, "dead-letter")] {
        let found = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(client("fetching sink topic metadata"))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as u32);
        if found < partitions {
            return Err(KafkaClientError::Topology(format!(
                "{role} topic {topic} has {found} partitions, fewer than the {partitions} of the \
                 source: task p writes partition p of it, so tasks {found} to {} could write \
                 nothing; add partitions to it (to at least {partitions}) or name another topic",
                partitions - 1
            )));
        }
    }
    let specifiers = [
        ResourceSpecifier::Topic(&kafka.topic),
        ResourceSpecifier::Topic(&dead_letter),
    ];
    let mut found = SinkTopics::default();
    match admin
        .describe_configs(&specifiers, &AdminOptions::new())
        .await
    {
        Ok(described) => {
            let value = |i: usize, name: &str| -> Option<String> {
                described.get(i)?.as_ref().ok()?.get(name)?.value.clone()
            };
            found.sink_max_bytes = value(0, "max.message.bytes").and_then(|v| v.parse().ok());
            found.dead_letter_max_bytes =
                value(1, "max.message.bytes").and_then(|v| v.parse().ok());
            found.sink_compacted = value(0, "cleanup.policy")
                .is_some_and(|v| v.split(',').any(|p| p.trim() == "compact"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "the brokers do not describe topic configs: records are checked against the producer's limit only");
        }
    }
    tracing::info!(sink = %kafka.topic, dead_letter = %dead_letter, ?found, "sink topics checked");
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_crds::v1alpha1::KafkaAuth;

    use super::{KafkaClientError, auth_properties};

    #[test]
    fn a_record_refused_for_its_content_is_known_by_topic_key_and_value_and_others_retry() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};

        use super::{Refused, Rejections, refuses_content};
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::InvalidRecord,
        ] {
            assert!(
                refuses_content(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        // Transient or not about the record: restart and send again.
        for code in [
            RDKafkaErrorCode::InvalidMessage,   // CORRUPT_MESSAGE: retriable
            RDKafkaErrorCode::InvalidTimestamp, // records are stamped now: a skewed clock
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert!(
                !refuses_content(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }

        let rejections = Rejections::default();
        assert_eq!(rejections.reason("out", Some(b"k"), Some(b"v")), None);
        let refused = Refused {
            topic: "out".into(),
            key: Some(b"k".to_vec()),
            value: Some(b"v".to_vec()),
            source: "in/0/7".into(),
            reason: "the broker refused it: timestamp out of range".into(),
        };
        rejections.remember(&refused);
        // A clone (the next run of the task after a restart) knows it too.
        let next_run = rejections.clone();
        assert_eq!(
            next_run.reason("out", Some(b"k"), Some(b"v")).as_deref(),
            Some("the broker refused it: timestamp out of range")
        );
        assert_eq!(next_run.reason("out", Some(b"k"), Some(b"w")), None);
        assert_eq!(next_run.reason("out", None, Some(b"v")), None);
        assert_eq!(next_run.reason("dlq", Some(b"k"), Some(b"v")), None);
    }

    fn auth(yaml: &str) -> KafkaAuth {
        serde_norway::from_str(yaml).expect("auth")
    }

    #[test]
    fn sasl_over_tls_takes_its_secrets_from_the_environment_the_operator_sets() {
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("SLUICE_SOURCE_SASL_USERNAME", "svc-orders"),
            ("SLUICE_SOURCE_SASL_PASSWORD", "s3cret"),
            ("SLUICE_SOURCE_TLS_CA", "-----BEGIN CERTIFICATE-----"),
        ]);
        let got = auth_properties(
            Some(&auth(
                "sasl: {mechanism: SCRAM-SHA-512, username: {name: u, key: user}, password: {name: u, key: pass}}\n\
                 tls: {ca: {name: ca, key: ca.crt}}",
            )),
            "SOURCE",
            |k| env.get(k).map(|v| v.to_string()),
        )
        .expect("complete");
        assert_eq!(
            got,
            vec![
                ("security.protocol", "SASL_SSL".to_string()),
                ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
                ("sasl.username", "svc-orders".to_string()),
                ("sasl.password", "s3cret".to_string()),
                ("ssl.ca.pem", "-----BEGIN CERTIFICATE-----".to_string()),
            ]
        );
    }

    #[test]
    fn a_missing_credential_names_the_variable_and_the_field_it_comes_from() {
        let err = auth_properties(
            Some(&auth(
                "sasl: {mechanism: PLAIN, username: {name: u, key: user}, password: {name: u, key: pass}}",
            )),
            "SINK",
            |_| None,
        )
        .expect_err("incomplete");
        assert!(matches!(err, KafkaClientError::Credentials(_)));
        assert_eq!(
            err.to_string(),
            "SLUICE_SINK_SASL_USERNAME is not set: in a cluster the operator sets it from the \
             Secret key named in spec.sink.kafka.auth.sasl.username; running locally, export it"
        );
    }

    #[test]
    fn records_a_topic_would_refuse_are_named_before_they_are_sent() {
        use super::{RECORD_OVERHEAD, refused};
        let value = vec![b'x'; 1000];
        let limit = 1000 + 3 + 10 + RECORD_OVERHEAD;
        assert_eq!(refused(Some(b"key"), Some(&value), 10, limit, true), None);
        let too_large = refused(Some(b"key"), Some(&value), 11, limit, false).expect("refused");
        assert!(too_large.contains("takes 1014 bytes"), "{too_large}");
        let no_key = refused(None, Some(b"v"), 0, limit, true).expect("refused");
        assert!(no_key.contains("compacted"), "{no_key}");
        assert_eq!(
            refused(None, None, 0, limit, false),
            None,
            "a tombstone without key"
        );
    }

    #[test]
    fn out_of_range_below_the_start_is_certain_past_the_end_only_when_confirmed() {
        use super::out_of_range;
        assert!(
            out_of_range(3, 10, 20, false).is_some(),
            "below the log start"
        );
        assert_eq!(out_of_range(10, 10, 20, false), None);
        assert_eq!(
            out_of_range(20, 10, 20, true),
            None,
            "at the end is in range"
        );
        assert_eq!(
            out_of_range(25, 10, 20, false),
            None,
            "past a high watermark alone: some brokers answer one short of the last batch"
        );
        assert!(
            out_of_range(25, 10, 20, true).is_some(),
            "past the end, confirmed"
        );
    }

    #[test]
    fn no_auth_sets_nothing_and_tls_alone_is_ssl() {
        assert_eq!(
            auth_properties(None, "SOURCE", |_| None).expect("none"),
            vec![]
        );
        let got = auth_properties(Some(&auth("tls: {}")), "SOURCE", |_| None).expect("tls");
        assert_eq!(got, vec![("security.protocol", "SSL".to_string())]);
    }
}

//! The `StreamJob` API, `sluice.dev/v1alpha1`: spec and status types. Pure data, no I/O.
//!
//! Every field's doc comment is what `kubectl explain streamjob.spec...` shows, so it is
//! written for the person writing the YAML. Invariants that span fields are CEL rules
//! (`x-kubernetes-validations`) so the API server rejects a bad job before anything runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, SecretKeySelector, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{duration, nonzero_duration, partition_offsets, savepoint_id, topic_name};
pub use kube::core::Duration;

/// Client properties that Sluice sets itself; `properties` may not override them.
pub const MANAGED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.certificate.pem",
    "ssl.ca.pem",
];

/// A stateful stream-processing job: Kafka in, declared steps with keyed state, Kafka out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    category = "sluice",
    namespaced,
    status = "StreamJobStatus",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Parallelism", type_ = "integer", json_path = ".spec.parallelism"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyWorkers"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Last-Checkpoint",
        type_ = "date",
        json_path = ".status.lastCheckpoint.time"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Worst-Lag",
        type_ = "integer",
        json_path = ".status.taskTotals.worstLag",
        priority = "1"
    ),
    printcolumn(
        name = "Worst-Task",
        type_ = "integer",
        json_path = ".status.taskTotals.worstTask",
        priority = "1"
    ),
    validation = Rule::new("size(self.metadata.name) <= 52").message(
        "metadata.name must be at most 52 characters: it names the StatefulSet, whose pods add a suffix"
    ),
)]
#[x_kube(
    validation = Rule::new("!self.source.kafka.topics.exists(t, t == self.sink.kafka.topic)").message(
        "sink.kafka.topic must not be one of source.kafka.topics: a job that reads its own output loops forever"
    ),
    validation = Rule::new("!has(self.deadLetter) || (self.deadLetter.topic != self.sink.kafka.topic && !self.source.kafka.topics.exists(t, t == self.deadLetter.topic))").message(
        "deadLetter.topic must differ from sink.kafka.topic and from every source topic"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobSpec {
    /// Number of worker pods. Task `p` (partition `p` of every input topic) runs on worker
    /// `p mod parallelism`, so more workers than partitions leaves workers idle.
    /// `kubectl scale streamjob/<name> --replicas=N` changes this field.
    #[schemars(range(min = 1, max = 1024))]
    pub parallelism: i32,

    /// Worker container image. Defaults to the worker image the operator was released with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Where records come from.
    pub source: Source,

    /// How event time is read from records; without it the Kafka record timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTime>,

    /// The processing steps, applied in order to every record. Empty: records are copied
    /// from the source to the sink unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub steps: Vec<Step>,

    /// Where results go.
    pub sink: Sink,

    /// Where records that cannot be processed go, unchanged, with the reason in headers.
    /// Defaults to the topic `<sink topic>.dlq` on the sink's cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetter>,

    /// How and where state and source offsets are checkpointed.
    pub checkpoint: CheckpointSpec,

    /// The persistent volume each worker keeps its RocksDB state on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,

    /// Stop the job: take a final checkpoint, scale to zero workers, keep state and
    /// checkpoints. Setting it back to false resumes from that checkpoint.
    #[serde(default)]
    pub suspend: bool,

    /// CPU and memory for each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Additions to the worker pods the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// What an edit of the job may do to its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Upgrade>,

    /// How long a rollout (start, restart, rescale, resume) may take before the job reports
    /// it stuck: `Progressing=False`, `Degraded=True` and `Stalled=True` with reason
    /// `ProgressDeadlineExceeded` (as a Deployment's `progressDeadlineSeconds`), which Flux
    /// reads as Failed and Argo CD as Degraded. The rollout goes on; the condition clears once
    /// every worker is ready. Default 10m.
    #[serde(default = "StreamJobSpec::default_progress_deadline")]
    #[schemars(schema_with = "nonzero_duration")]
    pub progress_deadline: Duration,

    /// Savepoints: checkpoints taken on request that checkpoint retention never deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointSpec>,

    /// A savepoint to start every task from, by the id `status.savepoints` lists
    /// (`<namespace>/<job>/<n>`, of this job or another in the same checkpoint storage). A
    /// task whose state does not come from it yet restores it (its offsets and state; the
    /// compatibility check of `spec.upgrade` applies) and checkpoints on from there; later
    /// restarts restore the task's own checkpoints. Setting it on a running job rewinds
    /// every task to the savepoint (its output from the savepoint's offsets on is written
    /// again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "savepoint_id")]
    pub restore_from: Option<String>,
}

/// Savepoints of a job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavepointSpec {
    /// Any string: each new value takes a savepoint. Every task's first checkpoint committed
    /// after the operator saw the value (at most a checkpoint interval later; a suspended
    /// job's final checkpoints at once) is copied, files and descriptor, to
    /// `<storage>/<namespace>/<job>/savepoints/<n>/`, where checkpoint retention never
    /// deletes it; `status.savepoints` lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,

    /// How many of the job's savepoints are kept, newest first (default 10, as the Flink
    /// operator's savepoint history); older ones are deleted, each with an Event, except
    /// those the `spec.restoreFrom` of a job in the same namespace names. Deleting the job
    /// deletes none.
    #[serde(default = "default_savepoints_retained")]
    #[schemars(range(min = 1))]
    pub retain: i32,
}

impl StreamJobSpec {
    /// The dead-letter topic: `deadLetter.topic`, or `<sink topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter.as_ref().map_or_else(
            || format!("{}.dlq", self.sink.kafka.topic),
            |d| d.topic.clone(),
        )
    }

    /// `progressDeadline` when unset: 10 minutes.
    pub fn default_progress_deadline() -> Duration {
        std::time::Duration::from_secs(600).into()
    }
}

fn default_savepoints_retained() -> i32 {
    10
}

/// What an edit of the job may do to its state. Each stateful step's state belongs to its
/// name and has a signature (its kind, the fields that shape its state, how its input is
/// partitioned); an edit keeps a state whose signature is unchanged, and needs consent to
/// reset a changed one or drop the state of a removed step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upgrade {
    /// `refuse` (default): an edit that would reset or drop a step's state is not rolled
    /// out; the workers keep running the last rolled-out spec and the job reports
    /// `StateIncompatible`. `reset`: such an edit is rolled out, the changed steps start
    /// empty and the state of removed steps is deleted; the others keep their state.
    #[serde(default)]
    pub state_changes: StateChanges,

    /// `automatic` (default): every change is rolled out when applied. `manual`: an upgrade
    /// (a change of `steps`, `source`, `image` or `restoreFrom`) is rolled out only once the annotation
    /// `sluice.dev/approve` names its generation (`kubectl annotate streamjob/<name>
    /// sluice.dev/approve=<generation>`); until then the job shows reason `AwaitingApproval`
    /// and `status.plan` says what the roll would do. Scaling through `/scale` is never held.
    #[serde(default)]
    pub approval: Approval,
}

/// Whether an upgrade waits for a person.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// Rolled out when applied.
    #[default]
    Automatic,
    /// Rolled out once `sluice.dev/approve` names the generation.
    Manual,
}

/// Whether an edit may reset or drop state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StateChanges {
    /// Refuse an edit that resets or drops state.
    #[default]
    Refuse,
    /// Roll it out: changed steps start empty, removed steps' state is deleted.
    Reset,
}

/// The input of a job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Read from Kafka topics.
    pub kafka: KafkaSource,
}

/// Kafka topics to read. All topics must have the same partition count (co-partitioned):
/// task `p` reads partition `p` of every topic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("self.startingOffsets != 'timestamp' || has(self.startingTimestamp)").message(
        "startingTimestamp is required when startingOffsets is timestamp"
    ),
    validation = Rule::new("!has(self.startingTimestamp) || self.startingOffsets == 'timestamp'").message(
        "startingTimestamp is only used when startingOffsets is timestamp"
    ),
    validation = Rule::new("!has(self.startingPartitionOffsets) || self.startingPartitionOffsets.all(t, t in self.topics)").message(
        "startingPartitionOffsets names a topic that is not in topics"
    ),
)]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of brokers, e.g. `kafka-0.kafka:9092,kafka-1.kafka:9092`.
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: String,

    /// Topics to read; co-partitioned, at least one, each once.
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub topics: Vec<String>,

    /// Where a task starts when it has no checkpoint yet. Once a checkpoint exists the job
    /// always resumes from it.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,

    /// With `startingOffsets: timestamp`: start at the first record at or after this time
    /// (RFC 3339, e.g. `2026-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_timestamp: Option<Time>,

    /// For a first start (no checkpoint yet), per topic and partition (`"0"`, `"1"`, …), the
    /// offset to start at, as Flink's `OffsetsInitializer.offsets`; partitions not listed
    /// start where `startingOffsets` says. An offset outside the partition (below its log
    /// start or past its end) stops the task with a message naming it. Ignored once a
    /// checkpoint exists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "partition_offsets")]
    pub starting_partition_offsets: BTreeMap<String, BTreeMap<String, i64>>,

    /// What a task does when the offset it must resume from is no longer in the partition:
    /// below the log start (retention or a deletion removed records the job had not read,
    /// e.g. after it was suspended for longer than the topic's retention) or above its end
    /// (the topic was deleted and created again). `fail` (default) stops the task and says
    /// which topic, partition and offsets in the worker's `/readyz` and logs; `earliest`
    /// resumes at the log start and counts the records given up in the metric
    /// `sluice_records_skipped_total`.
    #[serde(default)]
    pub on_offset_out_of_range: OffsetOutOfRange,

    /// What the job does when partitions are added to its topics while it runs. `report`
    /// (default): the job keeps reading the partitions it was rolled out with and sets the
    /// condition `PartitionsChanged=True` with the counts, so nothing is read or moved without
    /// a decision. `adopt`: the operator rolls the job onto all partitions; the new ones are
    /// read from their earliest offset (never the latest: their first records would be
    /// skipped). More partitions move keys between partitions and so between tasks: a job that
    /// keeps keyed state adopts them only with `spec.upgrade.stateChanges: reset`, else the
    /// change is held with a message. Topics are co-partitioned again before anything rolls.
    #[serde(default)]
    pub on_new_partitions: OnNewPartitions,

    /// How often each worker asks the brokers how many partitions its topics have (as Flink's
    /// `partition.discovery.interval.ms`, 5 minutes by default): a change is logged and shown in
    /// the metric `sluice_source_partitions`. The operator reads the counts at every
    /// observation on its own, for the `PartitionsChanged` condition.
    #[serde(default = "KafkaSource::default_partition_discovery")]
    #[schemars(schema_with = "nonzero_duration")]
    pub partition_discovery_interval: Duration,

    /// How record values are decoded.
    #[serde(default)]
    pub format: Format,

    /// Authentication and encryption towards the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<KafkaAuth>,

    /// Extra librdkafka client properties, e.g. `fetch.max.bytes`. Properties Sluice manages
    /// itself (bootstrap servers, group, offsets, transactions, credentials) are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = managed_properties_rule())]
    pub properties: BTreeMap<String, String>,
}

/// Where a task with no checkpoint starts reading.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StartingOffsets {
    /// The oldest record still in the topic.
    #[default]
    Earliest,
    /// Only records written after the task first starts.
    Latest,
    /// The first record at or after `startingTimestamp`.
    Timestamp,
}

impl KafkaSource {
    /// Five minutes, as Flink's KafkaSource.
    pub fn default_partition_discovery() -> Duration {
        std::time::Duration::from_secs(300).into()
    }
}

/// What a job does with partitions added to its topics while it runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnNewPartitions {
    /// Keep reading the partitions the job was rolled out with; say so in `PartitionsChanged`.
    #[default]
    Report,
    /// Roll the job onto every partition; the new ones start at their earliest offset.
    Adopt,
}

/// What a task does when its resume offset is outside the partition.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OffsetOutOfRange {
    /// Stop the task and say why; nothing is skipped.
    #[default]
    Fail,
    /// Resume at the oldest record still in the partition, counting what is given up.
    Earliest,
}

/// How a record value is decoded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A JSON document per record.
    #[default]
    Json,
    /// Debezium change events in JSON (`op`, `before`, `after`, `source`), with or without
    /// the `schema`/`payload` envelope.
    DebeziumJson,
    /// Bytes as they are; steps see the value as a string when it is valid UTF-8.
    Raw,
}

/// Authentication towards Kafka. Secrets are read from the job's namespace and passed to
/// workers as environment variables; they never appear in the rendered job config.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaAuth {
    /// SASL authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslAuth>,
    /// TLS encryption, optionally with a client certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsAuth>,
}

/// SASL username and password, each from a Secret key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaslAuth {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret key holding the username.
    pub username: SecretKeySelector,
    /// Secret key holding the password.
    pub password: SecretKeySelector,
}

/// A SASL mechanism.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Plain username and password; use it only with TLS.
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// TLS towards the brokers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.certificate) == has(self.key)").message(
    "tls.certificate and tls.key go together: set both for mutual TLS, or neither"
))]
pub struct TlsAuth {
    /// Secret key holding the PEM CA bundle that signs the brokers' certificates.
    /// Without it the system trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKeySelector>,
    /// Secret key holding the PEM client certificate, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<SecretKeySelector>,
    /// Secret key holding the PEM client private key, for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<SecretKeySelector>,
}

/// Event time: the time a record describes, which windows and watermarks use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTime {
    /// Dotted path of the field in the decoded value holding the event time, e.g.
    /// `ts_ms` or `after.updated_at`: epoch milliseconds or an RFC 3339 string.
    /// Without it the Kafka record timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub field: Option<String>,

    /// How far out of order records may arrive. The watermark trails the largest event
    /// time seen in a partition by this much.
    #[serde(default = "zero_duration")]
    #[schemars(schema_with = "duration")]
    pub max_out_of_orderness: Duration,

    /// A partition that receives nothing for this long no longer holds back the watermark,
    /// so windows still close while it is idle. Without it an idle partition stalls windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nonzero_duration")]
    pub idle_timeout: Option<Duration>,
}

/// One processing step. Set `name` and exactly one of the step kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "[has(self.filter), has(self.map), has(self.materialize), has(self.aggregate), has(self.dedupe)].filter(k, k).size() == 1"
).message("a step sets exactly one of filter, map, materialize, aggregate or dedupe"))]
pub struct Step {
    /// Name of the step, unique in the job (the API server rejects a repeated name). It names the step's state, metrics and the
    /// `sluice.step` header of the records it dead-letters. A stateful step's state belongs to its
    /// name: renaming the step is removing it and adding another, so its state is dropped and
    /// the new one starts empty, which `upgrade.stateChanges` must allow.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Keep only the records for which the expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStep>,

    /// Replace the record's key and/or value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapStep>,

    /// Keep the latest row per key of a change stream (a CDC upsert table) and emit every
    /// change as a changelog record; deletes become tombstones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub materialize: Option<MaterializeStep>,

    /// Group records by key and aggregate them, optionally over event-time windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateStep>,

    /// Drop records whose key was already seen within a time-to-live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<DedupeStep>,
}

/// Keep records for which a CEL expression is true.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterStep {
    /// CEL expression returning a bool, over `key`, `value`, `headers`, `timestamp`,
    /// `partition`, `offset` (and `op`, `before`, `after`, `source` for debezium-json),
    /// e.g. `value.amount > 100`.
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,
}

/// Replace the key and/or value of each record with CEL expressions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.key) || has(self.value)").message(
    "a map step sets key, value or both"
))]
pub struct MapStep {
    /// CEL expression for the new key, e.g. `value.customer_id`. Unset keeps the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,
    /// CEL expression for the new value, e.g. `{'id': value.id, 'total': value.qty * value.price}`.
    /// Unset keeps the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub value: Option<String>,
}

/// Materialize a change stream into a table keyed by row key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaterializeStep {
    /// CEL expression for the row key. Unset uses the record key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub key: Option<String>,
}

/// Group records by a key and aggregate them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("!has(self.allowedLateness) || has(self.window)").message(
        "allowedLateness applies only to windowed aggregates: add a window or remove it"
    ),
    validation = Rule::new("has(self.window) || self.emit == 'on-update'").message(
        "an aggregate without a window never closes: it must use emit: on-update"
    ),
)]
pub struct AggregateStep {
    /// CEL expression for the group key, e.g. `value.customer_id`.
    #[schemars(length(min = 1, max = 4096))]
    pub group_by: String,

    /// The aggregates computed per group; each becomes a field of the output value, so
    /// names are unique.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub aggregations: Vec<Aggregation>,

    /// Event-time window. Without one, the aggregate runs over all time and emits on
    /// every update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,

    /// How long after a window's end (by watermark) late records still update it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration")]
    pub allowed_lateness: Option<Duration>,

    /// What happens to records later than `allowedLateness`.
    #[serde(default)]
    pub late_records: LateRecords,

    /// When results are emitted. Defaults to `on-close` (one result per window, when the
    /// watermark passes its end); unwindowed aggregates must use `on-update`.
    #[serde(default)]
    pub emit: Emit,
}

/// One aggregate function over a group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.__function__ == 'count' || has(self.expr)").message(
    "every aggregate function except count needs expr"
))]
pub struct Aggregation {
    /// Name of the output field.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// The function.
    pub function: AggregateFunction,
    /// CEL expression for the aggregated value, e.g. `value.amount`. Not used by `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub expr: Option<String>,
}

/// An aggregate function.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AggregateFunction {
    /// Number of records.
    Count,
    /// Sum of `expr`.
    Sum,
    /// Smallest `expr`.
    Min,
    /// Largest `expr`.
    Max,
    /// Mean of `expr`.
    Avg,
    /// `expr` of the earliest record by event time.
    First,
    /// `expr` of the latest record by event time.
    Last,
}

/// An event-time window: exactly one of tumbling, hopping or session.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new(
    "[has(self.tumbling), has(self.hopping), has(self.session)].filter(k, k).size() == 1"
).message("a window sets exactly one of tumbling, hopping or session"))]
pub struct Window {
    /// Fixed-size, non-overlapping windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<TumblingWindow>,
    /// Fixed-size windows that start every `advance`, so they overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hopping: Option<HoppingWindow>,
    /// Windows per key that close after a gap with no records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,
}

/// Fixed-size, non-overlapping windows aligned to the epoch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TumblingWindow {
    /// Window length, e.g. `1m`.
    #[schemars(schema_with = "nonzero_duration")]
    pub size: Duration,
}

/// Overlapping fixed-size windows aligned to the epoch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("duration(self.advance) <= duration(self.size)").message(
    "hopping.advance must not exceed hopping.size, or records between windows would be lost"
))]
pub struct HoppingWindow {
    /// Window length, e.g. `10m`.
    #[schemars(schema_with = "nonzero_duration")]
    pub size: Duration,
    /// How often a window starts, e.g. `1m`.
    #[schemars(schema_with = "nonzero_duration")]
    pub advance: Duration,
}

/// Per-key windows separated by inactivity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionWindow {
    /// A session closes after this long without records for its key, e.g. `30m`.
    #[schemars(schema_with = "nonzero_duration")]
    pub gap: Duration,
}

/// What happens to records that arrive after their window closed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LateRecords {
    /// Send them to the dead-letter topic with reason `late`.
    #[default]
    DeadLetter,
    /// Drop them; they are counted in the `sluice_late_records_total` metric.
    Drop,
}

/// When an aggregate emits results.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Emit {
    /// Once per window, when the watermark passes its end.
    #[default]
    OnClose,
    /// After every record that changes the result.
    OnUpdate,
}

/// Drop repeated records.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DedupeStep {
    /// CEL expression for the identity of a record, e.g. `value.event_id`.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,
    /// How long a key is remembered, by event time, e.g. `1h`.
    #[schemars(schema_with = "nonzero_duration")]
    pub ttl: Duration,
}

/// The output of a job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    /// Write to a Kafka topic.
    pub kafka: KafkaSink,
}

/// A Kafka topic to write results to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSink {
    /// Topic to write to. It should have as many partitions as the source topics: a result
    /// goes to the partition of the task that produced it.
    #[schemars(schema_with = "topic_name")]
    pub topic: String,

    /// Brokers of the output cluster. Defaults to the source's `bootstrapServers` and `auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: Option<String>,

    /// Authentication for the output cluster; only used with `bootstrapServers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<KafkaAuth>,

    /// How record values are encoded: `json`, or `raw` for values that are already bytes.
    #[serde(default)]
    pub format: SinkFormat,

    /// `exactly-once`: results and source offsets commit in one Kafka transaction per
    /// checkpoint, so consumers with `isolation.level=read_committed` see each result once.
    /// `at-least-once`: an idempotent producer; after a failure some results are written again.
    /// `none`: fire and forget.
    #[serde(default)]
    pub delivery_guarantee: DeliveryGuarantee,

    /// Extra librdkafka producer properties, e.g. `compression.type`. Properties Sluice
    /// manages itself are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = managed_properties_rule())]
    pub properties: BTreeMap<String, String>,
}

/// How result values are encoded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFormat {
    /// JSON documents.
    #[default]
    Json,
    /// Strings and bytes as they are; other values as JSON.
    Raw,
}

/// Delivery guarantee of the sink.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    /// Kafka transactions aligned with checkpoints.
    #[default]
    ExactlyOnce,
    /// Idempotent producer; replays after failure may duplicate results.
    AtLeastOnce,
    /// No retries or acknowledgements beyond the producer's defaults.
    None,
}

/// Where records that cannot be processed go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    /// Topic on the sink's cluster. Each record keeps its original key and value and gains
    /// headers `sluice.error.kind`, `sluice.error.message`, `sluice.step` and
    /// `sluice.source` (`topic/partition/offset`).
    #[schemars(schema_with = "topic_name")]
    pub topic: String,
}

/// Checkpointing of state and source offsets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Object-storage URI under which checkpoints are kept: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` or `file:///path` (one machine only).
    /// The job's checkpoints live under `<storage>/<namespace>/<name>/`. It cannot change
    /// once set: create a new job to move checkpoints.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(
        validation = Rule::new("self.matches('^(s3|gs|az)://[^/]+(/.*)?$') || self.matches('^file:///.+$')").message(
            "checkpoint.storage must be s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix] or file:///path"
        ),
        validation = Rule::new("self == oldSelf").message(
            "checkpoint.storage cannot change: the job's checkpoints live there; create a new StreamJob instead"
        ),
    )]
    pub storage: String,

    /// Time between checkpoints, e.g. `10s`. Results are committed to the sink at each
    /// checkpoint when the sink is exactly-once, so this is also its output latency.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(schema_with = "nonzero_duration")]
    pub interval: Duration,

    /// How many completed checkpoints to keep per task; older ones are deleted.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 100))]
    pub retain: i32,

    /// Endpoint URL of the store: for s3:// an S3-compatible server, e.g.
    /// `http://minio.storage:9000`; for az:// the account's blob URL; for gs:// a GCS base URL.
    /// Unset uses the provider's default endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^https?://"))]
    pub endpoint: Option<String>,

    /// Region of the bucket, for S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// Secret whose keys become the workers' object-storage environment (the operator reads
    /// checkpoints with it too): `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` for s3://,
    /// `AZURE_STORAGE_ACCOUNT_NAME` and `AZURE_STORAGE_ACCOUNT_KEY` (or a SAS key, or a service
    /// principal's `AZURE_CLIENT_*`) for az://, `GOOGLE_SERVICE_ACCOUNT_KEY` for gs://. Unset
    /// relies on the pod's identity (IRSA, AKS or GKE Workload Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<LocalObjectReference>,
}

/// The persistent volume for each worker's state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateSpec {
    /// Size of each worker's volume, e.g. `20Gi`.
    #[serde(default = "default_state_size")]
    pub size: Quantity,
    /// Storage class of the volumes. Unset uses the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// Additions to the worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateOverrides {
    /// Extra labels on worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Scheduling constraints of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Service account the pods run as (e.g. for cloud storage identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the worker image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Extra environment variables of the worker container. Names starting with `SLUICE_`
    /// are reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('SLUICE_'))").message(
        "podTemplate.env names starting with SLUICE_ are reserved for the operator"
    ))]
    pub env: Vec<EnvVar>,
}

/// What the operator observed of a job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// One-word summary: Pending, Running, Rescaling, Suspended, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// `Ready`, `Progressing`, `Degraded` and `SpecValid`, following Kubernetes conventions;
    /// also `Reconciling` and `Stalled` (present only when true) for kstatus readers such as Flux.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Number of workers currently running (the scale subresource's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,

    /// Label selector of the worker pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Workers that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_workers: Option<i32>,

    /// The oldest of the tasks' latest completed checkpoints: every task has checkpointed
    /// at least this recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRef>,

    /// Records in the source topics not yet processed, summed over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,

    /// What the latest change rolls out (or, held, would roll out): written before anything
    /// moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RolloutPlan>,

    /// The savepoint of the latest `spec.savepoint.trigger`: requested, taken or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointProgress>,

    /// The job's savepoints in its checkpoint storage, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<SavepointInfo>,

    /// Each task (input partition), the 64 with the most lag first: who runs it, how far it
    /// is, its watermark, state and last checkpoint. `taskTotals` counts all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskInfo>,

    /// Totals over every task, listed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_totals: Option<TaskTotals>,
}

/// One task, as the operator last read it (its HEAD checkpoint, its report, the brokers).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// The task (input partition).
    pub task: i64,
    /// The pod that runs it, as its last report says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `Starting`, `Running`, `Restarting` or `Failed`, as its last report says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Per source topic, the next offset its last checkpoint reads from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<String, i64>,
    /// Records in its partitions not yet committed, summed over topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Its event-time watermark at its last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<Time>,
    /// Its state bytes at its last checkpoint.
    pub state_bytes: i64,
    /// Its last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointRef>,
    /// Where its state came from at its last start: `volume`, `store`, `savepoint <id>`, or
    /// `empty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// Totals over a job's tasks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskTotals {
    /// Tasks in all.
    pub tasks: i64,
    /// Tasks listed in `tasks`.
    pub listed: i64,
    /// The most lag of any task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_lag: Option<i64>,
    /// The task with that lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_task: Option<i64>,
    /// State bytes, in all.
    pub state_bytes: i64,
    /// Tasks whose last report says `Failed`.
    pub failed: i64,
}

/// The savepoint of the latest trigger.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointProgress {
    /// The `spec.savepoint.trigger` it is for.
    pub trigger: String,
    /// When the operator saw the trigger: every task's first checkpoint after it is saved.
    pub requested_at: Time,
    /// `Pending` (waiting for every task's checkpoint), `Taken` or `Failed`.
    pub state: String,
    /// What it waits for, what it took, or why it failed.
    pub message: String,
    /// The savepoint's id, once taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A savepoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    /// What `spec.restoreFrom` takes: `<namespace>/<job>/<n>`.
    pub id: String,
    /// The trigger it was taken for.
    pub trigger: String,
    /// When it was taken.
    pub time: Time,
    /// Its tasks.
    pub tasks: i64,
    /// Its state bytes, in all.
    pub bytes: i64,
    /// Each task's checkpoint it holds, the first 64 in task order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<SavepointTask>,
}

/// One task's checkpoint in a savepoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointTask {
    /// The task (input partition).
    pub task: i64,
    /// The id of the checkpoint it is a copy of.
    pub checkpoint: i64,
    /// Per source topic, the next offset the task reads in its partition.
    pub source_offsets: BTreeMap<String, i64>,
}

/// What rolling a change out does: to each step's state, and to where each task runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPlan {
    /// The generation it is for.
    pub generation: i64,
    /// `create`, `restart`, `upgrade` (steps, source, image or restoreFrom change), `rescale`, `suspend`,
    /// `resume`.
    pub action: String,
    /// Whether it waits: `AwaitingApproval`, `StateIncompatible`, or unset when it rolls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// One line: what it does to state ("keeps all state", "resets aggregate `x` (…)").
    pub state: String,
    /// Per stateful step, its verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlannedStep>,
    /// Tasks that change worker, the first 64 in task order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<PlannedMove>,
    /// How many tasks change worker in all.
    pub tasks_moving: i64,
    /// State bytes the moving tasks download from the object store, in all (unknown
    /// checkpoints count 0).
    pub download_bytes: i64,
}

/// A stateful step's verdict in a plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    /// Step name.
    pub name: String,
    /// Step kind.
    pub kind: String,
    /// `keep`, `new`, `reset` or `drop`.
    pub verdict: String,
    /// For `reset`: the fields of its signature that changed, `field: old → new`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// A task that changes worker in a plan.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    /// The task (input partition).
    pub task: i64,
    /// The pod that runs it now.
    pub from: String,
    /// The pod that will run it.
    pub to: String,
    /// `store` (downloaded) or `volume` (the new pod's volume has it).
    pub restore_from: String,
    /// State bytes downloaded.
    pub bytes: i64,
}

/// A completed checkpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRef {
    /// Checkpoint id, increasing per task.
    pub id: i64,
    /// When it completed.
    pub time: Time,
}

/// One-word summary of a job's state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; workers are not running yet.
    Pending,
    /// All workers run and checkpoints advance.
    Running,
    /// Workers are being restarted with a new parallelism.
    Rescaling,
    /// Suspended: no workers, state kept.
    Suspended,
    /// Running, but something needs attention; see the Degraded condition.
    Degraded,
    /// The spec cannot run; see the SpecValid condition.
    Failed,
}

fn managed_properties_rule() -> kube::core::Rule {
    let keys = MANAGED_KAFKA_PROPERTIES
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ");
    kube::core::Rule::new(format!("!self.exists(k, k in [{keys}])")).message(
        "properties may not set what Sluice manages: bootstrap.servers, group.id, offsets, \
         isolation.level, transactions, security.protocol and credentials; use bootstrapServers, \
         deliveryGuarantee and auth instead",
    )
}

fn zero_duration() -> Duration {
    std::time::Duration::ZERO.into()
}

fn default_checkpoint_interval() -> Duration {
    std::time::Duration::from_secs(10).into()
}

fn default_retain() -> i32 {
    3
}

fn default_state_size() -> Quantity {
    Quantity("10Gi".into())
}

//! Observation: everything reconcile reads before it decides anything. I/O only, no decisions.
//! Reads the referenced Secrets' key names (and the values of the checkpoint credentials
//! Secret and of the source's `auth` Secret keys, for its own checkpoint reads and Kafka
//! clients, kept in memory and never written anywhere), the StatefulSet, the worker
//! pods, the job file the workers run with, and — through [`Outside`] — the source topics'
//! partition counts and the tasks' checkpoint HEADs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_core::checkpoint::descriptor::{Descriptor, TaskReport};
use sluice_core::checkpoint::layout::JobLayout;
use sluice_core::checkpoint::savepoint::{self, Savepoint, SavepointId};
use sluice_core::checkpoint::store::{CheckpointStore, StoreOptions};
use sluice_crds::v1alpha1::{CheckpointRef, StreamJob, StreamJobSpec};

use crate::build::{config_map_name, selector_string};
use crate::validate::{Facts, Unasked, secret_refs};

/// What lies outside the Kubernetes API: the brokers and the object store.
pub trait Outside: Send + Sync {
    /// Partition count of each source topic (0 when it does not exist), and of the sink and
    /// dead-letter topics when they are on the source's cluster, or why the brokers could not
    /// be asked.
    fn source_partitions(
        &self,
        job: &StreamJob,
    ) -> BoxFuture<'static, Result<BTreeMap<String, u32>, Unasked>>;

    /// The oldest of the tasks' latest checkpoints, or `None` when some task has none yet or
    /// the store cannot be read.
    fn last_checkpoint(
        &self,
        job: &StreamJob,
        partitions: u32,
    ) -> BoxFuture<'static, Option<CheckpointRef>>;

    /// What the tasks last reported (state, decisions), only reports written at their HEAD's
    /// epoch or later (an earlier owner's is stale); empty when the store cannot be read.
    fn task_reports(&self, job: &StreamJob, partitions: u32)
    -> BoxFuture<'static, Vec<TaskReport>>;

    /// Records in the source not yet committed by the job's workers, per task (its partition
    /// of every topic, summed); `None` when the brokers cannot be asked.
    fn lag(&self, job: &StreamJob, partitions: u32) -> BoxFuture<'static, Option<Vec<i64>>>;

    /// The job's checkpoint credentials, as its `credentialsSecret` holds them (the same keys
    /// the workers get as environment), for the reads below; empty when it names none.
    fn credentials(&self, _job: &StreamJob, _values: BTreeMap<String, String>) {}

    /// The librdkafka settings of the job's `spec.source.kafka.auth`, with the values its
    /// Secrets hold (as the workers get them), for the metadata and lag clients below; empty
    /// without `auth`; why not when a Secret or key is missing (validation reports which).
    fn source_auth(
        &self,
        _job: &StreamJob,
        _properties: Result<Vec<(&'static str, String)>, String>,
    ) {
    }

    /// Each task's HEAD checkpoint descriptor (None for a task without one), in task order:
    /// what the compatibility check of a change and the plan of a rollout read (the state's
    /// signatures and bytes); None when the store cannot be read. Not cached: a change is
    /// checked against what the tasks hold now: `fresh` reads them now; otherwise an answer
    /// up to [`RealOutside::REFRESH`] old may be reused (for `status.tasks`, so that the
    /// status, and the reconciles its changes trigger, settle between refreshes).
    fn heads(
        &self,
        job: &StreamJob,
        partitions: u32,
        fresh: bool,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>>;

    /// The descriptors savepoint `id` holds for tasks `0..partitions` (None for a task it
    /// lacks); None when it cannot be read or is not there.
    fn savepoint_heads(
        &self,
        job: &StreamJob,
        id: &SavepointId,
        partitions: u32,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>>;

    /// The job's complete savepoints, by number, ascending; why not when the store cannot be
    /// read.
    fn savepoints(
        &self,
        job: &StreamJob,
    ) -> BoxFuture<'static, Result<Vec<(u64, Savepoint)>, String>>;

    /// Takes the job's next savepoint for `trigger` from `heads` (one committed descriptor
    /// per task): see `sluice_core::checkpoint::savepoint::take`.
    fn take_savepoint(
        &self,
        job: &StreamJob,
        trigger: String,
        heads: Vec<Descriptor>,
    ) -> BoxFuture<'static, Result<Savepoint, String>>;

    /// Deletes the job's savepoint `n`.
    fn delete_savepoint(&self, job: &StreamJob, n: u64) -> BoxFuture<'static, Result<(), String>>;
}

/// The real brokers (librdkafka metadata request) and object store (the workers' checkpoint
/// module, with the operator's own credentials from its environment). One metadata client per
/// bootstrap address and auth settings is kept while used; lag and checkpoints, which cost a client per consumer group and a
/// read per task, are asked at most once per [`RealOutside::REFRESH`] per job.
#[derive(Default)]
pub struct RealOutside {
    clients: Mutex<HashMap<[u8; 32], Used<Arc<Metadata>>>>,
    lags: Cache<Option<Vec<i64>>>,
    checkpoints: Cache<Option<CheckpointRef>>,
    reports: Cache<Vec<TaskReport>>,
    heads: Cache<Option<Vec<Option<Descriptor>>>>,
    /// Per job (`namespace/name`), the checkpoint credentials its Secret holds.
    credentials: Mutex<HashMap<String, BTreeMap<String, String>>>,
    /// Per job, its source's auth settings (see [`Outside::source_auth`]).
    source_auth: Mutex<HashMap<String, Result<Auth, String>>>,
}

/// librdkafka auth settings.
type Auth = Vec<(&'static str, String)>;

/// A client's context that keeps what librdkafka last said about authentication (a SASL
/// failure, or a TLS handshake that failed, e.g. on a CA that does not sign the brokers'
/// certificates), so that a metadata request that then times out says why.
#[derive(Default)]
pub struct AuthWatch {
    refused: Mutex<Option<String>>,
}

impl AuthWatch {
    /// The last authentication failure, if any.
    fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the last failure: the brokers answered, so a later timeout is not theirs
    /// refusing the credentials (a job whose Secret was fixed must not read
    /// `KafkaAuthenticationFailed` at its next outage).
    fn answered(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl rdkafka::ClientContext for AuthWatch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        // A failed TLS handshake comes as `_SSL`, or as a transport failure saying so.
        let tls = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::BrokerTransportFailure)
        ) && reason.contains("SSL handshake failed");
        if tls
            || matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
            )
        {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        }
        tracing::warn!(%error, reason, "Kafka client error");
    }
}

impl rdkafka::consumer::ConsumerContext for AuthWatch {}

/// A metadata client of the operator's.
type Metadata = BaseConsumer<AuthWatch>;

/// A value and when it was last used.
type Used<T> = (Instant, T);

/// Why `client`'s brokers refused it, if they did: librdkafka reports a failed SASL
/// authentication or TLS handshake as an error event, served by polling (the client reads no
/// topic, so polling takes nothing from it).
fn refused(client: &Metadata) -> Option<String> {
    for _ in 0..5 {
        if let Some(why) = client.context().refused() {
            return Some(why);
        }
        let _ = client.poll(Duration::from_millis(100));
    }
    client.context().refused()
}

/// The brokers answered `client`: any authentication failure it saw is past. The error
/// events still queued are served first, or a queued one would be taken at the next outage
/// for a refusal.
fn answered(client: &Metadata) {
    for _ in 0..16 {
        let _ = client.poll(Duration::ZERO);
    }
    client.context().answered();
}

type Cache<T> = Arc<Mutex<HashMap<String, (Instant, T)>>>;

impl RealOutside {
    /// How long a job's lag and last checkpoint are reused.
    pub const REFRESH: Duration = Duration::from_secs(15);

    fn lags_handle(&self) -> Cache<Option<Vec<i64>>> {
        self.lags.clone()
    }

    fn checkpoints_handle(&self) -> Cache<Option<CheckpointRef>> {
        self.checkpoints.clone()
    }

    fn reports_handle(&self) -> Cache<Vec<TaskReport>> {
        self.reports.clone()
    }

    /// The job's source auth settings, as [`Outside::source_auth`] last gave them.
    fn auth_of(&self, job: &StreamJob) -> Result<Auth, String> {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        self.source_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// One metadata client per bootstrap address and credentials.
    fn metadata_client(&self, bootstrap: &str, auth: &Auth) -> Result<Arc<Metadata>, String> {
        // Keyed by a hash of the settings, which hold secret values; a client no job has used
        // for `IDLE` (its Secret rotated, its job deleted) is closed.
        const IDLE: Duration = Duration::from_secs(600);
        let mut hasher = blake3::Hasher::new();
        for part in std::iter::once(("bootstrap.servers", bootstrap))
            .chain(auth.iter().map(|(k, v)| (*k, v.as_str())))
        {
            hasher
                .update(part.0.as_bytes())
                .update(b"=")
                .update(part.1.as_bytes())
                .update(b"\n");
        }
        let key = *hasher.finalize().as_bytes();
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|k, (used, _)| *k == key || now.duration_since(*used) < IDLE);
        if let Some((used, client)) = clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (k, v) in auth {
            config.set(*k, v);
        }
        let client: Metadata = config
            .create_with_context(AuthWatch::default())
            .map_err(|e| e.to_string())?;
        let client = Arc::new(client);
        clients.insert(key, (now, client.clone()));
        Ok(client)
    }
}

/// The job's checkpoint store and paths, with the credentials its Secret holds (`known`),
/// else the operator's own environment's.
fn job_store(
    job: &StreamJob,
    known: &Mutex<HashMap<String, BTreeMap<String, String>>>,
) -> Option<(CheckpointStore, JobLayout)> {
    let spec = &job.spec.checkpoint;
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let options = StoreOptions {
        endpoint: spec.endpoint.clone(),
        region: spec.region.clone(),
        credentials: known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .unwrap_or_default(),
    };
    let store = CheckpointStore::open(&spec.storage, &options).ok()?;
    let layout = JobLayout::new(
        store.prefix(),
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
    );
    Some((store, layout))
}

/// A value cached per job for [`RealOutside::REFRESH`].
fn cached<T: Clone>(cache: &Mutex<HashMap<String, (Instant, T)>>, key: &str) -> Option<T> {
    let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get(key)
        .filter(|(at, _)| at.elapsed() < RealOutside::REFRESH)
        .map(|(_, v)| v.clone())
}

fn remember<T>(cache: &Mutex<HashMap<String, (Instant, T)>>, key: String, value: T) {
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, (Instant::now(), value));
}

impl Outside for RealOutside {
    fn credentials(&self, job: &StreamJob, values: BTreeMap<String, String>) {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        self.credentials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, values);
    }

    fn source_auth(&self, job: &StreamJob, properties: Result<Auth, String>) {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        self.source_auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, properties);
    }

    fn source_partitions(
        &self,
        job: &StreamJob,
    ) -> BoxFuture<'static, Result<BTreeMap<String, u32>, Unasked>> {
        let kafka = job.spec.source.kafka.clone();
        // The sink and dead-letter topics too, when they are on the source's cluster: an
        // adoption needs them to have as many partitions.
        let output: Vec<String> = match job.spec.sink.kafka.bootstrap_servers {
            None => vec![
                job.spec.sink.kafka.topic.clone(),
                job.spec.dead_letter_topic(),
            ],
            Some(_) => Vec::new(),
        };
        let client = self
            .auth_of(job)
            .and_then(|auth| self.metadata_client(&kafka.bootstrap_servers, &auth));
        Box::pin(async move {
            let client = client.map_err(Unasked::Unreachable)?;
            tokio::task::spawn_blocking(move || {
                let mut counts = BTreeMap::new();
                for topic in kafka.topics.iter().chain(&output) {
                    let metadata = client
                        .fetch_metadata(Some(topic), Duration::from_secs(5))
                        .map_err(|e| match refused(&client) {
                            Some(why) => Unasked::Refused(why),
                            None => Unasked::Unreachable(format!(
                                "asking {} for topic {topic}: {e}",
                                kafka.bootstrap_servers
                            )),
                        })?;
                    answered(&client);
                    let n = metadata
                        .topics()
                        .first()
                        .filter(|t| t.error().is_none())
                        .map_or(0, |t| t.partitions().len() as u32);
                    counts.insert(topic.clone(), n);
                }
                Ok(counts)
            })
            .await
            .map_err(|e| Unasked::Unreachable(e.to_string()))?
        })
    }

    fn heads(
        &self,
        job: &StreamJob,
        partitions: u32,
        fresh: bool,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        if !fresh && let Some(known) = cached(&self.heads, &key) {
            return Box::pin(async move { known });
        }
        let opened = job_store(job, &self.credentials);
        let cache = self.heads.clone();
        Box::pin(async move {
            let heads = Self::read_heads(opened, partitions).await;
            remember(&cache, key, heads.clone());
            heads
        })
    }

    fn savepoint_heads(
        &self,
        job: &StreamJob,
        id: &SavepointId,
        partitions: u32,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        let opened = job_store(job, &self.credentials);
        let id = id.clone();
        Box::pin(async move {
            let (store, _) = opened?;
            let layout = id.layout(store.prefix());
            let manifest = store.read_savepoint(&layout).await.ok()??;
            let mut heads = Vec::with_capacity(partitions as usize);
            for task in 0..partitions {
                heads.push(match manifest.task(task) {
                    Some(entry) => Some(
                        store
                            .read_descriptor(&layout.task(task), entry.checkpoint)
                            .await
                            .ok()?,
                    ),
                    None => None,
                });
            }
            Some(heads)
        })
    }

    fn savepoints(
        &self,
        job: &StreamJob,
    ) -> BoxFuture<'static, Result<Vec<(u64, Savepoint)>, String>> {
        let opened = job_store(job, &self.credentials);
        Box::pin(async move {
            let (store, layout) = opened.ok_or("the checkpoint storage cannot be opened")?;
            savepoint::list(&store, &layout)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn take_savepoint(
        &self,
        job: &StreamJob,
        trigger: String,
        heads: Vec<Descriptor>,
    ) -> BoxFuture<'static, Result<Savepoint, String>> {
        let opened = job_store(job, &self.credentials);
        let (namespace, name) = (job.namespace().unwrap_or_default(), job.name_any());
        Box::pin(async move {
            let (store, layout) = opened.ok_or("the checkpoint storage cannot be opened")?;
            let n = savepoint::next_number(&store, &layout)
                .await
                .map_err(|e| e.to_string())?;
            let id = SavepointId {
                namespace,
                job: name,
                n,
            };
            let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
            savepoint::take(&store, &layout, &id, &trigger, &heads, now)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn delete_savepoint(&self, job: &StreamJob, n: u64) -> BoxFuture<'static, Result<(), String>> {
        let opened = job_store(job, &self.credentials);
        Box::pin(async move {
            let (store, layout) = opened.ok_or("the checkpoint storage cannot be opened")?;
            savepoint::delete(&store, &layout, n)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn last_checkpoint(
        &self,
        job: &StreamJob,
        partitions: u32,
    ) -> BoxFuture<'static, Option<CheckpointRef>> {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        if let Some(known) = cached(&self.checkpoints, &key) {
            return Box::pin(async move { known });
        }
        let opened = job_store(job, &self.credentials);
        let read = async move {
            let (store, layout) = opened?;
            let mut oldest: Option<CheckpointRef> = None;
            for task in 0..partitions {
                let task = layout.task(task);
                let (head, _) = store.read_head(&task).await.ok()??;
                let descriptor = store.read_descriptor(&task, head.checkpoint?).await.ok()?;
                let time = k8s_openapi::jiff::Timestamp::from_millisecond(descriptor.created_at_ms)
                    .ok()?;
                if oldest.as_ref().is_none_or(|o| time < o.time.0) {
                    oldest = Some(CheckpointRef {
                        id: descriptor.id.0 as i64,
                        time: Time(time),
                    });
                }
            }
            oldest
        };
        let cache = self.checkpoints_handle();
        Box::pin(async move {
            let oldest = read.await;
            remember(&cache, key, oldest.clone());
            oldest
        })
    }

    fn task_reports(
        &self,
        job: &StreamJob,
        partitions: u32,
    ) -> BoxFuture<'static, Vec<TaskReport>> {
        let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
        if let Some(known) = cached(&self.reports, &key) {
            return Box::pin(async move { known });
        }
        let opened = job_store(job, &self.credentials);
        let cache = self.reports_handle();
        Box::pin(async move {
            let mut reports = Vec::new();
            if let Some((store, layout)) = opened {
                for task in 0..partitions {
                    let task = layout.task(task);
                    let Ok(Some(report)) = store.read_report(&task).await else {
                        continue;
                    };
                    let head_epoch = match store.read_head(&task).await {
                        Ok(head) => head.map(|(h, _)| h.epoch),
                        Err(_) => continue,
                    };
                    if head_epoch.is_none_or(|h| report.epoch.is_some_and(|e| e >= h)) {
                        reports.push(report);
                    }
                }
            }
            remember(&cache, key, reports.clone());
            reports
        })
    }

    fn lag(&self, job: &StreamJob, partitions: u32) -> BoxFuture<'static, Option<Vec<i64>>> {
        let kafka = job.spec.source.kafka.clone();
        // The workers' group (`group_id` of the worker's `kafka` module), where they commit offsets.
        let group = format!(
            "sluice-{}-{}",
            job.namespace().unwrap_or_default(),
            job.name_any()
        );
        if let Some(known) = cached(&self.lags, &group) {
            return Box::pin(async move { known });
        }
        let auth = self.auth_of(job).ok();
        let metadata = auth
            .as_ref()
            .and_then(|auth| self.metadata_client(&kafka.bootstrap_servers, auth).ok());
        let cache = self.lags_handle();
        Box::pin(async move {
            let key = group.clone();
            let lag = tokio::task::spawn_blocking(move || {
                Self::blocking_lag(&kafka, &auth?, &group, partitions, metadata?.as_ref())
            })
            .await
            .ok()
            .flatten();
            remember(&cache, key, lag.clone());
            lag
        })
    }
}

impl RealOutside {
    /// Each task's HEAD descriptor, read now (see [`Outside::heads`]).
    async fn read_heads(
        opened: Option<(CheckpointStore, JobLayout)>,
        partitions: u32,
    ) -> Option<Vec<Option<Descriptor>>> {
        let (store, layout) = opened?;
        let mut heads = Vec::with_capacity(partitions as usize);
        for task in 0..partitions {
            let task = layout.task(task);
            // A descriptor gone between reading HEAD and it: retention, after the task
            // committed a newer one. Read HEAD again.
            let mut attempts = 0;
            let head = loop {
                attempts += 1;
                let head = store.read_head(&task).await.ok()?;
                let Some(id) = head.and_then(|(h, _)| h.checkpoint) else {
                    break None;
                };
                match store.read_descriptor(&task, id).await {
                    Ok(d) => break Some(d),
                    Err(e) if e.is_not_found() && attempts < 3 => {}
                    Err(_) => return None,
                }
            };
            heads.push(head);
        }
        Some(heads)
    }

    fn blocking_lag(
        kafka: &sluice_crds::v1alpha1::KafkaSource,
        auth: &Auth,
        group: &str,
        partitions: u32,
        metadata: &Metadata,
    ) -> Option<Vec<i64>> {
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = std::time::Duration::from_secs(5);
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &kafka.bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        for (k, v) in auth {
            config.set(*k, v);
        }
        let consumer: BaseConsumer = config.create().ok()?;
        let mut list = TopicPartitionList::new();
        for topic in &kafka.topics {
            for p in 0..partitions as i32 {
                list.add_partition(topic, p);
            }
        }
        let committed = consumer.committed_offsets(list, timeout).ok()?;
        let mut lag = vec![0; partitions as usize];
        for element in committed.elements() {
            let (low, high) = metadata
                .fetch_watermarks(element.topic(), element.partition(), timeout)
                .ok()?;
            let at = match element.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            *lag.get_mut(usize::try_from(element.partition()).ok()?)? += (high - at).max(0);
        }
        Some(lag)
    }
}

/// What was observed for one job.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Facts validation needs.
    pub facts: Facts,
    /// The job's StatefulSet, if it exists.
    pub stateful_set: Option<StatefulSet>,
    /// The job's worker pods.
    pub pods: Vec<Pod>,
}

/// Why observing failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// An API request failed.
    #[error("reading {what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The client error.
        source: kube::Error,
    },
}

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ObserveError {
    let what = what.into();
    move |source| ObserveError::Api { what, source }
}

/// Reads what reconcile needs about `job`.
pub async fn observe(
    client: &Client,
    outside: &Arc<dyn Outside>,
    job: &StreamJob,
) -> Result<Observed, ObserveError> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();

    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut secrets = BTreeMap::new();
    let names: BTreeSet<String> = secret_refs(&job.spec)
        .into_iter()
        .map(|(_, n, _)| n)
        .collect();
    let checkpoint_secret = job
        .spec
        .checkpoint
        .credentials_secret
        .as_ref()
        .map(|s| s.name.clone());
    let mut credentials = BTreeMap::new();
    // The source's auth Secrets, whose values its metadata and lag clients use.
    let auth_refs: Vec<(String, String)> = secret_refs(&job.spec)
        .into_iter()
        .filter(|(field, _, _)| field.starts_with("spec.source.kafka.auth"))
        .filter_map(|(_, name, key)| Some((name, key?)))
        .collect();
    let mut auth_values: BTreeMap<(String, String), String> = BTreeMap::new();
    for secret in names {
        let found = secrets_api
            .get_opt(&secret)
            .await
            .map_err(api(format!("Secret {secret}")))?;
        // The checkpoint credentials are the one Secret whose values are read (kept in
        // memory, for the operator's own checkpoint reads); of the others, key names only.
        if checkpoint_secret.as_deref() == Some(secret.as_str())
            && let Some(s) = &found
        {
            for (k, v) in s.data.iter().flatten() {
                credentials.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
            }
            for (k, v) in s.string_data.iter().flatten() {
                credentials.insert(k.clone(), v.clone());
            }
        }
        if let Some(s) = &found {
            for (name, key) in auth_refs.iter().filter(|(name, _)| *name == secret) {
                let value = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key)).cloned());
                if let Some(value) = value {
                    auth_values.insert((name.clone(), key.clone()), value);
                }
            }
        }
        let keys = found.map(|s| {
            let mut keys: BTreeSet<String> = s.data.unwrap_or_default().into_keys().collect();
            keys.extend(s.string_data.unwrap_or_default().into_keys());
            keys
        });
        secrets.insert(secret, keys);
    }

    let stateful_set = Api::<StatefulSet>::namespaced(client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(api(format!("StatefulSet {name}")))?;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .get_opt(&config_map_name(&name))
        .await
        .map_err(api(format!("ConfigMap {}", config_map_name(&name))))?;
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector_string(&name)))
        .await
        .map_err(api("worker pods"))?
        .items;

    // The spec the workers run with; `suspend` is not in the job file, the StatefulSet's
    // replicas say it.
    let applied = config_map
        .and_then(|cm| cm.data?.remove("job.yaml"))
        .and_then(|text| serde_norway::from_str::<StreamJob>(&text).ok());
    // The partitions the workers read, pinned in the job file (absent from one rendered
    // before they were: its workers read what the brokers said at their start).
    // Unreadable annotations are treated as none (below), with a warning: only the operator
    // writes them.
    let applied_partitions = applied.as_ref().and_then(|a| {
        sluice_core::job::Partitions::from_annotations(a.annotations())
            .map_err(|e| tracing::warn!(error = %e, "the job file's partitions are unreadable"))
            .ok()
            .flatten()
    });
    let applied = applied.map(|applied| StreamJobSpec {
        suspend: stateful_set.as_ref().and_then(|s| s.spec.replicas) == Some(0),
        ..applied.spec
    });

    outside.credentials(job, credentials);
    outside.source_auth(
        job,
        sluice_core::kafka_auth::properties(
            job.spec.source.kafka.auth.as_ref(),
            "spec.source.kafka.auth",
            |needed| {
                auth_values
                    .get(&(needed.secret.name.clone(), needed.secret.key.clone()))
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "{} names key {} of Secret {}, which is not there",
                            needed.field, needed.secret.key, needed.secret.name
                        )
                    })
            },
        ),
    );
    let source_partitions = outside.source_partitions(job).await;
    // A job file rendered before partitions were pinned (the operator was upgraded): its
    // workers read what the brokers said at their start, which nothing recorded, and the
    // topics may have grown since. Taking today's count as what they read would start the
    // tasks of partitions added in between, which have no checkpoint, at `latest` and skip
    // their records: `Partitions::from_checkpoints` says what was read instead. When the
    // store cannot be read, every task counts as added: one with a checkpoint resumes from
    // it anyway, and one without never skips its partition.
    let applied_partitions = match (&applied, applied_partitions, &source_partitions) {
        (Some(_), None, Ok(counts)) => {
            let fewest = (job.spec.source.kafka.topics.iter())
                .filter_map(|t| counts.get(t).copied().filter(|n| *n > 0))
                .min();
            match fewest {
                Some(n) => match outside.heads(job, n, true).await {
                    Some(heads) => sluice_core::job::Partitions::from_checkpoints(
                        &heads.iter().map(Option::is_some).collect::<Vec<_>>(),
                    ),
                    None => Some(sluice_core::job::Partitions {
                        read: n,
                        added_from: 0,
                    }),
                },
                None => None,
            }
        }
        (_, pinned, _) => pinned,
    };
    Ok(Observed {
        facts: Facts {
            secrets,
            source_partitions,
            applied,
            applied_partitions,
        },
        stateful_set,
        pods,
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientContext;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;

    use super::AuthWatch;

    #[test]
    fn an_authentication_failure_is_forgotten_once_the_brokers_answer() {
        let watch = AuthWatch::default();
        watch.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        assert_eq!(
            watch.refused().as_deref(),
            Some("SASL authentication error: Authentication failed")
        );
        watch.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "connection refused",
        );
        assert!(watch.refused().is_some(), "an outage does not clear it");
        watch.answered();
        assert_eq!(watch.refused(), None);
    }
}

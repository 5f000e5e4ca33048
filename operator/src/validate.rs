//! Validation of a StreamJob against what was observed around it: pure, no client. It returns
//! a [`ValidJob`] (what every later step works from) or every reason the job cannot run, each
//! naming the field and what to do about it. The CRD schema and its CEL rules have already
//! checked each field on its own; this step checks what only the cluster and the worker know.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::SecretKeySelector;
use kube::ResourceExt;
use sluice_core::job::Partitions;
use sluice_crds::v1alpha1::{
    DeliveryGuarantee, OnNewPartitions, StateSpec, StreamJob, StreamJobSpec,
};

/// What observation found out about the job's surroundings.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    /// Secrets the spec refers to, by name: the keys each holds, `None` when it does not exist.
    pub secrets: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Partition count per source topic (0: no such topic), or why the brokers could not be
    /// asked. Unreachable brokers do not make a spec invalid (the workers will report them);
    /// brokers that refuse the job's credentials do.
    pub source_partitions: Result<BTreeMap<String, u32>, Unasked>,
    /// The spec the running workers were started with (from the job's ConfigMap), if any.
    pub applied: Option<StreamJobSpec>,
    /// The partitions the running workers read (annotations of the job file in the ConfigMap);
    /// `None` for a new job, or one rendered before partitions were pinned.
    pub applied_partitions: Option<Partitions>,
}

/// Why the source brokers did not say how many partitions the topics have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unasked {
    /// They could not be reached (or did not answer in time).
    Unreachable(String),
    /// They refused the credentials of `spec.source.kafka.auth` (SASL authentication or the TLS
    /// handshake failed): librdkafka's reason.
    Refused(String),
}

impl std::fmt::Display for Unasked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unasked::Unreachable(why) | Unasked::Refused(why) => f.write_str(why),
        }
    }
}

/// A StreamJob that can run, with what the builders need derived once.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidJob {
    /// Job name; also the StatefulSet's.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The StreamJob's uid, for owner references.
    pub uid: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// The spec as validated.
    pub spec: StreamJobSpec,
    /// The volume the StatefulSet's claim template asks for. Claim templates cannot change
    /// once the StatefulSet exists, so a running job keeps the one it was created with.
    pub volume: StateSpec,
    /// The source partitions the job reads, when the brokers answered: those it was rolled out
    /// onto, or every partition the topics have when it adopts new ones
    /// (`spec.source.kafka.onNewPartitions: adopt`). Task `p` reads partition `p`.
    pub partitions: Option<u32>,
    /// The partitions each source topic has, when the brokers answered.
    pub live_partitions: Option<u32>,
    /// The partitions the running workers read (see [`Facts::applied_partitions`]).
    pub rolled: Option<Partitions>,
    /// The rollout number the pods of this spec run with (`SLUICE_ROLLOUT`), set by
    /// [`build::rollout`](crate::build::rollout); validation leaves 0.
    pub rollout: i64,
}

/// Why a job cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The field at fault, as a path in the manifest (`spec.parallelism`).
    pub field: String,
    /// CamelCase reason, for the `SpecValid` condition and Events.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks `job` against `facts`; returns every problem found, not only the first.
pub fn validate(job: &StreamJob, facts: &Facts) -> Result<ValidJob, Vec<SpecError>> {
    let spec = &job.spec;
    let mut errors = Vec::new();
    let mut fail = |field: String, reason: &'static str, message: String| {
        errors.push(SpecError {
            field,
            reason,
            message,
        })
    };

    // Storage every pod can reach.
    if spec.checkpoint.storage.starts_with("file://") {
        fail(
            "spec.checkpoint.storage".into(),
            "StorageNotShared",
            format!(
                "{} is a path on one machine, but a task moves between pods on different nodes \
                 and must find its checkpoints there; use s3://, gs:// or az:// storage \
                 (file:// is for `sluice-worker local`)",
                spec.checkpoint.storage
            ),
        );
    }
    // Exactly-once commits source offsets inside the sink cluster's transaction.
    if spec.sink.kafka.delivery_guarantee == DeliveryGuarantee::ExactlyOnce
        && spec
            .sink
            .kafka
            .bootstrap_servers
            .as_ref()
            .is_some_and(|b| *b != spec.source.kafka.bootstrap_servers)
    {
        fail(
            "spec.sink.kafka.bootstrapServers".into(),
            "TransactionSpansClusters",
            "exactly-once commits the source offsets in the sink's transaction, so source and \
             sink must be the same Kafka cluster; remove sink.kafka.bootstrapServers or use \
             deliveryGuarantee: at-least-once"
                .into(),
        );
    }

    // Referenced Secrets and keys.
    for (field, name, key) in secret_refs(spec) {
        match facts.secrets.get(&name) {
            Some(Some(keys)) => {
                if let Some(key) = key.filter(|k| !keys.contains(k)) {
                    let have = keys.iter().cloned().collect::<Vec<_>>().join(", ");
                    fail(
                        field,
                        "SecretKeyMissing",
                        format!(
                            "Secret {name} has no key {key} (it has: {have}); add the key or \
                             point the selector at the right one"
                        ),
                    );
                }
            }
            _ => fail(
                field,
                "SecretNotFound",
                format!(
                    "Secret {name} does not exist in namespace {}; create it before the job \
                     can start",
                    job.namespace().unwrap_or_default()
                ),
            ),
        }
    }

    // Expressions compile.
    let mut invalid_expressions = BTreeSet::new();
    for (field, expr) in expressions(spec) {
        if let Err(e) = cel::Program::compile(&expr) {
            invalid_expressions.insert(field.clone());
            let at = e
                .errors
                .first()
                .map(|e| format!(" at line {}, column {}", e.pos.0, e.pos.1 + 1))
                .unwrap_or_default();
            let why = e
                .errors
                .first()
                .map_or_else(|| e.to_string(), |e| e.msg.clone());
            fail(
                field,
                "ExpressionInvalid",
                format!("the CEL expression {expr:?} does not compile{at}: {why}"),
            );
        }
    }

    // Steps the worker build runs.
    let worker_job = sluice_core::job::Job {
        namespace: job.namespace().unwrap_or_default(),
        name: job.name_any(),
        spec: spec.clone(),
        partitions: None,
    };
    match sluice_core::steps::check(&worker_job) {
        Ok(_) => {}
        Err(sluice_core::job::JobError::Expression { error, .. }) => {
            // What the worker refuses beyond syntax, e.g. a name that is no record variable.
            let step = spec.steps.iter().position(|s| s.name == error.step);
            let field = step.map_or_else(
                || "spec.steps".to_string(),
                |i| format!("spec.steps[{i}].{}", error.field),
            );
            if !invalid_expressions.contains(&field) {
                fail(
                    field,
                    "ExpressionInvalid",
                    format!(
                        "the CEL expression {:?} is invalid at line {}, column {}: {}",
                        error.expr, error.line, error.column, error.problem
                    ),
                );
            }
        }
        Err(e) => fail("spec.steps".into(), "StepUnsupported", e.to_string()),
    }

    // Credentials the brokers refused: the workers, given the same Secrets, would be refused too.
    if let Err(Unasked::Refused(why)) = &facts.source_partitions {
        let named: Vec<String> = secret_refs(spec)
            .into_iter()
            .filter(|(field, _, _)| field.starts_with("spec.source.kafka.auth"))
            .map(|(field, secret, key)| {
                format!("{field} (Secret {secret}, key {})", key.unwrap_or_default())
            })
            .collect();
        fail(
            "spec.source.kafka.auth".into(),
            "KafkaAuthenticationFailed",
            format!(
                "the brokers at {} refused the job's credentials: {why}; check {} and the \
                 mechanism: the job starts on the next reconcile after the Secret is fixed",
                spec.source.kafka.bootstrap_servers,
                named.join(", ")
            ),
        );
    }

    // Source topology.
    let mut partitions = None;
    let mut live_partitions = None;
    if let Ok(counts) = &facts.source_partitions {
        for (i, topic) in spec.source.kafka.topics.iter().enumerate() {
            if counts.get(topic).copied().unwrap_or(0) == 0 {
                fail(
                    format!("spec.source.kafka.topics[{i}]"),
                    "SourceTopicNotFound",
                    format!(
                        "topic {topic} does not exist on {}; create it (or fix the name) and the \
                         job starts on the next reconcile",
                        spec.source.kafka.bootstrap_servers
                    ),
                );
            }
        }
        let known: BTreeSet<u32> = spec
            .source
            .kafka
            .topics
            .iter()
            .filter_map(|t| counts.get(t).copied().filter(|n| *n > 0))
            .collect();
        let adopt = spec.source.kafka.on_new_partitions == OnNewPartitions::Adopt;
        let fewest = known.first().copied();
        live_partitions = known.last().copied();
        // What the tasks read: the partitions the workers were rolled out onto, unless the
        // topics have more and the job adopts them. Under `report`, topics that grew unevenly
        // are not an error: every topic still has the partitions the tasks read.
        let read = match (facts.applied_partitions, fewest) {
            (_, None) => None,
            (Some(rolled), Some(fewest)) if fewest < rolled.read => {
                fail(
                    "spec.source.kafka.topics".into(),
                    "SourcePartitionsRemoved",
                    format!(
                        "the source topics have {fewest} partitions where the job reads {}: \
                         Kafka cannot remove partitions, so a topic was deleted and created \
                         again and the job's checkpointed offsets no longer belong to it; \
                         recreate the job with new checkpoint storage (or restore the topic)",
                        rolled.read
                    ),
                );
                None
            }
            (Some(rolled), Some(_)) if !adopt => Some(rolled.read),
            (_, Some(_)) if known.len() > 1 => {
                fail(
                    "spec.source.kafka.topics".into(),
                    "SourceNotCoPartitioned",
                    format!(
                        "source topics must have the same number of partitions (task p reads \
                         partition p of each), found {}",
                        spec.source
                            .kafka
                            .topics
                            .iter()
                            .map(|t| format!("{t}: {}", counts.get(t).copied().unwrap_or(0)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
            (_, Some(all)) => Some(all),
        };
        // Adopting more partitions: task p writes partition p of the sink and dead-letter
        // topics, so every worker would refuse to start (and the job stop) on one with fewer.
        // Checked here, before the roll, when they are on the source's cluster (a missing one
        // is created by the workers with enough).
        if let (Some(rolled), Some(n)) = (facts.applied_partitions, read)
            && n > rolled.read
            && spec.sink.kafka.bootstrap_servers.is_none()
        {
            for (field, topic) in [
                ("spec.sink.kafka.topic", spec.sink.kafka.topic.clone()),
                ("spec.deadLetter.topic", spec.dead_letter_topic()),
            ] {
                if let Some(&have) = counts.get(&topic).filter(|have| (1..n).contains(*have)) {
                    fail(
                        field.into(),
                        "OutputPartitionsTooFew",
                        format!(
                            "adopting the source's {n} partitions (from {}) needs {n} in topic \
                             {topic}, which has {have}: task p writes partition p of it, so \
                             every worker would refuse to start; add partitions to {topic} (to \
                             at least {n}) and the job adopts them on the next reconcile, \
                             reading {} until then",
                            rolled.read, rolled.read
                        ),
                    );
                }
            }
        }
        if let Some(n) = read {
            partitions = Some(n);
            if spec.parallelism > n as i32 {
                fail(
                    "spec.parallelism".into(),
                    "ParallelismAbovePartitions",
                    format!(
                        "parallelism {} is above the {n} partitions of the source, so {} \
                         workers would have nothing to do; set parallelism to at most {n} \
                         (partitions added to the topic of a stateful job move keys between \
                         tasks, which spec.upgrade.stateChanges decides about)",
                        spec.parallelism,
                        spec.parallelism - n as i32
                    ),
                );
            }
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let volume = match &facts.applied {
        Some(applied) => applied.state.clone(),
        None => spec.state.clone(),
    }
    .unwrap_or_else(default_state);
    Ok(ValidJob {
        name: job.name_any(),
        namespace: job.namespace().unwrap_or_default(),
        uid: job.uid().unwrap_or_default(),
        generation: job.metadata.generation.unwrap_or_default(),
        spec: spec.clone(),
        volume,
        partitions,
        live_partitions,
        rolled: facts.applied_partitions,
        rollout: 0,
    })
}

/// The state volume of a spec without `state`.
pub fn default_state() -> StateSpec {
    serde_json::from_value(serde_json::json!({})).unwrap_or_else(|_| StateSpec {
        size: k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Gi".into()),
        storage_class_name: None,
    })
}

/// Every Secret the spec refers to: (field, secret name, key if a single key is meant).
pub fn secret_refs(spec: &StreamJobSpec) -> Vec<(String, String, Option<String>)> {
    let mut refs = Vec::new();
    let mut selector = |field: String, s: &SecretKeySelector| {
        refs.push((field, s.name.clone(), Some(s.key.clone())));
    };
    let auths = [
        ("spec.source.kafka.auth", spec.source.kafka.auth.as_ref()),
        ("spec.sink.kafka.auth", spec.sink.kafka.auth.as_ref()),
    ];
    for (at, auth) in auths {
        let Some(auth) = auth else { continue };
        if let Some(sasl) = &auth.sasl {
            selector(format!("{at}.sasl.username"), &sasl.username);
            selector(format!("{at}.sasl.password"), &sasl.password);
        }
        if let Some(tls) = &auth.tls {
            for (name, s) in [
                ("ca", &tls.ca),
                ("certificate", &tls.certificate),
                ("key", &tls.key),
            ] {
                if let Some(s) = s {
                    selector(format!("{at}.tls.{name}"), s);
                }
            }
        }
    }
    for (i, env) in spec
        .pod_template
        .iter()
        .flat_map(|t| t.env.iter())
        .enumerate()
    {
        if let Some(s) = env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .filter(|s| s.optional != Some(true))
        {
            selector(
                format!("spec.podTemplate.env[{i}].valueFrom.secretKeyRef"),
                s,
            );
        }
    }
    if let Some(secret) = &spec.checkpoint.credentials_secret {
        refs.push((
            "spec.checkpoint.credentialsSecret".into(),
            secret.name.clone(),
            None,
        ));
    }
    refs
}

/// Every CEL expression in the steps, with its field path.
fn expressions(spec: &StreamJobSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let at = format!("spec.steps[{i}]");
        if let Some(f) = &step.filter {
            out.push((format!("{at}.filter.expr"), f.expr.clone()));
        }
        if let Some(m) = &step.map {
            out.extend(m.key.iter().map(|e| (format!("{at}.map.key"), e.clone())));
            out.extend(
                m.value
                    .iter()
                    .map(|e| (format!("{at}.map.value"), e.clone())),
            );
        }
        if let Some(m) = &step.materialize {
            out.extend(
                m.key
                    .iter()
                    .map(|e| (format!("{at}.materialize.key"), e.clone())),
            );
        }
        if let Some(a) = &step.aggregate {
            out.push((format!("{at}.aggregate.groupBy"), a.group_by.clone()));
            for (j, agg) in a.aggregations.iter().enumerate() {
                out.extend(
                    agg.expr
                        .iter()
                        .map(|e| (format!("{at}.aggregate.aggregations[{j}].expr"), e.clone())),
                );
            }
        }
        if let Some(d) = &step.dedupe {
            out.push((format!("{at}.dedupe.key"), d.key.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests;

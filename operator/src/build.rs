//! The desired children of a job: pure functions from a [`ValidJob`] to Kubernetes objects,
//! no client. The objects are written as the manifests a person would write, then typed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};
use sluice_core::job::Partitions;

use crate::validate::ValidJob;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "sluice-operator";
/// Label naming the job a child belongs to.
pub const JOB_LABEL: &str = "sluice.dev/job";
/// Label on worker pods naming the revision of config and pod shape they were started with.
pub const REVISION_LABEL: &str = "sluice.dev/revision";
/// Where the worker reads its job file.
pub const JOB_FILE: &str = "/etc/sluice/job.yaml";
/// The worker's state directory (the persistent volume).
pub const STATE_DIR: &str = "/var/lib/sluice";
/// The worker's HTTP port (`/metrics`, `/healthz`, `/readyz`).
pub const WORKER_PORT: i32 = 8080;
/// Uid and gid the worker runs as (distroless `nonroot`).
pub const WORKER_UID: i64 = 65532;

/// Settings of the operator that shape children.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Worker image for jobs without `spec.image`.
    pub worker_image: String,
}

/// Every child of a job, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The job file the workers read.
    pub config_map: ConfigMap,
    /// Headless Service giving the pods stable names.
    pub service: Service,
    /// Service for scraping the workers' metrics.
    pub metrics_service: Service,
    /// At most one worker down at a time for voluntary disruptions.
    pub pdb: PodDisruptionBudget,
    /// The workers.
    pub stateful_set: StatefulSet,
}

/// Why building failed: a builder produced an object its type rejects (a bug).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A builder's output did not deserialize into its Kubernetes type.
    #[error("building the {kind}: {source}")]
    Shape {
        /// The kind built.
        kind: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
    /// The job file did not serialize.
    #[error("rendering the job file: {0}")]
    Render(String),
}

/// Labels that select a job's worker pods.
pub fn selector_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice-worker".into()),
        ("app.kubernetes.io/instance".into(), job.into()),
        (JOB_LABEL.into(), job.into()),
    ])
}

/// Labels on every child of a job.
pub fn labels(job: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(job);
    labels.insert("app.kubernetes.io/component".into(), "worker".into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

/// The selector of a job's pods as a string (`status.selector`, for the scale subresource).
pub fn selector_string(job: &str) -> String {
    selector_labels(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Name of the metrics Service.
pub fn metrics_service_name(job: &str) -> String {
    format!("{job}-metrics")
}

/// Name of the ConfigMap holding the job file.
pub fn config_map_name(job: &str) -> String {
    format!("{job}-job")
}

/// The job file the workers read: the StreamJob with its spec and nothing the server added.
/// `suspend` is left out: it decides whether pods run, not what they do; so are `savepoint`,
/// which the operator takes from the checkpoints the workers commit anyway, and
/// `progressDeadline`, which only the operator reads.
pub fn job_file(job: &ValidJob) -> Result<String, BuildError> {
    let mut spec = job.spec.clone();
    spec.suspend = false;
    spec.savepoint = None;
    spec.progress_deadline = sluice_crds::StreamJobSpec::default_progress_deadline();
    let mut metadata = json!({ "name": job.name, "namespace": job.namespace });
    if let Some(pinned) = pinned_partitions(job) {
        metadata["annotations"] = json!({
            Partitions::READ: pinned.read.to_string(),
            Partitions::ADDED_FROM: pinned.added_from.to_string(),
        });
    }
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": metadata,
        "spec": spec,
    });
    serde_norway::to_string(&manifest).map_err(|e| BuildError::Render(e.to_string()))
}

/// The partitions the workers of `job` read, pinned in their job file: `job.partitions`, with
/// those beyond the ones rolled out before marked as added while the job ran; what was rolled
/// out before when the brokers did not answer.
pub fn pinned_partitions(job: &ValidJob) -> Option<Partitions> {
    match job.partitions {
        Some(read) => Some(Partitions {
            read,
            added_from: job.rolled.map_or(read, |r| r.added_from.min(read)),
        }),
        None => job.rolled,
    }
}

/// A short hash of everything that needs a worker restart when it changes: the job file
/// (which holds the parallelism) but for the volume size, the image, resources and pod template. Pods carry it as
/// [`REVISION_LABEL`]; pods of another revision are deleted and come back with this one.
pub fn revision(job: &ValidJob, settings: &Settings) -> Result<String, BuildError> {
    let mut hasher = blake3::Hasher::new();
    // The volume is fixed when the StatefulSet is created (see `change::Effect::Ignored`).
    let mut without_volume = job.clone();
    without_volume.spec.state = None;
    hasher.update(job_file(&without_volume)?.as_bytes());
    let shape = json!({
        "image": image(job, settings),
        "resources": job.spec.resources,
        "podTemplate": job.spec.pod_template,
    });
    hasher.update(shape.to_string().as_bytes());
    Ok(hasher.finalize().to_hex()[..10].to_string())
}

/// The rollout number of `job`'s pods: the one `existing` (the StatefulSet as it is) gives
/// its pods while their revision stays the same, else `now` (Unix seconds), the time this
/// revision is rolled out. It grows with every rollout, also across a job deleted and created
/// again (whose generations start over); a worker of an older rollout never takes a task from
/// one of a newer rollout (an old pod restarted during a roll keeps its hands off the new
/// pods' tasks). An edit that restarts nothing keeps the number.
pub fn rollout(
    job: &ValidJob,
    settings: &Settings,
    existing: Option<&k8s_openapi::api::apps::v1::StatefulSet>,
    now: i64,
) -> Result<i64, BuildError> {
    let template = existing.map(|s| &s.spec.template);
    let labels = template.and_then(|t| t.metadata.as_ref()?.labels.as_ref());
    let rolled_revision = labels.and_then(|l| l.get(REVISION_LABEL));
    let rolled = labels
        .and_then(|l| l.get(ROLLOUT_LABEL))
        .and_then(|n| n.parse::<i64>().ok());
    Ok(match rolled {
        Some(n)
            if rolled_revision.map(String::as_str) == Some(revision(job, settings)?.as_str()) =>
        {
            n
        }
        _ => now,
    })
}

/// Label of the pods: their rollout number (also their `SLUICE_ROLLOUT`).
pub const ROLLOUT_LABEL: &str = "sluice.dev/rollout";

/// The worker's environment variable holding its rollout number.
pub const ROLLOUT_ENV: &str = "SLUICE_ROLLOUT";

fn image(job: &ValidJob, settings: &Settings) -> String {
    job.spec
        .image
        .clone()
        .unwrap_or_else(|| settings.worker_image.clone())
}

/// The desired children of `job`.
pub fn children(job: &ValidJob, settings: &Settings) -> Result<Children, BuildError> {
    Ok(Children {
        config_map: typed("ConfigMap", config_map(job)?)?,
        service: typed("Service", service(job))?,
        metrics_service: typed("Service", metrics_service(job))?,
        pdb: typed("PodDisruptionBudget", pdb(job))?,
        stateful_set: typed("StatefulSet", stateful_set(job, settings)?)?,
    })
}

fn typed<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    value: Value,
) -> Result<T, BuildError> {
    serde_json::from_value(value).map_err(|source| BuildError::Shape { kind, source })
}

fn metadata(job: &ValidJob, name: String) -> Value {
    json!({
        "name": name,
        "namespace": job.namespace,
        "labels": labels(&job.name),
        "ownerReferences": [{
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamJob",
            "name": job.name,
            "uid": job.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    })
}

fn config_map(job: &ValidJob) -> Result<Value, BuildError> {
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, config_map_name(&job.name)),
        "data": { "job.yaml": job_file(job)? },
    }))
}

fn service(job: &ValidJob) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, job.name.clone()),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector_labels(&job.name),
            "ports": [{ "name": "metrics", "port": WORKER_PORT, "targetPort": "metrics" }],
        },
    })
}

fn metrics_service(job: &ValidJob) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, metrics_service_name(&job.name)),
        "spec": {
            "selector": selector_labels(&job.name),
            "ports": [{ "name": "metrics", "port": WORKER_PORT, "targetPort": "metrics" }],
        },
    })
}

fn pdb(job: &ValidJob) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(job, job.name.clone()),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": selector_labels(&job.name) },
        },
    })
}

/// Environment of the worker container: its place in the job, then credentials, each only as
/// a reference to its Secret, then the user's additions.
fn env(job: &ValidJob) -> Vec<Value> {
    let spec = &job.spec;
    let mut env = vec![
        json!({ "name": "SLUICE_JOB", "value": JOB_FILE }),
        json!({ "name": "SLUICE_PARALLELISM", "value": spec.parallelism.to_string() }),
        json!({
            "name": "SLUICE_ORDINAL",
            "valueFrom": { "fieldRef": {
                "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"
            } },
        }),
        json!({ "name": "SLUICE_STATE_DIR", "value": STATE_DIR }),
        json!({ "name": "SLUICE_HTTP_ADDR", "value": format!("0.0.0.0:{WORKER_PORT}") }),
        json!({ "name": "SLUICE_LOG_FORMAT", "value": "json" }),
    ];
    let secret = |name: &str, s: &k8s_openapi::api::core::v1::SecretKeySelector| json!({ "name": name, "valueFrom": { "secretKeyRef": { "name": s.name, "key": s.key } } });
    for (side, auth) in [
        ("SOURCE", spec.source.kafka.auth.as_ref()),
        ("SINK", spec.sink.kafka.auth.as_ref()),
    ] {
        let Some(auth) = auth else { continue };
        if let Some(sasl) = &auth.sasl {
            env.push(secret(
                &format!("SLUICE_{side}_SASL_USERNAME"),
                &sasl.username,
            ));
            env.push(secret(
                &format!("SLUICE_{side}_SASL_PASSWORD"),
                &sasl.password,
            ));
        }
        if let Some(tls) = &auth.tls {
            for (what, s) in [
                ("CA", &tls.ca),
                ("CERTIFICATE", &tls.certificate),
                ("KEY", &tls.key),
            ] {
                if let Some(s) = s {
                    env.push(secret(&format!("SLUICE_{side}_TLS_{what}"), s));
                }
            }
        }
    }
    if let Some(template) = &spec.pod_template {
        env.extend(
            template
                .env
                .iter()
                .filter(|e| e.name != ROLLOUT_ENV)
                .map(|e| json!(e)),
        );
    }
    // Last and the user's never: the rollout guard depends on it.
    env.push(json!({ "name": ROLLOUT_ENV, "value": job.rollout.to_string() }));
    env
}

fn stateful_set(job: &ValidJob, settings: &Settings) -> Result<Value, BuildError> {
    let spec = &job.spec;
    let template = spec.pod_template.clone().unwrap_or_default();
    let revision = revision(job, settings)?;
    let mut pod_labels = template.labels.clone();
    pod_labels.extend(labels(&job.name));
    pod_labels.insert(REVISION_LABEL.into(), revision);
    pod_labels.insert(ROLLOUT_LABEL.into(), job.rollout.to_string());
    let env_from: Vec<Value> = spec
        .checkpoint
        .credentials_secret
        .iter()
        .map(|s| json!({ "secretRef": { "name": s.name } }))
        .collect();
    let replicas = if spec.suspend { 0 } else { spec.parallelism };
    // Long enough for a final checkpoint: a few intervals, at least a minute.
    let interval = std::time::Duration::from(spec.checkpoint.interval).as_secs();
    let grace = (interval * 3).max(60);
    let mut volume_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": job.volume.size } },
    });
    if let Some(class) = &job.volume.storage_class_name {
        volume_spec["storageClassName"] = json!(class);
    }
    let probe = |path: &str, failures: i32| {
        json!({
            "httpGet": { "path": path, "port": "metrics" },
            "periodSeconds": 10,
            "failureThreshold": failures,
        })
    };
    let mut pod_spec = json!({
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [{
            "name": "worker",
            "image": image(job, settings),
            "args": ["run"],
            "env": env(job),
            "envFrom": env_from,
            "ports": [{ "name": "metrics", "containerPort": WORKER_PORT }],
            "livenessProbe": probe("/healthz", 3),
            "readinessProbe": probe("/readyz", 1),
            "startupProbe": probe("/healthz", 30),
            "resources": spec.resources.clone().unwrap_or_default(),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"] },
            },
            "volumeMounts": [
                { "name": "state", "mountPath": STATE_DIR },
                { "name": "job", "mountPath": "/etc/sluice", "readOnly": true },
                { "name": "tmp", "mountPath": "/tmp" },
            ],
        }],
        "volumes": [
            { "name": "job", "configMap": { "name": config_map_name(&job.name) } },
            { "name": "tmp", "emptyDir": {} },
        ],
    });
    let extra = json!({
        "nodeSelector": template.node_selector,
        "tolerations": template.tolerations,
        "affinity": template.affinity,
        "serviceAccountName": template.service_account_name,
        "priorityClassName": template.priority_class_name,
        "imagePullSecrets": template.image_pull_secrets,
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        let empty = value.is_null()
            || value.as_object().is_some_and(|o| o.is_empty())
            || value.as_array().is_some_and(|a| a.is_empty());
        if !empty {
            pod_spec[key] = value.clone();
        }
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(job, job.name.clone()),
        "spec": {
            "replicas": replicas,
            "serviceName": job.name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": { "type": "OnDelete" },
            "selector": { "matchLabels": selector_labels(&job.name) },
            "template": {
                "metadata": { "labels": pod_labels, "annotations": template.annotations },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "state", "labels": labels(&job.name) },
                "spec": volume_spec,
            }],
        },
    }))
}

#[cfg(test)]
mod tests;

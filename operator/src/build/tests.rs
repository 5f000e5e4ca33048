use serde_json::{Value, json};
use sluice_core::job::Partitions;
use sluice_crds::v1alpha1::StreamJob;

use super::{Settings, children, job_file, revision, rollout};
use crate::validate::{Facts, ValidJob, validate};

const JOB: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {name: customers, namespace: shop, uid: 0b6f9a52-1c1e-4c53-9d8e-6c1f3a1b2c3d, generation: 4}
spec:
  parallelism: 3
  source:
    kafka:
      bootstrapServers: "kafka:9092"
      topics: [customers]
      format: debezium-json
      auth:
        sasl:
          mechanism: SCRAM-SHA-512
          username: {name: kafka-user, key: username}
          password: {name: kafka-user, key: password}
  steps:
    - name: table
      materialize: {}
  sink:
    kafka: {topic: customers-table, deliveryGuarantee: exactly-once}
  checkpoint:
    storage: s3://checkpoints/prod
    interval: 30s
    credentialsSecret: {name: s3-creds}
  state: {size: 20Gi, storageClassName: fast}
  resources:
    requests: {cpu: "2", memory: 4Gi}
  podTemplate:
    labels: {team: data}
    nodeSelector: {pool: streaming}
    env:
      - {name: RUST_LOG, value: debug}
"#;

fn settings() -> Settings {
    Settings {
        worker_image: "ghcr.io/sluice-dev/sluice-worker:0.1.0".into(),
    }
}

fn valid(yaml: &str) -> ValidJob {
    let job: StreamJob = serde_norway::from_str(yaml).expect("fixture");
    let facts = Facts {
        secrets: [
            ("kafka-user", vec!["username", "password"]),
            (
                "s3-creds",
                vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            ),
        ]
        .into_iter()
        .map(|(n, keys)| {
            (
                n.to_string(),
                Some(keys.into_iter().map(String::from).collect()),
            )
        })
        .collect(),
        source_partitions: Ok([("customers".to_string(), 6)].into()),
        applied: None,
        applied_partitions: None,
    };
    validate(&job, &facts).expect("the fixture is valid")
}

fn sts(job: &ValidJob) -> Value {
    serde_json::to_value(children(job, &settings()).expect("builds").stateful_set).expect("json")
}

#[test]
fn the_stateful_set_runs_parallelism_workers_that_the_operator_restarts_itself() {
    let sts = sts(&valid(JOB));
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(sts["spec"]["serviceName"], "customers");
    // 3 × the 30 s interval: room for a final checkpoint.
    assert_eq!(
        sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        90
    );
}

#[test]
fn a_suspended_job_has_no_workers_but_keeps_its_revision() {
    let running = valid(JOB);
    let suspended = valid(&JOB.replace("  parallelism: 3", "  parallelism: 3\n  suspend: true"));
    assert_eq!(sts(&suspended)["spec"]["replicas"], 0);
    assert_eq!(
        revision(&running, &settings()).expect("revision"),
        revision(&suspended, &settings()).expect("revision"),
        "resuming must not count as a restart"
    );
    assert!(
        !job_file(&suspended)
            .expect("job file")
            .contains("suspend: true")
    );
}

#[test]
fn each_worker_gets_one_state_volume_of_the_requested_size_and_class() {
    let sts = sts(&valid(JOB));
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"],
        json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "20Gi"}},
            "storageClassName": "fast",
        })
    );
    let mounts = &sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert_eq!(
        mounts[0],
        json!({"name": "state", "mountPath": "/var/lib/sluice"})
    );
}

#[test]
fn workers_learn_their_place_from_env_and_credentials_only_from_secret_references() {
    let sts = sts(&valid(JOB));
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let env = container["env"].as_array().expect("env");
    let find = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {env:?}"))
            .clone()
    };
    assert_eq!(find("SLUICE_PARALLELISM")["value"], "3");
    assert_eq!(
        find("SLUICE_ORDINAL")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    assert_eq!(find("SLUICE_JOB")["value"], "/etc/sluice/job.yaml");
    assert_eq!(
        find("SLUICE_SOURCE_SASL_PASSWORD")["valueFrom"],
        json!({"secretKeyRef": {"name": "kafka-user", "key": "password"}})
    );
    assert_eq!(find("RUST_LOG")["value"], "debug");
    assert_eq!(
        container["envFrom"],
        json!([{"secretRef": {"name": "s3-creds"}}])
    );
    // No credential value anywhere: every env var is a literal we set or a reference.
    for e in env {
        if let Some(value) = e["value"].as_str() {
            assert!(!value.contains("password"), "{e}");
        }
    }
    assert_eq!(container["image"], "ghcr.io/sluice-dev/sluice-worker:0.1.0");
    assert_eq!(container["args"], json!(["run"]));
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "2", "memory": "4Gi"}})
    );
}

#[test]
fn probes_use_the_worker_health_endpoints() {
    let sts = sts(&valid(JOB));
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": 8080}])
    );
}

#[test]
fn workers_run_as_non_root_on_a_read_only_root_with_no_capabilities() {
    let sts = sts(&valid(JOB));
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"],
        json!({"type": "RuntimeDefault"})
    );
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(
        container,
        &json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        })
    );
    // The only writable places: the state volume and an emptyDir for /tmp.
    assert_eq!(
        pod["volumes"],
        json!([
            {"name": "job", "configMap": {"name": "customers-job"}},
            {"name": "tmp", "emptyDir": {}},
        ])
    );
}

#[test]
fn every_child_is_owned_by_the_job_and_labelled_with_it() {
    let children = children(&valid(JOB), &settings()).expect("builds");
    let metas = [
        (
            "ConfigMap",
            serde_json::to_value(&children.config_map.metadata),
        ),
        ("Service", serde_json::to_value(&children.service.metadata)),
        (
            "Service",
            serde_json::to_value(&children.metrics_service.metadata),
        ),
        (
            "PodDisruptionBudget",
            serde_json::to_value(&children.pdb.metadata),
        ),
        (
            "StatefulSet",
            serde_json::to_value(&children.stateful_set.metadata),
        ),
    ];
    for (kind, meta) in metas {
        let meta = meta.expect("json");
        assert_eq!(meta["namespace"], "shop", "{kind}");
        assert_eq!(
            meta["ownerReferences"],
            json!([{
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "StreamJob",
                "name": "customers",
                "uid": "0b6f9a52-1c1e-4c53-9d8e-6c1f3a1b2c3d",
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
            "{kind}"
        );
        assert_eq!(meta["labels"]["sluice.dev/job"], "customers", "{kind}");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/managed-by"], "sluice-operator",
            "{kind}"
        );
    }
}

#[test]
fn the_selector_matches_the_pod_labels_and_user_labels_do_not_break_it() {
    let job = valid(JOB);
    let children = children(&job, &settings()).expect("builds");
    let sts = serde_json::to_value(&children.stateful_set).expect("json");
    let selector = sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
        .clone();
    let pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("labels");
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
    }
    assert_eq!(pod_labels["team"], "data");
    assert_eq!(
        pod_labels["sluice.dev/revision"],
        revision(&job, &settings()).expect("revision").as_str()
    );
    let pdb = serde_json::to_value(&children.pdb).expect("json");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], json!(selector));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let metrics = serde_json::to_value(&children.metrics_service).expect("json");
    assert_eq!(metrics["spec"]["selector"], json!(selector));
    assert_eq!(metrics["metadata"]["name"], "customers-metrics");
    let headless = serde_json::to_value(&children.service).expect("json");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(
        super::selector_string("customers"),
        "app.kubernetes.io/instance=customers,app.kubernetes.io/name=sluice-worker,sluice.dev/job=customers"
    );
    assert_eq!(
        sts["spec"]["template"]["spec"]["nodeSelector"],
        json!({"pool": "streaming"})
    );
}

#[test]
fn the_job_file_is_the_manifest_without_server_fields_or_secret_values() {
    let text = job_file(&valid(JOB)).expect("job file");
    let manifest: StreamJob = serde_norway::from_str(&text).expect("the worker can read it");
    assert_eq!(manifest.metadata.name.as_deref(), Some("customers"));
    assert_eq!(manifest.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(manifest.metadata.uid, None);
    assert_eq!(manifest.metadata.generation, None);
    assert!(manifest.status.is_none());
    assert_eq!(manifest.spec, valid(JOB).spec);
}

#[test]
fn the_job_file_pins_the_partitions_read_and_marks_those_added_while_the_job_ran() {
    let pinned = |job: &ValidJob| {
        let text = job_file(job).expect("job file");
        sluice_core::job::Job::parse(&text, "job file")
            .expect("the worker can read it")
            .partitions
    };
    let new = valid(JOB);
    assert_eq!(
        pinned(&new),
        Some(Partitions {
            read: 6,
            added_from: 6
        })
    );
    // Rolled out onto 6, the topics now have 8 and the job adopts them.
    let adopting = ValidJob {
        partitions: Some(8),
        rolled: Some(Partitions {
            read: 6,
            added_from: 6,
        }),
        ..new.clone()
    };
    assert_eq!(
        pinned(&adopting),
        Some(Partitions {
            read: 8,
            added_from: 6
        })
    );
    assert_ne!(
        revision(&adopting, &settings()).expect("revision"),
        revision(&new, &settings()).expect("revision"),
        "adopting restarts the workers"
    );
    // Once rolled, the mark stays: a task among them without a checkpoint still starts at
    // the earliest offset.
    let adopted = ValidJob {
        rolled: Some(Partitions {
            read: 8,
            added_from: 6,
        }),
        ..adopting.clone()
    };
    assert_eq!(
        revision(&adopted, &settings()).expect("revision"),
        revision(&adopting, &settings()).expect("revision"),
        "nothing restarts again"
    );
    // The brokers do not answer: what was rolled out stays.
    let unasked = ValidJob {
        partitions: None,
        ..adopted.clone()
    };
    assert_eq!(
        pinned(&unasked),
        Some(Partitions {
            read: 8,
            added_from: 6
        })
    );
}

#[test]
fn the_rollout_number_stays_while_the_revision_does_and_takes_the_time_when_it_changes() {
    let first = ValidJob {
        rollout: 1_700_000_000,
        ..valid(JOB)
    };
    assert_eq!(
        rollout(&first, &settings(), None, 1_700_000_000).unwrap(),
        1_700_000_000
    );
    let rolled = children(&first, &settings()).unwrap().stateful_set;
    let template = &rolled.spec.template;
    let env = template.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let rollouts: Vec<_> = env.iter().filter(|e| e.name == "SLUICE_ROLLOUT").collect();
    assert_eq!(rollouts.len(), 1, "one SLUICE_ROLLOUT, the operator's");
    assert_eq!(rollouts[0].value.as_deref(), Some("1700000000"));
    assert_eq!(env.last().map(|e| e.name.as_str()), Some("SLUICE_ROLLOUT"));
    let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(
        labels.get("sluice.dev/rollout").map(String::as_str),
        Some("1700000000")
    );

    // An edit that restarts nothing (a new generation, the same revision) keeps the rollout.
    let same = ValidJob {
        generation: 5,
        ..valid(JOB)
    };
    assert_eq!(
        rollout(&same, &settings(), Some(&rolled), 1_700_000_100).unwrap(),
        1_700_000_000
    );
    // An edit that changes the revision rolls out now.
    let edited = valid(&JOB.replace("parallelism: 3", "parallelism: 4"));
    assert_eq!(
        rollout(&edited, &settings(), Some(&rolled), 1_700_000_200).unwrap(),
        1_700_000_200
    );
}

#[test]
fn a_sluice_rollout_in_the_pod_template_cannot_override_the_operators() {
    let job = ValidJob {
        rollout: 42,
        ..valid(&JOB.replace(
            "      - {name: RUST_LOG, value: debug}",
            "      - {name: RUST_LOG, value: debug}\n      - {name: SLUICE_ROLLOUT, value: \"999999999999\"}",
        ))
    };
    let sts = children(&job, &settings()).unwrap().stateful_set;
    let env = sts.spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let values: Vec<_> = env
        .iter()
        .filter(|e| e.name == "SLUICE_ROLLOUT")
        .map(|e| e.value.clone().unwrap_or_default())
        .collect();
    assert_eq!(values, ["42"]);
}

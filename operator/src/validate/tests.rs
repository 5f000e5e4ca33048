use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sluice_crds::admission::{Admission, merge_patch};
use sluice_crds::v1alpha1::StreamJob;

use sluice_core::job::Partitions;

use super::{Facts, SpecError, Unasked, validate};

/// A job that runs: one materialize step over a 6-partition topic, S3 checkpoints.
pub const BASE: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {name: customers, namespace: shop, uid: 0b6f9a52-1c1e-4c53-9d8e-6c1f3a1b2c3d, generation: 1}
spec:
  parallelism: 3
  source:
    kafka: {bootstrapServers: "kafka:9092", topics: [customers], format: debezium-json}
  steps:
    - name: table
      materialize: {}
  sink:
    kafka: {topic: customers-table}
  checkpoint:
    storage: s3://checkpoints/prod
"#;

fn facts() -> Facts {
    Facts {
        secrets: BTreeMap::new(),
        source_partitions: Ok(BTreeMap::from([("customers".into(), 6)])),
        applied: None,
        applied_partitions: None,
    }
}

/// The base job with `patch` merged into it; asserted to pass the CRD's schema and CEL rules,
/// so every case here is one only the operator can catch.
fn job(patch: Value) -> StreamJob {
    let mut value: Value = serde_norway::from_str(BASE).expect("base YAML");
    merge_patch(&mut value, &patch);
    if let Err(errors) = Admission::streamjob().check(&value, None) {
        panic!("the case must pass admission, got {errors:?}");
    }
    serde_json::from_value(value).expect("typed")
}

struct Case {
    name: &'static str,
    patch: Value,
    facts: Facts,
    field: &'static str,
    reason: &'static str,
    says: &'static str,
}

fn secret(keys: &[&str]) -> Option<BTreeSet<String>> {
    Some(keys.iter().map(|k| k.to_string()).collect())
}

fn cases() -> Vec<Case> {
    let with_partitions = |counts: &[(&str, u32)]| Facts {
        source_partitions: Ok(counts.iter().map(|(t, n)| (t.to_string(), *n)).collect()),
        ..facts()
    };
    let with_secrets = |secrets: &[(&str, Option<BTreeSet<String>>)]| Facts {
        secrets: secrets
            .iter()
            .map(|(n, k)| (n.to_string(), k.clone()))
            .collect(),
        ..facts()
    };
    vec![
        Case {
            name: "parallelism above the partition count",
            patch: json!({"spec": {"parallelism": 8}}),
            facts: facts(),
            field: "spec.parallelism",
            reason: "ParallelismAbovePartitions",
            says: "set parallelism to at most 6",
        },
        Case {
            name: "a source topic that does not exist",
            patch: json!({}),
            facts: with_partitions(&[("customers", 0)]),
            field: "spec.source.kafka.topics[0]",
            reason: "SourceTopicNotFound",
            says: "topic customers does not exist on kafka:9092",
        },
        Case {
            name: "source topics with different partition counts",
            patch: json!({"spec": {"source": {"kafka": {"topics": ["customers", "addresses"]}}}}),
            facts: with_partitions(&[("customers", 6), ("addresses", 4)]),
            field: "spec.source.kafka.topics",
            reason: "SourceNotCoPartitioned",
            says: "customers: 6, addresses: 4",
        },
        Case {
            name: "source topics with fewer partitions than the job reads",
            patch: json!({}),
            facts: Facts {
                applied_partitions: Some(Partitions {
                    read: 8,
                    added_from: 6,
                }),
                ..with_partitions(&[("customers", 6)])
            },
            field: "spec.source.kafka.topics",
            reason: "SourcePartitionsRemoved",
            says: "the source topics have 6 partitions where the job reads 8",
        },
        Case {
            name: "topics that grew unevenly, adopted",
            patch: json!({"spec": {"source": {"kafka": {
                "topics": ["customers", "addresses"], "onNewPartitions": "adopt"
            }}}}),
            facts: Facts {
                applied_partitions: Some(Partitions {
                    read: 6,
                    added_from: 6,
                }),
                ..with_partitions(&[("customers", 8), ("addresses", 6)])
            },
            field: "spec.source.kafka.topics",
            reason: "SourceNotCoPartitioned",
            says: "customers: 8, addresses: 6",
        },
        Case {
            name: "an adoption onto more partitions than the sink topic has",
            patch: json!({"spec": {"source": {"kafka": {"onNewPartitions": "adopt"}}}}),
            facts: Facts {
                applied_partitions: Some(Partitions {
                    read: 6,
                    added_from: 6,
                }),
                ..with_partitions(&[("customers", 8), ("customers-table", 6)])
            },
            field: "spec.sink.kafka.topic",
            reason: "OutputPartitionsTooFew",
            says: "adopting the source's 8 partitions (from 6) needs 8 in topic customers-table, \
                   which has 6",
        },
        Case {
            name: "an adoption onto more partitions than the dead-letter topic has",
            patch: json!({"spec": {"source": {"kafka": {"onNewPartitions": "adopt"}}}}),
            facts: Facts {
                applied_partitions: Some(Partitions {
                    read: 6,
                    added_from: 6,
                }),
                ..with_partitions(&[
                    ("customers", 8),
                    ("customers-table", 8),
                    ("customers-table.dlq", 7),
                ])
            },
            field: "spec.deadLetter.topic",
            reason: "OutputPartitionsTooFew",
            says: "needs 8 in topic customers-table.dlq, which has 7",
        },
        Case {
            name: "a checkpoint credentials Secret that does not exist",
            patch: json!({"spec": {"checkpoint": {"credentialsSecret": {"name": "s3-creds"}}}}),
            facts: with_secrets(&[("s3-creds", None)]),
            field: "spec.checkpoint.credentialsSecret",
            reason: "SecretNotFound",
            says: "Secret s3-creds does not exist in namespace shop",
        },
        Case {
            name: "a SASL password key missing from its Secret",
            patch: json!({"spec": {"source": {"kafka": {"auth": {"sasl": {
                "mechanism": "SCRAM-SHA-512",
                "username": {"name": "kafka-user", "key": "username"},
                "password": {"name": "kafka-user", "key": "password"},
            }}}}}}),
            facts: with_secrets(&[("kafka-user", secret(&["username", "passwd"]))]),
            field: "spec.source.kafka.auth.sasl.password",
            reason: "SecretKeyMissing",
            says: "Secret kafka-user has no key password (it has: passwd, username)",
        },
        Case {
            name: "a pod env var from a Secret that does not exist",
            patch: json!({"spec": {"podTemplate": {"env": [{"name": "API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}]}}}),
            facts: with_secrets(&[("api", None)]),
            field: "spec.podTemplate.env[0].valueFrom.secretKeyRef",
            reason: "SecretNotFound",
            says: "create it before the job can start",
        },
        Case {
            name: "a filter expression that does not compile",
            patch: json!({"spec": {"steps": [{"name": "big", "filter": {"expr": "value.amount >"}}]}}),
            facts: facts(),
            field: "spec.steps[0].filter.expr",
            reason: "ExpressionInvalid",
            says: "\"value.amount >\" does not compile at line 1, column",
        },
        Case {
            name: "a filter expression that reads a name records do not have",
            patch: json!({"spec": {"steps": [{"name": "big", "filter": {"expr": "vlaue.amount > 100"}}]}}),
            facts: facts(),
            field: "spec.steps[0].filter.expr",
            reason: "ExpressionInvalid",
            says: "\"vlaue.amount > 100\" is invalid at line 1, column 1: undeclared reference to \"vlaue\"",
        },
        Case {
            name: "a map expression that does not compile",
            patch: json!({"spec": {"steps": [{"name": "reshape", "map": {"value": "{'id': value.id"}}]}}),
            facts: facts(),
            field: "spec.steps[0].map.value",
            reason: "ExpressionInvalid",
            says: "does not compile",
        },
        Case {
            name: "a dedupe key expression that does not compile",
            patch: json!({"spec": {"steps": [{"name": "once", "dedupe": {"key": "value.id ==", "ttl": "1h"}}]}}),
            facts: facts(),
            field: "spec.steps[0].dedupe.key",
            reason: "ExpressionInvalid",
            says: "does not compile",
        },
        Case {
            name: "a step after an aggregate that reads the offset, which a result does not have",
            patch: json!({"spec": {"steps": [{"name": "totals", "aggregate": {
                "groupBy": "key",
                "aggregations": [{"name": "n", "function": "count"}],
                "emit": "on-update",
            }}, {"name": "big", "filter": {"expr": "value.n > 10 && offset > 0"}}]}}),
            facts: facts(),
            field: "spec.steps",
            reason: "StepUnsupported",
            says: "filter.expr reads offset, which the records made by step \"totals\" (aggregate) do not have",
        },
        Case {
            name: "file:// checkpoints, which other pods cannot read",
            patch: json!({"spec": {"checkpoint": {"storage": "file:///var/lib/checkpoints"}}}),
            facts: facts(),
            field: "spec.checkpoint.storage",
            reason: "StorageNotShared",
            says: "use s3://, gs:// or az:// storage",
        },
        Case {
            name: "exactly-once into another Kafka cluster",
            patch: json!({"spec": {"sink": {"kafka": {
                "bootstrapServers": "other-kafka:9092", "deliveryGuarantee": "exactly-once"}}}}),
            facts: facts(),
            field: "spec.sink.kafka.bootstrapServers",
            reason: "TransactionSpansClusters",
            says: "use deliveryGuarantee: at-least-once",
        },
    ]
}

#[test]
fn every_shared_store_is_valid() {
    for storage in [
        "s3://bucket/jobs",
        "gs://bucket/jobs",
        "az://container/jobs",
    ] {
        let job = job(json!({"spec": {"checkpoint": {"storage": storage}}}));
        let valid = validate(&job, &facts()).unwrap_or_else(|e| panic!("{storage}: {e:?}"));
        assert_eq!(valid.spec.checkpoint.storage, storage);
    }
}

#[test]
fn the_base_job_is_valid_and_keeps_its_spec() {
    let job = job(json!({}));
    let valid = validate(&job, &facts()).expect("valid");
    assert_eq!(valid.spec, job.spec);
    assert_eq!(valid.partitions, Some(6));
    assert_eq!(
        (valid.name.as_str(), valid.namespace.as_str()),
        ("customers", "shop")
    );
    assert_eq!(valid.volume.size.0, "10Gi");
}

#[test]
fn jobs_that_pass_the_crd_but_cannot_run_are_refused_with_the_field_and_what_to_do() {
    let cases = cases();
    assert!(cases.len() >= 10);
    for case in cases {
        let errors = validate(&job(case.patch), &case.facts)
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", case.name));
        let error: &SpecError = errors
            .iter()
            .find(|e| e.reason == case.reason)
            .unwrap_or_else(|| panic!("{}: no {} among {errors:?}", case.name, case.reason));
        assert_eq!(error.field, case.field, "{}", case.name);
        assert!(
            error.message.contains(case.says),
            "{}: message {:?} should say {:?}",
            case.name,
            error.message,
            case.says
        );
    }
}

#[test]
fn unreachable_brokers_do_not_make_a_spec_invalid() {
    let facts = Facts {
        source_partitions: Err(Unasked::Unreachable("connection refused".into())),
        ..facts()
    };
    let valid = validate(&job(json!({"spec": {"parallelism": 50}})), &facts).expect("valid");
    assert_eq!(valid.partitions, None);
}

#[test]
fn brokers_that_refuse_the_credentials_name_the_secret_and_keys() {
    let facts = Facts {
        secrets: BTreeMap::from([("kafka-creds".into(), secret(&["user", "password"]))]),
        source_partitions: Err(Unasked::Refused(
            "SASL SCRAM authentication failed: broker responded with unknown-user".into(),
        )),
        ..facts()
    };
    let job = job(json!({"spec": {"source": {"kafka": {"auth": {"sasl": {
        "mechanism": "SCRAM-SHA-512",
        "username": {"name": "kafka-creds", "key": "user"},
        "password": {"name": "kafka-creds", "key": "password"},
    }}}}}}));
    let errors = validate(&job, &facts).expect_err("refused credentials");
    let error = errors
        .iter()
        .find(|e| e.reason == "KafkaAuthenticationFailed")
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(error.field, "spec.source.kafka.auth");
    for says in [
        "unknown-user",
        "spec.source.kafka.auth.sasl.password (Secret kafka-creds, key password)",
        "spec.source.kafka.auth.sasl.username (Secret kafka-creds, key user)",
    ] {
        assert!(error.message.contains(says), "{}", error.message);
    }
}

#[test]
fn present_secrets_and_keys_pass() {
    let facts = Facts {
        secrets: BTreeMap::from([
            (
                "s3-creds".into(),
                secret(&["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]),
            ),
            ("kafka-user".into(), secret(&["username", "password"])),
        ]),
        ..facts()
    };
    let job = job(json!({"spec": {
        "checkpoint": {"credentialsSecret": {"name": "s3-creds"}},
        "source": {"kafka": {"auth": {"sasl": {
            "mechanism": "PLAIN",
            "username": {"name": "kafka-user", "key": "username"},
            "password": {"name": "kafka-user", "key": "password"},
        }}}},
    }}));
    validate(&job, &facts).expect("valid");
}

#[test]
fn a_running_job_keeps_the_volume_its_stateful_set_was_created_with() {
    let applied = job(json!({"spec": {"state": {"size": "20Gi"}}})).spec;
    let resized = job(json!({"spec": {"state": {"size": "50Gi"}}}));
    let facts = Facts {
        applied: Some(applied),
        applied_partitions: None,
        ..facts()
    };
    assert_eq!(
        validate(&resized, &facts).expect("valid").volume.size.0,
        "20Gi"
    );
    assert_eq!(
        validate(
            &resized,
            &super::Facts {
                applied: None,
                applied_partitions: None,
                ..facts
            }
        )
        .expect("valid")
        .volume
        .size
        .0,
        "50Gi"
    );
}

#[test]
fn a_running_job_reads_the_partitions_it_was_rolled_out_onto_unless_it_adopts_new_ones() {
    let grown = |topics: &[(&str, u32)], read: Option<u32>| Facts {
        source_partitions: Ok(topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()),
        applied_partitions: read.map(|read| Partitions {
            read,
            added_from: read,
        }),
        ..facts()
    };
    let read = |patch: Value, facts: &Facts| {
        let v = validate(&job(patch), facts).expect("valid");
        (v.partitions, v.live_partitions, v.rolled.map(|r| r.read))
    };
    let report = json!({});
    let adopt = json!({"spec": {"source": {"kafka": {"onNewPartitions": "adopt"}}}});
    assert_eq!(
        read(report.clone(), &grown(&[("customers", 6)], None)),
        (Some(6), Some(6), None),
        "a new job reads them all"
    );
    assert_eq!(
        read(report.clone(), &grown(&[("customers", 8)], Some(6))),
        (Some(6), Some(8), Some(6)),
        "report keeps the pinned ones"
    );
    assert_eq!(
        read(adopt.clone(), &grown(&[("customers", 8)], Some(6))),
        (Some(8), Some(8), Some(6)),
        "adopt reads all"
    );
    assert_eq!(
        read(
            adopt.clone(),
            &grown(
                &[
                    ("customers", 8),
                    ("customers-table", 8),
                    ("customers-table.dlq", 12)
                ],
                Some(6)
            )
        ),
        (Some(8), Some(8), Some(6)),
        "sink and dead-letter topics with enough partitions"
    );
    // Under report, a topic that grew alone is not an error: every topic has the ones read.
    let two = json!({"spec": {"source": {"kafka": {"topics": ["customers", "addresses"]}}}});
    assert_eq!(
        read(two, &grown(&[("customers", 8), ("addresses", 6)], Some(6))),
        (Some(6), Some(8), Some(6))
    );
    // Parallelism is checked against the partitions read.
    let wide =
        json!({"spec": {"parallelism": 8, "source": {"kafka": {"onNewPartitions": "report"}}}});
    let errors =
        validate(&job(wide.clone()), &grown(&[("customers", 8)], Some(6))).expect_err("refused");
    assert_eq!(errors[0].reason, "ParallelismAbovePartitions", "{errors:?}");
    let wide_adopt =
        json!({"spec": {"parallelism": 8, "source": {"kafka": {"onNewPartitions": "adopt"}}}});
    validate(&job(wide_adopt), &grown(&[("customers", 8)], Some(6))).expect("valid once adopted");
}

//! StreamJobs checked offline against the generated CRD's schema and CEL rules, as the API
//! server would check them: every example passes, every invalid job fails with its message.

use std::path::PathBuf;

use serde_json::{Value, json};
use sluice_crds::StreamJob;
use sluice_crds::admission::{Admission, FieldError, merge_patch};

const VALID: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {name: orders, namespace: default}
spec:
  parallelism: 2
  source:
    kafka: {bootstrapServers: "kafka:9092", topics: [orders]}
  steps:
    - name: big
      filter: {expr: "value.amount > 10"}
  sink:
    kafka: {topic: big-orders}
  checkpoint:
    storage: s3://bucket/prefix
"#;

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("test YAML parses")
}

fn rejected(admission: &Admission, job: &Value) -> Vec<FieldError> {
    match admission.check(job, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors,
    }
}

#[test]
fn the_base_job_of_the_invalid_cases_is_itself_valid() {
    let job = yaml(VALID);
    assert_eq!(rejected(&Admission::streamjob(), &job), vec![]);
    serde_json::from_value::<StreamJob>(job).expect("the base job parses into the typed spec");
}

#[test]
fn invalid_streamjobs_are_rejected_with_their_intended_message() {
    // (what is wrong, merge patch onto VALID, path of the error, words of its message)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "zero workers",
            json!({"spec": {"parallelism": 0}}),
            "spec.parallelism",
            "should be greater than or equal to 1",
        ),
        (
            "no source topic",
            json!({"spec": {"source": {"kafka": {"topics": []}}}}),
            "spec.source.kafka.topics",
            "should have at least 1 items",
        ),
        (
            "a topic listed twice",
            json!({"spec": {"source": {"kafka": {"topics": ["a", "a"]}}}}),
            "spec.source.kafka.topics[1]",
            "Duplicate value: \"a\"",
        ),
        (
            "timestamp start without a timestamp",
            json!({"spec": {"source": {"kafka": {"startingOffsets": "timestamp"}}}}),
            "spec.source.kafka",
            "startingTimestamp is required when startingOffsets is timestamp",
        ),
        (
            "starting offsets for a topic the job does not read",
            json!({"spec": {"source": {"kafka": {"startingPartitionOffsets": {"payments": {"0": 5}}}}}}),
            "spec.source.kafka",
            "startingPartitionOffsets names a topic that is not in topics",
        ),
        (
            "starting offsets for a partition by name",
            json!({"spec": {"source": {"kafka": {"startingPartitionOffsets": {"orders": {"first": 5}}}}}}),
            "spec.source.kafka.startingPartitionOffsets.orders",
            "partitions are given by number",
        ),
        (
            "starting offsets for a partition with a leading zero",
            json!({"spec": {"source": {"kafka": {"startingPartitionOffsets": {"orders": {"01": 5}}}}}}),
            "spec.source.kafka.startingPartitionOffsets.orders",
            "partitions are given by number",
        ),
        (
            "a negative starting offset",
            json!({"spec": {"source": {"kafka": {"startingPartitionOffsets": {"orders": {"0": -1}}}}}}),
            "spec.source.kafka.startingPartitionOffsets.orders.0",
            "should be greater than or equal to 0",
        ),
        (
            "a step with two kinds",
            json!({"spec": {"steps": [{"name": "x", "filter": {"expr": "true"}, "map": {"value": "value"}}]}}),
            "spec.steps[0]",
            "a step sets exactly one of filter, map, materialize, aggregate or dedupe",
        ),
        (
            "a step with no kind",
            json!({"spec": {"steps": [{"name": "x"}]}}),
            "spec.steps[0]",
            "a step sets exactly one of",
        ),
        (
            "two steps with one name",
            json!({"spec": {"steps": [{"name": "x", "filter": {"expr": "true"}}, {"name": "x", "materialize": {}}]}}),
            "spec.steps[1]",
            "Duplicate value: {\"name\":\"x\"}",
        ),
        (
            "a step name that is not a DNS label",
            json!({"spec": {"steps": [{"name": "Big_Orders", "filter": {"expr": "true"}}]}}),
            "spec.steps[0].name",
            "should match",
        ),
        (
            "a map that changes nothing",
            json!({"spec": {"steps": [{"name": "m", "map": {}}]}}),
            "spec.steps[0].map",
            "a map step sets key, value or both",
        ),
        (
            "a sum without an expression",
            json!({"spec": {"steps": [{"name": "a", "aggregate": {"groupBy": "key", "emit": "on-update",
                "aggregations": [{"name": "total", "function": "sum"}]}}]}}),
            "spec.steps[0].aggregate.aggregations[0]",
            "every aggregate function except count needs expr",
        ),
        (
            "an unwindowed aggregate that emits on close",
            json!({"spec": {"steps": [{"name": "a", "aggregate": {"groupBy": "key",
                "aggregations": [{"name": "n", "function": "count"}]}}]}}),
            "spec.steps[0].aggregate",
            "an aggregate without a window never closes",
        ),
        (
            "a window of two kinds",
            json!({"spec": {"steps": [{"name": "a", "aggregate": {"groupBy": "key",
                "aggregations": [{"name": "n", "function": "count"}],
                "window": {"tumbling": {"size": "1m"}, "session": {"gap": "5m"}}}}]}}),
            "spec.steps[0].aggregate.window",
            "a window sets exactly one of tumbling, hopping or session",
        ),
        (
            "a hopping window that skips records",
            json!({"spec": {"steps": [{"name": "a", "aggregate": {"groupBy": "key",
                "aggregations": [{"name": "n", "function": "count"}],
                "window": {"hopping": {"size": "1m", "advance": "5m"}}}}]}}),
            "spec.steps[0].aggregate.window.hopping",
            "hopping.advance must not exceed hopping.size",
        ),
        (
            "an unknown aggregate function",
            json!({"spec": {"steps": [{"name": "a", "aggregate": {"groupBy": "key", "emit": "on-update",
                "aggregations": [{"name": "n", "function": "median", "expr": "value.x"}]}}]}}),
            "spec.steps[0].aggregate.aggregations[0].function",
            "Unsupported value: \"median\"",
        ),
        (
            "a zero checkpoint interval",
            json!({"spec": {"checkpoint": {"interval": "0s"}}}),
            "spec.checkpoint.interval",
            "must be a duration greater than zero",
        ),
        (
            "an interval in words",
            json!({"spec": {"checkpoint": {"interval": "10 seconds"}}}),
            "spec.checkpoint.interval",
            "should match",
        ),
        (
            "checkpoints on a web server",
            json!({"spec": {"checkpoint": {"storage": "http://bucket/x"}}}),
            "spec.checkpoint.storage",
            "checkpoint.storage must be s3://bucket[/prefix]",
        ),
        (
            "a job writing to its own input",
            json!({"spec": {"sink": {"kafka": {"topic": "orders"}}}}),
            "spec",
            "sink.kafka.topic must not be one of source.kafka.topics",
        ),
        (
            "dead letters into the sink topic",
            json!({"spec": {"deadLetter": {"topic": "big-orders"}}}),
            "spec",
            "deadLetter.topic must differ from sink.kafka.topic",
        ),
        (
            "a consumer group set by hand",
            json!({"spec": {"source": {"kafka": {"properties": {"group.id": "mine"}}}}}),
            "spec.source.kafka.properties",
            "properties may not set what Sluice manages",
        ),
        (
            "a made-up delivery guarantee",
            json!({"spec": {"sink": {"kafka": {"deliveryGuarantee": "twice"}}}}),
            "spec.sink.kafka.deliveryGuarantee",
            "Unsupported value: \"twice\"",
        ),
        (
            "a client certificate without its key",
            json!({"spec": {"source": {"kafka": {"auth": {"tls": {"certificate": {"name": "c", "key": "tls.crt"}}}}}}}),
            "spec.source.kafka.auth.tls",
            "tls.certificate and tls.key go together",
        ),
        (
            "a reserved environment variable",
            json!({"spec": {"podTemplate": {"env": [{"name": "SLUICE_ORDINAL", "value": "0"}]}}}),
            "spec.podTemplate.env",
            "names starting with SLUICE_ are reserved",
        ),
        (
            "a name too long for a StatefulSet",
            json!({"metadata": {"name": "a".repeat(53)}}),
            "",
            "metadata.name must be at most 52 characters",
        ),
        (
            "a misspelt field",
            json!({"spec": {"paralellism": 3}}),
            "spec.paralellism",
            "unknown field \"paralellism\"",
        ),
        (
            "no sink",
            json!({"spec": {"sink": null}}),
            "spec.sink",
            "Required value",
        ),
    ];
    assert!(cases.len() >= 10);
    let admission = Admission::streamjob();
    let mut failures = Vec::new();
    for (what, patch, path, words) in &cases {
        let mut job = yaml(VALID);
        merge_patch(&mut job, patch);
        let errors = rejected(&admission, &job);
        let intended = errors
            .iter()
            .any(|e| e.path == *path && e.message.contains(words));
        if !intended {
            failures.push(format!(
                "{what}: wanted `{path}: …{words}…`, got {:?}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn checkpoint_storage_cannot_change_once_set() {
    let admission = Admission::streamjob();
    let old = yaml(VALID);
    let mut new = old.clone();
    merge_patch(
        &mut new,
        &json!({"spec": {"checkpoint": {"storage": "s3://other/place"}}}),
    );
    assert!(
        admission.check(&new, None).is_ok(),
        "on create any storage is fine"
    );
    let errors = admission.check(&new, Some(&old)).unwrap_err();
    assert!(
        errors.iter().any(|e| e.path == "spec.checkpoint.storage"
            && e.message.contains("checkpoint.storage cannot change")),
        "{errors:?}"
    );
    assert!(
        admission.check(&old, Some(&old)).is_ok(),
        "an unchanged storage is fine"
    );
}

#[test]
fn every_example_parses_into_the_typed_spec_and_passes_admission() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let admission = Admission::streamjob();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("manifests/examples exists") {
        let path = entry.expect("readable directory").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        let value = yaml(&text);
        if let Err(errors) = admission.check(&value, None) {
            panic!("{} is rejected: {errors:?}", path.display());
        }
        let job: StreamJob = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        assert!(job.spec.parallelism >= 1);
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected at least 3 examples in {}, found {seen}",
        dir.display()
    );
}

use serde_json::{Value, json};
use sluice_crds::admission::merge_patch;
use sluice_crds::v1alpha1::{StreamJob, StreamJobSpec};

use super::{Change, Effect, FIELDS, classify, hold, state_plan};
use crate::build::{Settings, revision};
use crate::validate::{Facts, validate};

const JOB: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {name: customers, namespace: shop, uid: u1, generation: 1}
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

fn job(spec_patch: &Value) -> StreamJob {
    let mut value: Value = serde_norway::from_str(JOB).expect("fixture");
    merge_patch(&mut value["spec"], spec_patch);
    serde_json::from_value(value).expect("typed")
}

/// One change per spec field, as a user would make it.
fn one_change_per_field() -> Vec<(&'static str, Value)> {
    vec![
        ("parallelism", json!({"parallelism": 6})),
        (
            "image",
            json!({"image": "registry.local/sluice-worker:dev"}),
        ),
        (
            "source",
            json!({"source": {"kafka": {"startingOffsets": "latest"}}}),
        ),
        (
            "eventTime",
            json!({"eventTime": {"maxOutOfOrderness": "5s"}}),
        ),
        (
            "steps",
            json!({"steps": [{"name": "renamed", "materialize": {}}]}),
        ),
        (
            "sink",
            json!({"sink": {"kafka": {"deliveryGuarantee": "at-least-once"}}}),
        ),
        (
            "deadLetter",
            json!({"deadLetter": {"topic": "customers-bad"}}),
        ),
        ("checkpoint", json!({"checkpoint": {"interval": "30s"}})),
        ("state", json!({"state": {"size": "50Gi"}})),
        ("suspend", json!({"suspend": true})),
        (
            "resources",
            json!({"resources": {"limits": {"memory": "2Gi"}}}),
        ),
        (
            "podTemplate",
            json!({"podTemplate": {"nodeSelector": {"pool": "fast"}}}),
        ),
        ("upgrade", json!({"upgrade": {"stateChanges": "reset"}})),
    ]
}

#[test]
fn every_spec_field_has_a_declared_effect() {
    let schema = serde_json::to_value(schemars::schema_for!(StreamJobSpec)).expect("schema");
    let mut properties: Vec<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    let mut classified: Vec<&str> = FIELDS.iter().map(|(f, _)| *f).collect();
    properties.sort_unstable();
    classified.sort_unstable();
    assert_eq!(
        classified, properties,
        "a new spec field needs an entry in change::FIELDS"
    );
    let mut tested: Vec<&str> = one_change_per_field().iter().map(|(f, _)| *f).collect();
    tested.sort_unstable();
    assert_eq!(tested, properties, "every field has a test change below");
}

#[test]
fn each_field_change_is_classified_as_declared() {
    let applied = job(&json!({})).spec;
    for (field, patch) in one_change_per_field() {
        let new = job(&patch).spec;
        let got = classify(Some(&applied), &new);
        let effect = FIELDS
            .iter()
            .find(|(f, _)| *f == field)
            .expect("declared")
            .1;
        let expected = match effect {
            Effect::Restart => Change::Restart {
                fields: vec![field],
            },
            Effect::Rescale => Change::Rescale { from: 3, to: 6 },
            Effect::Suspend => Change::Suspend,
            Effect::Ignored => Change::None,
        };
        assert_eq!(got.change, expected, "{field}");
        assert_eq!(
            got.ignored,
            if effect == Effect::Ignored {
                vec![field]
            } else {
                vec![]
            },
            "{field}"
        );
    }
}

#[test]
fn restart_and_rescale_changes_move_the_pod_revision_and_the_others_do_not() {
    let settings = Settings {
        worker_image: "sluice-worker:test".into(),
    };
    let applied_job = job(&json!({}));
    let facts = |applied: Option<StreamJobSpec>| Facts {
        secrets: Default::default(),
        source_partitions: Ok([("customers".to_string(), 12)].into()),
        applied,
    };
    let before = revision(
        &validate(&applied_job, &facts(None)).expect("valid"),
        &settings,
    )
    .expect("revision");
    for (field, patch) in one_change_per_field() {
        let new = validate(&job(&patch), &facts(Some(applied_job.spec.clone()))).expect("valid");
        let after = revision(&new, &settings).expect("revision");
        let effect = FIELDS
            .iter()
            .find(|(f, _)| *f == field)
            .expect("declared")
            .1;
        let restarts = matches!(effect, Effect::Restart | Effect::Rescale);
        assert_eq!(after != before, restarts, "{field}: {effect:?}");
    }
}

#[test]
fn suspend_and_resume_win_over_other_changes_and_nothing_changed_is_none() {
    let running = job(&json!({})).spec;
    let suspended = job(&json!({"suspend": true, "parallelism": 5})).spec;
    assert_eq!(classify(Some(&running), &suspended).change, Change::Suspend);
    assert_eq!(classify(Some(&suspended), &running).change, Change::Resume);
    assert_eq!(classify(Some(&running), &running).change, Change::None);
    assert_eq!(classify(None, &running).change, Change::Create);
    let both = job(&json!({"parallelism": 4, "image": "x:1"})).spec;
    assert_eq!(
        classify(Some(&running), &both).change,
        Change::Rescale { from: 3, to: 4 }
    );
}

#[test]
fn a_change_that_resets_state_is_held_under_refuse_and_rolled_under_reset() {
    let applied = job(&json!({})).spec;
    // Stateless edits, and every field outside the steps, keep all state.
    for (field, patch) in one_change_per_field() {
        if field == "steps" {
            continue;
        }
        let new = job(&patch).spec;
        assert_eq!(hold(Some(&applied), &new, 12, 2), None, "{field}");
        assert_eq!(state_plan(&applied, &new, 12).summary(), "keeps all state");
    }
    let filtered = job(&json!({"steps": [
        {"name": "big", "filter": {"expr": "value.amount > 1"}},
        {"name": "table", "materialize": {}},
    ]}))
    .spec;
    assert_eq!(hold(Some(&applied), &filtered, 12, 2), None);
    // A changed materialize key resets the table: held, with a message naming it.
    let rekeyed =
        job(&json!({"steps": [{"name": "table", "materialize": {"key": "value.id"}}]})).spec;
    let message = hold(Some(&applied), &rekeyed, 12, 7).expect("held");
    for part in [
        "generation 7 would lose state",
        "resets materialize `table` (key: the record key → value.id)",
        "spec.upgrade.stateChanges: reset",
        "the workers keep running the spec rolled out last",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    // The renamed table of the field-by-field changes drops `table`.
    let renamed = job(&json!({"steps": [{"name": "renamed", "materialize": {}}]})).spec;
    assert!(
        hold(Some(&applied), &renamed, 12, 2)
            .expect("held")
            .contains("drops materialize `table`")
    );
    let consented = job(&json!({
        "steps": [{"name": "table", "materialize": {"key": "value.id"}}],
        "upgrade": {"stateChanges": "reset"},
    }))
    .spec;
    assert_eq!(hold(Some(&applied), &consented, 12, 7), None);
    // A job never rolled out holds nothing.
    assert_eq!(hold(None, &rekeyed, 12, 1), None);
}

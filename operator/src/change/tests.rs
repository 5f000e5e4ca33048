use serde_json::{Value, json};
use sluice_crds::admission::merge_patch;
use sluice_crds::v1alpha1::{StreamJob, StreamJobSpec};

use sluice_core::checkpoint::descriptor::{Descriptor, test_descriptor};
use sluice_core::job::pipeline_fingerprint;
use sluice_core::upgrade;

use super::{Change, Current, Effect, FIELDS, classify, hold, restoring, state_plan};
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
        (
            "savepoint",
            json!({"savepoint": {"trigger": "before-the-upgrade"}}),
        ),
        ("restoreFrom", json!({"restoreFrom": "shop/customers/3"})),
        ("progressDeadline", json!({"progressDeadline": "20m"})),
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
            Effect::Ignored | Effect::Operator => Change::None,
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
        applied_partitions: None,
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
        assert_eq!(held(&applied, &new, 12, 2), None, "{field}");
        assert_eq!(
            state_plan(Current::Applied(&applied), &new, 12).summary(),
            "keeps all state"
        );
    }
    let filtered = job(&json!({"steps": [
        {"name": "big", "filter": {"expr": "value.amount > 1"}},
        {"name": "table", "materialize": {}},
    ]}))
    .spec;
    assert_eq!(held(&applied, &filtered, 12, 2), None);
    // A changed materialize key resets the table: held, with a message naming it.
    let rekeyed =
        job(&json!({"steps": [{"name": "table", "materialize": {"key": "value.id"}}]})).spec;
    let message = held(&applied, &rekeyed, 12, 7).expect("held");
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
        held(&applied, &renamed, 12, 2)
            .expect("held")
            .contains("drops materialize `table`")
    );
    let consented = job(&json!({
        "steps": [{"name": "table", "materialize": {"key": "value.id"}}],
        "upgrade": {"stateChanges": "reset"},
    }))
    .spec;
    assert_eq!(held(&applied, &consented, 12, 7), None);
}

/// Whether `new` is held over workers that ran `applied`, the store being unreadable.
fn held(
    applied: &StreamJobSpec,
    new: &StreamJobSpec,
    tasks: u32,
    generation: i64,
) -> Option<String> {
    hold(
        &state_plan(Current::Applied(applied), new, tasks),
        new,
        generation,
    )
}

/// A HEAD descriptor of a task that ran `spec` across `tasks` tasks; `signed: false` as
/// main's build wrote them (a fingerprint only).
fn head(spec: &StreamJobSpec, tasks: u32, signed: bool) -> Option<Descriptor> {
    Some(Descriptor {
        pipeline_fingerprint: pipeline_fingerprint(spec),
        state_signatures: signed.then(|| upgrade::signatures(spec, tasks)),
        ..test_descriptor(0, 3)
    })
}

#[test]
fn the_check_reads_what_the_tasks_checkpointed_not_the_spec_rolled_out_last() {
    let applied = job(&json!({})).spec;
    let rekeyed =
        job(&json!({"steps": [{"name": "table", "materialize": {"key": "value.id"}}]})).spec;
    let plan = |heads: &[Option<Descriptor>], new: &StreamJobSpec| {
        state_plan(Current::Heads(heads), new, 12)
    };
    // Tasks without a checkpoint hold no state: nothing to lose.
    assert_eq!(hold(&plan(&[None, None], &rekeyed), &rekeyed, 2), None);
    // The tasks ran the old key: the edit is held even though the workers were never
    // rendered with it (e.g. the job was suspended, or its pods were replaced by hand).
    let old = [head(&applied, 12, true), head(&applied, 12, true)];
    assert!(hold(&plan(&old, &rekeyed), &rekeyed, 2).is_some());
    assert_eq!(hold(&plan(&old, &applied), &applied, 2), None);
    // Some tasks checkpointed after a reset rolled out, others not yet: a revert to the old
    // key under refuse still resets the ones that moved on.
    let mixed = [head(&applied, 12, true), head(&rekeyed, 12, true)];
    let message = hold(&plan(&mixed, &applied), &applied, 3).expect("held");
    assert!(
        message.contains("resets materialize `table` (key: value.id → the record key)"),
        "{message}"
    );
    // Checkpoints of main's build (no signatures) keep all state only for the same steps.
    let main = [head(&applied, 12, false), None];
    assert_eq!(hold(&plan(&main, &applied), &applied, 2), None);
    let filtered = job(&json!({"steps": [
        {"name": "big", "filter": {"expr": "value.amount > 1"}},
        {"name": "table", "materialize": {}},
    ]}))
    .spec;
    let message = hold(&plan(&main, &filtered), &filtered, 2).expect("held");
    assert!(message.contains("resets all state"), "{message}");
    assert!(
        message.contains("until every task has checkpointed once"),
        "{message}"
    );
}

#[test]
fn partitions_added_to_the_input_are_held_with_their_own_message() {
    let spec = job(&json!({})).spec;
    // Checkpointed across 6 tasks, the topic now has 12 partitions; the spec is unchanged.
    let heads = [head(&spec, 6, true), head(&spec, 6, true)];
    let plan = state_plan(Current::Heads(&heads), &spec, 12);
    let message = hold(&plan, &spec, 4).expect("held");
    for part in [
        "resets materialize `table` (tasks: 6 → 12)",
        "The input now has 12 partitions where the state was checkpointed across 6 tasks",
        "partitions cannot be removed",
        "spec.upgrade.stateChanges: reset",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert!(!message.contains("revert"), "{message}");
    let consented = job(&json!({"upgrade": {"stateChanges": "reset"}})).spec;
    let plan = state_plan(Current::Heads(&heads), &consented, 12);
    assert_eq!(hold(&plan, &consented, 4), None);
}

#[test]
fn under_restore_from_the_check_reads_the_savepoint_for_tasks_that_did_not_restore_it_yet() {
    let spec = job(&json!({})).spec;
    let rekeyed =
        job(&json!({"steps": [{"name": "table", "materialize": {"key": "value.id"}}]})).spec;
    // Task 0 restored the savepoint already (and checkpointed with the new key since); task 1
    // has not: it will restore the savepoint, written with the old key.
    let mut moved_on = head(&rekeyed, 12, true);
    moved_on.as_mut().expect("head").restored_from = Some("shop/old/1".into());
    let mut heads = vec![moved_on.clone(), head(&rekeyed, 12, true)];
    let saved = vec![head(&spec, 12, true), head(&spec, 12, true)];
    restoring(&mut heads, saved, "shop/old/1");
    assert_eq!(heads, [moved_on, head(&spec, 12, true)]);
    let plan = state_plan(Current::Heads(&heads), &rekeyed, 12);
    let message = hold(&plan, &rekeyed, 5).expect("held: task 1 would reset the table");
    assert!(message.contains("resets materialize `table`"), "{message}");
}

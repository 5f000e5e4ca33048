use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use sluice_core::checkpoint::descriptor::{CheckpointId, Descriptor, test_descriptor};
use sluice_core::checkpoint::savepoint::{SAVEPOINT_FORMAT, Savepoint, SavepointEntry};
use sluice_crds::v1alpha1::StreamJobSpec;

use super::{Next, already_taken, expired, info, next, taken};

fn spec(trigger: Option<&str>) -> StreamJobSpec {
    let mut spec = json!({
        "parallelism": 1,
        "source": {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["in"]}},
        "steps": [],
        "sink": {"kafka": {"topic": "out"}},
        "checkpoint": {"storage": "s3://b/p"},
    });
    if let Some(t) = trigger {
        spec["savepoint"] = json!({"trigger": t});
    }
    serde_json::from_value(spec).expect("spec")
}

fn head(task: u32, created_at_ms: i64) -> Option<Descriptor> {
    Some(Descriptor {
        created_at_ms,
        source_offsets: BTreeMap::from([("in".to_string(), 40)]),
        ..test_descriptor(task, u64::from(task) + 10)
    })
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).expect("time")
}

#[test]
fn a_new_trigger_waits_for_every_task_to_checkpoint_after_it_then_copies_those() {
    assert_eq!(next(&spec(None), None, None, false, at(0)), Next::Idle);
    let Next::Request(requested) = next(&spec(Some("a")), None, None, false, at(1_000)) else {
        panic!("a new trigger is requested");
    };
    assert_eq!(
        (requested.trigger.as_str(), requested.state.as_str()),
        ("a", "Pending")
    );
    assert_eq!(requested.requested_at.0, at(1_000));
    // Task 1 last checkpointed before the trigger, task 2 never.
    let heads = [head(0, 1_500), head(1, 900), None];
    let Next::Wait(waiting) = next(
        &spec(Some("a")),
        Some(&requested),
        Some(&heads),
        false,
        at(2_000),
    ) else {
        panic!("waits");
    };
    assert_eq!(
        waiting.message,
        "1 of 3 tasks have checkpointed since the trigger; waiting for the others"
    );
    assert_eq!(
        waiting.requested_at, requested.requested_at,
        "the wait keeps its start"
    );
    let heads = [head(0, 1_500), head(1, 1_900), head(2, 1_000)];
    match next(
        &spec(Some("a")),
        Some(&waiting),
        Some(&heads),
        false,
        at(2_000),
    ) {
        Next::Take(descriptors) => {
            assert_eq!(
                descriptors.iter().map(|d| d.task).collect::<Vec<_>>(),
                [0, 1, 2]
            );
        }
        other => panic!("takes: {other:?}"),
    }
    // A store that cannot be read waits and says so.
    assert!(matches!(
        next(&spec(Some("a")), Some(&waiting), None, false, at(2_000)),
        Next::Wait(p) if p.message.contains("cannot be read")
    ));
    // Taken: nothing more until the trigger changes.
    let savepoint = manifest(3);
    let done = taken(&waiting, &savepoint);
    assert_eq!(done.state, "Taken");
    assert_eq!(done.id.as_deref(), Some("shop/orders/3"));
    assert!(
        done.message.contains("spec.restoreFrom: shop/orders/3"),
        "{}",
        done.message
    );
    assert_eq!(
        next(
            &spec(Some("a")),
            Some(&done),
            Some(&heads),
            false,
            at(9_000)
        ),
        Next::Idle
    );
    assert!(matches!(
        next(&spec(Some("b")), Some(&done), Some(&heads), false, at(9_000)),
        Next::Request(p) if p.trigger == "b"
    ));
}

#[test]
fn a_stopped_job_is_saved_from_its_final_checkpoints_at_once() {
    let Next::Request(requested) = next(&spec(Some("a")), None, None, true, at(5_000)) else {
        panic!("requested");
    };
    let heads = [head(0, 1_000), head(1, 2_000)];
    assert!(matches!(
        next(&spec(Some("a")), Some(&requested), Some(&heads), true, at(5_000)),
        Next::Take(d) if d.len() == 2
    ));
    // A task that never checkpointed has nothing to save: it fails, saying so.
    let heads = [head(0, 1_000), None];
    let failed = next(
        &spec(Some("a")),
        Some(&requested),
        Some(&heads),
        true,
        at(5_000),
    );
    assert!(
        matches!(&failed, Next::Fail(p) if p.state == "Failed" && p.message.contains("tasks 1 never checkpointed")),
        "{failed:?}"
    );
    // Running, it waits for it.
    let waiting = next(
        &spec(Some("a")),
        Some(&requested),
        Some(&heads),
        false,
        at(5_000),
    );
    assert!(matches!(waiting, Next::Wait(_)), "{waiting:?}");
}

#[test]
fn retention_keeps_the_newest_and_the_one_restored_from() {
    assert_eq!(expired(&[1, 2, 3, 4, 5], 2, &[]), [1, 2, 3]);
    assert_eq!(expired(&[1, 2, 3, 4, 5], 2, &[2, 5]), [1, 3]);
    assert_eq!(expired(&[1, 2], 10, &[]), Vec::<u64>::new());
    assert_eq!(
        expired(&[4], 0, &[]),
        Vec::<u64>::new(),
        "retain 0 reads as 1"
    );
}

fn manifest(tasks: u32) -> Savepoint {
    Savepoint {
        format: SAVEPOINT_FORMAT,
        id: "shop/orders/3".into(),
        trigger: "a".into(),
        created_at_ms: 1_000,
        tasks: (0..tasks)
            .map(|task| SavepointEntry {
                task,
                checkpoint: CheckpointId(7),
                bytes: 100,
                source_offsets: BTreeMap::from([("in".to_string(), i64::from(task))]),
            })
            .collect(),
    }
}

#[test]
fn status_lists_a_savepoint_with_its_tasks_capped() {
    let listed = info(&manifest(100));
    assert_eq!((listed.tasks, listed.bytes), (100, 10_000));
    assert_eq!(listed.checkpoints.len(), crate::plan::LISTED);
    assert_eq!(listed.checkpoints[5].source_offsets["in"], 5);
    assert_eq!(listed.time.0, at(1_000));
}

#[test]
fn a_savepoint_written_but_not_recorded_is_found_again_not_taken_twice() {
    let Next::Request(requested) = next(&spec(Some("a")), None, None, false, at(500)) else {
        panic!("requested");
    };
    let mut older = manifest(1);
    older.created_at_ms = 100;
    let found = vec![(2, older.clone()), (3, manifest(1))];
    assert_eq!(
        already_taken(&requested, &found).map(|s| s.created_at_ms),
        Some(1_000)
    );
    assert_eq!(
        already_taken(&requested, &found[..1]),
        None,
        "taken before the request"
    );
    let mut other = requested.clone();
    other.trigger = "b".into();
    assert_eq!(already_taken(&other, &found), None);
}

use std::collections::BTreeMap;

use sluice_core::checkpoint::descriptor::{
    ContentHash, Descriptor, ReportedState, StateFile, TaskReport, test_descriptor,
};

use super::tasks;
use crate::plan::LISTED;

fn head(task: u32, offset: i64) -> Option<Descriptor> {
    Some(Descriptor {
        source_offsets: BTreeMap::from([("orders".to_string(), offset)]),
        watermark_ms: Some(1_700_000_000_000),
        created_at_ms: 1_700_000_005_000,
        files: vec![StateFile {
            name: "000001.sst".into(),
            hash: ContentHash("h".into()),
            size: 100,
        }],
        ..test_descriptor(task, 9)
    })
}

fn report(task: u32, state: ReportedState) -> TaskReport {
    TaskReport {
        task,
        owner: format!("orders-{}", task % 2),
        epoch: None,
        state,
        message: String::new(),
        at_ms: 0,
        decisions: vec![],
        restored: Some("store".into()),
        failing_since_ms: None,
    }
}

#[test]
fn each_task_says_who_runs_it_how_far_it_is_and_the_worst_comes_first() {
    let heads = [head(0, 40), head(1, 10), None];
    let reports = [
        report(0, ReportedState::Running),
        report(1, ReportedState::Failed),
    ];
    let (listed, totals) = tasks(3, Some(&heads), &reports, Some(&[0, 30, 5]));
    assert_eq!(listed.iter().map(|t| t.task).collect::<Vec<_>>(), [1, 2, 0]);
    let worst = &listed[0];
    assert_eq!(worst.owner.as_deref(), Some("orders-1"));
    assert_eq!(worst.state.as_deref(), Some("Failed"));
    assert_eq!(worst.offsets["orders"], 10);
    assert_eq!(worst.lag, Some(30));
    assert_eq!(worst.state_bytes, 100);
    assert_eq!(worst.last_checkpoint.as_ref().map(|c| c.id), Some(9));
    assert_eq!(worst.restored_from.as_deref(), Some("store"));
    assert!(worst.watermark.is_some());
    // Task 2 never checkpointed nor reported.
    let fresh = &listed[1];
    assert_eq!(
        (fresh.owner.as_ref(), fresh.last_checkpoint.as_ref()),
        (None, None)
    );
    let totals = totals.expect("totals");
    assert_eq!(
        (
            totals.tasks,
            totals.listed,
            totals.worst_lag,
            totals.worst_task,
            totals.state_bytes,
            totals.failed
        ),
        (3, 3, Some(30), Some(1), 200, 1)
    );
}

#[test]
fn many_tasks_are_capped_and_unknowns_are_said_as_such() {
    let (listed, totals) = tasks(500, None, &[], None);
    assert_eq!(listed.len(), LISTED);
    assert_eq!(listed[0].task, 0, "without lag, in task order");
    let totals = totals.expect("totals");
    assert_eq!(
        (totals.tasks, totals.listed, totals.worst_lag),
        (500, LISTED as i64, None)
    );
    assert_eq!(tasks(0, None, &[], None), (Vec::new(), None));
}

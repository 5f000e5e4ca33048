use sluice_core::job::test_job;
use sluice_core::upgrade::{Old, check, signatures};

use super::{Inputs, LISTED, is_upgrade, plan};
use crate::change::{Change, Classified};

fn classified(change: Change) -> Classified {
    Classified {
        change,
        ignored: vec![],
    }
}

fn inputs<'a>(change: &'a Classified, state: Option<&'a sluice_core::upgrade::Plan>) -> Inputs<'a> {
    Inputs {
        generation: 4,
        job: "orders",
        change,
        state,
        held: None,
        partitions: 6,
        parallelism: (3, 3),
        bytes: &[10, 20, 30, 40, 50, 60],
        adopting: None,
    }
}

#[test]
fn adopting_new_partitions_is_a_roll_of_its_own_whose_state_verdicts_the_plan_shows() {
    let job = test_job(
        "[{name: once, dedupe: {key: value.id, ttl: 1h}}, {name: f, filter: {expr: 'true'}}]",
        "json",
    );
    let state = check(
        Old::Signed(&signatures(&job.spec, 6)),
        &signatures(&job.spec, 12),
        "",
    );
    let change = classified(Change::None);
    assert!(
        plan(&inputs(&change, Some(&state))).is_none(),
        "without adoption nothing rolls"
    );
    let p = plan(&Inputs {
        partitions: 12,
        adopting: Some((6, 12)),
        ..inputs(&change, Some(&state))
    })
    .expect("a plan");
    assert_eq!(p.action, "adopt-partitions");
    let verdicts: Vec<(&str, &str)> = p
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.verdict.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [("once", "reset")],
        "keys move between tasks: {p:?}"
    );
    assert_eq!(p.state, state.summary());
}

#[test]
fn an_upgrade_names_each_steps_verdict_and_moves_nothing() {
    let old = test_job(
        "[{name: once, dedupe: {key: value.id, ttl: 1h}}, {name: w, aggregate: {groupBy: value.c, aggregations: [{name: n, function: count}], window: {tumbling: {size: 60s}}}}]",
        "json",
    );
    let new = test_job(
        "[{name: w, aggregate: {groupBy: value.c, aggregations: [{name: n, function: count}], window: {tumbling: {size: 120s}}}}, {name: t, materialize: {}}]",
        "json",
    );
    let old = signatures(&old.spec, 6);
    let state = check(Old::Signed(&old), &signatures(&new.spec, 6), "");
    let change = classified(Change::Restart {
        fields: vec!["steps"],
    });
    let p = plan(&inputs(&change, Some(&state))).expect("a plan");
    assert_eq!((p.generation, p.action.as_str()), (4, "upgrade"));
    let verdicts: Vec<(&str, &str)> = p
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.verdict.as_str()))
        .collect();
    assert_eq!(verdicts, [("w", "reset"), ("t", "new"), ("once", "drop")]);
    assert_eq!(p.steps[0].changes, ["window: tumbling 60s → tumbling 120s"]);
    assert_eq!(p.state, state.summary());
    assert!(
        p.moves.is_empty() && p.tasks_moving == 0 && p.download_bytes == 0,
        "a restart moves no task"
    );
}

#[test]
fn a_rescale_lists_the_tasks_that_change_pod_and_what_they_download() {
    let change = classified(Change::Rescale { from: 3, to: 2 });
    let p = plan(&Inputs {
        parallelism: (3, 2),
        ..inputs(&change, None)
    })
    .expect("a plan");
    assert_eq!(p.action, "rescale");
    // Task t runs on t mod 3, then t mod 2: 0, 1 stay; 2 (2→0), 3 (0→1), 4 (1→0), 5 (2→1) move.
    let moves: Vec<(i64, &str, &str, i64)> = p
        .moves
        .iter()
        .map(|m| (m.task, m.from.as_str(), m.to.as_str(), m.bytes))
        .collect();
    assert_eq!(
        moves,
        [
            (2, "orders-2", "orders-0", 30),
            (3, "orders-0", "orders-1", 40),
            (4, "orders-1", "orders-0", 50),
            (5, "orders-2", "orders-1", 60),
        ]
    );
    assert!(p.moves.iter().all(|m| m.restore_from == "store"));
    assert_eq!((p.tasks_moving, p.download_bytes), (4, 180));
    assert_eq!(p.state, "no state yet");
}

#[test]
fn per_task_lists_are_capped_and_totals_count_every_task() {
    let change = classified(Change::Rescale { from: 1, to: 2 });
    let bytes = vec![1u64; 1000];
    let p = plan(&Inputs {
        partitions: 1000,
        parallelism: (1, 2),
        bytes: &bytes,
        ..inputs(&change, None)
    })
    .expect("a plan");
    assert_eq!(p.moves.len(), LISTED);
    assert_eq!((p.tasks_moving, p.download_bytes), (500, 500));
}

#[test]
fn nothing_changed_has_no_plan_and_only_steps_source_and_image_are_upgrades() {
    assert_eq!(plan(&inputs(&classified(Change::None), None)), None);
    assert!(
        is_upgrade(&["steps"]) && is_upgrade(&["checkpoint", "source"]) && is_upgrade(&["image"])
    );
    assert!(!is_upgrade(&["checkpoint", "resources", "sink"]));
    let change = classified(Change::Restart {
        fields: vec!["resources"],
    });
    assert_eq!(
        plan(&inputs(&change, None)).expect("plan").action,
        "restart"
    );
}

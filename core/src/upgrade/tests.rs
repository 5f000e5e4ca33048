//! The compatibility check, field by field of every stateful step kind (as the operator's
//! `change.rs` tests do for spec fields).

use super::*;
use crate::job::test_job;

const AGG: &str = "{name: per-minute, aggregate: {groupBy: value.customer, aggregations: [{name: n, function: count}, {name: total, function: sum, expr: value.amount}], window: {tumbling: {size: 60s}}}}";
const DEDUPE: &str = "{name: once, dedupe: {key: value.id, ttl: 1h}}";
const TABLE: &str = "{name: table, materialize: {key: value.id}}";

fn plan(old: &str, new: &str) -> Plan {
    plan_as(old, new, 4, 4)
}

fn plan_as(old: &str, new: &str, old_tasks: u32, new_tasks: u32) -> Plan {
    let (old, new) = (test_job(old, "json"), test_job(new, "json"));
    let old = signatures(&old.spec, old_tasks);
    let new_job = new.clone();
    check(
        Old::Signed(&old),
        &signatures(&new_job.spec, new_tasks),
        &new.pipeline_fingerprint(),
    )
}

fn verdicts(plan: &Plan) -> Vec<(&str, Verdict)> {
    plan.steps
        .iter()
        .map(|s| (s.name.as_str(), s.verdict))
        .collect()
}

fn agg(replace: (&str, &str)) -> String {
    assert!(
        AGG.contains(replace.0),
        "{} not in the aggregate",
        replace.0
    );
    AGG.replace(replace.0, replace.1)
}

#[test]
fn stateless_steps_have_no_signature() {
    let job = test_job(
        "[{name: f, filter: {expr: 'true'}}, {name: m, map: {value: value}}]",
        "json",
    );
    assert!(signatures(&job.spec, 4).is_empty());
}

#[test]
fn editing_adding_and_reordering_stateless_steps_and_the_format_keep_every_state() {
    let old = format!("[{{name: f, filter: {{expr: 'value.a > 1'}}}}, {DEDUPE}, {AGG}]");
    let cases = [
        format!("[{{name: f, filter: {{expr: 'value.a > 2'}}}}, {DEDUPE}, {AGG}]"),
        format!("[{DEDUPE}, {{name: f, filter: {{expr: 'value.a > 1'}}}}, {AGG}]"),
        format!(
            "[{DEDUPE}, {{name: m, map: {{value: value}}}}, {AGG}, {{name: g, filter: {{expr: 'true'}}}}]"
        ),
        format!("[{DEDUPE}, {AGG}]"),
    ];
    for new in &cases {
        let p = plan(&old, new);
        assert_eq!(
            verdicts(&p),
            [("once", Verdict::Keep), ("per-minute", Verdict::Keep)],
            "{new}"
        );
        assert!(!p.loses_state() && p.allowed(StateChanges::Refuse), "{new}");
        assert_eq!(p.summary(), "keeps all state");
    }
    // The format is outside the signatures.
    let (a, b) = (test_job(&old, "json"), test_job(&old, "raw"));
    assert_eq!(signatures(&a.spec, 4), signatures(&b.spec, 4));
}

#[test]
fn every_aggregate_field_that_shapes_its_state_resets_it() {
    let cases = [
        (
            ("groupBy: value.customer", "groupBy: value.region"),
            "groupBy",
        ),
        (("name: n,", "name: count,"), "aggregations"),
        (("function: sum", "function: max"), "aggregations"),
        (
            (
                "{name: n, function: count}, {name: total, function: sum, expr: value.amount}",
                "{name: total, function: sum, expr: value.amount}, {name: n, function: count}",
            ),
            "aggregations",
        ),
        (
            (", {name: total, function: sum, expr: value.amount}", ""),
            "aggregations",
        ),
        (("size: 60s", "size: 120s"), "window"),
        (
            (
                "{tumbling: {size: 60s}}",
                "{hopping: {size: 60s, advance: 10s}}",
            ),
            "window",
        ),
        (
            ("{tumbling: {size: 60s}}", "{session: {gap: 60s}}"),
            "window",
        ),
        (("}}}", "}}, emit: on-update}"), "emit"),
    ];
    for (replace, field) in cases {
        let new = agg(replace);
        let p = plan(&format!("[{AGG}]"), &format!("[{new}]"));
        assert_eq!(verdicts(&p), [("per-minute", Verdict::Reset)], "{new}");
        let fields: Vec<&str> = p.steps[0]
            .changes
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        assert_eq!(fields, [field], "{new}");
        assert!(p.loses_state() && !p.allowed(StateChanges::Refuse));
        assert!(p.allowed(StateChanges::Reset));
    }
    // A hopping window's advance and a session's gap are sizes too.
    let hop = agg((
        "{tumbling: {size: 60s}}",
        "{hopping: {size: 60s, advance: 10s}}",
    ));
    let hop2 = agg((
        "{tumbling: {size: 60s}}",
        "{hopping: {size: 60s, advance: 20s}}",
    ));
    assert_eq!(
        verdicts(&plan(&format!("[{hop}]"), &format!("[{hop2}]"))),
        [("per-minute", Verdict::Reset)]
    );
    let s1 = agg(("{tumbling: {size: 60s}}", "{session: {gap: 60s}}"));
    let s2 = agg(("{tumbling: {size: 60s}}", "{session: {gap: 30s}}"));
    assert_eq!(
        verdicts(&plan(&format!("[{s1}]"), &format!("[{s2}]"))),
        [("per-minute", Verdict::Reset)]
    );
    // Without a window.
    let all_time = agg(("window: {tumbling: {size: 60s}}}", "emit: on-update}"));
    let p = plan(&format!("[{AGG}]"), &format!("[{all_time}]"));
    assert_eq!(verdicts(&p), [("per-minute", Verdict::Reset)]);
}

#[test]
fn aggregate_fields_that_do_not_shape_its_state_keep_it() {
    let cases = [
        ("expr: value.amount", "expr: value.price"),
        ("}}}", "}}, allowedLateness: 30s}"),
        ("}}}", "}}, lateRecords: drop}"),
        ("size: 60s", "size: 1m"),
    ];
    for replace in cases {
        let new = agg(replace);
        let p = plan(&format!("[{AGG}]"), &format!("[{new}]"));
        assert_eq!(verdicts(&p), [("per-minute", Verdict::Keep)], "{new}");
    }
}

#[test]
fn dedupe_key_resets_and_ttl_keeps() {
    let p = plan(
        &format!("[{DEDUPE}]"),
        "[{name: once, dedupe: {key: value.order, ttl: 1h}}]",
    );
    assert_eq!(verdicts(&p), [("once", Verdict::Reset)]);
    assert_eq!(
        p.steps[0].changes,
        [FieldChange {
            field: "key".into(),
            from: Some("value.id".into()),
            to: Some("value.order".into())
        }]
    );
    let p = plan(
        &format!("[{DEDUPE}]"),
        "[{name: once, dedupe: {key: value.id, ttl: 2h}}]",
    );
    assert_eq!(verdicts(&p), [("once", Verdict::Keep)]);
}

#[test]
fn materialize_key_resets_including_to_and_from_the_record_key() {
    for new in [
        "[{name: table, materialize: {key: value.code}}]",
        "[{name: table, materialize: {}}]",
    ] {
        let p = plan(&format!("[{TABLE}]"), new);
        assert_eq!(verdicts(&p), [("table", Verdict::Reset)], "{new}");
    }
    let p = plan(
        "[{name: table, materialize: {}}]",
        "[{name: table, materialize: {}}]",
    );
    assert_eq!(verdicts(&p), [("table", Verdict::Keep)]);
}

#[test]
fn the_task_count_is_part_of_every_signature() {
    let steps = format!("[{TABLE}, {DEDUPE}]");
    let p = plan_as(&steps, &steps, 4, 6);
    assert_eq!(
        verdicts(&p),
        [("table", Verdict::Reset), ("once", Verdict::Reset)]
    );
    assert_eq!(p.steps[0].changes[0].field, "tasks");
    assert!(p.summary().contains("tasks: 4 → 6"), "{}", p.summary());
}

#[test]
fn a_kind_change_under_the_same_name_resets_and_names_the_kinds() {
    let p = plan(
        "[{name: s, dedupe: {key: value.id, ttl: 1h}}]",
        "[{name: s, materialize: {}}]",
    );
    assert_eq!(verdicts(&p), [("s", Verdict::Reset)]);
    assert_eq!(
        p.steps[0].changes,
        [FieldChange {
            field: "kind".into(),
            from: Some("dedupe".into()),
            to: Some("materialize".into())
        }]
    );
}

#[test]
fn new_removed_and_renamed_steps() {
    let p = plan(&format!("[{DEDUPE}]"), &format!("[{DEDUPE}, {AGG}]"));
    assert_eq!(
        verdicts(&p),
        [("once", Verdict::Keep), ("per-minute", Verdict::New)]
    );
    assert!(p.allowed(StateChanges::Refuse), "a new step loses nothing");

    let p = plan(&format!("[{DEDUPE}, {AGG}]"), &format!("[{AGG}]"));
    assert_eq!(
        verdicts(&p),
        [("per-minute", Verdict::Keep), ("once", Verdict::Drop)]
    );
    assert!(!p.allowed(StateChanges::Refuse));
    assert_eq!(
        p.summary(),
        "drops dedupe `once` (removed); keeps aggregate `per-minute`"
    );

    let renamed = DEDUPE.replace("name: once", "name: twice");
    let p = plan(&format!("[{DEDUPE}]"), &format!("[{renamed}]"));
    assert_eq!(
        verdicts(&p),
        [("twice", Verdict::New), ("once", Verdict::Drop)]
    );
}

#[test]
fn the_refusal_names_the_step_the_change_and_both_ways_out() {
    let p = plan(
        &format!("[{AGG}]"),
        &format!("[{}]", agg(("size: 60s", "size: 120s"))),
    );
    let message = p.refusal("generation 3");
    for part in [
        "generation 3 would lose state",
        "resets aggregate `per-minute` (window: tumbling 60s → tumbling 120s)",
        "revert the change",
        "spec.upgrade.stateChanges: reset",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
}

#[test]
fn a_checkpoint_without_signatures_is_one_generation() {
    let job = test_job(&format!("[{DEDUPE}, {AGG}]"), "json");
    let new = signatures(&job.spec, 4);
    let same = check(
        Old::Fingerprint(&job.pipeline_fingerprint()),
        &new,
        &job.pipeline_fingerprint(),
    );
    assert_eq!(
        verdicts(&same),
        [("once", Verdict::Keep), ("per-minute", Verdict::Keep)]
    );
    assert!(same.allowed(StateChanges::Refuse));

    // Even an edit of a stateless step resets all of it: whose entries are whose is unknown.
    let edited = test_job(
        &format!("[{{name: f, filter: {{expr: 'true'}}}}, {DEDUPE}, {AGG}]"),
        "json",
    );
    let p = check(
        Old::Fingerprint(&job.pipeline_fingerprint()),
        &signatures(&edited.spec, 4),
        &edited.pipeline_fingerprint(),
    );
    assert_eq!(
        verdicts(&p),
        [("once", Verdict::Reset), ("per-minute", Verdict::Reset)]
    );
    assert!(p.whole_state.is_some() && !p.allowed(StateChanges::Refuse));
    assert!(
        p.refusal("checkpoint 5 of task 0")
            .contains("until every task has checkpointed once")
    );
}

#[test]
fn signatures_round_trip_through_json() {
    let job = test_job(&format!("[{TABLE}, {DEDUPE}, {AGG}]"), "json");
    let s = signatures(&job.spec, 12);
    let text = serde_json::to_string(&s).unwrap();
    let back: Vec<StepState> = serde_json::from_str(&text).unwrap();
    assert_eq!(s, back);
    assert_eq!(s[2].signature["window"], "tumbling 60s");
    assert_eq!(s[2].signature["aggregations"], "n: count, total: sum");
}

//! The chain as a whole: decoding, errors and their step, steps after record-making steps, the
//! order of watermarks, and state by step name.

use crate::decode::MAX_VALUE_BYTES;
use crate::job::test_job;
use crate::state::StateBackend;
use crate::steps::namespace::{DATA, time_key};
use crate::steps::testing::{Harness, outcome};

#[test]
fn bad_records_name_their_kind_and_step() {
    let mut h = Harness::new(
        "[{name: big, filter: {expr: 'value.amount > 100'}}, \
          {name: ratio, map: {value: 'value.amount / value.count'}}]",
        "json",
    );
    let e = |kind: &str, step: &str| Err((kind.to_string(), step.to_string()));
    assert_eq!(outcome(&mut h, b"{oops"), e("invalid-json", "big"));
    assert_eq!(
        outcome(&mut h, b"{\"amount\": \"\xff\"}"),
        e("invalid-utf8", "big")
    );
    assert_eq!(
        outcome(&mut h, br#"{"amount":"many"}"#),
        e("cel-type-error", "big")
    );
    assert_eq!(
        outcome(&mut h, br#"{"other":1}"#),
        e("cel-no-such-key", "big")
    );
    assert_eq!(outcome(&mut h, b"null"), e("null-value", "big"));
    let huge = format!(
        r#"{{"amount":200,"count":1,"pad":"{}"}}"#,
        "x".repeat(MAX_VALUE_BYTES)
    );
    assert_eq!(outcome(&mut h, huge.as_bytes()), e("too-large", "big"));
    assert_eq!(h.feed("k", None), ["error null-value at big"]);
}

#[test]
fn debezium_records_expose_op_before_after_and_source() {
    let mut h = Harness::new(
        "[{name: updates, filter: {expr: \"op == 'u' && after.v > before.v && source.db == 'shop'\"}}, \
          {name: t, materialize: {key: 'string(after.id)'}}]",
        "debezium-json",
    );
    let event =
        br#"{"op":"u","before":{"id":1,"v":1},"after":{"id":1,"v":2},"source":{"db":"shop"}}"#;
    assert_eq!(
        outcome(&mut h, event),
        Ok(vec![r#"1={"id":1,"v":2}"#.into()])
    );
    let create = br#"{"op":"c","after":{"id":2,"v":2},"source":{"db":"shop"}}"#;
    assert_eq!(outcome(&mut h, create), Ok(vec![]));
    assert!(
        h.feed("k", None).is_empty(),
        "Debezium's tombstones are skipped"
    );
    assert_eq!(
        outcome(&mut h, br#"{"op":"x","after":{"id":2}}"#),
        Err(("unknown-op".to_string(), "updates".to_string()))
    );
}

#[test]
fn an_invalid_expression_names_step_expression_and_position() {
    let job = test_job(
        "[{name: ok, filter: {expr: 'true'}}, {name: big, filter: {expr: 'value.amount >'}}]",
        "json",
    );
    let err = crate::pipeline::Pipeline::new(&job)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("step \"big\""), "{err}");
    assert!(err.contains("\"value.amount >\""), "{err}");
    assert!(err.contains("line 1, column"), "{err}");
}

#[test]
fn a_filter_and_a_map_after_a_windowed_aggregate_see_its_results() {
    let mut h = Harness::timed(
        "[{name: counts, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], window: {tumbling: {size: 10ms}}}}, \
          {name: many, filter: {expr: 'value.n > 3'}}, \
          {name: alert, map: {value: \"{'customer': key, 'orders': value.n, 'until': value.window_end}\"}}]",
        0,
    );
    let mut input: Vec<(&str, i64, i64)> = (0..5).map(|ts| ("a", ts, 1)).collect();
    input.extend([("b", 5, 1), ("b", 6, 1), ("b", 7, 1)]);
    assert!(h.orders(&input).is_empty());
    assert_eq!(
        h.orders(&[("c", 20, 1)]),
        [r#"a={"customer":"a","orders":5,"until":10}"#]
    );
}

#[test]
fn a_windowed_aggregate_after_a_windowed_aggregate_sees_results_before_its_windows_close() {
    let mut h = Harness::timed(
        "[{name: per10, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], window: {tumbling: {size: 10ms}}}}, \
          {name: per20, aggregate: {groupBy: 'key', aggregations: [{name: total, function: sum, expr: value.n}], window: {tumbling: {size: 20ms}}}}]",
        0,
    );
    // ts 12 closes [0, 10) of per10: its result (event time 9) goes into [0, 20) of per20.
    assert!(
        h.orders(&[("a", 1, 1), ("a", 2, 1), ("a", 12, 1)])
            .is_empty()
    );
    // ts 40 closes [10, 20) of per10 (event time 19) and then, after it, [0, 20) of per20.
    assert_eq!(
        h.orders(&[("z", 40, 1)]),
        [r#"a={"total":3,"window_end":20,"window_start":0}"#]
    );
}

#[test]
fn a_dedupe_after_a_map_after_an_aggregate_keeps_each_change_once() {
    let mut h = Harness::timed(
        "[{name: counts, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], emit: on-update}}, \
          {name: level, map: {value: \"{'level': value.n >= 2 ? 'hot' : 'cold'}\"}}, \
          {name: changes, dedupe: {key: 'key + \"/\" + value.level', ttl: 1h}}]",
        0,
    );
    assert_eq!(
        h.orders(&[("a", 1, 1), ("a", 2, 1), ("a", 3, 1), ("b", 4, 1)]),
        [
            r#"a={"level":"cold"}"#,
            r#"a={"level":"hot"}"#,
            r#"b={"level":"cold"}"#
        ]
    );
}

#[test]
fn a_result_a_later_step_refuses_is_dead_lettered_and_the_aggregate_goes_on() {
    let mut h = Harness::timed(
        "[{name: counts, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], emit: on-update}}, \
          {name: ratio, map: {value: '100 / (value.n - 2)'}}]",
        0,
    );
    assert_eq!(
        h.orders(&[("a", 1, 1), ("a", 2, 1), ("a", 3, 1)]),
        [
            "a=-100",
            r#"dead-letter cel-division-by-zero at ratio: a={"n":2}"#,
            "a=100"
        ]
    );
}

/// An aggregate's accumulator as main's worker wrote it: count `n`.
fn main_accumulator(n: i64) -> String {
    format!(
        r#"{{"slots":[{{"n":{n},"int_sum":0,"float_sum":0.0,"float":false,"value":null,"at":0}}]}}"#
    )
}

#[test]
fn state_written_before_steps_had_names_is_read_where_it_is_and_then_kept_by_name() {
    let steps = "[{name: big, filter: {expr: 'value.amount > 0'}}, \
                 {name: counts, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], emit: on-update}}]";
    // The layout of main's worker: keys start with the step's position, no names.
    let mut h = Harness::timed(steps, 0);
    let (_dir, mut state) = {
        let dir = tempfile::tempdir().unwrap();
        let state = <crate::state::memory::MemoryState as StateBackend>::open(dir.path()).unwrap();
        (dir, state)
    };
    let mut key = vec![1, DATA];
    key.extend_from_slice(&time_key(0));
    key.extend_from_slice(b"a");
    state.put(&key, main_accumulator(2).as_bytes()).unwrap();
    h.state = state;
    h.pipeline.restore(&mut h.state).unwrap();
    assert_eq!(h.orders(&[("a", 1, 1)]), [r#"a={"n":3}"#]);
    // A step inserted before it: the aggregate keeps its state under its name, not position.
    let edited = "[{name: first, filter: {expr: 'value.amount < 100'}}, \
                  {name: big, filter: {expr: 'value.amount > 0'}}, \
                  {name: counts, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], emit: on-update}}]";
    let mut job = h.job.clone();
    job.spec.steps = test_job(edited, "json").spec.steps;
    h.restart(Some(job));
    assert_eq!(h.orders(&[("a", 2, 1)]), [r#"a={"n":4}"#]);
}

//! The aggregate step's windows, lateness and sessions, on the in-memory state backend.

use crate::steps::namespace::{DATA, SESSIONS, TIMERS};
use crate::steps::testing::Harness;
use sluice_core::job::test_job;

#[test]
fn tumbling_windows_close_on_the_watermark_and_later_records_are_late() {
    let mut h = Harness::timed(
        "[{name: sums, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}, {name: total, function: sum, expr: value.amount}], window: {tumbling: {size: 10ms}}}}]",
        5,
    );
    let seen = h.orders(&[
        ("a", 1, 1),
        ("a", 3, 2),
        ("b", 12, 5),
        ("a", 8, 1),
        ("a", 15, 7),
        ("a", 9, 100),
        ("a", 16, 1),
    ]);
    assert_eq!(
        seen,
        [
            // ts 15 moves the watermark to 9: [0, 10) closes.
            r#"a={"n":3,"total":4,"window_end":10,"window_start":0}"#,
            // ts 9 is late: its window closed.
            "error late at 9",
        ]
    );
    assert_eq!(
        h.orders(&[("x", 30, 0)]),
        [
            r#"a={"n":2,"total":8,"window_end":20,"window_start":10}"#,
            r#"b={"n":1,"total":5,"window_end":20,"window_start":10}"#,
        ]
    );
    assert_eq!(
        h.entries(&[0, TIMERS]),
        2,
        "only the open window of x keeps timers"
    );
}

#[test]
fn allowed_lateness_updates_a_closed_window_and_hopping_windows_overlap() {
    let mut h = Harness::timed(
        "[{name: sums, aggregate: {groupBy: 'value.k', aggregations: [{name: total, function: sum, expr: value.amount}], window: {hopping: {size: 10ms, advance: 5ms}}, allowedLateness: 5ms, lateRecords: drop}}]",
        0,
    );
    let seen = h.orders(&[
        ("a", 1, 1),
        ("a", 6, 2),
        ("a", 11, 4),
        ("a", 7, 8),
        ("a", 20, 0),
        ("a", 3, 16),
    ]);
    assert_eq!(
        seen,
        [
            // ts 6: watermark 5, [-5, 5) closes.
            r#"a={"total":1,"window_end":5,"window_start":-5}"#,
            // ts 11: watermark 10, [0, 10) closes.
            r#"a={"total":3,"window_end":10,"window_start":0}"#,
            // ts 7 is late for [0, 10) but within its lateness: it fires again; [5, 15) is open.
            r#"a={"total":11,"window_end":10,"window_start":0}"#,
            // ts 20: watermark 19, [5, 15) and [10, 20) close.
            r#"a={"total":14,"window_end":15,"window_start":5}"#,
            r#"a={"total":4,"window_end":20,"window_start":10}"#,
        ]
    );
    assert_eq!(
        h.pipeline.late_dropped(),
        1,
        "ts 3 is later than the lateness: dropped"
    );
}

#[test]
fn a_window_opened_by_a_late_record_within_its_lateness_fires_once() {
    let mut h = Harness::timed(
        "[{name: sums, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], window: {tumbling: {size: 10ms}}, allowedLateness: 5ms}}]",
        0,
    );
    // ts 12: watermark 11. ts 5 opens [0, 10) of b, already closed but within its
    // lateness: it fires at once, and not again when the watermark moves on.
    assert!(h.orders(&[("a", 12, 1)]).is_empty());
    assert_eq!(
        h.orders(&[("b", 5, 1), ("a", 13, 1), ("a", 30, 1)]),
        [
            r#"b={"n":1,"window_end":10,"window_start":0}"#,
            r#"a={"n":2,"window_end":20,"window_start":10}"#
        ]
    );
    let mut h = Harness::timed(
        "[{name: s, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}], window: {session: {gap: 10ms}}, allowedLateness: 20ms}}]",
        0,
    );
    assert!(h.orders(&[("a", 30, 1)]).is_empty());
    assert_eq!(
        h.orders(&[("b", 5, 1), ("a", 31, 1)]),
        [r#"b={"n":1,"window_end":15,"window_start":5}"#]
    );
}

#[test]
fn sessions_merge_across_gaps_and_survive_a_restore() {
    let mut h = Harness::timed(
        "[{name: s, aggregate: {groupBy: 'value.k', aggregations: [{name: n, function: count}, {name: first, function: first, expr: value.amount}, {name: last, function: last, expr: value.amount}], window: {session: {gap: 10ms}}}}]",
        30,
    );
    assert!(
        h.orders(&[("a", 0, 1), ("a", 22, 2), ("a", 5, 3)])
            .is_empty()
    );
    h.restart(None);
    assert_eq!(h.pipeline.watermark_ms(), Some(-9));
    assert_eq!(
        h.orders(&[("a", 14, 4), ("a", 100, 5)]),
        // ts 14 joins [0, 15) and [22, 32) into one session [0, 32); ts 100 closes it.
        [r#"a={"first":1,"last":2,"n":4,"window_end":32,"window_start":0}"#]
    );
}

#[test]
fn an_unwindowed_aggregate_emits_every_update() {
    let mut h = Harness::timed(
        "[{name: t, aggregate: {groupBy: 'key', aggregations: [{name: avg, function: avg, expr: value.amount}, {name: max, function: max, expr: value.amount}], emit: on-update}}]",
        0,
    );
    assert_eq!(
        h.orders(&[("a", 5, 2), ("a", 1, 4)]),
        [r#"a={"avg":2.0,"max":2}"#, r#"a={"avg":3.0,"max":4}"#]
    );
}

/// An edit of `allowedLateness` keeps the step's state (it is not in the signature): the
/// windows and sessions opened under the old lateness are kept and purged at the new one.
#[test]
fn windows_opened_before_an_edit_of_the_lateness_are_purged_at_the_new_one() {
    for window in ["{session: {gap: 10ms}}", "{tumbling: {size: 10ms}}"] {
        let steps = |lateness: &str| {
            format!(
                "[{{name: s, aggregate: {{groupBy: 'value.k', aggregations: [{{name: n, function: count}}], window: {window}, allowedLateness: {lateness}, lateRecords: drop}}}}]"
            )
        };
        let mut h = Harness::timed(&steps("0ms"), 0);
        assert!(h.orders(&[("a", 1, 1), ("c", 1, 1)]).is_empty());
        let mut longer = test_job(&steps("20ms"), "json");
        longer.spec.event_time = h.job.spec.event_time.clone();
        h.restart(Some(longer));
        // The windows of a and c close at 12 and fire. Under the new lateness a record of c at
        // 2 still counts, with the one before.
        assert_eq!(h.orders(&[("b", 12, 1)]).len(), 2, "{window}");
        let late = h.orders(&[("c", 2, 1)]);
        assert_eq!(late.len(), 1, "{window}: within the new lateness");
        assert!(late[0].starts_with(r#"c={"n":2,"#), "{window}: {late:?}");
        // a has no more records: its state goes when the watermark passes its end plus 20.
        assert_eq!(
            h.orders(&[("b", 60, 1)]).len(),
            1,
            "{window}: b's first window"
        );
        let kept = h.entries(&[0, DATA]) + h.entries(&[0, SESSIONS]);
        assert_eq!(kept, 1, "{window}: only b's window at 60 is left");
        assert_eq!(h.entries(&[0, TIMERS]), 2, "{window}: b's fire and purge");
    }
}

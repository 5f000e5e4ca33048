//! The steps' spec side: whether this build can run a job's steps, decided without running
//! anything, by the operator (validation, `SpecValid`) and by the worker before it starts
//! (the same answer, from the same code). Every expression of every step is compiled as the
//! worker's pipeline compiles it (same step, field and variables). Any step may follow any
//! step; a step after a record-making step (`materialize`, `aggregate`) reads that step's
//! records, which have a key, a value and a timestamp only, and an expression reading more is
//! refused here, naming both steps. Pure.

use sluice_crds::v1alpha1::{AggregateFunction, Format, Step};

use crate::expr::{self, Expr, Site, Var};
use crate::job::{Job, JobError};

/// The expressions of `step`, each with the field it is under (`filter.expr`, …).
pub fn expressions(step: &Step) -> Vec<(&'static str, &str)> {
    let mut found = Vec::new();
    if let Some(filter) = &step.filter {
        found.push(("filter.expr", filter.expr.as_str()));
    }
    if let Some(map) = &step.map {
        found.extend(map.key.as_deref().map(|k| ("map.key", k)));
        found.extend(map.value.as_deref().map(|v| ("map.value", v)));
    }
    if let Some(materialize) = &step.materialize {
        found.extend(materialize.key.as_deref().map(|k| ("materialize.key", k)));
    }
    if let Some(dedupe) = &step.dedupe {
        found.push(("dedupe.key", dedupe.key.as_str()));
    }
    if let Some(aggregate) = &step.aggregate {
        found.push(("aggregate.groupBy", aggregate.group_by.as_str()));
        for a in &aggregate.aggregations {
            if a.function != AggregateFunction::Count
                && let Some(e) = a.expr.as_deref()
            {
                found.push(("aggregate.aggregations.expr", e));
            }
        }
    }
    found
}

/// What a record made by a step (a table's change, an aggregate's result) has: its key, its
/// value (the row or the result, JSON unless the input is `raw`) and `timestamp`, its event
/// time. It has no partition, offset or headers of its own, and no Debezium fields.
const MADE_RECORD_VARS: [Var; 3] = [Var::Key, Var::Value, Var::Timestamp];

/// Refuses an expression after a record-making step that reads what its records lack.
fn made_record_vars(
    job: &Job,
    step: &Step,
    maker: &Step,
    field: &str,
    compiled: &Expr,
) -> Result<(), JobError> {
    let lacking: Vec<&str> = Var::ALL
        .into_iter()
        .filter(|v| compiled.uses().has(*v) && !MADE_RECORD_VARS.contains(v))
        .map(Var::name)
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    let kind = if maker.materialize.is_some() {
        "materialize"
    } else {
        "aggregate"
    };
    Err(JobError::Unsupported {
        job: job.id(),
        message: format!(
            "step {:?}: {field} reads {}, which the records made by step {:?} ({kind}) do not \
             have; they have key, value and timestamp (their event time)",
            step.name,
            lacking.join(", "),
            maker.name
        ),
    })
}

/// Whether this build runs `job`'s steps: every expression compiles, and each step reads only
/// what the records it gets have. Any step may follow any step.
pub fn check(job: &Job) -> Result<(), JobError> {
    let env = expr::env();
    let debezium = job.spec.source.kafka.format == Format::DebeziumJson;
    // The step that made the records the current step reads, if any did.
    let mut maker: Option<&Step> = None;
    let mut table: Option<&Step> = None;
    for (index, step) in job.spec.steps.iter().enumerate() {
        if job.spec.steps[..index].iter().any(|s| s.name == step.name) {
            return Err(JobError::Unsupported {
                job: job.id(),
                message: format!(
                    "two steps are named {:?}; a step's name is its state's, so names are unique",
                    step.name
                ),
            });
        }
        if let Some(table) = table
            && (step.aggregate.is_some() || step.dedupe.is_some())
        {
            return Err(JobError::Unsupported {
                job: job.id(),
                message: format!(
                    "step {:?} ({}) follows materialize step {:?}: aggregating or deduplicating a \
                     table's changes needs retractions of the rows they replace, which this \
                     build does not have; put it before the materialize step",
                    step.name,
                    if step.aggregate.is_some() {
                        "aggregate"
                    } else {
                        "dedupe"
                    },
                    table.name
                ),
            });
        }
        if step.materialize.is_some() {
            table = Some(step);
        }
        let unsupported = |message: &str| JobError::Unsupported {
            job: job.id(),
            message: format!("step {:?} {message}", step.name),
        };
        if let Some(window) = step.aggregate.as_ref().and_then(|a| a.window.as_ref())
            && window.tumbling.is_none()
            && window.hopping.is_none()
            && window.session.is_none()
        {
            return Err(unsupported("has a window of no kind"));
        }
        let kinds = [
            step.filter.is_some(),
            step.map.is_some(),
            step.materialize.is_some(),
            step.dedupe.is_some(),
            step.aggregate.is_some(),
        ];
        if !kinds.contains(&true) {
            return Err(unsupported("sets no step kind"));
        }
        for (field, source) in expressions(step) {
            let site = Site {
                step: &step.name,
                field,
                debezium,
            };
            let compiled = Expr::compile(&env, source, site).map_err(|e| JobError::Expression {
                job: job.id(),
                error: Box::new(e),
            })?;
            if let Some(maker) = maker {
                made_record_vars(job, step, maker, field, &compiled)?;
            }
        }
        if step.materialize.is_some() || step.aggregate.is_some() {
            maker = Some(step);
        }
    }
    let timed = job
        .spec
        .steps
        .iter()
        .any(|s| s.dedupe.is_some() || s.aggregate.is_some());
    if timed
        && let Some(field) = job
            .spec
            .event_time
            .as_ref()
            .and_then(|e| e.field.as_deref())
    {
        let site = Site {
            step: "eventTime",
            field: "eventTime.field",
            debezium,
        };
        Expr::compile(&env, &format!("value.{field}"), site).map_err(|e| JobError::Expression {
            job: job.id(),
            error: Box::new(e),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::test_job;

    #[test]
    fn every_expression_is_compiled_and_steps_after_record_making_steps_read_what_their_records_have()
     {
        let ok = test_job(
            "[{name: f, filter: {expr: 'value.n > 1'}}, {name: t, materialize: {key: 'value.id'}}]",
            "json",
        );
        assert!(check(&ok).is_ok());
        let bad = test_job("[{name: f, filter: {expr: 'valu.n > 1'}}]", "json");
        match check(&bad) {
            Err(JobError::Expression { error, .. }) => {
                assert_eq!(
                    (error.step.as_str(), error.field.as_str()),
                    ("f", "filter.expr")
                );
            }
            other => panic!("an unknown variable is refused: {other:?}"),
        }
        let after = test_job(
            "[{name: c, aggregate: {groupBy: key, aggregations: [{name: n, function: count}], emit: on-update}}, \
              {name: f, filter: {expr: 'value.n > 1 && key != \"\"'}}, \
              {name: t, materialize: {}}, \
              {name: m, map: {value: \"{'n': value.n, 'at': timestamp}\"}}]",
            "json",
        );
        assert!(check(&after).is_ok(), "any step may follow any step");
        let offset = test_job(
            "[{name: c, aggregate: {groupBy: key, aggregations: [{name: n, function: count}], emit: on-update}}, \
              {name: m, map: {value: 'offset'}}]",
            "json",
        );
        match check(&offset) {
            Err(JobError::Unsupported { message, .. }) => assert!(
                message.contains("step \"m\": map.value reads offset, which the records made by step \"c\" (aggregate) do not have"),
                "{message}"
            ),
            other => panic!("a result has no offset: {other:?}"),
        }
        let retract = test_job(
            "[{name: t, materialize: {}}, {name: f, filter: {expr: 'true'}}, \
              {name: c, aggregate: {groupBy: key, aggregations: [{name: n, function: count}], emit: on-update}}]",
            "json",
        );
        assert!(
            matches!(check(&retract), Err(JobError::Unsupported { message, .. }) if message.contains("follows materialize step \"t\"")),
        );
        let twice = test_job(
            "[{name: f, filter: {expr: 'true'}}, {name: f, map: {value: 'value'}}]",
            "json",
        );
        assert!(
            matches!(check(&twice), Err(JobError::Unsupported { message, .. }) if message.contains("two steps are named \"f\"")),
        );
        let debezium = test_job(
            "[{name: t, materialize: {}}, {name: f, filter: {expr: \"op == 'c'\"}}]",
            "debezium-json",
        );
        assert!(
            matches!(check(&debezium), Err(JobError::Unsupported { message, .. }) if message.contains("reads op"))
        );
        let fields: Vec<_> = expressions(
            &test_job(
                "[{name: a, aggregate: {groupBy: 'key', aggregations: [{name: n, function: count, expr: 'ignored'}, {name: s, function: sum, expr: 'value.x'}]}}]",
                "json",
            )
            .spec
            .steps[0],
        )
        .into_iter()
        .map(|(field, _)| field)
        .collect();
        assert_eq!(fields, ["aggregate.groupBy", "aggregate.aggregations.expr"]);
    }
}

//! The steps' spec side: whether this build can run a job's steps, decided without running
//! anything, by the operator (validation, `SpecValid`) and by the worker before it starts
//! (the same answer, from the same code). Every expression of every step is compiled as the
//! worker's pipeline compiles it (same step, field and variables), and the placement rules of
//! this build are checked. Pure.

use sluice_crds::v1alpha1::{AggregateFunction, Format, Step};

use crate::expr::{self, Expr, Site};
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

/// Whether this build runs `job`'s steps: every expression compiles, and each step stands
/// where this build can run it.
pub fn check(job: &Job) -> Result<(), JobError> {
    let env = expr::env();
    let debezium = job.spec.source.kafka.format == Format::DebeziumJson;
    let count = job.spec.steps.len();
    for (index, step) in job.spec.steps.iter().enumerate() {
        let unsupported = |message: &str| JobError::Unsupported {
            job: job.id(),
            message: format!("step {:?} {message}", step.name),
        };
        let last = index + 1 == count;
        if step.materialize.is_some() && !last {
            return Err(unsupported(
                "is a materialize step followed by other steps; this worker build runs \
                 materialize only as the last step",
            ));
        }
        if step.aggregate.is_some() && !last {
            return Err(unsupported(
                "is an aggregate step followed by other steps; this worker build runs \
                 aggregate only as the last step",
            ));
        }
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
            Expr::compile(&env, source, site).map_err(|e| JobError::Expression {
                job: job.id(),
                error: Box::new(e),
            })?;
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
    fn every_expression_is_compiled_where_the_pipeline_compiles_it_and_placement_is_checked() {
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
        let early = test_job(
            "[{name: t, materialize: {}}, {name: f, filter: {expr: 'true'}}]",
            "json",
        );
        assert!(
            matches!(check(&early), Err(JobError::Unsupported { message, .. }) if message.contains("only as the last step"))
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

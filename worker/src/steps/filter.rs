//! `filter`: keeps the records its CEL expression is true for. Stateless.
//!
//! The expression must return a bool; anything else, or a failure, is the record's error (it
//! goes to the dead-letter topic). Over a table's changes (after `materialize`) it filters the
//! table, as a KTable's `filter` does: a delete passes without being evaluated, and a change the
//! expression is false for passes as a delete of its key, so a row that stops matching leaves
//! the filtered table (the steps after it must learn that the row is gone).

use cel::Value;
use sluice_crds::v1alpha1::FilterStep;

use super::{Compiled, Compiler, Current, Cx, Operator, Out, Record, StepError};
use crate::expr::Vars;
use crate::job::JobError;
use crate::state::StateBackend;

/// A compiled `filter` step.
pub struct Filter {
    expr: Compiled,
}

impl Filter {
    /// Compiles the step's expression.
    pub fn compile(spec: &FilterStep, c: &Compiler<'_>) -> Result<Self, JobError> {
        Ok(Self {
            expr: c.expr("filter.expr", &spec.expr)?,
        })
    }

    /// What its expression reads.
    pub fn reads(&self) -> Vars {
        self.expr.uses()
    }
}

impl Operator for Filter {
    #[inline]
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        if record.is_delete() {
            return out.push(record, cx);
        }
        let vars = record.vars(cx.uses)?;
        match self.expr.eval(vars)? {
            Value::Bool(true) => out.push(record, cx),
            Value::Bool(false) if record.changelog => {
                record.value = Current::Raw(None);
                out.push(record, cx)
            }
            Value::Bool(false) => Ok(()),
            other => Err(self.expr.wrong_type("bool", &other).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::testing::{Harness, outcome};

    #[test]
    fn keeps_what_is_true_and_refuses_what_is_not_a_bool() {
        let mut h = Harness::new(
            "[{name: big, filter: {expr: 'value.amount > 100'}}]",
            "json",
        );
        assert_eq!(
            outcome(&mut h, br#"{"amount":150}"#),
            Ok(vec![r#"k={"amount":150}"#.to_string()])
        );
        assert_eq!(outcome(&mut h, br#"{"amount":50}"#), Ok(vec![]));
        let mut h = Harness::new("[{name: odd, filter: {expr: 'value.amount'}}]", "json");
        assert_eq!(
            outcome(&mut h, br#"{"amount":1}"#),
            Err(("cel-type-error".to_string(), "odd".to_string()))
        );
    }

    #[test]
    fn over_a_table_a_delete_passes_and_a_row_that_stops_matching_is_deleted() {
        let mut h = Harness::new(
            "[{name: t, materialize: {}}, {name: big, filter: {expr: 'value.amount > 100'}}]",
            "json",
        );
        assert_eq!(
            h.feed("a", Some(br#"{"amount":150}"#)),
            vec![r#"a={"amount":150}"#.to_string()]
        );
        assert_eq!(h.feed("a", Some(br#"{"amount":5}"#)), ["a=(tombstone)"]);
        assert_eq!(h.feed("a", None), ["a=(tombstone)"]);
    }
}

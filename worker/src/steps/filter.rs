//! `filter`: keeps the records its CEL expression is true for. Stateless.
//!
//! The expression must return a bool; anything else, or a failure, is the record's error (it
//! goes to the dead-letter topic). A table's delete (a changelog record without a value, after
//! `materialize`) passes without being evaluated, as a KTable's `filter` forwards deletes: the
//! steps after it must learn that the row is gone.

use cel::Value;
use sluice_crds::v1alpha1::FilterStep;

use super::{Compiled, Compiler, Cx, Operator, Out, Record, StepError};
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
    fn a_tables_delete_passes_unevaluated() {
        let mut h = Harness::new(
            "[{name: t, materialize: {}}, {name: big, filter: {expr: 'value.amount > 100'}}]",
            "json",
        );
        assert_eq!(
            h.feed("a", Some(br#"{"amount":150}"#)),
            vec![r#"a={"amount":150}"#.to_string()]
        );
        assert_eq!(h.feed("a", Some(br#"{"amount":5}"#)), Vec::<String>::new());
        assert_eq!(h.feed("a", None), vec!["a=(tombstone)".to_string()]);
    }
}

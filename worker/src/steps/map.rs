//! `map`: replaces the record's key and/or value with CEL expressions. Stateless.
//!
//! Both expressions read the record as it came into the step. A computed value is written to
//! the sink in `spec.sink.kafka.format`; a computed `null` is absent (a `null` value is a
//! tombstone). A table's delete (after `materialize`) passes unchanged, as a KTable's
//! `mapValues` forwards deletes.

use sluice_crds::v1alpha1::MapStep;

use super::record::set_var;
use super::{Compiled, Compiler, Current, Cx, Operator, Out, Record, StepError, reads};
use crate::expr::{Var, Vars};
use crate::job::JobError;
use crate::state::StateBackend;

/// A compiled `map` step.
pub struct Map {
    key: Option<Compiled>,
    value: Option<Compiled>,
}

impl Map {
    /// Compiles the step's expressions.
    pub fn compile(spec: &MapStep, c: &Compiler<'_>) -> Result<Self, JobError> {
        Ok(Self {
            key: c.optional("map.key", spec.key.as_deref())?,
            value: c.optional("map.value", spec.value.as_deref())?,
        })
    }

    /// What its expressions read.
    pub fn reads(&self) -> Vars {
        reads(self.key.iter().chain(&self.value))
    }
}

impl Operator for Map {
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
        let key = self.key.as_ref().map(|c| c.eval(vars)).transpose()?;
        let value = self.value.as_ref().map(|c| c.eval(vars)).transpose()?;
        if let Some(k) = &key {
            set_var(vars, Var::Key, k)?;
        }
        if let Some(v) = &value {
            set_var(vars, Var::Value, v)?;
        }
        if let Some(k) = key {
            record.key = Current::Computed(k);
        }
        if let Some(v) = value {
            record.value = Current::Computed(v);
        }
        out.push(record, cx)
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::testing::{Harness, outcome};

    #[test]
    fn filter_then_map_apply_in_order_over_the_decoded_record() {
        let mut h = Harness::new(
            "[{name: big, filter: {expr: 'value.amount > 100'}}, \
              {name: reshape, map: {key: 'value.customer', value: \"{'c': value.customer, 'twice': value.amount * 2}\"}}, \
              {name: again, filter: {expr: 'value.twice < 1000 && key == \"alice\"'}}]",
            "json",
        );
        assert_eq!(
            outcome(&mut h, br#"{"customer":"alice","amount":150}"#),
            Ok(vec![r#"alice={"c":"alice","twice":300}"#.to_string()])
        );
        assert_eq!(
            outcome(&mut h, br#"{"customer":"alice","amount":50}"#),
            Ok(vec![])
        );
        assert_eq!(
            outcome(&mut h, br#"{"customer":"bob","amount":150}"#),
            Ok(vec![])
        );
        assert_eq!(
            outcome(&mut h, br#"{"customer":"alice","amount":600}"#),
            Ok(vec![])
        );
    }

    #[test]
    fn a_failing_expression_names_its_kind_and_step() {
        let mut h = Harness::new(
            "[{name: big, filter: {expr: 'value.amount > 100'}}, \
              {name: ratio, map: {value: 'value.amount / value.count'}}]",
            "json",
        );
        let e = |kind: &str, step: &str| Err((kind.to_string(), step.to_string()));
        assert_eq!(
            outcome(&mut h, br#"{"amount":200,"count":0}"#),
            e("cel-division-by-zero", "ratio")
        );
        assert_eq!(
            outcome(&mut h, br#"{"amount":200,"count":8}"#),
            Ok(vec!["k=25".to_string()])
        );
    }
}

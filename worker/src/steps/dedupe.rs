//! `dedupe`: drops records whose CEL key was seen within `ttl` of event time. State: one entry
//! per key, `[id, DATA, 0, key] → expiry`, and a purge timer at the expiry, so keys are
//! forgotten once the watermark passes it.
//!
//! A record is a repeat when its event time is before the expiry of its key's last kept
//! record; a kept record sets the expiry to its event time + `ttl`. A repeat is dropped
//! without a trace (it is what the step is for); everything else passes unchanged.

use sluice_crds::v1alpha1::DedupeStep;

use super::namespace::{self, PURGE};
use super::{
    Compiled, Compiler, Cx, Namespace, Operator, Out, Record, RecordError, StepError, millis,
};
use crate::expr::{self, Vars};
use crate::job::JobError;
use crate::state::StateBackend;

/// A compiled `dedupe` step.
pub struct Dedupe {
    key: Compiled,
    ttl: i64,
    ns: Namespace,
    id: Vec<u8>,
    buf: Vec<u8>,
    due: Vec<Vec<u8>>,
}

impl Dedupe {
    /// Compiles the step (at `position`).
    pub fn compile(spec: &DedupeStep, position: usize, c: &Compiler<'_>) -> Result<Self, JobError> {
        Ok(Self {
            key: c.expr("dedupe.key", &spec.key)?,
            ttl: millis(spec.ttl.into()),
            ns: Namespace::new(position),
            id: Vec::with_capacity(64),
            buf: Vec::with_capacity(96),
            due: Vec::new(),
        })
    }

    /// What its expression reads.
    pub fn reads(&self) -> Vars {
        self.key.uses()
    }
}

impl Operator for Dedupe {
    #[inline]
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let vars = record.vars(cx.uses)?;
        let id = self.key.eval(vars)?;
        expr::write_bytes(&id, &mut self.id).map_err(|e| RecordError::Encode(e.to_string()))?;
        self.ns.data_key(&mut self.buf, 0, &self.id);
        if let Some(seen) = cx.state.get(&self.buf)? {
            let expires = namespace::time_from_key(&seen).unwrap_or(i64::MIN);
            if record.event_ms < expires {
                return Ok(());
            }
        }
        let expires = record.event_ms.saturating_add(self.ttl);
        cx.state.put(&self.buf, &namespace::time_key(expires))?;
        self.ns
            .set_timer(cx.state, &mut self.buf, (expires, PURGE, 0), &self.id)?;
        out.push(record, cx)
    }

    fn on_watermark<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        _out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        loop {
            self.ns.take_due(cx.state, cx.watermark, &mut self.due)?;
            if self.due.is_empty() {
                return Ok(());
            }
            for timer in &self.due {
                let Some((at, _, _, key)) = namespace::parse_timer(timer) else {
                    continue;
                };
                self.ns.data_key(&mut self.buf, 0, key);
                let expired = cx
                    .state
                    .get(&self.buf)?
                    .and_then(|v| namespace::time_from_key(&v))
                    .is_some_and(|expires| expires <= at);
                if expired {
                    cx.state.delete(&self.buf)?;
                }
            }
        }
    }

    fn namespace(&mut self) -> Option<&mut Namespace> {
        Some(&mut self.ns)
    }
}

#[cfg(test)]
mod tests {
    use crate::steps::namespace::DATA;
    use crate::steps::testing::Harness;

    #[test]
    fn drops_repeats_within_the_ttl_by_event_time_and_forgets_expired_keys() {
        let mut h = Harness::timed(
            "[{name: once, dedupe: {key: 'value.amount', ttl: 10ms}}]",
            0,
        );
        let seen = h.orders(&[
            ("a", 0, 1),
            ("b", 5, 1),
            ("c", 9, 2),
            ("d", 10, 1),
            ("e", 12, 2),
            ("f", 30, 2),
        ]);
        let keys: Vec<&str> = seen.iter().map(|s| &s[..1]).collect();
        assert_eq!(keys, vec!["a", "c", "d", "f"]);
        assert_eq!(h.entries(&[0, DATA]), 1, "expired keys are removed");
    }
}

//! `aggregate`: groups records by a CEL key and computes count, sum, min, max, avg, first and
//! last per group, over all time or over event-time windows ([`window`]: tumbling, hopping,
//! session), with Flink's semantics. State: `[id, DATA, start, group] → accumulator` for fixed
//! windows (`start` 0 without a window), `[id, SESSIONS, group] → sessions`, and per window a
//! fire timer (emitting on close) at `end − 1` and a purge timer at `end − 1 + allowedLateness`.
//!
//! A window `[start, end)` fires once this step's watermark reaches `end − 1`, and keeps its
//! state until it reaches `end − 1 + allowedLateness`; updates in between fire it again. A
//! record whose every window is purged is late: dead-lettered or dropped and counted
//! (`lateRecords`). Each result is a record of its own for the steps after this one: key = the
//! group, value = one JSON field per aggregation (and `window_start`, `window_end`), event time
//! = the window's end − 1, or for an unwindowed aggregate the event time of the record that
//! updated it.

pub mod window;

use serde_json::Value as Json;
use sluice_crds::v1alpha1::{AggregateFunction, AggregateStep, Emit, Format, LateRecords};

use super::namespace::{self, FIRE, PURGE};
use super::{
    Compiled, Compiler, Cx, Namespace, Operator, Out, Record, RecordError, StepError, millis, reads,
};
use crate::expr::{self, Vars};
use crate::job::JobError;
use crate::state::StateBackend;
use window::{Acc, Session, Shape};

/// A compiled `aggregate` step.
pub struct Aggregate {
    group_by: Compiled,
    names: Vec<String>,
    functions: Vec<AggregateFunction>,
    inputs: Vec<Option<Compiled>>,
    shape: Shape,
    lateness: i64,
    late: LateRecords,
    emit: Emit,
    ns: Namespace,
    /// Scratch: state keys, the group, the result, window starts, due timers.
    buf: Vec<u8>,
    group: Vec<u8>,
    result: Vec<u8>,
    starts: Vec<i64>,
    due: Vec<Vec<u8>>,
}

impl Aggregate {
    /// Compiles the step (at `position`).
    pub fn compile(
        spec: &AggregateStep,
        position: usize,
        c: &Compiler<'_>,
    ) -> Result<Self, JobError> {
        let shape = match &spec.window {
            None => Shape::Global,
            Some(w) => match (&w.tumbling, &w.hopping, &w.session) {
                (Some(t), _, _) => Shape::Tumbling {
                    size: millis(t.size.into()).max(1),
                },
                (_, Some(h), _) => Shape::Hopping {
                    size: millis(h.size.into()).max(1),
                    advance: millis(h.advance.into()).max(1),
                },
                (_, _, Some(s)) => Shape::Session {
                    gap: millis(s.gap.into()).max(1),
                },
                _ => return Err(c.unsupported("has a window of no kind")),
            },
        };
        let mut inputs = Vec::new();
        for a in &spec.aggregations {
            let expr = a
                .expr
                .as_deref()
                .filter(|_| a.function != AggregateFunction::Count);
            inputs.push(c.optional("aggregate.aggregations.expr", expr)?);
        }
        Ok(Self {
            group_by: c.expr("aggregate.groupBy", &spec.group_by)?,
            names: spec.aggregations.iter().map(|a| a.name.clone()).collect(),
            functions: spec.aggregations.iter().map(|a| a.function).collect(),
            inputs,
            shape,
            lateness: spec.allowed_lateness.map_or(0, |d| millis(d.into())),
            late: spec.late_records,
            emit: if spec.window.is_none() {
                Emit::OnUpdate
            } else {
                spec.emit
            },
            ns: Namespace::new(position),
            buf: Vec::with_capacity(96),
            group: Vec::with_capacity(64),
            result: Vec::with_capacity(256),
            starts: Vec::new(),
            due: Vec::new(),
        })
    }

    /// What its expressions read.
    pub fn reads(&self) -> Vars {
        reads(self.inputs.iter().flatten()).with(self.group_by.uses())
    }

    /// The timers of a window ending at `end`: fire (when emitting on close) and purge.
    fn timers(&self, start: i64, end: i64) -> impl Iterator<Item = (i64, u8, i64)> + use<> {
        let fire = (self.emit == Emit::OnClose).then_some((end - 1, FIRE, start));
        fire.into_iter()
            .chain(std::iter::once((end - 1 + self.lateness, PURGE, start)))
    }

    /// The timers a window ending at `end` needs now: no fire timer when this step's watermark
    /// already passed `end − 1` (the window fires at once instead, and only then).
    fn new_timers(
        &self,
        start: i64,
        end: i64,
        watermark: i64,
    ) -> impl Iterator<Item = (i64, u8, i64)> + use<> {
        self.timers(start, end)
            .filter(move |(at, kind, _)| !(*kind == FIRE && *at <= watermark))
    }

    /// Passes the result of the window `[start, end)` on.
    fn emit_result<S: StateBackend>(
        &mut self,
        (start, end): (i64, i64),
        acc: &Acc,
        at: i64,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let mut result = acc.result(&self.names, &self.functions);
        if self.shape != Shape::Global {
            result.insert("window_start".into(), start.into());
            result.insert("window_end".into(), end.into());
        }
        self.result.clear();
        let _ = serde_json::to_writer(&mut self.result, &result);
        let at = if self.shape == Shape::Global {
            at
        } else {
            end - 1
        };
        out.push_made(
            cx,
            (&self.group, Some(&self.result)),
            (Format::Json, false),
            at,
        )
    }

    /// Adds a record to the sessions of its group; false when the session is already purged.
    fn session<S: StateBackend>(
        &mut self,
        gap: i64,
        event_ms: i64,
        acc: Acc,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<bool, StepError> {
        self.ns.sessions_key(&mut self.buf, &self.group);
        let sessions: Vec<Session> = match cx.state.get(&self.buf)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => Vec::new(),
        };
        let (mut start, mut end) = (event_ms, event_ms.saturating_add(gap));
        let (mut merged, mut kept) = (Vec::new(), Vec::with_capacity(sessions.len()));
        for s in sessions {
            if s.start < end && start < s.end {
                start = start.min(s.start);
                end = end.max(s.end);
                merged.push(s);
            } else {
                kept.push(s);
            }
        }
        if end - 1 + self.lateness <= cx.watermark {
            return Ok(false);
        }
        let mut acc = acc;
        for s in &merged {
            acc.merge(&self.functions, &s.acc);
            for timer in self.timers(s.start, s.end) {
                self.ns
                    .delete_timer(cx.state, &mut self.buf, timer, &self.group)?;
            }
        }
        for timer in self.new_timers(start, end, cx.watermark) {
            self.ns
                .set_timer(cx.state, &mut self.buf, timer, &self.group)?;
        }
        let session = Session { start, end, acc };
        if self.emit == Emit::OnUpdate || end - 1 <= cx.watermark {
            self.emit_result((start, end), &session.acc, event_ms, cx, out)?;
        }
        kept.push(session);
        self.ns.sessions_key(&mut self.buf, &self.group);
        cx.state
            .put(&self.buf, &serde_json::to_vec(&kept).unwrap_or_default())?;
        Ok(true)
    }

    /// Adds a record to its group's fixed windows; false when every one is already purged.
    fn fixed<S: StateBackend>(
        &mut self,
        event_ms: i64,
        inputs: &[Json],
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<bool, StepError> {
        let mut starts = std::mem::take(&mut self.starts);
        self.shape.starts(event_ms, &mut starts);
        let mut updated = false;
        for &start in starts.iter().rev() {
            let end = self.shape.end(start);
            let windowed = self.shape != Shape::Global;
            if windowed && end - 1 + self.lateness <= cx.watermark {
                continue;
            }
            self.ns.data_key(&mut self.buf, start, &self.group);
            let mut acc = match cx.state.get(&self.buf)? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Acc::new(self.functions.len())),
                None => {
                    if windowed {
                        for timer in self.new_timers(start, end, cx.watermark) {
                            self.ns
                                .set_timer(cx.state, &mut self.buf, timer, &self.group)?;
                        }
                        self.ns.data_key(&mut self.buf, start, &self.group);
                    }
                    Acc::new(self.functions.len())
                }
            };
            acc.add(&self.functions, inputs, event_ms)
                .map_err(|e| RecordError::Aggregate(e.to_string()))?;
            cx.state
                .put(&self.buf, &serde_json::to_vec(&acc).unwrap_or_default())?;
            updated = true;
            if self.emit == Emit::OnUpdate || end - 1 <= cx.watermark {
                self.emit_result((start, end), &acc, event_ms, cx, out)?;
            }
        }
        self.starts = starts;
        Ok(updated)
    }

    /// A purge timer at `at` for the window `[start, end)` of the current group, due earlier
    /// than this step's lateness says: set before a session grew (its later purge timer is
    /// set too), or under a shorter `allowedLateness` before an edit kept the state. The
    /// window is purged at the lateness of now (setting a timer again is idempotent).
    fn repurge<S: StateBackend>(
        &mut self,
        (at, start, end): (i64, i64, i64),
        cx: &mut Cx<'_, S>,
    ) -> Result<(), StepError> {
        let due = end - 1 + self.lateness;
        debug_assert!(at < due);
        self.ns
            .set_timer(cx.state, &mut self.buf, (due, PURGE, start), &self.group)?;
        Ok(())
    }

    /// One due timer: pass a closing window's result on, or drop state whose time is up.
    fn fire<S: StateBackend>(
        &mut self,
        timer: &[u8],
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let Some((at, kind, start, group)) = namespace::parse_timer(timer) else {
            return Ok(());
        };
        self.group.clear();
        self.group.extend_from_slice(group);
        if let Shape::Session { .. } = self.shape {
            self.ns.sessions_key(&mut self.buf, &self.group);
            let Some(bytes) = cx.state.get(&self.buf)? else {
                return Ok(());
            };
            let mut sessions: Vec<Session> = serde_json::from_slice(&bytes).unwrap_or_default();
            let Some(i) = sessions.iter().position(|s| s.start == start) else {
                return Ok(());
            };
            let end = sessions[i].end;
            if kind == FIRE && end - 1 == at {
                let acc = sessions[i].acc.clone();
                self.emit_result((start, end), &acc, at, cx, out)?;
            } else if kind == PURGE && at < end - 1 + self.lateness {
                self.repurge((at, start, end), cx)?;
            } else if kind == PURGE {
                sessions.remove(i);
                self.ns.sessions_key(&mut self.buf, &self.group);
                if sessions.is_empty() {
                    cx.state.delete(&self.buf)?;
                } else {
                    cx.state.put(
                        &self.buf,
                        &serde_json::to_vec(&sessions).unwrap_or_default(),
                    )?;
                }
            }
            return Ok(());
        }
        if kind == PURGE {
            let end = self.shape.end(start);
            if at < end - 1 + self.lateness {
                return self.repurge((at, start, end), cx);
            }
            self.ns.data_key(&mut self.buf, start, &self.group);
            return Ok(cx.state.delete(&self.buf)?);
        }
        self.ns.data_key(&mut self.buf, start, &self.group);
        let acc = cx
            .state
            .get(&self.buf)?
            .and_then(|bytes| serde_json::from_slice::<Acc>(&bytes).ok());
        if let Some(acc) = acc {
            self.emit_result((start, self.shape.end(start)), &acc, at, cx, out)?;
        }
        Ok(())
    }
}

impl Operator for Aggregate {
    fn process<S: StateBackend>(
        &mut self,
        record: &mut Record<'_>,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        let vars = record.vars(cx.uses)?;
        let group = self.group_by.eval(vars)?;
        expr::write_bytes(&group, &mut self.group)
            .map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut inputs = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            inputs.push(match input {
                Some(c) => {
                    expr::to_json(&c.eval(vars)?).map_err(|e| RecordError::Encode(e.to_string()))?
                }
                None => Json::Null,
            });
        }
        let event_ms = record.event_ms;
        let updated = match self.shape {
            Shape::Session { gap } => {
                let mut acc = Acc::new(self.functions.len());
                acc.add(&self.functions, &inputs, event_ms)
                    .map_err(|e| RecordError::Aggregate(e.to_string()))?;
                self.session(gap, event_ms, acc, cx, out)?
            }
            _ => self.fixed(event_ms, &inputs, cx, out)?,
        };
        if updated {
            return Ok(());
        }
        match self.late {
            LateRecords::Drop => {
                cx.dropped_late();
                Ok(())
            }
            LateRecords::DeadLetter => Err(RecordError::Late {
                event_ms,
                watermark_ms: cx.watermark,
                lateness: if self.lateness > 0 {
                    format!(" more than {} ms ago", self.lateness)
                } else {
                    String::new()
                },
            }
            .into()),
        }
    }

    fn on_watermark<S: StateBackend>(
        &mut self,
        cx: &mut Cx<'_, S>,
        out: &mut Out<'_>,
    ) -> Result<(), StepError> {
        loop {
            self.ns.take_due(cx.state, cx.watermark, &mut self.due)?;
            if self.due.is_empty() {
                return Ok(());
            }
            let due = std::mem::take(&mut self.due);
            for timer in &due {
                self.fire(timer, cx, out)?;
            }
            self.due = due;
        }
    }

    fn namespace(&mut self) -> Option<&mut Namespace> {
        Some(&mut self.ns)
    }
}

#[cfg(test)]
mod tests;

//! What an edit of a job does to its state: each stateful step's *state signature*, and the
//! pure compatibility check from the state a checkpoint holds to a new job. The worker runs
//! it on every restore (refusing a checkpoint it cannot honour under the job's policy); the
//! operator runs it on every spec change (refusing to roll one out, and naming it in Events).
//!
//! A stateful step's state belongs to its name (the step's uid, as `uid()` in Flink or a named
//! store in Kafka Streams). Its signature is its kind, exactly the fields that shape its state,
//! and how its input is partitioned:
//!
//! | kind | fields |
//! |---|---|
//! | materialize | `key` |
//! | dedupe | `key` |
//! | aggregate | `groupBy`, `aggregations` (names and functions, in order), `window` (kind and sizes), `emit` |
//! | every one | `partitionedBy` (today always the source partitions: no step re-keys through Kafka yet), `tasks` (the number of input partitions) |
//!
//! Not in it, and so kept across an edit: the aggregations' `expr` (the accumulators have the
//! same shape; results mix old and new expressions from the change on, as in Flink), dedupe's
//! `ttl`, an aggregate's `allowedLateness` and `lateRecords` (each applies to entries written
//! after the change; entries already stored keep the expiry they were given, and windows kept
//! from before are purged at the lateness of now), `spec.eventTime` (which field or Kafka
//! timestamp gives event time, and the out-of-orderness: as in Flink, a new watermark strategy
//! keeps the state; windows already open close on the new clock), and everything
//! outside the stateful steps: filter and map steps (adding, editing, reordering), the input
//! format, the sink, properties, the dead-letter topic, resources. A `map` that changes the key
//! before a stateful step changes what that step's new entries are keyed by, not its
//! signature: keyed state under the same name is kept, as Flink keeps it.
//!
//! Verdicts per step: `keep` (same name, same signature), `new` (no state yet), `reset` (same
//! name, changed signature: it starts empty), `drop` (the step is gone: its state is deleted).
//! `reset` and `drop` need the job's consent (`spec.upgrade.stateChanges: reset`).
//!
//! Checkpoints written before signatures existed carry only a fingerprint of the steps and
//! format. Their state is read as one generation: the same fingerprint keeps every step; any
//! other is a reset of all of it (every stateful step starts empty and the rest of the old
//! state is deleted), since which old entries belong to which step cannot be told. The way to
//! edit such a job without losing state is to run this build on the unchanged spec until each
//! task has checkpointed once (its checkpoints then carry signatures), then edit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sluice_crds::v1alpha1::{AggregateFunction, Emit, StateChanges, Step, StreamJobSpec};

/// A stateful step's state signature, as a checkpoint descriptor records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// The step's name: whose state it is.
    pub name: String,
    /// The step kind (`materialize`, `dedupe`, `aggregate`).
    pub kind: String,
    /// The fields that shape the state, each in a canonical text form.
    pub signature: BTreeMap<String, String>,
}

/// The stateful steps of `spec` and their signatures, in step order, for a job of `tasks`
/// tasks (input partitions).
pub fn signatures(spec: &StreamJobSpec, tasks: u32) -> Vec<StepState> {
    spec.steps
        .iter()
        .filter_map(|step| {
            let (kind, mut signature) = shape(step)?;
            signature.insert("partitionedBy".into(), "source partitions".into());
            signature.insert("tasks".into(), tasks.to_string());
            Some(StepState {
                name: step.name.clone(),
                kind: kind.into(),
                signature,
            })
        })
        .collect()
}

/// A step's kind and the fields that shape its state; None for a stateless step.
fn shape(step: &Step) -> Option<(&'static str, BTreeMap<String, String>)> {
    let mut fields = BTreeMap::new();
    let record_key = || "the record key".to_string();
    if let Some(m) = &step.materialize {
        fields.insert("key".into(), m.key.clone().unwrap_or_else(record_key));
        return Some(("materialize", fields));
    }
    if let Some(d) = &step.dedupe {
        fields.insert("key".into(), d.key.clone());
        return Some(("dedupe", fields));
    }
    let a = step.aggregate.as_ref()?;
    fields.insert("groupBy".into(), a.group_by.clone());
    let aggregations = a
        .aggregations
        .iter()
        .map(|g| format!("{}: {}", g.name, function(g.function)))
        .collect::<Vec<_>>()
        .join(", ");
    fields.insert("aggregations".into(), aggregations);
    let window = a.window.as_ref().map_or("none".to_string(), |w| {
        if let Some(t) = &w.tumbling {
            format!("tumbling {}", t.size)
        } else if let Some(h) = &w.hopping {
            format!("hopping {} every {}", h.size, h.advance)
        } else if let Some(s) = &w.session {
            format!("session gap {}", s.gap)
        } else {
            "none".to_string()
        }
    });
    fields.insert("window".into(), window);
    let emit = match a.emit {
        Emit::OnClose => "on-close",
        Emit::OnUpdate => "on-update",
    };
    fields.insert("emit".into(), emit.into());
    Some(("aggregate", fields))
}

fn function(f: AggregateFunction) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{f:?}"))
}

/// The state a checkpoint holds, as the check reads it.
#[derive(Clone, Copy, Debug)]
pub enum Old<'a> {
    /// Per stateful step, its signature.
    Signed(&'a [StepState]),
    /// Written before signatures: only the fingerprint of the steps and format.
    Fingerprint(&'a str),
}

impl<'a> Old<'a> {
    /// The state a checkpoint descriptor records: its signatures, or its fingerprint when it
    /// was written before signatures.
    pub fn of(descriptor: &'a crate::checkpoint::descriptor::Descriptor) -> Self {
        match &descriptor.state_signatures {
            Some(signatures) => Old::Signed(signatures),
            None => Old::Fingerprint(&descriptor.pipeline_fingerprint),
        }
    }
}

/// What happens to one step's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Same name, same signature: the state is kept.
    Keep,
    /// The step has no state yet.
    New,
    /// Same name, changed signature: the step starts empty.
    Reset,
    /// The step is gone: its state is deleted.
    Drop,
}

impl Verdict {
    /// As written in status and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::New => "new",
            Verdict::Reset => "reset",
            Verdict::Drop => "drop",
        }
    }
}

/// One field of a signature that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// The field (`window`, `key`, `kind`, …).
    pub field: String,
    /// Its old value; None when the old signature lacked it.
    pub from: Option<String>,
    /// Its new value; None when the new one lacks it.
    pub to: Option<String>,
}

impl std::fmt::Display for FieldChange {
    /// `window: tumbling 60s → tumbling 120s`, `unset` for a missing side.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} → {}",
            self.field,
            self.from.as_deref().unwrap_or("unset"),
            self.to.as_deref().unwrap_or("unset")
        )
    }
}

/// One step's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepVerdict {
    /// The step's name.
    pub name: String,
    /// Its kind (the new one; the old one for a dropped step).
    pub kind: String,
    /// What happens to its state.
    pub verdict: Verdict,
    /// For `reset`, what changed.
    pub changes: Vec<FieldChange>,
}

/// The verdicts for a new job against the state of a checkpoint: the new job's stateful steps
/// in step order, then the dropped ones.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Plan {
    /// Per step.
    pub steps: Vec<StepVerdict>,
    /// The old state was written before signatures by other steps or format (the old and the
    /// new fingerprint): all of it is reset.
    pub whole_state: Option<(String, String)>,
}

/// The compatibility check: what `new` (the new job's signatures, and its fingerprint for
/// checkpoints written before signatures) does to the state `old`.
pub fn check(old: Old<'_>, new: &[StepState], new_fingerprint: &str) -> Plan {
    match old {
        Old::Fingerprint(found) => {
            let same = found == new_fingerprint;
            Plan {
                steps: new
                    .iter()
                    .map(|s| StepVerdict {
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        verdict: if same { Verdict::Keep } else { Verdict::Reset },
                        changes: Vec::new(),
                    })
                    .collect(),
                whole_state: (!same).then(|| (found.to_string(), new_fingerprint.to_string())),
            }
        }
        Old::Signed(old) => {
            let mut steps: Vec<StepVerdict> = new
                .iter()
                .map(|s| {
                    let Some(before) = old.iter().find(|o| o.name == s.name) else {
                        return StepVerdict {
                            name: s.name.clone(),
                            kind: s.kind.clone(),
                            verdict: Verdict::New,
                            changes: Vec::new(),
                        };
                    };
                    let changes = differences(before, s);
                    StepVerdict {
                        name: s.name.clone(),
                        kind: s.kind.clone(),
                        verdict: if changes.is_empty() {
                            Verdict::Keep
                        } else {
                            Verdict::Reset
                        },
                        changes,
                    }
                })
                .collect();
            steps.extend(
                old.iter()
                    .filter(|o| !new.iter().any(|s| s.name == o.name))
                    .map(|o| StepVerdict {
                        name: o.name.clone(),
                        kind: o.kind.clone(),
                        verdict: Verdict::Drop,
                        changes: Vec::new(),
                    }),
            );
            Plan {
                steps,
                whole_state: None,
            }
        }
    }
}

fn differences(old: &StepState, new: &StepState) -> Vec<FieldChange> {
    if old.kind != new.kind {
        return vec![FieldChange {
            field: "kind".into(),
            from: Some(old.kind.clone()),
            to: Some(new.kind.clone()),
        }];
    }
    let fields: std::collections::BTreeSet<&String> =
        old.signature.keys().chain(new.signature.keys()).collect();
    fields
        .into_iter()
        .filter_map(|f| {
            let (from, to) = (old.signature.get(f), new.signature.get(f));
            (from != to).then(|| FieldChange {
                field: f.clone(),
                from: from.cloned(),
                to: to.cloned(),
            })
        })
        .collect()
}

/// The compatibility check over every task's checkpoint (None: a task without one, whose
/// steps all start new): the plan of the first task whose state the change would lose, else
/// the first task's, so that a refusal names what some task would lose. Tasks differ when
/// some have checkpointed since an edit and others not yet.
pub fn check_all<'a>(
    olds: impl IntoIterator<Item = Option<Old<'a>>>,
    new: &[StepState],
    new_fingerprint: &str,
) -> Plan {
    let mut first = None;
    for old in olds {
        let plan = check(old.unwrap_or(Old::Signed(&[])), new, new_fingerprint);
        if plan.loses_state() {
            return plan;
        }
        first.get_or_insert(plan);
    }
    first.unwrap_or_else(|| check(Old::Signed(&[]), new, new_fingerprint))
}

impl Plan {
    /// True when the plan resets or drops state: it needs `stateChanges: reset`.
    pub fn loses_state(&self) -> bool {
        self.whole_state.is_some()
            || self
                .steps
                .iter()
                .any(|s| matches!(s.verdict, Verdict::Reset | Verdict::Drop))
    }

    /// Whether the policy lets this plan run.
    pub fn allowed(&self, policy: StateChanges) -> bool {
        policy == StateChanges::Reset || !self.loses_state()
    }

    /// The steps with `verdict`.
    pub fn with(&self, verdict: Verdict) -> impl Iterator<Item = &StepVerdict> {
        self.steps.iter().filter(move |s| s.verdict == verdict)
    }

    /// One line for Events and logs: "keeps all state", or what it resets and drops, e.g.
    /// "resets aggregate `per-minute` (window: tumbling 60s → tumbling 120s); keeps dedupe
    /// `once`".
    pub fn summary(&self) -> String {
        if let Some((found, now)) = &self.whole_state {
            return format!(
                "resets all state: the checkpoint was written before per-step state signatures, \
                 by other steps or format (fingerprint {found}, now {now})"
            );
        }
        if !self.loses_state() {
            return "keeps all state".into();
        }
        let mut parts = Vec::new();
        for s in self.with(Verdict::Reset) {
            parts.push(format!("resets {} `{}` ({})", s.kind, s.name, changes(s)));
        }
        for s in self.with(Verdict::Drop) {
            parts.push(format!("drops {} `{}` (removed)", s.kind, s.name));
        }
        let kept: Vec<String> = self
            .with(Verdict::Keep)
            .map(|s| format!("{} `{}`", s.kind, s.name))
            .collect();
        if !kept.is_empty() {
            parts.push(format!("keeps {}", kept.join(", ")));
        }
        parts.join("; ")
    }

    /// Why a change is refused under `refuse`, and the two ways out. `what` names what was
    /// refused, e.g. "generation 4" or "checkpoint 12 of task 3".
    pub fn refusal(&self, what: &str) -> String {
        let mut message = format!(
            "{what} would lose state, which spec.upgrade.stateChanges: refuse does not allow: {}. ",
            self.summary()
        );
        if let Some((from, to)) = self.tasks_only() {
            // Nothing to revert in the spec: the input topics gained partitions.
            let _ = write!(
                message,
                "The input now has {to} partitions where the state was checkpointed across \
                 {from} tasks, so keys move between tasks; partitions cannot be removed from a \
                 topic: set spec.upgrade.stateChanges: reset to start these steps empty across \
                 {to} tasks, or run the job on a topic with {from} partitions"
            );
            return message;
        }
        let _ = write!(
            message,
            "Either revert the change, or set spec.upgrade.stateChanges: reset for it (the \
             steps named start empty, the others keep their state)"
        );
        if self.whole_state.is_some() {
            let _ = write!(
                message,
                "; to keep the state, run this build on the spec the checkpoint was written \
                 with until every task has checkpointed once, then edit"
            );
        }
        message
    }
}

impl Plan {
    /// When the only change is the task count (the input topics' partitions), the old and
    /// the new count.
    fn tasks_only(&self) -> Option<(String, String)> {
        let mut counts = None;
        for step in self.with(Verdict::Reset) {
            let [change] = step.changes.as_slice() else {
                return None;
            };
            if change.field != "tasks" {
                return None;
            }
            counts = Some((
                change.from.clone().unwrap_or_default(),
                change.to.clone().unwrap_or_default(),
            ));
        }
        counts.filter(|_| self.whole_state.is_none() && self.with(Verdict::Drop).next().is_none())
    }
}

fn changes(step: &StepVerdict) -> String {
    step.changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;

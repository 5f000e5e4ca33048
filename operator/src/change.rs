//! What a spec change requires of the running job: pure, no client. Every field of the spec
//! is classified, as the Flink Kubernetes operator classifies its spec: some changes are
//! ignored, some rescale, some restart the workers from their last checkpoint. What a change
//! of `steps` (or of anything else) does to the steps' state is the compatibility check of
//! `sluice_core::upgrade` ([`state_plan`]); [`hold`] decides, from it and
//! `spec.upgrade.stateChanges`, whether the change may be rolled out at all.

use serde_json::Value;
use sluice_core::checkpoint::descriptor::Descriptor;
use sluice_core::job::pipeline_fingerprint;
use sluice_core::upgrade::{self, Plan};
use sluice_crds::v1alpha1::{Approval, StreamJobSpec};

/// What a change to a spec field requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Every worker restarts from its last checkpoint with the new config.
    Restart,
    /// Every worker restarts with the new parallelism; tasks move between workers and are
    /// restored from their checkpoints.
    Rescale,
    /// Workers stop after a final checkpoint (true) or start again from it (false).
    Suspend,
    /// Nothing changes for running workers: volume claims are fixed when the StatefulSet is
    /// created. Resize the PersistentVolumeClaims themselves, or create a new job.
    Ignored,
    /// The operator acts on it alone; the workers go on (`savepoint`: the operator copies the
    /// checkpoints the workers commit anyway; `progressDeadline`: only the status reads it).
    Operator,
}

/// Each top-level spec field and what changing it requires.
pub const FIELDS: &[(&str, Effect)] = &[
    ("parallelism", Effect::Rescale),
    ("image", Effect::Restart),
    ("source", Effect::Restart),
    ("eventTime", Effect::Restart),
    ("steps", Effect::Restart),
    ("sink", Effect::Restart),
    ("deadLetter", Effect::Restart),
    ("checkpoint", Effect::Restart),
    ("state", Effect::Ignored),
    ("suspend", Effect::Suspend),
    ("resources", Effect::Restart),
    ("podTemplate", Effect::Restart),
    ("upgrade", Effect::Restart),
    ("savepoint", Effect::Operator),
    ("progressDeadline", Effect::Operator),
    ("restoreFrom", Effect::Restart),
];

/// What the change from the applied spec to the new one requires, most disruptive first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// No workers were started yet.
    Create,
    /// Nothing that concerns the workers changed.
    None,
    /// `suspend` became true.
    Suspend,
    /// `suspend` became false.
    Resume,
    /// The parallelism changed (other restarting fields may have changed with it).
    Rescale {
        /// Old parallelism.
        from: i32,
        /// New parallelism.
        to: i32,
    },
    /// Fields that need a restart changed.
    Restart {
        /// The fields, as named in the spec.
        fields: Vec<&'static str>,
    },
}

/// A classified change, with the fields whose change has no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classified {
    /// What the workers must do.
    pub change: Change,
    /// Changed fields that are ignored (see [`Effect::Ignored`]).
    pub ignored: Vec<&'static str>,
}

/// Classifies the change from `applied` (what the workers run with, if any) to `new`.
pub fn classify(applied: Option<&StreamJobSpec>, new: &StreamJobSpec) -> Classified {
    let Some(applied) = applied else {
        return Classified {
            change: Change::Create,
            ignored: vec![],
        };
    };
    let (old_value, new_value) = (as_object(applied), as_object(new));
    let changed: Vec<(&'static str, Effect)> = FIELDS
        .iter()
        .copied()
        .filter(|(field, _)| old_value.get(*field) != new_value.get(*field))
        .collect();
    let with = |effect: Effect| -> Vec<&'static str> {
        changed
            .iter()
            .filter(|(_, e)| *e == effect)
            .map(|(f, _)| *f)
            .collect()
    };
    let ignored = with(Effect::Ignored);
    let change = if new.suspend != applied.suspend {
        if new.suspend {
            Change::Suspend
        } else {
            Change::Resume
        }
    } else if new.parallelism != applied.parallelism {
        Change::Rescale {
            from: applied.parallelism,
            to: new.parallelism,
        }
    } else if !with(Effect::Restart).is_empty() {
        Change::Restart {
            fields: with(Effect::Restart),
        }
    } else {
        Change::None
    };
    Classified { change, ignored }
}

/// What the workers' state holds, for the compatibility check of a change.
#[derive(Clone, Copy, Debug)]
pub enum Current<'a> {
    /// Each task's HEAD checkpoint (None: the task has none yet): what a worker restoring
    /// would check, so the operator and the workers agree.
    Heads(&'a [Option<Descriptor>]),
    /// The store could not be read: the spec rolled out last stands for the state.
    Applied(&'a StreamJobSpec),
}

/// Whether a task's HEAD holds state restored from savepoint `id` (its descriptor says so).
pub fn restored_from(head: &Option<Descriptor>, id: &str) -> bool {
    head.as_ref()
        .and_then(|d| d.restored_from.as_deref())
        .is_some_and(|from| from == id)
}

/// The state each task will restore under `spec.restoreFrom: id`: its own HEAD where that
/// came from the savepoint already, else the savepoint's descriptor of it (`saved`, in task
/// order), as its worker will.
pub fn restoring(heads: &mut [Option<Descriptor>], saved: Vec<Option<Descriptor>>, id: &str) {
    for (head, saved) in heads.iter_mut().zip(saved) {
        if !restored_from(head, id) {
            *head = saved;
        }
    }
}

/// What rolling `new` out does to the steps' state, for a job of `tasks` tasks (the input's
/// partitions now): the compatibility check of `sluice_core::upgrade` against each task's
/// HEAD (as each worker will run it on restore), or against the spec rolled out last when the
/// store cannot be read.
pub fn state_plan(current: Current<'_>, new: &StreamJobSpec, tasks: u32) -> Plan {
    let signatures = upgrade::signatures(new, tasks);
    match current {
        Current::Heads(heads) => upgrade::check_all(
            heads.iter().map(|h| h.as_ref().map(upgrade::Old::of)),
            &signatures,
            &pipeline_fingerprint(new),
        ),
        Current::Applied(applied) => upgrade::check(
            upgrade::Old::Signed(&upgrade::signatures(applied, tasks)),
            &signatures,
            "",
        ),
    }
}

/// Why `new` (of `generation`) is not rolled out over the state `plan` says it would lose
/// under its policy `refuse`. None: it may be rolled out.
pub fn hold(plan: &Plan, new: &StreamJobSpec, generation: i64) -> Option<String> {
    let policy = new
        .upgrade
        .as_ref()
        .map(|u| u.state_changes)
        .unwrap_or_default();
    (!plan.allowed(policy)).then(|| {
        format!(
            "{}; the workers keep running the spec rolled out last",
            plan.refusal(&format!("generation {generation}"))
        )
    })
}

/// The annotation that approves generation `N` of a job under `upgrade.approval: manual`.
pub const APPROVE_ANNOTATION: &str = "sluice.dev/approve";

/// Whether rolling `new` (of `generation`) out over `applied` waits for a person:
/// `approval: manual`, an upgrade (a change of steps, source, image or restoreFrom, see
/// [`crate::plan::is_upgrade`]), and `approved` (the annotation's value) does not name the
/// generation. A new job and scaling never wait.
pub fn awaits_approval(
    applied: Option<&StreamJobSpec>,
    new: &StreamJobSpec,
    approved: Option<&str>,
    generation: i64,
) -> bool {
    let manual = new
        .upgrade
        .as_ref()
        .is_some_and(|u| u.approval == Approval::Manual);
    let upgrade = match classify(applied, new).change {
        Change::Restart { fields } => crate::plan::is_upgrade(&fields),
        // A rescale applied together with an upgrade: the upgrade's fields decide.
        Change::Rescale { .. } => applied.is_some_and(|applied| {
            let (old, new) = (as_object(applied), as_object(new));
            ["steps", "source", "image", "restoreFrom"]
                .iter()
                .any(|f| old.get(*f) != new.get(*f))
        }),
        _ => false,
    };
    manual && upgrade && approved.map(str::trim) != Some(generation.to_string().as_str())
}

fn as_object(spec: &StreamJobSpec) -> serde_json::Map<String, Value> {
    match serde_json::to_value(spec) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests;

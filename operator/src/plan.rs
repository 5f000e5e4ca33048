//! The plan of a rollout, as `status.plan` shows it before anything moves: pure, no client.
//! From the change (what changed in the spec), the compatibility check's verdicts for the
//! steps' state, the parallelism before and after, and each task's state bytes (its HEAD
//! checkpoint's files), it says what the roll does to each step's state and which tasks change
//! worker, from which pod to which, and what they download.
//!
//! A task that changes worker restores from the object store: its new pod's volume holds a
//! checkpoint of it only if it ran there before and nothing was checkpointed since, which the
//! operator cannot see, so the plan counts the download. A task that stays restores from its
//! own pod's volume and downloads nothing.

use sluice_core::assignment::owner_of;
use sluice_core::upgrade;
use sluice_crds::v1alpha1::{PlannedMove, PlannedStep, RolloutPlan};

use crate::change::{Change, Classified};

/// Per-task lists in status are capped at this many entries; totals count all.
pub const LISTED: usize = 64;

/// What a plan is made from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The generation it is for.
    pub generation: i64,
    /// The job's name (its pods are `<name>-<ordinal>`).
    pub job: &'a str,
    /// What changed.
    pub change: &'a Classified,
    /// The verdicts for the steps' state (None: nothing was rolled out before).
    pub state: Option<&'a upgrade::Plan>,
    /// Why it waits, if it does (a condition reason).
    pub held: Option<&'a str>,
    /// Input partitions (tasks).
    pub partitions: u32,
    /// Workers now and after the roll.
    pub parallelism: (i32, i32),
    /// Each task's state bytes at its HEAD checkpoint (shorter or empty when unknown).
    pub bytes: &'a [u64],
    /// Partitions the job is rolled onto from the ones it read, as (from, to), when it adopts
    /// partitions added to its input (`onNewPartitions: adopt`).
    pub adopting: Option<(u32, u32)>,
}

/// Whether a change of these spec fields is an upgrade (what `approval: manual` holds): a
/// change of what the workers run, rather than of how many run or where they checkpoint.
pub fn is_upgrade(fields: &[&str]) -> bool {
    fields
        .iter()
        .any(|f| matches!(*f, "steps" | "source" | "image" | "restoreFrom"))
}

/// The plan; None when the change rolls nothing.
pub fn plan(inputs: &Inputs<'_>) -> Option<RolloutPlan> {
    let action = match &inputs.change.change {
        // No spec change, but the input gained partitions the job adopts: a roll of its own,
        // whose state verdicts (keys move between tasks) the plan shows as any other's.
        Change::None if inputs.adopting.is_some() => "adopt-partitions",
        Change::None => return None,
        Change::Create => "create",
        Change::Suspend => "suspend",
        Change::Resume => "resume",
        Change::Rescale { .. } => "rescale",
        Change::Restart { fields } if is_upgrade(fields) => "upgrade",
        Change::Restart { .. } => "restart",
    };
    let steps = inputs.state.map_or_else(Vec::new, |p| {
        p.steps
            .iter()
            .map(|s| PlannedStep {
                name: s.name.clone(),
                kind: s.kind.clone(),
                verdict: s.verdict.as_str().into(),
                changes: s.changes.iter().map(ToString::to_string).collect(),
            })
            .collect()
    });
    let (from, to) = inputs.parallelism;
    let mut moves = Vec::new();
    let (mut moving, mut download) = (0i64, 0i64);
    if from > 0 && to > 0 && from != to && !matches!(inputs.change.change, Change::Create) {
        for task in 0..inputs.partitions {
            let (was, will) = (
                owner_of(task, from.unsigned_abs()),
                owner_of(task, to.unsigned_abs()),
            );
            if was == will {
                continue;
            }
            let bytes = inputs.bytes.get(task as usize).copied().unwrap_or(0);
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            moving += 1;
            download = download.saturating_add(bytes);
            if moves.len() < LISTED {
                moves.push(PlannedMove {
                    task: task.into(),
                    from: format!("{}-{was}", inputs.job),
                    to: format!("{}-{will}", inputs.job),
                    restore_from: "store".into(),
                    bytes,
                });
            }
        }
    }
    let state = inputs
        .state
        .map_or("no state yet".to_string(), upgrade::Plan::summary);
    Some(RolloutPlan {
        generation: inputs.generation,
        action: action.into(),
        held: inputs.held.map(str::to_string),
        state,
        steps,
        moves,
        tasks_moving: moving,
        download_bytes: download,
    })
}

#[cfg(test)]
mod tests;

//! Savepoints, as the operator takes them: pure, no client. A new `spec.savepoint.trigger`
//! is recorded with the time the operator saw it; once every task has committed a checkpoint
//! after that time (or at once, for a suspended job whose workers stopped after their final
//! checkpoints), those checkpoints are copied into a savepoint
//! (`sluice_core::checkpoint::savepoint::take`). The workers do nothing for it: they commit
//! checkpoints every interval anyway, so a savepoint costs no pause, and waits at most one
//! interval. The wait compares the workers' clocks (a descriptor's creation time) with the
//! operator's; skew between them only shifts which checkpoint is taken.
//!
//! Retention: the newest `spec.savepoint.retain` savepoints of the job are kept; older ones
//! are deleted, except those the `spec.restoreFrom` of a job in the same namespace names.
//! Deleting the job deletes none. A suspended job with a task that never checkpointed cannot
//! be saved: its savepoint fails, saying so; a running job's waits for every task.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_core::checkpoint::descriptor::Descriptor;
use sluice_core::checkpoint::savepoint::Savepoint;
use sluice_crds::v1alpha1::{SavepointInfo, SavepointProgress, SavepointTask, StreamJobSpec};

use crate::plan::LISTED;

/// What to do about the savepoint of the latest trigger.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Nothing (no trigger, or its savepoint is taken or failed).
    Idle,
    /// A trigger not seen before: record it, requested now.
    Request(SavepointProgress),
    /// Wait for the tasks; the progress says for what.
    Wait(SavepointProgress),
    /// Copy these checkpoints, one per task in task order.
    Take(Vec<Descriptor>),
    /// It cannot be taken; the progress says why.
    Fail(SavepointProgress),
}

/// What the latest trigger calls for. `progress` is the status' savepoint, `heads` each
/// task's HEAD descriptor (None: the store cannot be read), `stopped` true when the job is
/// suspended and no worker runs.
pub fn next(
    spec: &StreamJobSpec,
    progress: Option<&SavepointProgress>,
    heads: Option<&[Option<Descriptor>]>,
    stopped: bool,
    now: Timestamp,
) -> Next {
    let Some(trigger) = spec.savepoint.as_ref().and_then(|s| s.trigger.as_deref()) else {
        return Next::Idle;
    };
    let progress = match progress {
        Some(p) if p.trigger == trigger => p,
        _ => {
            return Next::Request(SavepointProgress {
                trigger: trigger.to_string(),
                requested_at: Time(now),
                state: "Pending".into(),
                message: "waiting for every task's next checkpoint".into(),
                id: None,
            });
        }
    };
    if progress.state != "Pending" {
        return Next::Idle;
    }
    let waiting = |message: String| {
        Next::Wait(SavepointProgress {
            message,
            ..progress.clone()
        })
    };
    let Some(heads) = heads else {
        return waiting(
            "waiting for every task's next checkpoint: the checkpoint store cannot be read".into(),
        );
    };
    let since = progress.requested_at.0.as_millisecond();
    if stopped && heads.iter().any(Option::is_none) {
        let never: Vec<String> = (heads.iter().enumerate())
            .filter(|(_, h)| h.is_none())
            .map(|(task, _)| task.to_string())
            .collect();
        return Next::Fail(SavepointProgress {
            state: "Failed".into(),
            message: format!(
                "the job is suspended and tasks {} never checkpointed: there is nothing to save \
                 for them; resume the job, then set a new trigger",
                never.join(", ")
            ),
            ..progress.clone()
        });
    }
    let ready: Vec<&Descriptor> = heads
        .iter()
        .flatten()
        .filter(|d| stopped || d.created_at_ms >= since)
        .collect();
    if ready.len() < heads.len() || heads.is_empty() {
        return waiting(format!(
            "{} of {} tasks have checkpointed since the trigger; waiting for the others",
            ready.len(),
            heads.len()
        ));
    }
    Next::Take(ready.into_iter().cloned().collect())
}

/// The progress once savepoint `id` was taken.
pub fn taken(progress: &SavepointProgress, savepoint: &Savepoint) -> SavepointProgress {
    SavepointProgress {
        state: "Taken".into(),
        message: format!(
            "savepoint {} of {} tasks, {} bytes of state; start a job from it with \
             spec.restoreFrom: {}",
            savepoint.id,
            savepoint.tasks.len(),
            savepoint.bytes(),
            savepoint.id
        ),
        id: Some(savepoint.id.clone()),
        ..progress.clone()
    }
}

/// The savepoints retention deletes, by number, from the job's savepoints (ascending): all
/// but the newest `retain`, sparing those a job's `spec.restoreFrom` names (`protected`).
pub fn expired(numbers: &[u64], retain: usize, protected: &[u64]) -> Vec<u64> {
    let keep_from = numbers.len().saturating_sub(retain.max(1));
    numbers[..keep_from]
        .iter()
        .copied()
        .filter(|n| !protected.contains(n))
        .collect()
}

/// A savepoint already taken for `progress` (its trigger, completed after the request): one
/// whose manifest was written by an attempt that did not get to record it in status.
pub fn already_taken<'a>(
    progress: &SavepointProgress,
    found: &'a [(u64, Savepoint)],
) -> Option<&'a Savepoint> {
    let since = progress.requested_at.0.as_millisecond();
    found
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.trigger == progress.trigger && s.created_at_ms >= since)
}

/// A savepoint as `status.savepoints` lists it (its per-task list capped at [`LISTED`]).
pub fn info(savepoint: &Savepoint) -> SavepointInfo {
    SavepointInfo {
        id: savepoint.id.clone(),
        trigger: savepoint.trigger.clone(),
        time: Time(Timestamp::from_millisecond(savepoint.created_at_ms).unwrap_or_default()),
        tasks: savepoint.tasks.len() as i64,
        bytes: i64::try_from(savepoint.bytes()).unwrap_or(i64::MAX),
        checkpoints: savepoint
            .tasks
            .iter()
            .take(LISTED)
            .map(|t| SavepointTask {
                task: t.task.into(),
                checkpoint: t.checkpoint.0 as i64,
                source_offsets: t.source_offsets.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;

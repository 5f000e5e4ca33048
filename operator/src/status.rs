//! The status a job reports: pure, no client. Conditions follow the Kubernetes API
//! conventions (`type`, `status`, `reason` in CamelCase, a message a person can act on,
//! `observedGeneration`, `lastTransitionTime` moved only when the status flips), so
//! `kubectl wait --for=condition=Ready`, Argo CD and Flux read them as they read built-in kinds.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sluice_crds::v1alpha1::{CheckpointRef, Phase, RolloutPlan, StreamJobStatus};

use sluice_core::checkpoint::descriptor::{ReportedState, TaskReport};

use crate::build::REVISION_LABEL;
use crate::change::{Change, Classified};
use crate::validate::SpecError;

/// Condition types.
pub const READY: &str = "Ready";
/// Workers are being started, restarted or stopped.
pub const PROGRESSING: &str = "Progressing";
/// Something needs a person's attention.
pub const DEGRADED: &str = "Degraded";
/// The spec can run.
pub const SPEC_VALID: &str = "SpecValid";
/// kstatus' "in progress" condition: present, True, while Progressing is True.
pub const RECONCILING: &str = "Reconciling";
/// kstatus' "failed" condition: present, True, while the job cannot make progress without a
/// person (invalid spec, failing workers).
pub const STALLED: &str = "Stalled";

/// The reason of `Degraded`, `Progressing=False` and `Stalled` while a change is held because it
/// would reset or drop state under `upgrade.stateChanges: refuse`.
pub const STATE_INCOMPATIBLE: &str = "StateIncompatible";

/// The reason of `Progressing=True` (and `Reconciling`) while an upgrade waits for the
/// `sluice.dev/approve` annotation under `upgrade.approval: manual`.
pub const AWAITING_APPROVAL: &str = "AwaitingApproval";

/// The reason of `Progressing=False`, `Degraded` and `Stalled` when a rollout has not
/// completed within `spec.progressDeadline`.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// Condition type: the source topics have partitions the job does not read, or did not when
/// it was rolled out (`True`), or it reads them all (`False`).
pub const PARTITIONS_CHANGED: &str = "PartitionsChanged";

/// What the job knows about its input partitions, for [`PARTITIONS_CHANGED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionsSeen {
    /// The partitions each source topic has, as the brokers said.
    pub live: u32,
    /// The partitions the job is rolled out onto now.
    pub read: u32,
    /// The partitions its workers read before this reconcile, if it ran.
    pub rolled: Option<u32>,
    /// Partitions from this one on were added while the job ran.
    pub added_from: u32,
    /// How many of the tasks of those added partitions have no checkpoint yet (none when the
    /// store was not read): until each has one, nothing shows its partition was read.
    pub added_unread: Option<u32>,
    /// `spec.source.kafka.onNewPartitions: adopt`.
    pub adopt: bool,
    /// The condition type and reason that hold the job on the partitions it reads (a held
    /// change, or a spec that cannot be rolled out), e.g. (`Progressing`, `StateIncompatible`).
    pub held_by: Option<(&'static str, &'static str)>,
}

/// [`PARTITIONS_CHANGED`] as (status, reason, message).
pub fn partitions_condition(p: &PartitionsSeen) -> (bool, &'static str, String) {
    let PartitionsSeen {
        live,
        read,
        rolled,
        added_from,
        added_unread,
        adopt,
        held_by,
    } = *p;
    if live > read {
        let unread = if live - read == 1 {
            format!("partition {read} is")
        } else {
            format!("partitions {read}–{} are", live - 1)
        };
        return if adopt {
            (
                true,
                "AdoptionHeld",
                format!(
                    "the source topics have {live} partitions, the job reads {read}: {unread} \
                     not read; adopting them (onNewPartitions: adopt) is held{}",
                    match held_by {
                        Some((condition, STATE_INCOMPATIBLE)) => format!(
                            " by {condition}: {STATE_INCOMPATIBLE}, see it and status.plan (more \
                             partitions move keys, and so keyed state, between tasks: \
                             spec.upgrade.stateChanges: reset adopts them with that state \
                             started empty)"
                        ),
                        Some((condition, reason)) => {
                            format!(" by {condition}: {reason}, see that condition")
                        }
                        None => ", see the Progressing condition and status.plan".into(),
                    }
                ),
            )
        } else {
            (
                true,
                "PartitionsAdded",
                format!(
                    "the source topics have {live} partitions, the job reads {read}: {unread} \
                     not read and their records are not in status.lag; set \
                     spec.source.kafka.onNewPartitions: adopt to roll the job onto them, read \
                     from their earliest offset"
                ),
            )
        };
    }
    match rolled {
        Some(rolled) if rolled < read => (
            true,
            "Adopting",
            format!(
                "rolling the job onto {read} partitions (from {rolled}): partitions {rolled}–{} \
                 start at their earliest offset",
                read - 1
            ),
        ),
        // The roll is done, but a task only shows it read its partition by checkpointing.
        _ if added_from < read && added_unread.is_some_and(|n| n > 0) => (
            true,
            "Adopting",
            format!(
                "the job is rolled onto {read} partitions; {} of the tasks of partitions \
                 {added_from}–{} (added while it ran, read from their earliest offset) have \
                 not checkpointed yet",
                added_unread.unwrap_or(0),
                read - 1
            ),
        ),
        _ if added_from < read => (
            false,
            "AllRead",
            format!(
                "the job reads all {read} partitions of each source topic; partitions \
                 {added_from}–{} were added while it ran and read from their earliest offset",
                read - 1
            ),
        ),
        _ => (
            false,
            "AllRead",
            format!("the job reads all {read} partitions of each source topic"),
        ),
    }
}

/// Waiting reasons of a container that will not get better by waiting.
const FAILING: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// What the status is computed from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// `metadata.generation` of the job.
    pub generation: i64,
    /// Why this generation is not rolled out, as (reason, message): it would reset or drop
    /// state under `refuse` ([`STATE_INCOMPATIBLE`]), or waits for approval
    /// ([`AWAITING_APPROVAL`]). The workers run the spec rolled out last, which the other
    /// inputs describe.
    pub held: Option<(&'a str, &'a str)>,
    /// The plan of the latest change, if any.
    pub plan: Option<&'a RolloutPlan>,
    /// `spec.parallelism`.
    pub parallelism: i32,
    /// `spec.suspend`.
    pub suspend: bool,
    /// `spec.checkpoint.interval`.
    pub checkpoint_interval: std::time::Duration,
    /// `spec.progressDeadline`.
    pub progress_deadline: std::time::Duration,
    /// The status as it was.
    pub previous: Option<&'a StreamJobStatus>,
    /// Validation errors; empty when the spec is valid.
    pub errors: &'a [SpecError],
    /// What this reconcile's spec change requires.
    pub change: &'a Classified,
    /// The revision pods should run; `None` when the spec is invalid.
    pub revision: Option<&'a str>,
    /// The job's worker pods.
    pub pods: &'a [Pod],
    /// The oldest of the tasks' latest checkpoints, when the object store was read.
    pub last_checkpoint: Option<CheckpointRef>,
    /// Source lag, when known.
    pub lag: Option<i64>,
    /// The tasks' current reports (see [`Outside::task_reports`](crate::observe::Outside)).
    pub tasks: &'a [TaskReport],
    /// The job's input partitions, when the brokers answered.
    pub partitions: Option<PartitionsSeen>,
    /// Label selector of the job's pods.
    pub selector: String,
    /// Now.
    pub now: Timestamp,
}

/// A worker pod, as the status sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Worker {
    name: String,
    current: bool,
    ready: bool,
    terminating: bool,
    failing: Option<(String, i32)>,
}

fn worker(pod: &Pod, revision: Option<&str>) -> Worker {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let failing = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|c| {
            let reason = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
            FAILING
                .contains(&reason.as_str())
                .then_some((reason, c.restart_count))
        });
    Worker {
        name: pod.metadata.name.clone().unwrap_or_default(),
        current: revision.is_some()
            && pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .map(String::as_str)
                == revision,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        failing,
    }
}

/// The job's status.
pub fn status(inputs: &Inputs<'_>) -> StreamJobStatus {
    let previous = inputs.previous.cloned().unwrap_or_default();
    let workers: Vec<Worker> = inputs
        .pods
        .iter()
        .map(|p| worker(p, inputs.revision))
        .collect();
    let running = workers.iter().filter(|w| !w.terminating).count() as i32;
    let ready = workers
        .iter()
        .filter(|w| w.current && w.ready && !w.terminating)
        .count() as i32;
    let mut conditions = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions.push(condition(inputs, &previous, type_, ok, reason, message));
    };
    let mut phase;

    if !inputs.errors.is_empty() {
        let reason = inputs.errors[0].reason;
        let message = inputs
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        set(SPEC_VALID, false, reason, message.clone());
        set(
            READY,
            false,
            "SpecInvalid",
            "the spec cannot run; see SpecValid".into(),
        );
        set(
            PROGRESSING,
            false,
            "SpecInvalid",
            "nothing is started until the spec is fixed".into(),
        );
        set(DEGRADED, true, reason, message);
        phase = Phase::Failed;
    } else if inputs.suspend {
        set(SPEC_VALID, true, "Valid", "the spec can run".into());
        let message = "suspended: no workers run; state and checkpoints are kept; set \
                       spec.suspend to false to resume from the last checkpoint";
        // Ready: the desired state, no workers, is reached once they stopped (as kstatus,
        // Flux's health library, reads Ready).
        set(READY, running == 0, "Suspended", message.into());
        if running > 0 {
            set(
                PROGRESSING,
                true,
                "Suspending",
                format!("{running} workers are taking their final checkpoints"),
            );
        } else {
            set(PROGRESSING, false, "Suspended", message.into());
        }
        set(DEGRADED, false, "Suspended", message.into());
        phase = Phase::Suspended;
    } else {
        set(SPEC_VALID, true, "Valid", "the spec can run".into());
        let desired = inputs.parallelism;
        let stale = workers.iter().filter(|w| !w.current).count();
        let rolling = stale > 0 || ready < desired;
        let revision = inputs.revision.unwrap_or_default();
        let was = previous_condition(&previous, PROGRESSING);
        // Why workers are (re)starting: this reconcile's change, else the reason it had.
        let action = match &inputs.change.change {
            Change::Rescale { .. } => "Rescaling",
            Change::Restart { .. } => "Restarting",
            Change::Create | Change::Resume => "Starting",
            Change::None | Change::Suspend => {
                was.filter(|c| c.status == "True")
                    .map_or("Starting", |c| match c.reason.as_str() {
                        "Rescaling" => "Rescaling",
                        "Restarting" => "Restarting",
                        _ => "Starting",
                    })
            }
        };
        // A rollout past its deadline (counted from when Progressing became True) is
        // reported as such for the rest of this generation's rollout, until it completes.
        let deadline =
            SignedDuration::try_from(inputs.progress_deadline).unwrap_or(SignedDuration::MAX);
        // A held change's own condition takes Progressing's place (see below): no deadline
        // is counted under it.
        let overdue = rolling
            && inputs.held.is_none()
            && was
                .filter(|c| c.observed_generation == Some(inputs.generation))
                .is_some_and(|c| {
                    c.reason == PROGRESS_DEADLINE_EXCEEDED
                        || (c.status == "True"
                            && c.reason != AWAITING_APPROVAL
                            && inputs.now.duration_since(c.last_transition_time.0) > deadline)
                });
        if overdue {
            set(
                PROGRESSING,
                false,
                PROGRESS_DEADLINE_EXCEEDED,
                format!(
                    "the rollout has not completed within spec.progressDeadline ({} s): {ready} \
                     of {desired} workers ready on revision {revision}; it goes on. See the \
                     pods (kubectl describe pod -l {}) and their logs",
                    inputs.progress_deadline.as_secs(),
                    inputs.selector,
                ),
            );
        } else if rolling {
            set(
                PROGRESSING,
                true,
                action,
                format!("{ready} of {desired} workers ready on revision {revision}"),
            );
        } else {
            let took = was
                .filter(|c| c.status == "True")
                .map(|c| inputs.now.duration_since(c.last_transition_time.0));
            let message = match took {
                Some(d) => format!(
                    "all {desired} workers ready on revision {revision}, {:.1} s after {} began",
                    d.as_secs_f64(),
                    was.map_or("the rollout", |c| match c.reason.as_str() {
                        "Rescaling" => "the rescale",
                        "Restarting" => "the restart",
                        _ => "the start",
                    })
                ),
                None => previous_condition(&previous, PROGRESSING)
                    .filter(|c| c.reason == "RolloutComplete")
                    .map_or_else(
                        || format!("all {desired} workers ready on revision {revision}"),
                        |c| c.message.clone(),
                    ),
            };
            set(PROGRESSING, false, "RolloutComplete", message);
        }
        if !rolling {
            set(
                READY,
                true,
                "WorkersReady",
                format!("{ready} of {desired} workers ready"),
            );
        } else {
            set(
                READY,
                false,
                "WorkersNotReady",
                format!("{ready} of {desired} workers ready"),
            );
        }
        let failing: Vec<String> = workers
            .iter()
            .filter_map(|w| {
                let (reason, restarts) = w.failing.as_ref()?;
                Some(format!(
                    "pod {} is in {reason} after {restarts} restarts (kubectl logs {} --previous; \
                     kubectl describe pod {})",
                    w.name, w.name, w.name
                ))
            })
            .collect();
        let stalled_after =
            (inputs.checkpoint_interval * 5).max(std::time::Duration::from_secs(60));
        let checkpoint_age = inputs
            .last_checkpoint
            .as_ref()
            .map(|c| inputs.now.duration_since(c.time.0))
            .filter(|age| {
                !rolling
                    && *age > SignedDuration::try_from(stalled_after).unwrap_or(SignedDuration::MAX)
            });
        let tasks = tasks_condition(inputs.tasks, inputs.now.as_millisecond());
        if !failing.is_empty() {
            set(DEGRADED, true, "WorkersFailing", failing.join("; "));
            phase = Phase::Degraded;
        } else if let Some((reason, message)) = tasks {
            set(DEGRADED, true, reason, message);
            phase = Phase::Degraded;
        } else if let Some(age) = checkpoint_age {
            set(
                DEGRADED,
                true,
                "CheckpointsStalled",
                format!(
                    "the oldest task checkpoint is {} s old, the interval is {} s: a task cannot \
                     checkpoint; see the workers' logs and check the object store",
                    age.as_secs(),
                    inputs.checkpoint_interval.as_secs()
                ),
            );
            phase = Phase::Degraded;
        } else if overdue {
            set(
                DEGRADED,
                true,
                PROGRESS_DEADLINE_EXCEEDED,
                format!(
                    "{ready} of {desired} workers ready after spec.progressDeadline ({} s); see \
                     Progressing",
                    inputs.progress_deadline.as_secs()
                ),
            );
            phase = Phase::Degraded;
        } else {
            set(
                DEGRADED,
                false,
                "Healthy",
                "workers run and checkpoint".into(),
            );
            phase = if rolling && action != "Starting" {
                Phase::Rescaling
            } else if ready == 0 {
                Phase::Pending
            } else {
                Phase::Running
            };
        }
        // Progressing's transition time is when the rollout began: a new generation's rollout
        // starts a new clock (True stays True across generations otherwise), and a deadline
        // exceeded keeps the start it counted from.
        if let (Some(c), Some(w)) = (conditions.iter_mut().find(|c| c.type_ == PROGRESSING), was) {
            if c.status == "True" && w.observed_generation != Some(inputs.generation) {
                c.last_transition_time = Time(inputs.now);
            } else if c.reason == PROGRESS_DEADLINE_EXCEEDED && w.status == "True" {
                c.last_transition_time = w.last_transition_time.clone();
            } else if c.reason == "RolloutComplete" && w.reason == PROGRESS_DEADLINE_EXCEEDED {
                // Both False, but the rollout ended now.
                c.last_transition_time = Time(inputs.now);
            }
        }
    }

    // A held change: the workers go on with the old spec, the new one waits for a person. It
    // takes the place of a condition only where that one says all is well: a roll under way
    // (a rescale, a suspend) stays Progressing=True, and workers failing or a task stopped
    // stay Degraded (and Stalled) with their own reason; the held change's message is added
    // to theirs.
    if let Some((reason, message)) = inputs.held.filter(|_| inputs.errors.is_empty()) {
        let incompatible = reason == STATE_INCOMPATIBLE;
        let mut hold = |type_: &str, status: bool| {
            let Some(i) = conditions.iter().position(|c| c.type_ == type_) else {
                return;
            };
            if conditions[i].status == "True" && conditions[i].reason != reason {
                // Already abnormal for another reason: keep it, say what is held too.
                let c = &mut conditions[i];
                c.message = format!("{}; and {message}", c.message);
            } else {
                conditions[i] = condition(inputs, &previous, type_, status, reason, message.into());
            }
        };
        if incompatible {
            hold(PROGRESSING, false);
            hold(DEGRADED, true);
            if phase != Phase::Suspended {
                phase = Phase::Degraded;
            }
        } else {
            hold(PROGRESSING, true);
        }
    }

    match &inputs.partitions {
        Some(seen) => {
            let (changed, reason, message) = partitions_condition(seen);
            conditions.push(condition(
                inputs,
                &previous,
                PARTITIONS_CHANGED,
                changed,
                reason,
                message,
            ));
        }
        // Kept as it was while the brokers do not answer.
        None => conditions.extend(previous_condition(&previous, PARTITIONS_CHANGED).cloned()),
    }

    // The abnormal-true pair kstatus (Flux, kpt, cli-utils) reads: present only when true.
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.status == "True")
        .cloned();
    if let Some(p) = progressing {
        conditions.push(condition(
            inputs,
            &previous,
            RECONCILING,
            true,
            &p.reason,
            p.message,
        ));
    }
    let stuck = conditions
        .iter()
        .find(|c| {
            (c.type_ == SPEC_VALID && c.status == "False")
                || (c.type_ == DEGRADED
                    && c.status == "True"
                    && matches!(
                        c.reason.as_str(),
                        "WorkersFailing"
                            | "TaskFailed"
                            | STATE_INCOMPATIBLE
                            | PROGRESS_DEADLINE_EXCEEDED
                    ))
        })
        .cloned();
    if let Some(s) = stuck {
        conditions.push(condition(
            inputs, &previous, STALLED, true, &s.reason, s.message,
        ));
    }

    StreamJobStatus {
        phase: Some(phase),
        conditions,
        observed_generation: Some(inputs.generation),
        parallelism: Some(running),
        selector: Some(inputs.selector.clone()),
        ready_workers: Some(ready),
        last_checkpoint: inputs.last_checkpoint.clone().or(previous.last_checkpoint),
        lag: inputs.lag.or(previous.lag),
        plan: inputs.plan.cloned(),
        // Written by the reconcile from the store (see `crate::savepoint`).
        savepoint: previous.savepoint,
        savepoints: previous.savepoints,
        tasks: previous.tasks,
        task_totals: previous.task_totals,
    }
}

/// How long a task may fail and restart without running again before the job is
/// `Degraded` (`TaskFailing`): a restart or two after a broker blip is not a fault.
pub const FAILING_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// The `Degraded` reason and message the tasks' reports call for: `TaskFailed` when a task
/// stopped until the job is changed (also `Stalled`), else `TaskFailing` when one has been
/// failing and restarting, without running again, for [`FAILING_AFTER`] or longer; each
/// task's own message (its last error), which names what to do.
pub fn tasks_condition(reports: &[TaskReport], now_ms: i64) -> Option<(&'static str, String)> {
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.state == ReportedState::Failed)
        .map(|r| format!("task {} on {}: {}", r.task, r.owner, r.message))
        .collect();
    if !failed.is_empty() {
        return Some(("TaskFailed", failed.join("; ")));
    }
    let bound = FAILING_AFTER.as_millis() as i64;
    let failing: Vec<String> = reports
        .iter()
        .filter(|r| r.state != ReportedState::Running)
        .filter_map(|r| {
            let since = r
                .failing_since_ms
                .or((r.state == ReportedState::Restarting).then_some(r.at_ms))?;
            let for_ms = now_ms - since;
            (for_ms >= bound).then(|| {
                format!(
                    "task {} on {} has been failing and restarting for {} s: {}",
                    r.task,
                    r.owner,
                    for_ms / 1000,
                    r.message
                )
            })
        })
        .collect();
    (!failing.is_empty()).then(|| ("TaskFailing", failing.join("; ")))
}

/// A rollout that just completed.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    /// What started it: `Starting`, `Rescaling` or `Restarting`.
    pub reason: String,
    /// From the start of the rollout until every worker was ready: the downtime.
    pub seconds: f64,
    /// The Progressing condition's message.
    pub message: String,
}

/// The rollout `new` reports complete, if `previous` had one running.
pub fn rollout_finished(
    previous: Option<&StreamJobStatus>,
    new: &StreamJobStatus,
) -> Option<Rollout> {
    let was = previous_condition(previous?, PROGRESSING)?;
    let now = new.conditions.iter().find(|c| c.type_ == PROGRESSING)?;
    let began = was.status == "True" || was.reason == PROGRESS_DEADLINE_EXCEEDED;
    (began && now.status == "False" && now.reason == "RolloutComplete").then(|| Rollout {
        reason: was.reason.clone(),
        seconds: now
            .last_transition_time
            .0
            .duration_since(was.last_transition_time.0)
            .as_secs_f64(),
        message: now.message.clone(),
    })
}

fn previous_condition<'a>(status: &'a StreamJobStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn condition(
    inputs: &Inputs<'_>,
    previous: &StreamJobStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous_condition(previous, type_)
        .filter(|c| c.status == status)
        .map_or(Time(inputs.now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(inputs.generation),
        last_transition_time: since,
    }
}

#[cfg(test)]
mod tests;

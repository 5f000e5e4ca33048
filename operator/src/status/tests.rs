use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sluice_crds::v1alpha1::{CheckpointRef, Phase, StreamJobStatus};

use sluice_core::checkpoint::descriptor::{Epoch, ReportedState, TaskReport};

use super::{
    DEGRADED, Inputs, PARTITIONS_CHANGED, PROGRESSING, PartitionsSeen, READY, SPEC_VALID, STALLED,
    rollout_finished, status,
};
use crate::change::{Change, Classified};
use crate::validate::SpecError;

fn pod(name: &str, revision: &str, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"sluice.dev/revision": revision}},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    }))
    .expect("pod")
}

fn crash_looping(name: &str, revision: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"sluice.dev/revision": revision}},
        "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "worker", "image": "w", "imageID": "", "ready": false,
                "restartCount": 6,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }],
        },
    }))
    .expect("pod")
}

fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().expect("time")
}

static NONE: Classified = Classified {
    change: Change::None,
    ignored: Vec::new(),
};

fn inputs<'a>(pods: &'a [Pod], previous: Option<&'a StreamJobStatus>) -> Inputs<'a> {
    Inputs {
        generation: 7,
        held: None,
        partitions: None,
        plan: None,
        parallelism: 3,
        suspend: false,
        checkpoint_interval: Duration::from_secs(10),
        progress_deadline: Duration::from_secs(600),
        previous,
        errors: &[],
        change: &NONE,
        revision: Some("r2"),
        pods,
        last_checkpoint: Some(CheckpointRef {
            id: 41,
            time: Time(now() - SignedDuration::from_secs(8)),
        }),
        lag: None,
        tasks: &[],
        selector: "sluice.dev/job=customers".into(),
        now: now(),
    }
}

fn condition<'a>(status: &'a StreamJobStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{type_} in {status:?}"));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn all_workers_ready_on_the_current_revision_is_ready_and_done_progressing() {
    let pods = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let s = status(&inputs(&pods, None));
    assert_eq!(
        condition(&s, READY),
        ("True", "WorkersReady", "3 of 3 workers ready")
    );
    assert_eq!(condition(&s, PROGRESSING).0, "False");
    assert_eq!(condition(&s, PROGRESSING).1, "RolloutComplete");
    assert_eq!(condition(&s, DEGRADED).0, "False");
    assert_eq!(condition(&s, SPEC_VALID).0, "True");
    assert_eq!(s.phase, Some(Phase::Running));
    assert_eq!((s.ready_workers, s.parallelism), (Some(3), Some(3)));
    assert_eq!(s.observed_generation, Some(7));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
    assert_eq!(s.selector.as_deref(), Some("sluice.dev/job=customers"));
    assert_eq!(s.last_checkpoint.as_ref().map(|c| c.id), Some(41));
}

#[test]
fn pods_of_an_old_revision_mean_a_rollout_in_progress_and_its_downtime_is_reported_when_done() {
    let rescale = Classified {
        change: Change::Rescale { from: 2, to: 3 },
        ignored: vec![],
    };
    let pods = [pod("c-0", "r1", true), pod("c-1", "r2", false)];
    let rolling = status(&Inputs {
        change: &rescale,
        now: now() - SignedDuration::from_secs(9),
        ..inputs(&pods, None)
    });
    assert_eq!(
        condition(&rolling, PROGRESSING),
        ("True", "Rescaling", "0 of 3 workers ready on revision r2")
    );
    assert_eq!(
        condition(&rolling, READY),
        ("False", "WorkersNotReady", "0 of 3 workers ready")
    );
    assert_eq!(rolling.phase, Some(Phase::Rescaling));

    // Next reconcile: the spec change is applied (no change any more), pods still starting.
    let pods = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", false),
        pod("c-2", "r2", true),
    ];
    let still = status(&Inputs {
        now: now() - SignedDuration::from_secs(4),
        ..inputs(&pods, Some(&rolling))
    });
    assert_eq!(
        condition(&still, PROGRESSING).1,
        "Rescaling",
        "the reason is kept"
    );
    assert_eq!(
        still.conditions[1].last_transition_time, rolling.conditions[1].last_transition_time,
        "no flip, no new transition time"
    );

    let pods = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let done = status(&inputs(&pods, Some(&still)));
    assert_eq!(
        condition(&done, PROGRESSING),
        (
            "False",
            "RolloutComplete",
            "all 3 workers ready on revision r2, 9.0 s after the rescale began"
        )
    );
    let rollout = rollout_finished(Some(&still), &done).expect("finished");
    assert_eq!(
        (rollout.reason.as_str(), rollout.seconds),
        ("Rescaling", 9.0)
    );
    assert_eq!(
        rollout.message,
        "all 3 workers ready on revision r2, 9.0 s after the rescale began"
    );
    assert_eq!(rollout_finished(Some(&done), &done), None, "reported once");
    assert_eq!(done.phase, Some(Phase::Running));
}

#[test]
fn a_crash_looping_worker_degrades_the_job_with_what_to_run() {
    let pods = [
        pod("c-0", "r2", true),
        crash_looping("c-1", "r2"),
        pod("c-2", "r2", true),
    ];
    let s = status(&inputs(&pods, None));
    let (value, reason, message) = condition(&s, DEGRADED);
    assert_eq!((value, reason), ("True", "WorkersFailing"));
    assert!(
        message.contains("pod c-1 is in CrashLoopBackOff after 6 restarts"),
        "{message}"
    );
    assert!(message.contains("kubectl logs c-1 --previous"), "{message}");
    assert_eq!(s.phase, Some(Phase::Degraded));
}

#[test]
fn checkpoints_that_stop_advancing_degrade_a_running_job() {
    let pods = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let s = status(&Inputs {
        last_checkpoint: Some(CheckpointRef {
            id: 3,
            time: Time(now() - SignedDuration::from_secs(300)),
        }),
        ..inputs(&pods, None)
    });
    let (value, reason, message) = condition(&s, DEGRADED);
    assert_eq!((value, reason), ("True", "CheckpointsStalled"));
    assert!(
        message.starts_with("the oldest task checkpoint is 300 s old, the interval is 10 s"),
        "{message}"
    );
}

fn report(task: u32, state: ReportedState, message: &str) -> TaskReport {
    TaskReport {
        task,
        owner: format!("c-{}", task % 3),
        epoch: Some(Epoch(2)),
        state,
        message: message.into(),
        at_ms: 0,
        decisions: vec![],
        restored: None,
        failing_since_ms: None,
    }
}

#[test]
fn a_failed_task_degrades_and_stalls_the_job_with_its_message_and_a_restarting_one_degrades_it() {
    let pods = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", false),
        pod("c-2", "r2", true),
    ];
    let out_of_range = "offset out of range: task 4 must resume orders partition 4 at offset 90, \
                        but the partition holds offsets 0 to 12";
    let tasks = [
        report(3, ReportedState::Running, ""),
        report(4, ReportedState::Failed, out_of_range),
    ];
    let s = status(&Inputs {
        tasks: &tasks,
        ..inputs(&pods, None)
    });
    let (degraded, reason, message) = condition(&s, DEGRADED);
    assert_eq!((degraded, reason), ("True", "TaskFailed"));
    assert_eq!(message, format!("task 4 on c-1: {out_of_range}"));
    assert_eq!(condition(&s, STALLED).1, "TaskFailed");
    assert_eq!(s.phase, Some(Phase::Degraded));

    // Failing and restarting for a while: Degraded, naming the task, its pod and last error.
    let failing = |for_s: i64| TaskReport {
        failing_since_ms: Some(now().as_millisecond() - for_s * 1000),
        ..report(5, ReportedState::Restarting, "topic orders does not exist")
    };
    let tasks = [failing(75)];
    let s = status(&Inputs {
        tasks: &tasks,
        ..inputs(&pods, None)
    });
    assert_eq!(
        condition(&s, DEGRADED),
        (
            "True",
            "TaskFailing",
            "task 5 on c-2 has been failing and restarting for 75 s: topic orders does not exist"
        )
    );
    assert!(s.conditions.iter().all(|c| c.type_ != STALLED));
    // A restart or two just now is not a fault yet.
    let tasks = [failing(10)];
    let s = status(&Inputs {
        tasks: &tasks,
        ..inputs(&pods, None)
    });
    assert_eq!(condition(&s, DEGRADED).0, "False");

    let tasks = [report(3, ReportedState::Running, "")];
    let s = status(&Inputs {
        tasks: &tasks,
        ..inputs(&pods, None)
    });
    assert_eq!(condition(&s, DEGRADED).0, "False");
}

#[test]
fn an_invalid_spec_fails_with_every_reason_and_is_not_ready() {
    let errors = [
        SpecError {
            field: "spec.parallelism".into(),
            reason: "ParallelismAbovePartitions",
            message: "parallelism 8 is above the 6 partitions".into(),
        },
        SpecError {
            field: "spec.checkpoint.credentialsSecret".into(),
            reason: "SecretNotFound",
            message: "Secret s3 does not exist".into(),
        },
    ];
    let s = status(&Inputs {
        errors: &errors,
        revision: None,
        ..inputs(&[], None)
    });
    assert_eq!(
        condition(&s, SPEC_VALID),
        (
            "False",
            "ParallelismAbovePartitions",
            "spec.parallelism: parallelism 8 is above the 6 partitions; \
             spec.checkpoint.credentialsSecret: Secret s3 does not exist"
        )
    );
    assert_eq!(condition(&s, READY).0, "False");
    assert_eq!(condition(&s, DEGRADED).0, "True");
    assert_eq!(
        condition(&s, PROGRESSING).0,
        "False",
        "nothing will happen until the spec changes"
    );
    assert_eq!(s.phase, Some(Phase::Failed));
}

#[test]
fn a_suspended_job_waits_for_its_workers_to_stop_then_says_how_to_resume() {
    let pods = [pod("c-0", "r2", true)];
    let stopping = status(&Inputs {
        suspend: true,
        ..inputs(&pods, None)
    });
    assert_eq!(condition(&stopping, PROGRESSING).1, "Suspending");
    let stopped = status(&Inputs {
        suspend: true,
        ..inputs(&[], Some(&stopping))
    });
    assert_eq!(
        condition(&stopping, READY).0,
        "False",
        "workers still stopping"
    );
    assert_eq!(condition(&stopped, PROGRESSING).0, "False");
    let (value, reason, message) = condition(&stopped, READY);
    assert_eq!(
        (value, reason),
        ("True", "Suspended"),
        "the desired state is reached"
    );
    assert!(message.contains("set spec.suspend to false"), "{message}");
    assert_eq!(stopped.phase, Some(Phase::Suspended));
    assert_eq!(stopped.parallelism, Some(0));
}

/// kstatus' reading of a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus, which Flux's
/// health checks use): a generation not yet observed or `Reconciling` is InProgress,
/// `Stalled` is Failed, `Ready` False is InProgress, else Current.
fn kstatus(generation: i64, s: &StreamJobStatus) -> &'static str {
    let is = |t: &str, v: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == v);
    if s.observed_generation != Some(generation) {
        "InProgress"
    } else if is(super::STALLED, "True") {
        "Failed"
    } else if is(super::RECONCILING, "True") || is(READY, "False") {
        "InProgress"
    } else {
        "Current"
    }
}

#[test]
fn flux_reads_running_as_current_a_rollout_as_in_progress_and_a_bad_spec_as_failed() {
    let ready = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    assert_eq!(kstatus(7, &status(&inputs(&ready, None))), "Current");
    assert_eq!(
        kstatus(8, &status(&inputs(&ready, None))),
        "InProgress",
        "generation not observed yet"
    );
    let rolling = [pod("c-0", "r1", true)];
    assert_eq!(kstatus(7, &status(&inputs(&rolling, None))), "InProgress");
    let crashing = [
        pod("c-0", "r2", true),
        crash_looping("c-1", "r2"),
        pod("c-2", "r2", true),
    ];
    assert_eq!(kstatus(7, &status(&inputs(&crashing, None))), "Failed");
    let errors = [SpecError {
        field: "spec.parallelism".into(),
        reason: "ParallelismAbovePartitions",
        message: "too many".into(),
    }];
    let invalid = status(&Inputs {
        errors: &errors,
        revision: None,
        ..inputs(&[], None)
    });
    assert_eq!(kstatus(7, &invalid), "Failed", "not Progressing forever");
    let suspended = status(&Inputs {
        suspend: true,
        ..inputs(&[], None)
    });
    assert_eq!(kstatus(7, &suspended), "Current", "not Progressing forever");
    let held = status(&Inputs {
        held: Some((super::STATE_INCOMPATIBLE, "generation 7 would lose state")),
        ..inputs(&ready, None)
    });
    assert_eq!(
        kstatus(7, &held),
        "Failed",
        "a held change waits for a person"
    );
}

#[test]
fn a_held_change_is_valid_not_progressing_degraded_and_stalled_while_the_old_workers_run() {
    let ready = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let message =
        "generation 7 would lose state, which spec.upgrade.stateChanges: refuse does not allow";
    let s = status(&Inputs {
        held: Some((super::STATE_INCOMPATIBLE, message)),
        ..inputs(&ready, None)
    });
    assert_eq!(condition(&s, SPEC_VALID).0, "True");
    assert_eq!(
        condition(&s, PROGRESSING),
        ("False", "StateIncompatible", message)
    );
    assert_eq!(
        condition(&s, DEGRADED),
        ("True", "StateIncompatible", message)
    );
    assert_eq!(
        condition(&s, STALLED),
        ("True", "StateIncompatible", message)
    );
    assert_eq!(
        condition(&s, READY).0,
        "True",
        "the old workers run and are ready"
    );
    assert_eq!(s.phase, Some(Phase::Degraded));
    assert_eq!(s.observed_generation, Some(7));
    // Workers failing on the old spec stay what Degraded and Stalled say first; the held
    // change is named after it.
    let crashing = [
        pod("c-0", "r2", true),
        crash_looping("c-1", "r2"),
        pod("c-2", "r2", true),
    ];
    let failing = status(&Inputs {
        held: Some((super::STATE_INCOMPATIBLE, message)),
        ..inputs(&crashing, None)
    });
    let (status_, reason, text) = condition(&failing, DEGRADED);
    assert_eq!((status_, reason), ("True", "WorkersFailing"));
    assert!(
        text.contains("CrashLoopBackOff") && text.ends_with(&format!("; and {message}")),
        "{text}"
    );
    assert_eq!(condition(&failing, STALLED).1, "WorkersFailing");
    // (The crash-looping pod is not ready: the workers are still starting.)
    assert_eq!(condition(&failing, PROGRESSING).0, "True");
    // A rescale rolling while the change is held stays Progressing=True.
    let rescale = Classified {
        change: Change::Rescale { from: 2, to: 3 },
        ignored: vec![],
    };
    let rolling = [pod("c-0", "r1", true), pod("c-1", "r2", false)];
    let rescaling = status(&Inputs {
        held: Some((super::STATE_INCOMPATIBLE, message)),
        change: &rescale,
        ..inputs(&rolling, None)
    });
    let (status_, reason, _) = condition(&rescaling, PROGRESSING);
    assert_eq!((status_, reason), ("True", "Rescaling"));
    assert_eq!(condition(&rescaling, DEGRADED).1, "StateIncompatible");
    // A suspended job stays Suspended; the change it will hold at resume is Degraded.
    let suspended = status(&Inputs {
        held: Some((super::STATE_INCOMPATIBLE, message)),
        suspend: true,
        ..inputs(&[], None)
    });
    assert_eq!(suspended.phase, Some(Phase::Suspended));
    assert_eq!(
        condition(&suspended, DEGRADED),
        ("True", "StateIncompatible", message)
    );
}

#[test]
fn an_upgrade_awaiting_approval_is_progressing_and_reconciling_never_current() {
    let ready = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let message = "generation 7 is an upgrade waiting for approval";
    let s = status(&Inputs {
        held: Some((super::AWAITING_APPROVAL, message)),
        ..inputs(&ready, None)
    });
    assert_eq!(
        condition(&s, PROGRESSING),
        ("True", "AwaitingApproval", message)
    );
    assert_eq!(
        condition(&s, super::RECONCILING),
        ("True", "AwaitingApproval", message)
    );
    assert_eq!(condition(&s, DEGRADED).0, "False");
    assert!(!s.conditions.iter().any(|c| c.type_ == STALLED));
    assert_eq!(kstatus(7, &s), "InProgress", "waiting is not done");
}

#[test]
fn a_rollout_past_its_progress_deadline_is_stalled_until_it_completes() {
    let restart = Classified {
        change: Change::Restart {
            fields: vec!["image"],
        },
        ignored: vec![],
    };
    let starting = [
        pod("c-0", "r2", false),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let began = status(&Inputs {
        change: &restart,
        now: now() - SignedDuration::from_secs(660),
        ..inputs(&starting, None)
    });
    assert_eq!(condition(&began, PROGRESSING).1, "Restarting");
    // Within the deadline: still progressing.
    let within = status(&Inputs {
        now: now() - SignedDuration::from_secs(100),
        ..inputs(&starting, Some(&began))
    });
    assert_eq!(condition(&within, PROGRESSING).0, "True");
    assert_eq!(kstatus(7, &within), "InProgress");
    // 11 minutes in, a pod still not ready: past the 10-minute deadline.
    let late = status(&inputs(&starting, Some(&within)));
    let (status_, reason, message) = condition(&late, PROGRESSING);
    assert_eq!((status_, reason), ("False", "ProgressDeadlineExceeded"));
    assert!(
        message.contains("2 of 3 workers ready on revision r2"),
        "{message}"
    );
    assert!(
        message.contains("spec.progressDeadline (600 s)"),
        "{message}"
    );
    assert_eq!(condition(&late, DEGRADED).1, "ProgressDeadlineExceeded");
    assert_eq!(condition(&late, STALLED).1, "ProgressDeadlineExceeded");
    assert_eq!(late.phase, Some(Phase::Degraded));
    assert_eq!(kstatus(7, &late), "Failed", "Flux reads it as Failed");
    // It stays so while the rollout goes on, without a new transition each time...
    let still = status(&Inputs {
        now: now() + SignedDuration::from_secs(30),
        ..inputs(&starting, Some(&late))
    });
    assert_eq!(condition(&still, PROGRESSING).1, "ProgressDeadlineExceeded");
    assert_eq!(
        still
            .conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .map(|c| &c.last_transition_time),
        late.conditions
            .iter()
            .find(|c| c.type_ == PROGRESSING)
            .map(|c| &c.last_transition_time),
    );
    // ...and clears once every worker is ready.
    let ready = [
        pod("c-0", "r2", true),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    let done = status(&inputs(&ready, Some(&still)));
    assert_eq!(condition(&done, PROGRESSING).1, "RolloutComplete");
    let finished = super::rollout_finished(Some(&still), &done).expect("a completion event");
    assert_eq!(finished.seconds, 660.0, "counted from the rollout's start");
    assert_eq!(condition(&done, DEGRADED).0, "False");
    assert!(!done.conditions.iter().any(|c| c.type_ == STALLED));
    // A new generation starts a new clock.
    let next = status(&Inputs {
        generation: 8,
        change: &restart,
        ..inputs(&starting, Some(&late))
    });
    assert_eq!(
        condition(&next, PROGRESSING),
        ("True", "Restarting", "2 of 3 workers ready on revision r2")
    );
}

#[test]
fn a_new_generation_counts_its_deadline_from_its_own_start() {
    let restart = Classified {
        change: Change::Restart {
            fields: vec!["image"],
        },
        ignored: vec![],
    };
    let starting = [
        pod("c-0", "r2", false),
        pod("c-1", "r2", true),
        pod("c-2", "r2", true),
    ];
    // Generation 7's rollout began 9.5 minutes ago; generation 8 is applied now.
    let old = status(&Inputs {
        change: &restart,
        now: now() - SignedDuration::from_secs(570),
        ..inputs(&starting, None)
    });
    let applied = status(&Inputs {
        generation: 8,
        change: &restart,
        ..inputs(&starting, Some(&old))
    });
    let later = status(&Inputs {
        generation: 8,
        now: now() + SignedDuration::from_secs(120),
        ..inputs(&starting, Some(&applied))
    });
    assert_eq!(
        condition(&later, PROGRESSING).0,
        "True",
        "2 minutes into its own rollout"
    );
    // A held change counts no deadline.
    let held = status(&Inputs {
        generation: 8,
        held: Some((super::AWAITING_APPROVAL, "waiting")),
        now: now() + SignedDuration::from_secs(1200),
        ..inputs(&starting, Some(&later))
    });
    assert_ne!(condition(&held, DEGRADED).1, "ProgressDeadlineExceeded");
}

#[test]
fn partitions_added_to_the_input_are_reported_with_the_counts_until_the_job_reads_them() {
    let pods = [pod("j-0", "r2", true)];
    let seen = |live, read, rolled, added_from, adopt| PartitionsSeen {
        live,
        read,
        rolled,
        added_from,
        added_unread: Some(0),
        adopt,
        held_by: None,
    };
    let before = status(&Inputs {
        partitions: Some(seen(6, 6, Some(6), 6, false)),
        ..inputs(&pods, None)
    });
    assert_eq!(
        condition(&before, PARTITIONS_CHANGED),
        (
            "False",
            "AllRead",
            "the job reads all 6 partitions of each source topic"
        )
    );

    let added = status(&Inputs {
        partitions: Some(seen(8, 6, Some(6), 6, false)),
        ..inputs(&pods, Some(&before))
    });
    let (value, reason, message) = condition(&added, PARTITIONS_CHANGED);
    assert_eq!((value, reason), ("True", "PartitionsAdded"));
    assert!(
        message.starts_with(
            "the source topics have 8 partitions, the job reads 6: partitions 6–7 are not read"
        ) && message.contains("onNewPartitions: adopt"),
        "{message}"
    );
    assert_eq!(
        condition(
            &status(&Inputs {
                partitions: None,
                ..inputs(&pods, Some(&added))
            }),
            PARTITIONS_CHANGED
        )
        .1,
        "PartitionsAdded",
        "kept while the brokers do not answer"
    );

    let held = status(&Inputs {
        partitions: Some(seen(7, 6, Some(6), 6, true)),
        ..inputs(&pods, Some(&added))
    });
    let (value, reason, message) = condition(&held, PARTITIONS_CHANGED);
    assert_eq!((value, reason), ("True", "AdoptionHeld"));
    assert!(message.contains("partition 6 is not read"), "{message}");
    // Held by a spec that cannot be rolled out: that condition is named, not keyed state.
    let refused = status(&Inputs {
        partitions: Some(PartitionsSeen {
            held_by: Some((SPEC_VALID, "OutputPartitionsTooFew")),
            ..seen(7, 6, Some(6), 6, true)
        }),
        ..inputs(&pods, Some(&added))
    });
    let (_, reason, message) = condition(&refused, PARTITIONS_CHANGED);
    assert_eq!(reason, "AdoptionHeld");
    assert!(
        message.ends_with("is held by SpecValid: OutputPartitionsTooFew, see that condition"),
        "{message}"
    );

    let adopting = status(&Inputs {
        partitions: Some(seen(8, 8, Some(6), 6, true)),
        ..inputs(&pods, Some(&held))
    });
    assert_eq!(
        condition(&adopting, PARTITIONS_CHANGED),
        (
            "True",
            "Adopting",
            "rolling the job onto 8 partitions (from 6): partitions 6–7 start at their earliest \
             offset"
        )
    );
    // Rolled onto them, but one of their tasks has not checkpointed: not yet shown read.
    let rolled = status(&Inputs {
        partitions: Some(PartitionsSeen {
            added_unread: Some(1),
            ..seen(8, 8, Some(8), 6, true)
        }),
        ..inputs(&pods, Some(&adopting))
    });
    assert_eq!(
        condition(&rolled, PARTITIONS_CHANGED),
        (
            "True",
            "Adopting",
            "the job is rolled onto 8 partitions; 1 of the tasks of partitions 6–7 (added while \
             it ran, read from their earliest offset) have not checkpointed yet"
        )
    );
    let adopted = status(&Inputs {
        partitions: Some(seen(8, 8, Some(8), 6, true)),
        ..inputs(&pods, Some(&rolled))
    });
    assert_eq!(
        condition(&adopted, PARTITIONS_CHANGED),
        (
            "False",
            "AllRead",
            "the job reads all 8 partitions of each source topic; partitions 6–7 were added \
             while it ran and read from their earliest offset"
        )
    );
}

//! One reconcile of one StreamJob, and the controller that runs it. I/O at the edges:
//! [`observe`] → [`validate`] (pure) → [`build`] (pure) → apply in a fixed order with
//! server-side apply → roll pods of an old revision → [`status`] (pure) → write status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use sluice_core::checkpoint::savepoint::SavepointId;
use sluice_crds::v1alpha1::{
    OnNewPartitions, SavepointInfo, SavepointProgress, StreamJob, StreamJobStatus,
};
use tracing::{info, instrument, warn};

use crate::build::{
    self, BuildError, Children, FIELD_MANAGER, JOB_LABEL, REVISION_LABEL, Settings,
};
use crate::change::{self, Change, Current, classify};
use crate::metrics::Metrics;
use crate::observe::{ObserveError, Observed, Outside, observe};
use crate::plan;
use crate::savepoint;
use crate::status::{self, Inputs, SPEC_VALID};
use crate::validate::{SpecError, ValidJob, validate};
use sluice_core::checkpoint::descriptor::{Decision, Descriptor, TaskReport};
use sluice_core::upgrade::Plan;

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Operator settings that shape children.
    pub settings: Settings,
    /// Brokers and object store.
    pub outside: Arc<dyn Outside>,
    /// Who publishes Events.
    pub reporter: Reporter,
    /// Reconcile metrics.
    pub metrics: Arc<Metrics>,
    /// The tasks' decisions already published as Events.
    pub announcements: Announcements,
}

/// Which of the tasks' decisions (records given up by a rule of the job) were published as
/// Events, so that each is published once while the operator runs. A restarted operator
/// publishes again those of the last [`Announcements::RECENT`] (an Event repeated). A task's
/// report keeps its latest 16 decisions and is read every 15 s, so a burst of more than that
/// between two reads reaches Events only in part; the metrics count every one.
#[derive(Debug, Default)]
pub struct Announcements {
    /// Published decisions by id, with when they were made.
    published: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Announcements {
    /// How old a decision may be and still be published.
    pub const RECENT: Duration = Duration::from_secs(600);

    /// The decisions in `reports` of job `namespace/name` not published yet, now marked
    /// published.
    pub fn new_decisions(
        &self,
        namespace: &str,
        name: &str,
        reports: &[TaskReport],
    ) -> Vec<Decision> {
        let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
        let recent = i64::try_from(Self::RECENT.as_millis()).unwrap_or(i64::MAX);
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        published.retain(|_, at| now - *at <= recent);
        reports
            .iter()
            .flat_map(|r| r.decisions.iter().map(move |d| (r.task, d)))
            .filter(|(_, d)| now - d.at_ms <= recent)
            .filter(|(task, d)| {
                published
                    .insert(format!("{namespace}/{name}/{task}/{}", d.id), d.at_ms)
                    .is_none()
            })
            .map(|(_, d)| d.clone())
            .collect()
    }
}

/// Why a reconcile failed. Its [`category`](ReconcileError::category) is the Event reason
/// and the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the job's surroundings failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Building a child failed (a bug).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Writing a child failed.
    #[error("applying {what}: {source}")]
    Apply {
        /// The child.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status: {0}")]
    Status(kube::Error),
}

impl ReconcileError {
    /// Short CamelCase category.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Observe(_) => "ObserveFailed",
            ReconcileError::Build(_) => "BuildFailed",
            ReconcileError::Apply { .. } => "ApplyFailed",
            ReconcileError::Status(_) => "StatusFailed",
        }
    }
}

fn apply_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Apply { what, source }
}

/// Reconciles one job.
#[instrument(skip_all, fields(job = %job.name_any(), namespace = job.namespace().unwrap_or_default()))]
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_inner(&job, &ctx).await;
    ctx.metrics.observe(
        started.elapsed(),
        result.as_ref().err().map(ReconcileError::category),
    );
    result
}

async fn reconcile_inner(job: &StreamJob, ctx: &Context) -> Result<Action, ReconcileError> {
    if job.metadata.deletion_timestamp.is_some() {
        // Children go with their owner (garbage collection); checkpoints stay.
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let reference = job.object_ref(&());
    let publish = |type_: EventType, reason: &str, action: &str, note: String| {
        let recorder = &recorder;
        let reference = &reference;
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        async move {
            if let Err(e) = recorder.publish(&event, reference).await {
                warn!(error = %e, "cannot publish an event");
            }
        }
    };

    let Observed {
        facts,
        stateful_set,
        pods,
    } = observe(&ctx.client, &ctx.outside, job).await?;
    let validated = validate(job, &facts);
    let previous = job.status.as_ref();
    let generation = job.metadata.generation.unwrap_or_default();
    // A valid change is held when it would reset or drop state under `stateChanges: refuse`,
    // or is an upgrade waiting for approval: the workers go on with the spec rolled out last.
    // Scaling and suspending still apply (an HPA or KEDA must not wait for a person), as they
    // do not touch the steps' state.
    // What the change does to state is checked against each task's HEAD checkpoint, as each
    // worker will check it on restore (so a change to a suspended job, or partitions added
    // to the input, are seen too); against the spec rolled out last when the store cannot be
    // read. Read for every valid job whose partitions are known: `status.tasks` and
    // savepoints read them too.
    let mut heads = match &validated {
        Ok(valid) => match valid.partitions {
            // Fresh when a change, a savepoint or a restore is to be checked against them.
            Some(n) => {
                let fresh = classify(facts.applied.as_ref(), &job.spec).change != Change::None
                    || job.spec.restore_from.is_some()
                    || (job.spec.savepoint.as_ref()).is_some_and(|s| {
                        s.trigger.as_deref()
                            != previous
                                .and_then(|p| p.savepoint.as_ref())
                                .filter(|p| p.state != "Pending")
                                .map(|p| p.trigger.as_str())
                    });
                ctx.outside.heads(job, n, fresh).await
            }
            None => None,
        },
        _ => None,
    };
    // Tasks whose state does not come from `spec.restoreFrom` yet will restore the
    // savepoint: the check reads its descriptors for them, as their workers will.
    // A savepoint copies the tasks' own checkpoints.
    let own_heads = heads.clone();
    if let (Some(own), Some(id), Ok(valid)) = (&mut heads, &job.spec.restore_from, &validated)
        && let Ok(parsed) = id.parse::<SavepointId>()
        && !own.iter().all(|h| change::restored_from(h, id))
        && let Some(saved) = ctx
            .outside
            .savepoint_heads(job, &parsed, valid.partitions.unwrap_or(0))
            .await
    {
        change::restoring(own, saved, id);
    }
    let state = match (&validated, &facts.applied) {
        (Ok(valid), Some(applied)) => Some(change::state_plan(
            heads
                .as_deref()
                .map_or(Current::Applied(applied), Current::Heads),
            &valid.spec,
            valid.partitions.unwrap_or(0),
        )),
        _ => None,
    };
    let approved = job.annotations().get(change::APPROVE_ANNOTATION).cloned();
    let held = validated.as_ref().ok().and_then(|valid| {
        let applied = facts.applied.as_ref()?;
        let state = state.as_ref()?;
        let (reason, message) = match change::hold(state, &valid.spec, generation) {
            Some(message) => (status::STATE_INCOMPATIBLE, message),
            None if change::awaits_approval(
                Some(applied),
                &valid.spec,
                approved.as_deref(),
                generation,
            ) =>
            {
                let state = state.summary();
                (
                    status::AWAITING_APPROVAL,
                    format!(
                        "generation {generation} is an upgrade waiting for approval \
                             (spec.upgrade.approval: manual); it {state}, see status.plan. \
                             Approve it with `kubectl annotate streamjob/{name} \
                             {}={generation} --overwrite`, or revert it; the workers keep \
                             running the spec rolled out last",
                        change::APPROVE_ANNOTATION
                    ),
                )
            }
            None => return None,
        };
        Some((
            reason,
            message,
            sluice_crds::StreamJobSpec {
                parallelism: job.spec.parallelism,
                suspend: job.spec.suspend,
                ..applied.clone()
            },
        ))
    });
    let rendered = held.as_ref().map_or(&job.spec, |(_, _, applied)| applied);
    let classified = classify(facts.applied.as_ref(), rendered);
    // The plan of the change as applied (held or not), written before anything moves.
    let plan = match &validated {
        Ok(valid) => {
            let desired = classify(facts.applied.as_ref(), &job.spec);
            let partitions = valid.partitions.unwrap_or(0);
            let from = facts.applied.as_ref().map_or(0, |a| a.parallelism);
            let bytes: Vec<u64> = heads
                .iter()
                .flatten()
                .map(|h| h.as_ref().map_or(0, Descriptor::state_bytes))
                .collect();
            plan::plan(&plan::Inputs {
                generation,
                job: &name,
                change: &desired,
                state: state.as_ref(),
                held: held.as_ref().map(|(reason, _, _)| *reason),
                partitions,
                parallelism: (from, job.spec.parallelism),
                bytes: &bytes,
                adopting: valid
                    .rolled
                    .filter(|rolled| rolled.read < partitions)
                    .map(|rolled| (rolled.read, partitions)),
            })
        }
        Err(_) => None,
    };
    let plan = plan.or_else(|| previous.and_then(|s| s.plan.clone()));
    // A new job moves nothing: its plan is written with the rest of the status.
    let first = plan.as_ref().is_some_and(|p| p.action != "create");
    if first && plan != previous.and_then(|s| s.plan.clone()) {
        let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"plan": plan}})),
        )
        .await
        .map_err(ReconcileError::Status)?;
    }

    let (errors, revision, last_checkpoint, lag, tasks) = match &validated {
        Ok(valid) => {
            // A held change keeps the partitions rolled out last too.
            let valid = &ValidJob {
                spec: rendered.clone(),
                partitions: match (&held, valid.rolled) {
                    (Some(_), Some(rolled)) => Some(rolled.read),
                    _ => valid.partitions,
                },
                ..valid.clone()
            };
            if let (Some(read), Some(rolled)) = (valid.partitions, valid.rolled)
                && read > rolled.read
            {
                publish(
                    EventType::Normal,
                    "AdoptingPartitions",
                    "Roll",
                    format!(
                        "restarting every worker onto {read} partitions (from {}, \
                         spec.source.kafka.onNewPartitions: adopt): partitions {}–{} start at \
                         their earliest offset; the others resume from their checkpoints",
                        rolled.read,
                        rolled.read,
                        read - 1
                    ),
                )
                .await;
            }
            let valid = &ValidJob {
                rollout: build::rollout(
                    valid,
                    &ctx.settings,
                    stateful_set.as_ref(),
                    k8s_openapi::jiff::Timestamp::now().as_second(),
                )?,
                ..valid.clone()
            };
            let state = state.as_ref().map(Plan::summary);
            let children = build::children(valid, &ctx.settings)?;
            let revision = build::revision(valid, &ctx.settings)?;
            apply(&ctx.client, &namespace, &children).await?;
            match &classified.change {
                Change::Create => {
                    publish(
                        EventType::Normal,
                        "Created",
                        "Apply",
                        format!(
                            "created the StatefulSet with {} workers on revision {revision}",
                            valid.spec.parallelism
                        ),
                    )
                    .await;
                }
                Change::Rescale { from, to } => {
                    publish(EventType::Normal, "Rescaling", "Rescale", format!(
                        "restarting every worker: parallelism {from} → {to}; tasks move and restore from their checkpoints"
                    )).await;
                }
                Change::Restart { fields } => {
                    publish(
                        EventType::Normal,
                        "Restarting",
                        "Restart",
                        format!(
                            "restarting every worker from its last checkpoint: {} changed; the \
                             upgrade {}",
                            fields.join(", "),
                            state.as_deref().unwrap_or("keeps all state")
                        ),
                    )
                    .await;
                }
                Change::Suspend => {
                    publish(
                        EventType::Normal,
                        "Suspending",
                        "Suspend",
                        "stopping every worker after a final checkpoint; state is kept".into(),
                    )
                    .await;
                }
                Change::Resume => {
                    publish(
                        EventType::Normal,
                        "Resuming",
                        "Resume",
                        "starting the workers from their last checkpoints".into(),
                    )
                    .await;
                }
                Change::None => {}
            }
            if !classified.ignored.is_empty() {
                publish(EventType::Warning, "ChangeIgnored", "Apply", format!(
                    "{} changed, which applies to new volumes only: the StatefulSet keeps the claims it was created with; resize the PersistentVolumeClaims directly",
                    classified.ignored.join(", ")
                )).await;
            }
            let deleted = roll(&ctx.client, &namespace, &pods, &revision, valid.rollout).await?;
            if !deleted.is_empty() {
                publish(
                    EventType::Normal,
                    "DeletedPods",
                    "Roll",
                    format!(
                        "deleted {} of revision other than {revision} so they restart with it: {}",
                        if deleted.len() == 1 {
                            "1 pod".to_string()
                        } else {
                            format!("{} pods", deleted.len())
                        },
                        deleted.join(", ")
                    ),
                )
                .await;
            }
            if previous.and_then(|s| s.observed_generation) != job.metadata.generation {
                for orphan in remove_orphans(&ctx.client, valid, &children).await? {
                    publish(
                        EventType::Normal,
                        "DeletedOrphan",
                        "Delete",
                        format!("deleted {orphan}, which this job no longer needs"),
                    )
                    .await;
                }
            }
            let (last_checkpoint, lag, tasks) = match valid.partitions {
                Some(n) => (
                    ctx.outside.last_checkpoint(job, n).await,
                    ctx.outside.lag(job, n).await,
                    ctx.outside.task_reports(job, n).await,
                ),
                None => (None, None, Vec::new()),
            };
            (vec![], Some(revision), last_checkpoint, lag, tasks)
        }
        Err(errors) => (errors.clone(), None, None, None, Vec::new()),
    };
    // Kept as they were when the store cannot be read.
    let listed = match &validated {
        Ok(valid) if valid.partitions.is_some() && own_heads.is_some() => {
            Some(crate::tasks::tasks(
                valid.partitions.unwrap_or(0),
                own_heads.as_deref(),
                &tasks,
                lag.as_deref(),
            ))
        }
        _ => None,
    };
    let lag = lag.map(|l| l.iter().sum());
    for decision in ctx.announcements.new_decisions(&namespace, &name, &tasks) {
        publish(
            EventType::Warning,
            &decision.reason,
            "Process",
            decision.message,
        )
        .await;
    }

    if let Some((reason, message, _)) = &held {
        let announced = previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::PROGRESSING))
            .is_some_and(|c| c.reason == *reason && c.observed_generation == Some(generation));
        if !announced {
            let type_ = if *reason == status::STATE_INCOMPATIBLE {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(type_, reason, "Apply", message.clone()).await;
        }
    }
    let (savepoint, savepoints, saving) = savepoints(
        job,
        ctx,
        previous,
        validated.is_ok().then_some(own_heads.as_deref()),
        job.spec.suspend && pods.is_empty(),
        &publish,
    )
    .await;
    let inputs = Inputs {
        generation,
        held: held
            .as_ref()
            .map(|(reason, message, _)| (*reason, message.as_str())),
        plan: plan.as_ref(),
        parallelism: rendered.parallelism,
        suspend: rendered.suspend,
        checkpoint_interval: job.spec.checkpoint.interval.into(),
        progress_deadline: job.spec.progress_deadline.into(),
        previous,
        errors: &errors,
        change: &classified,
        revision: revision.as_deref(),
        pods: &pods,
        last_checkpoint,
        lag,
        tasks: &tasks,
        partitions: match &validated {
            Ok(valid) => partitions_seen(job, valid, held.as_ref(), own_heads.as_deref()),
            // The job stays on what it was rolled out onto; say why it does not adopt.
            Err(errors) => held_partitions(job, &facts, errors),
        },
        selector: build::selector_string(&name),
        now: k8s_openapi::jiff::Timestamp::now(),
    };
    let mut new = status::status(&inputs);
    let unread = |s: &StreamJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::PARTITIONS_CHANGED && c.status == "True")
            .filter(|c| c.reason != "Adopting")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = unread(&new)
        && previous.and_then(unread).map(|(r, _)| r) != Some(reason.clone())
    {
        publish(EventType::Warning, &reason, "Observe", message).await;
    }
    new.savepoint = savepoint;
    new.savepoints = savepoints;
    if let Some((tasks, totals)) = listed {
        new.tasks = tasks;
        new.task_totals = totals;
    }
    let was_valid = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == SPEC_VALID))
        .map(|c| c.status.clone());
    if !errors.is_empty() && was_valid.as_deref() != Some("False") {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        publish(EventType::Warning, errors[0].reason, "Validate", message).await;
    }
    if let Some(rollout) = status::rollout_finished(previous, &new) {
        info!(reason = %rollout.reason, seconds = rollout.seconds, "rollout complete");
        if rollout.reason == "Rescaling" {
            ctx.metrics.rescaled(&namespace, &name, rollout.seconds);
        }
        publish(
            EventType::Normal,
            "RolloutComplete",
            "Roll",
            rollout.message,
        )
        .await;
    }
    if previous != Some(&new) {
        let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "StreamJob",
            "status": new,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(ReconcileError::Status)?;
    }
    // Pod and StatefulSet changes trigger a reconcile through the watches; the requeue only
    // refreshes what is read from outside (lag, checkpoint age), and looks for the
    // checkpoints a pending savepoint waits for.
    let again = if saving {
        // About when the next checkpoints land.
        Duration::from(job.spec.checkpoint.interval)
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    } else {
        Duration::from_secs(30)
    };
    Ok(Action::requeue(again))
}

/// [`status::PartitionsSeen`] for a job whose spec is valid: what it is rolled out onto now
/// (what it was, for a held change), and how many added tasks have not checkpointed yet.
fn partitions_seen(
    job: &StreamJob,
    valid: &ValidJob,
    held: Option<&(&'static str, String, sluice_crds::StreamJobSpec)>,
    own_heads: Option<&[Option<Descriptor>]>,
) -> Option<status::PartitionsSeen> {
    let pinned = build::pinned_partitions(&ValidJob {
        partitions: match (held, valid.rolled) {
            (Some(_), Some(rolled)) => Some(rolled.read),
            _ => valid.partitions,
        },
        ..valid.clone()
    })?;
    Some(status::PartitionsSeen {
        live: valid.live_partitions?,
        read: pinned.read,
        rolled: valid.rolled.map(|r| r.read),
        added_from: pinned.added_from,
        // Heads read before a roll onto more tasks are fewer: the missing ones count as not
        // checkpointed.
        added_unread: own_heads.map(|heads| {
            (pinned.added_from..pinned.read)
                .filter(|&t| heads.get(t as usize).is_none_or(Option::is_none))
                .count() as u32
        }),
        adopt: job.spec.source.kafka.on_new_partitions == OnNewPartitions::Adopt,
        held_by: held.map(|(reason, _, _)| (status::PROGRESSING, *reason)),
    })
}

/// [`status::PartitionsSeen`] for a running job whose spec was refused: it reads what it was
/// rolled out onto, held by the first error. None for a job not rolled out yet, or when the
/// brokers did not answer (the condition is then kept as it was).
fn held_partitions(
    job: &StreamJob,
    facts: &crate::validate::Facts,
    errors: &[SpecError],
) -> Option<status::PartitionsSeen> {
    let rolled = facts.applied_partitions?;
    let counts = facts.source_partitions.as_ref().ok()?;
    let live = (job.spec.source.kafka.topics.iter())
        .filter_map(|t| counts.get(t).copied())
        .max()
        // Fewer than it reads (SourcePartitionsRemoved): SpecValid says it all.
        .filter(|live| *live >= rolled.read)?;
    Some(status::PartitionsSeen {
        live,
        read: rolled.read,
        rolled: Some(rolled.read),
        added_from: rolled.added_from,
        added_unread: None,
        adopt: job.spec.source.kafka.on_new_partitions == OnNewPartitions::Adopt,
        held_by: errors.first().map(|e| (SPEC_VALID, e.reason)),
    })
}

/// The savepoint of the latest trigger and the job's savepoints, after this reconcile's part
/// in them (see [`crate::savepoint`]): takes a savepoint once every task checkpointed after
/// its trigger, applies savepoint retention, and lists what the store holds. `heads` is None
/// for an invalid job (nothing is done), `Some(None)` when the store cannot be read. The
/// third value is true while a savepoint is pending.
async fn savepoints<F, Fut>(
    job: &StreamJob,
    ctx: &Context,
    previous: Option<&StreamJobStatus>,
    heads: Option<Option<&[Option<Descriptor>]>>,
    stopped: bool,
    publish: &F,
) -> (Option<SavepointProgress>, Vec<SavepointInfo>, bool)
where
    F: Fn(EventType, &str, &str, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut progress = previous.and_then(|s| s.savepoint.clone());
    let mut listed = previous.map(|s| s.savepoints.clone()).unwrap_or_default();
    let Some(heads) = heads else {
        return (progress, listed, false);
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut pending = false;
    match savepoint::next(&job.spec, progress.as_ref(), heads, stopped, now) {
        savepoint::Next::Idle => {}
        savepoint::Next::Request(requested) => {
            publish(
                EventType::Normal,
                "SavepointRequested",
                "Savepoint",
                format!(
                    "savepoint for trigger {:?}: waiting for every task's next checkpoint",
                    requested.trigger
                ),
            )
            .await;
            progress = Some(requested);
            pending = true;
        }
        savepoint::Next::Wait(waiting) => {
            progress = Some(waiting);
            pending = true;
        }
        savepoint::Next::Fail(failed) => {
            publish(
                EventType::Warning,
                "SavepointFailed",
                "Savepoint",
                failed.message.clone(),
            )
            .await;
            progress = Some(failed);
        }
        savepoint::Next::Take(descriptors) => {
            let current = progress.clone().expect("a savepoint to take was requested");
            // An earlier attempt may have completed it without recording it in status.
            let found = ctx.outside.savepoints(job).await;
            let taken = match found {
                Err(e) => Err(e),
                Ok(found) => match savepoint::already_taken(&current, &found) {
                    Some(earlier) => Ok(earlier.clone()),
                    None => {
                        ctx.outside
                            .take_savepoint(job, current.trigger.clone(), descriptors)
                            .await
                    }
                },
            };
            match taken {
                Ok(taken) => {
                    let done = savepoint::taken(&current, &taken);
                    info!(savepoint = %taken.id, trigger = %current.trigger, "took a savepoint");
                    publish(
                        EventType::Normal,
                        "SavepointTaken",
                        "Savepoint",
                        done.message.clone(),
                    )
                    .await;
                    progress = Some(done);
                }
                Err(e) => {
                    // Retention may have deleted a checkpoint being copied: the next try
                    // copies the newer HEADs.
                    warn!(error = %e, "taking a savepoint failed; trying again");
                    progress = Some(SavepointProgress {
                        message: format!(
                            "copying the tasks' checkpoints failed, trying again: {e}"
                        ),
                        ..current
                    });
                    pending = true;
                }
            }
        }
    }
    if job.spec.savepoint.is_some() || !listed.is_empty() {
        match ctx.outside.savepoints(job).await {
            Ok(found) => {
                let retain = job.spec.savepoint.as_ref().map_or(10, |s| s.retain);
                let this = (job.namespace().unwrap_or_default(), job.name_any());
                let numbers: Vec<u64> = found.iter().map(|(n, _)| *n).collect();
                let keep = usize::try_from(retain).unwrap_or(1);
                let mut expired = savepoint::expired(&numbers, keep, &[]);
                if !expired.is_empty() {
                    // Spared: the savepoints that jobs of this namespace restore from (this
                    // one included); when they cannot be listed, nothing is deleted.
                    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &this.0);
                    match api.list(&ListParams::default()).await {
                        Ok(jobs) => {
                            let protected: Vec<u64> = (jobs.items.iter())
                                .filter_map(|j| j.spec.restore_from.as_deref()?.parse().ok())
                                .filter(|id: &SavepointId| {
                                    (&id.namespace, &id.job) == (&this.0, &this.1)
                                })
                                .map(|id| id.n)
                                .collect();
                            expired = savepoint::expired(&numbers, keep, &protected);
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot list the jobs that may restore from a savepoint; deleting none");
                            expired.clear();
                        }
                    }
                }
                let mut deleted = Vec::new();
                for n in expired {
                    match ctx.outside.delete_savepoint(job, n).await {
                        Ok(()) => {
                            publish(
                                EventType::Normal,
                                "SavepointDeleted",
                                "Savepoint",
                                format!(
                                    "deleted savepoint {}/{}/{n}: spec.savepoint.retain: {retain} keeps the newest {retain}",
                                    this.0, this.1
                                ),
                            )
                            .await;
                            deleted.push(n);
                        }
                        Err(e) => warn!(savepoint = n, error = %e, "cannot delete a savepoint"),
                    }
                }
                listed = found
                    .iter()
                    .filter(|(n, _)| !deleted.contains(n))
                    .map(|(_, s)| savepoint::info(s))
                    .collect();
            }
            Err(e) => warn!(error = %e, "cannot list the job's savepoints"),
        }
    }
    (progress, listed, pending)
}

/// Applies the children in a fixed order: config first, the StatefulSet that uses it last.
async fn apply(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<(), ReconcileError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = |m: &kube::api::ObjectMeta| m.name.clone().unwrap_or_default();
    let cm = &children.config_map;
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(&name(&cm.metadata), &params, &Patch::Apply(cm))
        .await
        .map_err(apply_error(format!("ConfigMap {}", name(&cm.metadata))))?;
    for service in [&children.service, &children.metrics_service] {
        Api::<Service>::namespaced(client.clone(), namespace)
            .patch(&name(&service.metadata), &params, &Patch::Apply(service))
            .await
            .map_err(apply_error(format!("Service {}", name(&service.metadata))))?;
    }
    let pdb = &children.pdb;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
        .patch(&name(&pdb.metadata), &params, &Patch::Apply(pdb))
        .await
        .map_err(apply_error(format!(
            "PodDisruptionBudget {}",
            name(&pdb.metadata)
        )))?;
    let sts = &children.stateful_set;
    Api::<StatefulSet>::namespaced(client.clone(), namespace)
        .patch(&name(&sts.metadata), &params, &Patch::Apply(sts))
        .await
        .map_err(apply_error(format!("StatefulSet {}", name(&sts.metadata))))?;
    Ok(())
}

/// Deletes the pods of another revision (the StatefulSet uses `OnDelete`, so the operator
/// decides when workers restart); the StatefulSet recreates them with the current one.
async fn roll(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    revision: &str,
    rollout: i64,
) -> Result<Vec<String>, ReconcileError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut deleted = Vec::new();
    for pod in pods {
        // A pod of the current revision but an older rollout (a roll interrupted, then
        // reverted) would leave tasks to their newer owners for ever: it is rolled too.
        let rolled = pod
            .labels()
            .get(build::ROLLOUT_LABEL)
            .is_none_or(|r| *r == rollout.to_string());
        let current =
            pod.labels().get(REVISION_LABEL).map(String::as_str) == Some(revision) && rolled;
        if current || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted.push(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(apply_error(format!("deleting Pod {name}"))(e)),
        }
    }
    Ok(deleted)
}

/// Deletes children of this job (by label and owner) that the desired set does not contain.
async fn remove_orphans(
    client: &Client,
    job: &ValidJob,
    children: &Children,
) -> Result<Vec<String>, ReconcileError> {
    let selector = format!("{JOB_LABEL}={}", job.name);
    let wanted = |kind: &str, name: &str| match kind {
        "ConfigMap" => children.config_map.metadata.name.as_deref() == Some(name),
        "Service" => [&children.service, &children.metrics_service]
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(name)),
        "PodDisruptionBudget" => children.pdb.metadata.name.as_deref() == Some(name),
        _ => children.stateful_set.metadata.name.as_deref() == Some(name),
    };
    let mut deleted = Vec::new();
    macro_rules! sweep {
        ($kind:ty, $label:literal) => {{
            let api: Api<$kind> = Api::namespaced(client.clone(), &job.namespace);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(apply_error(concat!("listing ", $label, "s")))?;
            for object in list.items {
                let name = object.name_any();
                let ours = object.owner_references().iter().any(|o| o.uid == job.uid);
                if ours && !wanted($label, &name) {
                    api.delete(&name, &DeleteParams::default())
                        .await
                        .map_err(apply_error(format!("deleting {} {name}", $label)))?;
                    deleted.push(format!("{} {name}", $label));
                }
            }
        }};
    }
    sweep!(ConfigMap, "ConfigMap");
    sweep!(Service, "Service");
    sweep!(PodDisruptionBudget, "PodDisruptionBudget");
    sweep!(StatefulSet, "StatefulSet");
    Ok(deleted)
}

/// Requeues a failed reconcile.
pub fn error_policy(job: Arc<StreamJob>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    warn!(job = %job.name_any(), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller for `namespaces` (all namespaces when empty) until shutdown.
pub async fn run(ctx: Arc<Context>, namespaces: Vec<String>) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|scope| {
        let client = ctx.client.clone();
        let api = |client: Client| -> (Api<StreamJob>, Api<StatefulSet>, Api<Pod>) {
            match &scope {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client, ns),
                ),
                None => (
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client),
                ),
            }
        };
        let (jobs, sets, pods) = api(client);
        let managed = watcher::Config::default()
            .labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
        Controller::new(jobs, watcher::Config::default())
            // Each reconcile asks the brokers and the object store: bound how many run at once.
            .with_config(kube::runtime::controller::Config::default().concurrency(16))
            .owns(sets, managed.clone())
            .watches(pods, managed, |pod: Pod| {
                let job = pod.labels().get(JOB_LABEL)?.clone();
                Some(ObjectRef::<StreamJob>::new(&job).within(&pod.namespace()?))
            })
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    warn!(error = %e, "controller");
                }
            })
    });
    futures::future::join_all(controllers).await;
}

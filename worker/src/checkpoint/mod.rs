//! Checkpoints of one task: take the task over (fence the previous owner), restore its state,
//! and commit new checkpoints (upload → descriptor → HEAD → retention). Object-store and file
//! I/O; every decision is made by the pure functions in [`plan`].
//!
//! On the volume, a task keeps `checkpoints/<id>/` (a RocksDB checkpoint, hard links) and
//! `checkpoints/<id>.committed` once HEAD pointed at it with this owner's epoch. Only a
//! committed local checkpoint is used for local recovery: an uncommitted one may hold the
//! state of an attempt that lost its task. The marker names the store, the task's path in it
//! and the descriptor's hash, and the local files must have the sizes the descriptor gives
//! (the small metadata files also its hashes): a volume kept across a change of checkpoint
//! storage, or one a crash left half-written, downloads instead. (Markers written before they
//! named anything are empty: such a volume downloads once.)
//!
//! A checkpoint HEAD names whose descriptor is unreadable or whose files do not match it (a
//! power loss on `file://` before fsync was used, a damaged object) is not restored: the task
//! falls back to the newest older checkpoint still retained, and says so in a warning and the
//! `sluice_checkpoint_fallbacks` metric. Records after that checkpoint are read again.

pub mod plan;
pub use sluice_core::checkpoint::{descriptor, layout, savepoint, store};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::assignment::TaskId;
use descriptor::{
    CheckpointId, Claim, ContentHash, DESCRIPTOR_FORMAT, Descriptor, Epoch, Head, StateFile,
};
use layout::{FileKind, TaskLayout};
use plan::RestorePlan;
use savepoint::{SAVEPOINT_FORMAT, SavepointId};
use sluice_core::upgrade::{self, Plan, StepState};
use sluice_crds::v1alpha1::StateChanges;
use store::{CheckpointStore, HeadVersion, StoreError};

/// Failures of checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another owner took the task: stop it at once and commit nothing more.
    #[error("task {task} was taken over by another owner (our epoch {epoch})")]
    Fenced { task: TaskId, epoch: Epoch },
    /// The task's owner runs a newer rollout of the job than this worker: this worker is
    /// stale (an old pod restarted during a roll) and must not take the task.
    #[error(
        "task {task} is owned by {owner}, which runs rollout {theirs} of the job; this worker \
         runs rollout {ours}: it is stale (an old pod of a roll in progress) and leaves the \
         task alone until it is replaced"
    )]
    Stale {
        task: TaskId,
        owner: String,
        theirs: u64,
        ours: u64,
    },
    /// The checkpoint's state cannot be honoured by this job under its
    /// `spec.upgrade.stateChanges` policy: restoring it would reset or drop state. The task
    /// stops and says why (permanent: a restart gives the same answer).
    #[error("{message}")]
    StateIncompatible {
        task: TaskId,
        id: CheckpointId,
        message: String,
    },
    /// `spec.restoreFrom` names a savepoint this task cannot start from (missing, incomplete,
    /// without this task, or unreadable). Permanent: the job must name another.
    #[error("task {task}: spec.restoreFrom {id}: {reason}")]
    SavepointUnusable {
        task: TaskId,
        id: String,
        reason: String,
    },
    /// A checkpoint cannot be restored: its descriptor is unreadable or its files do not match
    /// it. The task falls back to an older one.
    #[error("checkpoint {id} of task {task} cannot be restored: {reason}")]
    Unrestorable {
        task: TaskId,
        id: CheckpointId,
        reason: String,
    },
    /// Neither HEAD's checkpoint nor any older one retained can be restored.
    #[error(
        "task {task}: no checkpoint can be restored (HEAD names {head}; tried {tried:?}); \
         the task will not start from empty state on its own: restore the checkpoint files, or \
         delete the task's HEAD, then its pod, to start it over"
    )]
    NothingRestorable {
        task: TaskId,
        head: CheckpointId,
        tried: Vec<CheckpointId>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state backend failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The epochs a process wrote, or tried to write, into one task's HEAD, and the HEAD it read
/// before its latest try. A task that fails and restarts takes the task back only when HEAD
/// still carries one of those epochs under this owner's name, or is still exactly what it read
/// before that try (its write never landed and no one wrote since); an empty one (a new
/// process) takes it over unconditionally.
#[derive(Clone, Debug, Default)]
pub struct Held {
    epochs: Vec<Epoch>,
    /// HEAD's (epoch, owner) read before the latest try; `None` inside: HEAD was absent.
    before_latest: Option<Option<(Epoch, String)>>,
}

impl Held {
    /// The newest epoch tried, if any.
    pub fn latest(&self) -> Option<Epoch> {
        self.epochs.iter().max().copied()
    }

    /// Records a try to write `epoch` over `seen`, the HEAD read just before.
    fn attempted(&mut self, epoch: Epoch, seen: Option<&Head>) {
        if !self.epochs.contains(&epoch) {
            self.epochs.push(epoch);
        }
        self.before_latest = Some(seen.map(|h| (h.epoch, h.owner.clone())));
    }

    fn holds(&self, head: &Head, owner: &str) -> bool {
        head.owner == owner && self.epochs.contains(&head.epoch)
    }

    /// Whether the task was taken from this process after it tried to hold it: HEAD carries
    /// none of its epochs, and is not what it read before its latest try. Anything else
    /// written since (another owner's epoch, whatever its number, or HEAD deleted) means
    /// someone else acted on the task; not comparing epoch numbers keeps that true when HEAD
    /// was deleted and numbering started over. A HEAD unchanged since that try means the
    /// write never landed, as when the store refused the takeover: the task was never lost.
    fn lost_to(&self, current: Option<&Head>, owner: &str) -> bool {
        if self.epochs.is_empty() {
            return false;
        }
        if current.is_some_and(|head| self.holds(head, owner)) {
            return false;
        }
        let now = current.map(|h| (h.epoch, h.owner.clone()));
        self.before_latest.as_ref() != Some(&now)
    }
}

/// A checkpoint the task took locally, with what its descriptor records.
#[derive(Clone, Debug)]
pub struct Taken {
    /// Its id; the local checkpoint is in [`TaskCheckpoints::local_dir`].
    pub id: CheckpointId,
    /// Per source topic: the next offset to read.
    pub source_offsets: BTreeMap<String, i64>,
    /// The task's watermark, if any.
    pub watermark_ms: Option<i64>,
    /// Records consumed in total.
    pub records_in: u64,
    /// Exactly-once: the sink's `transactional.id`.
    pub transactional_id: Option<String>,
}

/// What a task restored from.
#[derive(Clone, Debug)]
pub struct Restored {
    /// How the state was obtained.
    pub plan: RestorePlan,
    /// The checkpoint restored, if any.
    pub descriptor: Option<Descriptor>,
    /// Checkpoints newer than the one restored that could not be restored, newest first.
    pub skipped: Vec<CheckpointId>,
    /// What the job does to the restored state (None: nothing was restored). The policy
    /// allows it: the task applies it to the state before it runs.
    pub upgrade: Option<Plan>,
}

/// What writes a task's state: recorded in every descriptor, and checked against the one a
/// restore reads (see [`sluice_core::upgrade`]).
#[derive(Clone, Debug)]
pub struct Writer {
    /// The steps' and format's fingerprint (for checkpoints written before signatures).
    pub fingerprint: String,
    /// The state signature of each stateful step.
    pub signatures: Vec<StepState>,
    /// What the job allows an edit to do to state.
    pub policy: StateChanges,
    /// The savepoint the job starts from (`spec.restoreFrom`).
    pub restore_from: Option<String>,
}

impl Writer {
    /// The writer of `job`'s state, for a job of `tasks` tasks.
    pub fn of(job: &sluice_core::job::Job, tasks: u32) -> Self {
        Self {
            fingerprint: job.pipeline_fingerprint(),
            signatures: upgrade::signatures(&job.spec, tasks),
            policy: job
                .spec
                .upgrade
                .as_ref()
                .map(|u| u.state_changes)
                .unwrap_or_default(),
            restore_from: job.spec.restore_from.clone(),
        }
    }

    /// What this writer does to the state `descriptor` holds.
    pub fn plan(&self, descriptor: &Descriptor) -> Plan {
        upgrade::check(
            upgrade::Old::of(descriptor),
            &self.signatures,
            &self.fingerprint,
        )
    }
}

/// What `<id>.committed` on the volume says: which store, task and descriptor the local
/// checkpoint `<id>/` belongs to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalMarker {
    store: String,
    head: String,
    checkpoint: CheckpointId,
    descriptor: ContentHash,
}

/// The checkpoints of one task, owned by this worker at `epoch`.
pub struct TaskCheckpoints {
    store: CheckpointStore,
    layout: TaskLayout,
    task: TaskId,
    epoch: Epoch,
    head: Head,
    head_version: HeadVersion,
    /// The checkpoint HEAD points at, once known.
    committed: Option<Descriptor>,
    next_id: CheckpointId,
    retain: usize,
    /// `<task dir>/checkpoints` on the volume.
    local: PathBuf,
    /// Hashes of SSTs already hashed: SSTs are immutable, so name → hash holds.
    sst_hashes: HashMap<String, (ContentHash, u64)>,
    /// The savepoint the state was started from, recorded in every descriptor.
    restored_from: Option<String>,
}

impl TaskCheckpoints {
    /// Takes task `task` over: bumps the epoch in HEAD with a conditional write, which fences
    /// every earlier owner. `local` is the task's checkpoint directory on the volume. When
    /// `held` names epochs this process wrote before (a restart after a failure), the takeover
    /// happens only if HEAD still carries one of them under this owner's name: otherwise
    /// another owner took the task meanwhile and [`CheckpointError::Fenced`] says so. Every
    /// epoch it tries to write is added to `held` first, so a write that landed without an
    /// answer still counts as this process's.
    pub async fn take_over(
        store: CheckpointStore,
        layout: TaskLayout,
        task: TaskId,
        claim: Claim<'_>,
        retain: usize,
        local: PathBuf,
        held: &mut Held,
    ) -> Result<Self, CheckpointError> {
        let owner = claim.owner;
        std::fs::create_dir_all(&local).map_err(io(&local))?;
        // What this process held before this call; the epochs this call tries are judged by
        // reading HEAD again after each write, not by this check.
        let prior = held.clone();
        let mut attempts = 0;
        let (head, head_version) = 'taken: loop {
            attempts += 1;
            let current = store.read_head(&layout).await?;
            if let Some((h, _)) = &current
                && h.rollout > claim.rollout
            {
                return Err(CheckpointError::Stale {
                    task,
                    owner: h.owner.clone(),
                    theirs: h.rollout,
                    ours: claim.rollout,
                });
            }
            if let Some(latest) = prior.latest()
                && prior.lost_to(current.as_ref().map(|(h, _)| h), owner)
            {
                return Err(CheckpointError::Fenced {
                    task,
                    epoch: latest,
                });
            }
            let head = Head {
                epoch: Epoch(current.as_ref().map_or(0, |(h, _)| h.epoch.0) + 1),
                owner: owner.to_string(),
                checkpoint: current.as_ref().and_then(|(h, _)| h.checkpoint),
                rollout: claim.rollout,
            };
            held.attempted(head.epoch, current.as_ref().map(|(h, _)| h));
            let error = match store
                .write_head(&layout, &head, current.as_ref().map(|(_, v)| v))
                .await
            {
                Ok(version) => break (head, version),
                Err(e) => e,
            };
            // The write may have landed all the same: only HEAD tells.
            let Ok(found) = store.read_head(&layout).await else {
                return Err(error.into());
            };
            let outcome = plan::head_write_outcome(
                &head,
                current.as_ref().map(|(h, _)| h),
                found.as_ref().map(|(h, _)| h),
            );
            match (outcome, found) {
                (plan::HeadWrite::Landed, Some((_, version))) => {
                    info!(task, epoch = %head.epoch, error = %error, "a HEAD write answered with an error had landed; keeping it");
                    break 'taken (head, version);
                }
                _ if attempts < 10 && matches!(error, StoreError::Conflict { .. }) => {
                    debug!(task, attempts, "HEAD changed during takeover; retrying");
                }
                _ => return Err(error.into()),
            }
        };
        let present = store.list_checkpoints(&layout).await?;
        let next_id = plan::next_checkpoint_id(head.checkpoint, &present);
        info!(task, epoch = %head.epoch, checkpoint = ?head.checkpoint.map(|c| c.0), "took task over");
        Ok(Self {
            store,
            layout,
            task,
            epoch: head.epoch,
            head,
            head_version,
            committed: None,
            next_id,
            retain: retain.max(1),
            local,
            sst_hashes: HashMap::new(),
            restored_from: None,
        })
    }

    /// The epoch this worker holds the task at.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The id the next checkpoint will have; local checkpoints are created under it.
    pub fn next_id(&self) -> CheckpointId {
        self.next_id
    }

    /// Where the local checkpoint `id` lives on the volume.
    pub fn local_dir(&self, id: CheckpointId) -> PathBuf {
        local_dir(&self.local, id)
    }

    fn committed_marker(&self, id: CheckpointId) -> PathBuf {
        self.local.join(format!("{}.committed", id.0))
    }

    /// Restores HEAD's checkpoint into the live directory `live` (from the volume when it
    /// holds that committed checkpoint, otherwise from the store), after checking it was
    /// written by the same pipeline. Other local checkpoints are removed. When HEAD's
    /// checkpoint cannot be restored, the newest older one that can is (see the module doc).
    pub async fn restore(
        &mut self,
        live: &Path,
        writer: &Writer,
    ) -> Result<Restored, CheckpointError> {
        if let Some(savepoint) = &writer.restore_from {
            // Whether HEAD's state came from the savepoint. An unreadable or missing HEAD
            // descriptor goes to the fallback below, which takes only checkpoints that came
            // from it, else the savepoint; any other error is the store's, tried again.
            let restored = match self.head.checkpoint {
                Some(id) => match self.store.read_descriptor(&self.layout, id).await {
                    Ok(d) => d.restored_from.as_ref() == Some(savepoint),
                    Err(
                        StoreError::Corrupt { .. }
                        | StoreError::Store(object_store::Error::NotFound { .. }),
                    ) => true,
                    Err(e) => return Err(e.into()),
                },
                None => false,
            };
            if !restored {
                return self.restore_savepoint(savepoint, live, writer).await;
            }
        }
        let Some(head) = self.head.checkpoint else {
            self.remove_local_checkpoints_except(None)?;
            if live.exists() {
                std::fs::remove_dir_all(live).map_err(io(live))?;
            }
            info!(task = self.task, plan = ?RestorePlan::Fresh, "restored task state");
            self.committed = None;
            return Ok(Restored {
                plan: RestorePlan::Fresh,
                descriptor: None,
                skipped: Vec::new(),
                upgrade: None,
            });
        };
        let present = self.store.list_checkpoints(&self.layout).await?;
        let older = present.iter().rev().copied().filter(|id| *id < head);
        let mut skipped = Vec::new();
        for id in std::iter::once(head).chain(older) {
            match self.restore_checkpoint(id, live, writer).await {
                Ok((plan, descriptor, upgrade)) => {
                    if !skipped.is_empty() {
                        warn!(task = self.task, checkpoint = id.0, head = head.0, skipped = ?skipped, "fell back to an older checkpoint: newer ones cannot be restored; records after it are read again");
                    }
                    info!(task = self.task, plan = ?plan, state = %upgrade.summary(), "restored task state");
                    self.restored_from = descriptor.restored_from.clone();
                    self.committed = Some(descriptor.clone());
                    return Ok(Restored {
                        plan,
                        descriptor: Some(descriptor),
                        skipped,
                        upgrade: Some(upgrade),
                    });
                }
                Err(e @ CheckpointError::Unrestorable { .. }) => {
                    warn!(task = self.task, checkpoint = id.0, error = %e, "checkpoint cannot be restored; trying the one before it");
                    skipped.push(id);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(savepoint) = &writer.restore_from {
            warn!(task = self.task, head = head.0, skipped = ?skipped, savepoint = %savepoint, "no checkpoint restored from spec.restoreFrom can be restored; restoring the savepoint again");
            return self.restore_savepoint(savepoint, live, writer).await;
        }
        Err(CheckpointError::NothingRestorable {
            task: self.task,
            head,
            tried: skipped,
        })
    }

    /// Restores this task's checkpoint in savepoint `id` into `live`, downloaded from the
    /// savepoint's own copy. The next checkpoint is the first of a new chain: it uploads every
    /// file to the task's own layout (nothing is shared with the savepoint) and, as every one
    /// after it, records the savepoint it came from.
    async fn restore_savepoint(
        &mut self,
        id: &str,
        live: &Path,
        writer: &Writer,
    ) -> Result<Restored, CheckpointError> {
        let unusable = |reason: String| CheckpointError::SavepointUnusable {
            task: self.task,
            id: id.to_string(),
            reason,
        };
        let parsed: SavepointId = id.parse().map_err(unusable)?;
        let layout = parsed.layout(self.store.prefix());
        let manifest = match self.store.read_savepoint(&layout).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(unusable(format!(
                    "there is no complete savepoint at {} (it was deleted, never completed, or                      is in another checkpoint storage); name one that status.savepoints lists,                      or remove spec.restoreFrom",
                    layout.manifest()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if manifest.format != SAVEPOINT_FORMAT {
            return Err(unusable(format!(
                "its manifest has format {}, this build reads {SAVEPOINT_FORMAT}",
                manifest.format
            )));
        }
        let Some(entry) = manifest.task(self.task) else {
            return Err(unusable(format!(
                "it holds {} tasks and not task {}: the savepoint's job read an input with                  fewer partitions",
                manifest.tasks.len(),
                self.task
            )));
        };
        let task_layout = layout.task(self.task);
        let descriptor = match self
            .store
            .read_descriptor(&task_layout, entry.checkpoint)
            .await
        {
            Ok(d) => d,
            Err(StoreError::Store(object_store::Error::NotFound { .. })) => {
                return Err(unusable(format!(
                    "its descriptor {} is missing",
                    task_layout.descriptor(entry.checkpoint)
                )));
            }
            Err(StoreError::Corrupt { path, message }) => {
                return Err(unusable(format!("{path}: {message}")));
            }
            Err(e) => return Err(e.into()),
        };
        if descriptor.task != self.task || descriptor.id != entry.checkpoint {
            return Err(unusable(format!(
                "its descriptor for task {} is of checkpoint {} of task {}",
                self.task, descriptor.id, descriptor.task
            )));
        }
        let upgrade = writer.plan(&descriptor);
        if !upgrade.allowed(writer.policy) {
            return Err(CheckpointError::StateIncompatible {
                task: self.task,
                id: descriptor.id,
                message: upgrade.refusal(&format!("task {}: restoring savepoint {id}", self.task)),
            });
        }
        // Nothing on the volume belongs to the new chain.
        self.remove_local_checkpoints_except(None)?;
        let partial = self.local.join("savepoint.download");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        for file in &descriptor.files {
            let path = task_layout.file(&file.hash, FileKind::of(&file.name));
            match self
                .store
                .get_file(&path, &partial.join(&file.name), file.size, &file.hash)
                .await
            {
                Ok(()) => {}
                Err(StoreError::Store(object_store::Error::NotFound { .. })) => {
                    return Err(unusable(format!("its file {path} is missing")));
                }
                Err(StoreError::Corrupt { path, message }) => {
                    return Err(unusable(format!("{path}: {message}")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        crate::state::live_dir_from_checkpoint(&partial, live)?;
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        self.sst_hashes.clear();
        self.committed = None;
        self.restored_from = Some(id.to_string());
        info!(task = self.task, savepoint = id, checkpoint = descriptor.id.0, offsets = ?descriptor.source_offsets, state = %upgrade.summary(), "restored task state from a savepoint");
        Ok(Restored {
            plan: RestorePlan::Savepoint(descriptor.id),
            descriptor: Some(descriptor),
            skipped: Vec::new(),
            upgrade: Some(upgrade),
        })
    }

    /// Restores checkpoint `id` into `live`: from the volume when its marker and files match
    /// the descriptor, else downloaded and checked. [`CheckpointError::Unrestorable`] when the
    /// descriptor or a file is unreadable or does not match;
    /// [`CheckpointError::StateIncompatible`] (before anything is downloaded) when the job's
    /// policy does not allow what it would do to the state.
    async fn restore_checkpoint(
        &mut self,
        id: CheckpointId,
        live: &Path,
        writer: &Writer,
    ) -> Result<(RestorePlan, Descriptor, Plan), CheckpointError> {
        let unrestorable = |reason: String| CheckpointError::Unrestorable {
            task: self.task,
            id,
            reason,
        };
        let descriptor = match self.store.read_descriptor(&self.layout, id).await {
            Ok(d) => d,
            Err(StoreError::Corrupt { message, .. }) => {
                return Err(unrestorable(format!(
                    "its descriptor is unreadable: {message}"
                )));
            }
            Err(StoreError::Store(object_store::Error::NotFound { .. })) => {
                return Err(unrestorable("its descriptor is missing".into()));
            }
            Err(e) => return Err(e.into()),
        };
        if descriptor.id != id || descriptor.task != self.task {
            return Err(unrestorable(format!(
                "its descriptor is of checkpoint {} of task {}",
                descriptor.id, descriptor.task
            )));
        }
        if let Some(savepoint) = &writer.restore_from
            && descriptor.restored_from.as_ref() != Some(savepoint)
        {
            // Older than the job's savepoint: restoring it would undo the rewind.
            return Err(unrestorable(format!(
                "its state does not come from spec.restoreFrom {savepoint}"
            )));
        }
        let upgrade = writer.plan(&descriptor);
        if !upgrade.allowed(writer.policy) {
            return Err(CheckpointError::StateIncompatible {
                task: self.task,
                id,
                message: upgrade.refusal(&format!("task {}: restoring checkpoint {id}", self.task)),
            });
        }
        let on_volume: Vec<CheckpointId> = self
            .local_matches(&descriptor)
            .then_some(id)
            .into_iter()
            .collect();
        let plan = plan::restore_plan(
            Some(&Head {
                checkpoint: Some(id),
                ..self.head.clone()
            }),
            &on_volume,
        );
        self.remove_local_checkpoints_except(on_volume.first().copied())?;
        if matches!(plan, RestorePlan::Download(_)) {
            match self.download(&descriptor).await {
                Ok(()) => {}
                Err(CheckpointError::Store(StoreError::Corrupt { path, message })) => {
                    return Err(unrestorable(format!("{path}: {message}")));
                }
                Err(CheckpointError::Store(StoreError::Store(object_store::Error::NotFound {
                    path,
                    ..
                }))) => {
                    return Err(unrestorable(format!("{path} is missing")));
                }
                Err(e) => return Err(e),
            }
        }
        crate::state::live_dir_from_checkpoint(&self.local_dir(id), live)?;
        for file in &descriptor.files {
            if FileKind::of(&file.name) == FileKind::Sst {
                self.sst_hashes
                    .insert(file.name.clone(), (file.hash.clone(), file.size));
            }
        }
        Ok((plan, descriptor, upgrade))
    }

    /// The marker a local checkpoint of `descriptor` carries once committed.
    fn marker_of(&self, descriptor: &Descriptor) -> LocalMarker {
        let bytes = serde_json::to_vec(descriptor).unwrap_or_default();
        LocalMarker {
            store: self.store.identity().to_string(),
            head: self.layout.head().to_string(),
            checkpoint: descriptor.id,
            descriptor: ContentHash(blake3::hash(&bytes).to_hex().to_string()),
        }
    }

    /// Writes the marker of a committed local checkpoint, synced.
    fn write_marker(&self, descriptor: &Descriptor) -> Result<(), CheckpointError> {
        let marker = self.committed_marker(descriptor.id);
        let body = serde_json::to_vec(&self.marker_of(descriptor)).unwrap_or_default();
        std::fs::write(&marker, body)
            .and_then(|()| std::fs::File::open(&marker)?.sync_all())
            .and_then(|()| std::fs::File::open(&self.local)?.sync_all())
            .map_err(io(&marker))
    }

    /// Whether the volume holds the committed local checkpoint `descriptor` describes: its
    /// marker names this store, task and descriptor, and its files are those of the
    /// descriptor, of the same sizes (metadata files also of the same hash).
    fn local_matches(&self, descriptor: &Descriptor) -> bool {
        let dir = self.local_dir(descriptor.id);
        let marker = std::fs::read(self.committed_marker(descriptor.id))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LocalMarker>(&bytes).ok());
        if marker.as_ref() != Some(&self.marker_of(descriptor)) {
            return false;
        }
        let entries = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        entries == descriptor.files.len()
            && descriptor.files.iter().all(|file| {
                let path = dir.join(&file.name);
                let size_ok = std::fs::metadata(&path).is_ok_and(|m| m.len() == file.size);
                size_ok
                    && (FileKind::of(&file.name) == FileKind::Sst
                        || hash_file(&path).is_ok_and(|(hash, _)| hash == file.hash))
            })
    }

    async fn download(&self, descriptor: &Descriptor) -> Result<(), CheckpointError> {
        let target = self.local_dir(descriptor.id);
        let partial = self.local.join(format!("{}.download", descriptor.id.0));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        for file in &descriptor.files {
            let path = self.layout.file(&file.hash, FileKind::of(&file.name));
            self.store
                .get_file(&path, &partial.join(&file.name), file.size, &file.hash)
                .await?;
        }
        std::fs::File::open(&partial)
            .and_then(|d| d.sync_all())
            .map_err(io(&partial))?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        self.write_marker(descriptor)
    }

    fn remove_local_checkpoints_except(
        &self,
        keep: Option<CheckpointId>,
    ) -> Result<(), CheckpointError> {
        let kept = keep.map(|id| (id.0.to_string(), format!("{}.committed", id.0)));
        self.remove_local(|_, name| {
            kept.as_ref()
                .is_none_or(|(dir, marker)| name != dir && name != marker)
        })
    }

    /// Removes the entries of the local checkpoint directory (`<id>`, `<id>.committed`,
    /// `<id>.download`, strays) for which `remove(id, name)` is true.
    fn remove_local(
        &self,
        remove: impl Fn(Option<CheckpointId>, &str) -> bool,
    ) -> Result<(), CheckpointError> {
        for entry in std::fs::read_dir(&self.local).map_err(io(&self.local))? {
            let path = entry.map_err(io(&self.local))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let id = name
                .split('.')
                .next()
                .and_then(|n| n.parse().ok())
                .map(CheckpointId);
            if !remove(id, name) {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io(&path))?;
        }
        Ok(())
    }

    /// Commits the local checkpoint `taken.id` (already written to [`Self::local_dir`]):
    /// uploads the files the previous checkpoint lacks, creates the descriptor, advances HEAD
    /// with a conditional write, then applies retention. [`CheckpointError::Fenced`] means the
    /// task was lost: commit nothing more for it.
    pub async fn commit(
        &mut self,
        taken: Taken,
        writer: &Writer,
    ) -> Result<Descriptor, CheckpointError> {
        let descriptor = self.prepare(taken, writer).await?;
        self.publish(descriptor).await
    }

    /// The first half of [`Self::commit`]: uploads the files the previous checkpoint lacks and
    /// creates the descriptor, which stays pending until [`Self::publish`] points HEAD at it.
    /// Exactly-once commits the sink's transaction in between.
    pub async fn prepare(
        &mut self,
        taken: Taken,
        writer: &Writer,
    ) -> Result<Descriptor, CheckpointError> {
        let Taken {
            id,
            source_offsets,
            watermark_ms,
            records_in,
            transactional_id,
        } = taken;
        let dir = self.local_dir(id);
        let files = self.hash_files(&dir).await?;
        let descriptor = Descriptor {
            format: DESCRIPTOR_FORMAT,
            id,
            task: self.task,
            epoch: self.epoch,
            created_at_ms: now_ms(),
            source_offsets,
            files,
            watermark_ms,
            pipeline_fingerprint: writer.fingerprint.clone(),
            state_signatures: Some(writer.signatures.clone()),
            records_in,
            previous: self.committed.as_ref().map(|d| d.id),
            transactional_id,
            restored_from: self.restored_from.clone(),
        };
        for file in plan::files_to_upload(&descriptor.files, self.committed.as_ref()) {
            let path = self.layout.file(&file.hash, FileKind::of(&file.name));
            self.store.put_file(&path, &dir.join(&file.name)).await?;
            crate::failpoint::hit("checkpoint-after-file", self.task);
        }
        crate::failpoint::hit("checkpoint-after-files", self.task);
        self.next_id = id.next();
        // A zombie (a worker paused while another took the task) stops here, before writing a
        // descriptor; HEAD's conditional write would refuse it anyway.
        self.check_still_owner().await?;
        match self
            .store
            .create_descriptor(&self.layout, &descriptor)
            .await
        {
            Ok(()) => {}
            // Only a fenced zombie or a leftover of a killed attempt can hold this id; either
            // way HEAD decides, and the next checkpoint takes a fresh id.
            Err(StoreError::DescriptorExists { .. }) => {
                let present = self.store.list_checkpoints(&self.layout).await?;
                self.next_id = plan::next_checkpoint_id(self.head.checkpoint, &present);
                self.check_still_owner().await?;
                return Err(StoreError::DescriptorExists {
                    path: self.layout.descriptor(id).to_string(),
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        crate::failpoint::hit("checkpoint-after-descriptor", self.task);
        Ok(descriptor)
    }

    /// The second half of [`Self::commit`]: advances HEAD to the prepared `descriptor` with a
    /// conditional write, then applies retention.
    pub async fn publish(&mut self, descriptor: Descriptor) -> Result<Descriptor, CheckpointError> {
        let id = descriptor.id;
        self.point_head_at(id).await?;
        self.write_marker(&descriptor)?;
        self.committed = Some(descriptor.clone());
        if let Err(e) = self.apply_retention().await {
            warn!(task = self.task, checkpoint = id.0, error = %e, "checkpoint retention failed; will retry next time");
        }
        Ok(descriptor)
    }

    /// Exactly-once recovery, after the sink fenced the previous owner's producer and before
    /// [`Self::restore`]: if a pending descriptor's transaction committed, points HEAD at it,
    /// since its output is already visible. The group's commit says which: by the label it
    /// carries when the broker kept it ([`plan::pending_named`]), else by its offsets
    /// ([`plan::pending_to_adopt`]).
    pub async fn adopt_pending(
        &mut self,
        group: &crate::io::GroupPosition,
    ) -> Result<Option<CheckpointId>, CheckpointError> {
        let committed = &group.offsets;
        let present = self.store.list_checkpoints(&self.layout).await?;
        let mut pending = Vec::new();
        for id in present
            .into_iter()
            .filter(|id| Some(*id) > self.head.checkpoint)
        {
            match self.store.read_descriptor(&self.layout, id).await {
                Ok(d) => pending.push(d),
                Err(StoreError::Store(object_store::Error::NotFound { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let head_offsets = match self.head.checkpoint {
            Some(id) if !pending.is_empty() => {
                self.store
                    .read_descriptor(&self.layout, id)
                    .await?
                    .source_offsets
            }
            _ => BTreeMap::new(),
        };
        let adopt = match group.label {
            Some(label) => plan::pending_named(self.head.checkpoint, &pending, label),
            None => {
                plan::pending_to_adopt(self.head.checkpoint, &head_offsets, &pending, committed)
            }
        };
        let Some(id) = adopt else {
            if !pending.is_empty() {
                info!(
                    task = self.task,
                    pending = pending.len(),
                    ?committed,
                    label = ?group.label.map(|l| l.to_string()),
                    "pending checkpoints above HEAD were not committed; HEAD stands"
                );
            }
            return Ok(None);
        };
        self.point_head_at(id).await?;
        info!(
            task = self.task,
            checkpoint = id.0,
            "adopted a checkpoint whose transaction committed before HEAD moved"
        );
        Ok(Some(id))
    }

    /// Points HEAD at checkpoint `id` with a conditional write on the version this owner
    /// wrote; [`CheckpointError::Fenced`] when another owner wrote HEAD since. A write that
    /// fails or goes unanswered is judged by HEAD read again: one that landed is kept, one that
    /// did not is tried again on the version read (a stale version after a lost answer would
    /// otherwise fail every later write).
    async fn point_head_at(&mut self, id: CheckpointId) -> Result<(), CheckpointError> {
        let head = Head {
            checkpoint: Some(id),
            ..self.head.clone()
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self
                .store
                .write_head(&self.layout, &head, Some(&self.head_version))
                .await
            {
                Ok(version) => {
                    self.head = head;
                    self.head_version = version;
                    return Ok(());
                }
                Err(e) => e,
            };
            let Ok(found) = self.store.read_head(&self.layout).await else {
                return Err(error.into());
            };
            let outcome =
                plan::head_write_outcome(&head, Some(&self.head), found.as_ref().map(|(h, _)| h));
            warn!(task = self.task, checkpoint = id.0, epoch = %self.epoch, error = %error, ?outcome, "HEAD write failed; read HEAD again");
            match (outcome, found) {
                (plan::HeadWrite::Landed, Some((found, version))) => {
                    self.head = found;
                    self.head_version = version;
                    return Ok(());
                }
                (plan::HeadWrite::NotLanded, Some((_, version))) => {
                    self.head_version = version;
                    if attempts >= 3 {
                        return Err(error.into());
                    }
                }
                _ => {
                    return Err(CheckpointError::Fenced {
                        task: self.task,
                        epoch: self.epoch,
                    });
                }
            }
        }
    }

    /// Fails with [`CheckpointError::Fenced`] when HEAD's epoch is no longer this owner's.
    pub async fn check_still_owner(&mut self) -> Result<(), CheckpointError> {
        match self.store.read_head(&self.layout).await? {
            Some((head, _)) if head.epoch == self.epoch => Ok(()),
            _ => Err(CheckpointError::Fenced {
                task: self.task,
                epoch: self.epoch,
            }),
        }
    }

    async fn apply_retention(&mut self) -> Result<(), CheckpointError> {
        let Some(head) = self.head.checkpoint else {
            return Ok(());
        };
        // Local: only HEAD's checkpoint and newer ones are worth keeping on the volume.
        self.remove_local(|id, _| id.is_some_and(|id| id < head))?;
        self.sst_hashes.retain(|name, _| {
            self.committed
                .as_ref()
                .is_some_and(|d| d.files.iter().any(|f| &f.name == name))
        });
        // Object store: descriptors beyond `retain`, and files only they reference.
        let present = self.store.list_checkpoints(&self.layout).await?;
        let expired = plan::expired_checkpoints(&present, head, self.retain, &[]);
        if expired.is_empty() {
            return Ok(());
        }
        let mut expired_descriptors = Vec::new();
        for id in &expired {
            match self.store.read_descriptor(&self.layout, *id).await {
                Ok(d) => expired_descriptors.push(d),
                Err(StoreError::Store(object_store::Error::NotFound { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut kept = Vec::new();
        for id in present.iter().filter(|id| !expired.contains(id)) {
            match self.store.read_descriptor(&self.layout, *id).await {
                Ok(d) => kept.push(d),
                Err(StoreError::Store(object_store::Error::NotFound { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let files = plan::unreferenced_files(
            &expired_descriptors.iter().collect::<Vec<_>>(),
            &kept.iter().collect::<Vec<_>>(),
        );
        let paths: Vec<_> = files
            .iter()
            .map(|(hash, kind)| self.layout.file(hash, *kind))
            .collect();
        // Descriptors go first: a descriptor must never name a deleted file.
        let descriptors: Vec<_> = expired
            .iter()
            .map(|id| self.layout.descriptor(*id))
            .collect();
        self.store.delete(&descriptors).await?;
        self.store.delete(&paths).await?;
        debug!(
            task = self.task,
            expired = expired.len(),
            files = files.len(),
            "applied checkpoint retention"
        );
        Ok(())
    }

    async fn hash_files(&mut self, dir: &Path) -> Result<Vec<StateFile>, CheckpointError> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let cached = self.sst_hashes.get(&name).cloned();
            let (hash, size) = match cached {
                Some(known) => known,
                None => {
                    let hashed = tokio::task::spawn_blocking(move || hash_file(&path))
                        .await
                        .map_err(|e| io(dir)(std::io::Error::other(e)))??;
                    if FileKind::of(&name) == FileKind::Sst {
                        self.sst_hashes.insert(name.clone(), hashed.clone());
                    }
                    hashed
                }
            };
            files.push(StateFile { name, hash, size });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }
}

/// Where local checkpoint `id` lives inside a task's checkpoint directory `local`.
pub fn local_dir(local: &Path, id: CheckpointId) -> PathBuf {
    local.join(id.0.to_string())
}

fn hash_file(path: &Path) -> Result<(ContentHash, u64), CheckpointError> {
    let mut hasher = blake3::Hasher::new();
    let size = hasher.update_mmap(path).map_err(io(path))?.count();
    Ok((ContentHash(hasher.finalize().to_hex().to_string()), size))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::layout::JobLayout;
    use crate::checkpoint::store::StoreOptions;

    fn writer() -> Writer {
        Writer {
            fingerprint: "fp".into(),
            signatures: Vec::new(),
            policy: StateChanges::Refuse,
            restore_from: None,
        }
    }

    fn claim(owner: &str) -> Claim<'_> {
        Claim { owner, rollout: 0 }
    }

    #[tokio::test]
    async fn a_worker_of_an_older_rollout_leaves_a_newer_rollouts_task_alone() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let take = |owner: &'static str, rollout| {
            let (store, layout, local) = (store.clone(), layout.clone(), dir.path().join(owner));
            async move {
                TaskCheckpoints::take_over(
                    store,
                    layout,
                    0,
                    Claim { owner, rollout },
                    1,
                    local,
                    &mut Held::default(),
                )
                .await
            }
        };
        let new = take("new-0", 7).await.unwrap();
        assert_eq!(new.head.rollout, 7);
        match take("old-0", 6).await {
            Err(CheckpointError::Stale {
                owner,
                theirs: 7,
                ours: 6,
                ..
            }) => assert_eq!(owner, "new-0"),
            other => panic!(
                "an old rollout must not take the task: {:?}",
                other.map(|t| t.head)
            ),
        }
        let (head, _) = store.read_head(&layout).await.unwrap().unwrap();
        assert_eq!((head.owner.as_str(), head.epoch), ("new-0", new.epoch()));
        // The same or a newer rollout takes it (a restart, the next roll).
        assert_eq!(take("new-0", 7).await.unwrap().head.rollout, 7);
        assert_eq!(take("next-0", 8).await.unwrap().head.rollout, 8);
    }

    #[tokio::test]
    async fn a_restart_takes_a_task_back_only_from_itself() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let take = |owner: &'static str, mut held: Held| {
            let (store, layout, local) = (store.clone(), layout.clone(), dir.path().join(owner));
            async move {
                let taken =
                    TaskCheckpoints::take_over(store, layout, 0, claim(owner), 1, local, &mut held)
                        .await;
                (taken, held)
            }
        };
        let (a, mut a_held) = take("a", Held::default()).await;
        let a = a.unwrap();
        assert_eq!(a_held.latest(), Some(a.epoch()));
        // A restart after a failure: HEAD still carries a's epoch.
        let (a_again, held) = take("a", a_held.clone()).await;
        let a_again = a_again.unwrap();
        assert!(a_again.epoch() > a.epoch());
        a_held = held;
        // A restart after a takeover write that landed but was never answered: HEAD carries
        // an epoch a tried to write, under a's name. Still a's.
        let landed = Head {
            epoch: Epoch(a_again.epoch().0 + 1),
            owner: "a".into(),
            checkpoint: None,
            rollout: 0,
        };
        let (_, version) = store.read_head(&layout).await.unwrap().unwrap();
        let before = store.read_head(&layout).await.unwrap().unwrap().0;
        store
            .write_head(&layout, &landed, Some(&version))
            .await
            .unwrap();
        a_held.attempted(landed.epoch, Some(&before));
        let (a_third, held) = take("a", a_held).await;
        assert!(a_third.unwrap().epoch() > landed.epoch);
        // b takes the task; a's next restart must not take it back.
        let (b, _) = take("b", Held::default()).await;
        let b = b.unwrap();
        let (err, _) = take("a", held).await;
        let err = err.err().unwrap();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        // A new process (nothing held) takes over unconditionally, as after a pod restart.
        let (a_new, _) = take("a", Held::default()).await;
        assert!(a_new.unwrap().epoch() > b.epoch());
    }

    /// A restart after a takeover whose write never landed (the store refused it: HEAD is
    /// absent, or still the previous owner's below the epoch tried) takes the task over like
    /// a new process; it was never lost. Before the fix the restart was fenced and the
    /// worker, left with no task, exited.
    #[tokio::test]
    async fn a_restart_after_a_takeover_that_never_landed_takes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let take = |owner: &'static str, mut held: Held| {
            let (store, layout, local) = (store.clone(), layout.clone(), dir.path().join(owner));
            async move {
                let taken =
                    TaskCheckpoints::take_over(store, layout, 0, claim(owner), 1, local, &mut held)
                        .await;
                (taken, held)
            }
        };
        // No HEAD yet; a tried epoch 1 and the store refused it.
        let mut refused = Held::default();
        refused.attempted(Epoch(1), None);
        let (a, held) = take("a", refused).await;
        let a = a.expect("the task was never lost");
        assert_eq!(a.epoch(), Epoch(1));
        // b holds the task at some epoch; c tried the next one and it was refused: c's
        // restart takes the task (b's HEAD is below what c tried) ...
        let (b, _) = take("b", Held::default()).await;
        let b = b.unwrap();
        let mut c_held = Held::default();
        let b_head = store.read_head(&layout).await.unwrap().unwrap().0;
        c_held.attempted(Epoch(b.epoch().0 + 1), Some(&b_head));
        let (c, _) = take("c", c_held).await;
        assert!(c.unwrap().epoch() > b.epoch());
        // ... while a, whose epoch 1 is below the HEAD now, was taken over and stays fenced.
        let (err, _) = take("a", held).await;
        assert!(matches!(err, Err(CheckpointError::Fenced { .. })));
    }

    /// Whether a refused takeover was lost is judged by what HEAD is, not by epoch numbers:
    /// after HEAD was deleted (numbering starts over) or another owner wrote exactly the epoch
    /// tried, the restart is fenced. On the old rule (HEAD at or past the first epoch tried)
    /// the process whose try at epoch 5 was refused took the task back from b at epoch 1.
    #[tokio::test]
    async fn a_refused_takeover_is_lost_once_anyone_else_wrote_head_whatever_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let take = |owner: &'static str, mut held: Held| {
            let (store, layout, local) = (store.clone(), layout.clone(), dir.path().join(owner));
            async move {
                TaskCheckpoints::take_over(store, layout, 0, claim(owner), 1, local, &mut held)
                    .await
            }
        };
        let head = |epoch, owner: &str| Head {
            epoch: Epoch(epoch),
            owner: owner.into(),
            checkpoint: None,
            rollout: 0,
        };
        let x4 = head(4, "x");
        store.write_head(&layout, &x4, None).await.unwrap();
        // a read x's epoch 4 and tried 5; the store refused it.
        let mut refused = Held::default();
        refused.attempted(Epoch(5), Some(&x4));
        // HEAD deleted, then b takes the task: epochs start over at 1.
        store.delete(&[layout.head()]).await.unwrap();
        let b = take("b", Held::default()).await.unwrap();
        assert_eq!(b.epoch(), Epoch(1));
        let err = take("a", refused.clone()).await.err().unwrap();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        // HEAD deleted and nobody took it: someone acted on the task all the same.
        store.delete(&[layout.head()]).await.unwrap();
        let err = take("a", refused.clone()).await.err().unwrap();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        // y wrote exactly the epoch a tried.
        store
            .write_head(&layout, &head(5, "y"), None)
            .await
            .unwrap();
        let err = take("a", refused.clone()).await.err().unwrap();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
    }

    /// A savepoint of one job starts a task of another job: its state and offsets, once. The
    /// restored task's first checkpoint is a chain of its own (every file in its own layout,
    /// the savepoint recorded), so its restarts restore its own HEAD; retention of the old
    /// job's checkpoints leaves the savepoint whole.
    #[tokio::test]
    async fn a_savepoint_starts_a_task_once_outlives_retention_and_is_never_undone_by_a_fallback() {
        use crate::state::StateBackend;
        use crate::state::rocks::RocksState;
        use sluice_core::checkpoint::savepoint;

        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let old_job = JobLayout::new(store.prefix(), "ns", "old");
        let new_job = JobLayout::new(store.prefix(), "ns", "new");
        let taken = |id, offset: i64| Taken {
            id,
            source_offsets: BTreeMap::from([("in".to_string(), offset)]),
            watermark_ms: Some(offset),
            records_in: offset as u64,
            transactional_id: None,
        };
        let take_keeping = |job: &JobLayout, owner: &str, retain: usize| {
            let (store, layout, local) = (
                store.clone(),
                job.task(0),
                dir.path().join(owner).join("checkpoints"),
            );
            let owner = owner.to_string();
            async move {
                TaskCheckpoints::take_over(
                    store,
                    layout,
                    0,
                    claim(&owner),
                    retain,
                    local,
                    &mut Held::default(),
                )
                .await
            }
        };
        let take = |job: &JobLayout, owner: &str| take_keeping(job, owner, 1);
        // The old job checkpoints key 1 at offset 100; the savepoint copies that.
        let mut old = take(&old_job, "old").await.unwrap();
        old.restore(&dir.path().join("old/live"), &writer())
            .await
            .unwrap();
        let mut state = RocksState::open(&dir.path().join("old/live")).unwrap();
        state.put(b"k1", b"at-100").unwrap();
        let id = old.next_id();
        state.checkpoint(&old.local_dir(id)).unwrap();
        let head = old.commit(taken(id, 100), &writer()).await.unwrap();
        let sp: SavepointId = "ns/old/1".parse().unwrap();
        let manifest = savepoint::take(&store, &old_job, &sp, "t1", &[head], 5)
            .await
            .unwrap();
        assert_eq!(manifest.tasks[0].source_offsets["in"], 100);
        // The old job goes on; retain 1 deletes checkpoint 1 and its files from its layout.
        state.put(b"k1", b"at-200").unwrap();
        state.put(b"k2", b"at-200").unwrap();
        for offset in [200, 300] {
            let id = old.next_id();
            state.checkpoint(&old.local_dir(id)).unwrap();
            old.commit(taken(id, offset), &writer()).await.unwrap();
        }
        assert_eq!(
            store.list_checkpoints(&old_job.task(0)).await.unwrap(),
            vec![CheckpointId(3)]
        );
        drop(state);

        // The new job starts from the savepoint.
        let from = Writer {
            restore_from: Some(sp.to_string()),
            ..writer()
        };
        let mut new = take(&new_job, "new").await.unwrap();
        let live = dir.path().join("new/live");
        let restored = new.restore(&live, &from).await.unwrap();
        assert_eq!(restored.plan, RestorePlan::Savepoint(CheckpointId(1)));
        let offsets = restored.descriptor.as_ref().unwrap().source_offsets.clone();
        assert_eq!(offsets["in"], 100);
        let mut state = RocksState::open(&live).unwrap();
        assert_eq!(state.get(b"k1").unwrap().as_deref(), Some(&b"at-100"[..]));
        assert_eq!(state.get(b"k2").unwrap(), None);
        state.put(b"k3", b"new").unwrap();
        let id = new.next_id();
        state.checkpoint(&new.local_dir(id)).unwrap();
        let first = new.commit(taken(id, 150), &from).await.unwrap();
        assert_eq!(first.restored_from.as_deref(), Some("ns/old/1"));
        assert_eq!(first.previous, None, "a chain of its own");
        assert_complete(&store, &new_job.task(0), first.id).await;
        drop(state);
        // Restarted, it restores its own HEAD, not the savepoint again.
        let mut again = take(&new_job, "new").await.unwrap();
        let restored = again.restore(&live, &from).await.unwrap();
        assert_eq!(restored.descriptor.map(|d| d.id), Some(first.id));
        assert!(!matches!(restored.plan, RestorePlan::Savepoint(_)));
        // A savepoint that is not there is a clear, permanent refusal.
        let missing = Writer {
            restore_from: Some("ns/old/9".into()),
            ..writer()
        };
        let mut other = take(&JobLayout::new(store.prefix(), "ns", "other"), "other")
            .await
            .unwrap();
        let err = other
            .restore(&dir.path().join("other/live"), &missing)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("there is no complete savepoint"),
            "{err}"
        );

        // The old job is rewound to its own savepoint (keeping two checkpoints now): its
        // HEAD (offset 300) predates the savepoint's restore, so the savepoint is restored.
        let mut rewound = take_keeping(&old_job, "old", 2).await.unwrap();
        let live = dir.path().join("old/live");
        let restored = rewound.restore(&live, &from).await.unwrap();
        assert_eq!(restored.plan, RestorePlan::Savepoint(CheckpointId(1)));
        let mut state = RocksState::open(&live).unwrap();
        state.put(b"k4", b"after the rewind").unwrap();
        let id = rewound.next_id();
        state.checkpoint(&rewound.local_dir(id)).unwrap();
        let after = rewound.commit(taken(id, 120), &from).await.unwrap();
        drop(state);
        assert_eq!(
            store.list_checkpoints(&old_job.task(0)).await.unwrap(),
            vec![CheckpointId(3), after.id],
            "the checkpoint before the rewind is still kept"
        );
        // HEAD's descriptor is lost: the fallback must not restore the one before the rewind
        // (offset 300), but the savepoint again.
        store
            .delete(&[old_job.task(0).descriptor(after.id)])
            .await
            .unwrap();
        let mut again = take_keeping(&old_job, "old", 2).await.unwrap();
        let restored = again.restore(&live, &from).await.unwrap();
        assert_eq!(restored.plan, RestorePlan::Savepoint(CheckpointId(1)));
        assert_eq!(restored.descriptor.unwrap().source_offsets["in"], 100);
    }

    /// Every state file a descriptor names is in the store.
    async fn assert_complete(store: &CheckpointStore, layout: &TaskLayout, id: CheckpointId) {
        let descriptor = store.read_descriptor(layout, id).await.unwrap();
        let present = store.list_files(layout).await.unwrap();
        for file in &descriptor.files {
            let path = layout.file(&file.hash, FileKind::of(&file.name));
            assert!(
                present.contains(&path),
                "checkpoint {id} lost {}",
                file.name
            );
        }
    }

    #[tokio::test]
    async fn retention_never_deletes_what_head_a_pending_descriptor_or_a_restore_needs() {
        use crate::state::StateBackend;
        use crate::state::rocks::RocksState;

        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let taken = |id, offset: i64, transactional_id| Taken {
            id,
            source_offsets: BTreeMap::from([("in".to_string(), offset)]),
            watermark_ms: None,
            records_in: 0,
            transactional_id,
        };
        let take = |owner: &'static str| {
            let (store, layout, local) = (
                store.clone(),
                layout.clone(),
                dir.path().join(owner).join("checkpoints"),
            );
            async move {
                TaskCheckpoints::take_over(
                    store,
                    layout,
                    0,
                    claim(owner),
                    2,
                    local,
                    &mut Held::default(),
                )
                .await
            }
        };

        // Owner a: six checkpoints of changing state, keeping two.
        let mut a = take("a").await.unwrap();
        a.restore(&dir.path().join("a/live"), &writer())
            .await
            .unwrap();
        let mut state = RocksState::open(&dir.path().join("a/live")).unwrap();
        for round in 1..=6i64 {
            for key in 0..2000i64 {
                state
                    .put(&(key + round * 500).to_be_bytes(), &round.to_be_bytes())
                    .unwrap();
            }
            let id = a.next_id();
            state.checkpoint(&a.local_dir(id)).unwrap();
            a.commit(taken(id, round * 100, None), &writer())
                .await
                .unwrap();
            assert_complete(&store, &layout, id).await;
        }
        let ids = |present: Vec<CheckpointId>| present.into_iter().map(|c| c.0).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_checkpoints(&layout).await.unwrap()),
            vec![5, 6]
        );
        assert_complete(&store, &layout, CheckpointId(5)).await;

        // a writes checkpoint 7's descriptor, then is paused before HEAD moves: 7 is pending.
        let id = a.next_id();
        state.checkpoint(&a.local_dir(id)).unwrap();
        let pending = a
            .prepare(taken(id, 700, Some("t".into())), &writer())
            .await
            .unwrap();

        // b takes over and restores HEAD's checkpoint from the store while a, resumed, tries
        // to move HEAD to its pending checkpoint: refused, and nothing of a's is deleted.
        let mut b = take("b").await.unwrap();
        assert!(matches!(
            a.publish(pending.clone()).await,
            Err(CheckpointError::Fenced { .. })
        ));
        let restored = b
            .restore(&dir.path().join("b/live"), &writer())
            .await
            .unwrap();
        assert_eq!(restored.descriptor.map(|d| d.id), Some(CheckpointId(6)));
        assert_complete(&store, &layout, CheckpointId(6)).await;
        assert_complete(&store, &layout, pending.id).await;
        assert_eq!(
            ids(store.list_checkpoints(&layout).await.unwrap()),
            vec![5, 6, 7]
        );

        // Another owner's descriptor above b's HEAD (written after the takeover) is not b's to
        // delete, and neither are the files it names.
        let above = Descriptor {
            id: CheckpointId(50),
            ..pending.clone()
        };
        store.create_descriptor(&layout, &above).await.unwrap();

        // b's own checkpoints then retire the old ones, never its HEAD or anything above, and
        // only files no kept descriptor names.
        let mut state = RocksState::open(&dir.path().join("b/live")).unwrap();
        for round in 8..=10i64 {
            state.put(&round.to_be_bytes(), b"b").unwrap();
            let id = b.next_id();
            state.checkpoint(&b.local_dir(id)).unwrap();
            b.commit(taken(id, round * 100, None), &writer())
                .await
                .unwrap();
            let present = store.list_checkpoints(&layout).await.unwrap();
            assert!(present.contains(&id), "HEAD's descriptor is kept");
            assert!(
                present.contains(&above.id),
                "the descriptor above HEAD is kept"
            );
            assert!(present.len() <= 3, "older ones are retired: {present:?}");
            for kept in present {
                assert_complete(&store, &layout, kept).await;
            }
        }
    }
}

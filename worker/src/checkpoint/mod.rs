//! Checkpoints of one task: take the task over (fence the previous owner), restore its state,
//! and commit new checkpoints (upload → descriptor → HEAD → retention). Object-store and file
//! I/O; every decision is made by the pure functions in [`plan`].
//!
//! On the volume, a task keeps `checkpoints/<id>/` (a RocksDB checkpoint, hard links) and
//! `checkpoints/<id>.committed` once HEAD pointed at it with this owner's epoch. Only a
//! committed local checkpoint is used for local recovery: an uncommitted one may hold the
//! state of an attempt that lost its task.

pub mod descriptor;
pub mod layout;
pub mod plan;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::assignment::TaskId;
use descriptor::{
    CheckpointId, ContentHash, DESCRIPTOR_FORMAT, Descriptor, Epoch, Head, StateFile,
};
use layout::{FileKind, TaskLayout};
use plan::RestorePlan;
use store::{CheckpointStore, HeadVersion, StoreError};

/// Failures of checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Another owner took the task: stop it at once and commit nothing more.
    #[error("task {task} was taken over by another owner (our epoch {epoch})")]
    Fenced { task: TaskId, epoch: Epoch },
    /// The checkpoint was written by different steps than this job has now.
    #[error(
        "checkpoint {id} of task {task} was written by a different pipeline ({found}, expected {expected}): \
         changing steps needs a new job or state migration"
    )]
    PipelineChanged {
        task: TaskId,
        id: CheckpointId,
        found: String,
        expected: String,
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
}

/// The checkpoints of one task, owned by this worker at `epoch`.
pub struct TaskCheckpoints {
    store: CheckpointStore,
    layout: TaskLayout,
    task: TaskId,
    epoch: Epoch,
    owner: String,
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
}

impl TaskCheckpoints {
    /// Takes task `task` over: bumps the epoch in HEAD with a conditional write, which fences
    /// every earlier owner. `local` is the task's checkpoint directory on the volume. When
    /// `held` is the epoch this worker held before (a restart after a failure), the takeover
    /// happens only if HEAD still carries it: otherwise another owner took the task meanwhile
    /// and [`CheckpointError::Fenced`] says so.
    pub async fn take_over(
        store: CheckpointStore,
        layout: TaskLayout,
        task: TaskId,
        owner: &str,
        retain: usize,
        local: PathBuf,
        held: Option<Epoch>,
    ) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(&local).map_err(io(&local))?;
        let mut attempts = 0;
        let (head, head_version) = loop {
            attempts += 1;
            let current = store.read_head(&layout).await?;
            if let Some(held) = held
                && current.as_ref().map(|(h, _)| h.epoch) != Some(held)
            {
                return Err(CheckpointError::Fenced { task, epoch: held });
            }
            let head = Head {
                epoch: Epoch(current.as_ref().map_or(0, |(h, _)| h.epoch.0) + 1),
                owner: owner.to_string(),
                checkpoint: current.as_ref().and_then(|(h, _)| h.checkpoint),
            };
            match store
                .write_head(&layout, &head, current.as_ref().map(|(_, v)| v))
                .await
            {
                Ok(version) => break (head, version),
                Err(StoreError::Conflict { .. }) if attempts < 10 => {
                    debug!(task, attempts, "HEAD changed during takeover; retrying");
                }
                Err(e) => return Err(e.into()),
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
            owner: owner.to_string(),
            head,
            head_version,
            committed: None,
            next_id,
            retain: retain.max(1),
            local,
            sst_hashes: HashMap::new(),
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
    /// written by the same pipeline. Other local checkpoints are removed.
    pub async fn restore(
        &mut self,
        live: &Path,
        fingerprint: &str,
    ) -> Result<Restored, CheckpointError> {
        let on_volume: Vec<CheckpointId> = self
            .head
            .checkpoint
            .filter(|id| self.committed_marker(*id).exists() && self.local_dir(*id).is_dir())
            .into_iter()
            .collect();
        let plan = plan::restore_plan(Some(&self.head), &on_volume);
        let keep = match plan {
            RestorePlan::Fresh => None,
            RestorePlan::Local(id) | RestorePlan::Download(id) => Some(id),
        };
        self.remove_local_checkpoints_except(keep)?;
        let descriptor = match plan {
            RestorePlan::Fresh => {
                if live.exists() {
                    std::fs::remove_dir_all(live).map_err(io(live))?;
                }
                None
            }
            RestorePlan::Local(id) | RestorePlan::Download(id) => {
                let descriptor = self.store.read_descriptor(&self.layout, id).await?;
                if descriptor.pipeline_fingerprint != fingerprint {
                    return Err(CheckpointError::PipelineChanged {
                        task: self.task,
                        id,
                        found: descriptor.pipeline_fingerprint.clone(),
                        expected: fingerprint.to_string(),
                    });
                }
                if matches!(plan, RestorePlan::Download(_)) {
                    self.download(&descriptor).await?;
                }
                crate::state::live_dir_from_checkpoint(&self.local_dir(id), live)?;
                for file in &descriptor.files {
                    if FileKind::of(&file.name) == FileKind::Sst {
                        self.sst_hashes
                            .insert(file.name.clone(), (file.hash.clone(), file.size));
                    }
                }
                Some(descriptor)
            }
        };
        info!(task = self.task, plan = ?plan, "restored task state");
        self.committed = descriptor.clone();
        Ok(Restored { plan, descriptor })
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
                .get_file(&path, &partial.join(&file.name))
                .await?;
        }
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(&partial, &target).map_err(io(&target))?;
        std::fs::write(self.committed_marker(descriptor.id), b"").map_err(io(&target))?;
        Ok(())
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
        fingerprint: &str,
    ) -> Result<Descriptor, CheckpointError> {
        let descriptor = self.prepare(taken, fingerprint).await?;
        self.publish(descriptor).await
    }

    /// The first half of [`Self::commit`]: uploads the files the previous checkpoint lacks and
    /// creates the descriptor, which stays pending until [`Self::publish`] points HEAD at it.
    /// Exactly-once commits the sink's transaction in between.
    pub async fn prepare(
        &mut self,
        taken: Taken,
        fingerprint: &str,
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
            pipeline_fingerprint: fingerprint.to_string(),
            records_in,
            transactional_id,
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
        let marker = self.committed_marker(id);
        std::fs::write(&marker, b"").map_err(io(&marker))?;
        self.committed = Some(descriptor.clone());
        if let Err(e) = self.apply_retention().await {
            warn!(task = self.task, checkpoint = id.0, error = %e, "checkpoint retention failed; will retry next time");
        }
        Ok(descriptor)
    }

    /// Exactly-once recovery, after the sink fenced the previous owner's producer and before
    /// [`Self::restore`]: if a pending descriptor's transaction committed (the consumer group
    /// holds its offsets, `committed`), points HEAD at it, since its output is already visible.
    pub async fn adopt_pending(
        &mut self,
        committed: &BTreeMap<String, i64>,
    ) -> Result<Option<CheckpointId>, CheckpointError> {
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
        let Some(id) =
            plan::pending_to_adopt(self.head.checkpoint, &head_offsets, &pending, committed)
        else {
            if !pending.is_empty() {
                info!(
                    task = self.task,
                    pending = pending.len(),
                    ?committed,
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
    /// wrote; [`CheckpointError::Fenced`] when another owner wrote HEAD since.
    async fn point_head_at(&mut self, id: CheckpointId) -> Result<(), CheckpointError> {
        let head = Head {
            epoch: self.epoch,
            owner: self.owner.clone(),
            checkpoint: Some(id),
        };
        match self
            .store
            .write_head(&self.layout, &head, Some(&self.head_version))
            .await
        {
            Ok(version) => {
                self.head = head;
                self.head_version = version;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(CheckpointError::Fenced {
                task: self.task,
                epoch: self.epoch,
            }),
            Err(e) => Err(e.into()),
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

    #[tokio::test]
    async fn a_restart_takes_a_task_back_only_from_itself() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().join("store").display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let layout = JobLayout::new(store.prefix(), "ns", "job").task(0);
        let take = |owner: &'static str, held: Option<Epoch>| {
            TaskCheckpoints::take_over(
                store.clone(),
                layout.clone(),
                0,
                owner,
                1,
                dir.path().join(owner),
                held,
            )
        };
        let a = take("a", None).await.unwrap();
        // A restart after a failure: HEAD still carries a's epoch.
        let a_again = take("a", Some(a.epoch())).await.unwrap();
        assert!(a_again.epoch() > a.epoch());
        // b takes the task; a's next restart must not take it back.
        let b = take("b", None).await.unwrap();
        assert!(b.epoch() > a_again.epoch());
        let err = take("a", Some(a_again.epoch())).await.err().unwrap();
        assert!(matches!(err, CheckpointError::Fenced { .. }), "{err}");
        // A new process (nothing held) takes over unconditionally, as after a pod restart.
        assert!(take("a", None).await.unwrap().epoch() > b.epoch());
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
            TaskCheckpoints::take_over(
                store.clone(),
                layout.clone(),
                0,
                owner,
                2,
                dir.path().join(owner).join("checkpoints"),
                None,
            )
        };

        // Owner a: six checkpoints of changing state, keeping two.
        let mut a = take("a").await.unwrap();
        a.restore(&dir.path().join("a/live"), "fp").await.unwrap();
        let mut state = RocksState::open(&dir.path().join("a/live")).unwrap();
        for round in 1..=6i64 {
            for key in 0..2000i64 {
                state
                    .put(&(key + round * 500).to_be_bytes(), &round.to_be_bytes())
                    .unwrap();
            }
            let id = a.next_id();
            state.checkpoint(&a.local_dir(id)).unwrap();
            a.commit(taken(id, round * 100, None), "fp").await.unwrap();
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
            .prepare(taken(id, 700, Some("t".into())), "fp")
            .await
            .unwrap();

        // b takes over and restores HEAD's checkpoint from the store while a, resumed, tries
        // to move HEAD to its pending checkpoint: refused, and nothing of a's is deleted.
        let mut b = take("b").await.unwrap();
        assert!(matches!(
            a.publish(pending.clone()).await,
            Err(CheckpointError::Fenced { .. })
        ));
        let restored = b.restore(&dir.path().join("b/live"), "fp").await.unwrap();
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
            b.commit(taken(id, round * 100, None), "fp").await.unwrap();
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

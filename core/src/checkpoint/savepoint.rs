//! Savepoints: each task's checkpoint, copied (descriptor and files) out of the reach of
//! checkpoint retention, under `<storage>/<namespace>/<job>/savepoints/<n>/`, with a manifest
//! written last. A savepoint is self-contained: deleting the job, its checkpoints or other
//! savepoints leaves it whole, and any job in the same storage can start from it
//! (`spec.restoreFrom`). Its id is `<namespace>/<job>/<n>`.
//!
//! The operator takes savepoints (it copies checkpoints the workers commit anyway, so a
//! savepoint never pauses a task); the worker restores them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::assignment::TaskId;
use crate::checkpoint::descriptor::{CheckpointId, Descriptor};
use crate::checkpoint::layout::{FileKind, JobLayout};
use crate::checkpoint::store::{CheckpointStore, StoreError};

/// Where a savepoint is: `<namespace>/<job>/<n>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SavepointId {
    /// The namespace of the job that took it.
    pub namespace: String,
    /// That job's name.
    pub job: String,
    /// Its number among the job's savepoints.
    pub n: u64,
}

impl SavepointId {
    /// Its paths in `store`.
    pub fn layout(&self, prefix: &Path) -> JobLayout {
        JobLayout::new(prefix, &self.namespace, &self.job).savepoint(self.n)
    }
}

impl fmt::Display for SavepointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.job, self.n)
    }
}

impl FromStr for SavepointId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("savepoint id {s:?} is not <namespace>/<job>/<n>");
        let mut parts = s.split('/');
        let (Some(namespace), Some(job), Some(n), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if namespace.is_empty() || job.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            namespace: namespace.into(),
            job: job.into(),
            n: n.parse().map_err(|_| bad())?,
        })
    }
}

/// A savepoint's manifest: what it holds of each task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Savepoint {
    /// Manifest format version.
    pub format: u32,
    /// Its id, as written.
    pub id: String,
    /// The `spec.savepoint.trigger` it was taken for.
    pub trigger: String,
    /// When it was completed, in milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Per task, in task order.
    pub tasks: Vec<SavepointEntry>,
}

/// One task in a savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointEntry {
    /// The task.
    pub task: TaskId,
    /// The checkpoint it is a copy of (its descriptor keeps that id in the savepoint).
    pub checkpoint: CheckpointId,
    /// Its state bytes.
    pub bytes: u64,
    /// Per source topic, the next offset to read.
    pub source_offsets: BTreeMap<String, i64>,
}

impl Savepoint {
    /// The entry of `task`.
    pub fn task(&self, task: TaskId) -> Option<&SavepointEntry> {
        self.tasks.iter().find(|t| t.task == task)
    }

    /// Its state bytes, in all.
    pub fn bytes(&self) -> u64 {
        self.tasks.iter().map(|t| t.bytes).sum()
    }
}

/// The manifest format this build writes and reads.
pub const SAVEPOINT_FORMAT: u32 = 1;

/// Copies `heads` (one committed descriptor per task, in task order) into savepoint `id`:
/// each file, then each descriptor, then the manifest. A copy whose source retention deleted
/// meanwhile fails with the store's `NotFound`: take it again from the newer HEADs. Copying
/// again over an incomplete savepoint of the same id is fine (the same objects are written).
pub async fn take(
    store: &CheckpointStore,
    job: &JobLayout,
    id: &SavepointId,
    trigger: &str,
    heads: &[Descriptor],
    now_ms: i64,
) -> Result<Savepoint, StoreError> {
    let target = id.layout(store.prefix());
    let mut tasks = Vec::with_capacity(heads.len());
    for descriptor in heads {
        let (from, to) = (job.task(descriptor.task), target.task(descriptor.task));
        for file in &descriptor.files {
            let kind = FileKind::of(&file.name);
            store
                .copy(&from.file(&file.hash, kind), &to.file(&file.hash, kind))
                .await?;
        }
        store.put_descriptor(&to, descriptor).await?;
        tasks.push(SavepointEntry {
            task: descriptor.task,
            checkpoint: descriptor.id,
            bytes: descriptor.state_bytes(),
            source_offsets: descriptor.source_offsets.clone(),
        });
    }
    let savepoint = Savepoint {
        format: SAVEPOINT_FORMAT,
        id: id.to_string(),
        trigger: trigger.to_string(),
        created_at_ms: now_ms,
        tasks,
    };
    store.write_savepoint(&target, &savepoint).await?;
    Ok(savepoint)
}

/// The numbers of `job`'s complete savepoints, ascending, with their manifests.
pub async fn list(
    store: &CheckpointStore,
    job: &JobLayout,
) -> Result<Vec<(u64, Savepoint)>, StoreError> {
    let mut found = Vec::new();
    for n in store.list_dirs(&job.savepoints()).await? {
        let Ok(n) = n.parse::<u64>() else { continue };
        if let Some(savepoint) = store.read_savepoint(&job.savepoint(n)).await? {
            found.push((n, savepoint));
        }
    }
    found.sort_by_key(|(n, _)| *n);
    Ok(found)
}

/// The number the next savepoint of `job` takes: one above the highest savepoint directory
/// there is, or that one itself when it is incomplete (an attempt that failed part way: the
/// next one writes the same objects over it and completes it).
pub async fn next_number(store: &CheckpointStore, job: &JobLayout) -> Result<u64, StoreError> {
    let dirs = store.list_dirs(&job.savepoints()).await?;
    let Some(highest) = dirs.iter().filter_map(|n| n.parse::<u64>().ok()).max() else {
        return Ok(1);
    };
    Ok(match store.read_savepoint(&job.savepoint(highest)).await? {
        Some(_) => highest + 1,
        None => highest,
    })
}

/// Deletes savepoint `n` of `job`: its manifest first (so it is no longer complete), then
/// everything else under it.
pub async fn delete(store: &CheckpointStore, job: &JobLayout, n: u64) -> Result<(), StoreError> {
    let savepoint = job.savepoint(n);
    store.delete(&[savepoint.manifest()]).await?;
    store.delete_all(savepoint.root()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::descriptor::{ContentHash, StateFile, test_descriptor};
    use crate::checkpoint::store::StoreOptions;

    /// Two tasks' checkpoints, copied; an attempt that failed part way is completed by the
    /// next; a deleted savepoint is gone entirely; retention of the job's own files leaves
    /// the copies whole.
    #[tokio::test]
    async fn a_savepoint_is_a_whole_copy_listed_once_complete_and_deleted_entirely() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("file://{}", dir.path().display());
        let store = CheckpointStore::open(&uri, &StoreOptions::default()).unwrap();
        let job = JobLayout::new(store.prefix(), "shop", "orders");
        let mut heads = Vec::new();
        for task in 0..2u32 {
            let local = dir.path().join(format!("file-{task}"));
            std::fs::write(&local, format!("state of task {task}")).unwrap();
            let hash = ContentHash(
                blake3::hash(format!("state of task {task}").as_bytes())
                    .to_hex()
                    .to_string(),
            );
            let path = job.task(task).file(&hash, FileKind::Sst);
            store.put_file(&path, &local).await.unwrap();
            heads.push(Descriptor {
                files: vec![StateFile {
                    name: "000009.sst".into(),
                    hash,
                    size: 15,
                }],
                ..test_descriptor(task, 7 + u64::from(task))
            });
        }
        assert_eq!(next_number(&store, &job).await.unwrap(), 1);
        let id = |n| SavepointId {
            namespace: "shop".into(),
            job: "orders".into(),
            n,
        };
        take(&store, &job, &id(1), "a", &heads, 10).await.unwrap();
        assert_eq!(next_number(&store, &job).await.unwrap(), 2);
        // An attempt that copied a file and stopped: not listed, and numbered again.
        let partial = id(2).layout(store.prefix()).task(0);
        let file = &heads[0].files[0];
        store
            .copy(
                &job.task(0).file(&file.hash, FileKind::Sst),
                &partial.file(&file.hash, FileKind::Sst),
            )
            .await
            .unwrap();
        assert_eq!(list(&store, &job).await.unwrap().len(), 1);
        assert_eq!(next_number(&store, &job).await.unwrap(), 2);
        take(&store, &job, &id(2), "b", &heads, 20).await.unwrap();
        // The job's own files go (as retention deletes them): the copies stay.
        store.delete_all(&job.task(0).files()).await.unwrap();
        store.delete_all(&job.task(1).files()).await.unwrap();
        let found = list(&store, &job).await.unwrap();
        assert_eq!(
            found
                .iter()
                .map(|(n, s)| (*n, s.trigger.as_str()))
                .collect::<Vec<_>>(),
            [(1, "a"), (2, "b")]
        );
        let (_, second) = &found[1];
        assert_eq!(second.id, "shop/orders/2");
        assert_eq!(second.bytes(), 30);
        for entry in &second.tasks {
            let layout = id(2).layout(store.prefix()).task(entry.task);
            let copy = store
                .read_descriptor(&layout, entry.checkpoint)
                .await
                .unwrap();
            let file = &copy.files[0];
            let local = dir.path().join("restored");
            store
                .get_file(
                    &layout.file(&file.hash, FileKind::Sst),
                    &local,
                    file.size,
                    &file.hash,
                )
                .await
                .unwrap();
        }
        delete(&store, &job, 1).await.unwrap();
        assert_eq!(list(&store, &job).await.unwrap().len(), 1);
        let gone = id(1).layout(store.prefix());
        assert_eq!(store.read_savepoint(&gone).await.unwrap(), None);
        for task in 0..2 {
            assert!(store.list_files(&gone.task(task)).await.unwrap().is_empty());
            assert!(
                store
                    .list_checkpoints(&gone.task(task))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[test]
    fn ids_read_and_print_as_namespace_job_number() {
        let id: SavepointId = "shop/orders/12".parse().expect("id");
        assert_eq!(
            id,
            SavepointId {
                namespace: "shop".into(),
                job: "orders".into(),
                n: 12
            }
        );
        assert_eq!(id.to_string(), "shop/orders/12");
        assert_eq!(
            id.layout(&Path::from("prod")).manifest().as_ref(),
            "prod/shop/orders/savepoints/12/savepoint.json"
        );
        assert_eq!(
            id.layout(&Path::from("prod"))
                .task(3)
                .descriptor(CheckpointId(7))
                .as_ref(),
            "prod/shop/orders/savepoints/12/tasks/3/checkpoints/00000000000000000007.json"
        );
        for bad in ["shop/orders", "shop/orders/x", "/orders/1", "a/b/1/2"] {
            assert!(bad.parse::<SavepointId>().is_err(), "{bad}");
        }
    }
}

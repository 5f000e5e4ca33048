//! Where a job's checkpoints live in object storage. The only module that builds these paths. Pure.
//!
//! ```text
//! <storage>/<namespace>/<job>/tasks/<p>/HEAD                        owner epoch + latest checkpoint; conditional writes only
//! <storage>/<namespace>/<job>/tasks/<p>/report.json                 what the task last told the operator (state, decisions)
//! <storage>/<namespace>/<job>/tasks/<p>/checkpoints/<id>.json       immutable descriptor
//! <storage>/<namespace>/<job>/tasks/<p>/sst/<content-hash>.sst      immutable SST, shared by checkpoints
//! <storage>/<namespace>/<job>/tasks/<p>/sst/<content-hash>.meta     immutable RocksDB metadata file (MANIFEST, CURRENT, OPTIONS)
//! <storage>/<namespace>/<job>/probes/<owner>                          written and deleted at worker start (checks If-Match)
//! <storage>/<namespace>/<job>/savepoints/<n>/savepoint.json           a savepoint's manifest, written last
//! <storage>/<namespace>/<job>/savepoints/<n>/tasks/<p>/…              its copies of each task's descriptor and files
//! ```
//! Checkpoint ids are zero-padded to 20 digits so a listing sorts them numerically.

use object_store::path::Path;

use crate::assignment::TaskId;
use crate::checkpoint::descriptor::{CheckpointId, ContentHash};

/// The checkpoint paths of one job, relative to the storage URI's bucket root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLayout {
    root: Path,
}

impl JobLayout {
    /// `prefix` is the path part of the storage URI (empty for a bucket root).
    pub fn new(prefix: &Path, namespace: &str, job: &str) -> Self {
        let root = prefix.clone().join(namespace).join(job);
        Self { root }
    }

    /// The object worker `owner` writes at start to check the store honours conditional
    /// writes (one per owner: workers start at the same time).
    pub fn probe(&self, owner: &str) -> Path {
        self.root.clone().join("probes").join(owner)
    }

    /// The directory of the job's savepoints, for listing.
    pub fn savepoints(&self) -> Path {
        self.root.clone().join("savepoints")
    }

    /// Savepoint `n` of the job: laid out as a job of its own (`tasks/<p>/…`), with its
    /// manifest at [`Self::manifest`].
    pub fn savepoint(&self, n: u64) -> JobLayout {
        JobLayout {
            root: self.savepoints().join(n.to_string()),
        }
    }

    /// A savepoint's manifest (of a layout from [`Self::savepoint`]): written last, so a
    /// savepoint without one is incomplete.
    pub fn manifest(&self) -> Path {
        self.root.clone().join("savepoint.json")
    }

    /// Everything under this layout, for deleting a savepoint.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths of task `task`.
    pub fn task(&self, task: TaskId) -> TaskLayout {
        TaskLayout {
            dir: self.root.clone().join("tasks").join(task.to_string()),
        }
    }
}

/// The checkpoint paths of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLayout {
    dir: Path,
}

/// Kind of a state file, which decides its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// An SST: immutable data, usually large, shared between checkpoints.
    Sst,
    /// RocksDB metadata (MANIFEST, CURRENT, OPTIONS): small, usually new per checkpoint.
    Meta,
}

impl FileKind {
    /// The kind of the file named `name` in a RocksDB checkpoint directory.
    pub fn of(name: &str) -> Self {
        if name.ends_with(".sst") {
            Self::Sst
        } else {
            Self::Meta
        }
    }
}

impl TaskLayout {
    /// The task's HEAD object.
    pub fn head(&self) -> Path {
        self.dir.clone().join("HEAD")
    }

    /// The task's report to the operator.
    pub fn report(&self) -> Path {
        self.dir.clone().join("report.json")
    }

    /// The directory of descriptors, for listing.
    pub fn checkpoints(&self) -> Path {
        self.dir.clone().join("checkpoints")
    }

    /// The descriptor of checkpoint `id`.
    pub fn descriptor(&self, id: CheckpointId) -> Path {
        self.checkpoints().join(format!("{:020}.json", id.0))
    }

    /// The checkpoint id a descriptor path names, if it is one.
    pub fn descriptor_id(path: &Path) -> Option<CheckpointId> {
        let name = path.filename()?;
        let digits = name.strip_suffix(".json")?;
        (digits.len() == 20).then(|| digits.parse().ok().map(CheckpointId))?
    }

    /// The directory of state files, for listing.
    pub fn files(&self) -> Path {
        self.dir.clone().join("sst")
    }

    /// A state file by content hash.
    pub fn file(&self, hash: &ContentHash, kind: FileKind) -> Path {
        let suffix = match kind {
            FileKind::Sst => "sst",
            FileKind::Meta => "meta",
        };
        self.files().join(format!("{}.{suffix}", hash.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_layout() -> TaskLayout {
        JobLayout::new(&Path::from("prod/eu"), "payments", "orders").task(7)
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let t = task_layout();
        assert_eq!(t.head().as_ref(), "prod/eu/payments/orders/tasks/7/HEAD");
        assert_eq!(
            t.descriptor(CheckpointId(42)).as_ref(),
            "prod/eu/payments/orders/tasks/7/checkpoints/00000000000000000042.json"
        );
        assert_eq!(
            t.file(&ContentHash("ab12".into()), FileKind::Sst).as_ref(),
            "prod/eu/payments/orders/tasks/7/sst/ab12.sst"
        );
        assert_eq!(
            t.file(&ContentHash("cd34".into()), FileKind::Meta).as_ref(),
            "prod/eu/payments/orders/tasks/7/sst/cd34.meta"
        );
    }

    #[test]
    fn a_bucket_root_has_no_leading_separator() {
        let t = JobLayout::new(&Path::from(""), "ns", "job").task(0);
        assert_eq!(t.head().as_ref(), "ns/job/tasks/0/HEAD");
    }

    #[test]
    fn descriptor_ids_round_trip_and_sort_numerically() {
        let t = task_layout();
        for id in [0, 9, 10, 123_456_789, u64::MAX] {
            assert_eq!(
                TaskLayout::descriptor_id(&t.descriptor(CheckpointId(id))),
                Some(CheckpointId(id))
            );
        }
        assert!(t.descriptor(CheckpointId(9)).as_ref() < t.descriptor(CheckpointId(10)).as_ref());
        assert_eq!(TaskLayout::descriptor_id(&t.head()), None);
        assert_eq!(TaskLayout::descriptor_id(&Path::from("x/12.json")), None);
    }

    #[test]
    fn rocksdb_metadata_files_are_not_ssts() {
        assert_eq!(FileKind::of("000123.sst"), FileKind::Sst);
        for name in ["MANIFEST-000005", "CURRENT", "OPTIONS-000007"] {
            assert_eq!(FileKind::of(name), FileKind::Meta, "{name}");
        }
    }
}

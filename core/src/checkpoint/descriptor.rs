//! What a checkpoint and a task's HEAD say, as stored. Pure data and (de)serialization.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::assignment::TaskId;

/// Increasing number of a task's checkpoints. 0 is never used: the first checkpoint is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Ownership generation of a task. Taking a task over bumps it in HEAD with a conditional
/// write; a worker whose epoch is no longer HEAD's has lost the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Hex content hash (BLAKE3) of a state file: its name in object storage.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentHash(pub String);

/// A task's HEAD: who owns it and which checkpoint is the latest committed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    /// The owner's epoch.
    pub epoch: Epoch,
    /// Who took the task at this epoch (pod name or `local`), for people reading it.
    pub owner: String,
    /// The latest committed checkpoint; none before the first one.
    pub checkpoint: Option<CheckpointId>,
    /// The rollout of the job the owner runs (see [`Claim`]); 0 when none was given.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rollout: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Who claims a task: the owner's name and the rollout of the job it runs. A rollout is the
/// operator's number for the spec it last rolled out to the pods (`SLUICE_ROLLOUT`: the time
/// it rolled the spec's revision out, so it grows with each rollout); a worker of an older rollout (an old pod whose container restarted during a
/// roll, still running the old parallelism) never takes a task from an owner of a newer one.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// Pod name or `local`.
    pub owner: &'a str,
    /// The rollout the owner runs; 0 when it has none (local mode, or a pod of an operator
    /// before rollouts): it takes tasks only from owners without one either.
    pub rollout: u64,
}

/// What a task last told about itself, for the operator: written next to HEAD by the worker
/// running it (unconditionally: it is a report, not a claim) whenever its state changes or it
/// makes a decision a person should see. The operator trusts a report only when its epoch is
/// at least HEAD's (an older owner's report is stale).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskReport {
    /// The task.
    pub task: TaskId,
    /// The worker that wrote it (pod name or `local`).
    pub owner: String,
    /// The owner epoch the writer held (none when it failed before taking the task over).
    pub epoch: Option<Epoch>,
    /// What the task is doing.
    pub state: ReportedState,
    /// Why, when it is not running: the message a person acts on.
    pub message: String,
    /// When it was written (Unix ms).
    pub at_ms: i64,
    /// The latest decisions that gave something up (newest last, at most
    /// [`TaskReport::DECISIONS`]), so that each reaches an Event once.
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// Where its state came from at its last start: `volume`, `store`, `savepoint <id>` or
    /// `empty`; none until it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// Since when (Unix ms) the task has been failing and restarting without running again;
    /// none while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<i64>,
}

impl TaskReport {
    /// How many decisions a report keeps.
    pub const DECISIONS: usize = 16;
}

/// A task's state in its [`TaskReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportedState {
    /// Taking the task over and restoring its state.
    Starting,
    /// Processing records.
    Running,
    /// Failed; restarting from its last checkpoint after a backoff.
    Restarting,
    /// Stopped until the job is changed.
    Failed,
}

/// Something a task gave up by a rule of the job, e.g. records skipped under
/// `onOffsetOutOfRange: earliest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Unique per task: `<owner>/<epoch>/<sequence>`.
    pub id: String,
    /// CamelCase, the Event's reason (e.g. `OffsetReset`).
    pub reason: String,
    /// What was given up and why.
    pub message: String,
    /// When (Unix ms).
    pub at_ms: i64,
}

/// One file of a RocksDB checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateFile {
    /// File name inside the RocksDB directory, e.g. `000042.sst` or `MANIFEST-000005`.
    pub name: String,
    /// Content hash; the object's name.
    pub hash: ContentHash,
    /// Size in bytes.
    pub size: u64,
}

/// An immutable checkpoint descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Descriptor format version.
    pub format: u32,
    /// This checkpoint.
    pub id: CheckpointId,
    /// The task it belongs to.
    pub task: TaskId,
    /// Epoch of the owner that wrote it.
    pub epoch: Epoch,
    /// Wall-clock time it was taken, in milliseconds since the epoch.
    pub created_at_ms: i64,
    /// Per source topic: the next offset to read in partition `task`.
    pub source_offsets: BTreeMap<String, i64>,
    /// The RocksDB files that make up the state.
    pub files: Vec<StateFile>,
    /// The task's watermark when it was taken (event time, ms), if any.
    pub watermark_ms: Option<i64>,
    /// Fingerprint of the steps and format that wrote the state. For a checkpoint without
    /// [`state_signatures`](Self::state_signatures) (written by an earlier build), the only
    /// record of what wrote it: see [`crate::upgrade`].
    pub pipeline_fingerprint: String,
    /// Per stateful step, its state signature: what the compatibility check compares a new
    /// job with ([`crate::upgrade`]). None in descriptors written before signatures existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_signatures: Option<Vec<crate::upgrade::StepState>>,
    /// Records the task had consumed in total, for progress reporting.
    pub records_in: u64,
    /// The checkpoint the task's state came from when this one was taken (HEAD's then): the
    /// link to its predecessor in the task's chain of committed checkpoints. None for a
    /// task's first checkpoint, and in descriptors written before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<CheckpointId>,
    /// Exactly-once: the sink's `transactional.id`. The output up to this checkpoint and its
    /// source offsets were committed in one transaction of that producer, after this
    /// descriptor was written and before HEAD named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactional_id: Option<String>,
    /// The savepoint (`spec.restoreFrom`) the task's state was started from, carried by every
    /// checkpoint after it: a task whose HEAD does not carry the job's `restoreFrom` has not
    /// restored it yet. None for state that never came from a savepoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// Checkpoint `id` of `task` with nothing in it, for tests (here and in the worker's and
/// operator's) to fill in.
#[doc(hidden)]
pub fn test_descriptor(task: TaskId, id: u64) -> Descriptor {
    Descriptor {
        format: DESCRIPTOR_FORMAT,
        id: CheckpointId(id),
        task,
        epoch: Epoch(1),
        created_at_ms: 0,
        source_offsets: BTreeMap::new(),
        files: Vec::new(),
        watermark_ms: None,
        pipeline_fingerprint: String::new(),
        state_signatures: None,
        records_in: 0,
        previous: None,
        transactional_id: None,
        restored_from: None,
    }
}

/// The descriptor format this build writes and reads.
pub const DESCRIPTOR_FORMAT: u32 = 1;

/// Exactly-once: the label of the transaction that carries a checkpoint,
/// `<task>/<epoch>/<checkpoint>`. Every record written in the transaction carries it as the
/// `sluice.txn` header, and the source offsets committed with it carry it as their metadata,
/// so both tell which checkpoint a transaction belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionLabel {
    /// The task.
    pub task: TaskId,
    /// The owner epoch that wrote it.
    pub epoch: Epoch,
    /// The checkpoint the transaction commits with.
    pub checkpoint: CheckpointId,
}

impl fmt::Display for TransactionLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.task, self.epoch, self.checkpoint)
    }
}

impl TransactionLabel {
    const CHECKPOINT_BITS: u32 = 39;
    const EPOCH_BITS: u32 = 24;

    /// The label as one offset, `epoch << 39 | checkpoint`, for brokers that drop commit
    /// metadata (Tansu): the transaction also commits it as the group's offset of the task's
    /// partition of the dead-letter topic, which the group never reads. `None` past 2^24
    /// epochs or 2^39 checkpoints.
    pub fn as_offset(&self) -> Option<i64> {
        (self.epoch.0 < 1 << Self::EPOCH_BITS && self.checkpoint.0 < 1 << Self::CHECKPOINT_BITS)
            .then_some(((self.epoch.0 << Self::CHECKPOINT_BITS) | self.checkpoint.0) as i64)
    }

    /// The label of task `task` that [`as_offset`](Self::as_offset) made `offset`.
    pub fn from_offset(task: TaskId, offset: i64) -> Option<Self> {
        let offset = u64::try_from(offset).ok()?;
        let epoch = offset >> Self::CHECKPOINT_BITS;
        (epoch > 0 && epoch < 1 << Self::EPOCH_BITS).then_some(Self {
            task,
            epoch: Epoch(epoch),
            checkpoint: CheckpointId(offset & ((1 << Self::CHECKPOINT_BITS) - 1)),
        })
    }
}

impl std::str::FromStr for TransactionLabel {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split('/').map(str::parse::<u64>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(task)), Some(Ok(epoch)), Some(Ok(checkpoint)), None) => Ok(Self {
                task: TaskId::try_from(task).map_err(|_| ())?,
                epoch: Epoch(epoch),
                checkpoint: CheckpointId(checkpoint),
            }),
            _ => Err(()),
        }
    }
}

impl Descriptor {
    /// Total bytes of the state files.
    pub fn state_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_label_reads_back_and_nothing_else_passes_for_one() {
        let label = TransactionLabel {
            task: 3,
            epoch: Epoch(7),
            checkpoint: CheckpointId(42),
        };
        assert_eq!(label.to_string(), "3/7/42");
        assert_eq!("3/7/42".parse(), Ok(label));
        for bad in [
            "",
            "3/7",
            "3/7/42/1",
            "a/7/42",
            "3/-7/42",
            "consumer-metadata",
        ] {
            assert_eq!(bad.parse::<TransactionLabel>(), Err(()), "{bad}");
        }
        let offset = label.as_offset().expect("fits");
        assert_eq!(offset, (7 << 39) | 42);
        assert_eq!(TransactionLabel::from_offset(3, offset), Some(label));
        // Offsets no label makes: nothing committed yet, a plain small offset.
        for offset in [-1, 0, 42, (1 << 39) - 1] {
            assert_eq!(TransactionLabel::from_offset(3, offset), None, "{offset}");
        }
        let huge = TransactionLabel {
            epoch: Epoch(1 << 24),
            ..label
        };
        assert_eq!(huge.as_offset(), None);
    }

    #[test]
    fn head_is_stored_as_readable_json() {
        let head = Head {
            epoch: Epoch(3),
            owner: "orders-1".into(),
            checkpoint: Some(CheckpointId(17)),
            rollout: 0,
        };
        let json = serde_json::to_string(&head).unwrap();
        assert_eq!(json, r#"{"epoch":3,"owner":"orders-1","checkpoint":17}"#);
        assert_eq!(serde_json::from_str::<Head>(&json).unwrap(), head);
    }
}

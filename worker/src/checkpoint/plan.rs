//! Checkpoint decisions: the next id, what to upload, what retention deletes, how a task
//! restores. Pure: callers do the object-store I/O these decisions ask for.

use std::collections::{BTreeMap, BTreeSet};

use crate::checkpoint::descriptor::{
    CheckpointId, ContentHash, Descriptor, Head, StateFile, TransactionLabel,
};
use crate::checkpoint::layout::FileKind;

/// The id of a task's next checkpoint: above HEAD's and above every descriptor present, since
/// descriptors are created with `If-None-Match: *` and never overwritten (a killed upload or
/// a fenced zombie may have left ids above HEAD).
pub fn next_checkpoint_id(head: Option<CheckpointId>, present: &[CheckpointId]) -> CheckpointId {
    let highest = present.iter().copied().chain(head).max();
    highest.map_or(CheckpointId(1), CheckpointId::next)
}

/// Files of a new checkpoint not yet in object storage. Files are immutable and named by
/// content, so what the previous committed checkpoint references is there already (retention
/// never deletes HEAD's files).
pub fn files_to_upload<'a>(
    new: &'a [StateFile],
    previous: Option<&Descriptor>,
) -> Vec<&'a StateFile> {
    let uploaded: BTreeSet<&ContentHash> = previous
        .map(|d| d.files.iter().map(|f| &f.hash).collect())
        .unwrap_or_default();
    new.iter().filter(|f| !uploaded.contains(&f.hash)).collect()
}

/// Descriptors retention deletes once HEAD points at `head`: those below HEAD outside the
/// `retain` newest (HEAD counts as one). HEAD itself, anything above it (a pending exactly-once
/// descriptor, or another owner's work after a takeover) and `protected` ids (restores in
/// flight) are never deleted.
pub fn expired_checkpoints(
    present: &[CheckpointId],
    head: CheckpointId,
    retain: usize,
    protected: &[CheckpointId],
) -> Vec<CheckpointId> {
    let mut older: Vec<CheckpointId> = present.iter().copied().filter(|id| *id < head).collect();
    older.sort_unstable_by(|a, b| b.cmp(a));
    older.dedup();
    older
        .into_iter()
        .skip(retain.saturating_sub(1))
        .filter(|id| !protected.contains(id))
        .collect()
}

/// Files that only `expired` descriptors reference, to delete with them.
pub fn unreferenced_files(
    expired: &[&Descriptor],
    kept: &[&Descriptor],
) -> Vec<(ContentHash, FileKind)> {
    let in_use: BTreeSet<&ContentHash> = kept
        .iter()
        .flat_map(|d| d.files.iter().map(|f| &f.hash))
        .collect();
    let mut out: Vec<(ContentHash, FileKind)> = expired
        .iter()
        .flat_map(|d| d.files.iter())
        .filter(|f| !in_use.contains(&f.hash))
        .map(|f| (f.hash.clone(), FileKind::of(&f.name)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How a task gets its state when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePlan {
    /// No checkpoint yet: empty state, starting offsets from the spec.
    Fresh,
    /// The volume still holds this checkpoint: open it, download nothing.
    Local(CheckpointId),
    /// Download this checkpoint's files from object storage.
    Download(CheckpointId),
    /// Download this checkpoint of a savepoint (`spec.restoreFrom`).
    Savepoint(CheckpointId),
}

/// Restores HEAD's checkpoint, from the volume when the volume has exactly that one. Never
/// anything newer than HEAD (not committed) nor older (retention may be deleting it).
pub fn restore_plan(head: Option<&Head>, on_volume: &[CheckpointId]) -> RestorePlan {
    match head.and_then(|h| h.checkpoint) {
        None => RestorePlan::Fresh,
        Some(id) if on_volume.contains(&id) => RestorePlan::Local(id),
        Some(id) => RestorePlan::Download(id),
    }
}

/// What a HEAD write did, decided from HEAD as read again after the write failed or its answer
/// was lost. A conditional PUT that landed can still come back as a conflict (the store's
/// client retried it after a 5xx, and the retry found the new version), and a timeout or a
/// dropped connection says nothing either way: only HEAD itself tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadWrite {
    /// HEAD is what was written: the write landed; carry on with the version read.
    Landed,
    /// HEAD is still what it was before: the write did not land; it may be tried again on the
    /// version read.
    NotLanded,
    /// Someone else wrote HEAD.
    Overwritten,
}

/// Decides [`HeadWrite`] from the HEAD this owner `wrote`, the one it replaced (`before`, none
/// when there was no HEAD) and the one `found` when reading it again.
pub fn head_write_outcome(wrote: &Head, before: Option<&Head>, found: Option<&Head>) -> HeadWrite {
    if found == Some(wrote) {
        HeadWrite::Landed
    } else if found == before {
        HeadWrite::NotLanded
    } else {
        HeadWrite::Overwritten
    }
}

/// Exactly-once recovery: which pending descriptor (written above HEAD, HEAD never named it)
/// to adopt, given the source offsets the consumer group has committed (`committed`) and those
/// of HEAD's checkpoint (`head_offsets`, empty without one). Its transaction committed exactly
/// when it moved the group to its offsets (they were sent in that transaction), so adopt the
/// transactional one whose offsets the group holds; otherwise none, and HEAD's checkpoint
/// stands (its successors' transactions were aborted). Among several, the newest owner's
/// (only the newest producer could commit; a zombie's descriptor is of an older epoch), and
/// of that owner's the oldest (the one whose transaction moved the group there).
///
/// When the group holds HEAD's own offsets, a pending checkpoint that read no input since
/// HEAD (its transaction held only results fired by time, such as closing windows) cannot be
/// told committed from aborted. HEAD stands then: its timers fire again, so such results may
/// be written twice, never lost.
pub fn pending_to_adopt(
    head: Option<CheckpointId>,
    head_offsets: &BTreeMap<String, i64>,
    pending: &[Descriptor],
    committed: &BTreeMap<String, i64>,
) -> Option<CheckpointId> {
    if committed.is_empty() || committed == head_offsets {
        return None;
    }
    pending
        .iter()
        .filter(|d| Some(d.id) > head && d.transactional_id.is_some())
        .filter(|d| &d.source_offsets == committed)
        .min_by_key(|d| (std::cmp::Reverse(d.epoch), d.id))
        .map(|d| d.id)
}

/// Exactly-once recovery on a broker that keeps offset-commit metadata: the group's last
/// committed transaction named its checkpoint (`label`, the metadata of its offsets), so the
/// pending descriptor to adopt is exactly that one, if it is above HEAD and of the epoch that
/// wrote it. This also decides the case offsets cannot: a transaction that read no input since
/// HEAD (results fired by time only). A label naming HEAD or older means HEAD stands.
pub fn pending_named(
    head: Option<CheckpointId>,
    pending: &[Descriptor],
    label: TransactionLabel,
) -> Option<CheckpointId> {
    pending
        .iter()
        .find(|d| {
            Some(d.id) > head
                && d.id == label.checkpoint
                && d.epoch == label.epoch
                && d.task == label.task
                && d.transactional_id.is_some()
        })
        .map(|d| d.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::descriptor::Epoch;

    fn ids(v: &[u64]) -> Vec<CheckpointId> {
        v.iter().copied().map(CheckpointId).collect()
    }

    fn file(name: &str, hash: &str) -> StateFile {
        StateFile {
            name: name.into(),
            hash: ContentHash(hash.into()),
            size: 1,
        }
    }

    fn descriptor(id: u64, files: Vec<StateFile>) -> Descriptor {
        Descriptor {
            files,
            ..sluice_core::checkpoint::descriptor::test_descriptor(0, id)
        }
    }

    #[test]
    fn the_first_checkpoint_is_one_and_ids_never_repeat() {
        assert_eq!(next_checkpoint_id(None, &[]), CheckpointId(1));
        assert_eq!(
            next_checkpoint_id(Some(CheckpointId(4)), &ids(&[2, 3, 4])),
            CheckpointId(5)
        );
        // A killed upload left descriptor 6 above HEAD 4: the next one is 7, never 5 or 6 again.
        assert_eq!(
            next_checkpoint_id(Some(CheckpointId(4)), &ids(&[3, 4, 6])),
            CheckpointId(7)
        );
    }

    #[test]
    fn only_files_the_previous_checkpoint_lacks_are_uploaded() {
        let previous = descriptor(1, vec![file("1.sst", "a"), file("2.sst", "b")]);
        let new = vec![
            file("2.sst", "b"),
            file("3.sst", "c"),
            file("MANIFEST-9", "m"),
        ];
        let upload: Vec<&str> = files_to_upload(&new, Some(&previous))
            .iter()
            .map(|f| f.hash.0.as_str())
            .collect();
        assert_eq!(upload, vec!["c", "m"]);
        assert_eq!(files_to_upload(&new, None).len(), 3);
    }

    #[test]
    fn retention_keeps_head_and_the_newest_before_it() {
        let present = ids(&[1, 2, 3, 4, 5]);
        assert_eq!(
            expired_checkpoints(&present, CheckpointId(5), 3, &[]),
            ids(&[2, 1])
        );
        assert_eq!(
            expired_checkpoints(&present, CheckpointId(5), 1, &[]),
            ids(&[4, 3, 2, 1])
        );
        assert_eq!(
            expired_checkpoints(&present, CheckpointId(5), 10, &[]),
            ids(&[])
        );
    }

    #[test]
    fn retention_never_deletes_head_anything_newer_or_a_protected_checkpoint() {
        // 7 may be a pending exactly-once descriptor or a new owner's work; 2 is being restored.
        let present = ids(&[1, 2, 3, 5, 7]);
        let expired = expired_checkpoints(&present, CheckpointId(5), 1, &ids(&[2]));
        assert_eq!(expired, ids(&[3, 1]));
        for keep in [5, 7, 2] {
            assert!(!expired.contains(&CheckpointId(keep)), "deleted {keep}");
        }
        // retain 0 is treated as 1: HEAD is the last restorable checkpoint.
        assert!(!expired_checkpoints(&present, CheckpointId(5), 0, &[]).contains(&CheckpointId(5)));
    }

    #[test]
    fn files_still_referenced_by_a_kept_checkpoint_survive() {
        let old = descriptor(
            1,
            vec![
                file("1.sst", "a"),
                file("2.sst", "b"),
                file("CURRENT", "c1"),
            ],
        );
        let kept = descriptor(
            2,
            vec![
                file("2.sst", "b"),
                file("3.sst", "d"),
                file("CURRENT", "c2"),
            ],
        );
        assert_eq!(
            unreferenced_files(&[&old], &[&kept]),
            vec![
                (ContentHash("a".into()), FileKind::Sst),
                (ContentHash("c1".into()), FileKind::Meta)
            ]
        );
    }

    #[test]
    fn restore_prefers_the_volume_only_when_it_holds_heads_checkpoint() {
        let head = |id| Head {
            epoch: Epoch(2),
            owner: "w".into(),
            checkpoint: id,
            rollout: 0,
        };
        assert_eq!(restore_plan(None, &[]), RestorePlan::Fresh);
        assert_eq!(
            restore_plan(Some(&head(None)), &ids(&[3])),
            RestorePlan::Fresh
        );
        assert_eq!(
            restore_plan(Some(&head(Some(CheckpointId(4)))), &ids(&[3, 4])),
            RestorePlan::Local(CheckpointId(4))
        );
        // The volume has only a newer, uncommitted one: never restore past HEAD.
        assert_eq!(
            restore_plan(Some(&head(Some(CheckpointId(4)))), &ids(&[5])),
            RestorePlan::Download(CheckpointId(4))
        );
    }

    #[test]
    fn a_head_write_that_failed_is_judged_by_head_as_read_again() {
        let head = |epoch, owner: &str, checkpoint: Option<u64>| Head {
            epoch: Epoch(epoch),
            owner: owner.into(),
            checkpoint: checkpoint.map(CheckpointId),
            rollout: 0,
        };
        let before = head(3, "a", Some(6));
        let wrote = head(3, "a", Some(7));
        // A retried PUT that landed came back 412, or the answer was lost after it landed.
        assert_eq!(
            head_write_outcome(&wrote, Some(&before), Some(&wrote)),
            HeadWrite::Landed
        );
        // A timeout before the store took it.
        assert_eq!(
            head_write_outcome(&wrote, Some(&before), Some(&before)),
            HeadWrite::NotLanded
        );
        // Another owner took the task: a new epoch, or the same epoch under another name.
        for found in [
            head(4, "b", Some(6)),
            head(3, "b", Some(6)),
            head(4, "a", Some(7)),
        ] {
            assert_eq!(
                head_write_outcome(&wrote, Some(&before), Some(&found)),
                HeadWrite::Overwritten,
                "{found:?}"
            );
        }
        // The first takeover of a task, when there was no HEAD.
        let first = head(1, "a", None);
        assert_eq!(head_write_outcome(&first, None, None), HeadWrite::NotLanded);
        assert_eq!(
            head_write_outcome(&first, None, Some(&first)),
            HeadWrite::Landed
        );
        assert_eq!(
            head_write_outcome(&first, None, Some(&head(1, "b", None))),
            HeadWrite::Overwritten
        );
    }

    fn pending(id: u64, offset: i64, transactional: bool) -> Descriptor {
        Descriptor {
            source_offsets: BTreeMap::from([("in".to_string(), offset)]),
            transactional_id: transactional.then(|| "sluice-ns-job-0".to_string()),
            ..descriptor(id, vec![])
        }
    }

    #[test]
    fn a_pending_checkpoint_is_adopted_only_when_the_group_holds_its_offsets() {
        let committed = |o: i64| BTreeMap::from([("in".to_string(), o)]);
        let head = Some(CheckpointId(4));
        let at_head = committed(60);
        let adopt =
            |head, pending: &[Descriptor], group| pending_to_adopt(head, &at_head, pending, &group);
        let candidates = [pending(5, 100, true), pending(6, 180, true)];
        // The transaction of 6 committed (its offsets are the group's): adopt it.
        assert_eq!(
            adopt(head, &candidates, committed(180)),
            Some(CheckpointId(6))
        );
        // 6's transaction was aborted, 5's committed but its HEAD write was lost.
        assert_eq!(
            adopt(head, &candidates, committed(100)),
            Some(CheckpointId(5))
        );
        // The group holds HEAD's offsets (or none): every pending one was aborted.
        assert_eq!(adopt(head, &candidates, committed(60)), None);
        assert_eq!(adopt(head, &candidates, BTreeMap::new()), None);
        // Never below HEAD, never a descriptor written without a transaction.
        assert_eq!(
            adopt(Some(CheckpointId(6)), &candidates, committed(180)),
            None
        );
        assert_eq!(adopt(head, &[pending(5, 100, false)], committed(100)), None);
        // No checkpoint yet: a pending first checkpoint is adopted the same way.
        assert_eq!(
            pending_to_adopt(
                None,
                &BTreeMap::new(),
                &[pending(1, 7, true)],
                &committed(7)
            ),
            Some(CheckpointId(1))
        );
    }

    #[test]
    fn the_checkpoint_a_committed_transaction_names_is_adopted_even_when_it_read_nothing() {
        let label = |epoch, checkpoint| TransactionLabel {
            task: 0,
            epoch: Epoch(epoch),
            checkpoint: CheckpointId(checkpoint),
        };
        let head = Some(CheckpointId(4));
        // 5 read nothing since HEAD (timer results only): offsets cannot tell, its label can.
        let timer_only = [pending(5, 60, true)];
        assert_eq!(
            pending_named(head, &timer_only, label(1, 5)),
            Some(CheckpointId(5))
        );
        // The last committed transaction was HEAD's own: 5's was aborted.
        assert_eq!(pending_named(head, &timer_only, label(1, 4)), None);
        // A zombie's descriptor with the id the label names but another epoch is not it.
        let zombie = Descriptor {
            epoch: Epoch(9),
            ..pending(5, 60, true)
        };
        assert_eq!(pending_named(head, &[zombie], label(1, 5)), None);
        // Nor one written without a transaction, nor another task's.
        assert_eq!(
            pending_named(head, &[pending(5, 60, false)], label(1, 5)),
            None
        );
        let other_task = TransactionLabel {
            task: 1,
            ..label(1, 5)
        };
        assert_eq!(pending_named(head, &timer_only, other_task), None);
    }

    #[test]
    fn a_pending_checkpoint_that_read_nothing_since_its_predecessor_is_never_adopted() {
        let committed = |o: i64| BTreeMap::from([("in".to_string(), o)]);
        // 5 read nothing after HEAD (4, at 60); its transaction held only results fired by
        // time. The group holds 60 whether it committed or not: HEAD stands (results may be
        // written twice, never lost by adopting an aborted transaction's state).
        assert_eq!(
            pending_to_adopt(
                Some(CheckpointId(4)),
                &committed(60),
                &[pending(5, 60, true)],
                &committed(60)
            ),
            None
        );
        // 5 moved the group to 100 and 6 read nothing after it: 5 is the one whose
        // transaction is known to have committed.
        assert_eq!(
            pending_to_adopt(
                Some(CheckpointId(4)),
                &committed(60),
                &[pending(5, 100, true), pending(6, 100, true)],
                &committed(100)
            ),
            Some(CheckpointId(5))
        );
        // A zombie of an older epoch wrote 5 with the same offsets as the newest owner's 6,
        // whose transaction committed: 6 is adopted.
        let zombie = Descriptor {
            epoch: Epoch(1),
            ..pending(5, 100, true)
        };
        let owner = Descriptor {
            epoch: Epoch(2),
            ..pending(6, 100, true)
        };
        assert_eq!(
            pending_to_adopt(
                Some(CheckpointId(4)),
                &committed(60),
                &[zombie, owner],
                &committed(100)
            ),
            Some(CheckpointId(6))
        );
    }
}

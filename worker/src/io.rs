//! What a task reads and writes, as two traits. The worker reads and writes Kafka
//! ([`crate::kafka::KafkaInput`], [`crate::kafka::Sink`]); the engine benchmark and the task-loop
//! tests use [`MemoryInput`] and [`MemoryOutput`], so they run the same loop without a broker.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::checkpoint::descriptor::TransactionLabel;
use crate::kafka::KafkaClientError;

/// One input record and where it sits.
#[derive(Clone, Copy, Debug)]
pub struct InputRecord<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` for a Kafka tombstone.
    pub value: Option<&'a [u8]>,
    /// Kafka record timestamp, epoch milliseconds, when the record has one.
    pub timestamp_ms: Option<i64>,
    /// Record headers, when it has any.
    pub headers: Option<&'a dyn RecordHeaders>,
}

impl std::fmt::Debug for dyn RecordHeaders + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        self.each(&mut |name, value| {
            list.entry(&(name, value));
        });
        list.finish()
    }
}

/// The headers of an input record, read only by steps that ask for them.
pub trait RecordHeaders {
    /// Visits every header in order: name and value (`None` for a null value).
    fn each<'s>(&'s self, visit: &mut dyn FnMut(&'s str, Option<&'s [u8]>));
}

/// The records of one task, in offset order per topic.
pub trait TaskInput {
    /// Hands up to `max` records to `each`, waiting at most `wait` for the first; returns how
    /// many were handed over. Stops at the first error of `each`, and at an error of the
    /// source that a restart cannot mend (an offset out of range under `fail`, a topic that is
    /// gone, refused authorization).
    fn poll<E: From<KafkaClientError>>(
        &mut self,
        max: usize,
        wait: Duration,
        each: impl FnMut(InputRecord<'_>) -> Result<(), E>,
    ) -> Result<usize, E>;

    /// Positions the source moved on its own since the last call (an offset out of range
    /// under `onOffsetOutOfRange: earliest`), for the task to record and count.
    fn skips(&mut self) -> Vec<Skip> {
        Vec::new()
    }

    /// Best effort, for lag tools: everything before `offsets` (next offset per topic) is done.
    fn commit(&self, offsets: &BTreeMap<String, i64>);

    /// Records in `topic` from `next` (the next offset to read; the start when `None`) to
    /// the end, when known.
    fn lag(&self, topic: &str, next: Option<i64>) -> Option<i64>;
}

/// Records of a partition given up because its resume offset was out of range: the task
/// resumes at `to` instead of `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    /// The topic.
    pub topic: String,
    /// The offset the task should have read next.
    pub from: i64,
    /// Where it resumes: the partition's log start.
    pub to: i64,
}

impl Skip {
    /// Records given up (none when the partition was recreated and `from` was past its end).
    pub fn records(&self) -> u64 {
        u64::try_from(self.to - self.from).unwrap_or(0)
    }
}

/// Opens a task's output and input. The output first: with exactly-once it fences the task's
/// previous owner and settles its open transaction, which decides the checkpoint to restore;
/// the input then starts at the restored offsets.
pub trait Connector {
    /// The input.
    type Input: TaskInput;
    /// The output.
    type Output: TaskOutput;

    /// Opens the output.
    fn output(&mut self) -> Result<Self::Output, KafkaClientError>;

    /// Opens the input at `offsets` (next offset per topic). Topics without one start where
    /// `startingOffsets` says, resolved to an offset that is added to `offsets`, so the next
    /// checkpoint records every partition, read or not, and a restart never resolves it again.
    fn input(
        &mut self,
        offsets: &mut BTreeMap<String, i64>,
    ) -> Result<Self::Input, KafkaClientError>;
}

/// Where a task's results and bad records go.
pub trait TaskOutput {
    /// Enqueues an output record; `source` (`topic/partition/offset`) becomes the
    /// `sluice.source` header.
    fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        source: &str,
    ) -> Result<(), KafkaClientError>;

    /// Enqueues a bad record, unchanged, to the dead-letter topic with the reason in headers.
    fn dead_letter(
        &self,
        record: &InputRecord<'_>,
        reason: &DeadLetter<'_>,
        source: &str,
    ) -> Result<(), KafkaClientError>;

    /// Waits until everything enqueued is durable; fails if anything was lost.
    fn flush(&self) -> Result<(), KafkaClientError>;

    /// Exactly-once: the `transactional.id` the output is written under; `None` when records
    /// are written outside transactions.
    fn transactional_id(&self) -> Option<&str> {
        None
    }

    /// Exactly-once: the source offsets the consumer group has committed, read after the
    /// previous owner was fenced, with the label of the transaction that committed them when
    /// the broker kept it.
    fn committed_offsets(&self) -> Result<GroupPosition, KafkaClientError> {
        Ok(GroupPosition::default())
    }

    /// Exactly-once: the label of the open transaction (see [`TransactionLabel`]), set when
    /// it opens: every record sent in it carries it as the `sluice.txn` header, and its
    /// offsets carry it as commit metadata.
    fn label_transaction(&self, label: TransactionLabel) {
        let _ = label;
    }

    /// Exactly-once: commits everything sent since the last commit together with the source
    /// `offsets` in one transaction, then opens the next transaction. False when there was
    /// nothing to commit (no records, offsets unchanged) or no transactions are used.
    fn commit_transaction(
        &self,
        offsets: &BTreeMap<String, i64>,
    ) -> Result<bool, KafkaClientError> {
        let _ = offsets;
        Ok(false)
    }
}

impl<T: TaskOutput + ?Sized> TaskOutput for &T {
    fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        (**self).send(key, value, source)
    }

    fn dead_letter(
        &self,
        record: &InputRecord<'_>,
        reason: &DeadLetter<'_>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        (**self).dead_letter(record, reason, source)
    }

    fn flush(&self) -> Result<(), KafkaClientError> {
        (**self).flush()
    }

    fn transactional_id(&self) -> Option<&str> {
        (**self).transactional_id()
    }

    fn committed_offsets(&self) -> Result<GroupPosition, KafkaClientError> {
        (**self).committed_offsets()
    }

    fn label_transaction(&self, label: TransactionLabel) {
        (**self).label_transaction(label);
    }

    fn commit_transaction(
        &self,
        offsets: &BTreeMap<String, i64>,
    ) -> Result<bool, KafkaClientError> {
        (**self).commit_transaction(offsets)
    }
}

/// What the job's consumer group holds for a task's partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPosition {
    /// Next offset per source topic.
    pub offsets: BTreeMap<String, i64>,
    /// The label of the transaction that committed them, when the broker kept the commit
    /// metadata (Kafka does; Tansu drops it).
    pub label: Option<TransactionLabel>,
}

/// Why a record goes to the dead-letter topic.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// Short kind (`sluice.error.kind`).
    pub kind: &'a str,
    /// Message for a person (`sluice.error.message`).
    pub message: &'a str,
    /// The step that refused the record (`sluice.step`).
    pub step: &'a str,
}

/// Records of one topic partition held in memory: one byte arena and an index, the way a
/// consumer's fetch buffers hold them.
#[derive(Debug, Default)]
pub struct MemoryPartition {
    bytes: Vec<u8>,
    /// (start in `bytes`, key length, value length); a length of `u32::MAX` means `None`.
    index: Vec<(usize, u32, u32)>,
}

const ABSENT: u32 = u32::MAX;

impl MemoryPartition {
    /// Appends a record.
    pub fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let start = self.bytes.len();
        let len = |b: Option<&[u8]>| b.map_or(ABSENT, |b| b.len() as u32);
        self.index.push((start, len(key), len(value)));
        self.bytes.extend_from_slice(key.unwrap_or_default());
        self.bytes.extend_from_slice(value.unwrap_or_default());
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of keys and values.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    fn get(&self, offset: usize) -> (Option<&[u8]>, Option<&[u8]>) {
        let (start, key_len, value_len) = self.index[offset];
        let mut at = start;
        let mut take = |len: u32| {
            (len != ABSENT).then(|| {
                let slice = &self.bytes[at..at + len as usize];
                at += len as usize;
                slice
            })
        };
        let key = take(key_len);
        (key, take(value_len))
    }
}

/// Input from a [`MemoryPartition`], starting at an offset; counts what it handed over.
pub struct MemoryInput {
    topic: String,
    partition: i32,
    records: Arc<MemoryPartition>,
    next: usize,
    handed: Arc<AtomicU64>,
}

impl MemoryInput {
    /// Reads `records` as partition `partition` of `topic` from offset `next`; adds every
    /// record handed over to `handed`.
    pub fn new(
        topic: &str,
        partition: i32,
        records: Arc<MemoryPartition>,
        next: i64,
        handed: Arc<AtomicU64>,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            records,
            next: usize::try_from(next).unwrap_or(0),
            handed,
        }
    }
}

impl TaskInput for MemoryInput {
    fn poll<E: From<KafkaClientError>>(
        &mut self,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(InputRecord<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let end = self.records.len().min(self.next + max);
        if self.next >= end {
            // Like a consumer at the end of its partition: wait for more, which never comes.
            std::thread::sleep(wait);
            return Ok(0);
        }
        let start = self.next;
        let mut result = Ok(());
        for offset in start..end {
            let (key, value) = self.records.get(offset);
            self.next = offset + 1;
            result = each(InputRecord {
                topic: &self.topic,
                partition: self.partition,
                offset: offset as i64,
                key,
                value,
                timestamp_ms: None,
                headers: None,
            });
            if result.is_err() {
                break;
            }
        }
        // Counted once per batch: the tasks share the counter.
        self.handed
            .fetch_add((self.next - start) as u64, Ordering::Relaxed);
        result.map(|()| self.next - start)
    }

    fn commit(&self, _: &BTreeMap<String, i64>) {}

    fn lag(&self, topic: &str, next: Option<i64>) -> Option<i64> {
        (topic == self.topic).then(|| self.records.len() as i64 - next.unwrap_or(0))
    }
}

/// Memory input and output for one task: partition `partition` of `topic` held in `records`.
pub struct MemoryConnector<'a> {
    /// Source topic name.
    pub topic: &'a str,
    /// Partition (the task).
    pub partition: i32,
    /// The partition's records.
    pub records: Arc<MemoryPartition>,
    /// Counts records handed over.
    pub handed: Arc<AtomicU64>,
    /// Where output goes; kept by the caller to read its counts.
    pub output: &'a MemoryOutput,
}

impl<'a> Connector for MemoryConnector<'a> {
    type Input = MemoryInput;
    type Output = &'a MemoryOutput;

    fn output(&mut self) -> Result<Self::Output, KafkaClientError> {
        Ok(self.output)
    }

    fn input(
        &mut self,
        offsets: &mut BTreeMap<String, i64>,
    ) -> Result<MemoryInput, KafkaClientError> {
        let next = *offsets.entry(self.topic.to_string()).or_insert(0);
        Ok(MemoryInput::new(
            self.topic,
            self.partition,
            self.records.clone(),
            next,
            self.handed.clone(),
        ))
    }
}

/// Output that encodes records into a batch buffer, as a producer does before it ships a
/// batch, then drops the batch. Counts records and bytes.
#[derive(Debug, Default)]
pub struct MemoryOutput {
    batch: RefCell<Vec<u8>>,
    /// Output records.
    pub records: Cell<u64>,
    /// Dead-lettered records.
    pub dead_lettered: Cell<u64>,
    /// Bytes encoded.
    pub bytes: Cell<u64>,
}

/// Bytes a [`MemoryOutput`] batch holds before it is shipped (dropped).
const BATCH_BYTES: usize = 1 << 20;

impl MemoryOutput {
    fn encode(&self, parts: &[Option<&[u8]>]) {
        let mut batch = self.batch.borrow_mut();
        if batch.len() >= BATCH_BYTES {
            self.bytes.set(self.bytes.get() + batch.len() as u64);
            batch.clear();
        }
        for part in parts {
            match part {
                Some(bytes) => {
                    batch.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    batch.extend_from_slice(bytes);
                }
                None => batch.extend_from_slice(&ABSENT.to_le_bytes()),
            }
        }
    }
}

impl TaskOutput for MemoryOutput {
    fn send(
        &self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        self.encode(&[key, value, Some(source.as_bytes())]);
        self.records.set(self.records.get() + 1);
        Ok(())
    }

    fn dead_letter(
        &self,
        record: &InputRecord<'_>,
        reason: &DeadLetter<'_>,
        source: &str,
    ) -> Result<(), KafkaClientError> {
        self.encode(&[
            record.key,
            record.value,
            Some(reason.kind.as_bytes()),
            Some(reason.message.as_bytes()),
            Some(reason.step.as_bytes()),
            Some(source.as_bytes()),
        ]);
        self.dead_lettered.set(self.dead_lettered.get() + 1);
        Ok(())
    }

    fn flush(&self) -> Result<(), KafkaClientError> {
        let mut batch = self.batch.borrow_mut();
        self.bytes.set(self.bytes.get() + batch.len() as u64);
        batch.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error of the callback, for these tests.
    #[derive(Debug, PartialEq)]
    struct Bad(&'static str);

    impl From<KafkaClientError> for Bad {
        fn from(_: KafkaClientError) -> Self {
            Self("kafka")
        }
    }

    #[test]
    fn memory_input_hands_out_records_in_order_from_its_start_offset() {
        let mut partition = MemoryPartition::default();
        partition.push(Some(b"k0"), Some(b"v0"));
        partition.push(None, Some(b"v1"));
        partition.push(Some(b"k2"), None);
        let handed = Arc::new(AtomicU64::new(0));
        let mut input = MemoryInput::new("t", 3, Arc::new(partition), 1, handed.clone());
        let mut seen = Vec::new();
        let n = input
            .poll(10, Duration::ZERO, |r| {
                seen.push((
                    r.offset,
                    r.key.map(<[u8]>::to_vec),
                    r.value.map(<[u8]>::to_vec),
                ));
                assert_eq!((r.topic, r.partition), ("t", 3));
                Ok::<_, Bad>(())
            })
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            seen,
            vec![
                (1, None, Some(b"v1".to_vec())),
                (2, Some(b"k2".to_vec()), None)
            ]
        );
        assert_eq!(handed.load(Ordering::Relaxed), 2);
        assert_eq!(input.poll(10, Duration::ZERO, |_| Ok::<_, Bad>(())), Ok(0));
        assert_eq!(input.lag("t", Some(1)), Some(2));
        assert_eq!(input.lag("other", Some(1)), None);
    }

    #[test]
    fn memory_input_stops_at_the_first_error_after_counting_that_record() {
        let mut partition = MemoryPartition::default();
        for i in 0..5u8 {
            partition.push(Some(&[i]), Some(&[i]));
        }
        let mut input = MemoryInput::new("t", 0, Arc::new(partition), 0, Arc::default());
        let err = input.poll(10, Duration::ZERO, |r| {
            if r.offset == 2 {
                Err(Bad("bad"))
            } else {
                Ok(())
            }
        });
        assert_eq!(err, Err(Bad("bad")));
        let mut rest = Vec::new();
        input
            .poll(10, Duration::ZERO, |r| {
                rest.push(r.offset);
                Ok::<_, Bad>(())
            })
            .unwrap();
        assert_eq!(rest, vec![3, 4]);
    }
}

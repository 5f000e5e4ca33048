//! Exactly-once recovery decisions, seen from the outside: a worker dies inside the
//! per-checkpoint protocol (flush → descriptor → offsets into the transaction → commit →
//! HEAD), and the restarted worker adopts the pending checkpoint exactly when its transaction
//! committed, which the consumer group's offsets tell.
//!
//! Tansu (the test broker) does not hide records of aborted transactions from
//! `read_committed` consumers, so the tests read the output as a broker that hides them
//! would show it: only records whose `sluice.txn` label names a checkpoint in the task's chain
//! of committed checkpoints ([`CommittedTransactions`]). Of that output they require what
//! exactly-once promises: the reference table, a result for every input record, and none
//! twice. They also count, by `sluice.source` header, what Tansu shows of aborted
//! transactions.

use std::collections::BTreeMap;

use sluice_e2e::cluster::{
    CommittedTransactions, ExampleRun, Scenario, create_topic, group_offsets, read_until,
    scratch_dir, source_duplicates, sources_where, write_example_job,
};
use sluice_e2e::logs::{field, of_task};
use sluice_worker::checkpoint::descriptor::Descriptor;

const PARTITIONS: u32 = 4;
const KEYS: u64 = 4000;
const EVENTS: u64 = 20_003;

/// One task's store and consumer group right after the crash.
struct TaskAtCrash {
    head: Option<Descriptor>,
    pending: Vec<Descriptor>,
    group: BTreeMap<String, i64>,
}

impl TaskAtCrash {
    /// HEAD's source offsets (none before the first checkpoint).
    fn head_offsets(&self) -> BTreeMap<String, i64> {
        self.head
            .as_ref()
            .map(|d| d.source_offsets.clone())
            .unwrap_or_default()
    }
}

/// What a crash left and what the restarted worker did.
struct Outcome {
    /// The task whose thread hit the failpoint.
    task: u32,
    at_crash: TaskAtCrash,
    /// The restarted worker's log.
    restart_log: String,
    /// Per output partition, as Tansu shows it (with aborted transactions): (records,
    /// duplicates by source header).
    shown: Vec<(u64, u64)>,
}

/// Runs one exactly-once worker owning every task with `failpoint` armed until it aborts,
/// restarts it, waits until the input is covered, and checks the results against the
/// reference.
async fn crash_then_recover(failpoint: &str) -> Outcome {
    let mut s = Scenario::start(
        "eos",
        "500ms",
        "exactly-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        Some(4000),
    );

    let mut workers = s.workers(env!("CARGO_BIN_EXE_sluice-worker"), 1);
    let log = workers.crash_at(0, failpoint);
    let task: u32 = log
        .lines()
        .find_map(|l| l.split("reached by task ").nth(1))
        .and_then(|rest| rest.split(':').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the failpoint names the task it hit:\n{log}"));

    let checkpoints = s.checkpoints();
    let (head, present) = checkpoints.ids(task).await;
    let mut pending = Vec::new();
    for id in present.into_iter().filter(|id| Some(*id) > head) {
        pending.push(checkpoints.descriptor(task, id).await);
    }
    let at_crash = TaskAtCrash {
        head: checkpoints.head(task).await,
        pending,
        group: group_offsets(&s.env, &s.group(), &[&s.input], task),
    };
    eprintln!(
        "{failpoint}: task {task} at the crash: HEAD {:?} at {:?}, pending {:?}, group offsets {:?}",
        at_crash.head.as_ref().map(|d| d.id.0),
        at_crash.head.as_ref().map(|d| &d.source_offsets),
        at_crash
            .pending
            .iter()
            .map(|d| (d.id.0, &d.source_offsets))
            .collect::<Vec<_>>(),
        at_crash.group
    );
    // A transaction commits before HEAD moves: the group (which Tansu moves only for
    // committed transactions) is never behind HEAD. This is what shows a HEAD that names an
    // aborted transaction's checkpoint on Tansu, whose read_committed consumers see aborted
    // records and so cannot show their loss.
    for (topic, head) in at_crash.head_offsets() {
        let group = at_crash.group.get(&topic).copied().unwrap_or(0);
        assert!(
            group >= head,
            "{failpoint}: task {task}: the group's offset of {topic} ({group}) is behind HEAD's \
             ({head}): HEAD names a checkpoint whose transaction did not commit"
        );
    }
    s.input_written();

    let before = log.len();
    workers.start(0);
    let ends = s.ends();
    checkpoints
        .wait_until_covered(&s.input, &ends, || assert_eq!(workers.crashed(), vec![]))
        .await;
    workers.stop_all();
    let restart_log = workers.log(0)[before..].to_string();

    // The protocol's invariant at rest: every task's HEAD was committed in a transaction
    // together with exactly its offsets.
    for t in 0..PARTITIONS {
        let head = checkpoints.head(t).await.expect("a checkpoint");
        assert!(head.transactional_id.is_some(), "task {t}: {head:?}");
        assert_eq!(
            group_offsets(&s.env, &s.group(), &[&s.input], t),
            head.source_offsets,
            "task {t}: the group's offsets are HEAD's"
        );
    }
    // The committed output: the reference table, every input's result, none twice.
    s.assert_materialized(&checkpoints).await;
    let committed: CommittedTransactions = checkpoints.committed_transactions(PARTITIONS).await;
    let sources = sources_where(&s.env, &s.output, PARTITIONS, Some(&committed));
    let missing = sources.missing(&s.input, &ends);
    assert!(
        missing.is_empty(),
        "{failpoint}: {} inputs have no committed result, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        sources.counts.iter().all(|(_, twice)| *twice == 0),
        "{failpoint}: committed results written twice, per partition (records, twice): {:?}",
        sources.counts
    );
    let shown = source_duplicates(&s.env, &s.output, PARTITIONS);
    eprintln!(
        "{failpoint}: committed output (records, twice) per partition: {:?}; as Tansu shows it, with aborted transactions: {shown:?}",
        sources.counts
    );
    Outcome {
        task,
        at_crash,
        restart_log,
        shown,
    }
}

fn restore_line(log: &str, task: u32) -> &str {
    log.lines()
        .find(|l| l.contains("restored task state") && of_task(l, task))
        .unwrap_or_else(|| panic!("no restore of task {task}:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_transaction_committed_before_head_moved_is_adopted() {
    let outcome = crash_then_recover("transaction-after-commit:6").await;
    let at_crash = &outcome.at_crash;
    let task = outcome.task;
    // The transaction committed: the group holds the pending descriptor's offsets.
    let committed = at_crash
        .pending
        .iter()
        .find(|d| d.source_offsets == at_crash.group)
        .unwrap_or_else(|| panic!("task {task}: a pending descriptor holds the group's offsets"));
    assert!(
        outcome
            .restart_log
            .lines()
            .any(|l| l.contains("adopted a checkpoint")
                && of_task(l, task)
                && field(l, "checkpoint") == Some(committed.id.0.to_string().as_str())),
        "task {task} adopts checkpoint {}:\n{}",
        committed.id.0,
        outcome.restart_log
    );
    assert!(
        restore_line(&outcome.restart_log, task).contains(&format!("({})", committed.id.0)),
        "task {task} restores the adopted checkpoint"
    );
    // The adopted checkpoint's records were not processed again: even as Tansu shows it, no
    // result of this task twice.
    assert_eq!(
        outcome.shown[task as usize].1, 0,
        "task {task} writes every result once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_by_a_crash_is_aborted_and_head_stands() {
    // Dies after the descriptor, before the offsets go into the transaction.
    let outcome = crash_then_recover("checkpoint-after-descriptor:6").await;
    let at_crash = &outcome.at_crash;
    let task = outcome.task;
    let head_offsets = at_crash.head_offsets();
    assert_eq!(
        at_crash.group, head_offsets,
        "task {task}: the group holds HEAD's offsets, not the pending descriptor's"
    );
    let dead = at_crash
        .pending
        .iter()
        .max_by_key(|d| d.id)
        .expect("the pending descriptor of the dead checkpoint");
    assert!(
        !outcome
            .restart_log
            .lines()
            .any(|l| l.contains("adopted a checkpoint") && of_task(l, task)),
        "task {task} must not adopt an uncommitted checkpoint"
    );
    let expected = at_crash
        .head
        .as_ref()
        .map_or("plan=Fresh".to_string(), |d| format!("({})", d.id.0));
    assert!(
        restore_line(&outcome.restart_log, task).contains(&expected),
        "task {task} restores HEAD's checkpoint {expected}"
    );
    // The aborted transaction held the records between HEAD and the dead descriptor. A broker
    // that hides aborted transactions shows none of them; Tansu shows them all.
    let input = dead.source_offsets.keys().next().expect("one input topic");
    let aborted =
        (dead.source_offsets[input] - head_offsets.get(input).copied().unwrap_or(0)).max(0) as u64;
    let shown = outcome.shown[task as usize].1;
    eprintln!(
        "task {task}: the aborted transaction held {aborted} results; Tansu's read_committed shows {shown} of them again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_died_between_its_offsets_and_its_commit_is_aborted_and_head_stands() {
    // Dies after send_offsets_to_transaction, before commit_transaction.
    let outcome = crash_then_recover("transaction-after-offsets:6").await;
    let at_crash = &outcome.at_crash;
    let task = outcome.task;
    let head_offsets = at_crash.head_offsets();
    assert_eq!(
        at_crash.group, head_offsets,
        "task {task}: offsets sent in a transaction that never committed do not move the group"
    );
    assert!(
        !outcome
            .restart_log
            .lines()
            .any(|l| l.contains("adopted a checkpoint") && of_task(l, task)),
        "task {task} must not adopt the checkpoint of an uncommitted transaction"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_fired_by_time_alone_are_written_once_when_the_worker_dies_before_head_moves() {
    // One window of one customer; the input stops, the partition goes idle, the watermark
    // follows the clock and the window closes: its result is the only content of a transaction
    // that read no input. The worker dies after that transaction committed, before HEAD moved.
    // The group's offsets are the same as HEAD's, so only the transaction's label (its
    // checkpoint, committed with it) tells that it committed.
    let env = sluice_e2e::TestEnv::from_env();
    let name = sluice_e2e::unique_name("timer-only");
    let dir = scratch_dir("timer-only");
    let (input, output, dead) = (
        format!("{name}.in"),
        format!("{name}.out"),
        format!("{name}.dlq"),
    );
    create_topic(&env, &input, 1);
    let job = write_example_job(
        &env,
        &dir,
        &ExampleRun {
            example: "windowed-aggregate.yaml",
            name: &name,
            input: &input,
            output: &output,
            dead_letter: &dead,
            parallelism: 1,
            interval: "500ms",
            spec_patch: serde_json::json!({
                "eventTime": {"field": "created_at", "maxOutOfOrderness": "0s", "idleTimeout": "1s"},
                "steps": [{"name": "revenue", "aggregate": {
                    "groupBy": "value.customer_id",
                    "aggregations": [{"name": "orders", "function": "count"}],
                    "window": {"tumbling": {"size": "1m"}},
                    "allowedLateness": "0s",
                    "emit": "on-close",
                }}],
                "sink": {"kafka": {"topic": output, "deliveryGuarantee": "exactly-once"}},
            }),
        },
    );
    let producer: rdkafka::producer::BaseProducer = env.kafka_config().create().expect("producer");
    for (i, second) in [10, 20, 58].into_iter().enumerate() {
        let value = serde_json::json!({
            "customer_id": "c1",
            "created_at": 1_700_000_040_000_i64 + second * 1000,
            "n": i,
        })
        .to_string();
        rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10))
            .expect("flush");
        producer
            .send(rdkafka::producer::BaseRecord::<str, str>::to(&input).payload(&value))
            .expect("enqueue");
    }
    rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(30))
        .expect("flush");

    let mut workers = sluice_e2e::cluster::Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &job,
        &dir,
        1,
    );
    let log = workers.crash_at(0, "transaction-after-timer-commit");
    let checkpoints = sluice_e2e::cluster::Checkpoints::of(&env, &job);
    let (head, present) = checkpoints.ids(0).await;
    let pending: Vec<_> = present.into_iter().filter(|id| Some(*id) > head).collect();
    assert_eq!(
        pending.len(),
        1,
        "one checkpoint above HEAD {head:?}: the one whose transaction committed"
    );
    let before = log.len();
    workers.start(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !workers.log(0)[before..].contains("checkpoint committed") {
        assert_eq!(workers.crashed(), vec![], "the worker died on its own");
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint after the restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let restart_log = workers.log(0)[before..].to_string();
    assert!(
        restart_log
            .lines()
            .any(|l| l.contains("adopted a checkpoint")
                && field(l, "checkpoint") == Some(pending[0].to_string().as_str())),
        "the restart adopts checkpoint {} by its transaction's label:\n{restart_log}",
        pending[0]
    );
    // Give a second firing of the window every chance to appear, then count: no transaction
    // was aborted here, so what Tansu shows is what committed.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    workers.stop_all();
    let records = read_until(
        &env,
        &output,
        1,
        std::time::Duration::from_secs(30),
        |r| !r.is_empty(),
        || {},
    );
    let results: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    // The whole topic (read until nothing arrives for 5 s).
    let (written, _) = source_duplicates(&env, &output, 1)[0];
    assert_eq!(
        written, 1,
        "the window's result is written once, not again after the restart: {results:?}"
    );
    assert!(results[0].contains(r#""orders":3"#), "{results:?}");
}

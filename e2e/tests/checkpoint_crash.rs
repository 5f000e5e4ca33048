//! A worker that dies in the middle of committing a checkpoint (while its files upload, or
//! after its descriptor but before HEAD moved) never restores that checkpoint: every task
//! restores the checkpoint its HEAD named at the crash, ids of dead descriptors are never
//! reused, and the results still equal the reference table.

use std::collections::BTreeSet;

use sluice_e2e::Store;
use sluice_e2e::cluster::{Checkpoints, Scenario};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 4000;
const EVENTS: u64 = 20_003;

/// What the store held right after the crash, per task.
struct AtCrash {
    /// HEAD's checkpoint.
    head: Option<u64>,
    /// Descriptors above HEAD: written, never committed.
    dead: Vec<u64>,
    /// State files no descriptor names: an upload cut short.
    orphan_files: usize,
}

/// Loads the input, runs one worker owning every task with `failpoint` armed until it
/// aborts, records the store, restarts the worker and checks the restores and the results.
async fn crash_then_recover(store: Store, failpoint: &str) -> Vec<AtCrash> {
    // Written while the worker runs (5 s), so checkpoint after checkpoint has new files.
    let mut s = Scenario::start_on(
        store,
        "crash",
        "500ms",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        Some(4000),
    );

    let mut workers = s.workers(env!("CARGO_BIN_EXE_sluice-worker"), 1);
    workers.crash_at(0, failpoint);
    s.input_written();

    let checkpoints = s.checkpoints();
    let mut at_crash = Vec::new();
    for task in 0..PARTITIONS {
        let crash = store_of(&checkpoints, task).await;
        eprintln!(
            "{failpoint}: task {task} at the crash: HEAD {:?}, dead descriptors {:?}, {} orphan files",
            crash.head, crash.dead, crash.orphan_files
        );
        at_crash.push(crash);
    }

    let before = workers.log(0).len();
    workers.start(0);
    let ends = s.ends();
    checkpoints
        .wait_until_covered(&s.input, &ends, || assert_eq!(workers.crashed(), vec![]))
        .await;
    workers.stop_all();

    let restart = workers.log(0)[before..].to_string();
    for (task, crash) in at_crash.iter().enumerate() {
        let restored = restart
            .lines()
            .find(|l| l.contains("restored task state") && l.contains(&format!("task={task} ")))
            .unwrap_or_else(|| panic!("no restore of task {task} in the restarted worker's log"));
        let expected = match crash.head {
            Some(id) => format!("({id})"),
            None => "plan=Fresh".to_string(),
        };
        assert!(
            restored.contains(&expected),
            "task {task} must restore HEAD's checkpoint at the crash ({:?}): {restored}",
            crash.head
        );
        let (final_head, _) = checkpoints.ids(task as u32).await;
        for dead in &crash.dead {
            assert!(
                final_head > Some(*dead),
                "task {task}: ids are never reused: HEAD {final_head:?} vs dead {dead}"
            );
        }
    }

    s.assert_materialized(&checkpoints).await;
    at_crash
}

async fn store_of(checkpoints: &Checkpoints, task: u32) -> AtCrash {
    let (head, present) = checkpoints.ids(task).await;
    let mut named = BTreeSet::new();
    for id in &present {
        named.extend(
            checkpoints
                .descriptor(task, *id)
                .await
                .files
                .into_iter()
                .map(|f| f.hash.0),
        );
    }
    let orphan_files = checkpoints
        .file_hashes(task)
        .await
        .into_iter()
        .filter(|hash| !named.contains(hash))
        .count();
    AtCrash {
        head,
        dead: present.into_iter().filter(|id| Some(*id) > head).collect(),
        orphan_files,
    }
}

async fn killed_before_head_moved(store: Store) {
    // The sixth commit of the process dies between its descriptor and HEAD.
    let at_crash = crash_then_recover(store, "checkpoint-after-descriptor:6").await;
    assert!(
        at_crash.iter().any(|t| !t.dead.is_empty()),
        "a descriptor above its HEAD is left behind"
    );
}

async fn killed_while_files_upload(store: Store) {
    // The 25th state file uploaded by the process is its last: a few commits in, while input
    // still arrives, some task's checkpoint has part of its files in the store and no descriptor.
    let at_crash = crash_then_recover(store, "checkpoint-after-file:25").await;
    assert!(
        at_crash.iter().any(|t| t.orphan_files > 0),
        "files of the cut-short upload are in the store, named by no descriptor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_killed_before_head_moved_is_never_restored() {
    killed_before_head_moved(Store::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_killed_while_its_files_upload_is_never_restored() {
    killed_while_files_upload(Store::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_a_checkpoint_killed_before_head_moved_is_never_restored() {
    killed_before_head_moved(Store::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_a_checkpoint_killed_while_its_files_upload_is_never_restored() {
    killed_while_files_upload(Store::Azure).await;
}

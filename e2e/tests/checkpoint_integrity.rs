//! A task restores only state it can vouch for, with real worker processes, the real broker
//! and the S3 server: a checkpoint whose descriptor is zeroed or whose state file is truncated
//! in the store makes the task fall back to the previous retained checkpoint and say so, and a
//! volume holding another job's checkpoint under HEAD's id is not trusted (its marker names
//! the other job), so the task downloads. Both end with the reference table.

use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use sluice_e2e::cluster::{Checkpoints, Scenario, Workers};
use sluice_worker::checkpoint::layout::{FileKind, JobLayout};

const PARTITIONS: u32 = 2;
const KEYS: u64 = 2_000;
const EVENTS: u64 = 20_003;

/// Runs one worker of `s` until every task's checkpoint covers the input, then stops it
/// (final checkpoints). Returns the workers and each task's HEAD checkpoint id.
async fn run_to_the_end(s: &mut Scenario) -> (Workers, Vec<u64>) {
    let mut workers = s.workers(env!("CARGO_BIN_EXE_sluice-worker"), 1);
    workers.start(0);
    s.input_written();
    let checkpoints = s.checkpoints();
    checkpoints
        .wait_until_covered(&s.input, &s.ends(), || {
            assert_eq!(workers.crashed(), vec![], "the worker died on its own")
        })
        .await;
    workers.stop_all();
    let mut heads = Vec::new();
    for task in 0..PARTITIONS {
        heads.push(checkpoints.ids(task).await.0.expect("a checkpoint"));
    }
    (workers, heads)
}

/// Waits until HEAD of every task is above `heads[task]`: the restarted worker restored and
/// checkpointed again.
async fn wait_for_new_heads(checkpoints: &Checkpoints, heads: &[u64], workers: &mut Workers) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut behind = Vec::new();
        for (task, head) in heads.iter().enumerate() {
            if checkpoints.ids(task as u32).await.0 <= Some(*head) {
                behind.push(task);
            }
        }
        if behind.is_empty() {
            return;
        }
        assert_eq!(workers.crashed(), vec![], "the worker died on its own");
        assert!(
            Instant::now() < deadline,
            "tasks {behind:?} never checkpointed after the restart; the worker's log ends:\n{}",
            workers.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_descriptor_or_truncated_state_file_falls_back_to_the_previous_checkpoint() {
    let mut s = Scenario::start(
        "fallback",
        "1s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        Some(3000),
    );
    let checkpoints = s.checkpoints();
    let mut workers = s.workers(env!("CARGO_BIN_EXE_sluice-worker"), 1);
    workers.start(0);

    // SIGKILL the worker while input still arrives, once task 1's HEAD has a state file the
    // checkpoint before it lacks and task 0 has an older checkpoint to fall back to.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (file, heads) = loop {
        assert!(
            Instant::now() < deadline,
            "no two distinct checkpoints within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (Some(h0), present0) = checkpoints.ids(0).await else {
            continue;
        };
        let (Some(h1), present1) = checkpoints.ids(1).await else {
            continue;
        };
        let (Some(p1), true) = (
            present1.iter().rev().find(|id| **id < h1).copied(),
            present0.iter().any(|id| *id < h0),
        ) else {
            continue;
        };
        let (newest, older) = (
            checkpoints.descriptor(1, h1).await,
            checkpoints.descriptor(1, p1).await,
        );
        let own = newest
            .files
            .iter()
            .find(|f| !older.files.iter().any(|o| o.hash == f.hash))
            .cloned();
        if let Some(file) = own {
            workers.kill(0);
            // HEAD may have moved before the kill: corrupt what HEAD names now.
            let now = (checkpoints.ids(0).await.0, checkpoints.ids(1).await.0);
            if now == (Some(h0), Some(h1)) {
                break (file, [h0, h1]);
            }
            workers.start(0);
        }
    };
    let store = s.env.object_store();
    let layout = JobLayout::new(
        &object_store::path::Path::from(s.job.name.as_str()),
        &s.job.namespace,
        &s.job.name,
    );

    // Task 0: HEAD's descriptor zeroed, as a power loss leaves an unsynced file.
    let descriptor =
        layout
            .task(0)
            .descriptor(sluice_worker::checkpoint::descriptor::CheckpointId(
                heads[0],
            ));
    let size = store.head(&descriptor).await.expect("descriptor").size;
    store
        .put(&descriptor, PutPayload::from(vec![0u8; size as usize]))
        .await
        .expect("zero the descriptor");
    // Task 1: a state file only HEAD's checkpoint has, truncated to half.
    let path = layout.task(1).file(&file.hash, FileKind::of(&file.name));
    let bytes = store
        .get(&path)
        .await
        .expect("state file")
        .bytes()
        .await
        .expect("bytes");
    store
        .put(&path, PutPayload::from(bytes.slice(..bytes.len() / 2)))
        .await
        .expect("truncate the state file");
    eprintln!(
        "zeroed descriptor {} of task 0, truncated {} ({} bytes) of checkpoint {} of task 1",
        heads[0], file.name, file.size, heads[1]
    );

    // A new volume, so task 1 must download HEAD's files.
    std::fs::remove_dir_all(workers.volume(0)).expect("wipe the volume");
    workers.start(0);
    wait_for_new_heads(&checkpoints, &heads, &mut workers).await;
    s.input_written();
    checkpoints
        .wait_until_covered(&s.input, &s.ends(), || {
            assert_eq!(workers.crashed(), vec![], "the worker died on its own")
        })
        .await;
    workers.stop_all();
    let log = workers.log(0);
    for task in 0..PARTITIONS {
        let fell_back = log.lines().any(|l| {
            sluice_e2e::logs::of_task(l, task) && l.contains("fell back to an older checkpoint")
        });
        assert!(fell_back, "task {task} says it fell back; log:\n{log}");
    }
    let live_rows = s.assert_materialized(&checkpoints).await;
    eprintln!("both tasks fell back and end with the reference table ({live_rows} live rows)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_holding_another_jobs_checkpoint_under_heads_id_downloads_instead() {
    let mut a = Scenario::start(
        "marker-a",
        "1s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        None,
    );
    // Another job, with other input: its state differs from a's.
    let mut b = Scenario::start(
        "marker-b",
        "1s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS / 2, EVENTS / 3),
        None,
    );
    let (mut a_workers, a_heads) = run_to_the_end(&mut a).await;
    let (b_workers, b_heads) = run_to_the_end(&mut b).await;

    // a's volume now holds b's committed checkpoint (files and marker) under a's HEAD id, as a
    // volume kept across a change of checkpoint storage can.
    for task in 0..PARTITIONS as usize {
        let dir = |workers: &Workers| workers.volume(0).join(format!("tasks/{task}/checkpoints"));
        let (from, to) = (dir(&b_workers), dir(&a_workers));
        let (b_id, a_id) = (b_heads[task], a_heads[task]);
        let target = to.join(a_id.to_string());
        std::fs::remove_dir_all(&target).expect("remove a's local checkpoint");
        std::fs::create_dir_all(&target).expect("local checkpoint dir");
        for entry in std::fs::read_dir(from.join(b_id.to_string())).expect("b's local checkpoint") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), target.join(entry.file_name())).expect("copy");
        }
        std::fs::copy(
            from.join(format!("{b_id}.committed")),
            to.join(format!("{a_id}.committed")),
        )
        .expect("copy the marker");
    }

    a_workers.start(0);
    let checkpoints = a.checkpoints();
    wait_for_new_heads(&checkpoints, &a_heads, &mut a_workers).await;
    a_workers.stop_all();
    let log = a_workers.log(0);
    let restarted = log
        .rsplit("SIGTERM now stops the worker cleanly")
        .next()
        .unwrap_or_default();
    for task in 0..PARTITIONS {
        let downloaded = restarted.lines().any(|l| {
            sluice_e2e::logs::of_task(l, task)
                && l.contains("restored task state")
                && l.contains("Download")
        });
        assert!(downloaded, "task {task} downloads; log:\n{restarted}");
    }
    let live_rows = a.assert_materialized(&checkpoints).await;
    eprintln!("a restored its own state, not b's ({live_rows} live rows)");
}

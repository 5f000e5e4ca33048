//! A worker that dies after uploading a checkpoint's files and descriptor, but before HEAD
//! moved, never restores that checkpoint: it restores HEAD's, never reuses the dead one's id,
//! and still ends with the reference table.

use std::time::Duration;

use sluice_e2e::cdc;
use sluice_e2e::cluster::{
    Checkpoints, Workers, cdc_generator, scratch_dir, wait_for_topic, write_materialize_job,
};
use sluice_e2e::{TestEnv, unique_name};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 4000;
const EVENTS: u64 = 20_003;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_killed_before_head_moved_is_never_restored() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("crash");
    let name = unique_name("crash");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    let job = write_materialize_job(&env, &dir, &name, &input, &output, "500ms");
    let generated = cdc_generator(
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        &env,
        &input,
        PARTITIONS,
        KEYS,
        EVENTS,
    )
    .status()
    .expect("run generator");
    assert!(generated.success());
    wait_for_topic(&env, &input, PARTITIONS);

    // One worker owns all four tasks; it aborts at its sixth commit, between the descriptor
    // and HEAD.
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start_with_env(0, &[("SLUICE_FAILPOINT", "checkpoint-after-descriptor:6")]);
    let status = workers.wait_for_exit(0, Duration::from_secs(120));
    assert!(
        !status.success(),
        "the failpoint aborts the worker, got {status}"
    );

    let checkpoints = Checkpoints::of(&env, &job);
    let mut dead = Vec::new();
    for task in 0..PARTITIONS {
        let (head, present) = checkpoints.ids(task).await;
        for id in present.into_iter().filter(|id| Some(*id) > head) {
            dead.push((task, head, id));
        }
    }
    // Other tasks' commits run concurrently, so more than one may have died half-way.
    assert!(
        !dead.is_empty(),
        "a descriptor above its HEAD is left behind"
    );

    let before = workers.log(0).len();
    workers.start(0);
    let ends = cdc::events_per_partition(EVENTS, KEYS, PARTITIONS);
    checkpoints
        .wait_until_covered(&input, &ends, || assert_eq!(workers.crashed(), vec![]))
        .await;
    workers.stop_all();

    let restart = workers.log(0)[before..].to_string();
    for (task, head, dead_id) in dead {
        let restored = restart
            .lines()
            .find(|l| l.contains("restored task state") && l.contains(&format!("task={task} ")))
            .unwrap_or_else(|| panic!("no restore of task {task} in the restarted worker's log"));
        let expected = match head {
            Some(id) => format!("({id})"),
            None => "plan=Fresh".to_string(),
        };
        assert!(
            restored.contains(&expected) && !restored.contains(&format!("({dead_id})")),
            "task {task} must restore HEAD ({head:?}), not the dead checkpoint {dead_id}: {restored}"
        );
        let (final_head, _) = checkpoints.ids(task).await;
        assert!(
            final_head > Some(dead_id),
            "ids are never reused: HEAD {final_head:?} vs dead {dead_id}"
        );
    }

    checkpoints
        .assert_materialized(&env, &input, &output, &ends, &dir)
        .await;
}

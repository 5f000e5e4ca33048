//! One continuous run of 1,000,003 CDC events while the job is rescaled 3 → 6 → 2 → 5 workers
//! (old and new workers overlap, as when an operator rolls a StatefulSet) with random SIGKILLs
//! in between. Tasks move between workers through their checkpoints; at the end the changelog
//! and every task's state equal the reference. With exactly-once, every task's HEAD ends with
//! the offsets its transaction committed to the consumer group; results written twice are
//! counted by source header and reported (Tansu shows aborted transactions to
//! `read_committed` consumers, so they include every aborted transaction's records).

use std::time::Duration;

use sluice_e2e::cluster::{Rng, Scenario, Workers, group_offsets, source_duplicates};

const PARTITIONS: u32 = 12;
const KEYS: u64 = 170_000;
const EVENTS: u64 = 1_000_003;

enum Step {
    Kill,
    Rescale(u32),
}

async fn rescale_during_a_run(guarantee: &str) {
    let mut rng = Rng::from_env();
    // About 40 s of input, written while the job is rescaled and killed.
    let mut s = Scenario::start(
        "rescale",
        "2s",
        guarantee,
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        Some(25000),
    );

    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &s.job,
        &s.dir,
        3,
    );
    for ordinal in 0..3 {
        workers.start(ordinal);
    }
    let logs = s.dir.clone();
    let alive = |workers: &mut Workers| {
        assert_eq!(
            workers.crashed(),
            vec![],
            "a worker died on its own; see its log in {}",
            logs.display()
        );
    };
    use Step::{Kill, Rescale};
    for step in [
        Kill,
        Rescale(6),
        Kill,
        Rescale(2),
        Kill,
        Kill,
        Rescale(5),
        Kill,
    ] {
        std::thread::sleep(Duration::from_millis(2000 + rng.below(3000)));
        alive(&mut workers);
        match step {
            Kill => {
                let victim = rng.below(u64::from(workers.parallelism())) as u32;
                workers.kill(victim);
                std::thread::sleep(Duration::from_millis(rng.below(1500)));
                workers.start(victim);
                eprintln!("{guarantee}: SIGKILLed and restarted worker {victim}");
            }
            Rescale(to) => {
                let from = workers.parallelism();
                let stopping = workers.rescale(to);
                eprintln!(
                    "{guarantee}: rescaled {from} → {to}; the old workers stopped within {:.1} s",
                    stopping.as_secs_f64()
                );
            }
        }
    }
    s.input_written();

    let ends = s.ends();
    let checkpoints = s.checkpoints();
    checkpoints
        .wait_until_covered(&s.input, &ends, || alive(&mut workers))
        .await;
    workers.stop_all();

    let live_rows = s.assert_materialized(&checkpoints).await;
    let duplicates = source_duplicates(&s.env, &s.output, PARTITIONS);
    let (records, twice) = duplicates
        .iter()
        .fold((0, 0), |(r, d), (pr, pd)| (r + pr, d + pd));
    eprintln!(
        "{guarantee}: {EVENTS} events, rescaled 3 → 6 → 2 → 5 with 5 SIGKILLs: changelog and state \
         of all {PARTITIONS} tasks equal the reference ({live_rows} live rows); the changelog \
         holds {records} records, {twice} of them for an s.input already written (by source header)"
    );
    if guarantee == "exactly-once" {
        for task in 0..PARTITIONS {
            let head = checkpoints.head(task).await.expect("a checkpoint");
            assert_eq!(
                group_offsets(&s.env, &s.group(), &[&s.input], task),
                head.source_offsets,
                "task {task}: the group's offsets are HEAD's"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaling_3_6_2_5_with_sigkills_keeps_every_input_at_least_once() {
    rescale_during_a_run("at-least-once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescaling_3_6_2_5_with_sigkills_under_exactly_once_commits_every_head_in_its_transaction()
{
    rescale_during_a_run("exactly-once").await;
}

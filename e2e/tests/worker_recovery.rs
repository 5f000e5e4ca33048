//! Real `sluice-worker run` processes against the real broker and S3 server, SIGKILLed at
//! random moments (one of them losing its volume): nothing any input did is lost.

use std::time::Duration;

use sluice_e2e::cluster::{Rng, Scenario, Workers};

const PARTITIONS: u32 = 12;
const WORKERS: u32 = 3;
const KEYS: u64 = 170_000;
/// Not a multiple of six: thousands of keys end mid-cycle, so the final table is not empty.
const EVENTS: u64 = 1_000_003;
const KILLS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_survive_random_sigkills_and_end_with_the_reference_table() {
    let mut rng = Rng::from_env();

    // Input arrives while workers run and die: the generator writes it concurrently.
    let mut s = Scenario::start(
        "recovery",
        "2s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        None,
    );

    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &s.job,
        &s.dir,
        WORKERS,
    );
    for ordinal in 0..WORKERS {
        workers.start(ordinal);
    }
    for kill in 0..KILLS {
        std::thread::sleep(Duration::from_millis(1500 + rng.below(4000)));
        let victim = rng.below(u64::from(WORKERS)) as u32;
        workers.kill(victim);
        let wipe = kill == KILLS / 2;
        if wipe {
            std::fs::remove_dir_all(workers.volume(victim)).expect("wipe volume");
        }
        eprintln!(
            "kill {kill}: SIGKILLed worker {victim}{}",
            if wipe { " and wiped its volume" } else { "" }
        );
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        workers.start(victim);
        assert_eq!(
            workers.crashed(),
            vec![],
            "a worker died on its own; see its log in {}",
            s.dir.display()
        );
    }
    s.input_written();

    // Done when every task's committed checkpoint covers the whole input. The input's end per
    // partition follows from the workload (the broker's high watermark cannot be trusted, see
    // `read_table`).
    let ends = s.ends();
    let checkpoints = s.checkpoints();
    checkpoints
        .wait_until_covered(&s.input, &ends, || {
            assert_eq!(
                workers.crashed(),
                vec![],
                "a worker died on its own; see its log in {}",
                s.dir.display()
            );
        })
        .await;
    workers.stop_all();

    let live_rows = s.assert_materialized(&checkpoints).await;
    assert!(
        live_rows > 1000,
        "the workload leaves rows mid-cycle ({live_rows})"
    );
    eprintln!(
        "{EVENTS} events, {KILLS} SIGKILLs: changelog and state of all {PARTITIONS} tasks equal the reference ({live_rows} live rows)"
    );
}

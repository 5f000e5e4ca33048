//! `deliveryGuarantee: none` (no idempotence, `acks=1`) still runs the job: one worker
//! materializes a CDC input into a changelog and its checkpoints, and both equal the
//! reference, with a result for every input record.

use sluice_e2e::cluster::{Scenario, sources};

const PARTITIONS: u32 = 4;
const KEYS: u64 = 4000;
const EVENTS: u64 = 20_003;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_delivery_guarantees_still_materializes_every_input() {
    let mut s = Scenario::start(
        "none",
        "1s",
        "none",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        None,
    );
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
    let live_rows = s.assert_materialized(&checkpoints).await;
    let sources = sources(&s.env, &s.output, PARTITIONS);
    let missing = sources.missing(&s.input, &s.ends());
    assert!(missing.is_empty(), "no result for {missing:?}");
    eprintln!("none: {EVENTS} events, {live_rows} live rows, every input has its result");
}

//! A pod can be told to stop at any moment, also while it is still starting: the worker
//! then exits cleanly (status 0), never by the signal's default action.

use std::time::Duration;

use sluice_e2e::cluster::{Scenario, Workers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sigtermed_during_start_up_exits_cleanly() {
    let s = Scenario::start(
        "stop",
        "2s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (4, 1_000, 6_000),
        None,
    );
    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &s.job,
        &s.dir,
        1,
    );
    // From "signals handled" (the worker's first step, a few milliseconds after exec; before
    // it, as for any process, SIGTERM's default action applies) to "tasks running": every
    // phase of start-up gets a SIGTERM.
    for delay_ms in [0, 50, 150, 300, 600, 1200, 2500] {
        let logged = workers
            .log(0)
            .matches("SIGTERM now stops the worker cleanly")
            .count();
        workers.start(0);
        let started = std::time::Instant::now();
        while workers
            .log(0)
            .matches("SIGTERM now stops the worker cleanly")
            .count()
            == logged
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the worker did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        workers.signal(0, "TERM");
        let status = workers.wait_for_exit(0, Duration::from_secs(60));
        assert!(
            status.success(),
            "SIGTERM {delay_ms} ms into start-up: worker exited with {status}; its log ends:\n{}",
            workers.log_tail(0)
        );
        eprintln!("SIGTERM {delay_ms} ms into start-up: exited cleanly");
    }
}

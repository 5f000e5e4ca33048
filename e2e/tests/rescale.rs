//! One continuous run of 1,000,003 CDC events while the job is rescaled 3 → 6 → 2 → 5 workers
//! (old and new workers overlap, as when an operator rolls a StatefulSet) with random SIGKILLs
//! in between. Tasks move between workers through their checkpoints: after each rescale, a
//! task that stayed on its ordinal reuses the volume when its previous worker took its final
//! checkpoint, and one that moved restores from the store (or from its new volume only when
//! that volume committed the very checkpoint HEAD still names, from an earlier stay there).
//! At the end the changelog and every task's state equal the reference, and the changelog
//! names every input record as a source (every input's effect is there). With exactly-once,
//! the output is read as a broker hiding aborted transactions shows it (Tansu does not; see
//! `CommittedTransactions`), no committed result is there twice, and every task's HEAD ends
//! with the offsets its transaction committed to the consumer group.

use std::time::{Duration, Instant};

use sluice_e2e::cluster::{Rng, Scenario, Workers, group_offsets, sources_where};
use sluice_e2e::logs::{field, of_task};

const PARTITIONS: u32 = 12;
const KEYS: u64 = 170_000;
const EVENTS: u64 = 1_000_003;

enum Step {
    Kill,
    Rescale(u32),
}

/// The first line a worker logs.
const STARTED: &str = "SIGTERM now stops the worker cleanly";

/// A rescale from `from` to `to` workers, and how long each worker's log was before it.
struct Rescaled {
    from: u32,
    to: u32,
    marks: Vec<usize>,
}

/// Checks how each task's new worker restored it after `rescaled`; returns (tasks restored
/// from the volume, from the store).
fn check_restores(workers: &Workers, rescaled: &Rescaled) -> (u32, u32) {
    let Rescaled { from, to, marks } = rescaled;
    let (mut local, mut download) = (0, 0);
    for task in 0..PARTITIONS {
        let ordinal = task % to;
        let mark = marks.get(ordinal as usize).copied().unwrap_or(0);
        let of_task = |line: &&str| of_task(line, task);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The log before the rescale, the previous worker's lines since, and the new worker's.
        let (log, plan) = loop {
            let log = workers.log(ordinal);
            let (_, since) = log.split_at(mark.min(log.len()));
            // The new worker's lines start at its first line (the last start in `since`; no
            // worker was killed since the rescale). A worker restarted just before the rescale
            // may still have been restoring after `marks` was taken.
            let new = &since[since.rfind(STARTED).unwrap_or(since.len())..];
            let plan = new
                .lines()
                .filter(of_task)
                .find(|l| l.contains("restored task state"))
                .and_then(|l| field(l, "plan"))
                .map(str::to_string);
            if let Some(plan) = plan {
                break (log, plan);
            }
            assert!(
                Instant::now() < deadline,
                "task {task}: worker {ordinal} did not restore it within 60 s of the rescale \
                 {from} → {to}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let (before, since) = log.split_at(mark.min(log.len()));
        let old = &since[..since.rfind(STARTED).unwrap_or(since.len())];
        // Logged by the previous worker of this ordinal as it stopped for the rescale.
        let final_checkpoint = old
            .lines()
            .filter(of_task)
            .any(|l| l.contains("task stopped after its final checkpoint"));
        let stayed = task % from == ordinal;
        if stayed && final_checkpoint {
            assert!(
                plan.starts_with("Local("),
                "task {task} stayed on worker {ordinal} ({from} → {to}) after its final \
                 checkpoint there, yet restored {plan} instead of reusing the volume"
            );
        }
        if !stayed && let Some(id) = plan.strip_prefix("Local(") {
            // Only when HEAD did not move since this volume last held the task: the volume
            // then holds the very checkpoint HEAD names, committed from there.
            let id: String = id.chars().filter(char::is_ascii_digit).collect();
            assert!(
                before
                    .lines()
                    .filter(of_task)
                    .any(|l| l.contains("checkpoint committed")
                        && field(l, "checkpoint") == Some(id.as_str())),
                "task {task} moved to worker {ordinal} ({from} → {to}) and restored {plan} from \
                 a volume that never committed that checkpoint"
            );
        }
        if plan.starts_with("Local(") {
            local += 1;
        } else if plan.starts_with("Download(") {
            download += 1;
        }
    }
    (local, download)
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
    let mut rescaled: Option<Rescaled> = None;
    let check = |workers: &Workers, rescaled: Option<Rescaled>| {
        if let Some(r) = rescaled {
            let (local, download) = check_restores(workers, &r);
            eprintln!(
                "{guarantee}: after {} → {}: {local} tasks reused the volume, {download} \
                 downloaded their checkpoint",
                r.from, r.to
            );
        }
    };
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
        check(&workers, rescaled.take());
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
                let marks = (0..from.max(to)).map(|o| workers.log(o).len()).collect();
                let stopping = workers.rescale(to);
                rescaled = Some(Rescaled { from, to, marks });
                eprintln!(
                    "{guarantee}: rescaled {from} → {to}; the old workers stopped within {:.1} s",
                    stopping.as_secs_f64()
                );
            }
        }
    }
    check(&workers, rescaled.take());
    s.input_written();

    let ends = s.ends();
    let checkpoints = s.checkpoints();
    checkpoints
        .wait_until_covered(&s.input, &ends, || alive(&mut workers))
        .await;
    workers.stop_all();

    let live_rows = s.assert_materialized(&checkpoints).await;
    // Exactly-once output is read as a broker hiding aborted transactions shows it.
    let committed = match guarantee {
        "exactly-once" => Some(checkpoints.committed_transactions(PARTITIONS).await),
        _ => None,
    };
    let sources = sources_where(&s.env, &s.output, PARTITIONS, committed.as_ref());
    let missing = sources.missing(&s.input, &ends);
    assert!(
        missing.is_empty(),
        "{} input records have no result in the changelog, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let (records, twice) = sources
        .counts
        .iter()
        .fold((0, 0), |(r, d), (pr, pd)| (r + pr, d + pd));
    eprintln!(
        "{guarantee}: {EVENTS} events, rescaled 3 → 6 → 2 → 5 with 5 SIGKILLs: changelog and state \
         of all {PARTITIONS} tasks equal the reference ({live_rows} live rows); the changelog \
         holds {records} records, {twice} of them for an s.input already written (by source header)"
    );
    if guarantee == "exactly-once" {
        assert_eq!(
            twice, 0,
            "exactly-once: no committed result twice, per partition (records, twice): {:?}",
            sources.counts
        );
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

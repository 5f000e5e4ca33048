//! Zombies, 20 trials: the worker owning every task is SIGSTOPped, a new worker takes the
//! tasks over (HEAD's epoch, then the transactional producer's), and the old one is
//! SIGCONTed. The zombie never commits a checkpoint or a transaction for a task after the
//! takeover, never writes a descriptor, drops its tasks instead of taking them back, and the
//! new owner's results equal the reference.

use std::time::{Duration, Instant};

use sluice_e2e::Store;
use sluice_e2e::cluster::{Rng, Scenario, Workers};
use sluice_e2e::logs::{field, of_task};

const PARTITIONS: u32 = 2;
const KEYS: u64 = 50_000;
const EVENTS: u64 = 300_000;
const TRIALS: usize = 20;
/// On the second store the same protocol runs fewer trials: what differs there is only the
/// store's conditional writes, which every trial's takeover exercises.
const TRIALS_ON_AZURE: usize = 6;

/// The successor's first takeover of `task` in `log`: (epoch, the checkpoint HEAD named then).
fn takeover(log: &str, task: u32) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .find(|l| l.contains("took task over") && of_task(l, task))?;
    let epoch = field(line, "epoch")?.parse().ok()?;
    let checkpoint = field(line, "checkpoint")?
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap_or(0);
    Some((epoch, checkpoint))
}

/// Checkpoints of `task` whose transaction committed (`checkpoint taken … transaction=committed`)
/// or whose HEAD write succeeded (`checkpoint committed`), per `log`. An empty transaction
/// commits nothing and is not counted.
fn commits(log: &str, task: u32) -> Vec<u64> {
    log.lines()
        .filter(|l| {
            let transaction =
                l.contains("checkpoint taken") && field(l, "transaction") == Some("committed");
            (l.contains("checkpoint committed") || transaction) && of_task(l, task)
        })
        .filter_map(|l| field(l, "checkpoint")?.parse().ok())
        .collect()
}

fn committed_after(log: &str, from: usize, task: u32) -> usize {
    log[from..]
        .lines()
        .filter(|l| l.contains("checkpoint committed") && of_task(l, task))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_never_commits_after_a_takeover() {
    paused_owner_never_commits_after_a_takeover(Store::S3, TRIALS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_a_paused_owner_never_commits_after_a_takeover() {
    paused_owner_never_commits_after_a_takeover(Store::Azure, TRIALS_ON_AZURE).await;
}

async fn paused_owner_never_commits_after_a_takeover(store: Store, trials: usize) {
    let mut rng = Rng::from_env();
    let mut s = Scenario::start_on(
        store,
        "zombie",
        "300ms",
        "exactly-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, KEYS, EVENTS),
        Some(4000),
    );

    // Two "pods" for ordinal 0, each with its own volume; they take turns being the zombie.
    let binary = env!("CARGO_BIN_EXE_sluice-worker");
    for pod in ["a", "b"] {
        std::fs::create_dir_all(s.dir.join(pod)).expect("pod dir");
    }
    let mut pods = [
        Workers::new(binary.as_ref(), &s.job, &s.dir.join("a"), 1),
        Workers::new(binary.as_ref(), &s.job, &s.dir.join("b"), 1),
    ];
    let checkpoints = s.checkpoints();
    pods[0].start(0);
    // A zombie is an owner: pod a must have taken every task and committed a checkpoint of
    // each before it is first paused (paused earlier, it is only a pod that starts late).
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..PARTITIONS).any(|t| committed_after(&pods[0].log(0), 0, t) == 0) {
        assert!(
            Instant::now() < deadline,
            "pod a never committed a checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut owner = 0;
    let mut violations = Vec::new();
    let mut slowest = Duration::ZERO;
    for trial in 0..trials {
        let successor = 1 - owner;
        let started = pods[successor].log(0).len();
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        pods[owner].signal(0, "STOP");
        let zombie_log_at_stop = pods[owner].log(0).len();
        pods[successor].start(0);
        // The takeover is complete once the successor committed a checkpoint of every task.
        let deadline = Instant::now() + Duration::from_secs(60);
        while (0..PARTITIONS).any(|t| committed_after(&pods[successor].log(0), started, t) == 0) {
            assert!(Instant::now() < deadline, "trial {trial}: no takeover");
            assert_eq!(pods[successor].crashed(), vec![], "trial {trial}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let successor_log = pods[successor].log(0)[started..].to_string();
        let takeovers: Vec<(u64, u64)> = (0..PARTITIONS)
            .map(|t| takeover(&successor_log, t).expect("a takeover"))
            .collect();
        let epochs: Vec<u64> = takeovers.iter().map(|(e, _)| *e).collect();

        pods[owner].signal(0, "CONT");
        let resumed = Instant::now();
        // Prompt with Kafka, which answers a fenced producer at once; Tansu drops its
        // connection instead, so a zombie stuck in a commit waits for the commit timeout (20 s).
        let status = pods[owner].wait_for_exit(0, Duration::from_secs(90));
        let dropped_after = resumed.elapsed();
        slowest = slowest.max(dropped_after);
        assert!(
            status.success(),
            "trial {trial}: the zombie exits cleanly: {status}"
        );
        let zombie_log = pods[owner].log(0);
        let after_stop = &zombie_log[zombie_log_at_stop..];
        for task in 0..PARTITIONS {
            // A commit the zombie logs after SIGSTOP may have happened before the takeover:
            // then the successor found it in HEAD, or adopted it (its transaction committed).
            let (_, head_at_takeover) = takeovers[task as usize];
            let adopted = pods[successor].log(0)[started..]
                .lines()
                .filter(|l| l.contains("adopted a checkpoint") && of_task(l, task))
                .filter_map(|l| field(l, "checkpoint")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            let late: Vec<u64> = commits(after_stop, task)
                .into_iter()
                .filter(|c| *c > head_at_takeover.max(adopted))
                .collect();
            if !late.is_empty() {
                violations.push(format!(
                    "trial {trial} task {task}: the zombie committed checkpoints {late:?} after the \
                     takeover (HEAD then: {head_at_takeover}, adopted: {adopted})"
                ));
            }
            if !after_stop
                .lines()
                .any(|l| l.contains("taken over by another owner") && of_task(l, task))
            {
                violations.push(format!(
                    "trial {trial} task {task}: the zombie did not drop the task"
                ));
            }
            // Only the successor writes descriptors from its takeover on.
            let (head, present) = checkpoints.ids(task).await;
            let head_epoch = checkpoints.head(task).await.map(|d| d.epoch.0);
            if head_epoch < Some(epochs[task as usize]) {
                violations.push(format!(
                    "trial {trial} task {task}: HEAD {head:?} was written at epoch {head_epoch:?}, before the takeover at {}",
                    epochs[task as usize]
                ));
            }
            for id in present.into_iter().filter(|id| Some(*id) >= head) {
                let epoch = checkpoints.descriptor(task, id).await.epoch.0;
                if epoch < epochs[task as usize] {
                    violations.push(format!(
                        "trial {trial} task {task}: descriptor {id} at the zombie's epoch {epoch}"
                    ));
                }
            }
        }
        eprintln!(
            "trial {trial}: pod {} paused, pod {} took over at epochs {epochs:?}, the zombie dropped its tasks {:.1} s after SIGCONT",
            ["a", "b"][owner],
            ["a", "b"][successor],
            dropped_after.as_secs_f64()
        );
        owner = successor;
    }
    assert!(violations.is_empty(), "{violations:#?}");

    s.input_written();
    let ends = s.ends();
    checkpoints
        .wait_until_covered(&s.input, &ends, || {
            assert_eq!(pods[owner].crashed(), vec![])
        })
        .await;
    pods[owner].stop_all();
    s.assert_materialized(&checkpoints).await;
    eprintln!(
        "{trials} zombie trials on {store:?}: 0 violations; zombies dropped their tasks within {:.1} s of SIGCONT; results equal the reference",
        slowest.as_secs_f64()
    );
}

//! Real `sluice-worker run` processes against the real broker and S3 server, SIGKILLed at
//! random moments (one of them losing its volume): nothing any input did is lost.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_e2e::cdc;
use sluice_e2e::cluster::{Checkpoints, Rng, Workers, read_table, write_materialize_job};
use sluice_e2e::{TestEnv, unique_name};

const PARTITIONS: u32 = 12;
const WORKERS: u32 = 3;
const KEYS: u64 = 170_000;
/// Not a multiple of six: thousands of keys end mid-cycle, so the final table is not empty.
const EVENTS: u64 = 1_000_003;
const KILLS: u32 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_survive_random_sigkills_and_end_with_the_reference_table() {
    let env = TestEnv::from_env();
    let mut rng = Rng::from_env();
    let dir = tempfile_dir("recovery");
    let name = unique_name("cdc").replace('_', "-");
    let input = format!("{name}.in");
    let output = format!("{name}.out");
    let job = write_materialize_job(&env, &dir, &name, &input, &output, "2s");

    // Input arrives while workers run and die: the generator writes it concurrently.
    let mut generator = Command::new(env!("CARGO_BIN_EXE_sluice-cdc-gen"))
        .args(["--bootstrap", &env.kafka_bootstrap, "--topic", &input])
        .args([
            "--partitions",
            &PARTITIONS.to_string(),
            "--keys",
            &KEYS.to_string(),
        ])
        .args(["--events", &EVENTS.to_string()])
        .spawn()
        .expect("start generator");
    wait_for_topic(&env, &input);

    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &job,
        &dir,
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
            dir.display()
        );
    }
    assert!(
        generator.wait().expect("generator").success(),
        "generator failed"
    );

    // Done when every task's committed checkpoint covers the whole input. The input's end per
    // partition follows from the workload (the broker's high watermark cannot be trusted, see
    // `read_table`).
    let ends = cdc::events_per_partition(EVENTS, KEYS, PARTITIONS);
    let checkpoints = Checkpoints::of(&env, &job);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut behind = 0;
        for task in 0..PARTITIONS {
            let done = checkpoints
                .head(task)
                .await
                .map_or(0, |d| d.source_offsets.get(&input).copied().unwrap_or(0));
            behind += ends[task as usize] - done;
        }
        if behind == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks still {behind} records behind after 10 minutes"
        );
        assert_eq!(
            workers.crashed(),
            vec![],
            "a worker died on its own; see its log in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    workers.stop_all();

    // The reference, computed from the input topic alone: the last row per key.
    let reference = read_table(&env, &input, PARTITIONS, Some(&ends))
        .into_iter()
        .map(|table| {
            table
                .into_iter()
                .map(|(key, event)| (key, last_row(event.as_deref())))
                .collect::<BTreeMap<_, _>>()
        })
        .collect::<Vec<_>>();
    let live_rows: usize = reference
        .iter()
        .map(|t| t.values().filter(|v| v.is_some()).count())
        .sum();
    assert!(
        live_rows > 1000,
        "the workload leaves rows mid-cycle ({live_rows})"
    );
    let changelog = read_table(&env, &output, PARTITIONS, None);
    for task in 0..PARTITIONS as usize {
        let published: BTreeMap<_, _> = changelog[task]
            .iter()
            .map(|(k, v)| (k.clone(), v.as_deref().map(json)))
            .collect();
        assert_eq!(
            published.len(),
            reference[task].len(),
            "task {task}: keys in the changelog vs in the input"
        );
        for (key, want) in &reference[task] {
            assert_eq!(
                published.get(key),
                Some(want),
                "task {task}: changelog of key {}",
                String::from_utf8_lossy(key)
            );
        }
        let state: BTreeMap<_, _> = checkpoints
            .state(task as u32, &dir.join(format!("inspect-{task}")))
            .await
            .into_iter()
            .map(|(k, v)| (k, json(&v)))
            .collect();
        let want: BTreeMap<_, _> = reference[task]
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        assert_eq!(state.len(), want.len(), "task {task}: rows in state");
        assert!(
            state == want,
            "task {task}: state differs from the reference"
        );
    }
    eprintln!(
        "{EVENTS} events, {KILLS} SIGKILLs: changelog and state of all {PARTITIONS} tasks equal the reference ({live_rows} live rows)"
    );
}

/// The row a Debezium event leaves (its `after`), or `None` for a delete.
fn last_row(event: Option<&[u8]>) -> Option<serde_json::Value> {
    let after = json(event?)["after"].take();
    (!after.is_null()).then_some(after)
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("JSON")
}

fn wait_for_topic(env: &TestEnv, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while topic_exists(env, topic).is_none() {
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn topic_exists(env: &TestEnv, topic: &str) -> Option<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = env.kafka_config().create().ok()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = metadata.topics().first()?;
    (t.error().is_none() && t.partitions().len() == PARTITIONS as usize).then_some(())
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

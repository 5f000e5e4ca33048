//! A checkpoint written by main's worker (before steps had names: state keyed by the step's
//! position) restores into this one, on the real broker and S3 server. The checkpoint is a
//! fixture, `fixtures/main-checkpoint/` (its descriptor and its state files), made by
//! `make_the_fixture_with_mains_worker` running main's worker build:
//!
//! ```text
//! git worktree add /tmp/main <main's commit> && cargo build --release -p sluice-e2e --bins (there)
//! SLUICE_E2E_WORKER=<that target>/release/sluice-worker \
//!   cargo nextest run -p sluice-e2e --test main_checkpoint --run-ignored only
//! ```
//!
//! The job counts and sums per key after a filter (the aggregate is step 1: its keys start
//! with 1). The fixture holds the counts of six records; the test writes those six again (the
//! checkpoint's offsets point past them), then three more, and the results must continue the
//! counts. Without the restored state they would start over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use sluice_e2e::cluster::{
    Checkpoints, ExampleRun, JobFiles, Workers, create_topic, read_until, scratch_dir,
    write_example_job,
};
use sluice_e2e::{TestEnv, unique_name};
use sluice_worker::checkpoint::descriptor::{Descriptor, Head};
use sluice_worker::checkpoint::layout::FileKind;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/main-checkpoint")
}

/// The fixture's job: a filter, then a count and sum per key on every update.
fn job(env: &TestEnv, name: &str, input: &str) -> (JobFiles, PathBuf) {
    let dir = scratch_dir("main-checkpoint");
    let job = write_example_job(
        env,
        &dir,
        &ExampleRun {
            example: "windowed-aggregate.yaml",
            name,
            input,
            output: &format!("{name}.out"),
            dead_letter: &format!("{name}.dlq"),
            parallelism: 1,
            interval: "1s",
            spec_patch: json!({
                "eventTime": null,
                "steps": [
                    {"name": "positive", "filter": {"expr": "value.amount > 0"}},
                    {"name": "counts", "aggregate": {
                        "groupBy": "value.k",
                        "aggregations": [
                            {"name": "n", "function": "count"},
                            {"name": "total", "function": "sum", "expr": "value.amount"},
                        ],
                        "emit": "on-update",
                    }},
                ],
            }),
        },
    );
    let text = std::fs::read_to_string(&job.manifest).expect("read job");
    let mut manifest: Value = serde_norway::from_str(&text).expect("job YAML");
    manifest["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("eventTime");
    manifest["spec"]["sink"]["kafka"]["deliveryGuarantee"] = "at-least-once".into();
    std::fs::write(
        &job.manifest,
        serde_norway::to_string(&manifest).expect("YAML"),
    )
    .expect("write job");
    (job, dir)
}

fn write(env: &TestEnv, topic: &str, records: &[(&str, i64)]) {
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    for (k, amount) in records {
        let payload = json!({"k": k, "amount": amount}).to_string();
        let record: BaseRecord<'_, str, str> =
            BaseRecord::to(topic).partition(0).payload(payload.as_str());
        producer.send(record).expect("enqueue");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// The records the fixture's checkpoint holds the counts of.
const BEFORE: [(&str, i64); 6] = [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("b", 5), ("c", 6)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_written_by_mains_worker_restores_with_its_state() {
    let env = TestEnv::from_env();
    let name = unique_name("main-checkpoint");
    let input = format!("{name}.in");
    create_topic(&env, &input, 1);
    let (job, dir) = job(&env, &name, &input);
    // The fixture's checkpoint, as HEAD of task 0 of this job; its offsets name this topic.
    let text = std::fs::read_to_string(fixture().join("descriptor.json")).expect("fixture");
    let mut descriptor: Descriptor = serde_json::from_str(&text).expect("descriptor");
    let offset = descriptor
        .source_offsets
        .values()
        .copied()
        .next()
        .expect("an offset");
    assert_eq!(offset, BEFORE.len() as i64);
    descriptor.source_offsets = [(input.clone(), offset)].into();
    let checkpoints = Checkpoints::of(&env, &job);
    let (store, task) = (checkpoints.store(), checkpoints.layout().task(0));
    for file in &descriptor.files {
        let local = fixture().join("state").join(&file.name);
        store
            .put_file(&task.file(&file.hash, FileKind::of(&file.name)), &local)
            .await
            .expect("upload state file");
    }
    store
        .create_descriptor(&task, &descriptor)
        .await
        .expect("descriptor");
    let head = Head {
        epoch: descriptor.epoch,
        owner: "main".into(),
        checkpoint: Some(descriptor.id),
        rollout: 0,
    };
    store.write_head(&task, &head, None).await.expect("HEAD");

    write(&env, &input, &BEFORE);
    write(&env, &input, &[("a", 10), ("b", 20), ("d", 30)]);
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start(0);
    let want: Vec<(String, Value)> = vec![
        ("a".into(), json!({"n": 4, "total": 17})),
        ("b".into(), json!({"n": 3, "total": 28})),
        ("d".into(), json!({"n": 1, "total": 30})),
    ];
    let got = read_until(
        &env,
        &format!("{name}.out"),
        1,
        Duration::from_secs(120),
        |records| records.len() >= want.len(),
        || assert_eq!(workers.crashed(), vec![], "the worker crashed"),
    );
    let got: Vec<(String, Value)> = got
        .iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let value =
                serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).expect("JSON");
            (key, value)
        })
        .collect();
    assert_eq!(got, want, "the counts go on from main's checkpoint");
    workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "makes the fixture; run with SLUICE_E2E_WORKER set to main's worker (see the file's doc)"]
async fn make_the_fixture_with_mains_worker() {
    assert!(
        std::env::var_os("SLUICE_E2E_WORKER").is_some(),
        "set SLUICE_E2E_WORKER to main's worker build"
    );
    let env = TestEnv::from_env();
    let name = unique_name("main-fixture");
    let input = format!("{name}.in");
    create_topic(&env, &input, 1);
    let (job, dir) = job(&env, &name, &input);
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start(0);
    write(&env, &input, &BEFORE);
    let checkpoints = Checkpoints::of(&env, &job);
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoints
        .head(0)
        .await
        .and_then(|d| d.source_offsets.get(&input).copied())
        != Some(BEFORE.len() as i64)
    {
        assert!(Instant::now() < deadline, "no checkpoint covers the input");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workers.stop_all();
    let descriptor = checkpoints.head(0).await.expect("HEAD");
    let (store, task) = (checkpoints.store(), checkpoints.layout().task(0));
    let out = fixture();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("state")).expect("fixture dir");
    for file in &descriptor.files {
        store
            .get_file(
                &task.file(&file.hash, FileKind::of(&file.name)),
                &out.join("state").join(&file.name),
                file.size,
                &file.hash,
            )
            .await
            .expect("download state file");
    }
    std::fs::write(
        out.join("descriptor.json"),
        serde_json::to_vec_pretty(&descriptor).expect("JSON"),
    )
    .expect("write descriptor");
}

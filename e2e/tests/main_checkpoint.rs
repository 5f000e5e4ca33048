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
//! counts. Without the restored state they would start over. Its next checkpoint carries the
//! steps' state signatures: from then on, edits are checked step by step.
//!
//! Such a checkpoint is one generation (see `sluice_core::upgrade`): the same job with an
//! edited filter is refused under `stateChanges: refuse` (restarted or not, HEAD untouched)
//! and starts every step over under `reset`.

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
    job_with(env, name, input, "value.amount > 0", None)
}

/// The fixture's job with filter `filter` and `stateChanges` policy `policy`.
fn job_with(
    env: &TestEnv,
    name: &str,
    input: &str,
    filter: &str,
    policy: Option<&str>,
) -> (JobFiles, PathBuf) {
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
                    {"name": "positive", "filter": {"expr": filter}},
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
    if let Some(policy) = policy {
        manifest["spec"]["upgrade"] = json!({"stateChanges": policy});
    }
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

/// Installs the fixture's checkpoint as HEAD of task 0 of `job`, its offsets naming `input`.
async fn install_fixture(env: &TestEnv, job: &JobFiles, input: &str) -> Descriptor {
    let text = std::fs::read_to_string(fixture().join("descriptor.json")).expect("fixture");
    let mut descriptor: Descriptor = serde_json::from_str(&text).expect("descriptor");
    assert!(
        descriptor.state_signatures.is_none(),
        "written before signatures"
    );
    let offset = descriptor
        .source_offsets
        .values()
        .copied()
        .next()
        .expect("an offset");
    assert_eq!(offset, BEFORE.len() as i64);
    descriptor.source_offsets = [(input.to_string(), offset)].into();
    let checkpoints = Checkpoints::of(env, job);
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
    descriptor
}

/// Reads `want.len()` results from the job's output.
fn results(env: &TestEnv, name: &str, want: usize, workers: &mut Workers) -> Vec<(String, Value)> {
    let got = read_until(
        env,
        &format!("{name}.out"),
        1,
        Duration::from_secs(120),
        |records| records.len() >= want,
        || assert_eq!(workers.crashed(), vec![], "the worker crashed"),
    );
    got.iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let value =
                serde_json::from_slice(r.value.as_deref().unwrap_or(b"null")).expect("JSON");
            (key, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_written_by_mains_worker_restores_with_its_state() {
    let env = TestEnv::from_env();
    let name = unique_name("main-checkpoint");
    let input = format!("{name}.in");
    create_topic(&env, &input, 1);
    let (job, dir) = job(&env, &name, &input);
    install_fixture(&env, &job, &input).await;
    let checkpoints = Checkpoints::of(&env, &job);
    write(&env, &input, &BEFORE);
    write(&env, &input, &[("a", 10), ("b", 20), ("d", 30)]);
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start(0);
    let want: Vec<(String, Value)> = vec![
        ("a".into(), json!({"n": 4, "total": 17})),
        ("b".into(), json!({"n": 3, "total": 28})),
        ("d".into(), json!({"n": 1, "total": 30})),
    ];
    let got = results(&env, &name, want.len(), &mut workers);
    assert_eq!(got, want, "the counts go on from main's checkpoint");
    // The next checkpoint signs the steps' state: later edits are checked step by step.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let head = checkpoints.head(0).await.expect("HEAD");
        if let Some(signatures) = head.state_signatures {
            let names: Vec<&str> = signatures.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["counts"]);
            break;
        }
        assert!(Instant::now() < deadline, "no signed checkpoint");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_mains_checkpoint_is_refused_under_refuse_and_starts_over_under_reset() {
    let env = TestEnv::from_env();
    let name = unique_name("main-edited");
    let input = format!("{name}.in");
    create_topic(&env, &input, 1);
    // Only the filter changes, but main's checkpoint cannot tell whose entries are whose.
    let edited = "value.amount > -100";
    let (job, dir) = job_with(&env, &name, &input, edited, None);
    let installed = install_fixture(&env, &job, &input).await;
    write(&env, &input, &BEFORE);
    write(&env, &input, &[("a", 10), ("b", 20), ("d", 30)]);
    let checkpoints = Checkpoints::of(&env, &job);
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    for attempt in 0..2 {
        let log = workers.start_until_refused(0);
        assert!(
            log.contains("written before per-step state signatures"),
            "{log}"
        );
        assert!(
            log.contains("until every task has checkpointed once"),
            "{log}"
        );
        let head = checkpoints.head_record(0).await.expect("HEAD");
        assert_eq!(
            head.checkpoint,
            Some(installed.id),
            "attempt {attempt}: HEAD untouched"
        );
        workers.kill(0);
    }
    // Under reset every step starts over: the counts are of the records after the checkpoint.
    let (job, _) = job_with(&env, &name, &input, edited, Some("reset"));
    let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
    workers.start(0);
    let want: Vec<(String, Value)> = vec![
        ("a".into(), json!({"n": 1, "total": 10})),
        ("b".into(), json!({"n": 1, "total": 20})),
        ("d".into(), json!({"n": 1, "total": 30})),
    ];
    assert_eq!(results(&env, &name, want.len(), &mut workers), want);
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

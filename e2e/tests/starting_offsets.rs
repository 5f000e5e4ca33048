//! Where a job without checkpoints starts, end to end on the real broker and S3 server with a
//! real worker: `startingOffsets: latest` skips what was written before the job started;
//! `timestamp` starts at the first record at or after `startingTimestamp` (the records' Kafka
//! timestamps); `startingPartitionOffsets` starts a partition at a given offset, and one
//! outside the partition stops the task with a message. Once a task has checkpointed, a
//! restart resumes from the checkpoint whatever the starting options say.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use sluice_e2e::cluster::{Checkpoints, JobFiles, Workers, create_topic, read_until, scratch_dir};
use sluice_e2e::{TestEnv, unique_name};

/// Kafka timestamp of record 0; one record per second.
const T0: i64 = 1_700_000_000_000;

/// Produces records `records` to partition 0 of `topic`, one batch each: Tansu answers
/// ListOffsets (the end a `latest` start resolves to) and timestamp lookups per batch, by its
/// first record, where Kafka answers per record.
fn produce(env: &TestEnv, topic: &str, records: std::ops::Range<i64>) {
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    for i in records {
        let (key, value) = (format!("k{i}"), json!({"i": i}).to_string());
        let record = BaseRecord::to(topic)
            .partition(0)
            .key(&key)
            .payload(&value)
            .timestamp(T0 + i * 1000);
        producer.send(record).expect("enqueue");
        producer.flush(Duration::from_secs(60)).expect("flush");
    }
}

struct Run {
    env: TestEnv,
    files: JobFiles,
    input: String,
    output: String,
    workers: Workers,
}

/// A materialize job reading `input` from where `source` (fields of `source.kafka`) says.
fn run(prefix: &str, source: Value) -> Run {
    let env = TestEnv::from_env();
    let dir = scratch_dir(prefix);
    let name = unique_name(prefix);
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 1);
    let storage = format!("s3://{}/{name}", env.s3_bucket);
    let mut kafka =
        json!({"bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json"});
    for (k, v) in source.as_object().into_iter().flatten() {
        kafka[k] = v.clone();
    }
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name, "namespace": "e2e"},
        "spec": {
            "parallelism": 1,
            "source": {"kafka": kafka},
            "steps": [{"name": "table", "materialize": {}}],
            "sink": {"kafka": {"topic": output}},
            "checkpoint": {"storage": storage, "endpoint": env.s3_endpoint, "interval": "1s"},
        },
    });
    let path = dir.join("job.yaml");
    std::fs::write(&path, serde_norway::to_string(&manifest).expect("yaml")).expect("write");
    let files = JobFiles {
        manifest: path,
        namespace: "e2e".into(),
        name,
        storage,
    };
    let workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &files,
        &dir,
        1,
    );
    Run {
        env,
        files,
        input,
        output,
        workers,
    }
}

impl Run {
    /// Waits until task 0 has checkpointed input offset `next` or more.
    async fn checkpointed(&mut self, next: i64) {
        let checkpoints = Checkpoints::of(&self.env, &self.files);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = (checkpoints.head(0).await)
                .and_then(|d| d.source_offsets.get(&self.input).copied());
            if at.is_some_and(|at| at >= next) {
                return;
            }
            assert_eq!(self.workers.crashed(), vec![], "the worker crashed");
            assert!(
                Instant::now() < deadline,
                "no checkpoint at {next} (at {at:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asserts the output holds exactly the rows of records `want`.
    fn expect_rows(&mut self, want: std::ops::Range<i64>) {
        let want: BTreeSet<String> = want.map(|i| format!("k{i}")).collect();
        let keys = |records: &[sluice_e2e::cluster::Received]| -> BTreeSet<String> {
            records
                .iter()
                .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
                .collect()
        };
        let got = read_until(
            &self.env,
            &self.output,
            1,
            Duration::from_secs(60),
            |records| want.is_subset(&keys(records)),
            || {},
        );
        assert_eq!(keys(&got), want, "the rows of exactly these records");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_skips_what_came_before_the_first_start_and_a_restart_resumes_from_the_checkpoint() {
    let mut r = run("start-latest", json!({"startingOffsets": "latest"}));
    produce(&r.env, &r.input, 0..10);
    r.workers.start(0);
    // The first position, the end, is recorded in the first checkpoint.
    r.checkpointed(10).await;
    produce(&r.env, &r.input, 10..15);
    r.checkpointed(15).await;
    r.workers.stop_all();
    // Written while it was stopped: read on restart, from the checkpoint, not skipped as
    // `latest` would.
    produce(&r.env, &r.input, 15..18);
    r.workers.start(0);
    r.checkpointed(18).await;
    r.expect_rows(10..18);
    r.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_starts_at_the_first_record_at_or_after_it() {
    let at = k8s_openapi::jiff::Timestamp::from_millisecond(T0 + 5_000).expect("time");
    let mut r = run(
        "start-timestamp",
        json!({"startingOffsets": "timestamp", "startingTimestamp": at.to_string()}),
    );
    produce(&r.env, &r.input, 0..10);
    r.workers.start(0);
    r.checkpointed(10).await;
    r.expect_rows(5..10);
    r.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_offsets_start_a_partition_where_given_and_refuse_one_outside_it() {
    let mut r = run("start-offsets", json!({}));
    let input = r.input.clone();
    // Rewrite the job with the offsets, now that the topic's name is known.
    let text = std::fs::read_to_string(&r.files.manifest).expect("manifest");
    let with = |offset: i64| {
        let mut job: Value = serde_norway::from_str(&text).expect("yaml");
        job["spec"]["source"]["kafka"]["startingPartitionOffsets"] = json!({&input: {"0": offset}});
        serde_norway::to_string(&job).expect("yaml")
    };
    std::fs::write(&r.files.manifest, with(99)).expect("write");
    produce(&r.env, &r.input, 0..10);
    r.workers.start(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let refusal = format!(
        "spec.source.kafka.startingPartitionOffsets starts {input} partition 0 at offset 99, but \
         the partition holds offsets 0 to 10"
    );
    while !r.workers.log(0).contains(&refusal) {
        assert!(
            Instant::now() < deadline,
            "no refusal:\n{}",
            r.workers.log_tail(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        r.workers
            .log(0)
            .contains("stays stopped until the job is changed"),
        "{}",
        r.workers.log_tail(0)
    );
    r.workers.stop_all();
    std::fs::write(&r.files.manifest, with(7)).expect("write");
    r.workers.start(0);
    r.checkpointed(10).await;
    r.expect_rows(7..10);
    r.workers.stop_all();
}

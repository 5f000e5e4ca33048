//! Partitions added to an input topic while jobs run, through the fake API server with the
//! real operator, real workers, the real broker and S3 server:
//! - under `onNewPartitions: report` (the default) the job goes on reading the partitions it
//!   was rolled out onto and says so: `PartitionsChanged=True`, reason `PartitionsAdded`, with
//!   the counts; records in the new partitions are not read;
//! - switched to `adopt`, the operator rolls it onto all partitions and the new ones are read
//!   from their earliest offset, though the job starts at `latest`: every record written to
//!   them before the adoption is in the output (nothing skipped); the condition turns `False`;
//! - a job that keeps keyed state (a dedupe) with `adopt` under `stateChanges: refuse` does not
//!   roll: the adoption is held (`AdoptionHeld`), with the refusal and the plan saying why;
//! - `sluice-worker local`, whose job file pins no partitions, restarted after its topic grew:
//!   the tasks after the last one with a checkpoint count as added, so the new partitions are
//!   read from their earliest offset, not skipped under `latest`.
//!
//! Tansu 0.6 has no CreatePartitions: the topic grows as `grow_topic` says, in the broker's own
//! metadata, after which the broker serves the new partitions like any others.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use sluice_e2e::cluster::{
    Checkpoints, JobFiles, Received, Workers, create_topic, grow_topic, read_until, scratch_dir,
};
use sluice_e2e::operator::{Cluster, NAMESPACE, apply, checkpoint, job, streamjob, tail};
use sluice_e2e::{TestEnv, unique_name};

/// Writes a record keyed `<tag>-<partition>-<i>` to each of `partitions`, for `i` in `records`.
fn produce(
    env: &TestEnv,
    topic: &str,
    tag: &str,
    partitions: &[i32],
    records: std::ops::Range<u32>,
) -> BTreeSet<String> {
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    let mut keys = BTreeSet::new();
    for p in partitions {
        for i in records.clone() {
            let key = format!("{tag}-{p}-{i}");
            let value = json!({"i": i}).to_string();
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(*p)
                        .key(&key)
                        .payload(&value),
                )
                .expect("enqueue");
            keys.insert(key);
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    keys
}

fn keys(records: &[Received]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// Reads the 4 partitions of `output` until every key of `want` is there, within `within`;
/// panics naming the ones skipped, with `context` (a log tail).
fn expect_keys(
    env: &TestEnv,
    output: &str,
    want: &BTreeSet<String>,
    within: Duration,
    context: impl FnOnce() -> String,
) {
    let got = read_until(env, output, 4, within, |r| want.is_subset(&keys(r)), || {});
    let read = keys(&got);
    let missing: Vec<&String> = want.difference(&read).collect();
    assert!(
        missing.is_empty(),
        "records skipped: {missing:?}\n{}",
        context()
    );
}

/// The condition `type_` of job `name` once `done` holds for it, within `within`.
fn wait_condition(
    cluster: &Cluster,
    name: &str,
    type_: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let j = job(&cluster.store, name).expect("the job exists");
        let found = j["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned());
        if let Some(c) = found.filter(|c| done(c)) {
            return c;
        }
        assert!(
            started.elapsed() < within,
            "{name}: {type_} not as expected after {within:?}: {}\n{}",
            j["status"],
            tail(&cluster.operator.log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partitions_are_reported_then_adopted_from_their_earliest_offset_and_held_for_keyed_state()
 {
    // Tansu grows a topic only through its storage (see `grow_topic`): the jobs run on the
    // broker that keeps it on the S3 server.
    let env = TestEnv::from_env().on_growable_broker();
    let dir = scratch_dir("partitions");
    let name = unique_name("grow");
    let keyed = format!("{name}-keyed");
    let input = format!("{name}.in");
    let (output, keyed_output) = (format!("{name}.out"), format!("{name}.keyed.out"));
    create_topic(&env, &input, 2);
    // Task p writes partition p of the sink and of the dead-letter topic: they have room for
    // the adopted partitions (a worker refuses to start a task that could write nowhere), but
    // for the stateless job's dead-letter topic, which the operator must find too small.
    for topic in [&output, &keyed_output] {
        create_topic(&env, topic, 4);
    }
    let dead_letters = format!("{output}.dlq");
    create_topic(&env, &dead_letters, 2);
    create_topic(&env, &format!("{keyed_output}.dlq"), 4);
    let cluster = Cluster::start(
        &dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await;
    let spec = |job: &str, out: &str, steps: Value, on_new: &str| {
        json!({
            "parallelism": 1,
            "source": {"kafka": {
                "bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json",
                "startingOffsets": "latest", "onNewPartitions": on_new,
                "partitionDiscoveryInterval": "1s",
            }},
            "steps": steps,
            "sink": {"kafka": {"topic": out}},
            "checkpoint": checkpoint(&env, &format!("s3://{}/{job}", env.s3_bucket)),
            "state": {"size": "1Gi"},
        })
    };
    let stateless = json!([{"name": "all", "filter": {"expr": "value.i >= 0"}}]);
    let dedupe = json!([{"name": "once", "dedupe": {"key": "value.i", "ttl": "1h"}}]);
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(&name, spec(&name, &output, stateless.clone(), "report")),
    );
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(&keyed, spec(&keyed, &keyed_output, dedupe.clone(), "adopt")),
    );
    for j in [&name, &keyed] {
        let all = wait_condition(
            &cluster,
            j,
            "PartitionsChanged",
            Duration::from_secs(180),
            |c| c["status"] == "False",
        );
        assert_eq!(
            all["message"],
            "the job reads all 2 partitions of each source topic"
        );
        wait_condition(&cluster, j, "Ready", Duration::from_secs(180), |c| {
            c["status"] == "True"
        });
    }
    // `latest` resolves when a task starts: wait until the job reads before writing what it
    // must not skip.
    let mut probe = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let want = produce(&env, &input, &format!("probe{probe}"), &[0], 0..1);
        let got = read_until(
            &env,
            &output,
            4,
            Duration::from_secs(5),
            |r| want.is_subset(&keys(r)),
            || {},
        );
        if want.is_subset(&keys(&got)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job reads nothing: {}",
            tail(&cluster.operator.log)
        );
        probe += 1;
    }

    let grown = Instant::now();
    grow_topic(&env, &input, 4);
    let added = produce(&env, &input, "new", &[2, 3], 0..20);
    let old = produce(&env, &input, "old", &[0, 1], 0..20);
    let reported = wait_condition(
        &cluster,
        &name,
        "PartitionsChanged",
        Duration::from_secs(120),
        |c| c["status"] == "True",
    );
    eprintln!(
        "PartitionsChanged {:.1} s after the topic grew: {reported}",
        grown.elapsed().as_secs_f64()
    );
    assert_eq!(reported["reason"], "PartitionsAdded");
    let message = reported["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "the source topics have 4 partitions, the job reads 2: partitions 2–3 are not read"
        ),
        "{message}"
    );
    let got = read_until(
        &env,
        &output,
        4,
        Duration::from_secs(60),
        |r| old.is_subset(&keys(r)),
        || {},
    );
    assert!(
        old.is_subset(&keys(&got)),
        "the partitions read go on being read"
    );
    assert!(
        keys(&got).is_disjoint(&added),
        "a new partition is read without a decision"
    );
    let worker_log = std::fs::read_to_string(
        dir.join("cluster/logs")
            .join(format!("{NAMESPACE}.{name}-0.log")),
    )
    .unwrap_or_default();
    assert!(
        worker_log.contains("partition discovery: the topic has 4 partitions, the job reads 2"),
        "the worker's discovery logs the change:\n{}",
        &worker_log[worker_log.len().saturating_sub(3000)..]
    );

    // The keyed job adopts nothing: more partitions move keys between tasks.
    let held = wait_condition(
        &cluster,
        &keyed,
        "PartitionsChanged",
        Duration::from_secs(120),
        |c| c["status"] == "True",
    );
    assert_eq!(held["reason"], "AdoptionHeld", "{held}");
    let k = job(&cluster.store, &keyed).expect("keyed job");
    let progressing = k["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned())
        .expect("Progressing");
    let says = progressing["message"].as_str().unwrap_or_default();
    assert!(
        says.contains(
            "The input now has 4 partitions where the state was checkpointed across 2 tasks"
        ),
        "{progressing}"
    );
    assert_eq!(
        k["status"]["plan"]["action"], "adopt-partitions",
        "{}",
        k["status"]["plan"]
    );
    eprintln!(
        "keyed job held: {held}\n{progressing}\nplan {}",
        k["status"]["plan"]
    );

    // Adopting onto a dead-letter topic with too few partitions would stop every worker: the
    // operator refuses it first, and the job goes on reading its 2 partitions.
    apply(
        &cluster.kubeconfig,
        &dir,
        &streamjob(&name, spec(&name, &output, stateless, "adopt")),
    );
    let refused = wait_condition(&cluster, &name, "SpecValid", Duration::from_secs(90), |c| {
        c["reason"] == "OutputPartitionsTooFew"
    });
    let says = refused["message"].as_str().unwrap_or_default();
    assert!(
        says.contains(&format!(
            "adopting the source's 4 partitions (from 2) needs 4 in topic {dead_letters}, which \
             has 2"
        )),
        "{refused}"
    );
    eprintln!("adoption refused: {refused}");
    let held = wait_condition(
        &cluster,
        &name,
        "PartitionsChanged",
        Duration::from_secs(60),
        |c| c["reason"] == "AdoptionHeld",
    );
    assert!(
        held["message"]
            .as_str()
            .unwrap_or_default()
            .contains("is held by SpecValid: OutputPartitionsTooFew, see that condition"),
        "{held}"
    );

    // Adopted once the topic has room: everything written to the new partitions before is read.
    grow_topic(&env, &dead_letters, 4);
    let adopting = Instant::now();
    let all = wait_condition(
        &cluster,
        &name,
        "PartitionsChanged",
        Duration::from_secs(180),
        |c| c["status"] == "False",
    );
    let after = produce(&env, &input, "after", &[0, 1, 2, 3], 0..5);
    let want: BTreeSet<String> = added.union(&after).cloned().collect();
    expect_keys(&env, &output, &want, Duration::from_secs(120), || {
        tail(&cluster.operator.log)
    });
    eprintln!(
        "adopted: all {} records of the new partitions in the output {:.1} s after the dead-letter topic grew; {all}",
        added.len(),
        adopting.elapsed().as_secs_f64()
    );
    assert_eq!(
        all["message"],
        "the job reads all 4 partitions of each source topic; partitions 2–3 were added while it ran and read from their earliest offset"
    );
    let k = job(&cluster.store, &keyed).expect("keyed job");
    let still = k["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PartitionsChanged").cloned())
        .expect("PartitionsChanged");
    assert_eq!(still["reason"], "AdoptionHeld", "still held: {still}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_worker_restarted_after_its_topic_grew_reads_the_new_partitions_from_the_start() {
    let env = TestEnv::from_env().on_growable_broker();
    let dir = scratch_dir("grow-local");
    let name = unique_name("grow-local");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 2);
    // The sink and dead-letter topics have the partitions of the grown input already: task p
    // writes partition p.
    create_topic(&env, &output, 4);
    create_topic(&env, &format!("{output}.dlq"), 4);
    let storage = format!("s3://{}/{name}", env.s3_bucket);
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name, "namespace": "e2e"},
        "spec": {
            "parallelism": 1,
            "source": {"kafka": {
                "bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json",
                "startingOffsets": "latest",
            }},
            "steps": [{"name": "all", "filter": {"expr": "true"}}],
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
    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &files,
        &dir,
        1,
    );
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &files);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoints.head(0).await.is_none() || checkpoints.head(1).await.is_none() {
        assert_eq!(workers.crashed(), vec![], "{}", workers.log_tail(0));
        assert!(
            Instant::now() < deadline,
            "no checkpoints: {}",
            workers.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workers.stop_all();

    grow_topic(&env, &input, 4);
    let added = produce(&env, &input, "added", &[2, 3], 0..10);
    let before = produce(&env, &input, "old", &[0, 1], 0..5);
    workers.start(0);
    let want: BTreeSet<String> = added.union(&before).cloned().collect();
    expect_keys(&env, &output, &want, Duration::from_secs(90), || {
        workers.log_tail(0)
    });
    assert!(
        workers
            .log(0)
            .contains("as added while the job ran and reading them from their earliest offset"),
        "{}",
        workers.log_tail(0)
    );
    workers.stop_all();
}

//! Ways a task could lose records or stop processing a partition without saying so, each run
//! on the real broker and S3 server with real worker processes: a partition never read
//! resuming at `latest` again after a restart; HEAD writes whose answer is lost or arrives as
//! a conflict after they landed, and a store that ignores conditional writes (both through a
//! fault-injecting proxy in front of the S3 server).

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_e2e::TestEnv;
use sluice_e2e::cluster::{Checkpoints, JobFiles, Workers, create_topic, read_until, scratch_dir};
use sluice_e2e::fault_proxy::{Fault, FaultProxy};
use sluice_worker::checkpoint::descriptor::{ReportedState, TaskReport};

/// A job reading `input` (json, `source` settings such as `startingOffsets: latest`) through
/// one filter into `output`, checkpointing every second to the S3 server at `endpoint`.
fn write_job(
    env: &TestEnv,
    dir: &std::path::Path,
    name: &str,
    (input, output): (&str, &str),
    source: &str,
    endpoint: &str,
) -> JobFiles {
    write_job_with_sink(env, dir, name, (input, output), source, "", endpoint)
}

/// [`write_job`] with more `sink` settings, e.g. `properties: {...}`.
fn write_job_with_sink(
    env: &TestEnv,
    dir: &std::path::Path,
    name: &str,
    (input, output): (&str, &str),
    source: &str,
    sink: &str,
    endpoint: &str,
) -> JobFiles {
    let storage = format!("s3://{}/{name}", env.s3_bucket);
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: sluice.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: e2e}}
spec:
  parallelism: 1
  source:
    kafka: {{bootstrapServers: "{bootstrap}", topics: ["{input}"], format: json, {source}}}
  steps:
    - name: all
      filter: {{expr: "true"}}
  sink:
    kafka: {{topic: "{output}", deliveryGuarantee: at-least-once{sink}}}
  checkpoint:
    storage: "{storage}"
    endpoint: "{endpoint}"
    interval: 1s
    retain: 3
"#,
            bootstrap = env.kafka_bootstrap,
        ),
    )
    .expect("write job manifest");
    JobFiles {
        manifest,
        namespace: "e2e".into(),
        name: name.into(),
        storage,
    }
}

/// The test servers, a scratch directory, and a fresh job name with its input and output
/// topic names (`<name>.in`, `<name>.out`).
fn setup(prefix: &str) -> (TestEnv, std::path::PathBuf, String, String, String) {
    let name = sluice_e2e::unique_name(prefix);
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    (
        TestEnv::from_env(),
        scratch_dir(prefix),
        name,
        input,
        output,
    )
}

/// One worker process of `job`, not started yet.
fn one_worker(job: &JobFiles, dir: &std::path::Path) -> Workers {
    Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), job, dir, 1)
}

/// Writes `count` JSON records with keys `<prefix>-<i>` to `partition` of `topic`.
fn produce(env: &TestEnv, topic: &str, partition: i32, prefix: &str, count: usize) {
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let value = format!(r#"{{"n":{i}}}"#);
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(&key)
                    .payload(&value),
            )
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Waits until every task of the job has a committed checkpoint.
async fn wait_for_checkpoints(checkpoints: &Checkpoints, tasks: u32, workers: &mut Workers) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = 0;
        for task in 0..tasks {
            if checkpoints.head(task).await.is_some() {
                done += 1;
            }
        }
        if done == tasks {
            return;
        }
        assert_eq!(workers.crashed(), vec![], "a worker died on its own");
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of every task within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_never_read_resumes_where_the_job_started_not_at_latest_again() {
    let (env, dir, name, input, output) = setup("positions");
    create_topic(&env, &input, 2);
    // Records before the job's first start: `latest` skips them, as the user asked.
    // One record per batch: Tansu's high watermark (which `latest` resolves to, in main's
    // code as in this) is the last batch's base offset + 1.
    for i in 0..5 {
        produce(&env, &input, 0, &format!("before{i}"), 1);
        produce(&env, &input, 1, &format!("before{i}"), 1);
    }
    let job = write_job(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: latest",
        &env.s3_endpoint,
    );
    let mut workers = one_worker(&job, &dir);
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &job);
    wait_for_checkpoints(&checkpoints, 2, &mut workers).await;
    for task in 0..2 {
        let head = checkpoints.head(task).await.expect("a checkpoint");
        assert_eq!(
            head.source_offsets.get(&input),
            Some(&5),
            "task {task}'s first checkpoint records the resolved start of a partition it never read"
        );
    }

    // Records that arrive while the job is down are read after the restart, on both partitions.
    workers.kill(0);
    produce(&env, &input, 0, "down", 20);
    produce(&env, &input, 1, "down", 30);
    workers.start(0);
    let records = read_until(
        &env,
        &output,
        2,
        Duration::from_secs(90),
        |r| r.len() >= 50,
        || assert_eq!(workers.crashed(), vec![], "the worker died on its own"),
    );
    let keys: Vec<String> = records
        .iter()
        .filter_map(|r| Some(String::from_utf8_lossy(r.key.as_deref()?).into_owned()))
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("down-")),
        "records from before the first start are not read: {keys:?}"
    );
    let per_partition = |p: i32| records.iter().filter(|r| r.partition == p).count();
    assert_eq!(
        (per_partition(0), per_partition(1)),
        (20, 30),
        "every record written while the job was down is read"
    );
    workers.stop_all();
}

/// Runs a job whose checkpoint store is behind a [`FaultProxy`] applying `fault` to every third
/// HEAD write, and checks the task keeps processing and checkpointing through the faults.
async fn keeps_processing_through(fault: Fault) {
    let (env, dir, name, input, output) = setup("head-faults");
    create_topic(&env, &input, 1);
    let proxy = FaultProxy::start(&env.s3_endpoint).await;
    let job = write_job(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: latest",
        &proxy.endpoint,
    );
    let mut workers = one_worker(&job, &dir);
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &job);
    wait_for_checkpoints(&checkpoints, 1, &mut workers).await;
    proxy.set(fault, 3);

    // Input keeps arriving while HEAD writes fail; every record must come out, and HEAD must
    // keep moving after the faults.
    let mut written = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.injected() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} faults injected in 60 s",
            proxy.injected()
        );
        produce(&env, &input, 0, &format!("batch{written}"), 10);
        written += 10;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let faulted_at = checkpoints.head(0).await.expect("a checkpoint").id;
    produce(&env, &input, 0, "after", 10);
    written += 10;
    let records = read_until(
        &env,
        &output,
        1,
        Duration::from_secs(60),
        |r| r.len() >= written,
        || assert_eq!(workers.crashed(), vec![], "the worker died on its own"),
    );
    assert!(records.len() >= written);
    let moving = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let head = checkpoints.head(0).await.expect("a checkpoint");
        if head.id.0 >= faulted_at.0 + 2
            && head.source_offsets.get(&input) == Some(&(written as i64))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < moving,
            "HEAD stopped at {} (offsets {:?}) after the faults; the worker's log ends:\n{}",
            head.id,
            head.source_offsets,
            workers.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = workers.log(0);
    assert!(
        !log.contains("task taken over by another owner"),
        "the task was dropped as fenced:\n{}",
        workers.log_tail(0)
    );
    assert!(
        log.contains("HEAD write failed; read HEAD again"),
        "the faults reached the worker"
    );
    eprintln!(
        "{fault:?}: {} faults injected, {written} records in, HEAD moved from {faulted_at} on",
        proxy.injected()
    );
    workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_write_that_landed_and_answered_503_keeps_the_task() {
    keeps_processing_through(Fault::LandThen503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_write_that_landed_and_lost_its_answer_keeps_the_task() {
    keeps_processing_through(Fault::LandThenDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused_with_its_name() {
    let (env, dir, name, input, output) = setup("no-conditions");
    create_topic(&env, &input, 1);
    let proxy = FaultProxy::start(&env.s3_endpoint).await;
    proxy.set(Fault::IgnoreConditions, 1);
    let job = write_job(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: latest",
        &proxy.endpoint,
    );
    let mut workers = one_worker(&job, &dir);
    workers.start(0);
    let status = workers.wait_for_exit(0, Duration::from_secs(60));
    let log = workers.log(0);
    assert!(
        !status.success(),
        "the worker must refuse to run; log:\n{log}"
    );
    assert!(
        log.contains("does not honour conditional writes")
            && log.contains("a write on a stale version (If-Match) was taken")
            && log.contains(&format!("e2e/{name}/probes/")),
        "the refusal names the store and what failed; log:\n{log}"
    );
    assert!(
        Checkpoints::of(&env, &job).head(0).await.is_none(),
        "nothing was taken over on that store"
    );
    // The same store with its conditions honoured runs the job.
    proxy.set(Fault::None, 1);
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &job);
    wait_for_checkpoints(&checkpoints, 1, &mut workers).await;
    workers.stop_all();
}

/// The address of the worker's HTTP endpoints from its newest start in `log`.
fn http_addr(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|l| l.contains("serving /metrics, /healthz and /readyz"))
        .and_then(|l| sluice_e2e::logs::field(l, "addr"))
        .map(str::to_string)
}

/// Waits until HEAD of task 0 has consumed `input` up to `next`.
async fn wait_for_offset(checkpoints: &Checkpoints, input: &str, next: i64, workers: &mut Workers) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let head = checkpoints.head(0).await;
        if head.as_ref().and_then(|d| d.source_offsets.get(input)) == Some(&next) {
            return;
        }
        assert_eq!(workers.crashed(), vec![], "the worker died on its own");
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint at {input} offset {next} within 60 s: {:?}",
            head.map(|d| d.source_offsets)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_offset_past_the_end_of_a_recreated_topic_fails_or_resumes_at_the_start_as_the_job_says()
 {
    let (env, dir, name, input, output) = setup("out-of-range");
    create_topic(&env, &input, 1);
    produce(&env, &input, 0, "old", 20);
    let job = |policy: Option<&str>| {
        write_job(
            &env,
            &dir,
            &name,
            (&input, &output),
            &match policy {
                // The default, as a user who never heard of the field gets it.
                None => "startingOffsets: earliest".to_string(),
                Some(policy) => format!("onOffsetOutOfRange: {policy}"),
            },
            &env.s3_endpoint,
        )
    };
    let files = job(None);
    let mut workers = one_worker(&files, &dir);
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &files);
    wait_for_offset(&checkpoints, &input, 20, &mut workers).await;
    workers.stop_all();

    // The topic is deleted and created again while the job is stopped (Tansu has no
    // DeleteRecords, so this is the out-of-range case it can show): the new partition ends
    // at 5, below the checkpoint's 20. One record per batch, so even Tansu's high watermark
    // (the last batch's base offset + 1) is the real end.
    let recreate = || {
        sluice_e2e::cluster::delete_topic(&env, &input);
        create_topic(&env, &input, 1);
        for i in 0..5 {
            produce(&env, &input, 0, &format!("new{i}"), 1);
        }
    };
    recreate();

    // fail (the default): the task stops and says why; nothing of the new topic is read, also once the
    // partition grows past the checkpointed offset.
    workers.start(0);
    let readyz = wait_for_readyz(&workers, "its offset is out of range", |body| {
        body.contains("offset out of range")
    })
    .await;
    assert_eq!(readyz.0, 503, "a failed task makes the worker unready");
    assert!(
        readyz.1.contains(&format!(
            "task 0 must resume {input} partition 0 at offset 20, but the partition holds offsets 0 to 5"
        )),
        "readyz names topic, partition and offsets: {}",
        readyz.1
    );
    produce(&env, &input, 0, "late", 20);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = read_until(
        &env,
        &output,
        1,
        Duration::from_secs(30),
        |r| r.len() >= 20,
        || {},
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = read_until(
        &env,
        &output,
        1,
        Duration::from_secs(30),
        |r| r.len() >= read.len(),
        || {},
    );
    assert_eq!(
        again.len(),
        20,
        "under fail, nothing of the recreated topic is read (main read from offset 20 on, silently)"
    );
    assert_eq!(workers.crashed(), vec![], "the worker stays up to say why");
    // The operator reads the task's report from the store and degrades the job with it.
    let reports = wait_for_reports(&files, |r| r.state == ReportedState::Failed).await;
    let (reason, message) = sluice_operator::status::tasks_condition(&reports, now_ms())
        .expect("a condition for the task");
    assert_eq!(reason, "TaskFailed");
    assert!(
        message.contains(&format!(
            "task 0 on worker-0-start2: offset out of range: task 0 must resume {input} \
             partition 0 at offset 20, but the partition holds offsets 0 to 5"
        )),
        "the condition names task, pod, topic, partition, the checkpointed offset and the log \
         start: {message}"
    );
    workers.stop_all();

    // earliest, after the topic was recreated once more (the late records made offset 20
    // valid again): the task resumes at the start of the new partition and counts the reset.
    recreate();
    job(Some("earliest"));
    let starts = workers.log(0).len();
    workers.start(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !workers.log(0)[starts..].contains("offset out of range: resuming at the log start") {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never resumed at the log start; log:\n{}",
            workers.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only now: records arriving before the task decided would make offset 20 valid again.
    produce(&env, &input, 0, "late", 20);
    let records = read_until(
        &env,
        &output,
        1,
        Duration::from_secs(60),
        |r| r.len() >= 45,
        || assert_eq!(workers.crashed(), vec![], "the worker died on its own"),
    );
    let new: Vec<String> = records[20..]
        .iter()
        .filter_map(|r| Some(String::from_utf8_lossy(r.key.as_deref()?).into_owned()))
        .collect();
    let mut want: Vec<String> = (0..5).map(|i| format!("new{i}-0")).collect();
    want.extend((0..20).map(|i| format!("late-{i}")));
    assert_eq!(new, want, "every record of the new partition, in order");
    let addr = http_addr(&workers.log(0)).expect("the worker's address");
    let metrics = sluice_e2e::bench::scrape(&addr).expect("metrics");
    let resets = sluice_e2e::bench::metric_sum(&metrics, "sluice_offset_resets_total");
    let skipped = sluice_e2e::bench::metric_sum(&metrics, "sluice_records_skipped_total");
    assert_eq!(
        (resets, skipped),
        (1.0, 0.0),
        "one reset counted; nothing given up (the new partition starts at 0)"
    );
    assert!(
        workers
            .log(0)
            .contains("offset out of range: resuming at the log start"),
        "the reset is logged"
    );
    // The operator publishes the reset as an Event, once, and the job is no longer degraded.
    let reports = wait_for_reports(&files, |r| {
        r.state == ReportedState::Running && !r.decisions.is_empty()
    })
    .await;
    assert_eq!(
        sluice_operator::status::tasks_condition(&reports, now_ms()),
        None
    );
    let announcements = sluice_operator::reconcile::Announcements::default();
    let events = announcements.new_decisions("e2e", &name, &reports);
    let events: Vec<(&str, &str)> = events
        .iter()
        .map(|d| (d.reason.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        events,
        [(
            "OffsetReset",
            format!(
                "task 0: {input} partition 0 resumed at its log start 0 instead of offset 20 \
                 (onOffsetOutOfRange: earliest); 0 records given up"
            )
            .as_str()
        )]
    );
    assert_eq!(
        announcements.new_decisions("e2e", &name, &reports),
        [],
        "each decision is one Event"
    );
    workers.stop_all();
}

/// Worker 0's `/readyz` answer once `says` holds for its body (`what` it should say, for the
/// failure message), within 60 s.
async fn wait_for_readyz(
    workers: &Workers,
    what: &str,
    says: impl Fn(&str) -> bool,
) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_addr(&workers.log(0)).and_then(|addr| {
            sluice_e2e::bench::http_get(&addr, "/readyz")
                .ok()
                .filter(|(_, body)| says(body))
        });
        if let Some(answer) = answer {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker's /readyz never said {what}; log:\n{}",
            workers.log_tail(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The task reports of `job` as the operator reads them, once `ready` holds for one.
async fn wait_for_reports(job: &JobFiles, ready: impl Fn(&TaskReport) -> bool) -> Vec<TaskReport> {
    use sluice_operator::observe::{Outside, RealOutside};
    let text = std::fs::read_to_string(&job.manifest).expect("manifest");
    let job: sluice_crds::StreamJob = serde_norway::from_str(&text).expect("the manifest parses");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A new one each time: the operator's caches them for 15 s.
        let reports = RealOutside::default().task_reports(&job, 1).await;
        if reports.iter().any(&ready) {
            return reports;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such task report within 30 s: {reports:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_the_topics_would_refuse_goes_to_the_dead_letter_topic_and_the_task_goes_on() {
    let (env, dir, name, input, output) = setup("rejected");
    let dead_letter = format!("{output}.dlq");
    create_topic(&env, &input, 1);
    // Tansu stores topic configs without enforcing them; Sluice reads them and checks records
    // itself. The producer's own message.max.bytes is enforced by librdkafka.
    sluice_e2e::cluster::create_topic_with(&env, &output, 1, &[("cleanup.policy", "compact")]);
    sluice_e2e::cluster::create_topic_with(&env, &dead_letter, 1, &[("max.message.bytes", "2000")]);
    let job = write_job_with_sink(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: earliest",
        r#", properties: {"message.max.bytes": "3000"}"#,
        &env.s3_endpoint,
    );
    let producer: BaseProducer = env.kafka_config().create().expect("producer");
    let send = |key: Option<&str>, value: &str| {
        let mut record: BaseRecord<'_, str, str> =
            BaseRecord::to(&input).partition(0).payload(value);
        record.key = key;
        producer.send(record).expect("enqueue");
    };
    for i in 0..10 {
        send(Some(&format!("a-{i}")), r#"{"n":1}"#);
    }
    let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3490));
    send(Some("large"), &large); // offset 10: above the producer's limit
    send(None, r#"{"n":2}"#); // offset 11: no key, for a compacted sink
    let huge_key = "k".repeat(2500);
    send(Some(&huge_key), r#"{"n":3}"#); // offset 12: its key alone fills the dead-letter topic
    for i in 0..10 {
        send(Some(&format!("b-{i}")), r#"{"n":4}"#);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let mut workers = one_worker(&job, &dir);
    workers.start(0);
    let checkpoints = Checkpoints::of(&env, &job);
    wait_for_offset(&checkpoints, &input, 23, &mut workers).await;
    let out = read_until(
        &env,
        &output,
        1,
        Duration::from_secs(30),
        |r| r.len() >= 20,
        || {},
    );
    let keys: Vec<String> = out
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let mut want: Vec<String> = (0..10).map(|i| format!("a-{i}")).collect();
    want.extend((0..10).map(|i| format!("b-{i}")));
    assert_eq!(
        keys, want,
        "every record the sink takes, and the task went on after the others"
    );
    let bad = read_until(
        &env,
        &dead_letter,
        1,
        Duration::from_secs(30),
        |r| r.len() >= 2,
        || {},
    );
    assert_eq!(bad.len(), 2, "two records dead-lettered: {bad:?}");
    let (large_dl, keyless) = (&bad[0], &bad[1]);
    assert_eq!(large_dl.key.as_deref(), Some(b"large".as_slice()));
    assert_eq!(
        large_dl.header("sluice.error.kind").as_deref(),
        Some("output-rejected")
    );
    assert_eq!(
        large_dl.header("sluice.truncated").as_deref(),
        Some(large.len().to_string().as_str())
    );
    let kept = large_dl.value.as_deref().map_or(0, <[u8]>::len);
    assert!(
        kept > 0 && kept < 2000,
        "the value is truncated to fit: {kept} bytes"
    );
    assert_eq!(
        large_dl.header("sluice.source"),
        Some(format!("{input}/0/10"))
    );
    assert_eq!(keyless.key, None);
    assert!(
        keyless
            .header("sluice.error.message")
            .is_some_and(|m| m.contains("compacted")),
        "{:?}",
        keyless.headers
    );
    assert_eq!(keyless.header("sluice.truncated"), None);
    let log = workers.log(0);
    assert!(
        log.lines()
            .any(|l| l.contains("record dropped") && l.contains(&format!("{input}/0/12"))),
        "the record nothing takes is logged with its source; log:\n{log}"
    );
    let addr = http_addr(&log).expect("the worker's address");
    let metrics = sluice_e2e::bench::scrape(&addr).expect("metrics");
    assert_eq!(
        sluice_e2e::bench::metric_sum(&metrics, "sluice_dead_letter_dropped_total"),
        1.0
    );
    assert_eq!(workers.crashed(), vec![]);
    assert!(!log.contains("task failed"), "no restart: {log}");
    workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_topic_with_fewer_partitions_than_the_source_is_refused_at_start() {
    let (env, dir, name, input, output) = setup("few-partitions");
    create_topic(&env, &input, 2);
    create_topic(&env, &output, 1);
    produce(&env, &input, 1, "x", 3);
    let job = write_job(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: earliest",
        &env.s3_endpoint,
    );
    let mut workers = one_worker(&job, &dir);
    workers.start(0);
    let status = workers.wait_for_exit(0, Duration::from_secs(60));
    let log = workers.log(0);
    assert!(!status.success(), "the worker refuses the job; log:\n{log}");
    assert!(
        log.contains(&format!(
            "sink topic {output} has 1 partitions, fewer than the 2 of the source"
        )),
        "the refusal names the topic and both counts; log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_an_older_rollout_leaves_the_tasks_of_a_newer_one_alone() {
    let (env, dir, name, input, output) = setup("stale-rollout");
    create_topic(&env, &input, 2);
    let files = write_job(
        &env,
        &dir,
        &name,
        (&input, &output),
        "startingOffsets: earliest",
        &env.s3_endpoint,
    );
    let (new_dir, old_dir) = (dir.join("new"), dir.join("old"));
    for d in [&new_dir, &old_dir] {
        std::fs::create_dir_all(d).expect("worker dir");
    }
    // The pod of rollout 7 runs both tasks.
    let mut new = one_worker(&files, &new_dir);
    new.start_with_env(0, &[("SLUICE_ROLLOUT", "7")]);
    for p in 0..2 {
        produce(&env, &input, p, &format!("before-{p}"), 10);
    }
    let checkpoints = Checkpoints::of(&env, &files);
    wait_for_checkpoints(&checkpoints, 2, &mut new).await;
    let heads = || async {
        let mut heads = Vec::new();
        for task in 0..2 {
            let head = checkpoints.head_record(task).await.expect("HEAD");
            heads.push((head.epoch, head.rollout));
        }
        heads
    };
    let before = heads().await;
    assert!(
        before.iter().all(|(_, rollout)| *rollout == 7),
        "{before:?}"
    );

    // An old pod of rollout 6 (its container restarted during the roll, with the old
    // parallelism) starts with the same ordinal: it must not take the tasks over.
    let mut old = one_worker(&files, &old_dir);
    old.start_with_env(0, &[("SLUICE_ROLLOUT", "6")]);
    let readyz = wait_for_readyz(&old, "it is stale", |body| {
        body.matches("runs rollout 7 of the job").count() == 2
    })
    .await;
    assert_eq!(readyz.0, 503, "the stale worker is not ready: {}", readyz.1);
    assert!(
        readyz.1.contains("this worker runs rollout 6"),
        "{}",
        readyz.1
    );
    assert_eq!(
        heads().await,
        before,
        "HEAD still names the new pod's epochs"
    );

    // The new pod keeps both tasks and goes on processing.
    for p in 0..2 {
        produce(&env, &input, p, &format!("after-{p}"), 10);
    }
    let records = read_until(
        &env,
        &output,
        2,
        Duration::from_secs(60),
        |r| r.len() >= 40,
        || assert_eq!(new.crashed(), vec![], "the new worker died on its own"),
    );
    assert_eq!(records.len(), 40);
    let addr = http_addr(&new.log(0)).expect("the new worker's address");
    assert_eq!(
        sluice_e2e::bench::http_get(&addr, "/readyz")
            .map(|(code, _)| code)
            .ok(),
        Some(200),
        "the new worker still runs both tasks"
    );
    assert_eq!(heads().await, before, "nobody took a task over");
    old.stop_all();
    new.stop_all();
}

/// Now, in Unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

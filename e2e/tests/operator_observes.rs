//! The operator's view of what lies outside Kubernetes, against the real broker and S3
//! server: source partition counts, the job's lag, and its tasks' latest checkpoints — what
//! validation and the status (`Lag`, `Last-Checkpoint` columns) are made of.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_crds::StreamJob;
use sluice_e2e::cluster::{Scenario, Workers};
use sluice_operator::observe::{Outside, RealOutside};

const PARTITIONS: u32 = 4;
const EVENTS: u64 = 6_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_partitions_lag_and_checkpoints_from_the_real_broker_and_store() {
    let mut s = Scenario::start(
        "observe",
        "1s",
        "at-least-once",
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        (PARTITIONS, 1_000, EVENTS),
        // Small producer batches: Tansu's ListOffsets answers a high watermark up to one
        // batch short of the last record (see `read_table`), and lag is computed from it.
        Some(3_000),
    );
    s.input_written();
    let text = std::fs::read_to_string(&s.job.manifest).expect("manifest");
    let mut job: StreamJob = serde_norway::from_str(&text).expect("the manifest parses");
    let outside = RealOutside::default();

    let partitions = outside
        .source_partitions(&job)
        .await
        .expect("the broker answers");
    assert_eq!(partitions.get(&s.input).copied(), Some(PARTITIONS));
    let lags = outside
        .lag(&job, PARTITIONS)
        .await
        .expect("the broker answers");
    let lag: i64 = lags.iter().sum();
    // Nothing is committed yet, so each task's lag is everything below its partition's high
    // watermark.
    let consumer: BaseConsumer = s.env.kafka_config().create().expect("consumer");
    let below_high: Vec<i64> = (0..PARTITIONS as i32)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(&s.input, p, Duration::from_secs(10))
                .expect("watermarks");
            high - low
        })
        .collect();
    assert_eq!(lags, below_high, "nothing processed yet, per task");
    let below_high: i64 = below_high.iter().sum();
    eprintln!(
        "lag before any processing: {lag}; the {EVENTS} records written less what Tansu's high \
         watermarks leave out (up to a producer batch per partition, see `read_table`)"
    );
    assert_eq!(lag, below_high, "nothing processed yet");
    assert!(lag <= EVENTS as i64 && lag > EVENTS as i64 / 2, "lag {lag}");
    assert_eq!(
        outside.last_checkpoint(&job, PARTITIONS).await,
        None,
        "no checkpoint yet"
    );

    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &s.job,
        &s.dir,
        1,
    );
    let started = std::time::SystemTime::now();
    workers.start(0);
    s.checkpoints()
        .wait_until_covered(&s.input, &s.ends(), || {})
        .await;
    workers.stop_all();

    // Lag and checkpoints are read at most once per RealOutside::REFRESH per job; a new
    // observer (as after that interval) reads them afresh.
    assert_eq!(
        outside.lag(&job, PARTITIONS).await,
        Some(lags),
        "the first answer is reused"
    );
    let outside = RealOutside::default();
    assert_eq!(
        outside.lag(&job, PARTITIONS).await,
        Some(vec![0; PARTITIONS as usize]),
        "all committed"
    );
    let last = outside
        .last_checkpoint(&job, PARTITIONS)
        .await
        .expect("every task has checkpointed");
    let oldest_head = {
        let checkpoints = s.checkpoints();
        let mut oldest = None;
        for task in 0..PARTITIONS {
            let head = checkpoints.head(task).await.expect("a checkpoint");
            if oldest.is_none_or(|(ms, _)| head.created_at_ms < ms) {
                oldest = Some((head.created_at_ms, head.id.0));
            }
        }
        oldest.expect("tasks")
    };
    assert_eq!(
        (last.time.0.as_millisecond(), last.id),
        (oldest_head.0, oldest_head.1 as i64),
        "the oldest of the tasks' HEAD checkpoints"
    );
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .expect("clock");
    assert!(age < Duration::from_secs(600));

    let missing = format!("{}-missing", s.input);
    job.spec.source.kafka.topics = vec![missing.clone()];
    let partitions = outside
        .source_partitions(&job)
        .await
        .expect("the broker answers");
    assert_eq!(
        partitions.get(&missing).copied(),
        Some(0),
        "a missing topic counts 0"
    );
    // The sink and dead-letter topics, on the source's cluster, are counted too (an adoption
    // of more partitions needs them as wide).
    for topic in [
        job.spec.sink.kafka.topic.clone(),
        job.spec.dead_letter_topic(),
    ] {
        assert_eq!(partitions.get(&topic).copied(), Some(PARTITIONS), "{topic}");
    }
}

//! `sluice-bench`: the CDC benchmark's measuring parts. `e2e/bench/cdc.sh` and
//! `e2e/bench/engine.sh` run them with a release build.
//!
//! - `raw`: a bare rdkafka consumer loop over the topic that does nothing with the records
//!   (same librdkafka, same fetch settings as the worker): the broker's ceiling. With
//!   `--copy-to`, it also writes every record unchanged to another topic through a producer
//!   per partition with the worker's at-least-once settings (as the worker has one per task):
//!   the ceiling for a job that writes one result per input, as the CDC job does.
//! - `cdc`: one `sluice-worker run` process owning every task of a materialize job over the
//!   topic, checkpointing to the S3 server; timed from its start until it has consumed every
//!   event.
//! - `engine`: the same job with the records fed from memory and written to memory, in this
//!   process: decode → materialize in RocksDB → encode, checkpoints on (`file://`).
//! - `orders` and `steps` (`e2e/bench/steps.sh`): JSON orders written to a topic, then one
//!   worker running the `windowed-aggregate` example's steps over them (CEL filter, CEL map,
//!   one-minute tumbling windows on event time with RocksDB state), timed like `cdc`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_crds::v1alpha1::DeliveryGuarantee;
use sluice_e2e::bench::{self, mib};
use sluice_e2e::cluster::{
    Checkpoints, ExampleRun, Workers, create_topic, write_example_job, write_materialize_job,
};
use sluice_e2e::{TestEnv, cdc};
use sluice_worker::io::{MemoryConnector, MemoryOutput, MemoryPartition};
use sluice_worker::job::Job;
use sluice_worker::kafka;
use sluice_worker::task::{self, TaskEnv};

#[derive(Parser)]
#[command(about = "Measures the CDC benchmark (see e2e/bench/)")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Consume the topic with a bare rdkafka loop; prints `raw events=N seconds=S
    /// events_per_s=X … cpu_s=C` (`copy …` with `--copy-to`).
    Raw {
        #[arg(long, env = "SLUICE_KAFKA_BOOTSTRAP")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        /// Records the topic holds (the loop stops there).
        #[arg(long)]
        events: u64,
        /// Also write every record (key, value, a `sluice.source` header) to the same
        /// partition of this topic, created with the input's partition count.
        #[arg(long)]
        copy_to: Option<String>,
    },
    /// Run one worker over the topic; prints `worker events=N seconds=S events_per_s=X` and
    /// checkpoint pauses, peak RSS.
    Cdc(WorkerRun),
    /// Rescale downtime: a job with large state on `from` workers, rescaled to `to` while
    /// input trickles in; prints `rescale … downtime_s=X`, the time from the rescale's start
    /// until every task processes records again.
    Rescale {
        /// The `sluice-worker` binary.
        #[arg(long)]
        worker: PathBuf,
        /// The `sluice-cdc-gen` binary.
        #[arg(long)]
        generator: PathBuf,
        #[arg(long)]
        dir: PathBuf,
        /// Keys, each created once with a padded row.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Filler bytes per row.
        #[arg(long, default_value_t = 1000)]
        pad: usize,
        #[arg(long, default_value_t = 12)]
        partitions: u32,
        #[arg(long, default_value_t = 3)]
        from: u32,
        #[arg(long, default_value_t = 6)]
        to: u32,
    },
    /// Write `events` JSON orders (1,000 customers, one per millisecond of event time, up to
    /// 3 s out of order, one in five not paid) into `partitions` partitions of `topic`.
    Orders {
        #[arg(long, env = "SLUICE_KAFKA_BOOTSTRAP")]
        bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
    },
    /// Run one worker with the steps benchmark's job (filter → map → tumbling-window aggregate)
    /// over the orders topic; prints `worker events=N seconds=S events_per_s=X` like `cdc`.
    Steps(WorkerRun),
    /// The engine from memory; prints `engine events=N seconds=S events_per_s=X cores=C`.
    Engine {
        #[arg(long, default_value_t = 906_667)]
        keys: u64,
        #[arg(long, default_value_t = 5_440_000)]
        events: u64,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        #[arg(long, default_value = "2s")]
        interval: String,
        /// Scratch directory for the volume and the `file://` checkpoints.
        #[arg(long)]
        dir: PathBuf,
        /// Run the steps benchmark's job over its orders instead of the CDC materialize job.
        #[arg(long)]
        steps: bool,
        /// Times to run the job over the same input, each from empty state; the median counts.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// One worker over a topic, as `cdc` and `steps` run it.
#[derive(clap::Args)]
struct WorkerRun {
    #[arg(long)]
    topic: String,
    /// Records the topic holds.
    #[arg(long)]
    events: u64,
    /// The `sluice-worker` binary.
    #[arg(long)]
    worker: PathBuf,
    /// Scratch directory for the job, the volume and the log.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "10s")]
    interval: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Raw {
            bootstrap,
            topic,
            events,
            copy_to,
        } => raw(&bootstrap, &topic, events, copy_to.as_deref()),
        Bench::Cdc(run) => cdc_worker(&run),
        Bench::Orders {
            bootstrap,
            topic,
            events,
            partitions,
        } => orders(&bootstrap, &topic, events, partitions),
        Bench::Steps(run) => steps_worker(&run),
        Bench::Rescale {
            worker,
            generator,
            dir,
            keys,
            pad,
            partitions,
            from,
            to,
        } => tokio::runtime::Runtime::new()?.block_on(rescale(
            &worker,
            &generator,
            &dir,
            (keys, pad, partitions),
            from,
            to,
        )),
        Bench::Engine {
            keys,
            events,
            partitions,
            interval,
            dir,
            steps,
            runs,
        } => engine((keys, events, partitions), &interval, &dir, steps, runs),
    }
}

/// A consumer with the worker's settings, minus the group commits.
fn bare_consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    Ok(kafka::consumer_settings(
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sluice-bench-raw"),
    )
    .create()?)
}

fn raw(bootstrap: &str, topic: &str, events: u64, copy_to: Option<&str>) -> anyhow::Result<()> {
    let consumer = bare_consumer(bootstrap)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    anyhow::ensure!(partitions > 0, "topic {topic} does not exist");
    if let Some(out) = copy_to {
        return copy(bootstrap, topic, partitions, events, out);
    }
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut progress = Progress::new("raw", events);
    while count < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                count += 1;
                bytes += message.payload_len() as u64;
            }
            Some(Err(e)) => eprintln!("raw: consumer error: {e}"),
            None => {}
        }
        progress.tick(count);
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "raw: only {count} of {events} records after 30 minutes"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = bench::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    println!(
        "raw events={count} seconds={seconds:.2} events_per_s={:.0} value_bytes={bytes} cpu_s={cpu:.1}",
        count as f64 / seconds
    );
    Ok(())
}

/// The worker's shape without its engine: per partition a thread with its own consumer and
/// producer (the worker's at-least-once sink settings) writing every record unchanged, with a
/// `sluice.source` header, to the same partition of `out`. Timed like the worker, until every
/// record is consumed and handed to a producer. (One consumer feeding the producers was
/// measured 5 times slower against Tansu: its fetches wait behind the produce requests.)
fn copy(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    events: u64,
    out: &str,
) -> anyhow::Result<()> {
    use rdkafka::Message;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let env = TestEnv {
        kafka_bootstrap: bootstrap.to_string(),
        ..TestEnv::from_env()
    };
    create_topic(&env, out, partitions as u32);
    let count = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let seconds = std::thread::scope(|scope| -> anyhow::Result<f64> {
        let threads: Vec<_> = (0..partitions)
            .map(|p| {
                let (count, done) = (&count, &done);
                scope.spawn(move || -> anyhow::Result<()> {
                    let consumer = bare_consumer(bootstrap)?;
                    let mut assignment = TopicPartitionList::new();
                    assignment.add_partition_offset(topic, p, Offset::Beginning)?;
                    consumer.assign(&assignment)?;
                    let producer: ThreadedProducer<DefaultProducerContext> =
                        kafka::producer_settings(
                            rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap),
                            DeliveryGuarantee::AtLeastOnce,
                        )
                        .create()?;
                    let mut source = String::with_capacity(96);
                    while !done.load(Ordering::Relaxed) {
                        let message = match consumer.poll(Duration::from_millis(100)) {
                            Some(Ok(message)) => message,
                            Some(Err(e)) => anyhow::bail!("copy: consumer error: {e}"),
                            None => continue,
                        };
                        task::source_header(&mut source, topic, p, message.offset());
                        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(out)
                            .partition(p)
                            .headers(OwnedHeaders::new().insert(Header {
                                key: "sluice.source",
                                value: Some(source.as_str()),
                            }));
                        record.key = message.key();
                        record.payload = message.payload();
                        while let Err((e, back)) = producer.send(record) {
                            anyhow::ensure!(
                                e.rdkafka_error_code()
                                    == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                                "copy: producing: {e}"
                            );
                            record = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    producer.flush(Duration::from_secs(300))?;
                    Ok(())
                })
            })
            .collect();
        let mut progress = Progress::new("copy", events);
        while count.load(Ordering::Relaxed) < events {
            std::thread::sleep(Duration::from_millis(10));
            progress.tick(count.load(Ordering::Relaxed));
            if started.elapsed() > Duration::from_secs(1800)
                || threads.iter().any(|t| t.is_finished())
            {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("copy thread panicked")?;
        }
        Ok(seconds)
    })?;
    let count = count.load(Ordering::Relaxed);
    anyhow::ensure!(count >= events, "copy: only {count} of {events} records");
    let cpu = bench::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    println!(
        "copy events={count} seconds={seconds:.2} events_per_s={:.0} cpu_s={cpu:.1} flushed_after_s={:.2}",
        count as f64 / seconds,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cdc_worker(run: &WorkerRun) -> anyhow::Result<()> {
    let env = TestEnv::from_env();
    std::fs::create_dir_all(&run.dir)?;
    let name = sluice_e2e::unique_name("bench");
    let job = write_materialize_job(
        &env,
        &run.dir,
        &name,
        &run.topic,
        &format!("{}-changelog", run.topic),
        &run.interval,
        "at-least-once",
    );
    run_worker(&job.manifest, run)
}

fn orders(bootstrap: &str, topic: &str, events: u64, partitions: u32) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let env = TestEnv {
        kafka_bootstrap: bootstrap.to_string(),
        ..TestEnv::from_env()
    };
    create_topic(&env, topic, partitions);
    let producer: BaseProducer = env
        .kafka_config()
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut progress = Progress::new("orders", events);
    let mut value = String::with_capacity(160);
    for i in 0..events {
        order_json(i, &mut value);
        let mut record: BaseRecord<'_, str, str> = BaseRecord::to(topic)
            .partition((i % u64::from(partitions)) as i32)
            .payload(value.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
            progress.tick(i);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    eprintln!("orders: wrote {events} to {topic}");
    Ok(())
}

/// Order `i` of the steps benchmark, as JSON, into `out`.
fn order_json(i: u64, out: &mut String) {
    use std::fmt::Write;
    const START: i64 = 1_700_000_040_000;
    // Up to 3 s out of order: within the job's 5 s bound, so nothing is late.
    let jitter = ((i * 7919) % 3000) as i64;
    let status = if i.is_multiple_of(5) {
        "pending"
    } else {
        "paid"
    };
    out.clear();
    let _ = write!(
        out,
        r#"{{"id":{i},"customer_id":"c{}","status":"{status}","amount":{}.{:02},"created_at":{}}}"#,
        i % 1000,
        i % 500,
        i % 100,
        START + i as i64 - jitter
    );
}

/// The steps benchmark's job: the `windowed-aggregate` example with a map step added.
fn steps_job(
    env: &TestEnv,
    dir: &Path,
    name: &str,
    topic: &str,
    interval: &str,
) -> sluice_e2e::cluster::JobFiles {
    write_example_job(
        env,
        dir,
        &ExampleRun {
            example: "windowed-aggregate.yaml",
            name,
            input: topic,
            output: &format!("{topic}-revenue"),
            dead_letter: &format!("{topic}-revenue.dlq"),
            parallelism: 1,
            interval,
            spec_patch: serde_json::json!({
                "sink": {"kafka": {"topic": format!("{topic}-revenue"), "deliveryGuarantee": "at-least-once"}},
                "steps": [
                    {"name": "paid-only", "filter": {"expr": "value.status == 'paid'"}},
                    {"name": "slim", "map": {
                        "key": "value.customer_id",
                        "value": "{'customer_id': value.customer_id, 'amount': value.amount}"}},
                    {"name": "revenue", "aggregate": {
                        "groupBy": "value.customer_id",
                        "aggregations": [
                            {"name": "orders", "function": "count"},
                            {"name": "revenue", "function": "sum", "expr": "value.amount"},
                            {"name": "largest", "function": "max", "expr": "value.amount"}],
                        "window": {"tumbling": {"size": "1m"}},
                        "allowedLateness": "30s",
                        "emit": "on-close"}}],
            }),
        },
    )
}

fn steps_worker(run: &WorkerRun) -> anyhow::Result<()> {
    let env = TestEnv::from_env();
    std::fs::create_dir_all(&run.dir)?;
    let name = sluice_e2e::unique_name("bench-steps");
    let job = steps_job(&env, &run.dir, &name, &run.topic, &run.interval);
    run_worker(&job.manifest, run)
}

/// Runs one `sluice-worker run` over `manifest` until it has consumed `run.events` records;
/// prints its figures.
fn run_worker(manifest: &Path, run: &WorkerRun) -> anyhow::Result<()> {
    let WorkerRun {
        events,
        worker,
        dir,
        ..
    } = run;
    let events = *events;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let addr = format!("127.0.0.1:{port}");
    let log_path = dir.join("worker.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let mut child = Command::new(worker)
        .arg("run")
        .arg("--job")
        .arg(manifest)
        .args(["--ordinal", "0", "--parallelism", "1", "--http-addr", &addr])
        .arg("--state-dir")
        .arg(dir.join("volume"))
        .env("HOSTNAME", "bench-worker-0")
        .env("RUST_LOG", "info,rdkafka=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut progress = Progress::new("worker", events);
    let mut consumed = 0u64;
    let mut peak_rss = 0;
    while consumed < events {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the worker exited with {status}; its log: {}",
                log_path.display()
            );
        }
        if let Ok(text) = bench::scrape(&addr) {
            consumed = bench::metric_sum(&text, "sluice_records_in_total") as u64;
        }
        peak_rss = bench::peak_rss_bytes(pid).unwrap_or(peak_rss);
        progress.tick(consumed);
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "worker: only {consumed} of {events} records after an hour"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = bench::scrape(&addr)
        .map(|t| bench::metric_sum(&t, "sluice_records_out_total") as u64)
        .unwrap_or(0);
    let cpu = bench::cpu_seconds(pid).unwrap_or(f64::NAN);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "the worker exited with {status}");
    let pauses = bench::checkpoint_pauses_ms(&std::fs::read_to_string(&log_path)?);
    println!(
        "worker checkpoints={} pause_p50_ms={} pause_p99_ms={} peak_rss={} records_out={out} log={}",
        pauses.len(),
        fmt_ms(bench::quantile(&pauses, 0.5)),
        fmt_ms(bench::quantile(&pauses, 0.99)),
        mib(peak_rss),
        log_path.display()
    );
    println!(
        "worker events={consumed} seconds={seconds:.2} events_per_s={:.0} cpu_s={cpu:.1}",
        consumed as f64 / seconds
    );
    Ok(())
}

fn engine(
    (keys, events, partitions): (u64, u64, u32),
    interval: &str,
    dir: &Path,
    steps: bool,
    runs: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let events = if steps {
        events
    } else {
        events.min(keys * cdc::EVENTS_PER_KEY)
    };
    let topic = if steps { "bench.orders" } else { "bench.cdc" };
    let generating = Instant::now();
    let mut data: Vec<MemoryPartition> = (0..partitions).map(|_| Default::default()).collect();
    let mut order = String::new();
    for i in 0..events {
        if steps {
            order_json(i, &mut order);
            data[(i % u64::from(partitions)) as usize].push(None, Some(order.as_bytes()));
            continue;
        }
        let (key, step) = cdc::position(i, keys);
        data[cdc::partition(key, partitions) as usize].push(
            Some(cdc::key(key).as_bytes()),
            Some(cdc::event(key, step).as_bytes()),
        );
    }
    let bytes: usize = data.iter().map(MemoryPartition::bytes).sum();
    eprintln!(
        "engine: generated {events} events ({}) in {:.1} s, {partitions} partitions",
        mib(bytes as u64),
        generating.elapsed().as_secs_f64()
    );
    let data: Vec<Arc<MemoryPartition>> = data.into_iter().map(Arc::new).collect();

    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = &dir.canonicalize()?;
    // The test job; it names no server this benchmark talks to: records come from memory,
    // checkpoints go to the `file://` store given to the tasks below.
    let nowhere = TestEnv {
        kafka_bootstrap: "unused:9092".into(),
        s3_endpoint: "http://unused".into(),
        s3_bucket: "unused".into(),
        azure_endpoint: "http://unused".into(),
        azure_container: "unused".into(),
        gcs_endpoint: "http://unused".into(),
        gcs_bucket: "unused".into(),
        ..Default::default()
    };
    let job = if steps {
        steps_job(&nowhere, dir, "engine", topic, interval)
    } else {
        write_materialize_job(
            &nowhere,
            dir,
            "engine",
            topic,
            &format!("{topic}-changelog"),
            interval,
            "at-least-once",
        )
    };
    let log_path = dir.join("engine.log");
    let log = std::fs::File::create(&log_path)?;
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .with_env_filter("info")
        .init();
    let job = Arc::new(Job::from_file(&job.manifest)?);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // This machine's speed was seen to swing up to twice within seconds, so one run is one
    // sample: the same input is run `runs` times, each from empty state, and the median counts.
    let mut results = Vec::new();
    for run in 1..=runs {
        let log_from = std::fs::metadata(&log_path)?.len() as usize;
        let result = engine_run(
            &job,
            &data,
            events,
            &dir.join(format!("run-{run}")),
            &log_path,
        )?;
        let log = std::fs::read_to_string(&log_path)?;
        let pauses = bench::checkpoint_pauses_ms(log.get(log_from..).unwrap_or_default());
        let rate = events as f64 / result.seconds;
        println!(
            "engine run={run} seconds={:.2} events_per_s={rate:.0} events_per_s_per_core={:.0} \
             checkpoints={} pause_p50_ms={} pause_p99_ms={} records_out={} encoded={}",
            result.seconds,
            rate / cores as f64,
            pauses.len(),
            fmt_ms(bench::quantile(&pauses, 0.5)),
            fmt_ms(bench::quantile(&pauses, 0.99)),
            result.records_out,
            mib(result.bytes_out),
        );
        anyhow::ensure!(
            steps || result.records_out == events,
            "the changelog has {} records for {events} events",
            result.records_out
        );
        results.push(result.seconds);
    }
    results.sort_by(f64::total_cmp);
    let seconds = results[results.len() / 2];
    let rate = events as f64 / seconds;
    println!(
        "engine runs={runs} median_events_per_s_per_core={:.0} range_events_per_s={:.0}-{:.0} \
         peak_rss={} (includes the {} of input held in memory)",
        rate / cores as f64,
        events as f64 / results[results.len() - 1],
        events as f64 / results[0],
        mib(bench::peak_rss_bytes(std::process::id()).unwrap_or(0)),
        mib(bytes as u64),
    );
    println!("engine events={events} seconds={seconds:.2} events_per_s={rate:.0} cores={cores}");
    Ok(())
}

struct EngineRun {
    seconds: f64,
    records_out: u64,
    bytes_out: u64,
}

/// One run of the job over `data` from empty state in `dir`, timed until every record is
/// handed to a task.
fn engine_run(
    job: &Arc<Job>,
    data: &[Arc<MemoryPartition>],
    events: u64,
    dir: &Path,
    log_path: &Path,
) -> anyhow::Result<EngineRun> {
    let topic = job.spec.source.kafka.topics[0].clone();
    let topic = topic.as_str();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let env = Arc::new(TaskEnv::new(
        job.clone(),
        &format!("file://{}", dir.join("checkpoints").display()),
        dir.join("volume"),
        "bench".into(),
        runtime.handle().clone(),
    )?);
    let handed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (seconds, records_out, bytes_out) = std::thread::scope(|scope| {
        let threads: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(p, records)| {
                let (env, records, handed) = (env.clone(), records.clone(), handed.clone());
                std::thread::Builder::new()
                    .name(format!("task-{p}"))
                    .spawn_scoped(scope, move || -> anyhow::Result<(u64, u64)> {
                        let output = MemoryOutput::default();
                        let status = sluice_worker::http::TaskStatus::new(p as u32);
                        let connector = MemoryConnector {
                            topic,
                            partition: p as i32,
                            records,
                            handed,
                            output: &output,
                        };
                        task::run::<sluice_worker::state::rocks::RocksState, _>(
                            &env,
                            p as u32,
                            &status,
                            connector,
                            &mut Default::default(),
                        )?;
                        Ok((output.records.get(), output.bytes.get()))
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut progress = Progress::new("engine", events);
        loop {
            let done = handed.load(Ordering::Relaxed);
            progress.tick(done);
            if done >= events {
                break;
            }
            if threads.iter().any(|t| t.is_finished()) {
                env.stop.store(true, Ordering::Relaxed);
                anyhow::bail!("a task stopped early; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seconds = started.elapsed().as_secs_f64();
        env.stop.store(true, Ordering::Relaxed);
        let (mut out, mut out_bytes) = (0, 0);
        for thread in threads {
            let (records, bytes) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a task panicked"))??;
            out += records;
            out_bytes += bytes;
        }
        anyhow::Ok((seconds, out, out_bytes))
    })?;
    Ok(EngineRun {
        seconds,
        records_out,
        bytes_out,
    })
}

async fn rescale(
    worker: &Path,
    generator: &Path,
    dir: &Path,
    (keys, pad, partitions): (u64, usize, u32),
    from: u32,
    to: u32,
) -> anyhow::Result<()> {
    let env = TestEnv::from_env();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let dir = &dir.canonicalize()?;
    let name = sluice_e2e::unique_name("rescale");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    let job = write_materialize_job(&env, dir, &name, &input, &output, "5s", "at-least-once");
    let generate = |extra: &[&str]| {
        let mut command = Command::new(generator);
        command
            .args(["--bootstrap", &env.kafka_bootstrap, "--topic", &input])
            .args(["--partitions", &partitions.to_string()])
            .args(extra);
        command
    };
    let loading = Instant::now();
    let status = generate(&[
        "--keys",
        &keys.to_string(),
        "--creates-only",
        &pad.to_string(),
    ])
    .status()?;
    anyhow::ensure!(status.success(), "loading the input failed");
    eprintln!(
        "rescale: loaded {keys} rows of {pad} filler bytes in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    let mut workers = Workers::new(worker, &job, dir, from);
    for ordinal in 0..from {
        workers.start(ordinal);
    }
    let mut ends = vec![0i64; partitions as usize];
    for key in 0..keys {
        ends[cdc::partition(key, partitions) as usize] += 1;
    }
    let checkpoints = Checkpoints::of(&env, &job);
    let processing = Instant::now();
    checkpoints
        .wait_until_covered(&input, &ends, || assert_eq!(workers.crashed(), vec![]))
        .await;
    let mut state_bytes = 0;
    for task in 0..partitions {
        state_bytes += checkpoints.head(task).await.map_or(0, |d| d.state_bytes());
    }
    eprintln!(
        "rescale: {from} workers built {} of state in {:.1} s",
        mib(state_bytes),
        processing.elapsed().as_secs_f64()
    );

    // A trickle of new rows keeps every task busy through the rescale.
    let mut trickle = generate(&[
        "--keys",
        "100000000",
        "--creates-only",
        "100",
        "--key-offset",
        &(keys * 10).to_string(),
        "--rate",
        "2000",
    ])
    .stderr(Stdio::null())
    .spawn()?;
    std::thread::sleep(Duration::from_secs(5));

    let log_marks: Vec<usize> = (0..to.max(from)).map(|o| workers.log(o).len()).collect();
    let started = Instant::now();
    let stopping = workers.rescale(to);
    let mut resumed: Vec<Option<Duration>> = vec![None; partitions as usize];
    while resumed.iter().any(Option::is_none) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "tasks {:?} did not resume within 10 minutes",
            resumed
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_none())
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
        );
        for ordinal in 0..to {
            let log = workers.log(ordinal);
            let Some(addr) = log[log_marks[ordinal as usize].min(log.len())..]
                .lines()
                .filter(|l| l.contains("serving /metrics"))
                .filter_map(|l| l.split("addr=").nth(1))
                .next_back()
            else {
                continue;
            };
            let Ok(text) = bench::scrape(addr.trim()) else {
                continue;
            };
            for line in text
                .lines()
                .filter(|l| l.starts_with("sluice_records_in_total{"))
            {
                let task = line
                    .split("task=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|t| t.parse::<usize>().ok());
                let count: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0.0);
                if let Some(task) = task.filter(|t| *t < resumed.len())
                    && count > 0.0
                    && resumed[task].is_none()
                {
                    resumed[task] = Some(started.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = trickle.kill();
    let _ = trickle.wait();
    workers.stop_all();
    let per_task: Vec<f64> = resumed
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    let downtime = per_task.iter().copied().fold(0.0, f64::max);
    println!(
        "rescale per_task_s={:?} old_workers_stopped_s={:.1}",
        per_task
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        stopping.as_secs_f64()
    );
    println!(
        "rescale from={from} to={to} state={} downtime_s={downtime:.1}",
        mib(state_bytes)
    );
    Ok(())
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or("none".into(), |v| format!("{v:.0}"))
}

/// Progress on stderr every 5 s: count, rate.
struct Progress {
    what: &'static str,
    total: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Self {
            what,
            total,
            started: Instant::now(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: u64) {
        if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            eprintln!(
                "{}: {done}/{} events, {:.0}/s",
                self.what,
                self.total,
                done as f64 / self.started.elapsed().as_secs_f64()
            );
        }
    }
}

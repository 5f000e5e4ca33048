//! `sluice-cdc-gen`: loads the CDC benchmark workload into a topic, printing progress.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use sluice_e2e::cdc;

struct Args {
    bootstrap: String,
    topic: String,
    partitions: u32,
    keys: u64,
    events: Option<u64>,
    skip_if_loaded: bool,
    rate: Option<f64>,
    creates_only: Option<usize>,
    key_offset: u64,
    properties: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bootstrap: std::env::var("SLUICE_KAFKA_BOOTSTRAP")
            .unwrap_or_else(|_| "127.0.0.1:19092".into()),
        topic: "cdc.customers".into(),
        partitions: 12,
        keys: 10_000,
        events: None,
        skip_if_loaded: false,
        rate: None,
        creates_only: None,
        key_offset: 0,
        properties: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => args.bootstrap = value()?,
            "--topic" => args.topic = value()?,
            "--partitions" => {
                args.partitions = value()?.parse().map_err(|e| format!("--partitions: {e}"))?
            }
            "--keys" => args.keys = value()?.parse().map_err(|e| format!("--keys: {e}"))?,
            "--events" => {
                args.events = Some(value()?.parse().map_err(|e| format!("--events: {e}"))?)
            }
            "--skip-if-loaded" => args.skip_if_loaded = true,
            "--rate" => args.rate = Some(value()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--creates-only" => {
                args.creates_only = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--creates-only: {e}"))?,
                )
            }
            "--key-offset" => {
                args.key_offset = value()?.parse().map_err(|e| format!("--key-offset: {e}"))?
            }
            "-X" => {
                let kv = value()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or(format!("-X {kv}: expected key=value"))?;
                args.properties.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!(
                    "usage: sluice-cdc-gen [--bootstrap host:port] [--topic T] [--partitions P] [--keys K] [--events N] [--skip-if-loaded] [--rate EVENTS_PER_S] [--creates-only PAD_BYTES [--key-offset K0]] [-X producer.property=value]\n\
                     Writes create → update ×4 → delete for each of K keys (6K events, or the first N),\n\
                     at most EVENTS_PER_S per second when --rate is given; with --creates-only, one\n\
                     create per key (keys K0.., rows padded with PAD_BYTES), for large state;\n\
                     with --skip-if-loaded, nothing when the topic already holds that many records."
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-cdc-gen: {e}");
            std::process::exit(2);
        }
    };
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.bootstrap);
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &args.topic,
                args.partitions as i32,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .expect("CreateTopics request");
    for result in created {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("cannot create {topic}: {code}"),
        }
    }

    let per_key = if args.creates_only.is_some() {
        1
    } else {
        cdc::EVENTS_PER_KEY
    };
    let total = args
        .events
        .unwrap_or(args.keys * per_key)
        .min(args.keys * per_key);
    if args.skip_if_loaded {
        let consumer: BaseConsumer = config.create().expect("consumer");
        let held: i64 = (0..args.partitions as i32)
            .map(|p| {
                consumer
                    .fetch_watermarks(&args.topic, p, Duration::from_secs(10))
                    .map_or(0, |(_, high)| high)
            })
            .sum();
        if held >= total as i64 {
            eprintln!(
                "sluice-cdc-gen: {} already holds {held} records; nothing to load",
                args.topic
            );
            return;
        }
    }
    let mut producer_config = config
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .clone();
    for (k, v) in &args.properties {
        producer_config.set(k, v);
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config.create().expect("producer");
    let started = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..total {
        let (key, v) = match args.creates_only {
            Some(pad) => (
                args.key_offset + i,
                cdc::padded_create(args.key_offset + i, pad),
            ),
            None => {
                let (key, step) = cdc::position(i, args.keys);
                (key, cdc::event(key, step))
            }
        };
        let k = cdc::key(key);
        let mut record = BaseRecord::to(&args.topic)
            .key(k.as_bytes())
            .payload(v.as_bytes())
            .partition(cdc::partition(key, args.partitions));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
        if let Some(rate) = args.rate
            && i % 100 == 0
        {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "sluice-cdc-gen: {i}/{total} events ({:.0}/s)",
                i as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("every event acknowledged");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "sluice-cdc-gen: wrote {total} events for {} keys to {} ({} partitions) in {seconds:.1} s ({:.0}/s)",
        args.keys,
        args.topic,
        args.partitions,
        total as f64 / seconds
    );
}

//! A corpus of more than 10,000 malformed records of ten kinds, mixed with good ones, through
//! the `filter-map` and `cdc-filter-map` examples run by real `sluice-worker run` processes
//! against the real broker: no worker crashes, every bad record reaches the dead-letter topic
//! unchanged with its kind and step, and every good record has exactly its effect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_e2e::cluster::{
    ExampleRun, Received, Workers, create_topic, read_until, scratch_dir, write_example_job,
};
use sluice_e2e::{TestEnv, unique_name};

const PARTITIONS: u32 = 4;
/// Records of the JSON job; 8 of every 14 are bad.
const JSON_RECORDS: u64 = 16_800;
/// Records of the Debezium job; 3 of every 6 are bad.
const CDC_RECORDS: u64 = 3_000;

/// What a record of the corpus should do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Appear in the output with this key and (JSON) value.
    Out(String, serde_json::Value),
    /// Be filtered out.
    Dropped,
    /// Go to the dead-letter topic with this kind, from this step.
    Dead(&'static str, &'static str),
}

struct Corpus {
    /// (partition, key, value, expected) in the order written.
    records: Vec<(i32, String, Option<Vec<u8>>, Expect)>,
}

impl Corpus {
    fn push(&mut self, i: u64, value: Option<Vec<u8>>, expect: Expect) {
        let partition = (i % u64::from(PARTITIONS)) as i32;
        self.records.push((partition, i.to_string(), value, expect));
    }

    fn dead(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(r.3, Expect::Dead(..)))
            .count()
    }
}

/// Orders for `filter-map.yaml` (filter `value.amount / value.count >= 2`, then key by customer
/// and value `{order, customer, per_item}`), good and bad.
fn json_corpus() -> Corpus {
    let mut c = Corpus {
        records: Vec::new(),
    };
    let order = |i: u64, amount: serde_json::Value, count: serde_json::Value| serde_json::json!({"id": i, "customer": format!("c{}", i % 50), "amount": amount, "count": count});
    for i in 0..JSON_RECORDS {
        let bytes = |v: serde_json::Value| Some(v.to_string().into_bytes());
        match i % 14 {
            0..=5 => {
                let (amount, count) = ((i * 7) % 100, 1 + i % 5);
                let expect = if amount / count >= 2 {
                    Expect::Out(
                        format!("c{}", i % 50),
                        serde_json::json!({"order": i, "customer": format!("c{}", i % 50), "per_item": amount / count}),
                    )
                } else {
                    Expect::Dropped
                };
                c.push(i, bytes(order(i, amount.into(), count.into())), expect);
            }
            6 => c.push(
                i,
                Some(format!(r#"{{"id":{i},"amount":"#).into_bytes()),
                Expect::Dead("invalid-json", "worth-it"),
            ),
            7 => {
                let mut v = format!(r#"{{"id":{i},"customer":""#).into_bytes();
                v.extend_from_slice(&[0xff, 0xfe, 0x80]);
                v.extend_from_slice(br#"","amount":10,"count":1}"#);
                c.push(i, Some(v), Expect::Dead("invalid-utf8", "worth-it"));
            }
            8 => {
                // A Kafka tombstone, or the JSON null.
                let value = (i % 28 == 8).then(|| b"null".to_vec());
                c.push(i, value, Expect::Dead("null-value", "worth-it"));
            }
            9 => c.push(
                i,
                bytes(order(i, "lots".into(), 1.into())),
                Expect::Dead("cel-type-error", "worth-it"),
            ),
            10 => c.push(
                i,
                bytes(serde_json::json!({"id": i, "customer": "c1", "count": 1})),
                Expect::Dead("cel-no-such-key", "worth-it"),
            ),
            11 => c.push(
                i,
                bytes(serde_json::json!({"id": i, "amount": 10, "count": 1})),
                Expect::Dead("cel-no-such-key", "by-customer"),
            ),
            12 => c.push(
                i,
                bytes(order(i, 10.into(), 0.into())),
                Expect::Dead("cel-division-by-zero", "worth-it"),
            ),
            _ if i % (14 * 300) == 13 => {
                // A valid order padded past 1 MiB.
                let mut v = order(i, 10.into(), 1.into());
                v["pad"] = "x".repeat(1 << 20).into();
                c.push(i, bytes(v), Expect::Dead("too-large", "worth-it"));
            }
            _ => c.push(
                i,
                bytes(order(i, 10.into(), "1".into())),
                Expect::Dead("cel-type-error", "worth-it"),
            ),
        }
    }
    c
}

/// Change events for `cdc-filter-map.yaml` (updates that change the price, as
/// `{id, old, new}` keyed by id), good and bad.
fn cdc_corpus() -> Corpus {
    let mut c = Corpus {
        records: Vec::new(),
    };
    for i in 0..CDC_RECORDS {
        let (old, new) = (i % 10, if i % 12 < 6 { i % 10 + 1 } else { i % 10 });
        let update = serde_json::json!({
            "op": "u",
            "before": {"id": i, "price": old},
            "after": {"id": i, "price": new},
            "source": {"db": "shop", "table": "products"},
        });
        let bytes = |v: serde_json::Value| Some(v.to_string().into_bytes());
        match i % 6 {
            0 | 1 => {
                let expect = if old != new {
                    Expect::Out(
                        i.to_string(),
                        serde_json::json!({"id": i, "old": old, "new": new}),
                    )
                } else {
                    Expect::Dropped
                };
                c.push(i, bytes(update), expect);
            }
            2 => c.push(
                i,
                bytes(serde_json::json!({"op": "c", "after": {"id": i, "price": 1}})),
                Expect::Dropped,
            ),
            3 => {
                let mut v = update;
                v["op"] = "t".into();
                c.push(i, bytes(v), Expect::Dead("unknown-op", "price-updates"));
            }
            4 => c.push(
                i,
                bytes(serde_json::json!([i, "not an event"])),
                Expect::Dead("not-a-change-event", "price-updates"),
            ),
            _ => c.push(
                i,
                bytes(serde_json::json!({"op": "u", "before": {"id": i}, "after": null})),
                Expect::Dead("missing-after", "price-updates"),
            ),
        }
    }
    c
}

fn write(env: &TestEnv, topic: &str, corpus: &Corpus) {
    create_topic(env, topic, PARTITIONS);
    let producer: BaseProducer = env
        .kafka_config()
        .set("message.max.bytes", "16777216")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (partition, key, value, _) in &corpus.records {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic)
            .partition(*partition)
            .key(key.as_str());
        record.payload = value.as_deref();
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
}

/// Distinct `sluice.source` headers among `records`.
fn sources(records: &[Received]) -> usize {
    records
        .iter()
        .filter_map(|r| r.headers.get("sluice.source"))
        .collect::<BTreeSet<_>>()
        .len()
}

/// Checks what came out against the corpus; returns dead-lettered counts by kind.
fn check(
    name: &str,
    corpus: &Corpus,
    output: &[Received],
    dead: &[Received],
) -> BTreeMap<String, usize> {
    let by_key: BTreeMap<&str, (&Option<Vec<u8>>, &Expect)> = corpus
        .records
        .iter()
        .map(|(_, k, v, e)| (k.as_str(), (v, e)))
        .collect();

    // Good records: each expected result once, nothing else.
    let mut want: BTreeSet<(String, String)> = corpus
        .records
        .iter()
        .filter_map(|r| match &r.3 {
            Expect::Out(k, v) => Some((k.clone(), v.to_string())),
            _ => None,
        })
        .collect();
    let mut seen_sources = BTreeSet::new();
    for r in output {
        let source = r.header("sluice.source").expect("source header");
        if !seen_sources.insert(source.clone()) {
            continue; // written again after a retry: the same result
        }
        let key = String::from_utf8(r.key.clone().expect("keyed")).expect("UTF-8 key");
        let value: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().expect("a value")).expect("JSON output");
        assert!(
            want.remove(&(key.clone(), value.to_string())),
            "{name}: unexpected output {key} {value} from {source}"
        );
    }
    assert!(
        want.is_empty(),
        "{name}: {} good records had no effect, e.g. {:?}",
        want.len(),
        want.iter().next()
    );

    // Bad records: each in the dead-letter topic, unchanged, with its kind and step.
    let mut kinds = BTreeMap::new();
    let mut dead_keys = BTreeSet::new();
    for r in dead {
        let key = String::from_utf8(r.key.clone().expect("keyed")).expect("UTF-8 key");
        if !dead_keys.insert(key.clone()) {
            continue;
        }
        let (value, expect) = by_key[key.as_str()];
        let kind = r.header("sluice.error.kind").expect("kind header");
        let step = r.header("sluice.step").expect("step header");
        let want = match expect {
            Expect::Dead(kind, step) => Some((*kind, *step)),
            _ => None,
        };
        assert_eq!(
            want,
            Some((kind.as_str(), step.as_str())),
            "{name}: record {key} dead-lettered as {kind} by {step}: {:?}",
            r.header("sluice.error.message")
        );
        assert!(
            !r.header("sluice.error.message")
                .unwrap_or_default()
                .is_empty(),
            "{name}: record {key} has no error message"
        );
        let source = r.header("sluice.source").expect("source header");
        assert!(
            source.starts_with(&format!("{name}.in/{}/", r.partition)),
            "{name}: source header {source}"
        );
        assert_eq!(&r.value, value, "{name}: record {key} changed on its way");
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let missing: Vec<&str> = corpus
        .records
        .iter()
        .filter(|r| matches!(r.3, Expect::Dead(..)) && !dead_keys.contains(r.1.as_str()))
        .map(|r| r.1.as_str())
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{name}: never dead-lettered: {missing:?}"
    );
    kinds
}

#[test]
fn ten_thousand_malformed_records_go_to_the_dead_letter_topic_and_every_good_one_has_its_effect() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("malformed");
    let started = Instant::now();
    let jobs = [
        ("filter-map.yaml", json_corpus(), 2),
        ("cdc-filter-map.yaml", cdc_corpus(), 1),
    ];
    let bad: usize = jobs.iter().map(|j| j.1.dead()).sum();
    assert!(bad >= 10_000, "the corpus has {bad} bad records");

    let mut runs = Vec::new();
    for (example, corpus, parallelism) in &jobs {
        let name = unique_name("malformed");
        let (input, output, dead) = (
            format!("{name}.in"),
            format!("{name}.out"),
            format!("{name}.dlq"),
        );
        write(&env, &input, corpus);
        let job = write_example_job(
            &env,
            &dir,
            &ExampleRun {
                example,
                name: &name,
                input: &input,
                output: &output,
                dead_letter: &dead,
                parallelism: *parallelism,
                interval: "2s",
                spec_patch: serde_json::json!({}),
            },
        );
        let mut workers = Workers::new(
            env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
            &job,
            &dir.join(&name),
            *parallelism,
        );
        std::fs::create_dir_all(dir.join(&name)).expect("worker dir");
        for ordinal in 0..*parallelism {
            workers.start(ordinal);
        }
        runs.push((name, output, dead, workers));
    }
    eprintln!("corpus written in {:?}", started.elapsed());

    for ((name, output, dead, workers), (example, corpus, _)) in runs.iter_mut().zip(&jobs) {
        let want_out = corpus
            .records
            .iter()
            .filter(|r| matches!(r.3, Expect::Out(..)))
            .count();
        let want_dead = corpus.dead();
        let mut alive = || {
            assert_eq!(
                workers.crashed(),
                vec![],
                "a worker of {example} crashed; see its log in {}",
                dir.display()
            )
        };
        let dead_records = read_until(
            &env,
            dead,
            PARTITIONS,
            Duration::from_secs(600),
            |r| sources(r) >= want_dead,
            &mut alive,
        );
        let out_records = read_until(
            &env,
            output,
            PARTITIONS,
            Duration::from_secs(300),
            |r| sources(r) >= want_out,
            &mut alive,
        );
        alive();
        let kinds = check(name, corpus, &out_records, &dead_records);
        eprintln!(
            "{example}: {} records, {want_out} results, {want_dead} dead-lettered by kind {kinds:?}, done after {:?}",
            corpus.records.len(),
            started.elapsed()
        );
        workers.stop_all();
    }
}

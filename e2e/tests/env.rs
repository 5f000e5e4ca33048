//! The dependencies started by `e2e/env/up.sh` are real: the broker takes produce and fetch,
//! the object store takes put, get and conditional writes.

use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_e2e::{TestEnv, unique_name};

const RECORDS: usize = 1000;
const PARTITIONS: i32 = 3;

#[tokio::test]
async fn broker_accepts_produce_and_fetch() {
    let env = TestEnv::from_env();
    let topic = unique_name("env-check");

    let admin: AdminClient<DefaultClientContext> =
        env.kafka_config().create().expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .expect("CreateTopics request");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer = env
        .kafka_config()
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let partition = (i % PARTITIONS as usize) as i32;
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&value)
            .partition(partition);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("producer alive")
            .map_err(|(e, _)| e)
            .expect("produce is acknowledged");
    }

    let consumer: BaseConsumer = env
        .kafka_config()
        .set("group.id", &topic)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(&topic, p, Offset::Beginning)
            .expect("valid partition");
    }
    consumer.assign(&assignment).expect("manual assignment");

    let mut fetched = Vec::with_capacity(RECORDS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fetched.len() < RECORDS && std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("fetch succeeds");
            let key = String::from_utf8(message.key().expect("keyed").to_vec()).expect("utf-8");
            let value =
                String::from_utf8(message.payload().expect("value").to_vec()).expect("utf-8");
            assert_eq!(key.replace("key", "value"), value);
            assert_eq!(
                message.partition(),
                key[4..].parse::<i32>().expect("numbered key") % PARTITIONS
            );
            fetched.push(key);
        }
    }
    fetched.sort();
    fetched.dedup();
    assert_eq!(
        fetched.len(),
        RECORDS,
        "every produced record is fetched once"
    );
}

#[tokio::test]
async fn object_store_accepts_put_get_and_conditional_writes() {
    let env = TestEnv::from_env();
    let store = env.object_store();
    let path = Path::from(format!("{}/HEAD", unique_name("env-check")));

    let create = PutOptions::from(PutMode::Create);
    let first = store
        .put_opts(&path, PutPayload::from_static(b"epoch 1"), create.clone())
        .await
        .expect("put of a new object");
    let body = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&body[..], b"epoch 1");

    let again = store
        .put_opts(&path, PutPayload::from_static(b"epoch 1 again"), create)
        .await;
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. })),
        "If-None-Match: * must refuse to overwrite, got {again:?}"
    );

    let current = UpdateVersion {
        e_tag: first.e_tag.clone(),
        version: None,
    };
    let second = store
        .put_opts(
            &path,
            PutPayload::from_static(b"epoch 2"),
            PutMode::Update(current.clone()).into(),
        )
        .await
        .expect("If-Match on the current ETag succeeds");
    let stale = store
        .put_opts(
            &path,
            PutPayload::from_static(b"zombie"),
            PutMode::Update(current).into(),
        )
        .await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "If-Match on a stale ETag must fail, got {stale:?}"
    );
    assert_ne!(second.e_tag, first.e_tag);
    let body = store
        .get(&path)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(&body[..], b"epoch 2", "the stale write changed nothing");
}

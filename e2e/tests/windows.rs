//! Golden tests of the stateful steps against the real broker and S3 server: the example jobs
//! (`windowed-aggregate`, `hopping-aggregate`, `session-aggregate`, `filter-route`) over small
//! hand-written inputs, out of order and late, whose results follow from the watermark rules by
//! hand (each expected record says why), and `order-alerts` (a filter and a map after a
//! windowed count) over generated orders against a reference the test computes. The tumbling
//! and the alerts tests SIGKILL their worker twice mid-window: once after a checkpoint holds open
//! windows, once before the checkpoint covers new input.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};
use sluice_e2e::cluster::{
    Checkpoints, ExampleRun, Workers, create_topic, distinct, read_until, scratch_dir,
    write_example_job,
};
use sluice_e2e::{TestEnv, unique_name};

/// A minute boundary: event times are `T + seconds`.
const T: i64 = 1_700_000_040_000;

fn at(seconds: i64) -> i64 {
    T + seconds * 1000
}

fn rfc3339(seconds: i64) -> String {
    let secs = at(seconds) / 1000;
    // 1_700_000_040 s is 2023-11-14T22:14:00Z.
    let base = 1_700_000_040;
    let offset = secs - base;
    let (m, s) = ((14 * 60 + offset) / 60, (14 * 60 + offset) % 60);
    format!("2023-11-14T22:{m:02}:{s:02}Z")
}

/// One job from an example, running on one worker against fresh topics.
struct Golden {
    env: TestEnv,
    input: String,
    output: String,
    dead: String,
    job: sluice_e2e::cluster::JobFiles,
    workers: Workers,
    producer: BaseProducer,
    /// Records written, per partition.
    written: Vec<i64>,
}

impl Golden {
    fn start(example: &str, spec_patch: Value) -> Self {
        Self::start_on(example, spec_patch, 1, 1)
    }

    /// The job over a topic of `partitions` partitions, on `workers` workers.
    fn start_on(example: &str, spec_patch: Value, partitions: u32, workers: u32) -> Self {
        let env = TestEnv::from_env();
        let name = unique_name("golden");
        let dir = scratch_dir("golden");
        let (input, output, dead) = (
            format!("{name}.in"),
            format!("{name}.out"),
            format!("{name}.dlq"),
        );
        create_topic(&env, &input, partitions);
        let job = write_example_job(
            &env,
            &dir,
            &ExampleRun {
                example,
                name: &name,
                input: &input,
                output: &output,
                dead_letter: &dead,
                parallelism: workers,
                interval: "1s",
                spec_patch,
            },
        );
        let mut workers = Workers::new(env!("CARGO_BIN_EXE_sluice-worker").as_ref(), &job, &dir, 1);
        workers.start(0);
        let producer = env.kafka_config().create().expect("producer");
        Self {
            env,
            input,
            output,
            dead,
            job,
            workers,
            producer,
            written: vec![0; partitions as usize],
        }
    }

    fn write(&mut self, values: &[Value]) {
        self.write_to(0, values);
    }

    fn write_to(&mut self, partition: i32, values: &[Value]) {
        for value in values {
            let payload = value.to_string();
            let record: BaseRecord<'_, str, str> = BaseRecord::to(&self.input)
                .partition(partition)
                .payload(payload.as_str());
            self.producer.send(record).expect("enqueue");
            self.written[partition as usize] += 1;
        }
        self.producer
            .flush(Duration::from_secs(60))
            .expect("flush input");
    }

    /// Waits until every task's committed checkpoint covers everything written so far.
    async fn wait_for_checkpoint(&mut self) {
        let checkpoints = Checkpoints::of(&self.env, &self.job);
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut covered = true;
            for (task, written) in self.written.iter().enumerate() {
                let at = checkpoints
                    .head(task as u32)
                    .await
                    .and_then(|d| d.source_offsets.get(&self.input).copied())
                    .unwrap_or(0);
                covered &= at >= *written;
            }
            if covered {
                return;
            }
            assert!(Instant::now() < deadline, "no checkpoint covers the input");
            self.assert_alive();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn assert_alive(&mut self) {
        assert_eq!(self.workers.crashed(), vec![], "the worker crashed");
    }

    /// Reads the output until it holds every expected (key, value), then asserts it holds
    /// nothing else (a replay after a crash may repeat a result, never change one).
    fn expect_output(&mut self, expected: &[(&str, Value)]) {
        let want: BTreeSet<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let workers = &mut self.workers;
        let got = read_until(
            &self.env,
            &self.output,
            self.written.len() as u32,
            Duration::from_secs(300),
            |records| want.is_subset(&distinct(records)),
            || assert_eq!(workers.crashed(), vec![], "the worker crashed"),
        );
        let got = distinct(&got);
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(extra.is_empty(), "unexpected results: {extra:?}");
    }

    fn expect_dead_letters(&mut self, kinds: &[(&str, &str)]) {
        let workers = &mut self.workers;
        let got = read_until(
            &self.env,
            &self.dead,
            self.written.len() as u32,
            Duration::from_secs(120),
            |records| records.len() >= kinds.len(),
            || assert_eq!(workers.crashed(), vec![], "the worker crashed"),
        );
        let got: BTreeSet<(String, String)> = got
            .iter()
            .map(|r| {
                (
                    r.header("sluice.error.kind").unwrap_or_default(),
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let want: BTreeSet<(String, String)> = kinds
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}

fn order(customer: &str, status: &str, amount: i64, seconds: i64) -> Value {
    // Event times alternate between epoch milliseconds and RFC 3339 strings.
    let created_at = if seconds % 2 == 0 {
        json!(at(seconds))
    } else {
        json!(rfc3339(seconds))
    };
    json!({"customer_id": customer, "status": status, "amount": amount, "created_at": created_at})
}

fn revenue(start_s: i64, orders: i64, revenue: i64, largest: i64) -> Value {
    json!({"orders": orders, "revenue": revenue, "largest": largest,
           "window_start": at(start_s), "window_end": at(start_s + 60)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_over_late_and_out_of_order_orders_survive_sigkills_mid_window() {
    // 1-minute windows, 5 s out of order, 30 s allowed lateness, late records dead-lettered.
    let mut g = Golden::start(
        "windowed-aggregate.yaml",
        json!({"eventTime": {"field": "created_at", "maxOutOfOrderness": "5s", "idleTimeout": "20s"}}),
    );
    g.write(&[
        order("c1", "paid", 10, 0),
        order("c1", "paid", 20, 30),
        order("c2", "paid", 5, 50),
        order("c1", "pending", 99, 55), // filtered out
        order("c1", "paid", 7, 62),     // watermark 56.999 s: [0, 60) stays open
        order("c2", "paid", 1, 58),     // out of order, within 5 s: still in [0, 60)
        order("c1", "paid", 3, 66),     // watermark 60.999 s: [0, 60) closes
    ]);
    g.expect_output(&[("c1", revenue(0, 2, 30, 20)), ("c2", revenue(0, 2, 6, 5))]);
    // [60, 120) holds c1's orders at 62 s and 66 s; the checkpoint has it. Kill, restart.
    g.wait_for_checkpoint().await;
    g.workers.kill(0);
    g.workers.start(0);
    let late = order("c2", "paid", 50, 20);
    g.write(&[
        order("c2", "paid", 4, 40), // late, within lateness: [0, 60) fires again for c2
        order("c1", "paid", 8, 100), // watermark 94.999 s: [0, 60) is purged (59.999 + 30 s)
        late.clone(),               // [0, 60) is gone: dead-lettered as late
        order("c3", "paid", 2, 178), // watermark 172.999 s: [60, 120) closes
    ]);
    // Killed again before a checkpoint covers that: the restart replays it from the checkpoint.
    g.workers.kill(0);
    g.workers.start(0);
    // [120, 180) of c3 closes once the idle partition lets the watermark follow the wall clock.
    g.expect_output(&[
        ("c1", revenue(0, 2, 30, 20)),
        ("c2", revenue(0, 2, 6, 5)),
        ("c2", revenue(0, 3, 10, 5)),
        ("c1", revenue(60, 3, 18, 8)),
        ("c3", revenue(120, 1, 2, 2)),
    ]);
    g.expect_dead_letters(&[("late", &late.to_string())]);
    g.assert_alive();
    g.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_windows_move_with_their_task_when_the_job_is_rescaled() {
    let mut g = Golden::start_on(
        "windowed-aggregate.yaml",
        json!({"eventTime": {"field": "created_at", "maxOutOfOrderness": "5s", "idleTimeout": "60s"}}),
        2,
        1,
    );
    // One worker owns both tasks; each task holds an open window [0, 60).
    g.write_to(
        0,
        &[order("c1", "paid", 10, 0), order("c1", "paid", 20, 30)],
    );
    g.write_to(1, &[order("c2", "paid", 5, 10), order("c2", "paid", 7, 50)]);
    g.wait_for_checkpoint().await;
    // Task 1 moves to the new worker 1, which restores it from the checkpoint store.
    g.workers.rescale(2);
    g.write_to(0, &[order("c1", "paid", 1, 70)]); // watermark 64.999 s in task 0
    g.write_to(1, &[order("c2", "paid", 1, 75)]); // watermark 69.999 s in task 1
    g.expect_output(&[("c1", revenue(0, 2, 30, 20)), ("c2", revenue(0, 2, 12, 7))]);
    assert!(
        g.workers.log(1).contains("checkpoint committed task=1"),
        "worker 1 runs task 1 after the rescale"
    );
    g.assert_alive();
    g.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_overlap_and_drop_what_comes_after_they_close() {
    // 10 s windows every 5 s, 2 s out of order, late records dropped.
    let mut g = Golden::start("hopping-aggregate.yaml", json!({}));
    let click = |page: &str, user: &str, load_ms: i64, seconds: i64| json!({"page": page, "user": user, "load_ms": load_ms, "ts": at(seconds)});
    g.write(&[
        click("/a", "u1", 100, 1), // [-5, 5) and [0, 10)
        click("/a", "u2", 300, 4),
        click("/a", "u3", 200, 6), // [0, 10) and [5, 15); watermark 3.999 s
        click("/a", "u4", 400, 3), // out of order but before the watermark passed its windows
        click("/a", "u5", 500, 12), // watermark 9.999 s: [-5, 5) and [0, 10) close
        click("/a", "u6", 600, 2), // every window of 2 s has closed: dropped
        click("/b", "v1", 50, 30), // watermark 27.999 s: [5, 15) and [10, 20) close
    ]);
    let window = |start: i64, clicks: i64, avg: f64, first: &str, last: &str| {
        json!({"clicks": clicks, "avg_ms": avg, "first_user": first, "last_user": last,
               "window_start": at(start), "window_end": at(start + 10)})
    };
    g.expect_output(&[
        ("/a", window(-5, 3, 800.0 / 3.0, "u1", "u2")),
        ("/a", window(0, 4, 250.0, "u1", "u3")),
        ("/a", window(5, 2, 350.0, "u3", "u5")),
        ("/a", window(10, 1, 500.0, "u5", "u5")),
    ]);
    g.assert_alive();
    g.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_merge_when_a_late_event_bridges_them_and_close_on_an_idle_partition() {
    // 10 s gap, 10 s out of order, idle after 5 s.
    let mut g = Golden::start(
        "session-aggregate.yaml",
        json!({"eventTime": {"field": "at", "maxOutOfOrderness": "10s", "idleTimeout": "5s"}}),
    );
    let event =
        |user: &str, n: i64, seconds: i64| json!({"user": user, "n": n, "at": rfc3339(seconds)});
    g.write(&[
        event("ann", 5, 0),  // ann [0, 10)
        event("bob", 1, 2),  // bob [2, 12)
        event("ann", 3, 15), // ann [15, 25); watermark 4.999 s
        event("ann", 8, 8),  // ann [8, 18) bridges both: [0, 25)
        event("bob", 2, 30), // watermark 19.999 s: bob [2, 12) closes
        event("ann", 9, 40), // watermark 29.999 s: ann [0, 25) closes
    ]);
    let session = |start: i64, end: i64, events: i64, smallest: i64, largest: i64| {
        json!({"events": events, "smallest": smallest, "largest": largest,
               "window_start": at(start), "window_end": at(end)})
    };
    // The last sessions close once the partition is idle and the watermark follows the clock.
    g.expect_output(&[
        ("bob", session(2, 12, 1, 1, 1)),
        ("ann", session(0, 25, 3, 3, 8)),
        ("bob", session(30, 40, 1, 2, 2)),
        ("ann", session(40, 50, 1, 9, 9)),
    ]);
    g.assert_alive();
    g.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_route_example_drops_small_and_repeated_payments() {
    let mut g = Golden::start("filter-route.yaml", json!({}));
    let payment = |id: &str, account: &str, amount: f64| json!({"payment_id": id, "account_id": account, "amount": amount, "currency": "EUR"});
    g.write(&[
        payment("p1", "A", 20000.5),
        payment("p2", "A", 500.0),   // too small
        payment("p1", "A", 20000.5), // a repeat within the hour
        payment("p3", "B", 15000.0),
        payment("p3", "B", 15000.0),
        payment("p4", "A", 10000.0),
    ]);
    let slim = |id: &str, amount: f64| json!({"payment": id, "amount": amount, "currency": "EUR"});
    g.expect_output(&[
        ("A", slim("p1", 20000.5)),
        ("B", slim("p3", 15000.0)),
        ("A", slim("p4", 10000.0)),
    ]);
    g.assert_alive();
    g.workers.stop_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_filtered_and_mapped_from_a_windowed_count_equal_the_reference_across_sigkills() {
    // The order-alerts example: a one-minute count per customer, then `orders > 3`, then a
    // map into the alert; 5 s out of order, idle after 20 s so the last minutes close too.
    let mut g = Golden::start(
        "order-alerts.yaml",
        json!({"eventTime": {"field": "created_at", "maxOutOfOrderness": "5s", "idleTimeout": "20s"}}),
    );
    // 240 orders, one per 1.5 s of event time with up to 2 s of disorder (never late), half
    // of them from c0 and the rest spread over c1..c9, so some minutes alert and some do not.
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    let orders: Vec<(String, i64)> = (0..240)
        .map(|i| {
            let pick = next();
            let customer = if pick % 2 == 0 {
                "c0".to_string()
            } else {
                format!("c{}", 1 + (pick / 2) % 9)
            };
            let jitter = (next() % 5) as i64 - 2;
            (customer, (i * 1500 + jitter * 1000).max(0))
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<(String, i64), i64>::new();
    for (customer, ms) in &orders {
        *counts.entry((customer.clone(), ms / 60_000)).or_default() += 1;
    }
    let reference: Vec<(String, Value)> = counts
        .iter()
        .filter(|(_, n)| **n > 3)
        .map(|((customer, minute), n)| {
            let alert =
                json!({"customer": customer, "orders": n, "minute_start": T + minute * 60_000});
            (customer.clone(), alert)
        })
        .collect();
    assert!(
        reference.len() > 6 && reference.len() < counts.len(),
        "the input alerts for some minutes, not all: {} of {}",
        reference.len(),
        counts.len()
    );
    let values: Vec<Value> = orders
        .iter()
        .map(|(customer, ms)| json!({"customer_id": customer, "created_at": T + ms}))
        .collect();
    // Up to 150 s: [120 s, 180 s) is open when the checkpoint is taken. Kill, restart.
    g.write(&values[..100]);
    g.wait_for_checkpoint().await;
    g.workers.kill(0);
    g.workers.start(0);
    // Up to 255 s, and killed again before a checkpoint is likely to cover it: replayed.
    g.write(&values[100..170]);
    g.workers.kill(0);
    g.workers.start(0);
    g.write(&values[170..]);
    let expected: Vec<(&str, Value)> = reference
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    g.expect_output(&expected);
    g.expect_dead_letters(&[]);
    g.assert_alive();
    g.workers.stop_all();
}

//! Editing a running job: the real operator (driven through the fake API server with
//! `kubectl apply`) and real workers on the real broker and S3 server. A job with dedupe and
//! windowed-aggregate state is edited three times, each a new generation:
//!
//! 1. its filter changes: rolled out, every state kept;
//! 2. its window size changes under `stateChanges: refuse` (the default): held, the old
//!    workers go on, the job says `StateIncompatible`;
//! 3. the same with `stateChanges: reset`: rolled out, the aggregate starts empty and the
//!    dedupe keeps what it saw;
//! 4. its filter changes again under `approval: manual`: the plan is in status, nothing
//!    restarts (the old workers go on) until `sluice.dev/approve` names the generation.
//!
//! The output must equal a reference the test computes from the input: each batch of input is
//! written while one generation runs, after a checkpoint covered the batch before (so every
//! record is processed by the generation its batch was written under), and the reference
//! runs the same chain with that generation's filter and window, keeping or resetting state
//! as the plan says.
//!
//! Then the worker's own check, without the operator: a worker started on an edited job file
//! whose checkpoint it cannot honour under `refuse` refuses, restarted or not, and leaves HEAD
//! alone; under `reset` it starts the step over.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::apiserver::Store;
use sluice_e2e::cluster::{
    Checkpoints, JobFiles, Workers, create_topic, expect_output, produce_json, scratch_dir,
};
use sluice_e2e::operator::{
    Cluster, NAMESPACE, apply, checkpoint, job, kubectl, streamjob, tail, wait_ready,
};
use sluice_e2e::{TestEnv, unique_name};

/// Event time of record 0: 5 s into a 10 s (and a 20 s) window, so windows span batches.
const T0: i64 = 1_700_000_005_000;
/// Records per batch.
const BATCH: u64 = 40;

/// Record `g` of the input: one per second of event time, three customers; every fifth
/// repeats the id of the record seven before it (across batch boundaries too).
fn order(g: u64) -> Value {
    let id = if g % 5 == 4 && g >= 7 { g - 7 } else { g };
    json!({
        "id": format!("o{id}"),
        "customer": format!("c{}", g % 3),
        "amount": (g * 7) % 25,
        "ts": T0 + g as i64 * 1000,
    })
}

/// What a generation of the job runs.
#[derive(Clone, Copy)]
struct Shape {
    min_amount: u64,
    window_s: i64,
    /// `stateChanges: reset` (and, in the reference, the aggregate's windows reset).
    reset: bool,
    /// `approval: manual`.
    manual: bool,
}

/// The job's chain, run by hand: the watermark (every input record moves it, no disorder
/// allowed) closes windows, then the filter, the dedupe and the windowed count and sum.
#[derive(Default)]
struct Reference {
    max_ts: i64,
    seen: HashSet<String>,
    open: BTreeMap<(i64, String), (i64, i64)>,
    window_ms: i64,
    results: BTreeSet<(String, String)>,
}

impl Reference {
    /// A new generation: with `reset`, the aggregate's open windows are gone.
    fn generation(&mut self, shape: Shape) {
        if shape.reset {
            self.open.clear();
        }
        self.window_ms = shape.window_s * 1000;
    }

    fn feed(&mut self, g: u64, shape: Shape) {
        let record = order(g);
        let ts = record["ts"].as_i64().expect("ts");
        if ts > self.max_ts {
            self.max_ts = ts;
            let closed: Vec<(i64, String)> = (self.open.keys())
                .filter(|(start, _)| start + self.window_ms <= self.max_ts)
                .cloned()
                .collect();
            for key in closed {
                let (orders, total) = self.open.remove(&key).expect("open");
                let value = json!({"orders": orders, "total": total,
                    "window_start": key.0, "window_end": key.0 + self.window_ms});
                self.results.insert((key.1, value.to_string()));
            }
        }
        if record["amount"].as_u64().expect("amount") < shape.min_amount {
            return;
        }
        if !self
            .seen
            .insert(record["id"].as_str().expect("id").to_string())
        {
            return;
        }
        let start = ts - ts.rem_euclid(self.window_ms);
        let customer = record["customer"].as_str().expect("customer").to_string();
        let window = self.open.entry((start, customer)).or_default();
        window.0 += 1;
        window.1 += record["amount"].as_i64().expect("amount");
    }
}

fn manifest(env: &TestEnv, name: &str, input: &str, shape: Shape) -> Value {
    let mut spec = json!({
        "parallelism": 1,
        "source": {"kafka": {"bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json"}},
        "eventTime": {"field": "ts", "maxOutOfOrderness": "0s"},
        "steps": [
            {"name": "big", "filter": {"expr": format!("value.amount >= {}", shape.min_amount)}},
            {"name": "once", "dedupe": {"key": "value.id", "ttl": "1h"}},
            {"name": "per-window", "aggregate": {
                "groupBy": "value.customer",
                "aggregations": [
                    {"name": "orders", "function": "count"},
                    {"name": "total", "function": "sum", "expr": "value.amount"},
                ],
                "window": {"tumbling": {"size": format!("{}s", shape.window_s)}},
            }},
        ],
        "sink": {"kafka": {"topic": format!("{name}.out")}},
        "deadLetter": {"topic": format!("{name}.dlq")},
        "checkpoint": checkpoint(env, &format!("s3://{}/{name}", env.s3_bucket)),
        "state": {"size": "1Gi"},
    });
    if shape.reset {
        spec["upgrade"]["stateChanges"] = "reset".into();
    }
    if shape.manual {
        spec["upgrade"]["approval"] = "manual".into();
    }
    streamjob(name, spec)
}

fn write(env: &TestEnv, topic: &str, records: std::ops::Range<u64>) {
    produce_json(env, topic, records.map(order));
}

async fn wait_for_offset(
    checkpoints: &Checkpoints,
    input: &str,
    next: i64,
    alive: &mut dyn FnMut(),
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let at = (checkpoints.head(0).await)
            .and_then(|d| d.source_offsets.get(input).copied())
            .unwrap_or(0);
        if at >= next {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers offset {next} (at {at})"
        );
        alive();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn conditions(store: &Store, name: &str) -> BTreeMap<String, (String, String, String)> {
    let j = job(store, name).expect("job");
    (j["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default())
    .iter()
    .map(|c| {
        let text = |f: &str| c[f].as_str().unwrap_or_default().to_string();
        (
            text("type"),
            (text("status"), text("reason"), text("message")),
        )
    })
    .collect()
}

fn pod_uids(store: &Store) -> Vec<String> {
    store
        .list("", "pods", Some(NAMESPACE))
        .iter()
        .map(|p| p["metadata"]["uid"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_keep_state_a_state_change_is_held_under_refuse_and_reset_only_when_allowed() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("upgrade");
    let name = unique_name("upgrade");
    let input = format!("{name}.in");
    let output = format!("{name}.out");
    create_topic(&env, &input, 1);
    let Cluster {
        server: _server,
        store,
        kubeconfig,
        sim,
        mut operator,
    } = Cluster::start(
        &dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await;
    let files = JobFiles {
        manifest: dir.join("job.yaml"),
        namespace: NAMESPACE.into(),
        name: name.clone(),
        storage: format!("s3://{}/{name}", env.s3_bucket),
    };
    let checkpoints = Checkpoints::of(&env, &files);
    let mut reference = Reference::default();
    let shapes = [
        Shape {
            min_amount: 10,
            window_s: 10,
            reset: false,
            manual: false,
        },
        Shape {
            min_amount: 5,
            window_s: 10,
            reset: false,
            manual: false,
        },
        Shape {
            min_amount: 5,
            window_s: 20,
            reset: false,
            manual: false,
        },
        Shape {
            min_amount: 5,
            window_s: 20,
            reset: true,
            manual: false,
        },
        Shape {
            min_amount: 8,
            window_s: 20,
            reset: false,
            manual: true,
        },
    ];
    let mut alive = || {};

    // Generation 1 processes batch 1.
    apply(&kubeconfig, &dir, &manifest(&env, &name, &input, shapes[0]));
    wait_ready(&store, &sim, &name, 1, &mut operator);
    reference.generation(shapes[0]);
    write(&env, &input, 0..BATCH);
    (0..BATCH).for_each(|g| reference.feed(g, shapes[0]));
    wait_for_offset(&checkpoints, &input, BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});

    // 1. The filter changes: rolled out, the dedupe and the open windows kept.
    apply(&kubeconfig, &dir, &manifest(&env, &name, &input, shapes[1]));
    let took = wait_ready(&store, &sim, &name, 1, &mut operator);
    eprintln!(
        "generation 2 (filter edited) ready {:.1} s after kubectl apply",
        took.as_secs_f64()
    );
    reference.generation(shapes[1]);
    write(&env, &input, BATCH..2 * BATCH);
    (BATCH..2 * BATCH).for_each(|g| reference.feed(g, shapes[1]));
    wait_for_offset(&checkpoints, &input, 2 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    let head = checkpoints.head(0).await.expect("HEAD");
    let signed: Vec<String> = (head.state_signatures.clone().expect("signatures").iter())
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        signed,
        ["once", "per-window"],
        "the descriptor signs each stateful step"
    );
    let events = store.list("events.k8s.io", "events", Some(NAMESPACE));
    assert!(
        events.iter().any(|e| e["note"]
            .as_str()
            .is_some_and(|n| n.contains("the upgrade keeps all state"))),
        "the restart's Event says the state is kept: {events:?}"
    );

    // 2. The window size changes under refuse: held; the workers of generation 2 go on.
    let pods = pod_uids(&store);
    apply(&kubeconfig, &dir, &manifest(&env, &name, &input, shapes[2]));
    let started = Instant::now();
    let held = loop {
        let j = job(&store, &name).expect("job");
        let c = conditions(&store, &name);
        if j["status"]["observedGeneration"] == 3
            && c.get("Degraded")
                .is_some_and(|d| d.1 == "StateIncompatible")
        {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not held: {}\n{}",
            j["status"],
            tail(&operator.log)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let message = &held["Degraded"].2;
    for part in [
        "generation 3 would lose state",
        "resets aggregate `per-window` (window: tumbling 10s → tumbling 20s)",
        "keeps dedupe `once`",
        "revert the change",
        "spec.upgrade.stateChanges: reset",
    ] {
        assert!(message.contains(part), "{part:?} not in {message:?}");
    }
    assert_eq!(held["SpecValid"].0, "True");
    assert_eq!(
        (
            held["Progressing"].0.as_str(),
            held["Progressing"].1.as_str()
        ),
        ("False", "StateIncompatible")
    );
    assert_eq!(
        (held["Stalled"].0.as_str(), held["Stalled"].1.as_str()),
        ("True", "StateIncompatible")
    );
    eprintln!("generation 3 held: {message}");
    write(&env, &input, 2 * BATCH..3 * BATCH);
    (2 * BATCH..3 * BATCH).for_each(|g| reference.feed(g, shapes[1]));
    wait_for_offset(&checkpoints, &input, 3 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    assert_eq!(
        pod_uids(&store),
        pods,
        "no worker was restarted for the held change"
    );
    assert_eq!(conditions(&store, &name)["Degraded"].1, "StateIncompatible");

    // 3. The same change with reset: rolled out; the aggregate starts empty, the dedupe not.
    apply(&kubeconfig, &dir, &manifest(&env, &name, &input, shapes[3]));
    let took = wait_ready(&store, &sim, &name, 1, &mut operator);
    eprintln!(
        "generation 4 (window reset) ready {:.1} s after kubectl apply",
        took.as_secs_f64()
    );
    assert_ne!(pod_uids(&store), pods, "the worker was restarted");
    reference.generation(shapes[3]);
    write(&env, &input, 3 * BATCH..4 * BATCH);
    (3 * BATCH..4 * BATCH).for_each(|g| reference.feed(g, shapes[3]));
    wait_for_offset(&checkpoints, &input, 4 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    let c = conditions(&store, &name);
    assert_eq!(c["Degraded"].0, "False", "{c:?}");
    assert!(!c.contains_key("Stalled"), "{c:?}");
    let events = store.list("events.k8s.io", "events", Some(NAMESPACE));
    assert!(
        events.iter().any(|e| e["note"]
            .as_str()
            .is_some_and(|n| n.contains("resets aggregate `per-window`"))),
        "the restart's Event names the reset: {events:?}"
    );

    // 4. An edit under approval: manual (a filter change, keeping all state): the plan is in
    // status and nothing restarts until the annotation names the generation.
    let pods = pod_uids(&store);
    apply(&kubeconfig, &dir, &manifest(&env, &name, &input, shapes[4]));
    let started = Instant::now();
    let waiting = loop {
        let c = conditions(&store, &name);
        let j = job(&store, &name).expect("job");
        if j["status"]["observedGeneration"] == 5
            && c.get("Progressing")
                .is_some_and(|p| p.1 == "AwaitingApproval")
        {
            break (c, j["status"]["plan"].clone());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not waiting: {}",
            j["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let (c, plan) = waiting;
    assert_eq!(c["Progressing"].0, "True");
    assert_eq!(
        (c["Reconciling"].0.as_str(), c["Reconciling"].1.as_str()),
        ("True", "AwaitingApproval")
    );
    assert!(
        c["Progressing"].2.contains("sluice.dev/approve=5"),
        "{}",
        c["Progressing"].2
    );
    assert_eq!(
        (
            plan["generation"].as_i64(),
            plan["action"].as_str(),
            plan["held"].as_str()
        ),
        (Some(5), Some("upgrade"), Some("AwaitingApproval")),
        "{plan}"
    );
    let verdicts: Vec<(String, String)> = (plan["steps"].as_array().expect("steps").iter())
        .map(|s| (s["name"].to_string(), s["verdict"].to_string()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("\"once\"".into(), "\"keep\"".into()),
            ("\"per-window\"".into(), "\"keep\"".into())
        ]
    );
    eprintln!("generation 5 waits for approval; plan: {plan}");
    write(&env, &input, 4 * BATCH..5 * BATCH);
    (4 * BATCH..5 * BATCH).for_each(|g| reference.feed(g, shapes[3]));
    wait_for_offset(&checkpoints, &input, 5 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    assert_eq!(
        pod_uids(&store),
        pods,
        "nothing restarted before the approval"
    );
    kubectl(
        &kubeconfig,
        &[
            "annotate",
            "-n",
            NAMESPACE,
            &format!("sj/{name}"),
            "sluice.dev/approve=5",
            "--overwrite",
        ],
    );
    let started = Instant::now();
    while pod_uids(&store) == pods {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not rolled after the approval"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = wait_ready(&store, &sim, &name, 1, &mut operator);
    eprintln!(
        "generation 5 rolled once approved: ready {:.1} s after kubectl annotate",
        (started.elapsed()).as_secs_f64().max(took.as_secs_f64())
    );
    reference.generation(shapes[4]);
    write(&env, &input, 5 * BATCH..6 * BATCH);
    (5 * BATCH..6 * BATCH).for_each(|g| reference.feed(g, shapes[4]));
    wait_for_offset(&checkpoints, &input, 6 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    eprintln!(
        "output equals the reference over 5 generations: {} window results",
        reference.results.len()
    );
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_never_resets_state_under_refuse_even_restarted_and_does_under_reset() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("upgrade-worker");
    let name = unique_name("upgrade-worker");
    let input = format!("{name}.in");
    let output = format!("{name}.out");
    create_topic(&env, &input, 1);
    let files = JobFiles {
        manifest: dir.join("job.yaml"),
        namespace: NAMESPACE.into(),
        name: name.clone(),
        storage: format!("s3://{}/{name}", env.s3_bucket),
    };
    let write_job = |shape: Shape| {
        let mut m = manifest(&env, &name, &input, shape);
        m["spec"]["checkpoint"]
            .as_object_mut()
            .expect("checkpoint")
            .remove("credentialsSecret");
        std::fs::write(&files.manifest, serde_norway::to_string(&m).expect("yaml")).expect("job");
    };
    let shapes = [
        Shape {
            min_amount: 10,
            window_s: 10,
            reset: false,
            manual: false,
        },
        Shape {
            min_amount: 10,
            window_s: 20,
            reset: false,
            manual: false,
        },
        Shape {
            min_amount: 10,
            window_s: 20,
            reset: true,
            manual: false,
        },
    ];
    let checkpoints = Checkpoints::of(&env, &files);
    let mut reference = Reference::default();
    write_job(shapes[0]);
    let mut workers = Workers::new(
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        &files,
        &dir,
        1,
    );
    workers.start(0);
    reference.generation(shapes[0]);
    write(&env, &input, 0..BATCH);
    (0..BATCH).for_each(|g| reference.feed(g, shapes[0]));
    let mut alive = || {};
    wait_for_offset(&checkpoints, &input, BATCH as i64, &mut alive).await;
    workers.stop_all();
    let before = checkpoints.head(0).await.expect("HEAD");

    // The job file edited by hand under refuse: the task refuses, restarted or not.
    write_job(shapes[1]);
    write(&env, &input, BATCH..2 * BATCH);
    for attempt in 0..2 {
        let log = workers.start_until_refused(0);
        assert!(
            log.contains("resets aggregate `per-window` (window: tumbling 10s → tumbling 20s)"),
            "{log}"
        );
        let head = checkpoints.head(0).await.expect("HEAD");
        assert_eq!(
            (head.id, head.source_offsets.clone()),
            (before.id, before.source_offsets.clone()),
            "attempt {attempt}: nothing was checkpointed over the refused state"
        );
        workers.kill(0);
    }

    // Under reset the aggregate starts over; the records after the checkpoint go to 20 s
    // windows from empty.
    write_job(shapes[2]);
    workers.start(0);
    reference.generation(shapes[2]);
    (BATCH..2 * BATCH).for_each(|g| reference.feed(g, shapes[2]));
    wait_for_offset(&checkpoints, &input, 2 * BATCH as i64, &mut alive).await;
    expect_output(&env, &output, 1, &reference.results, || {});
    assert!(workers.log(0).contains("resets aggregate `per-window`"));
    workers.stop_all();
}

//! Savepoints, end to end: the real operator (through the fake API server and `kubectl`) and
//! real workers on the real broker and S3 server. A job counting orders per customer runs; a
//! savepoint is triggered with `spec.savepoint.trigger`; the job goes on (checkpoint retention,
//! keeping one checkpoint, deletes the savepoint's checkpoint from the job's own chain several
//! times over) and is then deleted. A new job, of another name, with `spec.restoreFrom`
//! resumes from the savepoint: its counts go on from the counts at the savepoint's offsets,
//! which the test computes from the input, and its tasks' checkpoints say where they came from.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::apiserver::Store;
use sluice_e2e::cluster::{
    Checkpoints, JobFiles, create_topic, expect_output, produce_json, scratch_dir,
};
use sluice_e2e::operator::{
    Cluster, NAMESPACE, apply, checkpoint, job, kubectl, streamjob, tail, wait_ready,
};
use sluice_e2e::{TestEnv, unique_name};
use sluice_worker::checkpoint::descriptor::CheckpointId;
use sluice_worker::checkpoint::layout::FileKind;
use sluice_worker::checkpoint::savepoint::{self, SavepointId};

/// Records before the savepoint, and in all.
const BEFORE: u64 = 60;
const ALL: u64 = 120;

fn order(g: u64) -> Value {
    json!({"id": format!("o{g}"), "customer": format!("c{}", g % 3), "ts": 1_700_000_000_000i64 + g as i64 * 1000})
}

/// The job's results for records `from..to`: each record's customer with the number of
/// orders of that customer up to and including it.
fn running_counts(from: u64, to: u64) -> BTreeSet<(String, String)> {
    (from..to)
        .map(|g| {
            let orders = g / 3 + 1;
            (format!("c{}", g % 3), json!({"orders": orders}).to_string())
        })
        .collect()
}

fn manifest(env: &TestEnv, storage: &str, name: &str, input: &str, extra: Value) -> Value {
    let mut spec = json!({
        "parallelism": 1,
        "source": {"kafka": {"bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json"}},
        "eventTime": {"field": "ts", "maxOutOfOrderness": "0s"},
        "steps": [{"name": "per-customer", "aggregate": {
            "groupBy": "value.customer",
            "aggregations": [{"name": "orders", "function": "count"}],
            "emit": "on-update",
        }}],
        "sink": {"kafka": {"topic": format!("{name}.out")}},
        "deadLetter": {"topic": format!("{name}.dlq")},
        "checkpoint": checkpoint(env, storage),
        "state": {"size": "1Gi"},
    });
    // Retention keeping one checkpoint deletes the saved one soon.
    spec["checkpoint"]["retain"] = 1.into();
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    streamjob(name, spec)
}

fn write(env: &TestEnv, topic: &str, records: std::ops::Range<u64>) {
    produce_json(env, topic, records.map(order));
}

/// Waits until task 0's HEAD checkpoint covers input offset `next`; returns its id.
async fn wait_for_offset(checkpoints: &Checkpoints, input: &str, next: i64) -> CheckpointId {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(head) = checkpoints.head(0).await
            && head.source_offsets.get(input).copied().unwrap_or(0) >= next
        {
            return head.id;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint covers offset {next}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_savepoint_outlives_retention_and_its_job_and_a_new_job_resumes_from_it() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("savepoint");
    let base = unique_name("savepoint");
    let (first, second) = (format!("{base}-a"), format!("{base}-b"));
    let input = format!("{base}.in");
    create_topic(&env, &input, 1);
    let storage = format!("s3://{}/{base}", env.s3_bucket);
    let mut cluster = Cluster::start(
        &dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await;
    let (store, kubeconfig) = (cluster.store.clone(), cluster.kubeconfig.clone());
    let files = |name: &str| JobFiles {
        manifest: dir.join("job.yaml"),
        namespace: NAMESPACE.into(),
        name: name.into(),
        storage: storage.clone(),
    };
    let checkpoints = Checkpoints::of(&env, &files(&first));

    // The first job counts the records before the savepoint.
    apply(
        &kubeconfig,
        &dir,
        &manifest(&env, &storage, &first, &input, json!({})),
    );
    wait_ready(&store, &cluster.sim, &first, 1, &mut cluster.operator);
    write(&env, &input, 0..BEFORE);
    wait_for_offset(&checkpoints, &input, BEFORE as i64).await;

    // The trigger: taken from the first checkpoint after it, which covers the same records.
    let triggered = Instant::now();
    let trigger = json!({"savepoint": {"trigger": "before-the-migration"}});
    apply(
        &kubeconfig,
        &dir,
        &manifest(&env, &storage, &first, &input, trigger.clone()),
    );
    let listed = wait_taken(
        &store,
        &first,
        "before-the-migration",
        &cluster.operator.log,
    );
    eprintln!(
        "savepoint taken {:.1} s after the trigger was applied",
        triggered.elapsed().as_secs_f64()
    );
    let id = listed["savepoint"]["id"].as_str().expect("id").to_string();
    assert_eq!(id, format!("{NAMESPACE}/{first}/1"));
    let entry = &listed["savepoints"][0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["trigger"], "before-the-migration");
    assert_eq!(entry["tasks"], 1);
    assert_eq!(
        entry["checkpoints"][0]["sourceOffsets"][&input], BEFORE,
        "the savepoint holds the state after the records before it: {entry}"
    );
    let saved = CheckpointId(entry["checkpoints"][0]["checkpoint"].as_u64().expect("id"));
    let events = store.list("events.k8s.io", "events", Some(NAMESPACE));
    assert!(
        events.iter().any(|e| e["reason"] == "SavepointTaken"
            && e["note"].as_str().is_some_and(|n| n.contains(&id))),
        "an Event says it was taken: {events:?}"
    );

    // The job goes on; keeping one checkpoint, retention deletes the saved one and several
    // after it from the job's own chain.
    write(&env, &input, BEFORE..ALL);
    let mut head = wait_for_offset(&checkpoints, &input, ALL as i64).await;
    while head.0 < saved.0 + 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        head = checkpoints.head(0).await.expect("HEAD").id;
    }
    let task = checkpoints.layout().task(0);
    let chain = checkpoints
        .store()
        .list_checkpoints(&task)
        .await
        .expect("list");
    assert!(
        !chain.contains(&saved) && chain.len() <= 2,
        "retention kept {chain:?} (saved {saved})"
    );
    let mut all = running_counts(0, ALL);
    expect_output(&env, &format!("{first}.out"), 1, &all, || {});

    // The savepoint is whole: its manifest, descriptor and every file, of the size and hash
    // the descriptor gives.
    let parsed: SavepointId = id.parse().expect("id");
    let target = parsed.layout(checkpoints.store().prefix());
    let found = savepoint::list(checkpoints.store(), checkpoints.layout())
        .await
        .expect("savepoints");
    assert_eq!(found.len(), 1);
    let copy = checkpoints
        .store()
        .read_descriptor(&target.task(0), saved)
        .await
        .expect("the savepoint's descriptor");
    assert_eq!(copy.source_offsets[&input], BEFORE as i64);
    assert!(!copy.files.is_empty());
    let scratch = dir.join("savepoint-files");
    std::fs::create_dir_all(&scratch).expect("dir");
    for file in &copy.files {
        let path = target.task(0).file(&file.hash, FileKind::of(&file.name));
        checkpoints
            .store()
            .get_file(&path, &scratch.join(&file.name), file.size, &file.hash)
            .await
            .unwrap_or_else(|e| panic!("savepoint file {path}: {e}"));
    }

    // The first job is deleted; its workers stop.
    kubectl(&kubeconfig, &["delete", "sj", &first, "-n", NAMESPACE]);
    let deleted = Instant::now();
    while cluster.sim.processes() > 0 || !store.list("", "pods", Some(NAMESPACE)).is_empty() {
        assert!(
            deleted.elapsed() < Duration::from_secs(60),
            "workers still run"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A new job starts from the savepoint: it reads the input from the savepoint's offsets on,
    // and its counts go on from the ones saved.
    let restore = json!({"restoreFrom": id});
    apply(
        &kubeconfig,
        &dir,
        &manifest(&env, &storage, &second, &input, restore),
    );
    wait_ready(&store, &cluster.sim, &second, 1, &mut cluster.operator);
    let resumed = Checkpoints::of(&env, &files(&second));
    wait_for_offset(&resumed, &input, ALL as i64).await;
    all = running_counts(BEFORE, ALL);
    expect_output(&env, &format!("{second}.out"), 1, &all, || {});
    let head = resumed.head(0).await.expect("HEAD");
    assert_eq!(head.restored_from.as_deref(), Some(id.as_str()));
    assert_eq!(head.source_offsets[&input], ALL as i64);

    // Savepoint retention: keeping one, the new job's second savepoint deletes its first (and
    // leaves the first job's, which it restored from, alone).
    for (trigger, n) in [("b1", 1), ("b2", 2)] {
        let spec = json!({"restoreFrom": id, "savepoint": {"trigger": trigger, "retain": 1}});
        apply(
            &kubeconfig,
            &dir,
            &manifest(&env, &storage, &second, &input, spec),
        );
        let listed = wait_taken(&store, &second, trigger, &cluster.operator.log);
        let ids: Vec<&str> = (listed["savepoints"].as_array().expect("listed").iter())
            .map(|s| s["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, [format!("{NAMESPACE}/{second}/{n}")], "{listed}");
    }
    let events = store.list("events.k8s.io", "events", Some(NAMESPACE));
    assert!(
        events.iter().any(|e| e["reason"] == "SavepointDeleted"
            && e["note"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("{NAMESPACE}/{second}/1")))),
        "an Event says the first was deleted: {events:?}"
    );
    let kept = savepoint::list(resumed.store(), resumed.layout())
        .await
        .expect("list");
    assert_eq!(kept.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2]);
    let original = savepoint::list(checkpoints.store(), checkpoints.layout())
        .await
        .expect("list");
    assert_eq!(
        original.len(),
        1,
        "the first job's savepoint is still there"
    );
    cluster.operator.assert_alive();
}

/// Waits until job `name`'s savepoint for `trigger` is taken; returns the job's status.
fn wait_taken(store: &Store, name: &str, trigger: &str, log: &Path) -> Value {
    let started = Instant::now();
    loop {
        let j = job(store, name).expect("job");
        let progress = &j["status"]["savepoint"];
        if progress["trigger"] == trigger && progress["state"] == "Taken" {
            return j["status"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no savepoint for {trigger}: {}\n{}",
            j["status"],
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

//! The operator and real workers together, through the HTTP protocol a cluster speaks: the
//! fake API server, `kubectl`, a real `sluice-operator run` process, and the StatefulSet
//! simulator running real `sluice-worker run` processes against the real broker and S3 server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_e2e::TestEnv;
use sluice_e2e::cluster::{Checkpoints, JobFiles, scratch_dir, start_input};
use sluice_e2e::operator::{Cluster, NAMESPACE, job, kubectl, wait_ready};

const PARTITIONS: u32 = 6;
/// Not all keys complete their create → update → delete cycle, so the final table is not empty.
const KEYS: u64 = 50_000;
const EVENTS: u64 = 200_003;

/// The CDC example with this machine's broker, topics and S3 server in place of the cluster's.
fn example_job(
    env: &TestEnv,
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
) -> (PathBuf, JobFiles) {
    let root =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/cdc-materialize.yaml");
    let mut manifest: Value =
        serde_norway::from_str(&std::fs::read_to_string(root).expect("example")).expect("yaml");
    let storage = format!("s3://{}/{name}", env.s3_bucket);
    manifest["metadata"]["name"] = name.into();
    manifest["metadata"]["namespace"] = NAMESPACE.into();
    let spec = &mut manifest["spec"];
    spec["parallelism"] = 2.into();
    spec["source"]["kafka"]["bootstrapServers"] = env.kafka_bootstrap.clone().into();
    spec["source"]["kafka"]["topics"] = serde_json::json!([input]);
    spec["sink"]["kafka"]["topic"] = output.into();
    spec["deadLetter"]["topic"] = format!("{output}.dlq").into();
    spec["checkpoint"]["storage"] = storage.clone().into();
    spec["checkpoint"]["endpoint"] = env.s3_endpoint.clone().into();
    spec["checkpoint"]["interval"] = "2s".into();
    spec["state"]["size"] = "1Gi".into();
    let path = dir.join("job.yaml");
    std::fs::write(&path, serde_norway::to_string(&manifest).expect("yaml")).expect("write job");
    let files = JobFiles {
        manifest: path.clone(),
        namespace: NAMESPACE.into(),
        name: name.into(),
        storage,
    };
    (path, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_real_workers_through_the_operator_from_apply_to_delete() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("k8s");
    let name = sluice_e2e::unique_name("k8s");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
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

    let mut generator = start_input(
        env!("CARGO_BIN_EXE_sluice-cdc-gen"),
        &env,
        &input,
        (PARTITIONS, KEYS, EVENTS),
        Some(8_000),
    );
    let (manifest, files) = example_job(&env, &dir, &name, &input, &output);
    let applied = kubectl(
        &kubeconfig,
        &[
            "apply",
            "--validate=false",
            "-f",
            manifest.to_str().expect("path"),
        ],
    );
    eprintln!("{}", applied.trim());
    let took = wait_ready(&store, &sim, &name, 2, &mut operator);
    eprintln!(
        "Ready with 2 workers {:.1} s after kubectl apply:",
        took.as_secs_f64()
    );
    eprint!("{}", kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE]));

    for to in [5, 1] {
        eprint!(
            "{}",
            kubectl(
                &kubeconfig,
                &[
                    "scale",
                    "-n",
                    NAMESPACE,
                    &format!("sj/{name}"),
                    &format!("--replicas={to}")
                ]
            )
        );
        let took = wait_ready(&store, &sim, &name, to, &mut operator);
        eprintln!(
            "rescaled to {to} workers: ready {:.1} s after kubectl scale",
            took.as_secs_f64()
        );
        eprint!("{}", kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE]));
    }

    let suspend = |suspended: bool| {
        let patch = format!(r#"{{"spec":{{"suspend":{suspended}}}}}"#);
        kubectl(
            &kubeconfig,
            &[
                "patch",
                "sj",
                &name,
                "-n",
                NAMESPACE,
                "--type=merge",
                "-p",
                &patch,
            ],
        )
    };
    // Suspend: a final checkpoint and no workers; resume from it.
    suspend(true);
    let started = Instant::now();
    loop {
        let j = job(&store, &name).expect("job");
        if j["status"]["phase"] == "Suspended"
            && sim.processes() == 0
            && store.list("", "pods", Some(NAMESPACE)).is_empty()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not suspended: {}",
            j["status"]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let checkpoints = Checkpoints::of(&env, &files);
    let at_suspend: Vec<u64> = {
        let mut ids = Vec::new();
        for task in 0..PARTITIONS {
            ids.push(
                checkpoints
                    .head(task)
                    .await
                    .expect("a final checkpoint")
                    .id
                    .0,
            );
        }
        ids
    };
    eprintln!(
        "suspended in {:.1} s: no workers; HEAD checkpoints {at_suspend:?}",
        started.elapsed().as_secs_f64()
    );
    eprint!("{}", kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE]));
    std::thread::sleep(Duration::from_secs(3));
    for (task, id) in at_suspend.iter().enumerate() {
        let now = checkpoints
            .head(task as u32)
            .await
            .expect("checkpoint")
            .id
            .0;
        assert_eq!(now, *id, "task {task}: nothing checkpoints while suspended");
    }
    suspend(false);
    let took = wait_ready(&store, &sim, &name, 1, &mut operator);
    eprintln!(
        "resumed: ready {:.1} s after unsuspending",
        took.as_secs_f64()
    );

    // The operator SIGKILLed in the middle of a rescale converges once restarted.
    kubectl(
        &kubeconfig,
        &[
            "scale",
            "-n",
            NAMESPACE,
            &format!("sj/{name}"),
            "--replicas=3",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    operator.kill();
    let pods_then = store.list("", "pods", Some(NAMESPACE)).len();
    eprintln!("SIGKILLed the operator 1.5 s into the rescale to 3 ({pods_then} pods then)");
    std::thread::sleep(Duration::from_secs(2));
    operator.start();
    let took = wait_ready(&store, &sim, &name, 3, &mut operator);
    eprintln!(
        "the restarted operator converged: 3 ready workers {:.1} s after its restart",
        took.as_secs_f64()
    );

    let status = generator.wait().expect("generator");
    assert!(status.success());
    let ends = sluice_e2e::cdc::events_per_partition(EVENTS, KEYS, PARTITIONS);
    checkpoints.wait_until_covered(&input, &ends, || {}).await;
    let live = checkpoints
        .assert_materialized(&env, &input, &output, &ends, &dir)
        .await;
    eprintln!(
        "changelog and the state of all {PARTITIONS} tasks equal the reference ({live} live rows)"
    );
    eprint!("{}", kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE]));

    // status.tasks: each task, on one of the job's pods, at the end of its partition.
    let started = Instant::now();
    let pods: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
    let tasks = loop {
        let j = job(&store, &name).expect("job");
        let tasks = j["status"]["tasks"].as_array().cloned().unwrap_or_default();
        let done = tasks.len() == PARTITIONS as usize
            && tasks.iter().all(|t| {
                let task = t["task"].as_u64().unwrap_or(u64::MAX) as usize;
                t["offsets"][&input].as_u64() == ends.get(task).map(|e| *e as u64)
                    && t["lag"] == 0
                    && t["owner"]
                        .as_str()
                        .is_some_and(|o| pods.iter().any(|p| p == o))
                    && t["restoredFrom"].is_string()
                    && t["lastCheckpoint"]["id"].is_u64()
            });
        if done {
            break j["status"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "status.tasks does not show every task at its end {ends:?}: {}",
            j["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "status.tasks showed every task at its partition's end {:.1} s after the checkpoints did",
        started.elapsed().as_secs_f64()
    );
    let totals = &tasks["taskTotals"];
    assert_eq!(totals["tasks"], PARTITIONS, "{totals}");
    assert_eq!(totals["worstLag"], 0, "{totals}");
    assert_eq!(totals["failed"], 0, "{totals}");
    let wide = kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE, "-o", "wide"]);
    eprint!("{wide}");
    assert!(
        wide.contains("WORST-LAG") && wide.contains("WORST-TASK"),
        "{wide}"
    );
    let narrow = kubectl(&kubeconfig, &["get", "sj", "-n", NAMESPACE]);
    assert!(!narrow.contains("WORST-LAG"), "only -o wide: {narrow}");

    // Deleting the job removes its children (garbage collection) and keeps its checkpoints.
    kubectl(&kubeconfig, &["delete", "sj", &name, "-n", NAMESPACE]);
    let started = Instant::now();
    loop {
        let left: usize = [
            ("", "configmaps"),
            ("", "services"),
            ("apps", "statefulsets"),
            ("policy", "poddisruptionbudgets"),
            ("", "pods"),
        ]
        .iter()
        .map(|(g, p)| store.list(g, p, Some(NAMESPACE)).len())
        .sum();
        if left == 0 && sim.processes() == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{left} children, {} processes left",
            sim.processes()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for task in 0..PARTITIONS {
        assert!(
            checkpoints.head(task).await.is_some(),
            "task {task}: checkpoints kept"
        );
    }
    eprintln!(
        "deleted: children and workers gone in {:.1} s, checkpoints kept",
        started.elapsed().as_secs_f64()
    );
    drop(sim);
}

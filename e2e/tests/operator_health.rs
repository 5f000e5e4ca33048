//! Honest health, through the fake API server with the real operator and real workers: a
//! rollout whose workers can never become ready (the sink topic has fewer partitions than the
//! source, which the worker refuses at start) is reported stuck once `spec.progressDeadline`
//! has passed: `Progressing=False` with reason `ProgressDeadlineExceeded`, and `Stalled=True`
//! (Flux: Failed; Argo CD: Degraded), instead of `Progressing` for ever.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_e2e::cluster::{create_topic, scratch_dir};
use sluice_e2e::operator::{Cluster, apply, checkpoint, job, streamjob, tail};
use sluice_e2e::{TestEnv, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_cannot_complete_is_stalled_after_its_progress_deadline() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("health");
    let name = unique_name("health");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 2);
    create_topic(&env, &output, 1);
    let cluster = Cluster::start(
        &dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await;
    let spec = json!({
        "parallelism": 1,
        "source": {"kafka": {"bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json"}},
        "steps": [{"name": "table", "materialize": {}}],
        "sink": {"kafka": {"topic": output}},
        "checkpoint": checkpoint(&env, &format!("s3://{}/{name}", env.s3_bucket)),
        "state": {"size": "1Gi"},
        "progressDeadline": "5s",
    });
    let applied = Instant::now();
    apply(&cluster.kubeconfig, &dir, &streamjob(&name, spec));
    let conditions = loop {
        let j = job(&cluster.store, &name).expect("job");
        let conditions = j["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let find = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned();
        if find("Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
            && find("Stalled").is_some_and(|c| c["status"] == "True")
        {
            break conditions;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(90),
            "not stalled: {}\n{}",
            j["status"],
            tail(&cluster.operator.log)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!(
        "stalled {:.1} s after kubectl apply (deadline 5 s): {conditions:#?}",
        applied.elapsed().as_secs_f64()
    );
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).expect(t);
    let progressing = find("Progressing");
    assert_eq!(progressing["status"], "False");
    let message = progressing["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.progressDeadline (5 s)"), "{message}");
    assert!(message.contains("0 of 1 workers ready"), "{message}");
    assert_eq!(find("Degraded")["status"], "True");
    assert_eq!(find("Ready")["status"], "False");
    assert!(
        !conditions.iter().any(|c| c["type"] == "Reconciling"),
        "not reconciling for ever: {conditions:?}"
    );
}

/// A task that fails and restarts inside a live worker (the checkpoint store refuses every HEAD
/// write, so it can never take its partition over; the pod stays up and reads still work) is
/// reported `Degraded=True`, reason `TaskFailing`, naming the task, the pod and the last error,
/// once it has been failing for `FAILING_AFTER` (60 s); the condition clears when the store
/// takes writes again and the task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_failing_in_a_live_pod_is_degraded_naming_task_pod_and_error() {
    use sluice_e2e::fault_proxy::{Fault, FaultProxy};
    let env = TestEnv::from_env();
    let dir = scratch_dir("failing");
    let name = unique_name("failing");
    let (input, output) = (format!("{name}.in"), format!("{name}.out"));
    create_topic(&env, &input, 1);
    let proxy = FaultProxy::start(&env.s3_endpoint).await;
    proxy.set(Fault::Refuse503, 1);
    let cluster = Cluster::start(
        &dir,
        env!("CARGO_BIN_EXE_sluice-worker").as_ref(),
        env!("CARGO_BIN_EXE_sluice-operator").as_ref(),
    )
    .await;
    let mut checkpoint = checkpoint(&env, &format!("s3://{}/{name}", env.s3_bucket));
    checkpoint["endpoint"] = proxy.endpoint.clone().into();
    let spec = json!({
        "parallelism": 1,
        "source": {"kafka": {"bootstrapServers": env.kafka_bootstrap, "topics": [input], "format": "json"}},
        "steps": [{"name": "all", "filter": {"expr": "true"}}],
        "sink": {"kafka": {"topic": output}},
        "checkpoint": checkpoint,
        "state": {"size": "1Gi"},
    });
    let applied = Instant::now();
    apply(&cluster.kubeconfig, &dir, &streamjob(&name, spec));
    let degraded = loop {
        let j = job(&cluster.store, &name).expect("job");
        let degraded = j["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned());
        if let Some(d) = degraded.filter(|d| d["reason"] == "TaskFailing") {
            break d;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(180),
            "not TaskFailing: {}\n{}",
            j["status"],
            tail(&cluster.operator.log)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let after = applied.elapsed();
    let message = degraded["message"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "Degraded TaskFailing {:.1} s after kubectl apply: {message}",
        after.as_secs_f64()
    );
    assert_eq!(degraded["status"], "True");
    assert!(
        after >= Duration::from_secs(60),
        "not before FAILING_AFTER: {after:?}"
    );
    for says in [
        format!("task 0 on {name}-0 has been failing and restarting for"),
        "503".to_string(),
    ] {
        assert!(message.contains(&says), "{says:?} in {message}");
    }
    assert!(proxy.injected() > 0);

    // The store takes writes again: the task runs and the condition clears.
    proxy.set(Fault::None, 1);
    let started = Instant::now();
    loop {
        let j = job(&cluster.store, &name).expect("job");
        let conditions = j["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let status = |t: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == t)
                .map(|c| c["status"].clone())
        };
        if status("Degraded") == Some("False".into()) && status("Ready") == Some("True".into()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still degraded after the store recovered: {}",
            j["status"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "Degraded cleared {:.1} s after the store took writes again",
        started.elapsed().as_secs_f64()
    );
}

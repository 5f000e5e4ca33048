//! 500 StreamJobs applied at once with `kubectl` to the fake API server: a real operator
//! process reconciles them all (children applied, status written, against the real broker and
//! S3 server) and the test prints the reconcile latencies and the operator's peak memory. No
//! worker processes run: this measures the control plane alone. Figures are printed, not
//! asserted; the test fails only if a job is not reconciled. A benchmark, so the test command
//! skips it: run it with `e2e/bench/operator.sh`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_e2e::TestEnv;
use sluice_e2e::apiserver::FakeApiServer;
use sluice_e2e::bench::{histogram_quantile, mib, peak_rss_bytes, quantile, scrape};
use sluice_e2e::cluster::{scratch_dir, wait_for_topic};

const JOBS: usize = 500;
const NAMESPACES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: e2e/bench/operator.sh runs it"]
async fn five_hundred_jobs_applied_at_once_are_all_reconciled() {
    let env = TestEnv::from_env();
    let dir = scratch_dir("many");
    let name = sluice_e2e::unique_name("many");
    let input = format!("{name}.in");
    // The source topic every job reads (validation asks the broker for its partitions).
    let admin = Command::new(env!("CARGO_BIN_EXE_sluice-cdc-gen"))
        .args([
            "--bootstrap",
            &env.kafka_bootstrap,
            "--topic",
            &input,
            "--partitions",
            "6",
            "--keys",
            "10",
            "--events",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("create the topic");
    assert!(admin.success());
    wait_for_topic(&env, &input, 6);

    let server = FakeApiServer::start().await;
    let kubeconfig = server.kubeconfig(&dir);
    let log = dir.join("operator.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut operator = Command::new(env!("CARGO_BIN_EXE_sluice-operator"))
        .arg("run")
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "sluice-system")
        .env("POD_NAME", "sluice-operator-0")
        .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info,kube=warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start sluice-operator");
    let pid = operator.id();
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = peak_rss_bytes(pid).unwrap_or(0);
    let metrics_addr = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_string(),
            )
        })
        .expect("the operator logs its metrics address");

    let mut manifests = String::new();
    for i in 0..JOBS {
        manifests.push_str(&format!(
            "---\napiVersion: sluice.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: job-{i:03}, namespace: team-{}}}\n\
             spec:\n  parallelism: 2\n  source:\n    kafka: {{bootstrapServers: \"{}\", topics: [\"{input}\"], format: debezium-json}}\n\
             \x20 steps: [{{name: table, materialize: {{}}}}]\n  sink:\n    kafka: {{topic: \"{name}-{i:03}.out\"}}\n\
             \x20 checkpoint: {{storage: \"s3://{}/{name}\", endpoint: \"{}\"}}\n",
            i % NAMESPACES,
            env.kafka_bootstrap,
            env.s3_bucket,
            env.s3_endpoint,
        ));
    }
    let file = dir.join("jobs.yaml");
    std::fs::write(&file, manifests).expect("write jobs");
    let applied_at = Instant::now();
    let mut apply = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--validate=false", "-f"])
        .arg(&file)
        .stdout(Stdio::null())
        .spawn()
        .expect("kubectl apply");

    // Latency per job: from when it first exists in the server until its first status is
    // written (polled every 200 ms, so ±200 ms).
    let (mut seen, mut latencies) = (vec![None; JOBS], vec![None; JOBS]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let watching = Instant::now();
    let mut all_done = Duration::ZERO;
    while latencies.iter().any(Option::is_none) {
        let now = Instant::now();
        for i in 0..JOBS {
            if latencies[i].is_some() {
                continue;
            }
            let job = server.store.get(
                "sluice.dev",
                "streamjobs",
                &format!("team-{}", i % NAMESPACES),
                &format!("job-{i:03}"),
            );
            let Some(job) = job else { continue };
            let first_seen = *seen[i].get_or_insert(now);
            if job["status"]["observedGeneration"] == 1 {
                latencies[i] = Some(now - first_seen);
                all_done = now - watching;
            }
        }
        if let Ok(Some(status)) = operator.try_wait() {
            panic!("the operator exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{} jobs not reconciled in 10 minutes",
            latencies.iter().filter(|l| l.is_none()).count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let applied = apply.wait().expect("kubectl apply");
    assert!(applied.success(), "kubectl apply failed");
    let apply_took = applied_at.elapsed();
    let sets = server.store.list("apps", "statefulsets", None).len();
    assert_eq!(sets, JOBS, "every job got its StatefulSet");
    let mut ms: Vec<f64> = latencies
        .iter()
        .map(|l| l.expect("done").as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let peak = peak_rss_bytes(pid).unwrap_or(0);
    let metrics = scrape(&metrics_addr).expect("operator metrics");
    let reconcile = |q| {
        histogram_quantile(&metrics, "sluice_operator_reconcile_duration_seconds", q)
            .unwrap_or_default()
            * 1000.0
    };
    eprintln!(
        "{JOBS} StreamJobs in {NAMESPACES} namespaces: kubectl apply took {:.1} s; first status of every \
         job within {:.1} s of the first; latency (job stored → its first status) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         one reconcile (operator histogram, bucket bounds) p50 ≤ {:.0} ms, p99 ≤ {:.0} ms; \
         operator peak RSS {} ({} before the jobs)",
        apply_took.as_secs_f64(),
        all_done.as_secs_f64(),
        quantile(&ms, 0.50).unwrap_or_default(),
        quantile(&ms, 0.99).unwrap_or_default(),
        ms.last().copied().unwrap_or_default(),
        reconcile(0.5),
        reconcile(0.99),
        mib(peak),
        mib(idle_rss),
    );
    let _ = operator.kill();
    let _ = operator.wait();
}

//! Driving the real operator through the fake API server: `kubectl`, the operator process,
//! and waiting for a job's status.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use std::sync::Arc;

use crate::apiserver::{FakeApiServer, Store};
use crate::statefulset::Simulator;

/// The namespace the operator tests' jobs live in.
pub const NAMESPACE: &str = "shop";

/// Runs `kubectl` against the fake API server; panics with its output when it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What an operator e2e test runs on: the fake API server holding the Secret `sluice-s3`
/// (the checkpoint credentials of this environment, which jobs name), the StatefulSet
/// simulator running real worker processes for its pods, and the real operator, started.
pub struct Cluster {
    /// The API server (serving until dropped).
    pub server: FakeApiServer,
    /// Its objects.
    pub store: Arc<Store>,
    /// A kubeconfig for it, for `kubectl` and the operator.
    pub kubeconfig: PathBuf,
    /// The pods' worker processes.
    pub sim: Simulator,
    /// The operator process.
    pub operator: Operator,
}

impl Cluster {
    /// Starts it all in `dir`, with the `sluice-worker` and `sluice-operator` binaries given.
    pub async fn start(dir: &Path, worker: &Path, operator: &Path) -> Self {
        let server = FakeApiServer::start().await;
        let kubeconfig = server.kubeconfig(dir);
        let store = server.store.clone();
        let mut data = serde_json::Map::new();
        for key in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ALLOW_HTTP",
        ] {
            data.insert(key.into(), std::env::var(key).unwrap_or_default().into());
        }
        store.write(
            "",
            "secrets",
            NAMESPACE,
            serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sluice-s3"}, "stringData": data}),
            false,
        );
        let sim = Simulator::start(
            store.clone(),
            worker.to_path_buf(),
            dir.join("cluster"),
            vec![("PATH".into(), std::env::var("PATH").unwrap_or_default())],
        );
        let mut operator = Operator::new(operator, &kubeconfig, &dir.join("operator.log"));
        operator.start();
        Self {
            server,
            store,
            kubeconfig,
            sim,
            operator,
        }
    }
}

/// A StreamJob named `name` in [`NAMESPACE`] with `spec`.
pub fn streamjob(name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// `spec.checkpoint` of an operator test's job: `storage` on this environment's S3 server,
/// credentials from the Secret [`Cluster::start`] writes, a checkpoint a second.
pub fn checkpoint(env: &crate::TestEnv, storage: &str) -> Value {
    serde_json::json!({
        "storage": storage,
        "endpoint": env.s3_endpoint,
        "credentialsSecret": {"name": "sluice-s3"},
        "interval": "1s",
    })
}

/// `kubectl apply` of `manifest`, written to `<dir>/job.yaml`; echoes kubectl's answer.
pub fn apply(kubeconfig: &Path, dir: &Path, manifest: &Value) {
    let path = dir.join("job.yaml");
    std::fs::write(&path, serde_norway::to_string(manifest).expect("yaml")).expect("write");
    let path = path.to_str().expect("path");
    eprint!(
        "{}",
        kubectl(kubeconfig, &["apply", "--validate=false", "-f", path])
    );
}

/// A real `sluice-operator run` process against the fake API server; restartable.
pub struct Operator {
    binary: PathBuf,
    child: Option<Child>,
    kubeconfig: PathBuf,
    /// Its log (appended to across restarts).
    pub log: PathBuf,
    starts: u32,
}

impl Operator {
    /// An operator of `binary` (not started yet) for the cluster of `kubeconfig`.
    pub fn new(binary: &Path, kubeconfig: &Path, log: &Path) -> Self {
        Self {
            binary: binary.to_path_buf(),
            child: None,
            kubeconfig: kubeconfig.to_path_buf(),
            log: log.to_path_buf(),
            starts: 0,
        }
    }

    /// Starts it (again).
    pub fn start(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let child = Command::new(&self.binary)
            .arg("run")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", "sluice-system")
            .env("POD_NAME", format!("sluice-operator-{}", self.starts))
            .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            // The operator reads checkpoints with each job's credentialsSecret, as a
            // production operator has no object-store credentials of its own.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sluice-operator");
        self.child = Some(child);
    }

    /// Panics with its log if it exited.
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("the operator exited with {status}:\n{}", tail(&self.log));
        }
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The job as the API server holds it.
pub fn job(store: &Store, name: &str) -> Option<Value> {
    store.get("sluice.dev", "streamjobs", NAMESPACE, name)
}

/// The status (`True`/`False`) of condition `type_` of `job`.
pub fn condition(job: &Value, type_: &str) -> Option<String> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(String::from))
}

/// Waits until the job reports `workers` ready workers for its current generation, every pod
/// on one revision, and the simulator runs exactly that many processes. Returns how long it took.
pub fn wait_ready(
    store: &Store,
    sim: &Simulator,
    name: &str,
    workers: usize,
    operator: &mut Operator,
) -> Duration {
    let started = Instant::now();
    loop {
        operator.assert_alive();
        let j = job(store, name).expect("the job exists");
        let current = j["status"]["observedGeneration"] == j["metadata"]["generation"];
        let ready = condition(&j, "Ready").as_deref() == Some("True")
            && j["status"]["readyWorkers"] == workers as i64
            && j["status"]["phase"] == "Running";
        let pods = store.list("", "pods", Some(NAMESPACE));
        let revisions: std::collections::BTreeSet<String> = pods
            .iter()
            .map(|p| p["metadata"]["labels"]["sluice.dev/revision"].to_string())
            .collect();
        if current
            && ready
            && pods.len() == workers
            && revisions.len() == 1
            && sim.processes() == workers
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not {workers} ready workers after 4 minutes; status {}; {} pods, {} processes; operator log:\n{}",
            j["status"],
            pods.len(),
            sim.processes(),
            tail(&operator.log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The last 40 lines of a log.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

//! A StatefulSet simulator for the fake API server: for every StatefulSet it runs one real
//! `sluice-worker run` process per replica, as the StatefulSet controller and the kubelet
//! would. Process I/O, and the fake server's store in memory.
//!
//! Per StatefulSet it keeps pods `<name>-0 … <name>-(replicas-1)`: it creates the Pod objects
//! from the template (with the `apps.kubernetes.io/pod-index` label), starts a process per pod
//! with the container's env (literal values, `fieldRef` to the pod's name, namespace and
//! labels, `secretKeyRef`, `envFrom` Secrets) and its volumes as directories (a ConfigMap's keys
//! as files, the claim template as a per-ordinal directory kept across pods — the persistent
//! volume — and emptyDirs), paths in env values rewritten to those directories. Pods above
//! `replicas` are deleted. A pod deleted through the API has its process SIGTERMed; its name is
//! not reused until the process exited (a pod name exists once). `OnDelete`: a template change
//! restarts nothing by itself. A process that exits on its own is restarted (restartPolicy
//! Always) and its restartCount counted. Readiness comes from the worker's `/readyz`, and the
//! StatefulSet's status from its pods.
//!
//! Not modelled: probes other than readiness, resources, scheduling, image pulls (the image is
//! ignored: every container runs the given worker binary), `OrderedReady`, partitions of
//! rolling updates, PVC objects.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use crate::apiserver::Store;

/// A running pod's process.
struct Running {
    child: Child,
    port: u16,
    ready: bool,
    restarts: u32,
    /// When the pod object was deleted, the process got SIGTERM at this time.
    terminating: Option<Instant>,
    namespace: String,
}

/// Runs StatefulSets' pods as real worker processes until dropped.
pub struct Simulator {
    stop: Arc<AtomicBool>,
    processes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Simulator {
    /// Starts simulating: `worker` is the `sluice-worker` binary, `root` holds volumes and
    /// logs (`<root>/logs/<pod>.log`), `base_env` is the environment every container gets
    /// before its own (e.g. `PATH`).
    pub fn start(
        store: Arc<Store>,
        worker: PathBuf,
        root: PathBuf,
        base_env: Vec<(String, String)>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let processes = Arc::new(AtomicUsize::new(0));
        let count = processes.clone();
        let thread = std::thread::spawn(move || {
            let mut sim = Sim {
                store,
                worker: crate::worker_binary(&worker),
                root,
                base_env,
                pods: BTreeMap::new(),
            };
            while !flag.load(Ordering::Relaxed) {
                sim.step();
                let alive = sim
                    .pods
                    .values_mut()
                    .map(|p| matches!(p.child.try_wait(), Ok(None)))
                    .filter(|alive| *alive)
                    .count();
                count.store(alive, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
            sim.stop_all();
        });
        Self {
            stop,
            processes,
            thread: Some(thread),
        }
    }

    /// Worker processes alive now.
    pub fn processes(&self) -> usize {
        self.processes.load(Ordering::Relaxed)
    }
}

struct Sim {
    store: Arc<Store>,
    worker: PathBuf,
    root: PathBuf,
    base_env: Vec<(String, String)>,
    /// By pod name.
    pods: BTreeMap<String, Running>,
}

fn pod_index(name: &str) -> Option<u32> {
    name.rsplit('-').next()?.parse().ok()
}

impl Sim {
    fn step(&mut self) {
        // Processes whose pod object was deleted (or marked) stop; once stopped, they go.
        let mut finished = Vec::new();
        for (name, pod) in &mut self.pods {
            let object = self.store.get("", "pods", &pod.namespace, name);
            let deleted = object
                .as_ref()
                .is_none_or(|o| !o["metadata"]["deletionTimestamp"].is_null());
            if deleted && pod.terminating.is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pod.child.id().to_string()])
                    .status();
                pod.terminating = Some(Instant::now());
            }
            if let Some(since) = pod.terminating {
                match pod.child.try_wait() {
                    Ok(Some(_)) => finished.push(name.clone()),
                    _ if since.elapsed() > Duration::from_secs(120) => {
                        let _ = pod.child.kill();
                        let _ = pod.child.wait();
                        finished.push(name.clone());
                    }
                    _ => {}
                }
            }
        }
        for name in finished {
            if let Some(pod) = self.pods.remove(&name)
                && let Some(o) = self.store.get("", "pods", &pod.namespace, &name)
                && !o["metadata"]["deletionTimestamp"].is_null()
            {
                self.store.delete("", "pods", &pod.namespace, &name);
            }
        }

        // The StatefulSet controller.
        for sts in self.store.list("apps", "statefulsets", None) {
            self.reconcile(&sts);
        }
        // Pods whose StatefulSet is gone were garbage-collected with it; nothing else to do.

        // The kubelet: restarts, readiness.
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            self.kubelet(&name);
        }
    }

    fn reconcile(&mut self, sts: &Value) {
        let namespace = sts["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = sts["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
        let pods: Vec<Value> = self
            .store
            .list("", "pods", Some(&namespace))
            .into_iter()
            .filter(|p| {
                p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["uid"] == sts["metadata"]["uid"]))
            })
            .collect();
        for pod in &pods {
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if pod_index(pod_name).is_some_and(|i| i >= replicas)
                && pod["metadata"]["deletionTimestamp"].is_null()
            {
                self.store.delete("", "pods", &namespace, pod_name);
            }
        }
        for ordinal in 0..replicas {
            let pod_name = format!("{name}-{ordinal}");
            let exists = pods.iter().any(|p| p["metadata"]["name"] == pod_name);
            if !exists && !self.pods.contains_key(&pod_name) {
                self.create_pod(sts, &namespace, &pod_name, ordinal);
            }
        }
        let ours: Vec<&Running> = self
            .pods
            .iter()
            .filter(|(n, p)| {
                p.namespace == namespace && n.rsplit_once('-').is_some_and(|(s, _)| s == name)
            })
            .map(|(_, p)| p)
            .collect();
        let ready = ours
            .iter()
            .filter(|p| p.ready && p.terminating.is_none())
            .count();
        let status = json!({
            "observedGeneration": sts["metadata"]["generation"],
            "replicas": ours.iter().filter(|p| p.terminating.is_none()).count(),
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        if sts["status"] != status {
            let mut o = sts.clone();
            o["status"] = status;
            self.store
                .write("apps", "statefulsets", &namespace, o, true);
        }
    }

    fn create_pod(&mut self, sts: &Value, namespace: &str, pod_name: &str, ordinal: u32) {
        let template = &sts["spec"]["template"];
        let mut labels = template["metadata"]["labels"].clone();
        labels["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "labels": labels,
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"],
                    "uid": sts["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
        });
        let pod = self.store.write("", "pods", namespace, pod, false);
        let claim_root = self.root.join("volumes").join(namespace).join(format!(
            "{}-{ordinal}",
            sts["metadata"]["name"].as_str().unwrap_or_default()
        ));
        match self.spawn(&pod, namespace, &claim_root) {
            Ok((child, port)) => {
                self.pods.insert(
                    pod_name.to_string(),
                    Running {
                        child,
                        port,
                        ready: false,
                        restarts: 0,
                        terminating: None,
                        namespace: namespace.to_string(),
                    },
                );
            }
            Err(e) => {
                let mut o = pod;
                o["status"] = json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0, "image": "", "imageID": "",
                        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": e}}}]});
                self.store.write("", "pods", namespace, o, true);
            }
        }
    }

    /// Starts the pod's container; returns the process and its HTTP port.
    fn spawn(
        &self,
        pod: &Value,
        namespace: &str,
        claim_root: &Path,
    ) -> Result<(Child, u16), String> {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let container = &pod["spec"]["containers"][0];
        let pod_dir = self.root.join("pods").join(namespace).join(name);
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = mount["name"].as_str().unwrap_or_default();
            let mount_path = mount["mountPath"].as_str().unwrap_or_default().to_string();
            let volume = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == volume_name);
            let dir = match volume {
                Some(v) if v["configMap"].is_object() => {
                    let cm_name = v["configMap"]["name"].as_str().unwrap_or_default();
                    let cm = self
                        .store
                        .get("", "configmaps", namespace, cm_name)
                        .ok_or(format!("configmap \"{cm_name}\" not found"))?;
                    let dir = pod_dir.join(volume_name);
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    for (key, value) in cm["data"].as_object().into_iter().flatten() {
                        std::fs::write(dir.join(key), value.as_str().unwrap_or_default())
                            .map_err(|e| e.to_string())?;
                    }
                    dir
                }
                Some(_) => {
                    let dir = pod_dir.join(volume_name);
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    dir
                }
                // Not a pod volume: a claim template of the StatefulSet.
                None => {
                    let dir = claim_root.join(volume_name);
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    dir
                }
            };
            mounts.push((mount_path, dir));
        }
        let rewrite = |value: &str| -> String {
            for (mount, dir) in &mounts {
                if let Some(rest) = value.strip_prefix(mount.as_str()) {
                    return format!("{}{rest}", dir.display());
                }
            }
            value.to_string()
        };
        let secret = |secret_name: &str| -> Result<BTreeMap<String, String>, String> {
            let object = self
                .store
                .get("", "secrets", namespace, secret_name)
                .ok_or(format!("secret \"{secret_name}\" not found"))?;
            // The typed Secret decodes `data` from base64.
            let s: Secret = serde_json::from_value(object).map_err(|e| e.to_string())?;
            let mut out: BTreeMap<String, String> = s.string_data.unwrap_or_default();
            for (k, v) in s.data.unwrap_or_default() {
                out.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            Ok(out)
        };
        let mut env: Vec<(String, String)> = self.base_env.clone();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(s) = from["secretRef"]["name"].as_str() {
                env.extend(secret(s)?);
            }
        }
        for e in container["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap_or_default().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                rewrite(v)
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => name.to_string(),
                    "metadata.namespace" => namespace.to_string(),
                    p => {
                        let label = p
                            .strip_prefix("metadata.labels['")
                            .and_then(|l| l.strip_suffix("']"))
                            .ok_or(format!("fieldRef {p} is not simulated"))?;
                        pod["metadata"]["labels"][label]
                            .as_str()
                            .unwrap_or_default()
                            .to_string()
                    }
                }
            } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_object() {
                let (secret_name, key_name) = (
                    s["name"].as_str().unwrap_or_default(),
                    s["key"].as_str().unwrap_or_default(),
                );
                secret(secret_name)?
                    .remove(key_name)
                    .ok_or(format!("key {key_name} not in secret {secret_name}"))?
            } else {
                continue;
            };
            env.push((key, value));
        }
        let port = free_port();
        env.retain(|(k, _)| k != "SLUICE_HTTP_ADDR" && k != "HOSTNAME");
        env.push(("SLUICE_HTTP_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("HOSTNAME".into(), name.to_string()));
        let logs = self.root.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{namespace}.{name}.log")))
            .map_err(|e| e.to_string())?;
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        let child = Command::new(&self.worker)
            .args(&args)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.worker.display()))?;
        Ok((child, port))
    }

    fn kubelet(&mut self, name: &str) {
        let Some(pod) = self.pods.get_mut(name) else {
            return;
        };
        if pod.terminating.is_some() {
            return;
        }
        let namespace = pod.namespace.clone();
        let Some(object) = self.store.get("", "pods", &namespace, name) else {
            return;
        };
        let exited = matches!(pod.child.try_wait(), Ok(Some(_)));
        let mut restarted = false;
        if exited {
            // restartPolicy Always (without the back-off growing past a second).
            std::thread::sleep(Duration::from_millis(500));
            let claim = self.root.join("volumes").join(&namespace).join(
                object["metadata"]["ownerReferences"][0]["name"]
                    .as_str()
                    .map(|s| format!("{s}-{}", pod_index(name).unwrap_or(0)))
                    .unwrap_or_default(),
            );
            match self.spawn(&object, &namespace, &claim) {
                Ok((child, port)) => {
                    let pod = self.pods.get_mut(name).expect("pod");
                    pod.child = child;
                    pod.port = port;
                    pod.restarts += 1;
                    pod.ready = false;
                    restarted = true;
                }
                Err(_) => return,
            }
        }
        let pod = self.pods.get_mut(name).expect("pod");
        let ready = !restarted && http_ok(pod.port, "/readyz");
        let status = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "containerStatuses": [{"name": "worker", "ready": ready, "restartCount": pod.restarts,
                "image": "", "imageID": "", "state": {"running": {}}}],
        });
        pod.ready = ready;
        if object["status"] != status {
            let mut o = object;
            o["status"] = status;
            self.store.write("", "pods", &namespace, o, true);
        }
    }

    fn stop_all(&mut self) {
        for pod in self.pods.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &pod.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for pod in self.pods.values_mut() {
            while matches!(pod.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = pod.child.kill();
            let _ = pod.child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

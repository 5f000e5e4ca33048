//! Reconciles through the real `kube::Client` against a scripted API: these tests pin the
//! exact requests (paths, order, patch type, field manager) and the status written.

mod api;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use sluice_core::checkpoint::descriptor::{Descriptor, TaskReport, test_descriptor};
use sluice_core::checkpoint::savepoint::{Savepoint, SavepointId};
use sluice_crds::v1alpha1::{CheckpointRef, StreamJob};
use sluice_operator::build::Settings;
use sluice_operator::metrics::Metrics;
use sluice_operator::observe::Outside;
use sluice_operator::rbac;
use sluice_operator::reconcile::{Context, reconcile};
use sluice_operator::validate::Unasked;

use api::{Recorded, ScriptedApi};

const JOBS: &str = "/apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs";

/// Brokers that know one 6-partition topic, 1000 records behind on each; an object store
/// without checkpoints yet.
struct Brokers;

impl Outside for Brokers {
    fn source_partitions(
        &self,
        _: &StreamJob,
    ) -> BoxFuture<'static, Result<BTreeMap<String, u32>, Unasked>> {
        Box::pin(async { Ok(BTreeMap::from([("customers".to_string(), 6)])) })
    }
    fn last_checkpoint(&self, _: &StreamJob, _: u32) -> BoxFuture<'static, Option<CheckpointRef>> {
        Box::pin(async { None })
    }
    fn task_reports(&self, _: &StreamJob, _: u32) -> BoxFuture<'static, Vec<TaskReport>> {
        Box::pin(async { Vec::new() })
    }
    fn lag(&self, _: &StreamJob, partitions: u32) -> BoxFuture<'static, Option<Vec<i64>>> {
        Box::pin(async move { Some(vec![1000; partitions as usize]) })
    }
    fn heads(
        &self,
        _: &StreamJob,
        partitions: u32,
        _: bool,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        Box::pin(async move { Some(vec![None; partitions as usize]) })
    }
    fn savepoint_heads(
        &self,
        _: &StreamJob,
        _: &SavepointId,
        _: u32,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        Box::pin(async { None })
    }
    fn savepoints(
        &self,
        _: &StreamJob,
    ) -> BoxFuture<'static, Result<Vec<(u64, Savepoint)>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn take_savepoint(
        &self,
        _: &StreamJob,
        _: String,
        _: Vec<Descriptor>,
    ) -> BoxFuture<'static, Result<Savepoint, String>> {
        Box::pin(async { Err("no checkpoints in these tests".into()) })
    }
    fn delete_savepoint(&self, _: &StreamJob, _: u64) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn job_manifest(spec_extra: Value) -> Value {
    let mut job = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": "customers", "namespace": "shop", "uid": "job-uid", "generation": 1},
        "spec": {
            "parallelism": 3,
            "source": {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["customers"], "format": "debezium-json"}},
            "steps": [{"name": "table", "materialize": {}}],
            "sink": {"kafka": {"topic": "customers-table"}},
            "checkpoint": {"storage": "s3://checkpoints/prod"},
        },
    });
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        job["spec"][k] = v.clone();
    }
    job
}

/// Brokers whose topic grew to 8 partitions while an operator that pinned no partitions ran
/// the job: its tasks 0–5 have checkpoints, 6 and 7 none.
struct Grown;

impl Outside for Grown {
    fn source_partitions(
        &self,
        _: &StreamJob,
    ) -> BoxFuture<'static, Result<BTreeMap<String, u32>, Unasked>> {
        Box::pin(async { Ok(BTreeMap::from([("customers".to_string(), 8)])) })
    }
    fn heads(
        &self,
        _: &StreamJob,
        partitions: u32,
        _: bool,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        Box::pin(async move {
            Some(
                (0..partitions)
                    .map(|task| (task < 6).then(|| test_descriptor(task, 7)))
                    .collect(),
            )
        })
    }
    fn last_checkpoint(&self, j: &StreamJob, n: u32) -> BoxFuture<'static, Option<CheckpointRef>> {
        Brokers.last_checkpoint(j, n)
    }
    fn task_reports(&self, j: &StreamJob, n: u32) -> BoxFuture<'static, Vec<TaskReport>> {
        Brokers.task_reports(j, n)
    }
    fn lag(&self, j: &StreamJob, n: u32) -> BoxFuture<'static, Option<Vec<i64>>> {
        Brokers.lag(j, n)
    }
    fn savepoint_heads(
        &self,
        j: &StreamJob,
        id: &SavepointId,
        n: u32,
    ) -> BoxFuture<'static, Option<Vec<Option<Descriptor>>>> {
        Brokers.savepoint_heads(j, id, n)
    }
    fn savepoints(
        &self,
        j: &StreamJob,
    ) -> BoxFuture<'static, Result<Vec<(u64, Savepoint)>, String>> {
        Brokers.savepoints(j)
    }
    fn take_savepoint(
        &self,
        j: &StreamJob,
        trigger: String,
        heads: Vec<Descriptor>,
    ) -> BoxFuture<'static, Result<Savepoint, String>> {
        Brokers.take_savepoint(j, trigger, heads)
    }
    fn delete_savepoint(&self, j: &StreamJob, n: u64) -> BoxFuture<'static, Result<(), String>> {
        Brokers.delete_savepoint(j, n)
    }
}

async fn reconcile_job(api: &ScriptedApi) -> Vec<Recorded> {
    reconcile_with(api, Arc::new(Brokers)).await
}

async fn reconcile_with(api: &ScriptedApi, outside: Arc<dyn Outside>) -> Vec<Recorded> {
    let job: StreamJob =
        serde_json::from_value(api.get(&format!("{JOBS}/customers")).expect("job")).expect("typed");
    let ctx = Arc::new(Context {
        client: api.client(),
        settings: Settings {
            worker_image: "sluice-worker:test".into(),
        },
        outside,
        reporter: Reporter {
            controller: "sluice-operator".into(),
            instance: Some("test".into()),
        },
        metrics: Arc::new(Metrics::default()),
        announcements: Default::default(),
    });
    reconcile(Arc::new(job), ctx).await.expect("reconcile");
    let requests = api.take_requests();
    for request in &requests {
        let (group, resource, verb) = request.permission();
        assert!(
            rbac::needed(&group, &resource, &verb),
            "{} needs {verb} on {group}/{resource}, which rbac::NEEDS does not grant",
            request.line()
        );
    }
    requests
}

fn lines(requests: &[Recorded]) -> Vec<String> {
    requests.iter().map(Recorded::line).collect()
}

/// The requests that change something (all but GETs).
fn writes(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method != "GET")
        .map(Recorded::line)
        .collect()
}

fn status(api: &ScriptedApi) -> Value {
    api.get(&format!("{JOBS}/customers")).expect("job")["status"].clone()
}

fn condition(status: &Value, type_: &str) -> (String, String, String) {
    let c = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("{type_} in {status}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

const SELECTOR: &str = "labelSelector=app.kubernetes.io%2Finstance%3Dcustomers%2Capp.kubernetes.io%2Fname%3Dsluice-worker%2Csluice.dev%2Fjob%3Dcustomers";

#[tokio::test]
async fn a_new_job_has_its_children_applied_in_order_then_its_status_written() {
    let api = ScriptedApi::default();
    api.put(&format!("{JOBS}/customers"), job_manifest(json!({})));
    let requests = reconcile_job(&api).await;
    assert_eq!(
        lines(&requests),
        [
            "GET /apis/apps/v1/namespaces/shop/statefulsets/customers",
            "GET /api/v1/namespaces/shop/configmaps/customers-job",
            "GET /api/v1/namespaces/shop/pods",
            "PATCH /api/v1/namespaces/shop/configmaps/customers-job",
            "PATCH /api/v1/namespaces/shop/services/customers",
            "PATCH /api/v1/namespaces/shop/services/customers-metrics",
            "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/customers",
            "PATCH /apis/apps/v1/namespaces/shop/statefulsets/customers",
            "POST /apis/events.k8s.io/v1/namespaces/shop/events",
            "GET /api/v1/namespaces/shop/configmaps",
            "GET /api/v1/namespaces/shop/services",
            "GET /apis/policy/v1/namespaces/shop/poddisruptionbudgets",
            "GET /apis/apps/v1/namespaces/shop/statefulsets",
            "PATCH /apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/customers/status",
        ]
    );
    assert_eq!(
        requests[2].uri,
        format!("/api/v1/namespaces/shop/pods?&{SELECTOR}")
    );
    for patch in requests.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(
            patch.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{}",
            patch.line()
        );
        assert!(
            patch
                .uri
                .ends_with("?&force=true&fieldManager=sluice-operator"),
            "{}",
            patch.uri
        );
    }
    let sts = api
        .get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(requests[8].body["reason"], "Created");
    let status = status(&api);
    assert_eq!(condition(&status, "SpecValid").0, "True");
    assert_eq!(
        condition(&status, "Progressing"),
        (
            "True".into(),
            "Starting".into(),
            format!(
                "0 of 3 workers ready on revision {}",
                sts["spec"]["template"]["metadata"]["labels"]["sluice.dev/revision"]
                    .as_str()
                    .expect("revision")
            )
        )
    );
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["lag"], 6000, "lag over all 6 partitions");
    assert_eq!(
        status["tasks"].as_array().map(Vec::len),
        Some(6),
        "{status}"
    );
    assert_eq!(status["tasks"][0]["lag"], 1000, "each task's own lag");
    assert_eq!(status["taskTotals"]["worstLag"], 1000);
    assert_eq!(status["taskTotals"]["tasks"], 6);
    assert_eq!(
        requests[13].body["apiVersion"], "sluice.dev/v1alpha1",
        "status is applied as a StreamJob"
    );
}

#[tokio::test]
async fn a_second_reconcile_of_an_unchanged_job_writes_nothing_new_but_its_children() {
    let api = ScriptedApi::default();
    api.put(&format!("{JOBS}/customers"), job_manifest(json!({})));
    reconcile_job(&api).await;
    let requests = reconcile_job(&api).await;
    assert_eq!(
        lines(&requests),
        [
            "GET /apis/apps/v1/namespaces/shop/statefulsets/customers",
            "GET /api/v1/namespaces/shop/configmaps/customers-job",
            "GET /api/v1/namespaces/shop/pods",
            "PATCH /api/v1/namespaces/shop/configmaps/customers-job",
            "PATCH /api/v1/namespaces/shop/services/customers",
            "PATCH /api/v1/namespaces/shop/services/customers-metrics",
            "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/customers",
            "PATCH /apis/apps/v1/namespaces/shop/statefulsets/customers",
        ],
        "no event, no orphan sweep (generation observed), no status write (unchanged)"
    );
}

#[tokio::test]
async fn jobs_that_cannot_run_get_spec_valid_false_a_warning_and_no_children() {
    let cases = [
        (
            json!({"parallelism": 8}),
            "ParallelismAbovePartitions",
            "set parallelism to at most 6",
        ),
        (
            json!({"checkpoint": {"storage": "s3://checkpoints/prod", "credentialsSecret": {"name": "s3-creds"}}}),
            "SecretNotFound",
            "Secret s3-creds does not exist in namespace shop",
        ),
        (
            json!({"steps": [{"name": "big", "filter": {"expr": "value.amount >"}}]}),
            "ExpressionInvalid",
            "does not compile at line 1",
        ),
        (
            json!({"source": {"kafka": {"bootstrapServers": "kafka:9092", "topics": ["orders"]}}}),
            "SourceTopicNotFound",
            "topic orders does not exist",
        ),
    ];
    for (spec, reason, says) in cases {
        let api = ScriptedApi::default();
        api.put(&format!("{JOBS}/customers"), job_manifest(spec.clone()));
        let requests = reconcile_job(&api).await;
        let writes = writes(&requests);
        assert_eq!(
            writes,
            [
                "POST /apis/events.k8s.io/v1/namespaces/shop/events",
                "PATCH /apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/customers/status",
            ],
            "{spec}: only an event and the status"
        );
        let event = &requests
            .iter()
            .find(|r| r.method == "POST")
            .expect("event")
            .body;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some(reason))
        );
        let status = status(&api);
        let (value, got_reason, message) = condition(&status, "SpecValid");
        assert_eq!(
            (value.as_str(), got_reason.as_str()),
            ("False", reason),
            "{spec}"
        );
        assert!(message.contains(says), "{spec}: {message}");
        assert_eq!(status["phase"], "Failed");
        assert!(
            api.get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
                .is_none()
        );
    }
}

#[tokio::test]
async fn a_rescale_applies_the_new_parallelism_and_deletes_every_pod_of_the_old_revision() {
    let api = ScriptedApi::default();
    api.put(&format!("{JOBS}/customers"), job_manifest(json!({})));
    reconcile_job(&api).await;
    let sts = api
        .get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
        .expect("sts");
    let old = sts["spec"]["template"]["metadata"]["labels"].clone();
    for ordinal in 0..3 {
        api.put(
            &format!("/api/v1/namespaces/shop/pods/customers-{ordinal}"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("customers-{ordinal}"), "namespace": "shop", "labels": old},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
    }
    let mut job = api.get(&format!("{JOBS}/customers")).expect("job");
    job["spec"]["parallelism"] = json!(6);
    job["metadata"]["generation"] = json!(2);
    api.put(&format!("{JOBS}/customers"), job);
    let requests = reconcile_job(&api).await;
    let writes = writes(&requests);
    assert_eq!(
        writes,
        [
            // The plan, before anything moves.
            "PATCH /apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/customers/status",
            "PATCH /api/v1/namespaces/shop/configmaps/customers-job",
            "PATCH /api/v1/namespaces/shop/services/customers",
            "PATCH /api/v1/namespaces/shop/services/customers-metrics",
            "PATCH /apis/policy/v1/namespaces/shop/poddisruptionbudgets/customers",
            "PATCH /apis/apps/v1/namespaces/shop/statefulsets/customers",
            "POST /apis/events.k8s.io/v1/namespaces/shop/events",
            "DELETE /api/v1/namespaces/shop/pods/customers-0",
            "DELETE /api/v1/namespaces/shop/pods/customers-1",
            "DELETE /api/v1/namespaces/shop/pods/customers-2",
            "POST /apis/events.k8s.io/v1/namespaces/shop/events",
            "PATCH /apis/sluice.dev/v1alpha1/namespaces/shop/streamjobs/customers/status",
        ]
    );
    let first = &requests
        .iter()
        .find(|r| r.method == "PATCH")
        .expect("the plan")
        .body;
    let plan = &first["status"]["plan"];
    assert_eq!(
        (plan["generation"].as_i64(), plan["action"].as_str()),
        (Some(2), Some("rescale"))
    );
    let moves: Vec<(i64, &str, &str)> = (plan["moves"].as_array().expect("moves").iter())
        .map(|m| {
            (
                m["task"].as_i64().unwrap_or(-1),
                m["from"].as_str().unwrap_or(""),
                m["to"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            (3, "customers-0", "customers-3"),
            (4, "customers-1", "customers-4"),
            (5, "customers-2", "customers-5")
        ]
    );
    assert_eq!(plan["tasksMoving"], 3);
    assert_eq!(status(&api)["plan"], *plan, "the status keeps the plan");
    let events: Vec<&Value> = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| &r.body)
        .collect();
    assert_eq!(events[0]["reason"], "Rescaling");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap_or_default()
            .contains("parallelism 3 → 6")
    );
    assert_eq!(events[1]["reason"], "DeletedPods");
    let sts = api
        .get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 6);
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    assert!(env.contains(&json!({"name": "SLUICE_PARALLELISM", "value": "6"})));
    let status = status(&api);
    assert_eq!(condition(&status, "Progressing").1, "Rescaling");
    assert_eq!(status["phase"], "Rescaling");
}

#[tokio::test]
async fn suspending_scales_the_workers_to_zero_and_keeps_the_volumes() {
    let api = ScriptedApi::default();
    api.put(&format!("{JOBS}/customers"), job_manifest(json!({})));
    reconcile_job(&api).await;
    let mut job = api.get(&format!("{JOBS}/customers")).expect("job");
    job["spec"]["suspend"] = json!(true);
    job["metadata"]["generation"] = json!(2);
    api.put(&format!("{JOBS}/customers"), job);
    let requests = reconcile_job(&api).await;
    assert!(
        !requests.iter().any(|r| r.method == "DELETE"),
        "nothing is deleted: {:?}",
        lines(&requests)
    );
    let event = &requests
        .iter()
        .find(|r| r.method == "POST")
        .expect("event")
        .body;
    assert_eq!(event["reason"], "Suspending");
    let sts = api
        .get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
        .expect("sts");
    assert_eq!(sts["spec"]["replicas"], 0);
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    assert_eq!(status(&api)["phase"], "Suspended");
}

/// Grants the scripted API cannot see used, and why each is needed anyway.
const UNOBSERVED: &[(&str, &str, &str, &str)] = &[
    (
        "sluice.dev",
        "streamjobs",
        "list",
        "the controller's initial list",
    ),
    (
        "sluice.dev",
        "streamjobs",
        "watch",
        "the controller's watch",
    ),
    (
        "apps",
        "statefulsets",
        "watch",
        "the controller owns StatefulSets",
    ),
    ("", "pods", "watch", "the controller watches worker pods"),
    (
        "apps",
        "statefulsets",
        "create",
        "server-side apply of an absent object is authorized as create",
    ),
    (
        "",
        "configmaps",
        "create",
        "server-side apply of an absent object is authorized as create",
    ),
    (
        "",
        "services",
        "create",
        "server-side apply of an absent object is authorized as create",
    ),
    (
        "policy",
        "poddisruptionbudgets",
        "create",
        "server-side apply of an absent object is authorized as create",
    ),
    (
        "sluice.dev",
        "streamjobs/finalizers",
        "update",
        "children's owner references set blockOwnerDeletion",
    ),
    (
        "events.k8s.io",
        "events",
        "patch",
        "the recorder patches a repeated event's series",
    ),
];

#[tokio::test]
async fn every_grant_the_operator_asks_for_in_job_namespaces_is_used() {
    let mut used = std::collections::BTreeSet::new();
    let mut record = |requests: Vec<Recorded>| {
        used.extend(requests.iter().map(Recorded::permission));
    };
    // A job with a credentials Secret, created, rescaled, then an orphan left by an older
    // operator version removed.
    let api = ScriptedApi::default();
    api.put(
        "/api/v1/namespaces/shop/secrets/s3-creds",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}, "data": {"AWS_ACCESS_KEY_ID": "eA=="}}),
    );
    api.put(
        &format!("{JOBS}/customers"),
        job_manifest(json!({"checkpoint": {"storage": "s3://c/p", "credentialsSecret": {"name": "s3-creds"}}})),
    );
    record(reconcile_job(&api).await);
    let labels = api
        .get("/apis/apps/v1/namespaces/shop/statefulsets/customers")
        .expect("sts")["spec"]["template"]["metadata"]["labels"]
        .clone();
    api.put(
        "/api/v1/namespaces/shop/pods/customers-0",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "customers-0", "labels": labels}}),
    );
    let orphans = [
        (
            "/api/v1/namespaces/shop/services/customers-old",
            "v1",
            "Service",
        ),
        (
            "/api/v1/namespaces/shop/configmaps/customers-config",
            "v1",
            "ConfigMap",
        ),
        (
            "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/customers-pdb",
            "policy/v1",
            "PodDisruptionBudget",
        ),
        (
            "/apis/apps/v1/namespaces/shop/statefulsets/customers-v0",
            "apps/v1",
            "StatefulSet",
        ),
    ];
    for (path, api_version, kind) in orphans {
        let name = path.rsplit('/').next().expect("name");
        api.put(
            path,
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name,
                   "labels": {"sluice.dev/job": "customers"}, "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1",
                   "kind": "StreamJob", "name": "customers", "uid": "job-uid"}]}}),
        );
    }
    // Labelled alike but owned by someone else: left alone.
    api.put(
        "/api/v1/namespaces/shop/configmaps/not-ours",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-ours",
               "labels": {"sluice.dev/job": "customers"}}}),
    );
    let mut job = api.get(&format!("{JOBS}/customers")).expect("job");
    job["spec"]["parallelism"] = json!(2);
    job["metadata"]["generation"] = json!(2);
    api.put(&format!("{JOBS}/customers"), job);
    let requests = reconcile_job(&api).await;
    for (path, _, _) in orphans {
        assert!(
            requests
                .iter()
                .any(|r| r.line() == format!("DELETE {path}")),
            "orphan {path} removed"
        );
        assert!(api.get(path).is_none());
    }
    assert!(
        api.get("/api/v1/namespaces/shop/configmaps/not-ours")
            .is_some()
    );
    record(requests);

    let mut unused = Vec::new();
    for need in rbac::NEEDS
        .iter()
        .filter(|n| n.scope == rbac::Scope::JobNamespaces)
    {
        for resource in need.resources {
            for verb in need.verbs {
                let key = (
                    need.group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                );
                let explained = UNOBSERVED
                    .iter()
                    .any(|(g, r, v, _)| (*g, *r, *v) == (need.group, *resource, *verb));
                if !used.contains(&key) && !explained {
                    unused.push(format!("{verb} {}/{resource}", need.group));
                }
            }
        }
    }
    assert_eq!(
        unused,
        Vec::<String>::new(),
        "granted but never used: drop them from rbac::NEEDS"
    );
}

#[tokio::test]
async fn after_an_operator_upgrade_partitions_beyond_the_last_checkpointed_task_count_as_added() {
    // A job the previous operator rendered: its job file pins no partitions. Its workers read
    // the 6 partitions the topic had at their start; it has 8 now.
    let api = ScriptedApi::default();
    let stateless = json!({
        "format": "json",
        "steps": [{"name": "all", "filter": {"expr": "true"}}],
    });
    let mut manifest = job_manifest(json!({"steps": stateless["steps"]}));
    manifest["spec"]["source"]["kafka"]["format"] = stateless["format"].clone();
    api.put(&format!("{JOBS}/customers"), manifest);
    reconcile_job(&api).await;
    let config_map = "/api/v1/namespaces/shop/configmaps/customers-job";
    let mut cm = api.get(config_map).expect("job ConfigMap");
    let file = cm["data"]["job.yaml"]
        .as_str()
        .expect("job.yaml")
        .to_string();
    let mut old: Value = serde_norway::from_str(&file).expect("yaml");
    assert!(
        old["metadata"]["annotations"]["sluice.dev/partitions"] == "6",
        "pinned by this operator: {old}"
    );
    old["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    cm["data"]["job.yaml"] = json!(serde_norway::to_string(&old).expect("yaml"));
    api.put(config_map, cm);

    reconcile_with(&api, Arc::new(Grown)).await;
    let file = api.get(config_map).expect("job ConfigMap")["data"]["job.yaml"]
        .as_str()
        .expect("job.yaml")
        .to_string();
    let pinned: Value = serde_norway::from_str(&file).expect("yaml");
    let annotations = &pinned["metadata"]["annotations"];
    assert_eq!(
        (
            &annotations["sluice.dev/partitions"],
            &annotations["sluice.dev/partitions-added-from"]
        ),
        (&json!("6"), &json!("6")),
        "the tasks with a checkpoint were read; partitions 6 and 7 were not: {pinned}"
    );
    let (value, reason, message) = condition(&status(&api), "PartitionsChanged");
    assert_eq!(
        (value.as_str(), reason.as_str()),
        ("True", "PartitionsAdded")
    );
    assert!(message.contains("partitions 6–7 are not read"), "{message}");
}

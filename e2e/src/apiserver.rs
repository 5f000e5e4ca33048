//! An in-process fake Kubernetes API server over HTTP on loopback, good enough for the real
//! `kube::Client`, `kube::runtime::Controller` and `kubectl` (through [`FakeApiServer::kubeconfig`]).
//! Network I/O on loopback; objects live in memory.
//!
//! What it models: legacy discovery (`/api`, `/apis`, resource lists with short names); create,
//! get, list, replace, delete and merge / strategic-merge (as merge) / JSON / apply patches
//! (apply = merge, creating when absent); one global resourceVersion, uid, creationTimestamp,
//! generation bumped only when `spec` changes; optimistic concurrency on replace; list + watch
//! from a resourceVersion with bookmarks (the last 20,000 changes; older resourceVersions get
//! `410 Gone`, as after etcd compaction); `/status` and `/scale` (StreamJob's, mapped as its CRD
//! says); finalizers with deletionTimestamp; garbage collection of dependents by owner uid (when the
//! owner is deleted, and when an object is written whose owners are gone);
//! equality label selectors; server-side Table printing with the CRD's printer columns.
//!
//! What it does not model: authentication and RBAC, admission (no schema, CEL or defaulting:
//! objects are stored as sent), managed fields and apply conflicts, strategic-merge list
//! semantics, field selectors, set-based selectors,
//! aggregated discovery and OpenAPI (use `kubectl --validate=false`), pagination, namespaces
//! as a lifecycle (any namespace exists), and every controller but garbage collection (see
//! [`crate::statefulset`] for the StatefulSet one).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};
use sluice_crds::admission::merge_patch;
use tokio::sync::broadcast;

/// A kind the server serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-wide.
    pub namespaced: bool,
    /// Short names (`kubectl get sj`).
    pub short_names: &'static [&'static str],
    /// Has `/status` and `/scale` (StreamJob).
    pub custom: bool,
}

const TYPES: &[ResourceType] = &[
    rt("", "v1", "pods", "Pod", true, &["po"]),
    rt("", "v1", "services", "Service", true, &["svc"]),
    rt("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
    rt("", "v1", "secrets", "Secret", true, &[]),
    rt("", "v1", "events", "Event", true, &["ev"]),
    rt(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
    ),
    rt("", "v1", "namespaces", "Namespace", false, &["ns"]),
    rt("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"]),
    rt(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
    ),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
    rt("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
    ResourceType {
        group: "sluice.dev",
        version: "v1alpha1",
        plural: "streamjobs",
        kind: "StreamJob",
        namespaced: true,
        short_names: &["sj"],
        custom: true,
    },
];

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        short_names,
        custom: false,
    }
}

fn api_version(t: &ResourceType) -> String {
    if t.group.is_empty() {
        t.version.to_string()
    } else {
        format!("{}/{}", t.group, t.version)
    }
}

/// Where an object lives: (group, plural, namespace, name).
pub type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    group: String,
    plural: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

/// How many changes the server remembers for watches that resume from a resourceVersion;
/// older ones are compacted, and such a watch gets `410 Gone`, as from etcd compaction.
const HISTORY: usize = 20_000;

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: std::collections::VecDeque<Change>,
}

/// The server's objects. Tests and the StatefulSet simulator use it directly too.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
    columns: Vec<(String, String, String, i64)>,
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Store {
    fn new() -> Self {
        let crd: Value = serde_norway::from_str(&sluice_crds::crd_yaml()).unwrap_or(Value::Null);
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (
                    s("name"),
                    s("type"),
                    s("jsonPath"),
                    c["priority"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        Self {
            inner: Mutex::default(),
            changes: broadcast::channel(65_536).0,
            columns,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object at `key`.
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(group.into(), plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every object of a kind in `namespace` (all when `None`).
    pub fn list(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                g == group && p == plural && namespace.is_none_or(|n| n == ns)
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    fn record(&self, inner: &mut Inner, key: &Key, type_: &'static str, object: Value) {
        let change = Change {
            rv: inner.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            type_,
            object,
        };
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(change.clone());
        let _ = self.changes.send(change);
    }

    /// Creates or replaces an object as a controller would (no precondition), keeping uid,
    /// creationTimestamp and (unless `status_only`) bumping generation on spec changes.
    /// With `status_only`, only `status` is taken from `object`.
    pub fn write(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        object: Value,
        status_only: bool,
    ) -> Value {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (
            group.to_string(),
            plural.to_string(),
            namespace.to_string(),
            name,
        );
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        let existing = inner.objects.get(&key).cloned();
        let mut stored = match (&existing, status_only) {
            (Some(old), true) => {
                let mut o = old.clone();
                o["status"] = object["status"].clone();
                o
            }
            _ => {
                let mut o = object;
                if let Some(old) = &existing {
                    for field in [
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "deletionTimestamp",
                    ] {
                        if !old["metadata"][field].is_null() {
                            o["metadata"][field] = old["metadata"][field].clone();
                        }
                    }
                    let custom = TYPES.iter().any(|t| t.plural == plural && t.custom);
                    if custom && o.get("status").is_none_or(Value::is_null) {
                        o["status"] = old["status"].clone();
                    }
                    if old["spec"] != o["spec"] {
                        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                        o["metadata"]["generation"] = json!(g + 1);
                    }
                } else {
                    o["metadata"]["uid"] = json!(format!("uid-{rv:08}"));
                    o["metadata"]["creationTimestamp"] = json!(now());
                    o["metadata"]["generation"] = json!(1);
                }
                o
            }
        };
        if stored.get("status").is_some_and(Value::is_null) {
            stored.as_object_mut().map(|m| m.remove("status"));
        }
        stored["metadata"]["namespace"] = json!(namespace);
        stored["metadata"]["resourceVersion"] = json!(rv.to_string());
        if stored["kind"].is_null()
            && let Some(t) = TYPES
                .iter()
                .find(|t| t.group == group && t.plural == plural)
        {
            stored["kind"] = json!(t.kind);
            stored["apiVersion"] = json!(api_version(t));
        }
        // A write that changes nothing is a no-op, as on a real server: no new
        // resourceVersion, no watch event (else controllers watching what they apply would
        // reconcile forever).
        if let Some(old) = &existing {
            let mut same = stored.clone();
            same["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            if same == *old {
                inner.rv -= 1;
                return old.clone();
            }
        }
        let type_ = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.objects.insert(key.clone(), stored.clone());
        self.record(&mut inner, &key, type_, stored.clone());
        // An object whose owners are all gone is garbage, as the garbage collector finds it
        // (e.g. a child applied by a reconcile that was still running when its owner went).
        let owners: Vec<&Value> = stored["metadata"]["ownerReferences"]
            .as_array()
            .map(|r| r.iter().map(|o| &o["uid"]).collect())
            .unwrap_or_default();
        let orphaned = !owners.is_empty()
            && !inner
                .objects
                .values()
                .any(|o| owners.contains(&&o["metadata"]["uid"]));
        drop(inner);
        if orphaned {
            self.delete(group, plural, namespace, &key.3);
        }
        stored
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; without, it goes,
    /// and so do its dependents (owner references by uid), in the background as the garbage
    /// collector does. Returns the object as it was.
    pub fn delete(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            group.to_string(),
            plural.to_string(),
            namespace.to_string(),
            name.to_string(),
        );
        let mut inner = self.lock();
        let object = inner.objects.get(&key).cloned()?;
        inner.rv += 1;
        let rv = inner.rv;
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            let mut o = object;
            if o["metadata"]["deletionTimestamp"].is_null() {
                o["metadata"]["deletionTimestamp"] = json!(now());
            }
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            inner.objects.insert(key.clone(), o.clone());
            self.record(&mut inner, &key, "MODIFIED", o.clone());
            return Some(o);
        }
        inner.objects.remove(&key);
        let mut gone = object.clone();
        gone["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut inner, &key, "DELETED", gone);
        // Garbage collection of dependents, transitively.
        let mut uids = vec![object["metadata"]["uid"].clone()];
        while let Some(uid) = uids.pop() {
            let dependents: Vec<Key> = inner
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for dependent in dependents {
                if let Some(o) = inner.objects.remove(&dependent) {
                    inner.rv += 1;
                    let mut gone = o.clone();
                    gone["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
                    uids.push(o["metadata"]["uid"].clone());
                    self.record(&mut inner, &dependent, "DELETED", gone);
                }
            }
        }
        Some(object)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }
}

/// The fake API server, serving until dropped.
pub struct FakeApiServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its objects.
    pub store: Arc<Store>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        let store = Arc::new(Store::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr: SocketAddr = listener.local_addr().expect("address");
        let shared = store.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let store = shared.clone();
                async move { handle(&store, method, uri, headers, body).await }
            },
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            store,
            server,
        }
    }

    /// Writes a kubeconfig for the server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: test\n  user: {{token: test}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test, namespace: default}}\n\
             current-context: fake\n",
            self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A client for the server.
    pub async fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    respond(code, &body)
}

fn respond(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

/// A parsed request path.
struct Target<'a> {
    t: &'a ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn discovery(path: &str) -> Option<Value> {
    let resources = |group: &str, version: &str| {
        let list: Vec<Value> = TYPES
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| {
                let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
                let mut out = vec![json!({
                    "name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                    "kind": t.kind, "verbs": verbs, "shortNames": t.short_names,
                })];
                if t.custom {
                    out.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": true, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
                    out.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
                }
                out
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }, "resources": list})
    };
    match path.trim_end_matches('/') {
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
        ),
        "/apis" => {
            let mut groups: Vec<(&str, &str)> = TYPES
                .iter()
                .filter(|t| !t.group.is_empty())
                .map(|t| (t.group, t.version))
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/version" => Some(
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sluice-fake", "platform": "linux/amd64"}),
        ),
        "/api/v1" => Some(resources("", "v1")),
        p => {
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["apis", g, v] => TYPES
                    .iter()
                    .any(|t| t.group == *g && t.version == *v)
                    .then(|| resources(g, v)),
                _ => None,
            }
        }
    }
}

fn target(path: &str) -> Option<Target<'static>> {
    let parts: Vec<&str> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let find = |plural: &str| {
        TYPES
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    };
    let owned = |s: &&str| (*s).to_string();
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|t| t.namespaced) => {
            Some(Target {
                t: find(plural)?,
                namespace: Some((*ns).to_string()),
                name: tail.first().map(owned),
                sub: tail.get(1).map(owned),
            })
        }
        [plural, tail @ ..] => Some(Target {
            t: find(plural)?,
            namespace: None,
            name: tail.first().map(owned),
            sub: tail.get(1).map(owned),
        }),
        _ => None,
    }
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Equality-based label selectors (`a=b,c=d`, `a==b`, `a!=b`, `a`).
pub fn matches(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()] != json!(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()] == json!(v.trim())
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is a list")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let pointer = |p: &str| p.to_string();
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
                let parent = target.pointer_mut(&pointer(parent)).ok_or("no parent")?;
                match parent {
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    Value::Object(o) => {
                        o.remove(last);
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            Some("add") | Some("replace") => {
                let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
                let parent = target.pointer_mut(&pointer(parent)).ok_or("no parent")?;
                match parent {
                    Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if op["op"] == "add" {
                            a.insert(i.min(a.len()), op["value"].clone());
                        } else if i < a.len() {
                            a[i] = op["value"].clone();
                        }
                    }
                    Value::Object(o) => {
                        o.insert(
                            last.replace("~1", "/").replace("~0", "~"),
                            op["value"].clone(),
                        );
                    }
                    _ => return Err("bad parent".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn age(created: &str) -> String {
    let Ok(t) = created.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = k8s_openapi::jiff::Timestamp::now()
        .duration_since(t)
        .as_secs()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn table(store: &Store, t: &ResourceType, objects: &[Value], rv: u64) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let custom: Vec<(String, String, String, i64)> = if t.custom {
        store.columns.clone()
    } else {
        vec![(
            "Age".into(),
            "date".into(),
            ".metadata.creationTimestamp".into(),
            0,
        )]
    };
    // A priority above 0 is shown by `kubectl get -o wide` only (kubectl filters).
    for (name, type_, _, priority) in &custom {
        columns.push(
            json!({"name": name, "type": type_, "format": "", "description": name, "priority": priority}),
        );
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (_, type_, path, _) in &custom {
                let value = path
                    .trim_start_matches('.')
                    .split('.')
                    .fold(o, |v, k| &v[k]);
                cells.push(match (type_.as_str(), value) {
                    (_, Value::Null) => Value::Null,
                    ("date", Value::String(s)) => json!(age(s)),
                    (_, v) => v.clone(),
                });
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": columns, "rows": rows})
}

async fn handle(
    store: &Arc<Store>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if method == Method::GET
        && let Some(doc) = discovery(&path)
    {
        return respond(200, &doc);
    }
    let Some(target) = target(&path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let t = target.t;
    let q = query(&uri);
    let wants_table = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body).or_else(|_| serde_norway::from_slice(&body)) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", format!("cannot parse the body: {e}")),
        }
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();

    match (method.as_str(), &target.name, target.sub.as_deref()) {
        ("GET", None, _) => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
            if watch {
                return watch_response(store, t, target.namespace.clone(), selector, &q);
            }
            let rv = store.resource_version();
            let items: Vec<Value> = store
                .list(t.group, t.plural, target.namespace.as_deref())
                .into_iter()
                .filter(|o| matches(&selector, o))
                .collect();
            if wants_table {
                return respond(200, &table(store, t, &items, rv));
            }
            respond(
                200,
                &json!({"kind": format!("{}List", t.kind), "apiVersion": api_version(t), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name), sub) => match store.get(t.group, t.plural, &ns, name) {
            None => status(
                404,
                "NotFound",
                format!("{}.{} \"{name}\" not found", t.plural, t.group),
            ),
            Some(o) if sub == Some("scale") => respond(200, &scale_of(&o)),
            Some(o) if wants_table => {
                respond(200, &table(store, t, &[o], store.resource_version()))
            }
            Some(o) => respond(200, &o),
        },
        ("POST", None, _) => {
            let name = body["metadata"]["name"]
                .as_str()
                .map(String::from)
                .or_else(|| {
                    body["metadata"]["generateName"]
                        .as_str()
                        .map(|p| format!("{p}{}", store.resource_version() + 1))
                });
            let Some(name) = name else {
                return status(422, "Invalid", "metadata.name is required".into());
            };
            if store.get(t.group, t.plural, &ns, &name).is_some() {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{}.{} \"{name}\" already exists", t.plural, t.group),
                );
            }
            let mut object = body;
            object["metadata"]["name"] = json!(name);
            let created = store.write(t.group, t.plural, &ns, object, false);
            respond(201, &created)
        }
        ("PUT", Some(name), sub) => {
            let Some(current) = store.get(t.group, t.plural, &ns, name) else {
                return status(
                    404,
                    "NotFound",
                    format!("{}.{} \"{name}\" not found", t.plural, t.group),
                );
            };
            if sub == Some("scale") {
                let mut o = current;
                o["spec"]["parallelism"] = body["spec"]["replicas"].clone();
                let written = store.write(t.group, t.plural, &ns, o, false);
                return respond(200, &scale_of(&written));
            }
            let sent = &body["metadata"]["resourceVersion"];
            if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {}.{} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        t.plural, t.group
                    ),
                );
            }
            let written = store.write(t.group, t.plural, &ns, body, sub == Some("status"));
            finalize_if_done(store, t, &ns, name);
            respond(200, &written)
        }
        ("PATCH", Some(name), sub) => {
            let current = store.get(t.group, t.plural, &ns, name);
            let apply = content_type.starts_with("application/apply-patch");
            let mut object = match (current.clone(), apply) {
                (Some(o), _) => o,
                (None, true) => {
                    json!({"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": {"name": name}})
                }
                (None, false) => {
                    return status(
                        404,
                        "NotFound",
                        format!("{}.{} \"{name}\" not found", t.plural, t.group),
                    );
                }
            };
            if sub == Some("scale") {
                let mut scale = scale_of(&object);
                if content_type.starts_with("application/json-patch") {
                    if let Err(e) = json_patch(&mut scale, &body) {
                        return status(422, "Invalid", e);
                    }
                } else {
                    merge_patch(&mut scale, &body);
                }
                object["spec"]["parallelism"] = scale["spec"]["replicas"].clone();
                let written = store.write(t.group, t.plural, &ns, object, false);
                return respond(200, &scale_of(&written));
            }
            if content_type.starts_with("application/json-patch") {
                if let Err(e) = json_patch(&mut object, &body) {
                    return status(422, "Invalid", e);
                }
            } else if apply && sub != Some("status") {
                // Apply as a full intent: the sender's fields replace what it sent.
                let mut sent = body.clone();
                if let Some(meta) = sent.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                merge_patch(&mut object, &sent);
                if let (Some(spec), Some(o)) = (body.get("spec"), object.as_object_mut()) {
                    o.insert("spec".into(), spec.clone());
                }
                if let Some(data) = body.get("data") {
                    object["data"] = data.clone();
                }
            } else {
                merge_patch(&mut object, &body);
            }
            let written = store.write(t.group, t.plural, &ns, object, sub == Some("status"));
            finalize_if_done(store, t, &ns, name);
            respond(if current.is_some() { 200 } else { 201 }, &written)
        }
        ("DELETE", Some(name), None) => match store.delete(t.group, t.plural, &ns, name) {
            Some(o) => respond(200, &o),
            None => status(
                404,
                "NotFound",
                format!("{}.{} \"{name}\" not found", t.plural, t.group),
            ),
        },
        _ => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not supported by the fake API server"),
        ),
    }
}

/// An object marked for deletion goes once its last finalizer is removed.
fn finalize_if_done(store: &Store, t: &ResourceType, ns: &str, name: &str) {
    if let Some(o) = store.get(t.group, t.plural, ns, name) {
        let marked = !o["metadata"]["deletionTimestamp"].is_null();
        let empty = o["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if marked && empty {
            store.delete(t.group, t.plural, ns, name);
        }
    }
}

fn scale_of(job: &Value) -> Value {
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": job["metadata"]["name"], "namespace": job["metadata"]["namespace"],
                     "resourceVersion": job["metadata"]["resourceVersion"], "uid": job["metadata"]["uid"]},
        "spec": {"replicas": job["spec"]["parallelism"]},
        "status": {"replicas": job["status"]["parallelism"].as_i64().unwrap_or(0), "selector": job["status"]["selector"]},
    })
}

fn watch_response(
    store: &Arc<Store>,
    t: &'static ResourceType,
    namespace: Option<String>,
    selector: String,
    q: &BTreeMap<String, String>,
) -> Response {
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    let mut live = store.changes.subscribe();
    let relevant = {
        let namespace = namespace.clone();
        move |c: &Change| {
            c.group == t.group
                && c.plural == t.plural
                && namespace.as_ref().is_none_or(|n| *n == c.namespace)
        }
    };
    // What happened since `from`, or the current state as ADDED events.
    let (initial, mut last): (Vec<Value>, u64) = {
        let inner = store.lock();
        let oldest = inner.history.front().map_or(inner.rv, |c| c.rv);
        if from.is_some_and(|rv| rv + 1 < oldest) {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Expired", "code": 410, "message": "too old resource version"}});
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(format!("{gone}\n")))
                .unwrap_or_default();
        }
        let backlog: Vec<Value> = match from {
            Some(rv) => inner
                .history
                .iter()
                .filter(|c| c.rv > rv && relevant(c) && matches(&selector, &c.object))
                .map(|c| json!({"type": c.type_, "object": c.object}))
                .collect(),
            None => inner
                .objects
                .iter()
                .filter(|((g, p, ns, _), o)| {
                    g == t.group
                        && p == t.plural
                        && namespace.as_ref().is_none_or(|n| n == ns)
                        && matches(&selector, o)
                })
                .map(|(_, o)| json!({"type": "ADDED", "object": o}))
                .collect(),
        };
        (backlog, inner.rv)
    };
    let kind = t.kind;
    let version = api_version(t);
    let stream = async_stream(move |tx: tokio::sync::mpsc::Sender<Bytes>| async move {
        for event in initial {
            if tx.send(Bytes::from(format!("{event}\n"))).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": version, "metadata": {"resourceVersion": last.to_string()}}});
                    if tx.send(Bytes::from(format!("{mark}\n"))).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(c) => {
                        if c.rv <= last {
                            continue;
                        }
                        last = last.max(c.rv);
                        if relevant(&c) && matches(&selector, &c.object) {
                            let event = json!({"type": c.type_, "object": c.object});
                            if tx.send(Bytes::from(format!("{event}\n"))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(stream)
        .unwrap_or_default()
}

/// A streaming body fed by `produce` through a channel.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    tokio::spawn(produce(tx));
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    Body::from_stream(stream)
}

//! A scripted Kubernetes API for reconcile tests: the real `kube::Client` talks HTTP to a
//! tower service that keeps objects in a map, answers GET, LIST (label selectors), apply
//! PATCH, PUT, POST and DELETE the way the API server does for these kinds, and records every
//! request so tests pin them exactly. No watch, no admission: see `e2e/` for the fake server.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the operator sent it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `PATCH`, ….
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Content type, for patches.
    pub content_type: Option<String>,
    /// The body as JSON (null when empty).
    pub body: Value,
}

impl Recorded {
    /// `METHOD path` without the query.
    pub fn line(&self) -> String {
        format!(
            "{} {}",
            self.method,
            self.uri.split('?').next().unwrap_or_default()
        )
    }

    /// The (API group, resource, verb) RBAC checks for this request.
    pub fn permission(&self) -> (String, String, String) {
        let path = self.uri.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, rest) = if parts[0] == "api" {
            (String::new(), &parts[2..])
        } else {
            (parts[1].to_string(), &parts[3..])
        };
        let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            &rest[2..]
        } else {
            rest
        };
        let resource = match rest {
            [kind, _, sub] => format!("{kind}/{sub}"),
            [kind, ..] => (*kind).to_string(),
            [] => String::new(),
        };
        let item = rest.len() >= 2;
        let verb = match (self.method.as_str(), item) {
            ("GET", true) => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", _) => "delete",
            (other, _) => other,
        };
        (group, resource, verb.to_string())
    }
}

/// The scripted API's objects, by path (`/api/v1/namespaces/shop/pods/c-0`), and its log.
#[derive(Default)]
pub struct State {
    /// Objects by item path.
    pub objects: BTreeMap<String, Value>,
    /// Every request, in order.
    pub requests: Vec<Recorded>,
    next_version: u64,
}

/// A shared handle on the scripted API.
#[derive(Clone, Default)]
pub struct ScriptedApi(pub Arc<Mutex<State>>);

impl ScriptedApi {
    /// Puts an object at its path.
    pub fn put(&self, path: &str, object: Value) {
        let mut state = self.0.lock().expect("state");
        state.next_version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(state.next_version.to_string());
        state.objects.insert(path.to_string(), object);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().expect("state").objects.get(path).cloned()
    }

    /// The requests so far, and forgets them.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.0.lock().expect("state").requests)
    }

    /// A client whose every request this API answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await?;
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes)
                        .or_else(|_| serde_norway::from_slice(&bytes))
                        .unwrap_or(Value::Null)
                };
                let recorded = Recorded {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                    body,
                };
                let (code, answer) = api.answer(&recorded);
                api.0.lock().expect("state").requests.push(recorded);
                Ok::<_, kube::Error>(
                    Response::builder()
                        .status(code)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(answer.to_string().into_bytes()))
                        .expect("response"),
                )
            }
        });
        kube::Client::new(service, "default")
    }

    fn answer(&self, request: &Recorded) -> (u16, Value) {
        let (path, query) = request.uri.split_once('?').unwrap_or((&request.uri, ""));
        let path = path.to_string();
        let mut state = self.0.lock().expect("state");
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("{path} not found"),
        });
        let is_collection = |p: &str| {
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            let rest = if parts[0] == "api" {
                &parts[2..]
            } else {
                &parts[3..]
            };
            let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
                &rest[2..]
            } else {
                rest
            };
            rest.len() == 1
        };
        state.next_version += 1;
        let version = state.next_version.to_string();
        match request.method.as_str() {
            "GET" if is_collection(&path) => {
                let selector: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("labelSelector="))
                    .flat_map(|s| {
                        let s = s
                            .replace("%3D", "=")
                            .replace("%2C", ",")
                            .replace("%2F", "/");
                        s.split(',')
                            .filter_map(|kv| {
                                kv.split_once('=')
                                    .map(|(k, v)| (k.to_string(), v.to_string()))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let prefix = format!("{path}/");
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                    .map(|(_, o)| o.clone())
                    .filter(|o| {
                        selector
                            .iter()
                            .all(|(k, v)| o["metadata"]["labels"][k] == json!(v))
                    })
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version}, "items": items}),
                )
            }
            "GET" => match state.objects.get(&path) {
                Some(o) => (200, o.clone()),
                None => (404, not_found),
            },
            "PATCH" => {
                let (item, status) = match path.strip_suffix("/status") {
                    Some(item) => (item.to_string(), true),
                    None => (path.clone(), false),
                };
                let mut object = state
                    .objects
                    .get(&item)
                    .cloned()
                    .unwrap_or_else(|| request.body.clone());
                if status {
                    object["status"] = request.body["status"].clone();
                } else {
                    let metadata = object["metadata"].clone();
                    object = request.body.clone();
                    if metadata.is_object() {
                        object["metadata"]["uid"] = metadata["uid"].clone();
                    }
                }
                if object["metadata"]["uid"].is_null() {
                    object["metadata"]["uid"] = json!(format!("uid-{version}"));
                }
                object["metadata"]["resourceVersion"] = json!(version);
                state.objects.insert(item, object.clone());
                (200, object)
            }
            "PUT" => match state.objects.get(&path) {
                Some(current)
                    if current["metadata"]["resourceVersion"]
                        != request.body["metadata"]["resourceVersion"] =>
                {
                    (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"}),
                    )
                }
                Some(_) => {
                    let mut object = request.body.clone();
                    object["metadata"]["resourceVersion"] = json!(version);
                    state.objects.insert(path, object.clone());
                    (200, object)
                }
                None => (404, not_found),
            },
            "POST" => {
                let mut object = request.body.clone();
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("generated-{version}"));
                let item = format!("{path}/{name}");
                if state.objects.contains_key(&item) {
                    return (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
                    );
                }
                object["metadata"]["name"] = json!(name);
                object["metadata"]["resourceVersion"] = json!(version);
                state.objects.insert(item, object.clone());
                (201, object)
            }
            "DELETE" => match state.objects.remove(&path) {
                Some(o) => (200, o),
                None => (404, not_found),
            },
            _ => (405, json!({"kind": "Status", "code": 405})),
        }
    }
}

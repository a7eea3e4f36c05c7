//! An in-memory Kubernetes API server behind a real `kube::Client` (a tower `Service`),
//! for reconcile tests without a cluster. Existing fake-client crates lack watches and
//! apply semantics, so this implements the verbs the operator uses, as the API server
//! does them:
//! - get, list (label selectors), create, replace, delete (UID/resourceVersion
//!   preconditions, finalizers, deletionTimestamp, owner-reference garbage collection);
//! - patch: server-side apply with field ownership and conflicts ([`patch`]), JSON merge
//!   patch, JSON patch;
//! - the `status` and `scale` subresources, generations, resourceVersion conflicts;
//! - watches (newline-delimited events from a resourceVersion), so kube's `Controller`
//!   runs against it;
//! - fault injection: fail the k-th write (before or after it takes effect);
//! - [`statefulsets`]: a simulated StatefulSet controller and kubelet.
//!
//! What it does not do: admission (CEL, OpenAPI validation; the CEL rules are tested
//! separately), list-map merge keys in apply (lists are atomic), field selectors.

pub mod patch;
pub mod statefulsets;
pub mod store;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use store::{ApiError, Key, Part, Store};

/// Fault injection: the `at`-th state-changing write from arming fails, before or after
/// it applies. State-changing: a StatefulSet write, a delete, or a status write that
/// records the scaling operation (re-applying unchanged objects and Events are not counted).
#[derive(Clone, Debug, Default)]
struct Faults {
    writes: u64,
    at: Option<u64>,
    after: bool,
}

/// The fake API server. Cloning shares it.
#[derive(Clone)]
pub struct FakeApi {
    pub store: Arc<Mutex<Store>>,
    notify: broadcast::Sender<u64>,
    faults: Arc<Mutex<Faults>>,
    requests: Arc<Mutex<Vec<String>>>,
    broken: Arc<Mutex<BTreeSet<String>>>,
}

type Body = BoxBody<Bytes, Infallible>;

struct Target {
    api_version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match *segs.first()? {
        "api" => (segs.get(1)?.to_string(), &segs[2..]),
        "apis" => (format!("{}/{}", segs.get(1)?, segs.get(2)?), &segs[3..]),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    Some(Target {
        api_version,
        namespace,
        plural: rest.first()?.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "statefulsets" => "StatefulSet",
        "pods" => "Pod",
        "services" => "Service",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "persistentvolumeclaims" => "PersistentVolumeClaim",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "dynamoclusters" => "DynamoCluster",
        "events" => "Event",
        "leases" => "Lease",
        "certificates" => "Certificate",
        _ => "Object",
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

fn selector(q: &str) -> Vec<(String, String)> {
    query(q, "labelSelector")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("valid code"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a response builds")
}

fn error(e: ApiError) -> Response<Body> {
    respond(e.code().0, &e.status())
}

impl Faults {
    /// Counts a state-changing write; `Some(after)` when this one is to fail.
    fn hit(&mut self) -> Option<bool> {
        self.writes += 1;
        (self.at == Some(self.writes)).then_some(self.after)
    }
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    /// An empty API server.
    pub fn new() -> Self {
        Self {
            store: Arc::default(),
            notify: broadcast::channel(1024).0,
            faults: Arc::default(),
            requests: Arc::default(),
            broken: Arc::default(),
        }
    }

    /// A `kube::Client` talking to this server, with `default` as its default namespace.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Arms write fault injection: the `k`-th write from now fails (after it applied, with `after`).
    pub fn fail_write(&self, k: u64, after: bool) {
        *self.faults.lock() = Faults {
            writes: 0,
            at: Some(k),
            after,
        };
    }

    /// A deep copy of this server's objects, with its own fault injection and watchers.
    pub fn fork(&self) -> Self {
        let copy = Self::new();
        {
            let src = self.store.lock();
            let mut dst = copy.store.lock();
            dst.objects = src.objects.clone();
            dst.owners = src.owners.clone();
            dst.log = src.log.clone();
            dst.restore_counters(&src);
        }
        *copy.broken.lock() = self.broken.lock().clone();
        copy
    }

    /// State-changing writes seen since fault injection was last armed.
    pub fn writes(&self) -> u64 {
        self.faults.lock().writes
    }

    /// Every request as `METHOD path?query`, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().clone()
    }

    /// Reads an object.
    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .objects
            .get(&(plural.into(), ns.into(), name.into()))
            .cloned()
    }

    /// Lists objects of a resource in a namespace.
    pub fn list(&self, plural: &str, ns: &str) -> Vec<Value> {
        self.store.lock().list(plural, Some(ns), &[])
    }

    /// Runs `f` on the store and wakes watchers.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let out = f(&mut self.store.lock());
        let _ = self.notify.send(0);
        out
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let q = parts.uri.query().unwrap_or_default().to_string();
        self.requests
            .lock()
            .push(format!("{} {}?{q}", parts.method, parts.uri.path()));
        let Some(t) = parse_path(parts.uri.path()) else {
            return error(ApiError::NotFound(format!(
                "no route for {}",
                parts.uri.path()
            )));
        };
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(ApiError::Invalid(e.to_string())),
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body).or_else(|_| serde_yaml::from_slice(&body)) {
                Ok(v) => v,
                Err(e) => return error(ApiError::Invalid(format!("bad body: {e}"))),
            }
        };
        let ctype = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if parts.method == Method::GET {
            return self.read(&t, &q);
        }
        let significant = t.plural == "statefulsets"
            || parts.method == Method::DELETE
            || (t.sub.as_deref() == Some("status") && body["status"].get("operation").is_some());
        let crash = if significant {
            self.faults.lock().hit()
        } else {
            None
        };
        if crash == Some(false) {
            return error(ApiError::Internal("injected failure".into()));
        }
        let result = self.write(&parts.method, &t, &q, &ctype, body);
        let _ = self.notify.send(0);
        match (crash, result) {
            (Some(true), _) => error(ApiError::Internal(
                "injected failure after the write".into(),
            )),
            (_, Ok((code, v))) => respond(code, &v),
            (_, Err(e)) => error(e),
        }
    }

    fn key(t: &Target, name: &str) -> Key {
        (
            t.plural.clone(),
            t.namespace.clone().unwrap_or_default(),
            name.to_string(),
        )
    }

    fn read(&self, t: &Target, q: &str) -> Response<Body> {
        let store = self.store.lock();
        match (&t.name, t.sub.as_deref()) {
            (None, _) if query(q, "watch").as_deref() == Some("true") => {
                let since = query(q, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(store.resource_version());
                drop(store);
                self.watch(t, q, since)
            }
            (None, _) => {
                let items = store.list(&t.plural, t.namespace.as_deref(), &selector(q));
                respond(
                    200,
                    &json!({
                        "apiVersion": t.api_version, "kind": format!("{}List", kind_of(&t.plural)),
                        "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items,
                    }),
                )
            }
            (Some(name), sub) => match store.objects.get(&Self::key(t, name)) {
                None => error(ApiError::NotFound(format!(
                    "{} \"{name}\" not found",
                    t.plural
                ))),
                Some(o) if sub == Some("scale") => respond(200, &scale_of(o)),
                Some(o) => respond(200, o),
            },
        }
    }

    fn watch(&self, t: &Target, q: &str, since: u64) -> Response<Body> {
        let (plural, ns, sel) = (t.plural.clone(), t.namespace.clone(), selector(q));
        let rx = self.notify.subscribe();
        let store = self.store.clone();
        let stream = futures::stream::unfold((rx, since), move |(mut rx, mut last)| {
            let (store, plural, ns, sel) = (store.clone(), plural.clone(), ns.clone(), sel.clone());
            async move {
                loop {
                    let mut chunk = String::new();
                    let from = last;
                    for e in store.lock().log.iter().filter(|e| e.rv > from) {
                        last = e.rv;
                        let ns_ok = ns.as_deref().is_none_or(|n| n == e.namespace);
                        let sel_ok = sel
                            .iter()
                            .all(|(k, v)| e.object["metadata"]["labels"][k].as_str() == Some(v));
                        if e.plural == plural && ns_ok && sel_ok {
                            chunk
                                .push_str(&json!({"type": e.kind, "object": e.object}).to_string());
                            chunk.push('\n');
                        }
                    }
                    if !chunk.is_empty() {
                        let frame =
                            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(chunk)));
                        return Some((frame, (rx, last)));
                    }
                    match rx.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .expect("a response builds")
    }

    fn write(
        &self,
        method: &Method,
        t: &Target,
        q: &str,
        ctype: &str,
        body: Value,
    ) -> Result<(u16, Value), ApiError> {
        let mut store = self.store.lock();
        let name = t
            .name
            .clone()
            .or_else(|| body["metadata"]["name"].as_str().map(str::to_string));
        let name = name.ok_or_else(|| ApiError::Invalid("no name".into()))?;
        let key = Self::key(t, &name);
        let part = if t.sub.as_deref() == Some("status") {
            Part::Status
        } else {
            Part::Main
        };
        match *method {
            Method::POST => store.create(&key, body).map(|o| (201, o)),
            Method::PUT => store.write(&key, body, part).map(|o| (200, o)),
            Method::DELETE => store.delete(&key, &body["preconditions"]).map(|o| (200, o)),
            Method::PATCH if ctype.starts_with("application/apply-patch") => {
                let manager = query(q, "fieldManager")
                    .ok_or_else(|| ApiError::Invalid("apply needs a fieldManager".into()))?;
                let force = query(q, "force").as_deref() == Some("true");
                let exists = store.objects.contains_key(&key);
                if !exists && body["metadata"]["resourceVersion"].is_string() {
                    return Err(ApiError::Conflict(
                        "object does not exist at that resourceVersion".into(),
                    ));
                }
                let mut live = store
                    .objects
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                let mut owners = store.owners.get(&key).cloned().unwrap_or_default();
                patch::server_side_apply(&mut live, &body, &manager, force, &mut owners).map_err(
                    |c| {
                        ApiError::Conflict(format!("Apply failed with conflicts: {}", c.join(", ")))
                    },
                )?;
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                    live["metadata"]["resourceVersion"] = json!(rv);
                }
                let out = if exists {
                    store.write(&key, live, part)?
                } else {
                    store.create(&key, live)?
                };
                store.owners.insert(key, owners);
                Ok((if exists { 200 } else { 201 }, out))
            }
            Method::PATCH => {
                let live = store.objects.get(&key).cloned().ok_or_else(|| {
                    ApiError::NotFound(format!("{} \"{name}\" not found", t.plural))
                })?;
                if t.sub.as_deref() == Some("scale") {
                    let mut scale = scale_of(&live);
                    patch::merge_patch(&mut scale, &body);
                    let mut updated = live.clone();
                    updated["spec"]["replicas"] = scale["spec"]["replicas"].clone();
                    updated["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("resourceVersion"));
                    return store
                        .write(&key, updated, Part::Main)
                        .map(|o| (200, scale_of(&o)));
                }
                let mut updated = live.clone();
                if ctype.starts_with("application/json-patch") {
                    patch::json_patch(&mut updated, &body).map_err(ApiError::Invalid)?;
                } else {
                    patch::merge_patch(&mut updated, &body);
                }
                if body["metadata"]["resourceVersion"].is_null() {
                    updated["metadata"]
                        .as_object_mut()
                        .map(|m| m.remove("resourceVersion"));
                }
                store.write(&key, updated, part).map(|o| (200, o))
            }
            _ => Err(ApiError::Invalid(format!("unsupported method {method}"))),
        }
    }
}

/// The `autoscaling/v1` Scale of an object with `spec.replicas`.
fn scale_of(o: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "resourceVersion": o["metadata"]["resourceVersion"]},
        "spec": {"replicas": o["spec"]["replicas"]},
        "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": o["status"]["selector"]},
    })
}

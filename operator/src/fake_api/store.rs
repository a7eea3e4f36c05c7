//! The fake API's object store: objects as JSON by (resource, namespace, name), a
//! monotonic resourceVersion, generations, UIDs, finalizers and deletion timestamps,
//! owner-reference garbage collection, and the event log watches are served from.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// (plural resource, namespace, name).
pub type Key = (String, String, String);

/// One watch event in the log.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub rv: u64,
    pub plural: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

/// An API error, rendered as a `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    NotFound(String),
    AlreadyExists(String),
    Conflict(String),
    Invalid(String),
    Internal(String),
}

impl ApiError {
    /// HTTP code and reason.
    pub fn code(&self) -> (u16, &'static str) {
        match self {
            Self::NotFound(_) => (404, "NotFound"),
            Self::AlreadyExists(_) => (409, "AlreadyExists"),
            Self::Conflict(_) => (409, "Conflict"),
            Self::Invalid(_) => (422, "Invalid"),
            Self::Internal(_) => (500, "InternalError"),
        }
    }
    /// The `Status` body.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code();
        let (Self::NotFound(m)
        | Self::AlreadyExists(m)
        | Self::Conflict(m)
        | Self::Invalid(m)
        | Self::Internal(m)) = self;
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": m, "reason": reason, "code": code})
    }
}

/// Which part of an object a write targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// The store.
#[derive(Default, Debug)]
pub struct Store {
    pub objects: BTreeMap<Key, Value>,
    /// Server-side apply field ownership: manager → owned leaf paths, per object.
    pub owners: BTreeMap<Key, BTreeMap<String, BTreeSet<String>>>,
    pub log: Vec<LogEvent>,
    rv: u64,
    uid: u64,
}

fn has_status_subresource(plural: &str) -> bool {
    !matches!(plural, "configmaps" | "secrets" | "events" | "leases")
}

fn meta(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

impl Store {
    /// Continues `other`'s resourceVersion and UID counters (for a copy of it).
    pub fn restore_counters(&mut self, other: &Store) {
        self.rv = other.rv;
        self.uid = other.uid;
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn record(&mut self, kind: &'static str, key: &Key, object: Value) {
        self.log.push(LogEvent {
            rv: self.rv,
            plural: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        });
    }

    /// Objects of `plural` in `namespace` (all when None) whose labels match `selector`.
    pub fn list(
        &self,
        plural: &str,
        namespace: Option<&str>,
        selector: &[(String, String)],
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && namespace.is_none_or(|n| n == ns))
            .filter(|(_, o)| {
                selector
                    .iter()
                    .all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v))
            })
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Creates an object; fills in the server-set metadata.
    pub fn create(&mut self, key: &Key, mut obj: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(key) {
            return Err(ApiError::AlreadyExists(format!(
                "{} {:?} already exists",
                key.0, key.2
            )));
        }
        self.rv += 1;
        self.uid += 1;
        let m = meta(&mut obj);
        m.insert("name".into(), json!(key.2));
        m.insert("namespace".into(), json!(key.1));
        m.insert("uid".into(), json!(format!("uid-{}", self.uid)));
        m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        m.insert("generation".into(), json!(1));
        m.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
        m.remove("deletionTimestamp");
        self.objects.insert(key.clone(), obj.clone());
        self.record("ADDED", key, obj.clone());
        Ok(obj)
    }

    /// Writes `new` over the existing object: server metadata is kept, `status` changes
    /// only through `Part::Status` (for kinds with the subresource), the generation is
    /// bumped when the spec changes, and an object being deleted goes once its last
    /// finalizer is removed.
    pub fn write(&mut self, key: &Key, mut new: Value, part: Part) -> Result<Value, ApiError> {
        let old = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("{} {:?} not found", key.0, key.2)))?;
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str() {
            if rv
                != old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            {
                return Err(ApiError::Conflict(format!(
                    "the object has been modified; please apply your changes to the latest version (resourceVersion {rv} is stale)"
                )));
            }
        }
        if part == Part::Status {
            let status = new["status"].clone();
            new = old.clone();
            new["status"] = status;
        } else if has_status_subresource(&key.0) {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|o| o.remove("status"));
                }
            }
        }
        let mut generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        if part == Part::Main && old.get("spec") != new.get("spec") {
            generation += 1;
        }
        self.rv += 1;
        let m = meta(&mut new);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(field) {
                Some(v) => m.insert(field.into(), v.clone()),
                None => m.remove(field),
            };
        }
        m.insert("generation".into(), json!(generation));
        m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let finalizers_empty = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if new["metadata"].get("deletionTimestamp").is_some() && finalizers_empty {
            self.objects.insert(key.clone(), new.clone());
            self.remove(key);
            return Ok(new);
        }
        if new == old {
            self.rv -= 1;
            return Ok(old);
        }
        self.objects.insert(key.clone(), new.clone());
        self.record("MODIFIED", key, new.clone());
        Ok(new)
    }

    /// Deletes an object, honouring UID and resourceVersion preconditions and finalizers.
    pub fn delete(&mut self, key: &Key, preconditions: &Value) -> Result<Value, ApiError> {
        let obj = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("{} {:?} not found", key.0, key.2)))?;
        if let Some(uid) = preconditions["uid"].as_str() {
            if obj["metadata"]["uid"].as_str() != Some(uid) {
                return Err(ApiError::Conflict(format!(
                    "precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    obj["metadata"]["uid"]
                )));
            }
        }
        if let Some(rv) = preconditions["resourceVersion"].as_str() {
            if obj["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(ApiError::Conflict(format!(
                    "precondition failed: resourceVersion {rv}"
                )));
            }
        }
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"].get("deletionTimestamp").is_some() {
                return Ok(obj);
            }
            let mut marked = obj;
            meta(&mut marked).insert("deletionTimestamp".into(), json!("2026-01-01T00:00:01Z"));
            self.rv += 1;
            meta(&mut marked).insert("resourceVersion".into(), json!(self.rv.to_string()));
            self.objects.insert(key.clone(), marked.clone());
            self.record("MODIFIED", key, marked.clone());
            return Ok(marked);
        }
        self.remove(key);
        Ok(obj)
    }

    /// Removes an object now, then (like the garbage collector) the objects it owns.
    pub fn remove(&mut self, key: &Key) {
        let Some(obj) = self.objects.remove(key) else {
            return;
        };
        self.owners.remove(key);
        self.rv += 1;
        self.record("DELETED", key, obj.clone());
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(k, o)| {
                k.1 == key.1
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            self.remove(&k);
        }
    }
}

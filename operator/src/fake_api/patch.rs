//! Patch semantics of the fake API: JSON merge patch (RFC 7386), JSON patch (RFC 6902,
//! the ops kube's finalizer helper uses), and server-side apply with field ownership.
//!
//! Server-side apply, as the API server does it for what the operator sends: the applied
//! configuration is merged into the live object (maps recursively, lists and scalars
//! replaced); each field manager owns the leaf paths it applied; a field the manager
//! applied before and omits now is removed; applying a field another manager owns with a
//! different value is a conflict unless `force`, which transfers ownership.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902 JSON patch (add, remove, replace, test).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str() {
            Some("test") => {
                // As the API server's JSON patch library: a missing path tests equal to null.
                if target.pointer(path).unwrap_or(&Value::Null) != &op["value"] {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let (parent, key) = split(target, path)?;
                match parent {
                    Value::Object(m) => m.remove(&key).map(|_| ()).ok_or(format!("no {path}"))?,
                    Value::Array(a) => {
                        let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
                        if i >= a.len() {
                            return Err(format!("no {path}"));
                        }
                        a.remove(i);
                    }
                    _ => return Err(format!("cannot remove {path}")),
                }
            }
            Some(kind @ ("add" | "replace")) => {
                let value = op["value"].clone();
                if path.is_empty() {
                    *target = value;
                    continue;
                }
                let (parent, key) = split(target, path)?;
                match parent {
                    Value::Object(m) => {
                        m.insert(key, value);
                    }
                    Value::Array(a) if key == "-" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = key.parse().map_err(|_| format!("bad index in {path}"))?;
                        match kind {
                            "add" if i <= a.len() => a.insert(i, value),
                            "replace" if i < a.len() => a[i] = value,
                            _ => return Err(format!("index out of range in {path}")),
                        }
                    }
                    _ => return Err(format!("cannot {kind} at {path}")),
                }
            }
            other => return Err(format!("unsupported JSON patch op {other:?}")),
        }
    }
    Ok(())
}

fn split<'a>(target: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let (parent, key) = path.rsplit_once('/').ok_or(format!("bad path {path}"))?;
    let key = key.replace("~1", "/").replace("~0", "~");
    let parent = target
        .pointer_mut(parent)
        .ok_or(format!("no parent for {path}"))?;
    Ok((parent, key))
}

/// Leaf paths (JSON pointers) of an applied configuration: maps are descended, anything
/// else (including lists) is a leaf. Server-owned metadata is not owned by appliers.
pub fn leaf_paths(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, at: String, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    walk(
                        v,
                        format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                        out,
                    );
                }
            }
            _ => {
                out.insert(at);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, String::new(), &mut out);
    out.retain(|p| {
        !(p.starts_with("/metadata/resourceVersion")
            || p.starts_with("/metadata/managedFields")
            || p == "/apiVersion"
            || p == "/kind"
            || p.starts_with("/status"))
    });
    out
}

/// Applies `applied` for `manager` onto `live`, updating `owners` (manager → owned paths).
/// Returns the conflicting paths when not forced.
pub fn server_side_apply(
    live: &mut Value,
    applied: &Value,
    manager: &str,
    force: bool,
    owners: &mut BTreeMap<String, BTreeSet<String>>,
) -> Result<(), Vec<String>> {
    let new_paths = leaf_paths(applied);
    let conflicts: Vec<String> = owners
        .iter()
        .filter(|(m, _)| m.as_str() != manager)
        .flat_map(|(_, paths)| paths.intersection(&new_paths))
        .filter(|p| live.pointer(p) != applied.pointer(p))
        .cloned()
        .collect();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previous = owners.get(manager).cloned().unwrap_or_default();
    for stale in previous.difference(&new_paths) {
        let others_own = owners
            .iter()
            .any(|(m, p)| m != manager && p.contains(stale));
        if !others_own {
            let _ = json_patch(live, &serde_json::json!([{"op": "remove", "path": stale}]));
        }
    }
    let mut config = applied.clone();
    if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    if let Some(obj) = config.as_object_mut() {
        obj.remove("status");
    }
    deep_merge(live, &config);
    for (m, paths) in owners.iter_mut() {
        if m != manager {
            paths.retain(|p| !new_paths.contains(p));
        }
    }
    owners.insert(manager.to_string(), new_paths);
    Ok(())
}

fn deep_merge(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                deep_merge(l.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (l, a) => *l = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_removes_fields_the_manager_stopped_applying_and_keeps_others() {
        let mut live = json!({});
        let mut owners = BTreeMap::new();
        server_side_apply(
            &mut live,
            &json!({"spec": {"a": 1, "b": 2}}),
            "op",
            true,
            &mut owners,
        )
        .unwrap();
        merge_patch(&mut live, &json!({"spec": {"c": 3}}));
        server_side_apply(
            &mut live,
            &json!({"spec": {"a": 5}}),
            "op",
            true,
            &mut owners,
        )
        .unwrap();
        assert_eq!(live, json!({"spec": {"a": 5, "c": 3}}));
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let mut live = json!({});
        let mut owners = BTreeMap::new();
        server_side_apply(
            &mut live,
            &json!({"spec": {"replicas": 3}}),
            "hpa",
            true,
            &mut owners,
        )
        .unwrap();
        let err = server_side_apply(
            &mut live,
            &json!({"spec": {"replicas": 4}}),
            "op",
            false,
            &mut owners,
        );
        assert_eq!(err, Err(vec!["/spec/replicas".to_string()]));
        server_side_apply(
            &mut live,
            &json!({"spec": {"replicas": 4}}),
            "op",
            true,
            &mut owners,
        )
        .unwrap();
        assert_eq!(live["spec"]["replicas"], 4);
        assert!(owners["hpa"].is_empty());
    }

    #[test]
    fn json_patch_edits_finalizers() {
        let mut v = json!({"metadata": {"finalizers": ["a"]}});
        json_patch(&mut v, &json!([{"op": "test", "path": "/metadata/finalizers", "value": ["a"]}, {"op": "add", "path": "/metadata/finalizers/-", "value": "b"}])).unwrap();
        json_patch(
            &mut v,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .unwrap();
        assert_eq!(v, json!({"metadata": {"finalizers": ["b"]}}));
        assert!(json_patch(
            &mut v,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": []}])
        )
        .is_err());
    }
}
